"""In-process tests of meters: asynchronous validation, error reports, summaries and adjustments."""
# Over 400 lines: the tests of the ledger's meter behaviour, together.

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest

from connector.devtools.emulator import EmulatorConfig, ManualClock, create_app
from connector.devtools.emulator.app import EmulatorApp

pytestmark = pytest.mark.anyio

KEY = "sk_test_emulatormeters01"
NOW = 1_717_243_200  # 2024-06-01T12:00:00Z, a day boundary plus 12 hours
DAY = 86_400
HOUR = 3600


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Emu:
    def __init__(self, app: EmulatorApp, clock: ManualClock, client: httpx.AsyncClient) -> None:
        self.app = app
        self.clock = clock
        self.client = client
        self.headers = {"Authorization": f"Bearer {KEY}"}

    async def form(self, path: str, data: dict[str, Any] | None = None) -> httpx.Response:
        return await self.client.post(path, data=data or {}, headers=self.headers)

    async def get(self, path: str, params: Any = None) -> httpx.Response:
        return await self.client.get(path, params=params, headers=self.headers)

    async def meter(self, event_name: str = "api_requests", formula: str = "sum", **extra: str) -> str:
        response = await self.form(
            "/v1/billing/meters",
            {
                "display_name": event_name.title(),
                "event_name": event_name,
                "default_aggregation[formula]": formula,
                **extra,
            },
        )
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    async def send(self, *events: dict[str, Any], idempotency_key: str | None = None) -> httpx.Response:
        session = await self.client.post("/v2/billing/meter_event_session", headers=self.headers)
        token = session.json()["authentication_token"]
        headers = {"Authorization": f"Bearer {token}"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        response = await self.client.post(
            "/v2/billing/meter_event_stream", content=orjson.dumps({"events": list(events)}), headers=headers
        )
        assert response.status_code == 200, response.text
        return response

    async def summaries(self, meter_id: str, **params: Any) -> httpx.Response:
        query = {"customer": "cus_A", "start_time": NOW - DAY, "end_time": NOW + DAY, **params}
        return await self.get(f"/v1/billing/meters/{meter_id}/event_summaries", query)

    async def values(self, meter_id: str, **params: Any) -> list[tuple[int, int, float]]:
        response = await self.summaries(meter_id, **params)
        assert response.status_code == 200, response.text
        return [(s["start_time"], s["end_time"], s["aggregated_value"]) for s in response.json()["data"]]

    async def thin_events(self, **params: Any) -> list[dict[str, Any]]:
        response = await self.get("/v2/core/events", params)
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data


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
async def decimal_emu() -> AsyncIterator[Emu]:
    """An account with decimal meter values enabled."""
    async with open_emu(decimal_values=True) as emulator:
        yield emulator


def stamp(seconds: float) -> str:
    from connector.devtools.emulator.timestamps import format_rfc3339

    return format_rfc3339(seconds)


def ev(identifier: str, value: str | None = "1", at: float | None = None, **changes: Any) -> dict[str, Any]:
    payload: dict[str, str] = {"stripe_customer_id": "cus_A"}
    if value is not None:
        payload["value"] = value
    event: dict[str, Any] = {"event_name": "api_requests", "identifier": identifier, "payload": payload}
    if at is not None:
        event["timestamp"] = stamp(at)
    event.update(changes)
    return event


# -- meters -------------------------------------------------------------------------------------


async def test_meter_object_shape_and_defaults(emu: Emu) -> None:
    meter_id = await emu.meter()
    meter = (await emu.get(f"/v1/billing/meters/{meter_id}")).json()
    assert meter_id.startswith("mtr_")
    assert meter == {
        "id": meter_id,
        "object": "billing.meter",
        "created": NOW,
        "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "default_aggregation": {"formula": "sum"},
        "display_name": "Api_Requests",
        "event_name": "api_requests",
        "event_time_window": None,
        "livemode": False,
        "status": "active",
        "status_transitions": {"deactivated_at": None},
        "updated": NOW,
        "value_settings": {"event_payload_key": "value"},
    }


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"event_name": "e", "default_aggregation[formula]": "sum"}, "display_name"),
        ({"display_name": "d", "default_aggregation[formula]": "sum"}, "event_name"),
        ({"display_name": "d", "event_name": "e"}, "default_aggregation"),
        (
            {"display_name": "d", "event_name": "e", "default_aggregation[formula]": "avg"},
            "default_aggregation[formula]",
        ),
        (
            {
                "display_name": "d",
                "event_name": "e",
                "default_aggregation[formula]": "sum",
                "customer_mapping[type]": "by_id",
            },
            "customer_mapping[event_payload_key]",
        ),
        (
            {"display_name": "d", "event_name": "e", "default_aggregation[formula]": "sum", "colour": "red"},
            "colour",
        ),
        ({"display_name": "d", "event_name": "e" * 101, "default_aggregation[formula]": "sum"}, "event_name"),
    ],
)
async def test_meter_create_errors_name_the_param(emu: Emu, data: dict[str, str], param: str) -> None:
    response = await emu.form("/v1/billing/meters", data)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"type", "code", "message", "param", "doc_url"}
    assert error["type"] == "invalid_request_error" and error["param"] == param


