"""What Stripe's answer means: the one outcome table (status → deliver, retry, defer, reject, fatal) and
``Retry-After``, used by every Stripe client (the stream sender, the session manager, the v1 client).

Pure: it reads an answer already received (``HttpResponse``) or the lack of one (``TransportError``) and
never does I/O itself; the seam types are imported for type checking only, so importing the table does
not load an HTTP library.
"""

from __future__ import annotations

import email.utils
import enum
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

if TYPE_CHECKING:
    from connector.stripe.http import HttpResponse, TransportError


class Action(enum.Enum):
    """What to do with a request after Stripe's answer (or the lack of one)."""

    DELIVERED = "delivered"  # 2xx: Stripe accepted every event of the request
    RENEW_SESSION = "renew_session"  # 401 session expired: new token, resend; not a failed attempt
    INVALID_TOKEN = "invalid_token"  # other 401: new token and resend once, then fatal
    RETRY = "retry"  # transient: back off and send the same request again
    # Stripe-Should-Retry: false on an answer that says nothing about the events (429, 5xx): do not
    # resend this request now; the events stay undelivered (not done, sent again later), never rejected.
    DEFER = "defer"
    REJECT = "reject"  # permanent and possibly event-specific: bisect, dead-letter what Stripe refuses
    FATAL = "fatal"  # permanent for every request (access, wrong URL): stop the pipeline


class Outcome(NamedTuple):
    """The classified answer; ``message`` is bounded and must be redacted before it leaves the sender."""

    action: Action
    status: int | None  # None when no response arrived
    code: str | None
    message: str
    retry_after: float | None = None

    def describe(self) -> str:
        """One line for logs and results: ``HTTP 503 internal_error: boom`` (or ``timeout: …``)."""
        if self.status is None:
            return f"{self.code}: {self.message}"
        return f"HTTP {self.status} {self.code}: {self.message}"


DELIVERED = Outcome(Action.DELIVERED, 200, None, "ok")

_RETRYABLE_STATUSES = frozenset({408, 409, 429})
# Statuses that cannot depend on the events sent: bisecting would dead-letter every event of a healthy
# stream because of a configuration error, so they stop the pipeline instead.
_FATAL_STATUSES = frozenset({403, 404, 405, 406, 415, 501})
SESSION_EXPIRED_TYPE = "temporary_session_expired"
SESSION_EXPIRED_CODE = "billing_meter_event_session_expired"


def parse_error(body: bytes) -> tuple[str | None, str | None, str | None]:
    """``(type, code, message)`` of a Stripe v1/v2 error body; Nones when it is not one."""
    try:
        document: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return None, None, None

    def text(key: str) -> str | None:
        value = error.get(key)
        return value if isinstance(value, str) else None

    return text("type"), text("code"), text("message")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date); None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:  # HTTP dates are GMT by definition
            return None
        seconds = moment.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def classify(result: HttpResponse | TransportError, *, now: float) -> Outcome:
    """Map Stripe's answer, or a transport failure, to an ``Outcome`` (pure; ``now`` is unix time).

    ====================================================  ===============
    no response (timeout, connection refused/dropped)      RETRY
    2xx                                                    DELIVERED
    401 ``temporary_session_expired`` (or its code)       RENEW_SESSION
    other 401                                              INVALID_TOKEN
    408, 409, 429, 5xx except 501                          RETRY
    403, 404, 405, 406, 415, 501, 3xx                      FATAL
    other 4xx (400, 402, 413, 422, …)                      REJECT
    anything else (1xx, ≥ 600)                             RETRY
    ====================================================  ===============

    ``Stripe-Should-Retry: true`` turns REJECT/FATAL into RETRY; ``false`` turns RETRY into DEFER, never
    into REJECT: it is about resending the request, not about the events, which only a 4xx refuses.
    It does not apply to 2xx (accepted is accepted) nor to 401 (a new token is not a retry of the
    same request). ``retry_after`` comes from ``Retry-After`` on any non-2xx answer.
    """
    # A TransportError is the only exception the seam hands over; testing for it structurally keeps
    # this module free of a runtime import of the HTTP clients.
    if isinstance(result, BaseException):
        return Outcome(Action.RETRY, None, result.kind, str(result))
    status = result.status
    if 200 <= status < 300:
        return DELIVERED
    error_type, code, message = parse_error(result.body)
    text = (message or f"HTTP {status} without a Stripe error body")[:500]
    headers = result.headers
    retry_after = parse_retry_after(headers.get("retry-after"), now)
    if status == 401:
        expired = error_type == SESSION_EXPIRED_TYPE or code == SESSION_EXPIRED_CODE
        action = Action.RENEW_SESSION if expired else Action.INVALID_TOKEN
        return Outcome(action, status, code, text, retry_after)
    return Outcome(_action_for(status, headers.get("stripe-should-retry")), status, code, text, retry_after)


def _action_for(status: int, should_retry: str | None) -> Action:
    """The table's row for a non-2xx, non-401 status, then ``Stripe-Should-Retry`` applied to it."""
    if status in _RETRYABLE_STATUSES or (500 <= status < 600 and status != 501):
        action = Action.RETRY
    elif status in _FATAL_STATUSES or 300 <= status < 400:
        action = Action.FATAL
    elif 400 <= status < 500:
        action = Action.REJECT
    else:
        action = Action.RETRY
    hint = (should_retry or "").strip().lower()
    if hint == "true":
        return Action.RETRY
    if hint == "false" and action is Action.RETRY:
        return Action.DEFER
    return action
