"""Stripe's v2 events API for error reports: list the report events newer than a bound, retrieve one.

Built on the synchronous ``connector.stripe.v1.StripeClient``: its GETs are retried on the shared
outcome table (429, 5xx, lost connections, ``Retry-After``) and its errors are classified where they
arise (``StripePermissionError`` for a 403, ``StripeNotFound`` for a 404, ``StripeApiError`` else).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote, urlencode, urlsplit

from connector.reports.report import (
    REPORT_TYPES,
    ErrorReport,
    EventRef,
    format_time,
    parse_event_ref,
    parse_report,
)
from connector.stripe.v1 import StripeApiError, StripeClient

EVENTS_PATH = "/v2/core/events"
PAGE_SIZE = 100  # the largest page the v2 list returns
MAX_PAGES = 1000  # a guard against a list that never ends (100,000 reports)
# What a restricted key needs to read the reports: named in the 403's log line.
PERMISSION = "read access to Events (the v2 core events API, GET /v2/core/events)"


class EventsClient:
    """Lists and retrieves error report events with one ``StripeClient`` (closed by ``close()``)."""

    def __init__(self, client: StripeClient, types: Iterable[str] = REPORT_TYPES) -> None:
        self._client = client
        self._types = tuple(types)

    def list_since(self, created_after: float | None) -> list[EventRef]:
        """Every report event created after ``created_after`` (unix seconds; None: all Stripe keeps),
        oldest first, ties in id order; every page is read."""
        pairs: list[tuple[str, str]] = [("types[]", kind) for kind in self._types]
        if created_after is not None:
            pairs.append(("created[gt]", format_time(created_after)))
        pairs.append(("limit", str(PAGE_SIZE)))
        path: str | None = f"{EVENTS_PATH}?{urlencode(pairs)}"
        found: dict[str, EventRef] = {}
        pages = 0
        while path is not None and pages < MAX_PAGES:
            page = self._client.get(path)
            pages += 1
            data = page.get("data")
            if not isinstance(data, list):
                raise StripeApiError(f"GET {EVENTS_PATH}: Stripe's answer has no 'data' list")
            for item in data:
                ref = parse_event_ref(item)
                if ref is not None and ref.type in self._types:
                    found[ref.id] = ref
            path = _next_page(page.get("next_page_url"))
        return sorted(found.values(), key=lambda ref: (ref.created, ref.id))

    def close(self) -> None:
        self._client.close()

    def retrieve(self, event_id: str) -> ErrorReport:
        """The report event ``event_id`` with its data (``ReportFormatError`` if it is not one)."""
        return parse_report(self._client.get(f"{EVENTS_PATH}/{quote(event_id, safe='')}"))


def _next_page(url: object) -> str | None:
    """The path and query of ``next_page_url`` (Stripe gives a path; an absolute URL is cut to one)."""
    if not isinstance(url, str) or not url:
        return None
    parts = urlsplit(url)
    if not parts.path.startswith(EVENTS_PATH):
        return None  # never follow a link elsewhere with the key
    return f"{parts.path}?{parts.query}" if parts.query else parts.path
