"""Meter event sessions: create with the secret key, cache the token, renew ahead of expiry, one at a time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from connector.config.secrets import Redactor, Secret
from connector.errors import ConnectorError, FatalError, RetryableError
from connector.stripe.http import HttpClient, TransportError
from connector.stripe.limits import DEFAULT_API_BASE, DEFAULT_API_VERSION, SESSION_PATH, key_mode, key_prefix
from connector.stripe.outcomes import Action, classify

if TYPE_CHECKING:
    from connector.config.settings import SenderSettings, StripeSettings

log = logging.getLogger(__name__)

# After a failed ahead-of-time renewal, keep using the still-valid token and try again this much later,
# rather than on every request.
RENEWAL_RETRY_S = 1.0


class SessionUnavailable(RetryableError):
    """Creating a session failed transiently (network, 5xx, 429); ``retry_after`` is Stripe's hint."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


def key_headers(api_key: Secret, api_version: str, context: str | None) -> dict[str, str]:
    """The headers of a v2 JSON request made with the secret key, in ``context`` when one is given
    (``Stripe-Context``, as stripe-python sends its ``stripe_context`` option)."""
    headers = {
        "Authorization": f"Bearer {api_key.reveal()}",
        "Content-Type": "application/json",
        "Stripe-Version": api_version,
    }
    if context is not None:
        headers["Stripe-Context"] = context
    return headers


class ContextRefused(ConnectorError):
    """Stripe refused to create a session in a context: the key cannot act in that account. Per
    context, not fatal: that context's events are dead-lettered with Stripe's reason."""

    def __init__(self, context: str, reason: str) -> None:
        self.context = context
        self.reason = reason
        super().__init__(f"Stripe refused the context {context}: {reason}")


class Session:
    """One meter event session: its stream headers and when (on the manager's clock) to renew it."""

    __slots__ = ("expires_at", "headers", "id", "livemode", "renew_at")

    def __init__(
        self, *, id: str, token: str, api_version: str, livemode: bool, renew_at: float, expires_at: float
    ) -> None:
        self.id = id
        self.livemode = livemode
        self.renew_at = renew_at
        self.expires_at = expires_at
        # Built once per session: the stream sends them as they are on every request.
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Stripe-Version": api_version,
        }

    @property
    def token(self) -> str:
        return self.headers["Authorization"][len("Bearer ") :]

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, livemode={self.livemode}, renew_at={self.renew_at:.3f})"

    __str__ = __repr__


