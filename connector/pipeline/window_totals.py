"""Running window totals for meters with an ``event_time_window`` (pure): Stripe keeps only the latest event
it received per customer and window, so every aggregate of such a meter is sent as the customer's running
total for the window, and the totals as of each fixed segment's end are stored with its range (the ledger),
so that a replay starts from exactly the totals the run before had.

Totals are kept while the partition's event time (its watermark) is within one window after the window's
end; a record for an older window cannot be added to a total any more and is refused
(``window_total_expired``). The watermark is part of the stored totals, so that refusal is the same on
every replay.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from connector.errors import RecordRejected

WINDOW_SECONDS = {"hour": 3600, "day": 86400}

Total = int | Decimal
# (customer, the window's start in unix seconds) -> (running total, latest event time ms, its value)
Totals = dict[tuple[str, int], tuple[Total, int, str]]


class Snapshot(NamedTuple):
    """The running totals and the watermark as of a segment's end."""

    watermark_ms: int
    totals: Totals

    def encode(self) -> dict[str, Any]:
        """JSON-able form, for the ledger topic."""
        rows = [[c, w, total_text(t), ms, v] for (c, w), (t, ms, v) in sorted(self.totals.items())]
        return {"watermark": self.watermark_ms, "totals": rows}

    @staticmethod
    def decode(document: Mapping[str, Any]) -> Snapshot:
        """The inverse of ``encode`` (raises ``ValueError`` on anything else)."""
        try:
            totals: Totals = {
                (str(c), int(w)): (_number(str(t)), int(ms), str(v)) for c, w, t, ms, v in document["totals"]
            }
            return Snapshot(int(document["watermark"]), totals)
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            raise ValueError(f"unreadable window totals in the ledger: {exc}") from None


class WindowTotals:
    """The running totals of one partition's customers, per window of ``window_s`` seconds."""

    def __init__(self, window_s: int) -> None:
        self.window_s = window_s
        self.totals: Totals = {}
        self.loaded = False

    def load(self, snapshot: Snapshot | None) -> int:
        """Start from ``snapshot`` (None: nothing sent before); returns its watermark (-1 if none)."""
        self.loaded = True
        if snapshot is None:
            return -1
        self.totals = dict(snapshot.totals)
        return snapshot.watermark_ms

    def check(self, customer: str, window: int, watermark_ms: int) -> None:
        """Refuse a record whose window's total is no longer kept."""
        if (window + 2 * self.window_s) * 1000 <= watermark_ms:
            raise RecordRejected(
                f"the record's window (from {window}) ended more than one window before the latest event "
                f"time read in its partition: its total for customer {customer!r} is no longer kept, and "
                "a total of the late records alone would replace the window's total at Stripe",
                code="window_total_expired",
            )

    def advance(self, changes: Mapping[tuple[str, int], tuple[Total, int, str]], watermark_ms: int) -> Totals:
        """Add a closed segment's sums (and latest values) per customer and window; returns the running
        values of the changed keys (what the segment's events carry). Windows too old to be added to
        any more are dropped afterwards."""
        totals = self.totals
        running: Totals = {}
        for key, (total, last_ms, last_value) in changes.items():
            before = totals.get(key)
            if before is not None:
                so_far, at, value = before
                if last_ms >= at:
                    at, value = last_ms, last_value
                total, last_ms, last_value = so_far + total, at, value
            totals[key] = running[key] = (total, last_ms, last_value)
        horizon = watermark_ms // 1000 - 2 * self.window_s
        for key in [k for k in totals if k[1] <= horizon]:
            del totals[key]
        return running

    def snapshot(self, watermark_ms: int) -> Snapshot:
        return Snapshot(watermark_ms, dict(self.totals))


def total_text(total: Total) -> str:
    """A whole number as is, a decimal without trailing zeros."""
    if isinstance(total, int):
        return str(total)
    text = format(total.normalize(), "f")
    return text if "." not in text else text.rstrip("0").rstrip(".")


def _number(text: str) -> Total:
    return int(text) if "." not in text else Decimal(text)
