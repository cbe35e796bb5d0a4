"""The emulator's whole in-memory state: the platform and its connected accounts, sessions, the clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connector.devtools.emulator.accounts import PlatformAccount
from connector.devtools.emulator.clock import Clock, EmulatedClock, system_clock
from connector.devtools.emulator.config import EmulatorConfig, is_secret_key
from connector.devtools.emulator.contexts import ContextTree, Unreachable, no_access
from connector.devtools.emulator.errors import ApiError, mask_secret
from connector.devtools.emulator.faults import Faults
from connector.devtools.emulator.idempotency import IdempotencyKeys, KeyHold
from connector.devtools.emulator.ids import new_id
from connector.devtools.emulator.ledger import EventStatus, MeterLedger
from connector.devtools.emulator.stats import Stats
from connector.devtools.emulator.tenant import Account, Tenant
from connector.devtools.emulator.timestamps import format_rfc3339

__all__ = ["Account", "EmulatorState", "Session", "Tenant"]

_NO_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization header, "
    "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
)
_ACCOUNT_ON_V2 = (
    "API v2 requests name a connected account with the Stripe-Context header; Stripe-Account is a v1 header."
)


@dataclass(slots=True)
class Session:
    id: str
    token: str
    created: float
    expires_at: float
    livemode: bool
    ledger: MeterLedger
    keys: IdempotencyKeys
    tenant: Tenant  # the account the session was created in: its token speaks for that account only

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "v2.billing.meter_event_session",
            "authentication_token": self.token,
            "created": format_rfc3339(self.created),
            "expires_at": format_rfc3339(self.expires_at),
            "livemode": self.livemode,
        }


class EmulatorState:
    """Everything the emulator knows; ``reset()`` returns it to the startup configuration in place.

    ``clock`` is the emulated clock (``clock`` given plus what ``POST /_emulator/clock`` advanced);
    ``real_clock`` the clock given, which rate limits read. ``platform`` is the account every key
    opens; it keeps its id across resets. ``contexts`` holds its connected accounts, which resets keep
    (emptied); ``tenants`` maps None (the platform) and each connected account's id to its data.
    ``stats``, ``faults`` and ``accounts`` are the platform's, as before contexts existed.
    """

    def __init__(self, config: EmulatorConfig, clock: Clock = system_clock) -> None:
        self.config = config
        self.real_clock = clock
        self.clock = EmulatedClock(clock)
        self.platform = PlatformAccount.new(clock())
        self.contexts = ContextTree(self.platform.id)
        self._identities: dict[str, PlatformAccount] = {}
        self.tenants: dict[str | None, Tenant] = {}
        for value in config.contexts:
            self.contexts.add(value)
        self.reset()

    def reset(self) -> None:
        self.clock.reset()
        self.tenants = {None: Tenant(self.platform, None, self.config, self.real_clock)}
        for path in self.contexts.paths():
            self._add_tenant(path)
        self.sessions: dict[str, Session] = {}

    def _add_tenant(self, path: str) -> Tenant:
        account = path.rpartition("/")[2]
        identity = self._identities.get(account)
        if identity is None:
            identity = self._identities[account] = PlatformAccount(account, int(self.clock()))
        tenant = self.tenants[account] = Tenant(identity, path, self.config, self.real_clock)
        return tenant

    # -- the platform, as before contexts existed -------------------------------------------------

    @property
    def stats(self) -> Stats:
        return self.tenants[None].stats

    @property
    def faults(self) -> Faults:
        return self.tenants[None].faults

    @property
    def accounts(self) -> dict[bool, Account]:
        return self.tenants[None].modes

    def account(self, livemode: bool = False, context: str | None = None) -> Account:
        """One mode's data of the platform, or of the connected account ``context`` names."""
        return self.tenant(context).account(livemode)

    # -- contexts -------------------------------------------------------------------------------

    def add_contexts(self, values: list[str]) -> int:
        """Create connected accounts (``acct_…`` or paths); returns how many were new. Raises
        ``ValueError`` for a bad value, and then creates none."""
        trial = self.contexts.copy()
        for value in values:
            trial.add(value)
        created = 0
        for value in values:
            for account in self.contexts.add(value):
                self._add_tenant(self.contexts.path(account))
                created += 1
        return created

    def tenant(self, context: str | None = None) -> Tenant:
        """The platform (None or its own id) or the connected account an emulator control names by
        id or path; a 400 when there is no such account."""
        if context is None or context == self.platform.id:
            return self.tenants[None]
        account = self.contexts.find(context) if isinstance(context, str) else None
        if account is None:
            raise ApiError(
                400,
                f"unknown context: {context!r}; create it with POST /_emulator/contexts",
                code="parameter_invalid",
            )
        return self.tenants[account]

    def peek_tenant(self, stripe_context: str | None, stripe_account: str | None) -> Tenant:
        """The account a request's headers name, without checking its key: its faults apply before
        authentication. The platform when none is named, or when the name does not resolve."""
        value = stripe_context if stripe_context is not None else stripe_account
        if value is None:
            return self.tenants[None]
        try:
            return self.tenants[self.contexts.reach(value)]
        except (Unreachable, KeyError):
            return self.tenants[None]

    def resolve(
        self, key: str, stripe_context: str | None, stripe_account: str | None, *, v2: bool
    ) -> Tenant:
        """The account an authenticated request acts in: ``Stripe-Context`` (v1 and v2) or
        ``Stripe-Account`` (v1 only, no paths); Stripe's 403 ``account_invalid`` for an account the
        key cannot reach."""
        if stripe_account is not None and v2:
            raise ApiError(400, _ACCOUNT_ON_V2, code="parameter_invalid")
        if stripe_account is not None and stripe_context is not None and stripe_account != stripe_context:
            raise ApiError(
                400,
                f"Stripe-Account ({stripe_account}) and Stripe-Context ({stripe_context}) name different "
                "accounts; send one of them.",
            )
        value = stripe_context if stripe_context is not None else stripe_account
        if value is None:
            return self.tenants[None]
        if stripe_context is None and "/" in value:
            raise no_access(key, value)  # Stripe-Account takes an account id, never a path
        try:
            return self.tenants[self.contexts.reach(value)]
        except Unreachable as unreachable:
            raise no_access(key, unreachable.account) from None

    # -- authentication -------------------------------------------------------------------------

    def authenticate_key(self, key: str | None) -> bool:
        """The mode a secret key opens (True: live), or a 401; session tokens are refused here."""
        if not key:
            raise ApiError(401, _NO_KEY, code="missing_api_key")
        if key in self.sessions:
            raise ApiError(
                401,
                "This endpoint requires a secret API key; a meter event session token was provided.",
                code="invalid_api_key",
            )
        expected = self.config.api_key
        if (expected is not None and key != expected) or not is_secret_key(key):
            raise ApiError(401, f"Invalid API Key provided: {mask_secret(key)}", code="invalid_api_key")
        return key.startswith(("sk_live_", "rk_live_"))

    def authorize(
        self, key: str | None, stripe_context: str | None, stripe_account: str | None, *, v2: bool
    ) -> tuple[Tenant, Account]:
        """The account and mode a request with a secret key acts in, or its 401, 400 or 403."""
        livemode = self.authenticate_key(key)
        assert key is not None
        tenant = self.resolve(key, stripe_context, stripe_account, v2=v2)
        return tenant, tenant.account(livemode)

    def stream_session(self, token: str | None, now: float) -> Session:
        """The live session a stream request's bearer token names, or the matching 401."""
        session = self.sessions.get(token) if token else None
        if session is not None:
            if now < session.expires_at:
                return session
            raise ApiError(
                401,
                "The meter event session has expired. Create a new session and retry with its "
                "authentication_token.",
                type="temporary_session_expired",
                code="billing_meter_event_session_expired",
            )
        if not token:
            raise ApiError(
                401,
                "You did not provide a meter event session token. Create a meter event session and "
                "send its authentication_token as 'Authorization: Bearer TOKEN'.",
                code="invalid_session_token",
            )
        if is_secret_key(token):
            message = (
                "The meter event stream requires a meter event session's authentication_token, "
                f"not a secret API key ({mask_secret(token)})."
            )
        else:
            message = f"Invalid meter event session token provided: {mask_secret(token)}"
        raise ApiError(401, message, code="invalid_session_token")

    def stream_tenant(self, token: str | None) -> Tenant:
        """The account a stream request's token speaks for, whose faults and counters it meets; the
        platform's when the token is unknown (the request then fails authentication)."""
        session = self.sessions.get(token) if token else None
        return self.tenants[None] if session is None else session.tenant

    def check_stream_context(
        self, session: Session, token: str, stripe_context: str | None, stripe_account: str | None
    ) -> None:
        """A context header on a stream request must name the token's own account (Stripe's example
        sends none; undocumented, the emulator's choice): another account, or one that does not
        resolve, is the 403 a key gets for an account it cannot act in, with the token masked."""
        if stripe_account is not None:
            raise ApiError(400, _ACCOUNT_ON_V2, code="parameter_invalid")
        if stripe_context is None:
            return
        try:
            named = self.tenants[self.contexts.reach(stripe_context)]
        except Unreachable as unreachable:
            raise no_access(token, unreachable.account) from None
        if named is not session.tenant:
            raise no_access(token, stripe_context)

    def hold_key(self, token: str | None, key: bytes | None) -> KeyHold | None:
        """Claim a stream request's key while it executes, in the account its token opens; None
        without a key or a known token (the request then fails authentication anyway)."""
        session = self.sessions.get(token) if token and key is not None else None
        if session is None or key is None:
            return None
        return session.keys.hold(key)

    # -- sessions -------------------------------------------------------------------------------

    def create_session(self, tenant: Tenant, account: Account) -> Session:
        now = self.clock()
        session = Session(
            id=new_id("bmes_"),
            token=new_id("mes_tok_", 40),
            created=now,
            expires_at=now + tenant.faults.session_ttl,
            livemode=account.livemode,
            ledger=account.ledger,
            keys=account.idempotency,
            tenant=tenant,
        )
        self.sessions[session.token] = session
        tenant.stats.sessions_created += 1
        return session

    def expire_tokens(self, tenant: Tenant | None = None) -> int:
        """Make every current session token (of ``tenant`` only, if given) expired now; returns how
        many were live."""
        now = self.clock()
        live = 0
        for session in self.sessions.values():
            if session.expires_at > now and (tenant is None or session.tenant is tenant):
                session.expires_at = now
                live += 1
        return live

    # -- asynchronous validation ----------------------------------------------------------------

    @property
    def pending_events(self) -> int:
        return sum(tenant.pending_events for tenant in self.tenants.values())

    def process_pending(self, limit: int | None = None) -> int:
        """Validate queued events of every account and mode (at most about ``limit``); returns how many."""
        now = self.clock()
        handled = 0
        for tenant in list(self.tenants.values()):
            for account in tenant.modes.values():
                remaining = None if limit is None else max(limit - handled, 0)
                if remaining != 0:
                    handled += account.ledger.process(now, remaining)
        return handled

    def event_status(
        self, identifier: str, livemode: bool = False, context: str | None = None
    ) -> EventStatus | None:
        """What became of a meter event of the platform or of ``context`` (after validating the
        queue), for tests."""
        self.process_pending()
        return self.account(livemode, context).ledger.event_status(identifier)

    def stats_json(self, process: bool = True, context: str | None = None) -> dict[str, Any]:
        """The counters of the platform or of ``context``; ``process=False`` skips validating the
        queue (``events_pending`` says how much is waiting), for a quick look after a large burst."""
        tenant = self.tenant(context)
        if process:
            self.process_pending()
        return tenant.stats.as_dict(tenant.pending_events)
