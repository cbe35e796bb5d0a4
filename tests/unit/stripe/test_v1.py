"""The synchronous v1 client: form encoding, pagination, meters, summaries, prices/plans, errors, retries.

Most tests talk to the real emulator in-process (its ASGI app behind a small sync bridge, no sockets);
the retry and transport-failure tests use ``httpx.MockTransport`` to script answers Stripe rarely gives.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from connector.config.secrets import Secret
from connector.devtools.emulator import EmulatorConfig, ManualClock, create_app
from connector.stripe.v1 import (
    Meter,
    StripeApiError,
    StripeAuthenticationError,
    StripeClient,
    StripeConnectionError,
    StripeNotFound,
    encode_form,
)

KEY = "sk_test_stripeapiunit0123456789"
NOW = 1_717_243_200  # 2024-06-01T12:00:00Z
HOUR = 3600


class SyncASGITransport(httpx.BaseTransport):
    """Runs an ASGI app on an event loop in a background thread, for a synchronous ``httpx.Client``."""

    def __init__(self, app: Any) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def call() -> tuple[int, httpx.Headers, bytes]:
            inner = httpx.Request(request.method, request.url, headers=request.headers, content=body)
            response = await self._inner.handle_async_request(inner)
            content = await response.aread()
            return response.status_code, response.headers, content

        status, headers, content = asyncio.run_coroutine_threadsafe(call(), self._loop).result(30)
        return httpx.Response(status, headers=headers, content=content, request=request)

    def shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def transport() -> Iterator[SyncASGITransport]:
    # Summaries with fractions: an account with decimal values enabled.
    app = create_app(EmulatorConfig(api_key=KEY, decimal_values=True), clock=ManualClock(NOW))
    bridge = SyncASGITransport(app)
    yield bridge
    bridge.shutdown()


@pytest.fixture
def client(transport: SyncASGITransport) -> Iterator[StripeClient]:
    with StripeClient(Secret(KEY), api_base="http://emulator", transport=transport) as stripe:
        yield stripe


def send_event(client: StripeClient, event_name: str, customer: str, value: str, at: int, ident: str) -> None:
    client.post(
        "/v1/billing/meter_events",
        {
            "event_name": event_name,
            "payload": {"stripe_customer_id": customer, "value": value},
            "identifier": ident,
            "timestamp": at,
        },
    )


# ------------------------------------------------------------------------------------------ encoding


def test_form_encoding_nests_lists_and_booleans() -> None:
    pairs = encode_form(
        {
            "event_name": "api_requests",
            "default_aggregation": {"formula": "sum"},
            "recurring": {"meter": "mtr_1", "usage_type": "metered"},
            "expand": ["data.product", "data.tiers"],
            "active": True,
            "archived": False,
            "limit": 100,
            "starting_after": None,
        }
    )
    assert pairs == [
        ("event_name", "api_requests"),
        ("default_aggregation[formula]", "sum"),
        ("recurring[meter]", "mtr_1"),
        ("recurring[usage_type]", "metered"),
        ("expand[0]", "data.product"),
        ("expand[1]", "data.tiers"),
        ("active", "true"),
        ("archived", "false"),
        ("limit", "100"),
    ]


# ------------------------------------------------------------------------------------------- meters


def test_meters_are_listed_across_pages(client: StripeClient) -> None:
    created = [client.create_meter(f"event_{n}") for n in range(5)]
    items = list(client.list_all("/v1/billing/meters", page_size=2))  # three pages
    assert [item["id"] for item in items] == [m.id for m in reversed(created)]  # newest first
    assert {m.id for m in client.list_meters()} == {m.id for m in created}


def test_meter_fields_and_active_lookup(client: StripeClient) -> None:
    old = client.create_meter("tokens", customer_key="customer", value_key="amount", formula="last")
    assert old == Meter(
        id=old.id,
        event_name="tokens",
        display_name="tokens",
        status="active",
        formula="last",
        customer_key="customer",
        value_key="amount",
        livemode=False,
    )
    client.post(f"/v1/billing/meters/{old.id}/deactivate")
    assert client.active_meter("tokens") is None
    assert [m.status for m in client.meters_for_event("tokens")] == ["inactive"]
    new = client.create_meter("tokens")
    assert client.active_meter("tokens") == client.meter(new.id)
    assert [m.id for m in client.meters_for_event("tokens")] == [new.id, old.id]  # active first


def test_summaries_per_window_and_after_a_cancellation(client: StripeClient) -> None:
    meter = client.create_meter("api_requests")
    start = NOW - NOW % HOUR - 3 * HOUR
    send_event(client, "api_requests", "cus_A", "5", start + 10, "e1")
    send_event(client, "api_requests", "cus_A", "2.5", start + HOUR + 10, "e2")
    send_event(client, "api_requests", "cus_A", "1", start + HOUR + 20, "e3")
    send_event(client, "api_requests", "cus_B", "7", start + 20, "e4")

    whole = client.meter_event_summaries(meter.id, "cus_A", start, start + 3 * HOUR)
    assert [(s.start_time, s.end_time, s.aggregated_value) for s in whole] == [(start, start + 3 * HOUR, 8.5)]
    hourly = client.meter_event_summaries(meter.id, "cus_A", start, start + 3 * HOUR, "hour")
    assert [(s.start_time, s.aggregated_value) for s in hourly] == [(start, 5.0), (start + HOUR, 3.5)]

    client.cancel_meter_event("api_requests", "e3")
    hourly = client.meter_event_summaries(meter.id, "cus_A", start, start + 3 * HOUR, "hour")
    assert [(s.start_time, s.aggregated_value) for s in hourly] == [(start, 5.0), (start + HOUR, 2.5)]


def test_a_misaligned_range_is_a_readable_error(client: StripeClient) -> None:
    meter = client.create_meter("api_requests")
    with pytest.raises(StripeApiError) as caught:
        client.meter_event_summaries(meter.id, "cus_A", NOW + 30, NOW + HOUR, "hour")
    error = caught.value
    assert error.status == 400 and error.param == "start_time"
    assert "Stripe answered 400" in str(error) and "aligned" in str(error)
    assert "aligned" in error.detail and "Stripe answered" not in error.detail


# ---------------------------------------------------------------------------------------- billing


def test_prices_and_plans_billing_a_meter(client: StripeClient) -> None:
    billed = client.create_meter("billed")
    planned = client.create_meter("planned")
    unbilled = client.create_meter("unbilled")
    price = client.post(
        "/v1/prices",
        {
            "currency": "usd",
            "unit_amount_decimal": "0.5",
            "product_data": {"name": "API"},
            "recurring": {"interval": "month", "usage_type": "metered", "meter": billed.id},
        },
    )
    plan = client.post(
        "/v1/plans",
        {
            "currency": "usd",
            "amount": 3,
            "interval": "month",
            "product": {"name": "Storage"},
            "usage_type": "metered",
            "meter": planned.id,
        },
    )
    assert [p["id"] for p in client.prices_for_meter(billed.id)] == [price["id"]]
    assert [p["id"] for p in client.plans_for_meter(planned.id)] == [plan["id"]]
    assert client.prices_for_meter(unbilled.id) == [] and client.plans_for_meter(unbilled.id) == []
    client.post(f"/v1/prices/{price['id']}", {"active": False})
    assert client.prices_for_meter(billed.id) == []  # only active prices bill


# ------------------------------------------------------------------------------------------- errors


def test_a_refused_key_is_an_authentication_error_without_the_key(transport: SyncASGITransport) -> None:
    wrong = "sk_test_wrongwrongwrongwrong42"
    with (
        StripeClient(wrong, api_base="http://emulator", transport=transport) as client,
        pytest.raises(StripeAuthenticationError) as caught,
    ):
        client.list_meters()
    text = str(caught.value)
    assert caught.value.status == 401 and "STRIPE_API_KEY" in text
    assert wrong not in text and KEY not in text
    assert wrong not in repr(client) and "test" in repr(client)


def test_an_unknown_meter_is_not_found(client: StripeClient) -> None:
    with pytest.raises(StripeNotFound) as caught:
        client.meter("mtr_nope")
    assert "404" in str(caught.value) and "mtr_nope" in str(caught.value)


def scripted(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handler), seen


def test_gets_are_retried_on_429_honouring_retry_after() -> None:
    transport, seen = scripted(
        httpx.Response(429, json={"error": {"type": "rate_limit_error", "message": "slow down"}}),
        httpx.Response(503, text="<html>bad gateway</html>"),
        httpx.Response(200, json={"object": "list", "data": [], "has_more": False}),
    )
    waits: list[float] = []
    with StripeClient(KEY, api_base="http://x", transport=transport, sleep=waits.append) as client:
        assert client.list_meters() == []
    assert len(seen) == 3 and len(waits) == 2
    assert all(request.headers["Authorization"] == f"Bearer {KEY}" for request in seen)


def test_retry_after_sets_the_minimum_wait_and_should_retry_false_stops() -> None:
    transport, _ = scripted(
        httpx.Response(429, headers={"Retry-After": "3"}, json={"error": {"message": "later"}}),
        httpx.Response(200, json={"id": "mtr_1", "event_name": "x", "status": "active"}),
    )
    waits: list[float] = []
    with StripeClient(KEY, api_base="http://x", transport=transport, sleep=waits.append) as client:
        client.meter("mtr_1")
    assert waits == [3.0]

    transport, seen = scripted(
        httpx.Response(500, headers={"Stripe-Should-Retry": "false"}, json={"error": {"message": "no"}})
    )
    with (
        StripeClient(KEY, api_base="http://x", transport=transport, sleep=waits.append) as client,
        pytest.raises(StripeApiError, match="500"),
    ):
        client.meter("mtr_1")
    assert len(seen) == 1


def test_posts_are_never_retried_and_are_form_encoded() -> None:
    transport, seen = scripted(httpx.Response(503, json={"error": {"type": "api_error", "message": "down"}}))
    with (
        StripeClient(KEY, api_base="http://x", transport=transport, sleep=lambda _: None) as client,
        pytest.raises(StripeApiError, match="down"),
    ):
        client.cancel_meter_event("api_requests", "id-1")
    assert len(seen) == 1
    assert seen[0].headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert seen[0].content == b"event_name=api_requests&type=cancel&cancel%5Bidentifier%5D=id-1"


def test_unreachable_stripe_is_a_connection_error_with_a_clear_message() -> None:
    transport, seen = scripted(
        *[httpx.ConnectError(f"refused, key {KEY} was in an unlucky message")] * 3,
    )
    with (
        StripeClient(KEY, api_base="http://x", transport=transport, sleep=lambda _: None) as client,
        pytest.raises(StripeConnectionError) as caught,
    ):
        client.list_meters()
    text = str(caught.value)
    assert len(seen) == 3  # the first try and two retries
    assert text.startswith("could not reach Stripe at http://x (GET /v1/billing/meters")
    assert KEY not in text


def test_a_non_json_error_body_is_quoted_briefly() -> None:
    transport, _ = scripted(httpx.Response(502, text="<html>" + "x" * 500 + "</html>"))
    with (
        StripeClient(KEY, api_base="http://x", transport=transport, max_retries=0) as client,
        pytest.raises(StripeApiError) as caught,
    ):
        client.list_meters()
    text = str(caught.value)
    assert "502 without an error object" in text and len(text) < 400


def test_a_meters_event_time_window_is_read(client: StripeClient) -> None:
    plain = client.create_meter("plain_events")
    assert plain.event_time_window is None
    windowed = client.post(
        "/v1/billing/meters",
        {
            "display_name": "hourly",
            "event_name": "hourly_events",
            "default_aggregation": {"formula": "sum"},
            "event_time_window": "hour",
        },
    )
    assert windowed["event_time_window"] == "hour"
    by_name = {m.event_name: m for m in client.list_meters()}
    assert by_name["hourly_events"].event_time_window == "hour"
    assert by_name["plain_events"].event_time_window is None


def test_gets_retry_exactly_what_the_outcome_table_calls_retry() -> None:
    # The same table as the stream sender: 408 and Stripe-Should-Retry: true are retried, 501 is not,
    # and Stripe-Should-Retry: false on a 429 (DEFER) is not retried either.
    transport, seen = scripted(
        httpx.Response(408, text="timeout"),
        httpx.Response(400, headers={"Stripe-Should-Retry": "true"}, json={"error": {"message": "again"}}),
        httpx.Response(200, json={"object": "list", "data": [], "has_more": False}),
    )
    waits: list[float] = []
    with StripeClient(KEY, api_base="http://x", transport=transport, sleep=waits.append) as client:
        assert client.list_meters() == []
    assert len(seen) == 3 and waits == [0.5, 1.0]
    for answer in (
        httpx.Response(501, json={"error": {"type": "api_error", "message": "not implemented"}}),
        httpx.Response(429, headers={"Stripe-Should-Retry": "false"}, json={"error": {"message": "no"}}),
    ):
        transport, seen = scripted(answer)
        with (
            StripeClient(KEY, api_base="http://x", transport=transport, sleep=waits.append) as client,
            pytest.raises(StripeApiError, match=str(answer.status_code)),
        ):
            client.list_meters()
        assert len(seen) == 1


def test_retry_after_as_an_http_date_is_honoured_up_to_the_cap() -> None:
    import email.utils

    answers = [
        httpx.Response(503, headers={"Retry-After": email.utils.formatdate(NOW + 7, usegmt=True)}),
        httpx.Response(503, headers={"Retry-After": email.utils.formatdate(NOW + 600, usegmt=True)}),
        httpx.Response(200, json={"id": "mtr_1", "event_name": "x", "status": "active"}),
    ]
    transport, _ = scripted(*answers)
    waits: list[float] = []
    with StripeClient(
        KEY, api_base="http://x", transport=transport, sleep=waits.append, wall_clock=lambda: NOW
    ) as client:
        client.meter("mtr_1")
    assert waits == [7.0, 20.0]  # Stripe's date, then the client's own cap on a wait
