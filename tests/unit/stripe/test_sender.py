"""The sender against the in-process emulator: outcomes, retries, renewals, bisection, AIMD, secrecy."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import orjson
import pytest

from connector.config.secrets import Secret, redact
from connector.config.settings import SenderSettings, StripeSettings
from connector.devtools.emulator import EmulatorConfig, ManualClock, create_app
from connector.devtools.emulator.app import EmulatorApp
from connector.errors import FatalError, StripeRejected
from connector.records import MeterEvent
from connector.stripe.http import AiohttpClient, HttpResponse, HttpxClient
from connector.stripe.results import BatchResult, Rejection
from connector.stripe.retry import RetryPolicy
from connector.stripe.sender import MeterEventSender

pytestmark = pytest.mark.anyio

KEY = "sk_test_senderunit0001secretpart"
BASE = "http://emulator.test"
NOW = 1_717_243_200.0  # 2024-06-01T12:00:00Z
TIMESTAMP = "2024-06-01T11:59:00.000Z"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def events(prefix: str, count: int = 10) -> list[MeterEvent]:
    return [
        MeterEvent(f"{prefix}-{i}", "api_requests", TIMESTAMP, {"stripe_customer_id": "cus_A", "value": "1"})
        for i in range(count)
    ]


class FlakyTransport(httpx.AsyncBaseTransport):
    """Raises the given httpx errors for the next stream requests, then lets them through."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.failures: list[Exception] = []
        self.stream_requests = 0
        self.on_stream: Callable[[int], None] | None = None  # called with the count before forwarding

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/meter_event_stream"):
            self.stream_requests += 1
            if self.on_stream is not None:
                self.on_stream(self.stream_requests)
            if self.failures:
                raise self.failures.pop(0)
        return await self.inner.handle_async_request(request)


