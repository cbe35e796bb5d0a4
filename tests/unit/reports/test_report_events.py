"""The v2 events client: every page listed, oldest first; reports retrieved; Stripe's errors classified."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from connector.reports.events import EventsClient
from connector.reports.report import ERROR_REPORT_TRIGGERED, NO_METER_FOUND, parse_time
from connector.stripe.v1 import StripeClient, StripePermissionError

KEY = "sk_test_" + "k" * 24


def item(n: int, created: str, kind: str = ERROR_REPORT_TRIGGERED) -> dict[str, Any]:
    return {"id": f"evt_{n}", "object": "v2.core.event", "type": kind, "created": created}


class Stripe:
    """Two pages of events, newest first, as Stripe lists them; a retrievable report."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.queries: list[list[tuple[str, str]]] = []
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        self.paths.append(request.url.path)
        if self.status != 200:
            error = {"type": "invalid_request_error", "code": "permission", "message": "no access"}
            return httpx.Response(self.status, json={"error": error})
        if request.url.path == "/v2/core/events/evt_2":
            return httpx.Response(200, json={**item(2, "2026-01-02T03:04:07.000Z"), "data": _data()})
        query = parse_qsl(request.url.query.decode())
        self.queries.append(query)
        if ("page", "p2") in query:
            page = [
                item(1, "2026-01-02T03:04:05.000Z"),
                {"id": "evt_x", "type": "other.type", "created": "x"},
            ]
            return httpx.Response(200, json={"data": page, "next_page_url": None})
        page = [item(3, "2026-01-02T03:04:07.000Z"), item(2, "2026-01-02T03:04:07.000Z", NO_METER_FOUND)]
        return httpx.Response(
            200, json={"data": page, "next_page_url": "https://api.stripe.com/v2/core/events?page=p2"}
        )


def _data() -> dict[str, Any]:
    return {
        "developer_message_summary": "There is 1 invalid event",
        "validation_start": "2026-01-02T03:04:00.000Z",
        "validation_end": "2026-01-02T03:04:01.000Z",
        "reason": {
            "error_count": 1,
            "error_types": [{"code": "no_meter", "error_count": 1, "sample_errors": []}],
        },
    }


def client(stripe: Stripe) -> EventsClient:
    return EventsClient(StripeClient(KEY, transport=httpx.MockTransport(stripe), max_retries=0))


def test_every_page_is_listed_oldest_first_with_the_types_and_the_bound() -> None:
    stripe = Stripe()
    refs = client(stripe).list_since(parse_time("2026-01-02T03:00:00.5Z"))
    assert [r.id for r in refs] == ["evt_1", "evt_2", "evt_3"]  # by created, then id
    first = stripe.queries[0]
    assert ("types[]", ERROR_REPORT_TRIGGERED) in first and ("types[]", NO_METER_FOUND) in first
    assert ("created[gt]", "2026-01-02T03:00:00.500Z") in first and ("limit", "100") in first
    assert stripe.queries[1] == [("page", "p2")]


def test_without_a_bound_everything_stripe_keeps_is_listed() -> None:
    stripe = Stripe()
    client(stripe).list_since(None)
    assert not any(name.startswith("created") for name, _ in stripe.queries[0])


def test_a_report_is_retrieved_and_parsed() -> None:
    report = client(Stripe()).retrieve("evt_2")
    assert report.id == "evt_2" and report.meter_error and report.error_count == 1


def test_a_403_is_a_permission_error() -> None:
    with pytest.raises(StripePermissionError):
        client(Stripe(403)).list_since(None)


def test_a_next_page_elsewhere_is_not_followed() -> None:
    paths: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(200, json={"data": [], "next_page_url": "https://elsewhere.example/x?page=1"})

    EventsClient(StripeClient(KEY, transport=httpx.MockTransport(answer), max_retries=0)).list_since(None)
    assert paths == ["/v2/core/events"]
