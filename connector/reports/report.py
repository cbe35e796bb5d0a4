"""Stripe's asynchronous error reports parsed into frozen values: event references, reports, samples."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from connector.errors import ConnectorError

ERROR_REPORT_TRIGGERED = "v1.billing.meter.error_report_triggered"
NO_METER_FOUND = "v1.billing.meter.no_meter_found"
REPORT_TYPES = (ERROR_REPORT_TRIGGERED, NO_METER_FOUND)
# Codes saying the meter itself is the problem: the pipeline reads the meters again at once.
METER_CODES = frozenset({"archived_meter", "no_meter"})
MAX_MESSAGE = 500  # a sample's message as kept (Stripe's are one sentence)
SHOWN_MESSAGES = 3  # distinct sample messages per code in the report's log line


class ReportFormatError(ConnectorError):
    """A v2 event that is not the report Stripe documents (a field missing or of the wrong type)."""


@dataclass(frozen=True, slots=True)
class EventRef:
    """One thin event as a list page shows it: enough to order it and fetch it."""

    id: str
    type: str
    created: float  # unix seconds on Stripe's clock


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample error: what Stripe said, and the request (id, Idempotency-Key) that carried the event."""

    code: str
    message: str
    request_id: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class ErrorType:
    """One code of a report: how many events failed with it (all of them) and a few samples."""

    code: str
    error_count: int
    samples: tuple[Sample, ...]


@dataclass(frozen=True, slots=True)
class ErrorReport:
    """A ``v1.billing.meter.error_report_triggered`` or ``…no_meter_found`` event, as retrieved."""

    id: str
    type: str
    created: float
    meter: str | None  # the related meter's id (None for no_meter_found)
    summary: str  # developer_message_summary
    validation_start: str
    validation_end: str
    error_count: int
    error_types: tuple[ErrorType, ...]

    @property
    def samples(self) -> tuple[Sample, ...]:
        return tuple(sample for kind in self.error_types for sample in kind.samples)

    @property
    def meter_error(self) -> bool:
        """Whether Stripe says a meter is missing or inactive (``archived_meter``, ``no_meter``)."""
        return any(kind.code in METER_CODES for kind in self.error_types)

    @property
    def validated_at(self) -> float | None:
        """The end of the validation window (unix seconds), when Stripe gave a readable one."""
        return parse_time(self.validation_end)

    def describe(self) -> str:
        """One log line: id, meter, window, summary, each code's count and a few sample messages."""
        meter = self.meter or "no meter"
        parts = [
            f"Stripe error report {self.id} ({meter}, validation {self.validation_start} to "
            f"{self.validation_end}): {self.summary or f'{self.error_count} invalid events'}"
        ]
        for kind in self.error_types:
            messages = list(dict.fromkeys(s.message for s in kind.samples))
            shown = "; ".join(repr(m) for m in messages[:SHOWN_MESSAGES])
            more = f" (+{len(messages) - SHOWN_MESSAGES} more)" if len(messages) > SHOWN_MESSAGES else ""
            samples = f", {len(kind.samples)} samples: {shown}{more}" if kind.samples else ", no samples"
            parts.append(f"{kind.code} x{kind.error_count}{samples}")
        return "; ".join(parts)


def parse_time(value: object) -> float | None:
    """Unix seconds of an RFC 3339 string (or a unix number, as v1 objects carry); None if neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


def format_time(seconds: float) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ``, rounded *down* to the millisecond (a ``created[gt]`` bound made of
    it never leaves out an event created after ``seconds``)."""
    millis = math.floor(seconds * 1000)
    whole, fraction = divmod(millis, 1000)
    moment = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{moment}.{fraction:03d}Z"


def parse_event_ref(item: object) -> EventRef | None:
    """A list item's id, type and created time; None for an item without them."""
    if not isinstance(item, Mapping):
        return None
    event_id, kind, created = item.get("id"), item.get("type"), parse_time(item.get("created"))
    if not isinstance(event_id, str) or not event_id or not isinstance(kind, str) or created is None:
        return None
    return EventRef(event_id, kind, created)


def parse_report(document: Mapping[str, Any]) -> ErrorReport:
    """The report a retrieved thin event holds; ``ReportFormatError`` names what is wrong."""
    ref = parse_event_ref(document)
    if ref is None:
        raise ReportFormatError("the event has no id, type or created time")
    if ref.type not in REPORT_TYPES:
        raise ReportFormatError(f"event {ref.id} is a {ref.type}, not an error report")
    data = _mapping(document.get("data"), f"event {ref.id}: data")
    reason = _mapping(data.get("reason"), f"event {ref.id}: data.reason")
    kinds = reason.get("error_types")
    if not isinstance(kinds, list):
        raise ReportFormatError(f"event {ref.id}: data.reason.error_types is not a list")
    error_types = tuple(_error_type(kind, ref.id) for kind in kinds)
    related = document.get("related_object")
    meter = related.get("id") if isinstance(related, Mapping) else None
    total = reason.get("error_count")
    return ErrorReport(
        id=ref.id,
        type=ref.type,
        created=ref.created,
        meter=meter if isinstance(meter, str) and meter else None,
        summary=_text(data.get("developer_message_summary")),
        validation_start=_text(data.get("validation_start")),
        validation_end=_text(data.get("validation_end")),
        error_count=_count(total) if total is not None else sum(k.error_count for k in error_types),
        error_types=error_types,
    )


def _error_type(kind: object, event_id: str) -> ErrorType:
    entry = _mapping(kind, f"event {event_id}: an error type")
    code = entry.get("code")
    if not isinstance(code, str) or not code:
        raise ReportFormatError(f"event {event_id}: an error type without a code")
    raw_samples = entry.get("sample_errors") or []
    if not isinstance(raw_samples, list):
        raise ReportFormatError(f"event {event_id}: {code}: sample_errors is not a list")
    samples = tuple(_sample(code, raw) for raw in raw_samples)
    count = entry.get("error_count")
    return ErrorType(code, _count(count) if count is not None else len(samples), samples)


def _sample(code: str, raw: object) -> Sample:
    """A sample as Stripe wrote it; missing parts become "" (such a sample cannot be mapped, and says so)."""
    entry = raw if isinstance(raw, Mapping) else {}
    request = entry.get("request")
    request = request if isinstance(request, Mapping) else {}
    return Sample(
        code=code,
        message=_text(entry.get("error_message"))[:MAX_MESSAGE],
        request_id=_text(request.get("id")),
        idempotency_key=_text(request.get("idempotency_key")),
    )


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ReportFormatError(f"{what} is not an object")
    return value


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReportFormatError(f"error_count {value!r} is not a count")
    return value


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