async def test_duplicate_active_event_name_is_rejected_until_deactivated(emu: Emu) -> None:
    first = await emu.meter()
    duplicate = await emu.form(
        "/v1/billing/meters",
        {"display_name": "d", "event_name": "api_requests", "default_aggregation[formula]": "count"},
    )
    assert duplicate.status_code == 400 and duplicate.json()["error"]["param"] == "event_name"
    emu.clock.advance(10)
    deactivated = (await emu.form(f"/v1/billing/meters/{first}/deactivate")).json()
    assert deactivated["status"] == "inactive"
    assert deactivated["status_transitions"]["deactivated_at"] == NOW + 10
    second = await emu.meter(formula="count")
    assert (await emu.form(f"/v1/billing/meters/{first}/reactivate")).status_code == 400
    await emu.form(f"/v1/billing/meters/{second}/deactivate")
    reactivated = (await emu.form(f"/v1/billing/meters/{first}/reactivate")).json()
    assert reactivated["status"] == "active" and reactivated["status_transitions"]["deactivated_at"] is None


async def test_list_meters_filters_and_paginates_newest_first(emu: Emu) -> None:
    ids = [await emu.meter(f"event_{i}") for i in range(5)]
    await emu.form(f"/v1/billing/meters/{ids[1]}/deactivate")
    page = (await emu.get("/v1/billing/meters", {"limit": 2})).json()
    assert page["object"] == "list" and page["url"] == "/v1/billing/meters" and page["has_more"] is True
    assert [m["id"] for m in page["data"]] == [ids[4], ids[3]]
    rest = (await emu.get("/v1/billing/meters", {"limit": 2, "starting_after": ids[3]})).json()
    assert [m["id"] for m in rest["data"]] == [ids[2], ids[1]]
    active = (await emu.get("/v1/billing/meters", {"status": "active", "limit": 100})).json()
    assert [m["id"] for m in active["data"]] == [ids[4], ids[3], ids[2], ids[0]]
    inactive = (await emu.get("/v1/billing/meters", {"status": "inactive"})).json()
    assert [m["id"] for m in inactive["data"]] == [ids[1]]
    assert (await emu.get("/v1/billing/meters", {"limit": 101})).status_code == 400


