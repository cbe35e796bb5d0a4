"""In-process tests of the emulator's wire behaviour: gzip, Stripe-Should-Retry, sandbox rate limits."""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from connector.devtools.emulator import EmulatorConfig, ManualClock, create_app
from connector.devtools.emulator.app import EmulatorApp
from connector.devtools.emulator.encoding import accepts_gzip

pytestmark = pytest.mark.anyio

KEY = "sk_test_emulatorwire0001"
LIVE_KEY = "sk_live_emulatorwire0001"
NOW = 1_717_243_200.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Raw:
    """A response read without decoding: ``body`` holds the bytes as they came off the wire."""

    def __init__(self, response: httpx.Response, body: bytes) -> None:
        self.status_code = response.status_code
        self.headers = response.headers
        self.body = body

    def json(self) -> Any:
        body = gzip.decompress(self.body) if self.headers.get("content-encoding") == "gzip" else self.body
        return orjson.loads(body)


class Emu:
    def __init__(self, app: EmulatorApp, clock: ManualClock, client: httpx.AsyncClient) -> None:
        self.app = app
        self.clock = clock
        self.client = client

    async def raw(
        self, method: str, path: str, *, accept: str | None, content: bytes = b"", key: str = KEY
    ) -> Raw:
        """One request with ``Accept-Encoding: accept`` (or none at all), its body left encoded."""
        request = self.client.build_request(
            method, path, content=content, headers={"Authorization": f"Bearer {key}"}
        )
        del request.headers["accept-encoding"]  # httpx adds its own
        if accept is not None:
            request.headers["Accept-Encoding"] = accept
        response = await self.client.send(request, stream=True)
        body = b"".join([chunk async for chunk in response.aiter_raw()])
        await response.aclose()
        return Raw(response, body)

    async def token(self, key: str = KEY) -> str:
        # Asks for a plain answer, so that only a test's own requests count as compressed.
        response = await self.client.post(
            "/v2/billing/meter_event_session",
            headers={"Authorization": f"Bearer {key}", "Accept-Encoding": "identity"},
        )
        assert response.status_code == 200, response.text
        return str(response.json()["authentication_token"])

    async def stream(self, token: str, identifier: str = "e1", **headers: str) -> httpx.Response:
        body = {
            "events": [
                {
                    "event_name": "api_requests",
                    "identifier": identifier,
                    "payload": {"stripe_customer_id": "cus_A", "value": "1"},
                }
            ]
        }
        return await self.client.post(
            "/v2/billing/meter_event_stream",
            content=orjson.dumps(body),
            headers={"Authorization": f"Bearer {token}", **headers},
        )

    async def faults(self, **settings: Any) -> dict[str, Any]:
        response = await self.client.post("/_emulator/faults", json=settings)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def stats(self) -> dict[str, Any]:
        body: dict[str, Any] = (await self.client.get("/_emulator/stats")).json()
        return body


@contextlib.asynccontextmanager
async def open_emu(**config: Any) -> AsyncIterator[Emu]:
    clock = ManualClock(NOW)
    app = create_app(EmulatorConfig(**config), clock=clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://emulator"
    ) as client:
        yield Emu(app, clock, client)


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    async with open_emu() as emulator:
        yield emulator


@pytest.fixture
async def gzip_emu() -> AsyncIterator[Emu]:
    async with open_emu(compress=True) as emulator:
        yield emulator


def stream_body(identifier: str = "g1") -> bytes:
    event = {
        "event_name": "api_requests",
        "identifier": identifier,
        "payload": {"stripe_customer_id": "cus_A", "value": "1"},
    }
    return orjson.dumps({"events": [event]})


# -- Accept-Encoding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "gzip_ok"),
    [
        ("gzip", True),
        ("GZIP", True),
        ("x-gzip", True),
        ("gzip, deflate", True),
        ("deflate, gzip;q=0.5", True),
        ("gzip; q=0.001", True),
        ("*", True),
        ("identity, *;q=0.1", True),
        ("br;q=1.0, gzip;q=0.8, *;q=0.1", True),
        ("identity", False),
        ("gzip;q=0", False),
        ("gzip;q=0.0, *", False),
        ("*;q=0", False),
        ("deflate, br", False),
        ("gzip;q=abc", False),
        ("gzip;q=2", False),
        ("", False),
        (None, False),
    ],
)
def test_accept_encoding_parsing(header: str | None, gzip_ok: bool) -> None:
    assert accepts_gzip(None if header is None else header.encode()) is gzip_ok


# -- compression ----------------------------------------------------------------------------------


