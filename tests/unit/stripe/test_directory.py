"""Reads of Stripe's live state before sending: customers (cus_ and acct_), meters, the customers permission,
and the watch thread that runs them off the consumer thread."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from connector.config.secrets import Secret
from connector.devtools.emulator import EmulatorConfig, ManualClock, create_app
from connector.pipeline.stripe_watch import CustomerAnswer, MetersAnswer, StripeWatch
from connector.stripe.directory import StripeDirectory
from connector.stripe.v1 import StripeClient
from tests.unit.stripe.test_v1 import KEY, NOW, SyncASGITransport


def forbid_customers(app: Any) -> Any:
    """The emulator, except that customer reads answer as Stripe does to a restricted key without the
    permission (403)."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/customers"):
            body = (
                b'{"error": {"type": "invalid_request_error", "message": "The provided key does not have '
                b"the required permissions for this endpoint. Having the 'rak_customer_read' permission "
                b'would allow this request to continue."}}'
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return wrapped


@pytest.fixture
def emulator() -> Iterator[tuple[Any, SyncASGITransport]]:
    app = create_app(EmulatorConfig(api_key=KEY, require_known_customers=True), clock=ManualClock(NOW))
    bridge = SyncASGITransport(app)
    yield app, bridge
    bridge.shutdown()


def directory(bridge: SyncASGITransport) -> StripeDirectory:
    return StripeDirectory(
        StripeClient(Secret(KEY), api_base="http://emulator", transport=bridge, max_retries=0)
    )


def test_customers_and_accounts_are_found_deleted_or_missing_ones_are_not(
    emulator: tuple[Any, SyncASGITransport],
) -> None:
    _app, bridge = emulator
    d = directory(bridge)
    made = d.client.post("/v1/customers", {"name": "A"})["id"]
    assert d.customer_exists(made) is True
    assert d.customer_exists("cus_NeverMade1") is False
    with httpx.Client(transport=bridge, base_url="http://emulator") as raw:
        account = raw.post(
            "/v2/core/accounts",
            json={"configuration": {"customer": {}}, "display_name": "acct"},
            headers={"Authorization": f"Bearer {KEY}"},
        )
    assert account.status_code == 200, account.text
    assert d.customer_exists(account.json()["id"]) is True
    assert d.customer_exists("acct_NeverMade1") is False
    assert list(d.customers(10)) == [made]
    assert d.customers_problem() is None


def test_a_key_without_the_customers_permission_is_named_with_what_to_grant(
    emulator: tuple[Any, SyncASGITransport],
) -> None:
    app, _bridge = emulator
    forbidden = SyncASGITransport(forbid_customers(app))
    try:
        problem = directory(forbidden).customers_problem()
    finally:
        forbidden.shutdown()
    assert problem is not None
    assert "Customers: Read" in problem and "CONNECTOR_VERIFY_CUSTOMERS=false" in problem
    assert KEY not in problem


def test_the_watch_answers_lookups_and_meter_reads_off_the_caller_s_thread(
    emulator: tuple[Any, SyncASGITransport],
) -> None:
    _app, bridge = emulator
    d = directory(bridge)
    made = d.client.post("/v1/customers", {"name": "B"})["id"]
    d.client.post(
        "/v1/billing/meters",
        {"display_name": "m", "event_name": "api_requests", "default_aggregation": {"formula": "sum"}},
    )
    results: list[str] = []
    watch = StripeWatch(d, lookups_per_s=100, meter_refresh_s=3600, preload=100, on_lookup=results.append)
    meters = watch.read_meters()
    assert meters is not None and [m.event_name for m in meters] == ["api_requests"]
    watch.start(customers=True)
    try:
        watch.look_up(["cus_Missing9", made])
        watch.refresh_meters()
        answers: list[Any] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(answers) < 4:
            answers += watch.answers()
            time.sleep(0.02)
    finally:
        watch.stop()
    customers = {a for a in answers if isinstance(a, CustomerAnswer)}
    assert CustomerAnswer("cus_Missing9", False) in customers and CustomerAnswer(made, True) in customers
    assert (
        sum(1 for a in answers if isinstance(a, CustomerAnswer) and a.customer == made) == 2
    )  # preload + lookup
    assert any(isinstance(a, MetersAnswer) and a.meters for a in answers)
    assert sorted(results) == ["found", "not_found"]