def _rfc3339(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return None if moment.tzinfo is None else moment.timestamp()


def renewal_delay(lifetime: float, margin: float) -> float:
    """Seconds after creation to renew: ``margin`` before expiry, or halfway when the token is short-lived."""
    return lifetime - margin if lifetime > margin else lifetime / 2


class SessionManager:
    """Hands out a valid session; renews it ``renew_margin_s`` before expiry, with one renewal at a time.

    ``current()`` is a dictionary read on the hot path. When the session is due, or a caller reports
    its token refused with ``renew(stale)``, a single creation task runs and every caller awaits it;
    a caller renewing a token that was already replaced simply gets the replacement.

    The expiry is judged on the local ``clock`` (monotonic by default): the token's lifetime is
    ``expires_at - created`` as Stripe states them, counted from when our request left, so a skewed
    local wall clock cannot make us use an expired token.
    """

    def __init__(
        self,
        *,
        http: HttpClient,
        api_key: Secret | str,
        api_base: str = DEFAULT_API_BASE,
        api_version: str = DEFAULT_API_VERSION,
        renew_margin_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        context: str | None = None,
    ) -> None:
        key = api_key.reveal() if isinstance(api_key, Secret) else api_key
        self._http = http
        # Sessions for a connected account are created in its context (``Stripe-Context``, as
        # stripe-python sends its ``stripe_context`` option); the token then speaks for that account.
        self.context = context
        self._api_key = Secret(key, hint=key_prefix(key))  # masked in every repr
        self._masked_key = self._api_key.masked()  # sk_live_**********: the key's type and mode only
        self._redact = Redactor([key])
        self.mode = key_mode(key)
        self.api_version = api_version
        self.url = api_base.rstrip("/") + SESSION_PATH
        self.renew_margin_s = renew_margin_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._session: Session | None = None
        self._renewal: asyncio.Task[Session] | None = None
        self._retry_renewal_at = 0.0
        self.sessions_created = 0
        self.creation_failures = 0

    @classmethod
    def from_settings(
        cls,
        stripe: StripeSettings,
        sender: SenderSettings,
        *,
        http: HttpClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> SessionManager:
        return cls(
            http=http,
            api_key=stripe.api_key,
            api_base=stripe.api_base,
            api_version=stripe.api_version,
            renew_margin_s=sender.session_renew_margin_s,
            clock=clock,
        )

    @property
    def session(self) -> Session | None:
        """The cached session, if any (not checked for expiry)."""
        return self._session

    async def current(self) -> Session:
        """A session that is not due for renewal; creates or renews one first if needed."""
        session = self._session
        if session is None:
            return await self.renew(None)
        now = self._clock()
        if now < session.renew_at:
            return session
        if now < self._retry_renewal_at and now < session.expires_at:
            return session
        try:
            return await self.renew(session)
        except SessionUnavailable:
            # Renewing ahead of expiry failed: the old token still works, so use it until it expires.
            if self._clock() < session.expires_at:
                self._retry_renewal_at = self._clock() + RENEWAL_RETRY_S
                return session
            raise

    async def renew(self, stale: Session | None) -> Session:
        """Replace ``stale`` (a session whose token Stripe refused, or None); single-flight.

        If ``stale`` was already replaced by a session that is not due, that one is returned at once.
        Raises ``SessionUnavailable`` (retryable) or ``FatalError`` (the key was refused).
        """
        session = self._session
        if session is not None and session is not stale and self._clock() < session.renew_at:
            return session
        task = self._renewal
        if task is None:
            task = self._renewal = asyncio.get_running_loop().create_task(self._create())
            task.add_done_callback(self._renewal_done)
        # shield: a caller cancelled while waiting must not cancel the renewal the others wait on.
        return await asyncio.shield(task)

    def _renewal_done(self, task: asyncio.Task[Session]) -> None:
        if self._renewal is task:
            self._renewal = None
        if not task.cancelled() and task.exception() is not None:  # marks it retrieved for asyncio
            self.creation_failures += 1

    async def _create(self) -> Session:
        started = self._clock()
        try:
            response = await self._http.post(self.url, b"{}", self._key_headers())
        except TransportError as exc:
            raise SessionUnavailable(f"creating a meter event session failed: {exc}") from None
        outcome = classify(response, now=self._wall_clock())
        message = self._redact(outcome.message)
        where = f"HTTP {outcome.status} {outcome.code or ''}".rstrip()
        if outcome.action in (Action.RETRY, Action.DEFER):  # DEFER: not now, but not refused either
            raise SessionUnavailable(
                f"creating a meter event session failed ({where}): {message}", outcome.retry_after
            )
        if outcome.action is not Action.DELIVERED:
            if self.context is not None and outcome.status in (400, 403, 404):
                # The key works (401 would say otherwise) but cannot act in this context.
                raise ContextRefused(self.context, f"{where}: {message}")
            if outcome.status in (401, 403):
                raise FatalError(
                    f"Stripe rejected the API key {self._masked_key} ({self.mode} mode) when creating a "
                    f"meter event session ({where}: {message}); check STRIPE_API_KEY"
                )
            raise FatalError(
                f"Stripe refused to create a meter event session ({where}: {message}); "
                f"check STRIPE_API_BASE ({self.url}) and STRIPE_API_VERSION ({self.api_version})"
            )
        session = self._parse(response.body, started)
        self._session = session
        self.sessions_created += 1
        log.info(
            "meter event session %s created (%s mode), renewing in %.0f s",
            session.id,
            self.mode,
            session.renew_at - started,
        )
        return session

    def _parse(self, body: bytes, started: float) -> Session:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
        if not isinstance(document, dict):
            raise FatalError("Stripe answered the meter event session request with a body that is not JSON")
        token = document.get("authentication_token")
        expires_at = _rfc3339(document.get("expires_at"))
        if not isinstance(token, str) or not token or expires_at is None:
            raise FatalError(
                "Stripe's meter event session lacks an authentication_token or an RFC 3339 expires_at"
            )
        created = _rfc3339(document.get("created"))
        lifetime = expires_at - (created if created is not None else self._wall_clock())
        if lifetime <= 0:
            raise SessionUnavailable("Stripe returned a meter event session that has already expired")
        return Session(
            id=str(document.get("id", "")),
            token=token,
            api_version=self.api_version,
            livemode=document.get("livemode") is True,
            renew_at=started + renewal_delay(lifetime, self.renew_margin_s),
            expires_at=started + lifetime,
        )

    async def aclose(self) -> None:
        task, self._renewal = self._renewal, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._session = None

    def _key_headers(self) -> dict[str, str]:
        return key_headers(self._api_key, self.api_version, self.context)

    def __repr__(self) -> str:
        return (
            f"SessionManager(url={self.url!r}, key={self._masked_key}, session={self._session!r}, "
            f"created={self.sessions_created})"
        )

    __str__ = __repr__