class Emu:
    """The emulator in-process on a manual clock; the sender's sleeps move that clock."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.clock = ManualClock(NOW)
        self.app: EmulatorApp = create_app(config, clock=self.clock)
        self.transport = FlakyTransport(httpx.ASGITransport(app=self.app))
        self.http = HttpxClient(transport=self.transport)
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], None] | None = None

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)
        if self.on_sleep is not None:
            self.on_sleep()
        await asyncio.sleep(0)

    def sender(self, key: str = KEY, **options: Any) -> MeterEventSender:
        options.setdefault("meter_events_base", BASE)
        options.setdefault("rng", random.Random(4))
        return MeterEventSender(
            api_key=key,
            api_base=BASE,
            http=self.http,
            clock=self.clock,
            wall_clock=self.clock,
            sleep=self.sleep,
            **options,
        )

    def faults(self, **settings: Any) -> None:
        if self.app.state.faults.update(settings):
            self.app.state.expire_tokens()

    def stats(self) -> dict[str, Any]:
        return self.app.state.stats_json()

    def received(self, batch: list[MeterEvent]) -> bool:
        return all(self.app.state.event_status(e.identifier) is not None for e in batch)


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    emulator = Emu(EmulatorConfig(seed=11))
    yield emulator
    await emulator.http.aclose()


# ------------------------------------------------------------------------------- answers and policy


def response(
    status: int, error: dict[str, str] | None = None, headers: dict[str, str] | None = None, raw: bytes = b""
) -> HttpResponse:
    body = orjson.dumps({"error": error}) if error is not None else raw
    return HttpResponse(status, httpx.Headers(headers or {}), body)


EXPIRED = {"type": "temporary_session_expired", "code": "billing_meter_event_session_expired", "message": "m"}
INVALID_TOKEN = {"type": "invalid_request_error", "code": "invalid_session_token", "message": "m"}
BAD_PARAM = {"type": "invalid_request_error", "code": "parameter_invalid", "message": "events[0] bad"}
API_ERROR = {"type": "api_error", "code": "internal_error", "message": "boom"}

def test_redact_masks_given_secrets_and_key_shapes() -> None:
    text = redact(f"token mes_tok_abc and key {KEY} and sk_live_0123456789abc", ["mes_tok_abc"])
    assert "mes_tok_abc" not in text and KEY[8:] not in text and "0123456789abc" not in text
    assert "sk_live_**********" in text


def test_backoff_is_full_jitter_under_a_cap() -> None:
    policy = RetryPolicy(initial_backoff_s=0.2, max_backoff_s=30)
    assert policy.backoff(1, 0.5) == pytest.approx(0.1)
    assert policy.backoff(3, 0.999) == pytest.approx(0.8 * 0.999)
    assert policy.backoff(50, 0.5) == pytest.approx(15)
    assert policy.backoff(10_000, 0.0) == 0.0


# ---------------------------------------------------------------------------------------- delivery


async def test_delivers_a_batch_once(emu: Emu) -> None:
    async with emu.sender() as sender:
        batch = events("ok", 100)
        result = await sender.send(batch)
    assert result == BatchResult(100, attempts=1)
    assert result.status == "delivered" and result.delivered == tuple(range(100))
    assert emu.received(batch)
    stats = emu.stats()
    assert stats["events_accepted"] == 100 and stats["stream_requests"] == 1
    assert sender.stats().events_delivered == 100


async def test_batch_size_is_checked(emu: Emu) -> None:
    async with emu.sender() as sender:
        with pytest.raises(ValueError):
            await sender.send([])
        with pytest.raises(ValueError):
            await sender.send(events("big", 101))


async def test_faults_are_retried_until_each_identifier_is_delivered_exactly_once(emu: Emu) -> None:
    emu.faults(error_rate=0.3, rate_limited_rate=0.2, drop_rate=0.2)
    batches = [events(f"f{n}", 10) for n in range(30)]
    async with emu.sender(max_in_flight=8) as sender:
        results = await asyncio.gather(*(sender.send(batch) for batch in batches))
    assert all(result.status == "delivered" and not result.rejected for result in results)
    assert sum(result.retries for result in results) > 0
    for batch in batches:
        assert emu.received(batch)
    stats = emu.stats()
    injected = stats["faults_injected"]
    assert injected["error"] > 0 and injected["rate_limited"] > 0 and injected["dropped"] > 0
    # One accepted copy per identifier; a dropped request was recorded, so its resend is a duplicate.
    assert stats["events_accepted"] == 300
    assert stats["duplicates_ignored"] == 10 * stats["stream_requests_dropped"]
    assert sender.stats().retries == sum(result.retries for result in results)


async def test_timeouts_and_connection_errors_are_retried(emu: Emu) -> None:
    emu.transport.failures = [
        httpx.ReadTimeout("slow"),
        httpx.ConnectError("refused"),
        httpx.RemoteProtocolError("cut"),
    ]
    async with emu.sender() as sender:
        batch = events("t")
        result = await sender.send(batch)
    assert result.status == "delivered"
    assert (result.attempts, result.retries, result.renewals) == (4, 3, 0)
    assert sender.stats().transport_errors == 3
    assert emu.received(batch)


async def test_retry_after_is_honoured(emu: Emu) -> None:
    emu.faults(rate_limited_rate=1.0, retry_after=4)
    emu.on_sleep = lambda: emu.faults(rate_limited_rate=0.0)
    async with emu.sender() as sender:
        result = await sender.send(events("ra"))
    assert result.status == "delivered" and result.retries == 1
    assert 4.0 <= emu.sleeps[0] <= 4.0 + 0.2  # Stripe's floor plus at most one initial backoff of jitter


async def test_retry_after_as_an_http_date_is_honoured() -> None:
    clock = ManualClock(NOW)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    date = email.utils.formatdate(NOW + 12, usegmt=True)
    http = ScriptedStream(
        [response(503, API_ERROR, {"Retry-After": date}), response(200, raw=b"{}")],
    )
    sender = MeterEventSender(
        api_key=KEY, http=http, clock=clock, wall_clock=clock, sleep=sleep, rng=random.Random(1)
    )
    result = await sender.send(events("date"))
    assert result.status == "delivered"
    assert 12.0 <= waits[0] <= 12.2


async def test_waits_grow_exponentially_with_full_jitter_and_a_cap(emu: Emu) -> None:
    emu.faults(outage=True)
    policy = RetryPolicy(max_elapsed_s=600, initial_backoff_s=1, max_backoff_s=8)
    async with emu.sender(retry=policy) as sender:
        await sender.send(events("exp"))
    assert len(emu.sleeps) > 10
    for number, wait in enumerate(emu.sleeps, start=1):
        assert 0 <= wait <= min(8, 2 ** (number - 1))
    assert max(emu.sleeps[5:]) > 4  # the cap, not the first backoff, bounds the later waits


async def test_total_time_cap_reports_undelivered_never_delivered(emu: Emu) -> None:
    emu.faults(outage=True)
    policy = RetryPolicy(max_elapsed_s=20, initial_backoff_s=0.5, max_backoff_s=5)
    started = emu.clock()
    async with emu.sender(retry=policy) as sender:
        result = await sender.send(events("cap"))
    assert result.status == "undelivered"
    assert result.undelivered == tuple(range(10)) and result.delivered == () and not result.rejected
    assert result.error is not None and "503" in result.error
    assert emu.clock() - started < 20  # it gave up rather than sleep past the deadline
    assert result.attempts == result.retries + 1 > 1
    assert sender.stats().batches_undelivered == 1 and sender.stats().events_undelivered == 10


async def test_requests_recorded_but_unanswered_are_not_reported_delivered(emu: Emu) -> None:
    emu.faults(drop_rate=1.0)  # Stripe records every request, but no answer ever arrives
    async with emu.sender(retry=RetryPolicy(max_elapsed_s=5)) as sender:
        batch = events("drop")
        result = await sender.send(batch)
    assert result.status == "undelivered" and result.undelivered == tuple(range(10))
    assert emu.received(batch)  # which is harmless: the resend will carry the same identifiers


async def test_a_retry_after_beyond_the_deadline_gives_up_at_once(emu: Emu) -> None:
    emu.faults(rate_limited_rate=1.0, retry_after=120)
    async with emu.sender(retry=RetryPolicy(max_elapsed_s=60)) as sender:
        result = await sender.send(events("late"))
    assert result.status == "undelivered" and result.attempts == 1 and emu.sleeps == []


# --------------------------------------------------------------------------------------- bisection


def bad_value(event: MeterEvent) -> MeterEvent:
    payload: dict[str, Any] = {"stripe_customer_id": "cus_A", "value": 5}  # not a string: Stripe's 400
    return event._replace(payload=payload)


async def test_bisection_isolates_refused_events_and_delivers_the_rest(emu: Emu) -> None:
    batch = events("bis", 40)
    batch[3] = bad_value(batch[3])
    batch[22] = batch[22]._replace(identifier="x" * 101)
    batch[23] = batch[23]._replace(timestamp="yesterday")
    async with emu.sender() as sender:
        result = await sender.send(batch)
    assert result.status == "delivered" and result.undelivered == ()
    assert [r.index for r in result.rejected] == [3, 22, 23]
    assert all(r.code == "parameter_invalid" and r.status == 400 for r in result.rejected)
    assert "payload.value must be a string" in result.rejected[0].message
    assert "identifier" in result.rejected[1].message
    good = [e for i, e in enumerate(batch) if i not in (3, 22, 23)]
    assert result.delivered == tuple(i for i in range(40) if i not in (3, 22, 23))
    assert emu.received(good)
    assert emu.app.state.event_status(batch[3].identifier) is None
    assert emu.stats()["events_accepted"] == 37
    assert sender.stats().events_rejected == 3 and sender.stats().events_delivered == 37
    error = result.rejected[0].error()
    assert isinstance(error, StripeRejected) and error.code == "parameter_invalid"


async def test_every_event_refused(emu: Emu) -> None:
    batch = [bad_value(e) for e in events("allbad", 5)]
    async with emu.sender() as sender:
        result = await sender.send(batch)
    assert [r.index for r in result.rejected] == [0, 1, 2, 3, 4]
    assert result.delivered == () and result.status == "delivered"


async def test_single_event_refused_without_bisection(emu: Emu) -> None:
    async with emu.sender() as sender:
        result = await sender.send([bad_value(events("one", 1)[0])])
    assert result.rejected == (Rejection(0, "parameter_invalid", result.rejected[0].message, 400),)
    assert result.attempts == 1


async def test_bisection_halves_are_retried_and_time_capped(emu: Emu) -> None:
    batch = events("bcap", 8)
    batch[0] = bad_value(batch[0])
    # The whole batch is refused, then an outage hits the halves: they end undelivered, not delivered.
    emu.transport.on_stream = lambda count: emu.faults(outage=True) if count == 2 else None
    async with emu.sender(retry=RetryPolicy(max_elapsed_s=10)) as sender:
        result = await sender.send(batch)
    assert result.status == "undelivered"
    assert set(result.undelivered) | {r.index for r in result.rejected} == set(range(8))
    assert result.undelivered and result.error is not None and "503" in result.error
    assert not emu.received(batch[1:])


# ---------------------------------------------------------------------- Stripe-Should-Retry: false


class DoNotRetry(httpx.AsyncBaseTransport):
    """Answers the next ``count`` stream requests with ``status`` + ``Stripe-Should-Retry: false``
    (before the emulator sees them), then lets requests through."""

    def __init__(
        self, inner: httpx.AsyncBaseTransport, status: int, count: int, retry_after: str = ""
    ) -> None:
        self.inner, self.status, self.count, self.retry_after = inner, status, count, retry_after

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/meter_event_stream") and self.count:
            self.count -= 1
            headers = {"Stripe-Should-Retry": "false"}
            if self.retry_after:
                headers["Retry-After"] = self.retry_after
            return httpx.Response(self.status, headers=headers, json={"error": API_ERROR})
        return await self.inner.handle_async_request(request)


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_do_not_retry_on_a_failure_leaves_the_batch_undelivered_never_rejected(status: int) -> None:
    emu = Emu(EmulatorConfig(seed=3))
    emu.http = HttpxClient(transport=DoNotRetry(emu.transport, status, count=1))
    batch = events(f"dnr{status}", 10)
    batch[4] = bad_value(batch[4])  # a bad event in the batch must not be found by bisecting now
    async with emu.sender() as sender:
        result = await sender.send(batch)
        assert result.rejected == () and result.undelivered == tuple(range(10))
        assert result.attempts == 1, "not resent within the sender, not bisected"
        assert result.error is not None and "asked not to retry" in result.error
        assert len(emu.sleeps) == 1 and 0 <= emu.sleeps[0] <= 0.2, "held back before handing it back"
        assert not any(emu.received([e]) for e in batch)
        # The pipeline sends undelivered events again later: then they are judged on their merits.
        again = await sender.send(batch)
    assert [r.index for r in again.rejected] == [4] and again.undelivered == ()
    assert emu.received([e for i, e in enumerate(batch) if i != 4])
    await emu.http.aclose()


async def test_do_not_retry_waits_for_retry_after_and_backs_off_while_it_repeats() -> None:
    emu = Emu(EmulatorConfig(seed=3))
    emu.http = HttpxClient(transport=DoNotRetry(emu.transport, 429, count=1, retry_after="7"))
    async with emu.sender() as sender:
        first = await sender.send(events("dnr-after", 3))
        assert first.undelivered == (0, 1, 2) and emu.sleeps == [7.0]
        assert sender.stats().retries == 1, "counted, so the pipeline holds back new records"
    await emu.http.aclose()
    # Without Retry-After, consecutive "do not retry" answers wait up to the backoff of their count.
    emu = Emu(EmulatorConfig(seed=3))
    emu.http = HttpxClient(transport=DoNotRetry(emu.transport, 500, count=6))
    policy = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=100.0)
    async with emu.sender(retry=policy, rng=random.Random(0)) as sender:
        for _ in range(6):
            assert (await sender.send(events("dnr-grow", 2))).undelivered == (0, 1)
    draws = random.Random(0)
    assert emu.sleeps == [policy.backoff(n, draws.random()) for n in range(1, 7)]
    await emu.http.aclose()


# ------------------------------------------------------------------------------------------ sessions


async def test_expired_token_renews_and_resends_without_a_failed_attempt(emu: Emu) -> None:
    async with emu.sender() as sender:
        await sender.send(events("before"))
        emu.faults(expire_tokens=True)
        batch = events("after")
        result = await sender.send(batch)
    assert result.status == "delivered"
    assert (result.attempts, result.retries, result.renewals) == (2, 0, 1)
    assert emu.sleeps == []
    assert emu.stats()["stream_requests_by_status"]["401"] == 1
    assert emu.received(batch)


async def test_one_renewal_for_a_hundred_concurrent_batches_after_a_401(emu: Emu) -> None:
    async with emu.sender(max_in_flight=100) as sender:
        await sender.send(events("warm", 1))
        emu.faults(expire_tokens=True)
        results = await asyncio.gather(*(sender.send(events(f"c{n}", 2)) for n in range(100)))
    assert all(r.status == "delivered" for r in results)
    assert emu.stats()["sessions_created"] == 2
    assert sender.stats().sessions_created == 2


async def test_session_renewed_ahead_of_expiry_without_any_401(emu: Emu) -> None:
    async with emu.sender(max_in_flight=100) as sender:
        await sender.send(events("warm", 1))
        emu.clock.advance(900 - 30)  # inside the 60 s renewal margin, token still valid
        results = await asyncio.gather(*(sender.send(events(f"p{n}", 2)) for n in range(100)))
    assert all(r.status == "delivered" and r.renewals == 0 for r in results)
    stats = emu.stats()
    assert stats["sessions_created"] == 2 and "401" not in stats["stream_requests_by_status"]


async def test_five_second_tokens_keep_working(emu: Emu) -> None:
    emu.faults(session_ttl=5)
    async with emu.sender() as sender:
        for n in range(10):
            assert (await sender.send(events(f"short{n}", 1))).status == "delivered"
            emu.clock.advance(1.5)
    stats = emu.stats()
    assert "401" not in stats["stream_requests_by_status"]
    assert 4 <= stats["sessions_created"] <= 8


class ScriptedStream:
    """An ``HttpClient`` that creates real-looking sessions and answers stream requests from a script."""

    def __init__(self, stream_answers: list[HttpResponse], repeat_last: bool = False) -> None:
        self.answers = stream_answers
        self.repeat_last = repeat_last
        self.sessions = 0
        self.stream_requests = 0

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        if url.endswith("/meter_event_session"):
            self.sessions += 1
            document = {
                "id": f"bmes_{self.sessions}",
                "authentication_token": f"mes_tok_secret{self.sessions:04d}",
                "created": "2024-06-01T12:00:00.000Z",
                "expires_at": "2024-06-01T12:15:00.000Z",
                "livemode": False,
            }
            return HttpResponse(200, httpx.Headers(), orjson.dumps(document))
        self.stream_requests += 1
        if self.repeat_last and len(self.answers) == 1:
            return self.answers[0]
        return self.answers.pop(0)

    async def aclose(self) -> None:
        pass


async def test_renewals_per_batch_are_bounded() -> None:
    clock = ManualClock(NOW)

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    http = ScriptedStream([response(401, EXPIRED)], repeat_last=True)
    sender = MeterEventSender(
        api_key=KEY,
        http=http,
        clock=clock,
        wall_clock=clock,
        sleep=sleep,
        max_renewals=3,
        retry=RetryPolicy(max_elapsed_s=30),
    )
    result = await sender.send(events("loop"))
    assert result.status == "undelivered" and result.renewals == 3
    assert result.error is not None and "expired again" in result.error
    assert http.sessions == 4  # the first session and three renewals, however long the retries went on


async def test_an_invalid_token_is_renewed_once_then_fatal() -> None:
    http = ScriptedStream([response(401, INVALID_TOKEN)], repeat_last=True)
    sender = MeterEventSender(api_key=KEY, http=http)
    with pytest.raises(FatalError, match="freshly created meter event session token"):
        await sender.send(events("bad-token"))
    assert http.sessions == 2 and http.stream_requests == 2


async def test_an_invalid_token_once_is_recovered() -> None:
    http = ScriptedStream([response(401, INVALID_TOKEN), response(200, raw=b"{}")])
    sender = MeterEventSender(api_key=KEY, http=http)
    result = await sender.send(events("recover"))
    assert result.status == "delivered" and result.renewals == 1 and result.retries == 0


async def test_a_revoked_key_is_fatal() -> None:
    emulator = Emu(EmulatorConfig(api_key="sk_test_theonlyacceptedkey"))
    async with emulator.sender("sk_test_revoked000secret") as sender:
        with pytest.raises(FatalError) as caught:
            await sender.send(events("revoked"))
    assert "sk_test_**********" in str(caught.value) and "revoked000secret" not in str(caught.value)
    assert emulator.stats()["events_received"] == 0
    await emulator.http.aclose()


async def test_a_wrong_endpoint_is_fatal_not_dead_lettered(emu: Emu) -> None:
    async with emu.sender(meter_events_base=BASE + "/wrong") as sender:
        with pytest.raises(FatalError, match="404"):
            await sender.send(events("wrong"))


async def test_transient_session_failures_are_retried_by_the_sender() -> None:
    clock = ManualClock(NOW)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    class FlakySessions(ScriptedStream):
        failures = 2

        async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
            if url.endswith("/meter_event_session") and self.failures:
                self.failures -= 1
                return response(503, API_ERROR, {"Retry-After": "2"})
            return await super().post(url, body, headers)

    http = FlakySessions([response(200, raw=b"{}")])
    sender = MeterEventSender(api_key=KEY, http=http, clock=clock, wall_clock=clock, sleep=sleep)
    result = await sender.send(events("sess"))
    assert result.status == "delivered" and result.retries == 2 and result.attempts == 1
    assert all(wait >= 2 for wait in waits)


# ----------------------------------------------------------------------------------------------- AIMD


async def test_429s_shrink_concurrency_and_successes_restore_it(emu: Emu) -> None:
    emu.faults(rate_limited_rate=0.4)
    async with emu.sender(max_in_flight=16) as sender:
        assert sender.concurrency == 16
        low = 16

        async def send(n: int) -> BatchResult:
            nonlocal low
            result = await sender.send(events(f"aimd{n}", 1))
            low = min(low, sender.concurrency)
            return result

        results = await asyncio.gather(*(send(n) for n in range(64)))
        assert all(r.status == "delivered" for r in results)
        assert sender.limiter.decreases >= 2 and low <= 4
        assert sender.stats().rate_limited > 0
        emu.faults(rate_limited_rate=0.0)
        for n in range(40):
            await asyncio.gather(*(sender.send(events(f"up{n}-{k}", 1)) for k in range(8)))
        assert sender.concurrency == 16


async def test_token_bucket_paces_requests(emu: Emu) -> None:
    async with emu.sender(rate_limit_rps=10) as sender:  # burst of 1: one request per 0.1 s
        await asyncio.gather(*(sender.send(events(f"rate{n}", 1)) for n in range(5)))
        assert sender.stats().rate_limit_waits >= 4
    assert sum(emu.sleeps) >= 0.4 - 1e-9


# ------------------------------------------------------------------------------------------ secrecy


async def test_secrets_never_reach_logs_reprs_or_errors(emu: Emu, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    async with emu.sender() as sender:
        await sender.send(events("s0"))
        emu.faults(expire_tokens=True, error_rate=0.5)
        results = [await sender.send(events(f"s{n}")) for n in range(1, 6)]
        emu.faults(error_rate=0.0)
        results.append(await sender.send([bad_value(e) for e in events("s9", 2)]))
        session = sender.sessions.session
        assert session is not None
        tokens = list(emu.app.state.sessions)  # every token the emulator ever issued
        assert len(tokens) >= 2
        texts += [repr(sender), str(sender), repr(sender.sessions), repr(session), repr(sender.stats())]
        texts += [repr(r) for r in results] + [repr(sender.limiter), repr(sender.bucket), repr(emu.http)]
    emulator = Emu(EmulatorConfig(api_key="sk_test_theonlyacceptedkey"))
    async with emulator.sender() as refused:
        with pytest.raises(FatalError) as caught:
            await refused.send(events("x"))
        texts += [str(caught.value), repr(caught.value), repr(refused)]
    await emulator.http.aclose()
    texts.append(caplog.text)
    assert any("renewing" in record.getMessage() for record in caplog.records)
    assert any("retry" in record.getMessage() for record in caplog.records)
    for text in texts:
        assert KEY not in text and KEY[8:] not in text
        for token in tokens:
            assert token not in text


# ------------------------------------------------------------------------------------- construction


async def test_from_settings_maps_every_field() -> None:
    stripe = StripeSettings(
        api_key=Secret(KEY, "sk_test_"),
        api_base="http://api.example",
        meter_events_base="http://meter.example/",
        api_version="2025-03-31.basil",
    )
    settings = SenderSettings(
        max_in_flight=7,
        rate_limit_rps=25,
        session_renew_margin_s=30,
        retry_max_elapsed_s=90,
        retry_initial_backoff_ms=100,
        retry_max_backoff_ms=2000,
        http_connect_timeout_s=1,
        http_read_timeout_s=2,
        http_timeout_s=3,
    )
    sender = MeterEventSender.from_settings(stripe, settings)
    assert sender.url == "http://meter.example/v2/billing/meter_event_stream"
    assert sender.concurrency == 7 and sender.bucket.rate == 25
    assert sender.retry == RetryPolicy(max_elapsed_s=90, initial_backoff_s=0.1, max_backoff_s=2)
    assert sender.sessions.renew_margin_s == 30 and sender.sessions.api_version == "2025-03-31.basil"
    assert sender.sessions.url == "http://api.example/v2/billing/meter_event_session"
    http = sender._http
    assert isinstance(http, AiohttpClient)
    assert (http.timeouts.connect_s, http.timeouts.read_s, http.timeouts.total_s) == (1, 2, 3)
    assert http.max_connections > 7
    await sender.aclose()
    with pytest.raises(RuntimeError):
        await sender.send(events("closed", 1))


async def test_a_sender_needs_a_key_or_a_session_manager() -> None:
    with pytest.raises(ValueError):
        MeterEventSender()


# ------------------------------------------------------------------------------ back-off signal


class Backoffs:
    """Records each ``on_backoff`` call with the thread it ran on and the sleeps already taken then."""

    def __init__(self, emu: Emu | None = None) -> None:
        self.emu = emu
        self.reasons: list[str] = []
        self.threads: set[int] = set()
        self.sleeps_before: list[int] = []

    def __call__(self, reason: str) -> None:
        import threading

        self.reasons.append(reason)
        self.threads.add(threading.get_ident())
        if self.emu is not None:
            self.sleeps_before.append(len(self.emu.sleeps))


async def test_no_backoff_signal_for_batches_delivered_at_once(emu: Emu) -> None:
    seen = Backoffs(emu)
    async with emu.sender(on_backoff=seen) as sender:
        await asyncio.gather(*(sender.send(events(f"quick{n}", 5)) for n in range(20)))
        emu.faults(expire_tokens=True)  # a renewal is not a back-off
        assert (await sender.send(events("renewed", 2))).renewals == 1
    assert seen.reasons == []


async def test_each_retry_wait_is_signalled_with_its_reason_as_it_starts(emu: Emu) -> None:
    import threading

    emu.transport.failures = [httpx.ReadTimeout("slow")]
    http = ScriptedStream(
        [
            response(429, {"code": "rate_limit"}),
            response(503, API_ERROR),
            response(200, raw=b"{}"),
        ]
    )
    seen = Backoffs(emu)
    async with emu.sender(on_backoff=seen) as sender:
        assert (await sender.send(events("timeout"))).retries == 1
    scripted = MeterEventSender(
        api_key=KEY, http=http, clock=emu.clock, wall_clock=emu.clock, sleep=emu.sleep, on_backoff=seen
    )
    result = await scripted.send(events("statuses"))
    assert result.status == "delivered" and result.retries == 2
    assert seen.reasons == ["transport", "rate_limited", "other"]
    assert seen.sleeps_before == [0, 1, 2], "signalled before each wait, not after it"
    assert seen.threads == {threading.get_ident()}, "on the sender's event-loop thread"
    assert len(seen.reasons) == sender.stats().retries + scripted.stats().retries


async def test_the_hold_back_after_do_not_retry_is_signalled_as_defer() -> None:
    emu = Emu(EmulatorConfig(seed=3))
    emu.http = HttpxClient(transport=DoNotRetry(emu.transport, 503, count=1))
    seen = Backoffs(emu)
    async with emu.sender(on_backoff=seen) as sender:
        assert (await sender.send(events("dnr-signal", 3))).undelivered == (0, 1, 2)
        assert seen.reasons == ["defer"] and seen.sleeps_before == [0]
        assert (await sender.send(events("dnr-signal", 3))).status == "delivered"
    assert seen.reasons == ["defer"]
    await emu.http.aclose()


async def test_from_settings_passes_on_backoff_through() -> None:
    stripe = StripeSettings(api_key=Secret(KEY, "sk_test_"), api_base=BASE, meter_events_base=BASE)
    reasons: list[str] = []
    http = ScriptedStream([response(500, API_ERROR), response(200, raw=b"{}")])
    clock = ManualClock(NOW)

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    sender = MeterEventSender.from_settings(
        stripe,
        SenderSettings(),
        http=http,
        clock=clock,
        wall_clock=clock,
        sleep=sleep,
        on_backoff=reasons.append,
    )
    assert (await sender.send(events("settings"))).status == "delivered"
    assert reasons == ["other"]
    await sender.aclose()


# ------------------------------------------------------------------------------- idempotency keys


class KeyRecorder(httpx.AsyncBaseTransport):
    """Records each stream request's Idempotency-Key and body before the emulator sees it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.seen: list[tuple[str | None, bytes]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/meter_event_stream"):
            self.seen.append((request.headers.get("Idempotency-Key"), await request.aread()))
        return await self.inner.handle_async_request(request)


