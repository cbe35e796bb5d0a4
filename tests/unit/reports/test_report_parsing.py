"""Error report events parsed into frozen values; times read and written as Stripe writes them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from connector.reports.report import (
    ERROR_REPORT_TRIGGERED,
    NO_METER_FOUND,
    ErrorReport,
    EventRef,
    ReportFormatError,
    Sample,
    format_time,
    parse_event_ref,
    parse_report,
    parse_time,
)

KEY = "ks1:0123456789abcdef:TopicIdOfUsage00000001:0:10+5"

EVENT: dict[str, Any] = {
    "id": "evt_test_1",
    "object": "v2.core.event",
    "type": ERROR_REPORT_TRIGGERED,
    "created": "2026-01-02T03:04:05.678Z",
    "livemode": False,
    "context": None,
    "reason": None,
    "related_object": {"id": "mtr_test_1", "type": "billing.meter", "url": "/v1/billing/meters/mtr_test_1"},
    "data": {
        "developer_message_summary": "There are 3 invalid events",
        "validation_start": "2026-01-02T03:04:00.000Z",
        "validation_end": "2026-01-02T03:04:01.000Z",
        "reason": {
            "error_count": 3,
            "error_types": [
                {
                    "code": "meter_event_customer_not_found",
                    "error_count": 2,
                    "sample_errors": [
                        {
                            "error_message": "No customer found with id 'cus_gone_1'.",
                            "request": {"id": "req_1", "idempotency_key": KEY},
                        }
                    ],
                },
                {
                    "code": "meter_event_invalid_value",
                    "error_count": 1,
                    "sample_errors": [
                        {
                            "error_message": "Value '12.5' for key value is not a whole number.",
                            "request": {"id": "req_2", "idempotency_key": KEY},
                        }
                    ],
                },
            ],
        },
    },
}


def test_a_report_event_becomes_a_frozen_report() -> None:
    report = parse_report(EVENT)
    assert report.id == "evt_test_1" and report.type == ERROR_REPORT_TRIGGERED
    assert report.meter == "mtr_test_1"
    assert report.created == parse_time("2026-01-02T03:04:05.678Z")
    assert report.error_count == 3
    assert [(k.code, k.error_count, len(k.samples)) for k in report.error_types] == [
        ("meter_event_customer_not_found", 2, 1),
        ("meter_event_invalid_value", 1, 1),
    ]
    assert report.samples[0] == Sample(
        "meter_event_customer_not_found", "No customer found with id 'cus_gone_1'.", "req_1", KEY
    )
    assert report.validated_at == parse_time("2026-01-02T03:04:01.000Z")
    assert not report.meter_error
    with pytest.raises(AttributeError):
        report.id = "other"  # type: ignore[misc]


def test_a_no_meter_report_has_no_meter_and_is_a_meter_error() -> None:
    event = copy.deepcopy(EVENT)
    event["type"] = NO_METER_FOUND
    del event["related_object"]
    event["data"]["reason"]["error_types"] = [{"code": "no_meter", "error_count": 7, "sample_errors": []}]
    del event["data"]["reason"]["error_count"]
    report = parse_report(event)
    assert report.meter is None and report.meter_error
    assert report.error_count == 7  # the sum of the codes when the total is absent


def test_the_log_line_names_the_report_its_codes_and_sample_messages() -> None:
    line = parse_report(EVENT).describe()
    for part in (
        "evt_test_1",
        "mtr_test_1",
        "2026-01-02T03:04:00.000Z",
        "There are 3 invalid events",
        "meter_event_customer_not_found x2",
        "No customer found with id 'cus_gone_1'.",
        "meter_event_invalid_value x1",
    ):
        assert part in line


def _broken(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    event = copy.deepcopy(EVENT)
    target = event
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return event


@pytest.mark.parametrize(
    ("event", "says"),
    [
        (_broken(("type",), "v1.billing.meter.created"), "not an error report"),
        (_broken(("data",), None), "data is not an object"),
        (_broken(("data", "reason"), "x"), "data.reason is not an object"),
        (_broken(("data", "reason", "error_types"), {}), "error_types is not a list"),
        (_broken(("data", "reason", "error_count"), -1), "not a count"),
        (_broken(("created",), "yesterday"), "no id, type or created"),
    ],
)
def test_a_malformed_event_is_refused_with_what_is_wrong(event: dict[str, Any], says: str) -> None:
    with pytest.raises(ReportFormatError, match=says):
        parse_report(event)


def test_a_sample_without_a_request_keeps_empty_strings() -> None:
    event = _broken(
        ("data", "reason", "error_types"), [{"code": "x", "error_count": 1, "sample_errors": [{}]}]
    )
    (sample,) = parse_report(event).samples
    assert sample == Sample("x", "", "", "")


def test_list_items_become_references_and_others_are_skipped() -> None:
    assert parse_event_ref(EVENT) == EventRef("evt_test_1", ERROR_REPORT_TRIGGERED, 1767323045.678)
    assert parse_event_ref({"id": "evt_1", "type": "t"}) is None
    assert parse_event_ref("evt_1") is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2026-01-02T03:04:05.678Z", 1767323045.678),
        ("2026-01-02T03:04:05Z", 1767323045.0),
        ("2026-01-02T04:04:05.678+01:00", 1767323045.678),
        (1767323045, 1767323045.0),
    ],
)
def test_times_are_read_from_rfc3339_or_unix(text: object, seconds: float) -> None:
    assert parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "2026-01-02T03:04:05", "soon", None, True, float("nan")])
def test_unreadable_times_are_none(text: object) -> None:
    assert parse_time(text) is None


def test_times_are_written_to_the_millisecond_rounding_down() -> None:
    assert format_time(1767323045.6789) == "2026-01-02T03:04:05.678Z"
    assert format_time(1767323045.0) == "2026-01-02T03:04:05.000Z"
    moment = 1767323045.6789
    assert parse_time(format_time(moment)) is not None
    assert parse_time(format_time(moment)) <= moment  # type: ignore[operator]


def test_error_report_is_a_value() -> None:
    assert parse_report(EVENT) == parse_report(copy.deepcopy(EVENT))
    assert isinstance(parse_report(EVENT), ErrorReport)
