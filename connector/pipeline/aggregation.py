"""Exact pre-aggregation, the pure core: records of one partition are summed per customer, event-time window
and payload into aggregates, segment by segment; a segment's boundaries are fixed before it is sent.

The invariant (README, "Pre-aggregation"): **an aggregate's identifier is a function of its segment's offset
range and its key, and a segment's range is written to the ledger before any of its aggregates is sent.**
A segment is a contiguous offset range ``[start, end)`` of one partition. When it closes, its range is
appended to the partition's *fixed segments* (``connector.kafka.delivery_ledger`` stores them) and only
then are its aggregates handed to the sender; the partition's commit never moves into a segment before all
of its aggregates were accepted. So after a crash or rebalance, the records from the committed offset on are
first cut along the fixed ranges again: the same records, mapped the same way, give the same aggregates
with the same identifiers, which Stripe deduplicates (the delivery ledger after 24 hours). Only past the
last fixed range are new segments formed.

For a meter with an ``event_time_window`` (Stripe keeps the latest event per customer and window) the
aggregates are keyed by the meter's window, and each is sent as the customer's running total for it
(``connector.pipeline.window_totals``): the totals after a segment are fixed with its range, so a replay
starts from the totals its first fixed range began with.

Nothing here knows Kafka, HTTP or the clock: the caller passes offsets, event times and ``now``.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, NamedTuple

from connector.pipeline.window_totals import Snapshot, Total, WindowTotals, total_text

# What records of one aggregate share: the customer, the window's start (unix seconds) and the payload
# without the value (every other payload key is part of the key: values that differ never merge).
AggregateKey = tuple[str, int, tuple[tuple[str, str], ...]]


class Aggregate:
    """The sum (or the latest value) of one key's records in one segment, and the offsets it covers.

    Offsets, not messages: a segment may hold a minute of a busy partition, and eight bytes a record
    keep that cheap. If Stripe refuses the aggregate, one dead letter names its records by range."""

    __slots__ = ("count", "key", "last_ms", "last_value", "offsets", "running", "segment", "total")

    def __init__(self, key: AggregateKey, segment: Segment) -> None:
        self.key = key
        self.segment = segment
        self.total: Total = 0
        # Window-total meters: the running (total, latest time, latest value) sent for this aggregate.
        self.running: tuple[Total, int, str] | None = None
        self.count = 0
        self.last_ms = -1
        self.last_value = "0"
        self.offsets = array("q")

    def add(self, value: str, millis: int, offset: int) -> None:
        self.total += int(value) if "." not in value else Decimal(value)
        self.count += 1
        if millis >= self.last_ms:  # ties: the later offset wins, as records arrive in offset order
            self.last_ms, self.last_value = millis, value
        self.offsets.append(offset)

    def offset(self) -> int:
        """Where the request key says the event came from: its segment's first offset."""
        return self.segment.start


class Fixed(NamedTuple):
    """A range a run fixed before sending its aggregates, with the window totals after it (if any)."""

    start: int
    end: int
    snapshot: Snapshot | None = None


class Segment:
    """An offset range of one partition and the aggregates of its records."""

    __slots__ = (
        "aggregates",
        "end",
        "finished",
        "fixed_end",
        "latest_window_ms",
        "open_windows_end",
        "opened_at",
        "out",
        "records",
        "settled",
        "snapshot",
        "start",
    )

    def __init__(self, start: int, opened_at: float, fixed_end: int | None) -> None:
        self.start = start
        self.end: int | None = None  # set when closed: one past its last record
        self.fixed_end = fixed_end  # the end a previous run fixed (a replay must cut exactly there)
        self.opened_at = opened_at
        self.aggregates: dict[AggregateKey, Aggregate] = {}
        self.records = 0  # records in its aggregates
        self.open_windows_end: int | None = None  # the earliest end (ms) among its windows
        self.latest_window_ms = -1  # the latest start (ms) among its windows
        self.out = 0  # aggregates handed to the sender and not yet answered
        self.settled = False  # every aggregate answered (or none to send)
        self.snapshot: Snapshot | None = None  # window totals after it (window-total meters)
        # Answered aggregates and Stripe's refusal (None: accepted). Their records are marked done only
        # when the whole segment is answered, so a commit never lands inside a segment.
        self.finished: list[tuple[Aggregate, Any]] = []

    def add(
        self, key: AggregateKey, value: str, millis: int, offset: int, window_start_ms: int, end: int
    ) -> None:
        """Add a record to its aggregate; ``window_start_ms``/``end``: the closing window it lies in."""
        aggregate = self.aggregates.get(key)
        if aggregate is None:
            aggregate = self.aggregates[key] = Aggregate(key, self)
        aggregate.add(value, millis, offset)
        self.records += 1
        if self.open_windows_end is None or end < self.open_windows_end:
            self.open_windows_end = end
        if window_start_ms > self.latest_window_ms:
            self.latest_window_ms = window_start_ms