async def test_unknown_meter_is_a_404_resource_missing(emu: Emu) -> None:
    response = await emu.get("/v1/billing/meters/mtr_missing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "resource_missing"
    assert response.json()["error"]["param"] == "id"


async def test_meter_display_name_can_be_updated(emu: Emu) -> None:
    meter_id = await emu.meter()
    emu.clock.advance(5)
    updated = (await emu.form(f"/v1/billing/meters/{meter_id}", {"display_name": "Calls"})).json()
    assert updated["display_name"] == "Calls" and updated["updated"] == NOW + 5


# -- asynchronous validation ------------------------------------------------------------------

VALIDATION = [
    ("unknown event name", {"event_name": "nobody_listens"}, "no_meter"),
    ("missing customer", {"payload": {"value": "1"}}, "meter_event_no_customer_defined"),
    (
        "unknown customer",
        {"payload": {"stripe_customer_id": "customer-1", "value": "1"}},
        "meter_event_customer_not_found",
    ),
    ("missing value", {"payload": {"stripe_customer_id": "cus_A"}}, "meter_event_value_not_found"),
    (
        "words for value",
        {"payload": {"stripe_customer_id": "cus_A", "value": "ten"}},
        "meter_event_invalid_value",
    ),
    (
        "exponent value",
        {"payload": {"stripe_customer_id": "cus_A", "value": "1e3"}},
        "meter_event_invalid_value",
    ),
    ("empty value", {"payload": {"stripe_customer_id": "cus_A", "value": ""}}, "meter_event_invalid_value"),
    (
        "16 significant digits",
        {"payload": {"stripe_customer_id": "cus_A", "value": "1234567890123456"}},
        "meter_event_value_too_many_digits",
    ),
    (
        "decimal value, decimals off",
        {"payload": {"stripe_customer_id": "cus_A", "value": "12.0"}},
        "meter_event_invalid_value",
    ),
    ("36 days old", {"timestamp": stamp(NOW - 36 * DAY)}, "timestamp_too_far_in_past"),
    ("6 minutes ahead", {"timestamp": stamp(NOW + 360)}, "timestamp_in_future"),
]


@pytest.mark.parametrize(("case", "changes", "code"), VALIDATION, ids=[v[0] for v in VALIDATION])
async def test_async_validation_reports_each_code(
    emu: Emu, case: str, changes: dict[str, Any], code: str
) -> None:
    meter_id = await emu.meter()
    sent = await emu.send(ev("good", "2"), ev("bad", **changes), idempotency_key=f"key-{case}")
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 2.0)]
    status = emu.app.state.event_status("bad")
    assert status is not None and status.status == "invalid" and status.error_code == code
    assert status.request_id == sent.headers["request-id"] and status.idempotency_key == f"key-{case}"
    [report] = await emu.thin_events()
    assert report["object"] == "v2.core.event"
    assert report["data"]["reason"]["error_count"] == 1
    [error_type] = report["data"]["reason"]["error_types"]
    assert error_type["code"] == code and error_type["error_count"] == 1
    # Stripe's sample names the request that carried the event, not the event.
    assert error_type["sample_errors"][0]["request"] == {
        "id": sent.headers["request-id"],
        "idempotency_key": f"key-{case}",
    }
    assert error_type["sample_errors"][0]["error_message"]
    if code == "no_meter":
        assert report["type"] == "v1.billing.meter.no_meter_found"
        assert "related_object" not in report
    else:
        assert report["type"] == "v1.billing.meter.error_report_triggered"
        assert report["related_object"] == {
            "id": meter_id,
            "type": "billing.meter",
            "url": f"/v1/billing/meters/{meter_id}",
        }


@pytest.mark.parametrize(
    ("value", "expected"),
    [("-5", -5.0), ("1.5", 1.5), ("0.000000000000001", 1e-15), ("123456789012345", 123456789012345.0)],
)
async def test_values_stripe_accepts(decimal_emu: Emu, value: str, expected: float) -> None:
    meter_id = await decimal_emu.meter()
    await decimal_emu.send(ev("v", value))
    assert await decimal_emu.values(meter_id) == [(NOW - DAY, NOW + DAY, expected)]


async def test_timestamp_bounds_are_relative_to_receipt(emu: Emu) -> None:
    meter_id = await emu.meter()
    await emu.send(ev("past", "1", NOW - 35 * DAY + 60), ev("future", "10", NOW + 299))
    emu.clock.advance(3 * DAY)  # reading later does not change the verdict
    response = await emu.summaries(meter_id, start_time=NOW - 40 * DAY, end_time=NOW + DAY)
    assert response.json()["data"][0]["aggregated_value"] == 11.0


async def test_archived_meter_events_are_reported_on_that_meter(emu: Emu) -> None:
    meter_id = await emu.meter()
    await emu.form(f"/v1/billing/meters/{meter_id}/deactivate")
    await emu.send(ev("late"))
    [report] = await emu.thin_events()
    assert report["related_object"]["id"] == meter_id
    assert report["data"]["reason"]["error_types"][0]["code"] == "archived_meter"


async def test_events_are_judged_by_the_meters_at_receipt(emu: Emu) -> None:
    meter_id = await emu.meter()
    await emu.send(ev("before", "3"))
    await emu.form(f"/v1/billing/meters/{meter_id}/deactivate")  # validates the queue first
    await emu.send(ev("after", "4"))
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 3.0)]
    early = emu.app.state.event_status("before")
    assert early is not None and early.status == "valid" and early.meter_id == meter_id


async def test_custom_payload_keys(emu: Emu) -> None:
    meter_id = await emu.meter(
        **{
            "customer_mapping[event_payload_key]": "account",
            "customer_mapping[type]": "by_id",
            "value_settings[event_payload_key]": "tokens",
        }
    )
    await emu.send(
        {"event_name": "api_requests", "identifier": "k1", "payload": {"account": "cus_A", "tokens": "7"}},
        {
            "event_name": "api_requests",
            "identifier": "k2",
            "payload": {"stripe_customer_id": "cus_A", "value": "1"},
        },
    )
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 7.0)]
    bad = emu.app.state.event_status("k2")
    assert bad is not None and bad.error_code == "meter_event_no_customer_defined"


