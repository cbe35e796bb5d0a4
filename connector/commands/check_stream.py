"""``check``'s stream check: the key may create a meter event session and the meter-events host
answers its token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from connector.commands.check_result import CheckResult
from connector.commands.check_stripe import STRIPE_TIMEOUT_S
from connector.commands.prologue import redactor
from connector.config.settings import Settings

if TYPE_CHECKING:
    from connector.stripe.http import HttpResponse, TransportError


def check_stream(settings: Settings) -> CheckResult:
    """The key may create a meter event session, and the meter-events host answers its token.

    An empty stream request (no events: nothing can be recorded) proves the host is reachable and
    knows the token; Stripe's answer to it (400 for no events) is documented nowhere, so any answer
    but a refused token or no answer at all passes.
    """
    import asyncio

    from connector.errors import FatalError
    from connector.stripe.session import SessionUnavailable

    stripe = settings.stripe
    redact = redactor(settings)
    try:
        probe = asyncio.run(_probe_stream(settings))
    except (FatalError, SessionUnavailable) as exc:
        return CheckResult("stream", "failed", redact(str(exc)))
    host = urlsplit(stripe.meter_events_base).netloc
    mode = "live" if probe.livemode else "test"
    summary = (
        f"meter event session {probe.session_id} created ({mode} mode); "
        f"tokens live {probe.lifetime_s:.0f} s; {host} {probe.stream_answer}"
    )
    if probe.stream_failed:
        return CheckResult("stream", "failed", redact(summary))
    return CheckResult("stream", "ok", redact(summary))


@dataclass(frozen=True, slots=True)
class _StreamProbe:
    session_id: str
    livemode: bool
    lifetime_s: float
    stream_answer: str
    stream_failed: bool


async def _probe_stream(settings: Settings) -> _StreamProbe:
    import time

    from connector.stripe.http import AiohttpClient, Timeouts, TransportError
    from connector.stripe.limits import STREAM_PATH
    from connector.stripe.session import SessionManager

    timeouts = Timeouts(connect_s=STRIPE_TIMEOUT_S, read_s=STRIPE_TIMEOUT_S, total_s=STRIPE_TIMEOUT_S)
    http = AiohttpClient(timeouts=timeouts, max_connections=2)
    sessions = SessionManager.from_settings(settings.stripe, settings.sender, http=http)
    try:
        started = time.monotonic()
        session = await sessions.current()
        url = settings.stripe.meter_events_base.rstrip("/") + STREAM_PATH
        try:
            answer: HttpResponse | TransportError = await http.post(url, b'{"events":[]}', session.headers)
        except TransportError as exc:
            answer = exc
    finally:
        await sessions.aclose()
        await http.aclose()
    return _StreamProbe(session.id, session.livemode, session.expires_at - started, *_stream_answer(answer))


def _stream_answer(answer: HttpResponse | TransportError) -> tuple[str, bool]:
    """What the meter-events host's answer to an empty request says, and whether that fails the check."""
    from connector.stripe.http import TransportError
    from connector.stripe.outcomes import Action, classify

    if isinstance(answer, TransportError):
        return f"did not answer an empty stream request ({answer}): check STRIPE_METER_EVENTS_BASE", True
    outcome = classify(answer, now=0.0)
    where = f"HTTP {answer.status} {outcome.code or ''}".rstrip()
    if outcome.action in (Action.INVALID_TOKEN, Action.RENEW_SESSION):
        return (
            f"refused the session's token ({where}): STRIPE_METER_EVENTS_BASE and STRIPE_API_BASE must "
            "belong to the same Stripe",
            True,
        )
    if outcome.action is Action.FATAL:
        return f"does not serve the meter event stream ({where}): check STRIPE_METER_EVENTS_BASE", True
    if outcome.action in (Action.RETRY, Action.DEFER):
        return f"is throttling or failing ({where}: {outcome.message}); try again", True
    return f"accepted the token ({where} to an empty request; nothing recorded)", False
