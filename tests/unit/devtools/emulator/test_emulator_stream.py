"""In-process tests of the meter event stream: sessions, envelope rules, dedup, auth, faults, stats."""
# Over 400 lines: the stream endpoint's envelope and answers, together.

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from connector.devtools.emulator import DroppedConnection, EmulatorConfig, ManualClock, create_app
from connector.devtools.emulator.app import EmulatorApp

pytestmark = pytest.mark.anyio

KEY = "sk_test_emulatorunit0001"
LIVE_KEY = "sk_live_emulatorunit0001"
NOW = 1_717_243_200.0  # 2024-06-01T12:00:00Z


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Emu:
    """An in-process emulator with a manual clock and an httpx client on its ASGI app."""

    def __init__(self, app: EmulatorApp, clock: ManualClock, client: httpx.AsyncClient) -> None:
        self.app = app
        self.clock = clock
        self.client = client

    async def session(self, key: str = KEY) -> dict[str, Any]:
        response = await self.client.post(
            "/v2/billing/meter_event_session", headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def token(self, key: str = KEY) -> str:
        return str((await self.session(key))["authentication_token"])

    async def stream(self, token: str, events: Any, *, raw: bytes | None = None) -> httpx.Response:
        content = raw if raw is not None else orjson.dumps({"events": events})
        return await self.client.post(
            "/v2/billing/meter_event_stream",
            content=content,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )

    async def form(self, path: str, data: dict[str, Any] | None = None, key: str = KEY) -> httpx.Response:
        return await self.client.post(path, data=data or {}, headers={"Authorization": f"Bearer {key}"})

    async def get(self, path: str, params: dict[str, Any] | None = None, key: str = KEY) -> httpx.Response:
        return await self.client.get(path, params=params, headers={"Authorization": f"Bearer {key}"})

    async def meter(self, event_name: str = "api_requests", formula: str = "sum") -> str:
        response = await self.form(
            "/v1/billing/meters",
            {"display_name": event_name, "event_name": event_name, "default_aggregation[formula]": formula},
        )
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    async def stats(self) -> dict[str, Any]:
        body: dict[str, Any] = (await self.client.get("/_emulator/stats")).json()
        return body

    async def faults(self, **settings: Any) -> httpx.Response:
        return await self.client.post("/_emulator/faults", json=settings)

    async def total(self, meter_id: str, customer: str = "cus_A") -> float:
        response = await self.get(
            f"/v1/billing/meters/{meter_id}/event_summaries",
            {"customer": customer, "start_time": int(NOW) - 86_400, "end_time": int(NOW) + 86_400},
        )
        assert response.status_code == 200, response.text
        return float(response.json()["data"][0]["aggregated_value"])


def make_app(clock: ManualClock, **config: Any) -> EmulatorApp:
    return create_app(EmulatorConfig(**config), clock=clock)


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    clock = ManualClock(NOW)
    app = make_app(clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as client:
        yield Emu(app, clock, client)


async def emulator_with(**config: Any) -> tuple[Emu, httpx.AsyncClient]:
    clock = ManualClock(NOW)
    app = make_app(clock, **config)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emulator")
    return Emu(app, clock, client), client


def event(identifier: str | None = "id-1", value: str = "1", **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "event_name": "api_requests",
        "payload": {"stripe_customer_id": "cus_A", "value": value},
    }
    if identifier is not None:
        result["identifier"] = identifier
    result.update(extra)
    return result


# -- sessions -----------------------------------------------------------------------------------


async def test_session_object_has_every_field_in_stripes_formats(emu: Emu) -> None:
    session = await emu.session()
    assert set(session) == {"id", "object", "authentication_token", "created", "expires_at", "livemode"}
    assert session["id"].startswith("bmes_")
    assert session["object"] == "v2.billing.meter_event_session"
    assert session["created"] == "2024-06-01T12:00:00.000Z"
    assert session["expires_at"] == "2024-06-01T12:15:00.000Z"
    assert session["livemode"] is False
    assert (await emu.session(LIVE_KEY))["livemode"] is True


async def test_session_accepts_an_empty_object_and_rejects_parameters(emu: Emu) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    ok = await emu.client.post("/v2/billing/meter_event_session", content=b"{}", headers=headers)
    assert ok.status_code == 200
    bad = await emu.client.post("/v2/billing/meter_event_session", content=b'{"ttl": 5}', headers=headers)
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "parameter_unknown"


async def test_token_expires_after_the_session_ttl(emu: Emu) -> None:
    token = await emu.token()
    emu.clock.advance(899.9)
    assert (await emu.stream(token, [event("a")])).status_code == 200
    emu.clock.advance(0.1)
    expired = await emu.stream(token, [event("b")])
    assert expired.status_code == 401
    error = expired.json()["error"]
    assert error["type"] == "temporary_session_expired"
    assert error["code"] == "billing_meter_event_session_expired"
    assert set(error) == {"type", "code", "message", "doc_url"}
    assert (await emu.stats())["events_received"] == 1


async def test_session_ttl_comes_from_config_and_faults() -> None:
    emulator, client = await emulator_with(session_ttl=60)
    async with client:
        session = await emulator.session()
        assert session["expires_at"] == "2024-06-01T12:01:00.000Z"
        assert (await emulator.faults(session_ttl=5)).status_code == 200
        assert (await emulator.session())["expires_at"] == "2024-06-01T12:00:05.000Z"


async def test_expire_tokens_fault_expires_current_tokens_only(emu: Emu) -> None:
    old = await emu.token()
    assert (await emu.faults(expire_tokens=True)).status_code == 200
    assert (await emu.stream(old, [event("a")])).json()["error"]["type"] == "temporary_session_expired"
    fresh = await emu.token()
    assert (await emu.stream(fresh, [event("a")])).status_code == 200


# -- authentication -----------------------------------------------------------------------------


async def test_stream_auth_rules(emu: Emu) -> None:
    token = await emu.token()
    cases = [
        ({}, "invalid_session_token"),
        ({"Authorization": "Bearer mes_tok_doesnotexist0000000000"}, "invalid_session_token"),
        ({"Authorization": f"Bearer {KEY}"}, "invalid_session_token"),
        ({"Authorization": "Token abc"}, "invalid_session_token"),
    ]
    for headers, code in cases:
        response = await emu.client.post(
            "/v2/billing/meter_event_stream", content=orjson.dumps({"events": [event()]}), headers=headers
        )
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert KEY not in response.text
    on_session = await emu.client.post(
        "/v2/billing/meter_event_session", headers={"Authorization": f"Bearer {token}"}
    )
    assert on_session.status_code == 401
    assert token not in on_session.text
    assert (await emu.stats())["events_received"] == 0


async def test_secret_key_rules_and_masking(emu: Emu) -> None:
    missing = await emu.client.post("/v2/billing/meter_event_session")
    assert missing.status_code == 401
    bad = "sk_nope_0123456789abcdef"
    wrong = await emu.client.post(
        "/v2/billing/meter_event_session", headers={"Authorization": f"Bearer {bad}"}
    )
    assert wrong.status_code == 401
    assert bad not in wrong.text and "cdef" in wrong.json()["error"]["message"]
    basic = await emu.client.get("/v1/billing/meters", auth=(KEY, ""))
    assert basic.status_code == 200


async def test_configured_api_key_is_the_only_key_accepted() -> None:
    emulator, client = await emulator_with(api_key="sk_test_only0000000000001")
    async with client:
        assert (await emulator.session("sk_test_only0000000000001"))["livemode"] is False
        other = await client.post(
            "/v2/billing/meter_event_session", headers={"Authorization": f"Bearer {KEY}"}
        )
        assert other.status_code == 401
        assert KEY not in other.text


async def test_live_and_test_mode_data_are_separate(emu: Emu) -> None:
    await emu.meter()
    live = await emu.get("/v1/billing/meters", key=LIVE_KEY)
    assert live.json()["data"] == []
    test = await emu.get("/v1/billing/meters")
    assert len(test.json()["data"]) == 1 and test.json()["data"][0]["livemode"] is False


# -- envelope validation ------------------------------------------------------------------------

ENVELOPE_ERRORS: list[tuple[str, bytes, str]] = [
    ("not json", b"{events: [}", "invalid_json"),
    ("empty body", b"", "invalid_json"),
    ("array body", b"[]", "invalid_json"),
    ("missing events", b"{}", "parameter_missing"),
    ("events not an array", b'{"events": {}}', "parameter_invalid"),
    ("unknown top-level field", orjson.dumps({"events": [event()], "extra": 1}), "parameter_unknown"),
    ("zero events", b'{"events": []}', "parameter_invalid"),
    ("101 events", orjson.dumps({"events": [event(f"i{i}") for i in range(101)]}), "parameter_invalid"),
    ("event not an object", b'{"events": ["x"]}', "parameter_invalid"),
    ("missing event_name", orjson.dumps({"events": [{"payload": {}}]}), "parameter_missing"),
    ("event_name not a string", orjson.dumps({"events": [event(event_name=5)]}), "parameter_invalid"),
    ("empty event_name", orjson.dumps({"events": [event(event_name="")]}), "parameter_invalid"),
    ("event_name of 101 chars", orjson.dumps({"events": [event(event_name="e" * 101)]}), "parameter_invalid"),
    ("missing payload", orjson.dumps({"events": [{"event_name": "x"}]}), "parameter_missing"),
    ("payload not an object", orjson.dumps({"events": [event(payload=["a"])]}), "parameter_invalid"),
    ("numeric payload value", orjson.dumps({"events": [event(payload={"value": 5})]}), "parameter_invalid"),
    (
        "nested payload value",
        orjson.dumps({"events": [event(payload={"value": {"a": "b"}})]}),
        "parameter_invalid",
    ),
    ("identifier of 101 chars", orjson.dumps({"events": [event("i" * 101)]}), "parameter_invalid"),
    ("identifier not a string", orjson.dumps({"events": [event(7)]}), "parameter_invalid"),  # type: ignore[arg-type]
    ("empty identifier", orjson.dumps({"events": [event("")]}), "parameter_invalid"),
    ("timestamp words", orjson.dumps({"events": [event(timestamp="yesterday")]}), "parameter_invalid"),
    ("timestamp unix", orjson.dumps({"events": [event(timestamp=1717243200)]}), "parameter_invalid"),
    (
        "timestamp no offset",
        orjson.dumps({"events": [event(timestamp="2024-06-01T12:00:00")]}),
        "parameter_invalid",
    ),
    (
        "timestamp no seconds",
        orjson.dumps({"events": [event(timestamp="2024-06-01T12:00Z")]}),
        "parameter_invalid",
    ),
    (
        "timestamp bad day",
        orjson.dumps({"events": [event(timestamp="2024-02-30T12:00:00Z")]}),
        "parameter_invalid",
    ),
    ("unknown event field", orjson.dumps({"events": [event(value_extra="1")]}), "parameter_unknown"),
]


@pytest.mark.parametrize(("case", "body", "code"), ENVELOPE_ERRORS, ids=[c[0] for c in ENVELOPE_ERRORS])
async def test_envelope_errors_are_400_in_the_v2_shape(emu: Emu, case: str, body: bytes, code: str) -> None:
    await emu.meter()
    token = await emu.token()
    response = await emu.stream(token, None, raw=body)
    assert response.status_code == 400, case
    error = response.json()["error"]
    assert set(error) == {"type", "code", "message", "doc_url"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert (await emu.stats())["events_received"] == 0


async def test_a_bad_event_rejects_the_whole_request_and_records_nothing(emu: Emu) -> None:
    meter = await emu.meter()
    token = await emu.token()
    events = [event(f"good-{i}") for i in range(5)] + [event("bad", timestamp="nope")]
    response = await emu.stream(token, events)
    assert response.status_code == 400
    assert "events[5].timestamp" in response.json()["error"]["message"]
    # The good identifiers were not claimed: sending them again counts them once.
    assert (await emu.stream(token, events[:5])).status_code == 200
    stats = await emu.stats()
    assert stats["events_accepted"] == 5 and stats["duplicates_ignored"] == 0
    assert await emu.total(meter) == 5.0


async def test_envelope_limits_are_inclusive(emu: Emu) -> None:
    await emu.meter()
    token = await emu.token()
    events = [event(f"{i:0>100}") for i in range(100)]
    events[0]["event_name"] = "n" * 100
    events[1]["timestamp"] = "2024-06-01T11:00:00+01:00"
    events[2]["identifier"] = None  # null: Stripe generates one
    response = await emu.stream(token, events)
    assert response.status_code == 200
    assert response.json() == {}
    assert response.headers["content-type"] == "application/json"


# -- deduplication ------------------------------------------------------------------------------


async def test_duplicates_are_never_counted_twice(emu: Emu) -> None:
    meter = await emu.meter()
    first = await emu.token()
    second = await emu.token()
    assert (await emu.stream(first, [event("a", "2"), event("b", "3"), event("a", "100")])).status_code == 200
    assert (await emu.stream(first, [event("b", "50")])).status_code == 200
    assert (await emu.stream(second, [event("a", "7"), event("c", "4")])).status_code == 200
    assert await emu.total(meter) == 9.0
    stats = await emu.stats()
    assert stats["events_received"] == 6
    assert stats["events_accepted"] == 3
    assert stats["duplicates_ignored"] == 3


async def test_an_identifier_is_new_again_after_24_hours(emu: Emu) -> None:
    meter = await emu.meter()
    token = await emu.token()
    stamp = "2024-06-01T12:00:00.000Z"
    assert (await emu.stream(token, [event("x", "1", timestamp=stamp)])).status_code == 200
    emu.clock.advance(86_399)
    token = await emu.token()
    await emu.stream(token, [event("x", "10", timestamp=stamp)])
    assert await emu.total(meter) == 1.0
    emu.clock.advance(1)
    token = await emu.token()
    await emu.stream(token, [event("x", "100", timestamp=stamp)])
    assert await emu.total(meter) == 101.0


async def test_deduplication_is_by_receipt_time_even_when_validated_late(emu: Emu) -> None:
    """Nothing reads between the copies, so both are validated in one pass a day later."""
    meter = await emu.meter()
    token = await emu.token()
    await emu.stream(token, [event("late", "1", timestamp="2024-06-01T12:00:00Z")])
    emu.clock.advance(86_400)
    token = await emu.token()
    await emu.stream(token, [event("late", "5", timestamp="2024-06-01T12:00:00Z")])
    assert await emu.total(meter) == 6.0


async def test_events_without_identifier_get_distinct_generated_ones(emu: Emu) -> None:
    meter = await emu.meter()
    token = await emu.token()
    await emu.stream(token, [event(None), event(None)])
    await emu.stream(token, [event(None)])
    assert await emu.total(meter) == 3.0


# -- rate limit and faults ----------------------------------------------------------------------


async def test_rate_limit_is_a_token_bucket_with_a_reason_header() -> None:
    emulator, client = await emulator_with(rate_limit_rps=2, retry_after=2)
    async with client:
        await emulator.meter()
        token = await emulator.token()
        statuses = [(await emulator.stream(token, [event(f"r{i}")])).status_code for i in range(3)]
        assert statuses == [200, 200, 429]
        limited = await emulator.stream(token, [event("r-limited")])
        assert limited.headers["stripe-rate-limited-reason"] == "endpoint-rate"
        assert limited.headers["retry-after"] == "2"
        assert limited.json()["error"]["type"] == "rate_limit"
        assert set(limited.json()["error"]) == {"type", "code", "message", "doc_url"}
        emulator.clock.advance(0.5)
        assert (await emulator.stream(token, [event("r-after")])).status_code == 200
        stats = await emulator.stats()
        assert stats["events_received"] == 3
        assert stats["stream_requests_by_status"] == {"200": 3, "429": 2}
        assert stats["faults_injected"]["throttled"] == 2


async def test_rate_limit_can_change_at_runtime(emu: Emu) -> None:
    token = await emu.token()
    assert (await emu.faults(rate_limit_rps=1)).json()["rate_limit_rps"] == 1
    assert [(await emu.stream(token, [event(f"q{i}")])).status_code for i in range(2)] == [200, 429]
    await emu.faults(rate_limit_rps=0)
    assert (await emu.stream(token, [event("q9")])).status_code == 200


@pytest.mark.parametrize(
    ("settings", "status", "kind"),
    [
        ({"error_rate": 1.0}, 500, "api_error"),
        ({"rate_limited_rate": 1.0}, 429, "rate_limit"),
        ({"outage": True}, 503, "api_error"),
    ],
)
async def test_faulted_requests_record_nothing(
    emu: Emu, settings: dict[str, Any], status: int, kind: str
) -> None:
    await emu.meter()
    token = await emu.token()
    assert (await emu.faults(**settings)).status_code == 200
    response = await emu.stream(token, [event("f1")])
    assert response.status_code == status
    assert response.json()["error"]["type"] == kind
    if status == 429:
        assert response.headers["stripe-rate-limited-reason"]
        assert "retry-after" not in response.headers
    await emu.faults(error_rate=0, rate_limited_rate=0, outage=False)
    assert (await emu.stream(token, [event("f1")])).status_code == 200
    stats = await emu.stats()
    assert stats["events_accepted"] == 1 and stats["duplicates_ignored"] == 0


async def test_other_routes_are_not_faulted(emu: Emu) -> None:
    await emu.faults(error_rate=1.0, outage=True)
    assert (await emu.session())["object"] == "v2.billing.meter_event_session"
    assert (await emu.get("/v1/billing/meters")).status_code == 200


async def test_dropped_connection_raises_in_process_after_recording(emu: Emu) -> None:
    meter = await emu.meter()
    token = await emu.token()
    await emu.faults(drop_rate=1.0)
    with pytest.raises(httpx.TransportError) as caught:
        await emu.stream(token, [event("d1", "4")])
    assert isinstance(caught.value, DroppedConnection)
    await emu.faults(drop_rate=0)
    assert (await emu.stream(token, [event("d1", "4")])).status_code == 200  # the retry dedupes
    assert await emu.total(meter) == 4.0
    stats = await emu.stats()
    assert stats["stream_requests_dropped"] == 1 and stats["duplicates_ignored"] == 1


async def test_fault_draws_follow_the_rate(emu: Emu) -> None:
    await emu.faults(error_rate=0.5)
    emu.app.state.faults.random.seed(7)
    token = await emu.token()
    statuses = [(await emu.stream(token, [event(f"e{i}")])).status_code for i in range(200)]
    assert 60 < statuses.count(500) < 140
    assert set(statuses) == {200, 500}


async def test_latency_fault_is_counted(emu: Emu) -> None:
    await emu.faults(latency_ms=1)
    token = await emu.token()
    assert (await emu.stream(token, [event("l1")])).status_code == 200
    assert (await emu.stats())["faults_injected"]["latency"] == 2


async def test_faults_endpoint_reports_and_validates(emu: Emu) -> None:
    current = (await emu.client.get("/_emulator/faults")).json()
    assert current == {
        "latency_ms": 0.0,
        "error_rate": 0.0,
        "rate_limited_rate": 0.0,
        "retry_after": None,
        "drop_rate": 0.0,
        "outage": False,
        "session_ttl": 900.0,
        "rate_limit_rps": 0.0,
        "compress": False,
        "should_retry": None,
    }
    bad = await emu.faults(error_rate=3, nonsense=True)
    assert bad.status_code == 400
    assert "error_rate" in bad.json()["error"]["message"] and "nonsense" in bad.json()["error"]["message"]
    assert (await emu.client.get("/_emulator/faults")).json() == current
    not_json = await emu.client.post("/_emulator/faults", content=b"[")
    assert not_json.status_code == 400


# -- reset and stats ----------------------------------------------------------------------------


async def test_reset_clears_state_and_restores_startup_faults() -> None:
    emulator, client = await emulator_with(error_rate=0.0, session_ttl=30)
    async with client:
        await emulator.meter()
        token = await emulator.token()
        await emulator.stream(token, [event("z")])
        await emulator.faults(outage=True, session_ttl=5)
        assert (await client.post("/_emulator/reset")).json() == {"reset": True}
        assert (await emulator.get("/v1/billing/meters")).json()["data"] == []
        assert (await emulator.stream(token, [event("z")])).json()["error"]["code"] == "invalid_session_token"
        faults = (await client.get("/_emulator/faults")).json()
        assert faults["outage"] is False and faults["session_ttl"] == 30
        stats = await emulator.stats()
        assert stats["events_received"] == 0 and stats["sessions_created"] == 0
        assert stats["requests_by_status"] == {"200": 1, "401": 1}


async def test_stats_counts_requests_events_and_sessions(emu: Emu) -> None:
    await emu.meter()
    token = await emu.token()
    await emu.stream(token, [event("s1"), event("s2", value="x"), event("s1")])
    await emu.stream(token, [], raw=b"nope")
    stats = await emu.stats()
    assert stats["requests"] == 4
    assert stats["requests_by_status"] == {"200": 3, "400": 1}
    assert stats["stream_requests"] == 2
    assert stats["events_received"] == 3
    assert stats["events_accepted"] == 2
    assert stats["duplicates_ignored"] == 1
    assert stats["events_valid"] == 1
    assert stats["events_invalid"] == 1
    assert stats["events_pending"] == 0
    assert stats["sessions_created"] == 1


async def test_stats_without_processing_shows_the_queue(emu: Emu) -> None:
    token = await emu.token()
    await emu.stream(token, [event("p1"), event("p2")])
    quick = (await emu.client.get("/_emulator/stats", params={"process": "false"})).json()
    assert quick["events_received"] == 2 and quick["events_pending"] == 2 and quick["events_accepted"] == 0
    full = await emu.stats()
    assert full["events_pending"] == 0 and full["events_invalid"] == 2  # no meter yet


async def test_state_accessor_reports_each_event(emu: Emu) -> None:
    await emu.meter()
    token = await emu.token()
    await emu.stream(token, [event("ok"), event("bad", value="NaN"), event("ok")])
    state = emu.app.state
    ok = state.event_status("ok")
    bad = state.event_status("bad")
    assert ok is not None and ok.status == "valid"
    assert bad is not None and bad.status == "invalid" and bad.error_code == "meter_event_invalid_value"
    assert state.event_status("never") is None