async def test_one_report_per_meter_per_pass_with_counts_by_code(emu: Emu) -> None:
    meter_id = await emu.meter()
    await emu.send(
        ev("a", "x"),
        ev("b", "y"),
        ev("c", None),
        ev("d", event_name="nothing"),
        ev("e", event_name="nothing"),
    )
    reports = await emu.thin_events()
    by_type = {r["type"]: r for r in reports}
    meter_report = by_type["v1.billing.meter.error_report_triggered"]
    assert meter_report["data"]["developer_message_summary"] == "There are 3 invalid events"
    counts = {t["code"]: t["error_count"] for t in meter_report["data"]["reason"]["error_types"]}
    assert counts == {"meter_event_invalid_value": 2, "meter_event_value_not_found": 1}
    assert meter_report["data"]["validation_start"] == stamp(NOW)
    assert by_type["v1.billing.meter.no_meter_found"]["data"]["reason"]["error_count"] == 2
    assert (await emu.thin_events(object_id=meter_id)) == [meter_report]


async def test_thin_events_list_paginates_and_filters(emu: Emu) -> None:
    await emu.meter()
    for i in range(3):
        await emu.send(ev(f"x{i}", "bad"))
        await emu.thin_events()  # each read validates the queue: one report per send
        emu.clock.advance(1)
    first = (await emu.get("/v2/core/events", {"limit": 2})).json()
    assert len(first["data"]) == 2 and first["previous_page_url"] is None
    next_url = first["next_page_url"]
    assert next_url.startswith("/v2/core/events?")
    assert parse_qs(urlsplit(next_url).query)["limit"] == ["2"]
    second = (await emu.get(next_url)).json()
    assert len(second["data"]) == 1 and second["next_page_url"] is None
    ids = [e["id"] for e in first["data"] + second["data"]]
    assert len(set(ids)) == 3
    created = [e["created"] for e in first["data"] + second["data"]]
    assert created == sorted(created, reverse=True)
    one = (await emu.get(f"/v2/core/events/{ids[0]}")).json()
    assert one["id"] == ids[0]
    assert (await emu.get("/v2/core/events/evt_missing")).status_code == 404
    only = await emu.thin_events(**{"types[0]": "v1.billing.meter.no_meter_found"})
    assert only == []
    recent = await emu.thin_events(**{"created[gte]": stamp(NOW + 1)})
    assert len(recent) == 2
    assert (await emu.get("/v2/core/events", {"bogus": "1"})).status_code == 400


# -- summaries ----------------------------------------------------------------------------------


async def summary_fixture(emu: Emu, formula: str) -> str:
    meter_id = await emu.meter(formula=formula)
    # Two hours and two days, events out of order; ties in timestamp broken by arrival.
    await emu.send(
        ev("a", "5", NOW - DAY + 10),  # 2024-05-31T12:00:10Z
        ev("b", "2", NOW - 3 * HOUR),  # 09:00
        ev("c", "4", NOW - 3 * HOUR + 1800),  # 09:30
        ev("d", "1.5", NOW - 2 * HOUR + 59),  # 10:00:59
        ev("e", "3", NOW - 3 * HOUR + 1800),  # 09:30, same instant as c, arrived later
    )
    return meter_id


@pytest.mark.parametrize(
    ("formula", "total", "hours", "days"),
    [
        ("sum", 15.5, [1.5, 9.0], [10.5, 5.0]),
        ("count", 5.0, [1.0, 3.0], [4.0, 1.0]),
        ("last", 1.5, [1.5, 3.0], [1.5, 5.0]),
    ],
)
async def test_summaries_per_formula_and_window(
    decimal_emu: Emu, formula: str, total: float, hours: list[float], days: list[float]
) -> None:
    emu = decimal_emu
    meter_id = await summary_fixture(emu, formula)
    start, end = NOW - 2 * DAY, NOW + DAY
    assert await emu.values(meter_id, start_time=start, end_time=end) == [(start, end, total)]
    today = NOW - 12 * HOUR
    hourly = await emu.values(meter_id, start_time=today, end_time=today + DAY, value_grouping_window="hour")
    assert hourly == [(NOW - 2 * HOUR, NOW - HOUR, hours[0]), (NOW - 3 * HOUR, NOW - 2 * HOUR, hours[1])]
    daily = await emu.values(
        meter_id, start_time=today - DAY, end_time=today + DAY, value_grouping_window="day"
    )
    assert daily == [(today, today + DAY, days[0]), (today - DAY, today, days[1])]