class Flush(NamedTuple):
    """A segment closed, and why: ``window`` closed in event time, ``age``, a ``fixed`` end, ``revoke``."""

    segment: Segment
    reason: str


class PartitionAggregator:
    """One partition's open segment and the ranges a previous run fixed (``plan``). Segments close on
    windows of ``window_s``; aggregates are keyed by that window, or with ``totals_window_s`` (a
    window-total meter) by the meter's window, and carry running totals."""

    def __init__(
        self,
        window_s: int,
        grace_s: float,
        max_age_s: float,
        plan: list[tuple[int, int]] | list[Fixed],
        totals_window_s: int | None = None,
    ) -> None:
        self.window_ms = window_s * 1000
        self.grace_ms = int(grace_s * 1000)
        self.max_age_s = max_age_s
        fixed = sorted(Fixed(*r) for r in plan)
        self.plan = list(fixed)  # fixed [start, end) ranges not yet replayed, in order
        self._bases = [(f.end, f.snapshot) for f in fixed]  # the totals after each fixed range
        self.totals = WindowTotals(totals_window_s) if totals_window_s else None
        self.key_window_s = totals_window_s or window_s
        self.open: Segment | None = None
        self.watermark_ms = -1  # the latest event time seen in this partition
        self.late = 0  # records for a window that an earlier segment of this run already flushed
        self._flushed_window_ms = -1  # the latest closing window start any closed segment held

    def add(
        self,
        offset: int,
        customer: str,
        value: str,
        millis: int,
        payload: Mapping[str, str],
        now: float,
    ) -> list[Flush]:
        """Take one mapped record (its payload without customer and value); returns the segments it
        closed (a fixed end reached before it). Raises ``RecordRejected`` (before anything changes) for
        a window whose total is no longer kept."""
        window = millis // 1000 // self.key_window_s * self.key_window_s
        rest = tuple(sorted(payload.items())) if payload else ()
        totals = self.totals
        if totals is not None:
            if not totals.loaded:
                self.watermark_ms = totals.load(self._base(offset))
            totals.check(customer, window, self.watermark_ms)
            rest = ()  # Stripe keeps one event per customer and window: other payload keys cannot split it
        closed = self._before(offset, now)
        segment = self.open
        if segment is not None and segment.fixed_end is None:
            ends = segment.open_windows_end
            if ends is not None and ends + self.grace_ms <= millis:
                # This record moves event time past a window's close: cut before it, so the segment
                # holds no record of a later window that a cut after it would have swept in.
                closed.append(self.close(offset, "window"))
                segment = None
        if segment is None:
            segment = self.open = self._new_segment(offset, now)
        window_ms = millis // self.window_ms * self.window_ms
        if window_ms <= self._flushed_window_ms:
            self.late += 1
        segment.add((customer, window, rest), value, millis, offset, window_ms, window_ms + self.window_ms)
        if millis > self.watermark_ms:
            self.watermark_ms = millis
        return closed

    def _base(self, offset: int) -> Snapshot | None:
        """The totals after the last fixed range ending at or before ``offset`` (the first record this
        run adds): every range below it was replayed or skipped as delivered, none of it is added again."""
        before = [snapshot for end, snapshot in self._bases if end <= offset]
        return before[-1] if before else None

    def skip(self, offset: int, now: float) -> list[Flush]:
        """A record that joins no aggregate (dead-lettered, already delivered): it still belongs to the
        segment whose range holds it, so the segment's ends stay where a replay will find them."""
        closed = self._before(offset, now)
        if self.open is None:
            self.open = self._new_segment(offset, now)
        return closed

    def _before(self, offset: int, now: float) -> list[Flush]:
        """Close the open segment if ``offset`` lies past its fixed end (or, not fixed, reaches a fixed
        range: its records never belong to a segment a run before fixed); drop plan ranges now behind."""
        closed = []
        segment = self.open
        if segment is not None:
            if segment.fixed_end is not None and offset >= segment.fixed_end:
                closed.append(self.close(segment.fixed_end, "fixed"))
            elif segment.fixed_end is None and self.plan and segment.start < self.plan[0].start <= offset:
                closed.append(self.close(self.plan[0].start, "fixed"))
        while self.plan and self.plan[0][1] <= offset:
            self.plan.pop(0)
        return closed

    def _new_segment(self, offset: int, now: float) -> Segment:
        """A segment from ``offset``: inside a fixed range it is that range exactly (its first record may
        be gone, e.g. a transaction marker, yet the identifiers must name the range as first fixed)."""
        for start, end, _snapshot in self.plan:
            if start <= offset < end:
                return Segment(start, now, end)
        return Segment(offset, now, None)

    def due(self, now: float, next_offset: int) -> Flush | None:
        """The open segment if it must close now: its earliest window closed in event time (plus the
        grace), or it is older than the maximum age; a segment with a fixed end once the partition was
        read up to that end (``next_offset`` is one past the last record handed out)."""
        segment = self.open
        if segment is None:
            return None
        if segment.fixed_end is not None:  # a replayed range closes at its end, whatever the time says
            return self.close(segment.fixed_end, "fixed") if next_offset >= segment.fixed_end else None
        if not segment.aggregates:
            return None
        assert segment.open_windows_end is not None
        if segment.open_windows_end + self.grace_ms <= self.watermark_ms:
            return self.close(next_offset, "window")
        if now - segment.opened_at >= self.max_age_s:
            return self.close(next_offset, "age")
        return None

    def close_all(self, next_offset: int) -> Flush | None:
        """Close the open segment now (revoke, shutdown); a fixed one closes only at its fixed end."""
        segment = self.open
        if segment is None:
            return None
        if segment.fixed_end is not None and next_offset < segment.fixed_end:
            return None  # the rest of it is replayed by whoever reads this partition next
        return self.close(segment.fixed_end or next_offset, "revoke")

    def close(self, end: int, reason: str) -> Flush:
        """Close the open segment at ``end`` (one past its last record) for ``reason``."""
        segment = self.open
        assert segment is not None
        segment.end = end
        self.open = None
        self._flushed_window_ms = max(self._flushed_window_ms, segment.latest_window_ms)
        if self.totals is not None:
            self._advance_totals(segment)
        return Flush(segment, reason)

    def _advance_totals(self, segment: Segment) -> None:
        """Window-total meters: each aggregate carries its customer's running total for the window."""
        assert self.totals is not None
        aggregates = segment.aggregates.values()
        changes = {(a.key[0], a.key[1]): (a.total, a.last_ms, a.last_value) for a in aggregates}
        running = self.totals.advance(changes, self.watermark_ms)
        for aggregate in aggregates:
            aggregate.running = running[(aggregate.key[0], aggregate.key[1])]
        segment.snapshot = self.totals.snapshot(self.watermark_ms)


def aggregate_identifier(namespace: str, partition: int, start: int, end: int, key: AggregateKey) -> str:
    """``agg:{namespace}:{partition}:{start}-{end}:{digest of the key}``: at most 100 characters."""
    customer, window, rest = key
    text = "\0".join([customer, str(window), *(f"{k}={v}" for k, v in rest)])
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"agg:{namespace}:{partition}:{start}-{end}:{digest}"


def event_fields(
    aggregate: Aggregate, formula: str, customer_key: str, value_key: str
) -> tuple[Mapping[str, str], int]:
    """The payload and event time (ms) of an aggregate's event: the sum at its window's start, or for a
    ``last`` meter the latest value at its own time; for a window-total meter the running values."""
    customer, window, rest = aggregate.key
    payload = dict(rest)
    payload[customer_key] = customer
    running = aggregate.running
    total, last_ms, last_value = running or (aggregate.total, aggregate.last_ms, aggregate.last_value)
    if formula == "last":
        payload[value_key] = last_value
        return payload, last_ms
    payload[value_key] = total_text(total)
    return payload, window * 1000
