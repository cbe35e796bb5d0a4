"""Secrets: the ``Secret`` value, the one mask, and the one redactor used by logs, errors and CLI output."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from typing import NoReturn

MASK = "**********"

# Stripe keys keep their prefix (test or live tells the reader something); the secret part goes.
_KEY = re.compile(r"\b((?:sk|rk|pk)_(?:test|live)_)[A-Za-z0-9*]+")
# Meter event session tokens: the emulator's shape (mes_tok_ + base-62) and Stripe's field name.
_SESSION_TOKEN = re.compile(r"\bmes_tok_[A-Za-z0-9]+")
_TOKEN_FIELD = re.compile(r"""(["']?authentication_token["']?\s*[:=]\s*["']?)[^"'\s,}]+""")
# Whatever follows Bearer/Basic when long enough to be a credential rather than prose.
_AUTH_HEADER = re.compile(r"\b(Bearer|Basic)(\s+)[A-Za-z0-9._~+/=-]{16,}")
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^/\s@]+@")
# Values shorter than this are not masked by value: masking every "a" would hide nothing real.
_MIN_SECRET_LENGTH = 4


class Secret:
    """A credential whose ``repr`` and ``str`` are masked; ``reveal()`` is the only way to the value."""

    __slots__ = ("_hint", "_value")
    _hint: str
    _value: str

    def __init__(self, value: str, hint: str = "") -> None:
        # ``hint`` is a non-secret prefix shown before the mask, e.g. ``sk_live_`` to tell test from live.
        object.__setattr__(self, "_value", value)
        object.__setattr__(self, "_hint", hint)

    def reveal(self) -> str:
        """The secret itself: only for the client that sends it, never for display."""
        return self._value

    def masked(self) -> str:
        return self._hint + MASK

    def __repr__(self) -> str:
        return f"Secret({self.masked()!r})"

    def __str__(self) -> str:
        return self.masked()

    def __format__(self, spec: str) -> str:
        return format(self.masked(), spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __reduce__(self) -> tuple[type[Secret], tuple[str, str]]:
        # Settings may be handed to worker processes; pickling must rebuild the object, not leak it.
        return (Secret, (self._value, self._hint))


def is_secret_property(name: str) -> bool:
    """Whether a librdkafka or schema-registry property holds a credential and must be masked."""
    lowered = name.lower()
    return (
        any(word in lowered for word in ("password", "secret", "passphrase", "user.info", "auth.token"))
        or lowered.endswith(".pem")
        or lowered in ("sasl.oauthbearer.config", "ssl_key")
    )


class Redactor:
    """Masks the given secret values (longest first, so a password containing another secret goes
    whole; a Stripe key keeps its prefix) and anything shaped like a credential: Stripe keys, session
    tokens, ``Bearer``/``Basic`` credentials, passwords in URLs."""

    __slots__ = ("_values",)

    def __init__(self, secrets: Iterable[Secret | str] = ()) -> None:
        revealed = {s.reveal() if isinstance(s, Secret) else s for s in secrets}
        ordered = sorted((s for s in revealed if len(s) >= _MIN_SECRET_LENGTH), key=len, reverse=True)
        self._values = [(value, _mask_for(value)) for value in ordered]

    def __call__(self, text: str) -> str:
        for value, mask in self._values:
            text = text.replace(value, mask)
        return redact(text)


def redact(text: str, secrets: Iterable[Secret | str] = ()) -> str:
    """``text`` with the given secrets and anything shaped like a credential masked."""
    if secrets:
        return Redactor(secrets)(text)
    text = _KEY.sub(lambda m: m.group(1) + MASK, text)
    text = _SESSION_TOKEN.sub("mes_tok_" + MASK, text)
    text = _TOKEN_FIELD.sub(lambda m: m.group(1) + MASK, text)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    return _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + "@", text)


def _mask_for(value: str) -> str:
    key = _KEY.fullmatch(value)
    return key.group(1) + MASK if key else MASK