async def test_summary_range_is_start_inclusive_end_exclusive(emu: Emu) -> None:
    meter_id = await emu.meter()
    await emu.send(ev("at-start", "1", NOW - HOUR), ev("at-end", "10", NOW), ev("inside", "100", NOW - 1))
    assert await emu.values(meter_id, start_time=NOW - HOUR, end_time=NOW) == [(NOW - HOUR, NOW, 101.0)]
    assert await emu.values(meter_id, start_time=NOW, end_time=NOW + 60) == [(NOW, NOW + 60, 10.0)]


async def test_summary_with_no_events_is_zero_and_windows_are_omitted(emu: Emu) -> None:
    meter_id = await emu.meter()
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 0.0)]
    assert await emu.values(meter_id, value_grouping_window="hour") == []


async def test_summaries_are_per_customer(emu: Emu) -> None:
    meter_id = await emu.meter()
    other = ev("o", "9")
    other["payload"]["stripe_customer_id"] = "cus_B"
    await emu.send(ev("m", "1"), other)
    assert (await emu.values(meter_id))[0][2] == 1.0
    assert (await emu.values(meter_id, customer="cus_B"))[0][2] == 9.0


async def test_summary_items_have_stripes_shape_and_paginate(decimal_emu: Emu) -> None:
    emu = decimal_emu
    meter_id = await summary_fixture(emu, "sum")
    today = NOW - 12 * HOUR
    page = (
        await emu.summaries(
            meter_id, start_time=today, end_time=today + DAY, value_grouping_window="hour", limit=1
        )
    ).json()
    assert page["has_more"] is True and page["url"] == f"/v1/billing/meters/{meter_id}/event_summaries"
    [item] = page["data"]
    assert set(item) == {"id", "object", "aggregated_value", "start_time", "end_time", "meter", "livemode"}
    assert item["object"] == "billing.meter_event_summary" and item["id"].startswith("mtrusg_")
    assert isinstance(item["aggregated_value"], float)
    rest = (
        await emu.summaries(
            meter_id,
            start_time=today,
            end_time=today + DAY,
            value_grouping_window="hour",
            starting_after=item["id"],
        )
    ).json()
    assert [s["start_time"] for s in rest["data"]] == [NOW - 3 * HOUR] and rest["has_more"] is False


SUMMARY_ERRORS = [
    ("start not on a minute", {"start_time": NOW + 1}, "start_time"),
    ("end not on a minute", {"end_time": NOW + 30}, "end_time"),
    (
        "hour window, start at half past",
        {"start_time": NOW + 1800, "value_grouping_window": "hour"},
        "start_time",
    ),
    ("hour window, end at a minute", {"end_time": NOW + 60, "value_grouping_window": "hour"}, "end_time"),
    ("day window, start at noon", {"start_time": NOW, "value_grouping_window": "day"}, "start_time"),
    ("start after end", {"start_time": NOW, "end_time": NOW - 60}, "start_time"),
    ("empty range", {"start_time": NOW, "end_time": NOW}, "start_time"),
    ("bad window", {"value_grouping_window": "week"}, "value_grouping_window"),
    ("missing customer", {"customer": None}, "customer"),
    ("missing start", {"start_time": None}, "start_time"),
    ("missing end", {"end_time": None}, "end_time"),
    ("unknown customer", {"customer": "not-a-customer"}, "customer"),
    ("unknown parameter", {"colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("case", "params", "param"), SUMMARY_ERRORS, ids=[s[0] for s in SUMMARY_ERRORS])
async def test_summary_parameter_errors(emu: Emu, case: str, params: dict[str, Any], param: str) -> None:
    meter_id = await emu.meter()
    query = {"customer": "cus_A", "start_time": NOW - DAY, "end_time": NOW + DAY}
    query.update(params)
    response = await emu.get(
        f"/v1/billing/meters/{meter_id}/event_summaries", {k: v for k, v in query.items() if v is not None}
    )
    assert response.status_code == 400, case
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_day_window_accepts_utc_midnights(emu: Emu) -> None:
    meter_id = await emu.meter()
    midnight = NOW - 12 * HOUR
    assert (
        await emu.values(meter_id, start_time=midnight, end_time=midnight + DAY, value_grouping_window="day")
        == []
    )


# -- v1 meter events and adjustments ----------------------------------------------------------


async def test_v1_meter_event_create_and_duplicate(emu: Emu) -> None:
    meter_id = await emu.meter()
    data = {
        "event_name": "api_requests",
        "payload[stripe_customer_id]": "cus_A",
        "payload[value]": "25",
        "identifier": "v1-1",
        "timestamp": str(NOW - 60),
    }
    created = (await emu.form("/v1/billing/meter_events", data)).json()
    assert created == {
        "object": "billing.meter_event",
        "created": NOW,
        "event_name": "api_requests",
        "identifier": "v1-1",
        "livemode": False,
        "payload": {"stripe_customer_id": "cus_A", "value": "25"},
        "timestamp": NOW - 60,
    }
    again = await emu.form("/v1/billing/meter_events", data)
    assert again.status_code == 400
    assert again.json()["error"]["message"] == "An event already exists with identifier v1-1."
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 25.0)]
    # The stream shares the identifier space.
    await emu.send(ev("v1-1", "1000"))
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 25.0)]


