"""Thin events (``v2.core.event``) reporting asynchronous meter event errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from connector.devtools.emulator.meter import Meter
from connector.devtools.emulator.timestamps import format_rfc3339

NO_METER_FOUND = "v1.billing.meter.no_meter_found"
ERROR_REPORT_TRIGGERED = "v1.billing.meter.error_report_triggered"
SAMPLE_ERRORS_PER_CODE = 20  # Stripe sends "sample" errors; the emulator keeps each code's first 20


@dataclass(slots=True)
class ThinEvent:
    id: str
    type: str
    created: float
    livemode: bool
    data: dict[str, Any]
    meter_id: str | None = None
    context: str | None = None  # the connected account's context; None for the platform's events

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "v2.core.event",
            "type": self.type,
            "created": format_rfc3339(self.created),
            "livemode": self.livemode,
            "context": self.context,
            "reason": None,
            "data": self.data,
        }
        if self.meter_id is not None:
            body["related_object"] = {
                "id": self.meter_id,
                "type": "billing.meter",
                "url": f"/v1/billing/meters/{self.meter_id}",
            }
        return body


class Origin(Protocol):
    """The request that carried an event: its ``Request-Id`` and ``Idempotency-Key``."""

    def request(self) -> tuple[str, str]: ...


@dataclass(slots=True)
class ErrorReport:
    """The errors one validation pass found for one meter (or for no meter): one thin event."""

    meter: Meter | None
    start: float
    end: float
    count: int = 0
    codes: dict[str, tuple[list[int], list[dict[str, Any]]]] = field(default_factory=dict)

    def add(self, code: str, message: str, origin: Origin, received_at: float) -> None:
        self.count += 1
        self.start = min(self.start, received_at)
        self.end = max(self.end, received_at)
        entry = self.codes.get(code)
        if entry is None:
            entry = ([0], [])
            self.codes[code] = entry
        entry[0][0] += 1
        if len(entry[1]) < SAMPLE_ERRORS_PER_CODE:
            # Stripe names the request that carried the event, not the event's identifier.
            request_id, idempotency_key = origin.request()
            entry[1].append(
                {"error_message": message, "request": {"id": request_id, "idempotency_key": idempotency_key}}
            )

    def data(self) -> dict[str, Any]:
        noun = "is 1 invalid event" if self.count == 1 else f"are {self.count} invalid events"
        return {
            "developer_message_summary": f"There {noun}",
            "reason": {
                "error_count": self.count,
                "error_types": [
                    {"code": code, "error_count": counter[0], "sample_errors": samples}
                    for code, (counter, samples) in self.codes.items()
                ],
            },
            "validation_start": format_rfc3339(self.start),
            "validation_end": format_rfc3339(self.end),
        }

    def thin_event(
        self, event_id: str, created: float, livemode: bool, context: str | None = None
    ) -> ThinEvent:
        return ThinEvent(
            id=event_id,
            type=NO_METER_FOUND if self.meter is None else ERROR_REPORT_TRIGGERED,
            created=created,
            livemode=livemode,
            data=self.data(),
            meter_id=None if self.meter is None else self.meter.id,
            context=context,
        )
