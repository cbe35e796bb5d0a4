"""The outcome table every Stripe client shares: status, ``Stripe-Should-Retry`` and ``Retry-After``."""

from __future__ import annotations

import email.utils

import httpx
import orjson
import pytest

from connector.stripe.http import HttpResponse, TransportError
from connector.stripe.outcomes import Action, Outcome, classify, parse_retry_after

NOW = 1_717_243_200.0  # 2024-06-01T12:00:00Z


def response(
    status: int, error: dict[str, str] | None = None, headers: dict[str, str] | None = None, raw: bytes = b""
) -> HttpResponse:
    body = orjson.dumps({"error": error}) if error is not None else raw
    return HttpResponse(status, httpx.Headers(headers or {}), body)


EXPIRED = {"type": "temporary_session_expired", "code": "billing_meter_event_session_expired", "message": "m"}
INVALID_TOKEN = {"type": "invalid_request_error", "code": "invalid_session_token", "message": "m"}
BAD_PARAM = {"type": "invalid_request_error", "code": "parameter_invalid", "message": "events[0] bad"}
API_ERROR = {"type": "api_error", "code": "internal_error", "message": "boom"}

TABLE: list[tuple[str, HttpResponse | TransportError, Action]] = [
    ("200", response(200, raw=b"{}"), Action.DELIVERED),
    ("202", response(202), Action.DELIVERED),
    ("200 + should-retry true", response(200, headers={"Stripe-Should-Retry": "true"}), Action.DELIVERED),
    ("401 expired", response(401, EXPIRED), Action.RENEW_SESSION),
    (
        "401 expired by code",
        response(401, {"code": "billing_meter_event_session_expired"}),
        Action.RENEW_SESSION,
    ),
    (
        "401 expired + should-retry false",
        response(401, EXPIRED, {"Stripe-Should-Retry": "false"}),
        Action.RENEW_SESSION,
    ),
    ("401 invalid token", response(401, INVALID_TOKEN), Action.INVALID_TOKEN),
    ("401 without body", response(401, raw=b"Unauthorized"), Action.INVALID_TOKEN),
    ("400", response(400, BAD_PARAM), Action.REJECT),
    ("402", response(402, BAD_PARAM), Action.REJECT),
    ("413", response(413, raw=b"too large"), Action.REJECT),
    ("422", response(422, BAD_PARAM), Action.REJECT),
    ("400 + should-retry true", response(400, BAD_PARAM, {"Stripe-Should-Retry": "true"}), Action.RETRY),
    ("403", response(403, {"code": "secret_key_required"}), Action.FATAL),
    ("404", response(404, {"code": "not_found"}), Action.FATAL),
    ("405", response(405), Action.FATAL),
    ("415", response(415), Action.FATAL),
    ("501", response(501, API_ERROR), Action.FATAL),
    ("302", response(302), Action.FATAL),
    ("404 + should-retry true", response(404, headers={"Stripe-Should-Retry": "true"}), Action.RETRY),
    ("408", response(408), Action.RETRY),
    ("409", response(409, {"code": "lock_timeout"}), Action.RETRY),
    ("429", response(429, {"code": "rate_limit"}), Action.RETRY),
    ("500", response(500, API_ERROR), Action.RETRY),
    ("502 html", response(502, raw=b"<html>bad gateway</html>"), Action.RETRY),
    ("503", response(503, API_ERROR), Action.RETRY),
    ("599", response(599), Action.RETRY),
    # "Do not retry" on an answer about the request, not the events: undelivered, never rejected.
    ("500 + should-retry false", response(500, API_ERROR, {"Stripe-Should-Retry": "false"}), Action.DEFER),
    ("429 + should-retry false", response(429, headers={"stripe-should-retry": "False"}), Action.DEFER),
    ("400 + should-retry false", response(400, BAD_PARAM, {"Stripe-Should-Retry": "false"}), Action.REJECT),
    ("404 + should-retry false", response(404, headers={"Stripe-Should-Retry": "false"}), Action.FATAL),
    ("503 + should-retry true", response(503, headers={"Stripe-Should-Retry": "true"}), Action.RETRY),
    ("timeout", TransportError("timeout", "ReadTimeout"), Action.RETRY),
    ("connect", TransportError("connect", "ConnectError"), Action.RETRY),
    ("dropped", TransportError("protocol", "RemoteProtocolError"), Action.RETRY),
]


@pytest.mark.parametrize(("answer", "action"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_outcome_table(answer: HttpResponse | TransportError, action: Action) -> None:
    assert classify(answer, now=NOW).action is action


def test_outcome_carries_stripes_code_message_and_retry_after() -> None:
    outcome = classify(
        response(429, {"code": "rate_limit", "message": "slow down"}, {"Retry-After": "3"}), now=NOW
    )
    assert outcome == Outcome(Action.RETRY, 429, "rate_limit", "slow down", 3.0)
    bare = classify(response(503, raw=b"oops"), now=NOW)
    assert bare.code is None and bare.message == "HTTP 503 without a Stripe error body"
    assert classify(TransportError("timeout", "x"), now=NOW).status is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        ("0.5", 0.5),
        ("-3", 0.0),
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),
        ("soon", None),
        ("nan", None),
        (None, None),
    ],
)
def test_retry_after_parsing(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected




def test_an_outcome_describes_itself_in_one_line() -> None:
    assert Outcome(Action.RETRY, 503, "internal_error", "boom").describe() == "HTTP 503 internal_error: boom"
    assert Outcome(Action.RETRY, None, "timeout", "ReadTimeout").describe() == "timeout: ReadTimeout"


def test_the_table_has_one_home() -> None:
    # Every client classifies through connector.stripe.outcomes; the HTTP seam declares no table of its own.
    from connector.stripe import http

    assert not hasattr(http, "classify") and not hasattr(http, "Action")