async def test_v1_meter_event_generates_identifier_and_checks_params(emu: Emu) -> None:
    created = (
        await emu.form(
            "/v1/billing/meter_events", {"event_name": "e", "payload[stripe_customer_id]": "cus_A"}
        )
    ).json()
    assert created["identifier"] and created["timestamp"] == NOW
    for data, param in [
        ({"payload[value]": "1"}, "event_name"),
        ({"event_name": "e"}, "payload"),
        ({"event_name": "e", "payload[value]": "1", "timestamp": "soon"}, "timestamp"),
        ({"event_name": "e", "payload[value][x]": "1"}, "payload[value]"),
    ]:
        response = await emu.form("/v1/billing/meter_events", data)
        assert response.status_code == 400 and response.json()["error"]["param"] == param


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_cancel_removes_an_event_from_summaries(emu: Emu, api: str) -> None:
    meter_id = await emu.meter()
    await emu.send(ev("keep", "2"), ev("drop", "5"))
    if api == "v1":
        response = await emu.form(
            "/v1/billing/meter_event_adjustments",
            {"event_name": "api_requests", "type": "cancel", "cancel[identifier]": "drop"},
        )
        assert response.json()["object"] == "billing.meter_event_adjustment"
    else:
        response = await emu.client.post(
            "/v2/billing/meter_event_adjustments",
            json={"event_name": "api_requests", "type": "cancel", "cancel": {"identifier": "drop"}},
            headers=emu.headers,
        )
        body = response.json()
        assert body["object"] == "v2.billing.meter_event_adjustment" and body["created"] == stamp(NOW)
    assert response.status_code == 200, response.text
    assert response.json()["cancel"] == {"identifier": "drop"} and response.json()["type"] == "cancel"
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 2.0)]
    status = emu.app.state.event_status("drop")
    assert status is not None and status.status == "canceled"
    stats = (await emu.client.get("/_emulator/stats")).json()
    assert stats["events_canceled"] == 1 and stats["events_valid"] == 1
    again = await emu.form(
        "/v1/billing/meter_event_adjustments",
        {"event_name": "api_requests", "type": "cancel", "cancel[identifier]": "drop"},
    )
    assert again.status_code == 400


async def test_cancel_of_the_latest_value_reveals_the_previous_one(emu: Emu) -> None:
    meter_id = await emu.meter(formula="last")
    await emu.send(ev("old", "3", NOW - 120), ev("new", "8", NOW - 60))
    assert (await emu.values(meter_id))[0][2] == 8.0
    await emu.client.post(
        "/v2/billing/meter_event_adjustments",
        json={"event_name": "api_requests", "type": "cancel", "cancel": {"identifier": "new"}},
        headers=emu.headers,
    )
    assert (await emu.values(meter_id))[0][2] == 3.0


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"event_name": "api_requests", "type": "cancel", "cancel": {"identifier": "nope"}}, 400),
        ({"event_name": "other", "type": "cancel", "cancel": {"identifier": "x"}}, 400),
        ({"event_name": "api_requests", "type": "range", "cancel": {"identifier": "x"}}, 400),
        ({"event_name": "api_requests", "type": "cancel"}, 400),
        ({"event_name": "api_requests", "type": "cancel", "cancel": {"identifier": "x"}, "extra": 1}, 400),
    ],
)
async def test_cancel_errors(emu: Emu, body: dict[str, Any], status: int) -> None:
    await emu.meter()
    await emu.send(ev("x"))
    response = await emu.client.post("/v2/billing/meter_event_adjustments", json=body, headers=emu.headers)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"type", "code", "message", "doc_url"}


