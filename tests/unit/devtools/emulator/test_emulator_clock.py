"""In-process tests of the emulator's clock control (``/_emulator/clock``) and ``GET /v1/account``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from connector.devtools.emulator import EmulatorConfig, ManualClock, create_app
from connector.devtools.emulator.app import EmulatorApp
from connector.devtools.emulator.clock import MAX_OFFSET, EmulatedClock, check_advance

pytestmark = pytest.mark.anyio

KEY = "sk_test_emulatorclock001"
LIVE_KEY = "sk_live_emulatorclock001"
RESTRICTED_KEY = "rk_test_emulatorclock001"
NOW = 1_717_243_200.0  # 2024-06-01T12:00:00Z
HOUR = 3_600.0
DAY = 86_400.0
STAMP = "2024-06-01T12:00:00.000Z"  # NOW, as the real-time timestamp a sender would put on events


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Emu:
    def __init__(self, app: EmulatorApp, clock: ManualClock, client: httpx.AsyncClient) -> None:
        self.app = app
        self.clock = clock  # the base ("real") clock; /_emulator/clock moves the emulated one
        self.client = client

    async def advance(self, seconds: Any) -> httpx.Response:
        return await self.client.post("/_emulator/clock", json={"advance_s": seconds})

    async def now(self) -> dict[str, Any]:
        response = await self.client.get("/_emulator/clock")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def session(self, key: str = KEY) -> dict[str, Any]:
        response = await self.client.post(
            "/v2/billing/meter_event_session", headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def token(self) -> str:
        return str((await self.session())["authentication_token"])

    async def stream(self, token: str, *events: dict[str, Any]) -> httpx.Response:
        return await self.client.post(
            "/v2/billing/meter_event_stream",
            content=orjson.dumps({"events": list(events)}),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )

    async def form(self, path: str, data: dict[str, Any], key: str = KEY) -> httpx.Response:
        return await self.client.post(path, data=data, headers={"Authorization": f"Bearer {key}"})

    async def get(self, path: str, params: dict[str, Any] | None = None, key: str = KEY) -> httpx.Response:
        return await self.client.get(path, params=params, headers={"Authorization": f"Bearer {key}"})

    async def meter(self, event_name: str = "api_requests", formula: str = "sum") -> dict[str, Any]:
        response = await self.form(
            "/v1/billing/meters",
            {"display_name": event_name, "event_name": event_name, "default_aggregation[formula]": formula},
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def summaries(
        self, meter_id: str, start: float, end: float, window: str | None = None
    ) -> list[Any]:
        params: dict[str, Any] = {"customer": "cus_A", "start_time": int(start), "end_time": int(end)}
        if window is not None:
            params["value_grouping_window"] = window
        response = await self.get(f"/v1/billing/meters/{meter_id}/event_summaries", params)
        assert response.status_code == 200, response.text
        data: list[Any] = response.json()["data"]
        return data

    async def stats(self) -> dict[str, Any]:
        body: dict[str, Any] = (await self.client.get("/_emulator/stats")).json()
        return body


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    async with running() as emulator:
        yield emulator


class running:
    """``async with running(**config) as emu``: an in-process emulator on a manual clock."""

    def __init__(self, **config: Any) -> None:
        self.clock = ManualClock(NOW)
        self.app = create_app(EmulatorConfig(**config), clock=self.clock)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://emulator"
        )

    async def __aenter__(self) -> Emu:
        return Emu(self.app, self.clock, self.client)

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()


def event(identifier: str, value: str = "1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_name": "api_requests",
        "payload": {"stripe_customer_id": "cus_A", "value": value},
        "identifier": identifier,
    }
    body.update(extra)
    return body


# -- the control route --------------------------------------------------------------------------


async def test_get_clock_reports_now_and_a_zero_offset_at_start(emu: Emu) -> None:
    assert await emu.now() == {"now": NOW, "offset_s": 0.0}
    emu.clock.advance(2.5)  # the base clock moving shows, the offset does not change
    assert await emu.now() == {"now": NOW + 2.5, "offset_s": 0.0}


async def test_advancing_adds_up_and_answers_with_the_clock(emu: Emu) -> None:
    first = await emu.advance(25 * HOUR)
    assert first.status_code == 200
    assert first.json() == {"now": NOW + 25 * HOUR, "offset_s": 25 * HOUR}
    assert (await emu.advance(0.5)).json() == {"now": NOW + 25 * HOUR + 0.5, "offset_s": 25 * HOUR + 0.5}
    assert await emu.now() == {"now": NOW + 25 * HOUR + 0.5, "offset_s": 25 * HOUR + 0.5}
    assert emu.app.state.clock() == NOW + 25 * HOUR + 0.5


async def test_reset_sets_the_offset_back_to_zero(emu: Emu) -> None:
    await emu.advance(DAY)
    assert (await emu.client.post("/_emulator/reset")).status_code == 200
    assert await emu.now() == {"now": NOW, "offset_s": 0.0}


@pytest.mark.parametrize(
    ("body", "problems"),
    [
        (b"", ["advance_s is required"]),
        (b"{}", ["advance_s is required"]),
        (b'{"advance_s": 0}', ["advance_s must be > 0"]),
        (b'{"advance_s": -5}', ["advance_s must be > 0"]),
        (b'{"advance_s": "60"}', ["advance_s must be a number"]),
        (b'{"advance_s": true}', ["advance_s must be a number"]),
        (b'{"advance_s": null}', ["advance_s must be a number"]),
        (b'{"advance_s": 1e300}', ["advance_s would move the clock more than"]),
        (b'{"advance": 60}', ["unknown setting: advance", "advance_s is required"]),
        (b'{"advance_s": 60, "to": 5}', ["unknown setting: to"]),
    ],
)
async def test_bad_bodies_get_a_400_listing_each_problem_and_change_nothing(
    emu: Emu, body: bytes, problems: list[str]
) -> None:
    response = await emu.client.post("/_emulator/clock", content=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "parameter_invalid"
    listed = error["message"].split("; ")
    assert len(listed) == len(problems)
    for line, problem in zip(listed, problems, strict=True):
        assert line.startswith(problem)
    assert await emu.now() == {"now": NOW, "offset_s": 0.0}


@pytest.mark.parametrize("body", [b"not json", b"[60]", b"60"])
async def test_a_body_that_is_not_a_json_object_is_a_400(emu: Emu, body: bytes) -> None:
    response = await emu.client.post("/_emulator/clock", content=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


async def test_the_offset_is_capped_in_total(emu: Emu) -> None:
    assert (await emu.advance(MAX_OFFSET - 10)).status_code == 200
    assert (await emu.advance(11)).status_code == 400
    assert (await emu.advance(10)).status_code == 200


def test_emulated_clock_parts() -> None:
    base = ManualClock(100.0)
    clock = EmulatedClock(base)
    clock.advance(5)
    base.advance(1)
    assert clock() == 106.0
    assert clock.as_dict() == {"now": 106.0, "offset_s": 5.0}
    with pytest.raises(ValueError, match="advance_s must be > 0"):
        clock.advance(0)
    assert check_advance(float("inf")) == ["advance_s must be finite"]
    assert check_advance(float("nan")) == ["advance_s must be finite"]
    clock.reset()
    assert clock() == 101.0


# -- what the clock moves -----------------------------------------------------------------------


async def test_an_identifier_counts_again_after_advancing_25_hours(emu: Emu) -> None:
    """The key behaviour: a duplicate within 24 hours, a new event after them. The late copy carries
    a real-time timestamp, 25 emulated hours in the past: inside the 35 days, so it is valid."""
    meter = (await emu.meter())["id"]
    token = await emu.token()
    assert (await emu.stream(token, event("X", "1", timestamp=STAMP))).status_code == 200
    assert (await emu.stream(token, event("X", "10", timestamp=STAMP))).status_code == 200
    stats = await emu.stats()
    assert (stats["events_accepted"], stats["duplicates_ignored"]) == (1, 1)

    await emu.advance(25 * HOUR)
    expired = await emu.stream(token, event("X", "100", timestamp=STAMP))
    assert expired.status_code == 401  # the 15-minute token is a day old now
    assert expired.json()["error"]["type"] == "temporary_session_expired"
    token = await emu.token()
    assert (await emu.stream(token, event("X", "100", timestamp=STAMP))).status_code == 200
    stats = await emu.stats()
    assert (stats["events_accepted"], stats["duplicates_ignored"], stats["events_valid"]) == (2, 1, 2)
    status = emu.app.state.event_status("X")
    assert status is not None
    assert (status.status, status.received_at) == ("valid", NOW + 25 * HOUR)

    wide = await emu.summaries(meter, NOW - 2 * DAY, NOW + 2 * DAY)
    assert [item["aggregated_value"] for item in wide] == [101.0]
    hourly = await emu.summaries(meter, NOW - DAY, NOW + 2 * DAY, "hour")
    assert [(item["start_time"], item["aggregated_value"]) for item in hourly] == [(int(NOW), 101.0)]


async def test_23_hours_on_an_identifier_is_still_a_duplicate(emu: Emu) -> None:
    meter = (await emu.meter())["id"]
    await emu.stream(await emu.token(), event("X", "1"))
    await emu.advance(23 * HOUR)
    await emu.stream(await emu.token(), event("X", "10"))
    assert [s["aggregated_value"] for s in await emu.summaries(meter, NOW - DAY, NOW + DAY)] == [1.0]
    assert (await emu.stats())["duplicates_ignored"] == 1


async def test_events_without_a_timestamp_land_at_the_emulated_receipt_time(emu: Emu) -> None:
    meter = (await emu.meter())["id"]
    await emu.stream(await emu.token(), event("before", "1"))
    await emu.advance(2 * DAY)
    await emu.stream(await emu.token(), event("after", "5"))
    daily = await emu.summaries(meter, NOW - 12 * HOUR, NOW + 3 * DAY - 12 * HOUR, "day")
    assert [(item["start_time"], item["aggregated_value"]) for item in daily] == [
        (int(NOW + 36 * HOUR), 5.0),
        (int(NOW - 12 * HOUR), 1.0),
    ]


async def test_the_timestamp_window_is_relative_to_the_emulated_receipt(emu: Emu) -> None:
    meter = (await emu.meter())["id"]
    future = "2024-06-02T13:00:00Z"  # NOW + 25 h: more than 5 minutes ahead until the clock moves
    await emu.stream(await emu.token(), event("early", "1", timestamp=future))
    state = emu.app.state
    early = state.event_status("early")
    assert early is not None
    assert (early.status, early.error_code) == ("invalid", "timestamp_in_future")
    await emu.advance(25 * HOUR)
    await emu.stream(await emu.token(), event("on-time", "2", timestamp=future))
    on_time = state.event_status("on-time")
    assert on_time is not None
    assert (on_time.status, on_time.received_at) == ("valid", NOW + 25 * HOUR)
    await emu.advance(36 * DAY)
    await emu.stream(await emu.token(), event("too-old", "4", timestamp=STAMP))  # 37 days back now
    old = state.event_status("too-old")
    assert old is not None
    assert (old.status, old.error_code) == ("invalid", "timestamp_too_far_in_past")
    stats = await emu.stats()
    assert stats["events_valid"] == 1
    assert [s["aggregated_value"] for s in await emu.summaries(meter, NOW - DAY, NOW + 40 * DAY)] == [2.0]


async def test_session_tokens_expire_on_the_emulated_clock(emu: Emu) -> None:
    session = await emu.session()
    assert session["expires_at"] == "2024-06-01T12:15:00.000Z"
    token = session["authentication_token"]
    await emu.advance(899)
    assert (await emu.stream(token, event("a"))).status_code == 200
    await emu.advance(1)
    assert (await emu.stream(token, event("b"))).status_code == 401
    later = await emu.session()
    assert later["created"] == "2024-06-01T12:15:00.000Z"


async def test_v1_duplicates_and_cancels_reach_24_emulated_hours(emu: Emu) -> None:
    await emu.meter()
    data = {"event_name": "api_requests", "payload[stripe_customer_id]": "cus_A", "payload[value]": "1"}
    first = await emu.form("/v1/billing/meter_events", {**data, "identifier": "v1-x"})
    assert first.status_code == 200
    assert first.json()["created"] == int(NOW)
    again = await emu.form("/v1/billing/meter_events", {**data, "identifier": "v1-x"})
    assert again.status_code == 400
    await emu.advance(25 * HOUR)
    cancel = {"event_name": "api_requests", "type": "cancel", "cancel[identifier]": "v1-x"}
    assert (await emu.form("/v1/billing/meter_event_adjustments", cancel)).status_code == 400
    later = await emu.form("/v1/billing/meter_events", {**data, "identifier": "v1-x"})
    assert later.status_code == 200
    assert later.json()["created"] == int(NOW + 25 * HOUR)


async def test_created_times_of_objects_follow_the_emulated_clock(emu: Emu) -> None:
    await emu.advance(HOUR)
    meter = await emu.meter()
    assert meter["created"] == meter["updated"] == int(NOW + HOUR)


async def test_advancing_refills_no_rate_limit_bucket() -> None:
    """Rate limits measure how fast a client really sends: only the base clock refills them."""
    async with running(rate_limit_rps=1) as emu:
        token = await emu.token()
        assert (await emu.stream(token, event("a"))).status_code == 200
        assert (await emu.stream(token, event("b"))).status_code == 429
        await emu.advance(HOUR)
        token = await emu.token()  # the old one expired with the hour
        assert (await emu.stream(token, event("c"))).status_code == 429
        emu.clock.advance(1)
        assert (await emu.stream(token, event("d"))).status_code == 200


# -- GET /v1/account ----------------------------------------------------------------------------


async def test_account_of_the_key(emu: Emu) -> None:
    response = await emu.get("/v1/account")
    assert response.status_code == 200
    account = response.json()
    assert account["id"].startswith("acct_1")
    assert len(account["id"]) == len("acct_") + 16
    assert account["object"] == "account"
    assert account["type"] == "standard"
    assert account["country"] == "US"
    assert account["default_currency"] == "usd"
    assert account["email"] is None
    assert account["created"] == int(NOW)
    assert account["charges_enabled"] is account["details_submitted"] is True
    assert account["business_profile"]["name"] is None
    assert account["metadata"] == {}


async def test_every_key_of_one_emulator_opens_the_same_account(emu: Emu) -> None:
    ids = {(await emu.get("/v1/account", key=key)).json()["id"] for key in (KEY, LIVE_KEY, RESTRICTED_KEY)}
    assert len(ids) == 1
    await emu.client.post("/_emulator/reset")
    assert (await emu.get("/v1/account")).json()["id"] in ids
    async with running() as other:
        assert (await other.get("/v1/account")).json()["id"] not in ids


async def test_account_needs_a_secret_key(emu: Emu) -> None:
    missing = await emu.client.get("/v1/account")
    assert missing.status_code == 401
    assert set(missing.json()["error"]) == {"type", "code", "message", "param", "doc_url"}
    token = await emu.token()
    assert (await emu.get("/v1/account", key=token)).status_code == 401
    assert (await emu.get("/v1/account", key="pk_test_emulatorclock001")).status_code == 401
    unknown = await emu.get("/v1/account", {"colour": "blue"})
    assert unknown.status_code == 400
    assert (await emu.get("/v1/account", {"expand[]": "settings"})).status_code == 200


async def test_account_with_api_key_set_opens_only_to_that_key() -> None:
    async with running(api_key=KEY) as emu:
        assert (await emu.get("/v1/account")).status_code == 200
        assert (await emu.get("/v1/account", key=LIVE_KEY)).status_code == 401
        assert (await emu.get("/v1/account", key="sk_test_someoneelse0001")).status_code == 401