async def test_every_stream_request_carries_a_key_naming_its_records_and_retries_reuse_it(emu: Emu) -> None:
    from connector.stripe.request_keys import Origin, body_digest, parse_request_key

    recorder = KeyRecorder(emu.transport)
    emu.http = HttpxClient(transport=recorder)
    batch = events("key", 40)
    batch[3] = bad_value(batch[3])  # forces a bisection: halves are other bodies, so other keys
    origins = [Origin("NsNsNsNsNsNsNsNsNsNs01", 2, 1000 + i) for i in range(40)]
    emu.transport.failures = [httpx.ConnectError("refused")]  # the first request is sent twice
    async with emu.sender() as sender:
        result = await sender.send(batch, origins)
    assert [r.index for r in result.rejected] == [3]
    keys = [key for key, _body in recorder.seen]
    assert all(key is not None for key in keys)
    for key, body in recorder.seen:
        assert key is not None
        parsed = parse_request_key(key)
        assert parsed is not None and parsed.digest == body_digest(body)
        sent = [doc["identifier"] for doc in orjson.loads(body)["events"]]
        (only,) = parsed.ranges
        offsets = [1000 + int(identifier.rsplit("-", 1)[1]) for identifier in sent]
        assert (only.first, only.last) == (min(offsets), max(offsets))
    # The failed first request and its retry: the same key and the same body.
    assert recorder.seen[0] == recorder.seen[1]
    # Distinct bodies never share a key.
    by_key: dict[str, set[bytes]] = {}
    for key, body in recorder.seen:
        assert key is not None
        by_key.setdefault(key, set()).add(body)
    assert all(len(bodies) == 1 for bodies in by_key.values())
    assert len(by_key) > 2


async def test_without_origins_no_key_is_sent(emu: Emu) -> None:
    recorder = KeyRecorder(emu.transport)
    emu.http = HttpxClient(transport=recorder)
    async with emu.sender() as sender:
        await sender.send(events("nokey", 3))
    assert [key for key, _ in recorder.seen] == [None]