async def test_cancel_reaches_back_24_hours_only(emu: Emu) -> None:
    meter_id = await emu.meter()
    await emu.send(ev("old", "1"))
    emu.clock.advance(DAY)
    response = await emu.form(
        "/v1/billing/meter_event_adjustments",
        {"event_name": "api_requests", "type": "cancel", "cancel[identifier]": "old"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "cancel[identifier]"
    assert await emu.values(meter_id, start_time=NOW - DAY, end_time=NOW + 2 * DAY) == [
        (NOW - DAY, NOW + 2 * DAY, 1.0)
    ]


# -- decimal values: an account setting ---------------------------------------------------------


async def test_decimal_values_are_invalid_unless_the_account_has_them(emu: Emu) -> None:
    meter_id = await emu.meter()
    await emu.send(ev("whole", "3"), ev("half", "1.5"), ev("point-zero", "12.0"), ev("negative", "-2.25"))
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 3.0)]
    for identifier in ("half", "point-zero", "negative"):
        status = emu.app.state.event_status(identifier)
        assert status is not None and status.error_code == "meter_event_invalid_value", identifier
        assert status.error_message is not None and "whole-number values only" in status.error_message
    [report] = await emu.thin_events()
    [error_type] = report["data"]["reason"]["error_types"]
    assert error_type["code"] == "meter_event_invalid_value" and error_type["error_count"] == 3
    stats = (await emu.client.get("/_emulator/stats")).json()
    assert stats["events_valid"] == 1 and stats["events_invalid"] == 3


async def test_decimal_values_when_enabled_keep_the_digit_limit(decimal_emu: Emu) -> None:
    meter_id = await decimal_emu.meter()
    await decimal_emu.send(ev("a", "1.5"), ev("b", "12.0"), ev("c", "1234567890.123456"))
    assert await decimal_emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 13.5)]
    status = decimal_emu.app.state.event_status("c")
    assert status is not None and status.error_code == "meter_event_value_too_many_digits"


async def test_v1_meter_events_follow_the_decimal_setting(emu: Emu) -> None:
    meter_id = await emu.meter()
    response = await emu.form(
        "/v1/billing/meter_events",
        {"event_name": "api_requests", "payload[stripe_customer_id]": "cus_A", "payload[value]": "2.5"},
    )
    assert response.status_code == 200  # validated asynchronously, as on the stream
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 0.0)]
    status = emu.app.state.event_status(response.json()["identifier"])
    assert status is not None and status.error_code == "meter_event_invalid_value"


# -- pre-aggregated meters (event_time_window) ----------------------------------------------------


async def test_meter_event_time_window_is_shown_and_checked(emu: Emu) -> None:
    hourly = await emu.meter("hourly", event_time_window="hour")
    assert (await emu.get(f"/v1/billing/meters/{hourly}")).json()["event_time_window"] == "hour"
    daily = await emu.meter("daily", event_time_window="day")
    assert (await emu.get(f"/v1/billing/meters/{daily}")).json()["event_time_window"] == "day"
    response = await emu.form(
        "/v1/billing/meters",
        {
            "display_name": "weekly",
            "event_name": "weekly",
            "default_aggregation[formula]": "sum",
            "event_time_window": "week",
        },
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "event_time_window"


async def test_pre_aggregated_sum_counts_the_latest_received_event_per_window(emu: Emu) -> None:
    meter_id = await emu.meter(event_time_window="hour")
    ten = NOW - 2 * HOUR  # 10:00
    # Receipt order decides, not the timestamps: the last one received is the earliest in the hour.
    await emu.send(ev("a", "5", ten + 600), ev("b", "7", ten + 1200))
    await emu.send(ev("c", "3", ten + 60))
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 3.0)]
    await emu.send(ev("d", "4", ten + HOUR + 5))  # 11:00, another window
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 7.0)]
    hourly = await emu.values(
        meter_id, start_time=NOW - 12 * HOUR, end_time=NOW + 12 * HOUR, value_grouping_window="hour"
    )
    assert hourly == [(ten + HOUR, ten + 2 * HOUR, 4.0), (ten, ten + HOUR, 3.0)]
    # The superseded events were valid: they are not reported, they just stop counting.
    assert await emu.thin_events() == []
    stats = (await emu.client.get("/_emulator/stats")).json()
    assert stats["events_valid"] == 4


async def test_the_same_events_without_a_window_add_up(emu: Emu) -> None:
    meter_id = await emu.meter()
    ten = NOW - 2 * HOUR
    await emu.send(ev("a", "5", ten + 600), ev("b", "7", ten + 1200), ev("c", "3", ten + 60))
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 15.0)]


async def test_pre_aggregated_windows_are_per_customer_and_utc_day(emu: Emu) -> None:
    meter_id = await emu.meter(event_time_window="day")
    other = ev("b1", "100", NOW - HOUR)
    other["payload"]["stripe_customer_id"] = "cus_B"
    midnight = NOW - 12 * HOUR
    await emu.send(ev("a1", "5", midnight + 60), other, ev("a2", "8", NOW - 60), ev("y1", "9", midnight - 60))
    daily = await emu.values(
        meter_id, start_time=midnight - DAY, end_time=midnight + DAY, value_grouping_window="day"
    )
    assert daily == [(midnight, midnight + DAY, 8.0), (midnight - DAY, midnight, 9.0)]
    assert (await emu.values(meter_id, customer="cus_B"))[0][2] == 100.0