async def test_without_compress_nothing_is_compressed(emu: Emu) -> None:
    token = await emu.token()
    raw = await emu.client.post(
        "/v2/billing/meter_event_stream",
        content=stream_body("g2"),
        headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"},
    )
    assert raw.status_code == 200
    assert "content-encoding" not in raw.headers and "vary" not in raw.headers
    assert (await emu.stats())["responses_compressed"] == 0


async def test_compressed_stream_answer_is_gzip_with_its_own_length(gzip_emu: Emu) -> None:
    token = await gzip_emu.token()
    response = await gzip_emu.raw(
        "POST", "/v2/billing/meter_event_stream", accept="gzip;q=0.5", content=stream_body(), key=token
    )
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.body[:2] == b"\x1f\x8b" and gzip.decompress(response.body) == b"{}"
    assert int(response.headers["content-length"]) == len(response.body)
    assert response.headers["request-id"].startswith("req_")
    assert (await gzip_emu.stats())["responses_compressed"] == 1


@pytest.mark.parametrize("accept", [None, "identity", "gzip;q=0", "deflate"])
async def test_clients_that_do_not_take_gzip_get_plain_bytes(gzip_emu: Emu, accept: str | None) -> None:
    token = await gzip_emu.token()
    response = await gzip_emu.raw(
        "POST", "/v2/billing/meter_event_stream", accept=accept, content=stream_body(), key=token
    )
    assert response.status_code == 200 and response.body == b"{}"
    assert "content-encoding" not in response.headers
    assert response.headers["content-length"] == "2"
    assert response.headers["vary"] == "Accept-Encoding"  # the answer still depends on the header
    assert (await gzip_emu.stats())["responses_compressed"] == 0


async def test_every_api_answer_is_compressed_errors_included(gzip_emu: Emu) -> None:
    token = await gzip_emu.token()
    cases = [
        ("POST", "/v2/billing/meter_event_session", b"", KEY, 200),
        ("POST", "/v2/billing/meter_event_stream", b"nope", token, 400),
        ("POST", "/v2/billing/meter_event_stream", stream_body(), "mes_tok_unknown", 401),
        ("GET", "/v1/billing/meters", b"", KEY, 200),
        ("GET", "/v1/billing/meters/mtr_missing", b"", KEY, 404),
        ("GET", "/v2/core/events", b"", KEY, 200),
        ("GET", "/v1/charges", b"", KEY, 404),
    ]
    for method, path, content, key, status in cases:
        response = await gzip_emu.raw(method, path, accept="gzip, deflate", content=content, key=key)
        assert response.status_code == status, path
        assert response.headers["content-encoding"] == "gzip", path
        assert int(response.headers["content-length"]) == len(response.body), path
        assert isinstance(response.json(), dict)
    assert (await gzip_emu.stats())["responses_compressed"] == len(cases)


async def test_control_routes_stay_plain(gzip_emu: Emu) -> None:
    for path in ("/_emulator/stats", "/_emulator/faults", "/_emulator/health"):
        response = await gzip_emu.raw("GET", path, accept="gzip")
        assert response.status_code == 200
        assert "content-encoding" not in response.headers and "vary" not in response.headers
        assert orjson.loads(response.body)


async def test_httpx_decodes_the_compressed_answers(gzip_emu: Emu) -> None:
    token = await gzip_emu.token()
    response = await gzip_emu.stream(token)  # httpx sends Accept-Encoding: gzip, deflate and decodes
    assert response.status_code == 200 and response.json() == {}
    assert response.headers["content-encoding"] == "gzip"


async def test_compress_is_a_runtime_fault_restored_by_reset(emu: Emu) -> None:
    assert (await emu.faults(compress=True))["compress"] is True
    assert (await emu.client.get("/_emulator/faults")).json()["compress"] is True
    token = await emu.token()
    response = await emu.raw(
        "POST", "/v2/billing/meter_event_stream", accept="*", content=stream_body(), key=token
    )
    assert response.headers["content-encoding"] == "gzip"
    assert (await emu.faults(compress=False))["compress"] is False
    await emu.faults(compress=True)
    await emu.client.post("/_emulator/reset")
    assert (await emu.client.get("/_emulator/faults")).json()["compress"] is False
    bad = await emu.client.post("/_emulator/faults", json={"compress": "yes"})
    assert bad.status_code == 400 and "compress" in bad.json()["error"]["message"]


