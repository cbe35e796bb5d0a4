"""The emulator served over a real socket: stripe-python 16 against it, the CLI, faults on the wire."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
import stripe
from stripe.events import V1BillingMeterErrorReportTriggeredEvent

from connector.devtools.emulator import EmulatorProcess

KEY = "sk_test_emulatorserver01"


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(seed=1) as process:
        yield process


@pytest.fixture
def url(server: EmulatorProcess) -> Iterator[str]:
    httpx.post(f"{server.url}/_emulator/reset").raise_for_status()
    yield server.url


def client_for(url: str, key: str = KEY, retries: int = 0) -> stripe.StripeClient:
    return stripe.StripeClient(
        key, base_addresses={"api": url, "meter_events": url}, max_network_retries=retries
    )


def now_minute() -> int:
    now = int(time.time())
    return now - now % 60


def events(prefix: str, count: int, value: str = "1", name: str = "api_requests") -> list[Any]:
    return [
        {
            "event_name": name,
            "identifier": f"{prefix}-{i}",
            "payload": {"stripe_customer_id": "cus_A", "value": value},
        }
        for i in range(count)
    ]


def test_ready_line_and_port_zero(server: EmulatorProcess) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    assert int(server.url.rsplit(":", 1)[1]) > 0
    assert httpx.get(f"{server.url}/_emulator/health").json() == {"status": "ok"}


def test_stripe_python_session_stream_and_summaries(url: str) -> None:
    api = client_for(url)
    meter = api.v1.billing.meters.create(
        {"display_name": "API calls", "event_name": "api_requests", "default_aggregation": {"formula": "sum"}}
    )
    assert meter.status == "active" and meter.id.startswith("mtr_")
    session = api.v2.billing.meter_event_session.create()
    assert session.object == "v2.billing.meter_event_session"
    assert session.expires_at.endswith("Z") and session.livemode is False
    stream = client_for(url, session.authentication_token)
    stream.v2.billing.meter_event_stream.create({"events": events("s", 100, "2")})
    stream.v2.billing.meter_event_stream.create({"events": events("s", 10, "2")})  # duplicates
    start = now_minute() - 3600
    summaries = api.v1.billing.meters.event_summaries.list(
        meter.id, {"customer": "cus_A", "start_time": start, "end_time": start + 7200}
    )
    assert [s.aggregated_value for s in summaries.data] == [200.0]
    stats = httpx.get(f"{url}/_emulator/stats").json()
    assert stats["events_accepted"] == 100 and stats["duplicates_ignored"] == 10


def test_stripe_python_raises_temporary_session_expired(url: str) -> None:
    api = client_for(url)
    session = api.v2.billing.meter_event_session.create()
    stream = client_for(url, session.authentication_token)
    stream.v2.billing.meter_event_stream.create({"events": events("t", 1)})
    httpx.post(f"{url}/_emulator/faults", json={"expire_tokens": True}).raise_for_status()
    with pytest.raises(stripe.TemporarySessionExpiredError) as caught:
        stream.v2.billing.meter_event_stream.create({"events": events("t2", 1)})
    assert caught.value.http_status == 401
    assert caught.value.code == "billing_meter_event_session_expired"
    with pytest.raises(stripe.AuthenticationError):
        client_for(url, session.authentication_token).v1.billing.meters.list()


def test_session_ttl_flag_expires_tokens_in_real_time() -> None:
    with EmulatorProcess(session_ttl=0.3) as short:
        api = client_for(short.url)
        session = api.v2.billing.meter_event_session.create()
        time.sleep(0.4)
        with pytest.raises(stripe.TemporarySessionExpiredError):
            client_for(short.url, session.authentication_token).v2.billing.meter_event_stream.create(
                {"events": events("x", 1)}
            )


def test_stripe_python_meters_pagination_and_lifecycle(url: str) -> None:
    api = client_for(url)
    created = [
        api.v1.billing.meters.create(
            {"display_name": f"M{i}", "event_name": f"event_{i}", "default_aggregation": {"formula": "count"}}
        ).id
        for i in range(5)
    ]
    page = api.v1.billing.meters.list({"limit": 2})
    assert page.has_more is True and len(page.data) == 2
    assert [m.id for m in page.auto_paging_iter()] == list(reversed(created))
    api.v1.billing.meters.deactivate(created[0])
    assert [m.id for m in api.v1.billing.meters.list({"status": "inactive"}).data] == [created[0]]
    with pytest.raises(stripe.InvalidRequestError) as caught:
        api.v1.billing.meters.create(
            {"display_name": "again", "event_name": "event_1", "default_aggregation": {"formula": "sum"}}
        )
    assert caught.value.param == "event_name"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        api.v1.billing.meters.retrieve("mtr_nope")
    assert missing.value.http_status == 404


def test_stripe_python_prices_and_plans(url: str) -> None:
    api = client_for(url)
    meter = api.v1.billing.meters.create(
        {"display_name": "Tokens", "event_name": "tokens", "default_aggregation": {"formula": "sum"}}
    )
    price = api.v1.prices.create(
        {
            "currency": "usd",
            "unit_amount_decimal": Decimal("0.5"),
            "product_data": {"name": "Tokens"},
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    plan = api.v1.plans.create(
        {
            "currency": "usd",
            "amount": 3,
            "interval": "month",
            "product": str(price.product),
            "usage_type": "metered",
            "meter": meter.id,
        }
    )
    billed = api.v1.prices.list({"recurring": {"meter": meter.id}, "active": True})
    assert {p.id for p in billed.data} == {price.id, plan.id}
    assert [p.id for p in api.v1.plans.list().auto_paging_iter()] == [plan.id, price.id]
    assert api.v1.plans.retrieve(plan.id).meter == meter.id
    api.v1.billing.meters.deactivate(meter.id)
    with pytest.raises(stripe.InvalidRequestError):
        api.v1.prices.create(
            {
                "currency": "usd",
                "unit_amount": 1,
                "product": str(price.product),
                "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
            }
        )


def test_stripe_python_meter_events_adjustments_and_error_reports(url: str) -> None:
    api = client_for(url)
    meter = api.v1.billing.meters.create(
        {"display_name": "API", "event_name": "api_requests", "default_aggregation": {"formula": "sum"}}
    )
    api.v1.billing.meter_events.create(
        {
            "event_name": "api_requests",
            "payload": {"stripe_customer_id": "cus_A", "value": "5"},
            "identifier": "one",
        }
    )
    with pytest.raises(stripe.InvalidRequestError):
        api.v1.billing.meter_events.create(
            {
                "event_name": "api_requests",
                "payload": {"stripe_customer_id": "cus_A", "value": "5"},
                "identifier": "one",
            }
        )
    api.v1.billing.meter_events.create(
        {
            "event_name": "api_requests",
            "payload": {"stripe_customer_id": "cus_A", "value": "7"},
            "identifier": "two",
        }
    )
    adjustment = api.v2.billing.meter_event_adjustments.create(
        {"event_name": "api_requests", "type": "cancel", "cancel": {"identifier": "two"}}
    )
    assert adjustment.object == "v2.billing.meter_event_adjustment"
    session = api.v2.billing.meter_event_session.create()
    client_for(url, session.authentication_token).v2.billing.meter_event_stream.create(
        {"events": events("bad", 2, "lots") + events("lost", 1, name="unmetered")}
    )
    start = now_minute() - 3600
    total = api.v1.billing.meters.event_summaries.list(
        meter.id, {"customer": "cus_A", "start_time": start, "end_time": start + 7200}
    )
    assert total.data[0].aggregated_value == 5.0
    reports = list(api.v2.core.events.list({"limit": 1}).auto_paging_iter())
    assert sorted(r.type for r in reports) == [
        "v1.billing.meter.error_report_triggered",
        "v1.billing.meter.no_meter_found",
    ]
    triggered = next(r for r in reports if r.type == "v1.billing.meter.error_report_triggered")
    assert isinstance(triggered, V1BillingMeterErrorReportTriggeredEvent)
    assert triggered.data.reason.error_types[0].code == "meter_event_invalid_value"
    assert triggered.data.reason.error_count == 2
    assert triggered.fetch_related_object().id == meter.id
    fetched = api.v2.core.events.retrieve(triggered.id)
    assert fetched.id == triggered.id


def test_rate_limit_over_the_wire(url: str) -> None:
    httpx.post(
        f"{url}/_emulator/faults", json={"rate_limited_rate": 1.0, "retry_after": 3}
    ).raise_for_status()
    api = client_for(url)
    session = api.v2.billing.meter_event_session.create()
    with pytest.raises(stripe.RateLimitError) as caught:
        client_for(url, session.authentication_token).v2.billing.meter_event_stream.create(
            {"events": events("r", 1)}
        )
    assert caught.value.http_status == 429
    assert caught.value.headers is not None and caught.value.headers["Retry-After"] == "3"
    assert caught.value.headers["Stripe-Rate-Limited-Reason"]


def test_dropped_connections_fail_on_the_wire_but_are_recorded(url: str) -> None:
    api = client_for(url)
    token = api.v2.billing.meter_event_session.create().authentication_token
    httpx.post(f"{url}/_emulator/faults", json={"drop_rate": 1.0}).raise_for_status()
    body = orjson.dumps({"events": events("drop", 3)})
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(
            f"{url}/v2/billing/meter_event_stream", content=body, headers={"Authorization": f"Bearer {token}"}
        )
    with pytest.raises(stripe.APIConnectionError):
        client_for(url, token).v2.billing.meter_event_stream.create({"events": events("drop2", 1)})
    httpx.post(f"{url}/_emulator/faults", json={"drop_rate": 0}).raise_for_status()
    retry = httpx.post(
        f"{url}/v2/billing/meter_event_stream", content=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert retry.status_code == 200
    stats = httpx.get(f"{url}/_emulator/stats").json()
    assert stats["stream_requests_dropped"] == 2
    assert stats["events_accepted"] == 4 and stats["duplicates_ignored"] == 3


def test_concurrent_streams_count_each_identifier_once(url: str) -> None:
    api = client_for(url)
    meter = api.v1.billing.meters.create(
        {"display_name": "API", "event_name": "api_requests", "default_aggregation": {"formula": "count"}}
    )
    token = api.v2.billing.meter_event_session.create().authentication_token
    run = uuid.uuid4().hex
    # 40 requests of 100 events over 2,000 distinct identifiers: each identifier sent twice.
    bodies = [orjson.dumps({"events": events(f"{run}-{i % 20}", 100)}) for i in range(40)]

    def send(body: bytes) -> int:
        with httpx.Client() as http:
            return http.post(
                f"{url}/v2/billing/meter_event_stream",
                content=body,
                headers={"Authorization": f"Bearer {token}"},
            ).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert set(pool.map(send, bodies)) == {200}
    start = now_minute() - 3600
    summary = api.v1.billing.meters.event_summaries.list(
        meter.id, {"customer": "cus_A", "start_time": start, "end_time": start + 7200}
    )
    assert summary.data[0].aggregated_value == 2000.0
    stats = httpx.get(f"{url}/_emulator/stats").json()
    assert stats["events_received"] == 4000
    assert stats["events_accepted"] == 2000 and stats["duplicates_ignored"] == 2000


def test_stop_is_graceful_and_a_busy_port_is_an_error() -> None:
    first = EmulatorProcess()
    first.start()
    port = int(first.url.rsplit(":", 1)[1])
    try:
        with pytest.raises(RuntimeError, match="status 1"):
            EmulatorProcess(port=port).start()
    finally:
        first.stop()
    assert first.returncode == 0


def test_cli_rejects_bad_flags() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "connector", "emulator", "--error-rate", "2", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "error_rate" in result.stderr


def test_child_dies_with_its_parent() -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from connector.devtools.emulator import EmulatorProcess
        process = EmulatorProcess()
        process.start()
        print(process.process.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            # A killed child stays a zombie until reaped by init; /proc says which.
            with open(f"/proc/{child}/stat") as stat:
                if stat.read().split(") ")[1].startswith("Z"):
                    break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the emulator outlived its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