@pytest.mark.parametrize(("formula", "expected"), [("count", 2.0), ("last", 6.0)])
async def test_pre_aggregated_count_and_last(emu: Emu, formula: str, expected: float) -> None:
    meter_id = await emu.meter(formula=formula, event_time_window="hour")
    ten = NOW - 2 * HOUR
    # Hour 10: 2 then 6 (6 counts); hour 9: 4. ``last`` takes the surviving event latest in time.
    await emu.send(ev("a", "2", ten + 1800), ev("b", "6", ten + 60), ev("c", "4", ten - 60))
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, expected)]


async def test_duplicates_and_invalid_events_do_not_supersede(emu: Emu) -> None:
    meter_id = await emu.meter(event_time_window="hour")
    ten = NOW - 2 * HOUR
    await emu.send(ev("a", "5", ten + 60))
    await emu.send(ev("a", "50", ten + 120), ev("bad", "x", ten + 180))
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 5.0)]


async def cancel(emu: Emu, identifier: str) -> None:
    response = await emu.form(
        "/v1/billing/meter_event_adjustments",
        {"event_name": "api_requests", "type": "cancel", "cancel[identifier]": identifier},
    )
    assert response.status_code == 200, response.text


async def test_canceling_the_latest_event_of_a_window_falls_back_to_the_one_before(emu: Emu) -> None:
    meter_id = await emu.meter(event_time_window="hour")
    ten = NOW - 2 * HOUR
    await emu.send(ev("a", "5", ten + 60), ev("b", "7", ten + 120), ev("c", "3", ten + 180))
    await cancel(emu, "b")  # superseded already: nothing changes
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 3.0)]
    await cancel(emu, "c")  # the latest: the latest remaining one (a) counts again
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 5.0)]
    await cancel(emu, "a")
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 0.0)]
    await emu.send(ev("d", "9", ten + 240))
    assert await emu.values(meter_id) == [(NOW - DAY, NOW + DAY, 9.0)]


# -- error reports name the request ---------------------------------------------------------------


async def test_error_report_samples_name_each_request(emu: Emu) -> None:
    await emu.meter()
    session = await emu.client.post("/v2/billing/meter_event_session", headers=emu.headers)
    token = session.json()["authentication_token"]

    async def stream(*events: dict[str, Any], **headers: str) -> httpx.Response:
        return await emu.client.post(
            "/v2/billing/meter_event_stream",
            content=orjson.dumps({"events": list(events)}),
            headers={"Authorization": f"Bearer {token}", **headers},
        )

    first = await stream(ev("bad-1", "x"), ev("bad-2", "y"), **{"Idempotency-Key": "idem-first"})
    second = await stream(ev("bad-3", "z"))  # no Idempotency-Key: the emulator makes one up
    [report] = await emu.thin_events()  # one validation pass: one report for both requests
    assert set(report["data"]) == {
        "developer_message_summary",
        "reason",
        "validation_start",
        "validation_end",
    }
    [error_type] = report["data"]["reason"]["error_types"]
    requests = [sample["request"] for sample in error_type["sample_errors"]]
    status = emu.app.state.event_status("bad-3")
    assert status is not None and status.idempotency_key is not None
    assert requests == [
        {"id": first.headers["request-id"], "idempotency_key": "idem-first"},
        {"id": first.headers["request-id"], "idempotency_key": "idem-first"},
        {"id": second.headers["request-id"], "idempotency_key": status.idempotency_key},
    ]
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", status.idempotency_key
    )
    assert first.headers["request-id"] != second.headers["request-id"]


async def test_v1_meter_event_errors_name_the_v1_request(emu: Emu) -> None:
    response = await emu.client.post(
        "/v1/billing/meter_events",
        data={"event_name": "nobody_listens", "payload[stripe_customer_id]": "cus_A", "payload[value]": "1"},
        headers={**emu.headers, "Idempotency-Key": "v1-key"},
    )
    assert response.status_code == 200
    [report] = await emu.thin_events()
    assert report["type"] == "v1.billing.meter.no_meter_found"
    [error_type] = report["data"]["reason"]["error_types"]
    assert error_type["code"] == "no_meter"
    assert error_type["sample_errors"][0]["request"] == {
        "id": response.headers["request-id"],
        "idempotency_key": "v1-key",
    }
