"""The sender over a real socket against ``kafka-stripe emulator``: both HTTP stacks, faults on the wire."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from connector.devtools.emulator import EmulatorProcess
from connector.errors import FatalError
from connector.records import MeterEvent
from connector.stripe.http import AiohttpClient, HttpClient, HttpxClient, Timeouts
from connector.stripe.request_keys import Origin
from connector.stripe.sender import MeterEventSender, RetryPolicy

pytestmark = pytest.mark.anyio

KEY = "sk_test_senderserver0001secret"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(seed=3) as process:
        yield process


@pytest.fixture
def url(server: EmulatorProcess) -> Iterator[str]:
    httpx.post(f"{server.url}/_emulator/reset").raise_for_status()
    yield server.url


def faults(url: str, **settings: Any) -> None:
    httpx.post(f"{url}/_emulator/faults", json=settings).raise_for_status()


def stats(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/_emulator/stats", timeout=30).json()
    return body


def events(prefix: str, count: int = 10) -> list[MeterEvent]:
    timestamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return [
        MeterEvent(f"{prefix}-{i}", "api_requests", timestamp, {"stripe_customer_id": "cus_A", "value": "1"})
        for i in range(count)
    ]


class FakeTime:
    """Monotonic time that moves only when the sender sleeps, so retries cost no real waiting."""

    def __init__(self) -> None:
        self.now = time.monotonic()
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], None] | None = None

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep()
        await asyncio.sleep(0)


def client(stack: str, timeouts: Timeouts | None = None) -> HttpClient:
    return AiohttpClient(timeouts=timeouts) if stack == "aiohttp" else HttpxClient(timeouts=timeouts)


def sender_for(
    url: str, http: HttpClient, fake: FakeTime, key: str = KEY, **options: Any
) -> MeterEventSender:
    return MeterEventSender(
        api_key=key, api_base=url, meter_events_base=url, http=http, clock=fake, sleep=fake.sleep, **options
    )


@pytest.mark.parametrize("stack", ["aiohttp", "httpx"])
async def test_batches_delivered_over_the_wire(url: str, stack: str) -> None:
    http = client(stack)
    fake = FakeTime()
    async with sender_for(url, http, fake, max_in_flight=16) as sender:
        results = await asyncio.gather(*(sender.send(events(f"{stack}{n}", 100)) for n in range(40)))
    await http.aclose()
    assert all(r.status == "delivered" and r.attempts == 1 for r in results)
    counters = stats(url)
    assert counters["events_accepted"] == 4000 and counters["duplicates_ignored"] == 0
    assert counters["sessions_created"] == 1


@pytest.mark.parametrize("keyed", [False, True], ids=["identifiers", "idempotency-keys"])
async def test_faults_on_the_wire_end_in_exactly_once(url: str, keyed: bool) -> None:
    faults(url, error_rate=0.2, rate_limited_rate=0.2, retry_after=1, drop_rate=0.2)
    http = AiohttpClient()
    fake = FakeTime()

    def origins(n: int) -> list[Origin] | None:
        return [Origin("WireWireWireWireWire01", n % 4, 20 * n + i) for i in range(20)] if keyed else None

    async with sender_for(url, http, fake, max_in_flight=8) as sender:
        results = await asyncio.gather(*(sender.send(events(f"w{n}", 20), origins(n)) for n in range(40)))
    await http.aclose()
    assert all(r.status == "delivered" for r in results)
    counters = stats(url)
    injected = counters["faults_injected"]
    assert injected["error"] and injected["rate_limited"] and injected["dropped"]
    assert counters["events_accepted"] == 800
    if keyed:
        # A request whose answer was lost is resent with its key and body: Stripe replays its answer.
        assert counters["duplicates_ignored"] == 0
        assert counters["idempotent_replays"] == counters["stream_requests_dropped"]
    else:
        # Without keys the resent events are deduplicated by their identifiers.
        assert counters["duplicates_ignored"] == 20 * counters["stream_requests_dropped"]
    # Every 429 carried Retry-After: 1, so no wait after a 429 was shorter than a second.
    assert sender.stats().rate_limited > 0
    assert sum(1 for wait in fake.sleeps if wait >= 1) >= sender.stats().rate_limited


async def test_read_timeouts_are_retried(url: str) -> None:
    faults(url, latency_ms=1500)
    fake = FakeTime()
    fake.on_sleep = lambda: faults(url, latency_ms=0)
    http = AiohttpClient(timeouts=Timeouts(connect_s=1, read_s=0.2, total_s=0.5))
    # The session is created before the slowdown; the stream request then times out once.
    async with sender_for(url, http, fake) as sender:
        faults(url, latency_ms=0)
        await sender.sessions.current()
        faults(url, latency_ms=1500)
        batch = events("slow")
        result = await sender.send(batch)
    await http.aclose()
    assert result.status == "delivered" and result.retries >= 1
    assert sender.stats().transport_errors >= 1
    counters = stats(url)
    assert counters["events_accepted"] == 10


async def test_refused_connections_end_undelivered(url: str) -> None:
    with EmulatorProcess() as doomed:
        dead_url = doomed.url
    fake = FakeTime()
    http = AiohttpClient(timeouts=Timeouts(connect_s=1, read_s=1, total_s=2))
    sender = MeterEventSender(
        api_key=KEY,
        api_base=url,
        meter_events_base=dead_url,
        http=http,
        clock=fake,
        sleep=fake.sleep,
        retry=RetryPolicy(max_elapsed_s=30, initial_backoff_s=1, max_backoff_s=4),
    )
    async with sender:
        result = await sender.send(events("nowhere"))
    await http.aclose()
    assert result.status == "undelivered" and result.undelivered == tuple(range(10))
    assert result.error is not None and "connect" in result.error
    assert sender.stats().transport_errors == result.attempts > 1


async def test_forced_expiry_renews_once_for_many_batches(url: str) -> None:
    http = AiohttpClient()
    fake = FakeTime()
    async with sender_for(url, http, fake, max_in_flight=100) as sender:
        await sender.send(events("first", 1))
        faults(url, expire_tokens=True)
        results = await asyncio.gather(*(sender.send(events(f"e{n}", 5)) for n in range(100)))
    await http.aclose()
    assert all(r.status == "delivered" and r.retries == 0 for r in results)
    assert stats(url)["sessions_created"] == 2
    assert fake.sleeps == []


async def test_short_session_ttl_on_the_wire(url: str) -> None:
    faults(url, session_ttl=1)  # renewed every half second of real time
    http = AiohttpClient()
    async with MeterEventSender(api_key=KEY, api_base=url, meter_events_base=url, http=http) as sender:
        for n in range(6):
            assert (await sender.send(events(f"ttl{n}", 1))).status == "delivered"
            await asyncio.sleep(0.3)
    await http.aclose()
    counters = stats(url)
    assert counters["sessions_created"] >= 3
    assert counters["events_accepted"] == 6


async def test_a_key_the_server_does_not_accept_is_fatal() -> None:
    with EmulatorProcess(api_key="sk_test_theonlyacceptedkey") as strict:
        http = AiohttpClient()
        async with sender_for(strict.url, http, FakeTime(), key="sk_live_revoked000secret") as sender:
            with pytest.raises(FatalError) as caught:
                await sender.send(events("revoked"))
        await http.aclose()
    text = str(caught.value)
    assert "sk_live_**********" in text and "live mode" in text and "revoked000secret" not in text