# -- Stripe-Should-Retry -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "status"),
    [
        ({"error_rate": 1.0}, 500),
        ({"outage": True}, 503),
        ({"rate_limited_rate": 1.0}, 429),
        ({"rate_limit_rps": 1.0}, 429),
    ],
)
@pytest.mark.parametrize("should_retry", [True, False])
async def test_injected_errors_carry_should_retry(
    emu: Emu, settings: dict[str, Any], status: int, should_retry: bool
) -> None:
    token = await emu.token()
    await emu.faults(should_retry=should_retry, **settings)
    if "rate_limit_rps" in settings:
        assert (await emu.stream(token, "first")).status_code == 200  # the bucket's one token
    response = await emu.stream(token, "second")
    assert response.status_code == status
    assert response.headers["stripe-should-retry"] == ("true" if should_retry else "false")


async def test_should_retry_is_absent_by_default_and_on_real_answers(emu: Emu) -> None:
    token = await emu.token()
    await emu.faults(error_rate=1.0)
    assert "stripe-should-retry" not in (await emu.stream(token)).headers
    await emu.faults(error_rate=0.0, should_retry=False)
    ok = await emu.stream(token)
    assert ok.status_code == 200 and "stripe-should-retry" not in ok.headers
    unauthorized = await emu.stream("mes_tok_unknown")
    assert unauthorized.status_code == 401 and "stripe-should-retry" not in unauthorized.headers
    assert (await emu.faults(should_retry=None))["should_retry"] is None
    bad = await emu.client.post("/_emulator/faults", json={"should_retry": "maybe"})
    assert bad.status_code == 400 and "should_retry" in bad.json()["error"]["message"]


async def test_should_retry_comes_from_config_and_survives_reset() -> None:
    async with open_emu(should_retry=False, outage=True) as emulator:
        token = await emulator.token()
        await emulator.client.post("/_emulator/reset")
        token = await emulator.token()
        response = await emulator.stream(token)
        assert response.status_code == 503 and response.headers["stripe-should-retry"] == "false"
        assert (await emulator.client.get("/_emulator/faults")).json()["should_retry"] is False


def test_should_retry_config_must_be_a_boolean() -> None:
    with pytest.raises(ValueError, match="should_retry"):
        EmulatorConfig(should_retry="no")  # type: ignore[arg-type]


# -- sandbox limits -------------------------------------------------------------------------------


async def test_sandbox_limits_test_mode_to_25_requests_a_second() -> None:
    async with open_emu(sandbox_limits=True) as emulator:
        token = await emulator.token()
        statuses = [(await emulator.stream(token, f"s{i}")).status_code for i in range(30)]
        assert statuses == [200] * 25 + [429] * 5
        limited = await emulator.stream(token, "again")
        assert limited.headers["stripe-rate-limited-reason"] == "global-rate"
        assert limited.json()["error"]["type"] == "rate_limit"
        # v1 meter events count toward the same basic limit.
        v1 = await emulator.client.post(
            "/v1/billing/meter_events",
            data={"event_name": "api_requests", "payload[stripe_customer_id]": "cus_A"},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert v1.status_code == 429 and set(v1.json()["error"]) == {
            "type",
            "code",
            "message",
            "param",
            "doc_url",
        }
        emulator.clock.advance(0.2)  # five tokens back
        assert [(await emulator.stream(token, f"t{i}")).status_code for i in range(6)] == [200] * 5 + [429]
        stats = await emulator.stats()
        assert stats["faults_injected"]["sandbox_limited"] == 8
        assert stats["events_received"] == 30


async def test_sandbox_limits_leave_live_mode_at_10000_a_second() -> None:
    async with open_emu(sandbox_limits=True) as emulator:
        token = await emulator.token(LIVE_KEY)
        statuses = {(await emulator.stream(token, f"l{i}")).status_code for i in range(60)}
        assert statuses == {200}


async def test_an_explicit_rate_limit_replaces_the_sandbox_limits() -> None:
    async with open_emu(sandbox_limits=True) as emulator:
        await emulator.faults(rate_limit_rps=100)
        token = await emulator.token()
        statuses = [(await emulator.stream(token, f"x{i}")).status_code for i in range(40)]
        assert statuses == [200] * 40
        await emulator.faults(rate_limit_rps=0)  # back to Stripe's own limits
        statuses = [(await emulator.stream(token, f"y{i}")).status_code for i in range(30)]
        assert statuses.count(429) == 5


async def test_without_sandbox_limits_test_mode_is_unlimited(emu: Emu) -> None:
    token = await emu.token()
    assert {(await emu.stream(token, f"u{i}")).status_code for i in range(60)} == {200}
