"""Stripe contexts (Connect): the connected accounts that exist, and the account a context value names."""

from __future__ import annotations

import re

from connector.devtools.emulator.errors import ApiError, mask_secret

ACCOUNT_SEGMENT = re.compile(r"acct_[A-Za-z0-9]+\Z")
SEPARATOR = "/"


def parse_context(value: str) -> list[str] | None:
    """The account ids of a context value, ``acct_a`` or a path ``acct_a/acct_b`` (act in b, reached
    through a); None when it is not made of account ids."""
    parts = value.split(SEPARATOR)
    if all(ACCOUNT_SEGMENT.match(part) is not None for part in parts):
        return parts
    return None


def no_access(credential: str, account: str) -> ApiError:
    """Stripe's answer to a key (or, here, a session token) naming an account it cannot act in:
    403, ``invalid_request_error``, code ``account_invalid`` (stripe-python raises ``PermissionError``
    for any 403), with the key masked as Stripe masks it."""
    return ApiError(
        403,
        f"The provided key '{mask_secret(credential)}' does not have access to account '{account}' "
        "(or that account does not exist). Application access may have been revoked.",
        code="account_invalid",
    )


class Unreachable(Exception):
    """A context value the platform cannot act in; ``account`` is what the refusal names."""

    def __init__(self, account: str) -> None:
        super().__init__(account)
        self.account = account


class ContextTree:
    """The connected accounts, each with its parent: None for the platform's own accounts, else the
    connected account it was created under (``acct_a/acct_b`` makes b a connected account of a).

    An account id appears once in the tree; a key reaches an account only along the path from the
    platform, so ``acct_b`` alone is unknown when b belongs to a. The tree outlives resets.
    """

    def __init__(self, platform_id: str) -> None:
        self._platform_id = platform_id
        self._parent: dict[str, str | None] = {}

    def __contains__(self, account: str) -> bool:
        return account in self._parent

    def add(self, value: str) -> list[str]:
        """Create the accounts of ``value`` (a path creates the missing accounts along it); returns
        the ids created. Raises ``ValueError`` for a malformed value or one that contradicts the tree,
        having changed nothing."""
        parts = parse_context(value)
        if parts is None:
            raise ValueError(f"a context is acct_… or a path acct_…/acct_…, got {value!r}")
        if len(set(parts)) != len(parts) or self._platform_id in parts:
            raise ValueError(f"{value!r} names an account twice or names the platform itself")
        parent: str | None = None
        created: list[str] = []
        for account in parts:
            if account in self._parent and self._parent[account] != parent:
                raise ValueError(f"{account} already exists at {self.path(account)!r}, not under {value!r}")
            if account not in self._parent:
                created.append(account)
            parent = account
        parent = None
        for account in parts:
            self._parent.setdefault(account, parent)
            parent = account
        return created

    def copy(self) -> ContextTree:
        twin = ContextTree(self._platform_id)
        twin._parent = dict(self._parent)
        return twin

    def path(self, account: str) -> str:
        """The path from the platform to ``account``: the context value that reaches it."""
        parts = [account]
        parent = self._parent[account]
        while parent is not None:
            parts.append(parent)
            parent = self._parent[parent]
        return SEPARATOR.join(reversed(parts))

    def paths(self) -> list[str]:
        """Every connected account's path, in creation order."""
        return [self.path(account) for account in self._parent]

    def reach(self, value: str) -> str | None:
        """The account a request's context value acts in: None for the platform (its own id), else a
        connected account reached hop by hop from the platform. Raises ``Unreachable`` naming the whole
        value when malformed, or the first hop the platform cannot reach."""
        if value == self._platform_id:
            return None
        parts = parse_context(value)
        if parts is None:
            raise Unreachable(value)
        parent: str | None = None
        for account in parts:
            if account not in self._parent or self._parent[account] != parent:
                raise Unreachable(account)
            parent = account
        return parent

    def find(self, value: str) -> str | None:
        """The connected account an emulator control names, by id or by path; None when unknown."""
        if value in self._parent:
            return value
        try:
            return self.reach(value)
        except Unreachable:
            return None
