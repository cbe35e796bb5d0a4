"""stripe-python 16 against the served emulator's account settings and wire features: gzip,
Stripe-Should-Retry, decimal values, sandbox limits, pre-aggregated meters, error reports that name
the request, and acct_ customers."""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
import stripe
from stripe.events import V1BillingMeterErrorReportTriggeredEvent

from connector.devtools.emulator import EmulatorProcess

KEY = "sk_test_emulatorfeature1"
LIVE_KEY = "sk_live_emulatorfeature1"
TRIGGERED = "v1.billing.meter.error_report_triggered"
NO_METER = "v1.billing.meter.no_meter_found"


class Recorder(stripe.RequestsClient):
    """stripe-python's default HTTP client, remembering each exchange's headers (stream calls return
    nothing, so the ``Request-Id`` they got back is only visible here)."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[tuple[str, dict[str, str], int, Mapping[str, str]]] = []

    def request(
        self, method: str, url: str, headers: Mapping[str, str] | None, post_data: Any = None
    ) -> tuple[Any, int, Mapping[str, str]]:
        content, status, response_headers = super().request(method, url, headers, post_data)
        self.exchanges.append((url, dict(headers or {}), status, response_headers))
        return content, status, response_headers


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorProcess]:
    """Compressing, strict about customers, and telling clients not to retry injected errors."""
    with EmulatorProcess(compress=True, require_known_customers=True, should_retry=False, seed=2) as process:
        yield process


@pytest.fixture
def url(server: EmulatorProcess) -> Iterator[str]:
    httpx.post(f"{server.url}/_emulator/reset").raise_for_status()
    yield server.url


def client_for(
    url: str, key: str = KEY, retries: int = 0, recorder: Recorder | None = None
) -> stripe.StripeClient:
    return stripe.StripeClient(
        key,
        base_addresses={"api": url, "meter_events": url},
        max_network_retries=retries,
        http_client=recorder,
    )


def stream_client(url: str, key: str = KEY, **options: Any) -> stripe.StripeClient:
    token = client_for(url, key).v2.billing.meter_event_session.create().authentication_token
    return client_for(url, token, **options)


def event(identifier: str, customer: str, value: str = "1", name: str = "api_requests") -> dict[str, Any]:
    return {
        "event_name": name,
        "identifier": identifier,
        "payload": {"stripe_customer_id": customer, "value": value},
    }


def meter(api: stripe.StripeClient, formula: str = "sum", **extra: Any) -> Any:
    return api.v1.billing.meters.create(
        {
            "display_name": "API calls",
            "event_name": "api_requests",
            "default_aggregation": {"formula": formula},
            **extra,
        }
    )


def total(api: stripe.StripeClient, meter_id: str, customer: str) -> float:
    start = int(time.time()) // 86_400 * 86_400 - 86_400
    summaries = api.v1.billing.meters.event_summaries.list(
        meter_id, {"customer": customer, "start_time": start, "end_time": start + 3 * 86_400}
    )
    return float(summaries.data[0].aggregated_value)


def stats(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/_emulator/stats").json()
    return body


# -- gzip ---------------------------------------------------------------------------------------


def test_stripe_python_reads_compressed_answers(url: str) -> None:
    recorder = Recorder()
    api = client_for(url, recorder=recorder)
    customer = api.v1.customers.create({"name": "Ada"})
    created = meter(api)
    stream_client(url, recorder=recorder).v2.billing.meter_event_stream.create(
        {"events": [event("z1", customer.id, "4"), event("z2", customer.id, "5")]}
    )
    assert total(api, created.id, customer.id) == 9.0
    # requests (stripe-python's default HTTP library) adds Accept-Encoding: gzip, deflate itself.
    for _, _, _, received in recorder.exchanges:
        assert received["Content-Encoding"] == "gzip" and received["Vary"] == "Accept-Encoding"
    assert stats(url)["responses_compressed"] >= len(recorder.exchanges) == 4


def test_raw_clients_get_plain_bytes_or_gzip_as_they_ask(url: str) -> None:
    token = client_for(url).v2.billing.meter_event_session.create().authentication_token
    target = f"{url}/v2/billing/meter_event_stream"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = orjson.dumps({"events": [event("r1", "cus_X")]})

    async def plain() -> tuple[int, Mapping[str, str], bytes]:
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.post(target, data=body, headers={**headers, "Accept-Encoding": "identity"}) as response,
        ):
            return response.status, response.headers, await response.read()

    status, received, raw = asyncio.run(plain())
    assert status == 200 and raw == b"{}" and "Content-Encoding" not in received
    with (
        httpx.Client() as http,
        http.stream("POST", target, content=body, headers={**headers, "Accept-Encoding": "gzip"}) as response,
    ):
        compressed = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip"
    assert compressed[:2] == b"\x1f\x8b" and gzip.decompress(compressed) == b"{}"
    assert int(response.headers["content-length"]) == len(compressed)


# -- Stripe-Should-Retry ------------------------------------------------------------------------


def test_stripe_python_obeys_should_retry(url: str) -> None:
    httpx.post(f"{url}/_emulator/faults", json={"outage": True}).raise_for_status()
    stream = stream_client(url, retries=2)
    with pytest.raises(stripe.APIError) as caught:
        stream.v2.billing.meter_event_stream.create({"events": [event("o1", "cus_X")]})
    assert caught.value.http_status == 503
    assert caught.value.headers is not None and caught.value.headers["Stripe-Should-Retry"] == "false"
    assert stats(url)["stream_requests_by_status"] == {"503": 1}  # --should-retry false: no retry
    httpx.post(f"{url}/_emulator/faults", json={"should_retry": True}).raise_for_status()
    with pytest.raises(stripe.APIError):
        stream_client(url, retries=1).v2.billing.meter_event_stream.create({"events": [event("o2", "cus_X")]})
    assert stats(url)["stream_requests_by_status"] == {"503": 3}  # one retry, as told


def test_cli_should_retry_takes_true_or_false() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "connector", "emulator", "--should-retry", "maybe", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "--should-retry" in result.stderr


# -- asynchronous error reports -----------------------------------------------------------------


def stream_request_id(recorder: Recorder) -> str:
    [request_id] = [r["Request-Id"] for u, _, _, r in recorder.exchanges if u.endswith("/meter_event_stream")]
    return request_id


def test_error_reports_name_the_request_that_carried_the_event(url: str) -> None:
    api = client_for(url)
    created = meter(api)
    customer = api.v1.customers.create({"name": "Known"})
    recorder = Recorder()
    stream_client(url, recorder=recorder).v2.billing.meter_event_stream.create(
        {
            "events": [
                event("ok", customer.id),
                event("stranger", "cus_NeverCreated1"),
                event("unmetered", customer.id, name="nobody_listens"),
            ]
        },
        {"idempotency_key": "stream-key-1"},
    )
    request_id = stream_request_id(recorder)
    reports = api.v2.core.events.list({"types": [TRIGGERED]}).data
    assert len(reports) == 1
    report = api.v2.core.events.retrieve(reports[0].id)
    assert isinstance(report, V1BillingMeterErrorReportTriggeredEvent)
    assert report.related_object.id == created.id
    assert report.data.reason.error_count == 1
    [error_type] = report.data.reason.error_types
    assert error_type.code == "meter_event_customer_not_found" and error_type.error_count == 1
    [sample] = error_type.sample_errors
    assert "cus_NeverCreated1" in sample.error_message
    assert sample.request.id == request_id and request_id.startswith("req_")
    assert sample.request.idempotency_key == "stream-key-1"
    assert report.data.developer_message_summary == "There is 1 invalid event"
    assert report.data.validation_start <= report.data.validation_end
    [lost] = api.v2.core.events.list({"types": [NO_METER]}).data
    lost_event = api.v2.core.events.retrieve(lost.id)
    assert lost_event.data.reason.error_types[0].code == "no_meter"
    assert lost_event.data.reason.error_types[0].sample_errors[0].request.id == request_id


def test_stripe_pythons_own_idempotency_key_is_quoted_back(url: str) -> None:
    api = client_for(url)
    meter(api)
    recorder = Recorder()
    stream_client(url, recorder=recorder).v2.billing.meter_event_stream.create(
        {"events": [event("stranger", "cus_NeverCreated2")]}
    )
    [sent] = [h for u, h, _, _ in recorder.exchanges if u.endswith("/meter_event_stream")]
    [summary] = api.v2.core.events.list({"types": [TRIGGERED]}).data
    sample = api.v2.core.events.retrieve(summary.id).data.reason.error_types[0].sample_errors[0]
    assert sample.request.idempotency_key == sent["Idempotency-Key"]  # stripe-python sends one per POST
    assert sample.request.id == stream_request_id(recorder)


def test_decimal_values_are_an_account_setting(url: str) -> None:
    api = client_for(url)
    created = meter(api)
    customer = api.v1.customers.create({"name": "Whole numbers only"})
    stream_client(url).v2.billing.meter_event_stream.create(
        {"events": [event("d1", customer.id, "2"), event("d2", customer.id, "1.5")]}
    )
    assert total(api, created.id, customer.id) == 2.0
    [report] = api.v2.core.events.list({"types": [TRIGGERED]}).data
    [error_type] = api.v2.core.events.retrieve(report.id).data.reason.error_types
    assert error_type.code == "meter_event_invalid_value"
    with EmulatorProcess(decimal_values=True) as decimals:
        other = client_for(decimals.url)
        created = meter(other)
        stream_client(decimals.url).v2.billing.meter_event_stream.create(
            {"events": [event("d1", "cus_A", "2"), event("d2", "cus_A", "1.5")]}
        )
        assert total(other, created.id, "cus_A") == 3.5
        assert other.v2.core.events.list().data == []


# -- pre-aggregated meters ----------------------------------------------------------------------


def test_pre_aggregated_meter_counts_the_latest_event_of_the_hour(url: str) -> None:
    api = client_for(url)
    customer = api.v1.customers.create({"name": "Hourly totals"}).id
    windowed = meter(api, event_time_window="hour")
    assert windowed.event_time_window == "hour"
    hour = int(time.time()) // 3600 * 3600
    stamps = [hour + 1, hour + 2, hour + 3]
    stream = stream_client(url)
    for i, (value, at) in enumerate(zip(("10", "25", "7"), stamps, strict=True)):
        stamped = event(f"w{i}", customer, value)
        stamped["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(at))
        stream.v2.billing.meter_event_stream.create({"events": [stamped]})
    assert total(api, windowed.id, customer) == 7.0
    api.v1.billing.meters.deactivate(windowed.id)
    plain = meter(api)
    assert plain.event_time_window is None
    stream.v2.billing.meter_event_stream.create(
        {"events": [event(f"p{i}", customer, v) for i, v in enumerate(("10", "25", "7"))]}
    )
    assert total(api, plain.id, customer) == 42.0
    with pytest.raises(stripe.InvalidRequestError) as caught:
        meter(api, event_time_window="minute")
    assert caught.value.param == "event_time_window"


# -- customers and accounts ---------------------------------------------------------------------


def test_accounts_configured_as_customers_are_metered(url: str) -> None:
    api = client_for(url)
    created = meter(api)
    account = api.v2.core.accounts.create(
        {
            "display_name": "Jenny Rosen",
            "configuration": {"customer": {}},
            "include": ["configuration.customer"],
        }
    )
    assert account.id.startswith("acct_") and account.object == "v2.core.account"
    assert account.applied_configurations == ["customer"] and account.livemode is False
    assert account.configuration is not None and account.configuration.customer is not None
    assert api.v2.core.accounts.retrieve(account.id).display_name == "Jenny Rosen"
    merchant = api.v2.core.accounts.create({"configuration": {"merchant": {}}})
    stream_client(url).v2.billing.meter_event_stream.create(
        {"events": [event("a1", account.id, "6"), event("m1", merchant.id, "6")]}
    )
    assert total(api, created.id, account.id) == 6.0
    [report] = api.v2.core.events.list({"types": [TRIGGERED]}).data
    [error_type] = api.v2.core.events.retrieve(report.id).data.reason.error_types
    assert error_type.code == "meter_event_customer_not_found"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        api.v2.core.accounts.retrieve("acct_Missing1")
    assert missing.value.http_status == 404


def test_customers_can_be_retrieved(url: str) -> None:
    api = client_for(url)
    customer = api.v1.customers.create({"name": "Ada", "email": "ada@example.com"})
    assert api.v1.customers.retrieve(customer.id).email == "ada@example.com"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        api.v1.customers.retrieve("cus_Missing1")
    assert caught.value.http_status == 404 and caught.value.code == "resource_missing"
    assert caught.value.user_message == "No such customer: 'cus_Missing1'"


# -- sandbox limits -----------------------------------------------------------------------------


def burst(stream: stripe.StripeClient, count: int, prefix: str) -> tuple[int, list[stripe.RateLimitError]]:
    """``count`` stream calls as fast as one client goes; the successes and the 429s."""
    done, limited = 0, []
    for i in range(count):
        try:
            stream.v2.billing.meter_event_stream.create({"events": [event(f"{prefix}{i}", "cus_A")]})
            done += 1
        except stripe.RateLimitError as error:
            limited.append(error)
    return done, limited


def test_sandbox_limits_test_mode_but_not_live_mode() -> None:
    with EmulatorProcess(sandbox_limits=True) as limited_server:
        started = time.monotonic()
        done, limited = burst(stream_client(limited_server.url), 40, "t")
        elapsed = time.monotonic() - started
        assert limited and done <= 25 + int(elapsed * 25) + 1, (done, elapsed)
        assert limited[0].http_status == 429
        assert limited[0].headers is not None and limited[0].headers["Stripe-Rate-Limited-Reason"]
        done, limited = burst(stream_client(limited_server.url, LIVE_KEY), 40, "l")
        assert (done, limited) == (40, [])
