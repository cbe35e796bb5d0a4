"""Meter event sessions against the in-process emulator: caching, renewal ahead of expiry, single flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import orjson
import pytest

from connector.config.secrets import Secret
from connector.config.settings import SenderSettings, StripeSettings
from connector.devtools.emulator import EmulatorConfig, ManualClock, create_app
from connector.devtools.emulator.app import EmulatorApp
from connector.errors import FatalError, RetryableError
from connector.stripe.http import HttpResponse, HttpxClient, TransportError
from connector.stripe.session import Session, SessionManager, SessionUnavailable, renewal_delay

pytestmark = pytest.mark.anyio

KEY = "sk_test_sessionunit0001secret"
BASE = "http://emulator.test"
NOW = 1_717_243_200.0  # 2024-06-01T12:00:00Z


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Emu:
    def __init__(self, config: EmulatorConfig) -> None:
        self.clock = ManualClock(NOW)
        self.app: EmulatorApp = create_app(config, clock=self.clock)
        self.http = HttpxClient(transport=httpx.ASGITransport(app=self.app))

    def manager(self, key: str = KEY, **options: Any) -> SessionManager:
        return SessionManager(
            http=self.http, api_key=key, api_base=BASE, clock=self.clock, wall_clock=self.clock, **options
        )

    @property
    def created(self) -> int:
        return self.app.state.stats.sessions_created


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    emulator = Emu(EmulatorConfig())
    yield emulator
    await emulator.http.aclose()


class ScriptedHttp:
    """An ``HttpClient`` answering from a script, recording what it was sent."""

    def __init__(self, *answers: HttpResponse | TransportError) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, bytes, dict[str, str]]] = []

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        self.requests.append((url, body, dict(headers)))
        answer = self.answers.pop(0)
        if isinstance(answer, TransportError):
            raise answer
        return answer

    async def aclose(self) -> None:
        pass


def session_response(created: str, expires_at: str, token: str = "mes_tok_scripted0001") -> HttpResponse:
    body = {
        "id": "bmes_1",
        "object": "v2.billing.meter_event_session",
        "authentication_token": token,
        "created": created,
        "expires_at": expires_at,
        "livemode": False,
    }
    return HttpResponse(200, httpx.Headers({"content-type": "application/json"}), orjson.dumps(body))


def error_response(status: int, code: str, headers: dict[str, str] | None = None) -> HttpResponse:
    body = {"error": {"type": "api_error", "code": code, "message": f"{code} happened"}}
    return HttpResponse(status, httpx.Headers(headers or {}), orjson.dumps(body))


async def test_creates_once_and_caches(emu: Emu) -> None:
    manager = emu.manager()
    first = await manager.current()
    assert await manager.current() is first
    assert emu.created == 1 and manager.sessions_created == 1
    assert first.id.startswith("bmes_") and first.livemode is False
    assert first.headers["Stripe-Version"] == "2024-09-30.acacia"
    assert first.headers["Authorization"] == f"Bearer {first.token}"
    # The emulator knows the token: the stream accepts it.
    stream = await emu.http.post(
        f"{BASE}/v2/billing/meter_event_stream",
        orjson.dumps({"events": [{"event_name": "e", "payload": {"value": "1"}}]}),
        first.headers,
    )
    assert stream.status == 200


async def test_session_request_uses_the_secret_key_and_an_empty_object() -> None:
    http = ScriptedHttp(session_response("2024-06-01T12:00:00.000Z", "2024-06-01T12:15:00.000Z"))
    manager = SessionManager(http=http, api_key=KEY, api_base=BASE + "/", api_version="2026-10-28.endive")
    await manager.current()
    url, body, headers = http.requests[0]
    assert url == f"{BASE}/v2/billing/meter_event_session"
    assert body == b"{}"
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["Stripe-Version"] == "2026-10-28.endive"


async def test_renews_a_margin_before_expiry(emu: Emu) -> None:
    manager = emu.manager(renew_margin_s=60)
    first = await manager.current()
    emu.clock.advance(900 - 60 - 1)
    assert await manager.current() is first
    emu.clock.advance(2)
    second = await manager.current()
    assert second is not first and emu.created == 2
    assert second.token != first.token


async def test_short_lived_token_is_renewed_at_half_its_life() -> None:
    emulator = Emu(EmulatorConfig(session_ttl=5))
    manager = emulator.manager(renew_margin_s=60)
    first = await manager.current()
    emulator.clock.advance(2.4)
    assert await manager.current() is first
    emulator.clock.advance(0.2)
    assert await manager.current() is not first
    assert emulator.created == 2
    await emulator.http.aclose()


async def test_lifetime_comes_from_stripe_and_ignores_local_clock_skew() -> None:
    # A 10-minute token (not the documented 15) while the local wall clock is an hour off.
    http = ScriptedHttp(session_response("2024-06-01T12:00:00.000Z", "2024-06-01T12:10:00.000Z"))
    local = ManualClock(NOW + 3600)
    manager = SessionManager(http=http, api_key=KEY, api_base=BASE, clock=local, wall_clock=local)
    session = await manager.current()
    assert session.renew_at == pytest.approx(local() + 600 - 60)
    assert session.expires_at == pytest.approx(local() + 600)


def test_renewal_delay() -> None:
    assert renewal_delay(900, 60) == 840
    assert renewal_delay(5, 60) == 2.5
    assert renewal_delay(60, 60) == 30


async def test_one_renewal_for_a_hundred_concurrent_callers(emu: Emu) -> None:
    manager = emu.manager()
    first = await manager.current()
    emu.clock.advance(850)  # due for renewal
    sessions = await asyncio.gather(*(manager.current() for _ in range(100)))
    assert emu.created == 2
    assert len({id(s) for s in sessions}) == 1 and sessions[0] is not first


async def test_callers_renewing_the_same_stale_token_cause_one_renewal(emu: Emu) -> None:
    manager = emu.manager()
    stale = await manager.current()
    renewed = await asyncio.gather(*(manager.renew(stale) for _ in range(50)))
    assert emu.created == 2
    assert all(s is renewed[0] for s in renewed) and renewed[0] is not stale
    # A latecomer still holding the old token gets the replacement, not another session.
    assert await manager.renew(stale) is renewed[0]
    assert emu.created == 2


async def test_a_cancelled_caller_does_not_cancel_the_renewal_others_wait_for(emu: Emu) -> None:
    manager = emu.manager()
    stale = await manager.current()
    impatient = asyncio.create_task(manager.renew(stale))
    patient = asyncio.create_task(manager.renew(stale))
    await asyncio.sleep(0)
    impatient.cancel()
    session = await patient
    assert session is not stale and emu.created == 2


async def test_a_rejected_key_is_fatal_and_masked() -> None:
    emulator = Emu(EmulatorConfig(api_key="sk_test_theonlyacceptedkey"))
    manager = emulator.manager("sk_test_revokedkey0123456789")
    with pytest.raises(FatalError) as caught:
        await manager.current()
    text = str(caught.value)
    assert "rejected the API key sk_test_**********" in text and "test mode" in text
    assert "401" in text and "revokedkey" not in text and "6789" not in text
    live = emulator.manager("sk_live_revokedkey0123456789")
    with pytest.raises(FatalError, match="live mode"):
        await live.current()
    await emulator.http.aclose()


async def test_forbidden_key_is_fatal() -> None:
    manager = SessionManager(http=ScriptedHttp(error_response(403, "secret_key_required")), api_key=KEY)
    with pytest.raises(FatalError, match="rejected the API key"):
        await manager.current()


@pytest.mark.parametrize(
    "answer",
    [
        error_response(500, "api_error"),
        error_response(503, "service_unavailable"),
        error_response(429, "rate_limit"),
        error_response(409, "lock_timeout"),
        error_response(500, "api_error", {"Stripe-Should-Retry": "false"}),
        error_response(429, "rate_limit", {"Stripe-Should-Retry": "false"}),
        TransportError("timeout", "ReadTimeout"),
        TransportError("connect", "ConnectError: refused"),
    ],
    ids=["500", "503", "429", "409", "500-do-not-retry", "429-do-not-retry", "timeout", "connect"],
)
async def test_transient_creation_failures_are_retryable(answer: HttpResponse | TransportError) -> None:
    manager = SessionManager(http=ScriptedHttp(answer), api_key=KEY)
    with pytest.raises(SessionUnavailable) as caught:
        await manager.current()
    assert isinstance(caught.value, RetryableError)
    assert manager.session is None


async def test_retry_after_on_creation_is_passed_on() -> None:
    manager = SessionManager(
        http=ScriptedHttp(error_response(429, "rate_limit", {"Retry-After": "7"})), api_key=KEY
    )
    with pytest.raises(SessionUnavailable) as caught:
        await manager.current()
    assert caught.value.retry_after == 7.0


@pytest.mark.parametrize(
    "answer",
    [
        error_response(400, "parameter_unknown"),
        error_response(404, "not_found"),
        HttpResponse(200, httpx.Headers(), b"<html>proxy</html>"),
        HttpResponse(200, httpx.Headers(), orjson.dumps({"id": "bmes_1", "expires_at": "soon"})),
    ],
    ids=["400", "404", "not-json", "no-token"],
)
async def test_requests_that_cannot_succeed_are_fatal(answer: HttpResponse) -> None:
    manager = SessionManager(http=ScriptedHttp(answer), api_key=KEY)
    with pytest.raises(FatalError):
        await manager.current()


async def test_failed_early_renewal_keeps_the_still_valid_token() -> None:
    clock = ManualClock(NOW)
    http = ScriptedHttp(
        session_response("2024-06-01T12:00:00.000Z", "2024-06-01T12:15:00.000Z"),
        error_response(503, "service_unavailable"),
        error_response(503, "service_unavailable"),
    )
    manager = SessionManager(http=http, api_key=KEY, clock=clock, wall_clock=clock)
    first = await manager.current()
    clock.advance(850)  # due, 50 s before expiry
    assert await manager.current() is first  # renewal failed: keep using the valid token
    assert await manager.current() is first  # and no new attempt within a second
    assert len(http.requests) == 2
    clock.advance(60)  # now expired: the failure surfaces
    with pytest.raises(SessionUnavailable):
        await manager.current()
    assert len(http.requests) == 3


async def test_reprs_never_show_the_key_or_the_token(emu: Emu) -> None:
    manager = emu.manager()
    session = await manager.current()
    for text in (repr(manager), str(manager), repr(session), str(session), repr(manager.session)):
        assert KEY not in text and KEY[8:] not in text
        assert session.token not in text
    assert "sk_test_**********" in repr(manager)


async def test_from_settings() -> None:
    stripe = StripeSettings(api_key=Secret(KEY, "sk_test_"), api_base=BASE, api_version="2025-03-31.basil")
    manager = SessionManager.from_settings(
        stripe, SenderSettings(session_renew_margin_s=30), http=ScriptedHttp()
    )
    assert manager.renew_margin_s == 30
    assert manager.url == f"{BASE}/v2/billing/meter_event_session"
    assert manager.api_version == "2025-03-31.basil"
    assert KEY not in repr(manager)


def test_session_token_property() -> None:
    session = Session(id="bmes_1", token="tok", api_version="v", livemode=True, renew_at=1.0, expires_at=2.0)
    assert session.token == "tok" and "tok" not in repr(session)
