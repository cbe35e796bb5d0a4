"""The ``billing.meter`` object and the constants of its aggregation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FORMULAS = ("sum", "count", "last")
WINDOW_SECONDS = {"hour": 3600, "day": 86_400}


@dataclass(slots=True)
class Meter:
    id: str
    display_name: str
    event_name: str
    formula: str
    customer_key: str
    value_key: str
    event_time_window: str | None
    livemode: bool
    created: int
    updated: int
    status: str = "active"
    deactivated_at: int | None = None
    # Every valid event adds to its minute: no ``last`` formula, no pre-aggregation window. The
    # ledger's inlined fast path handles only these.
    plain: bool = field(init=False)

    def __post_init__(self) -> None:
        self.plain = self.formula != "last" and self.event_time_window is None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "billing.meter",
            "created": self.created,
            "customer_mapping": {"event_payload_key": self.customer_key, "type": "by_id"},
            "default_aggregation": {"formula": self.formula},
            "display_name": self.display_name,
            "event_name": self.event_name,
            "event_time_window": self.event_time_window,
            "livemode": self.livemode,
            "status": self.status,
            "status_transitions": {"deactivated_at": self.deactivated_at},
            "updated": self.updated,
            "value_settings": {"event_payload_key": self.value_key},
        }
