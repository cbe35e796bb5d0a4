"""Pre-aggregation on the consumer thread: a ``PartitionAggregator`` per partition epoch, each closed segment
fixed in the ledger (``IdentityPort.fix_segment``) before its events are batched, and its records marked
done only when Stripe answered every one of its aggregates (the invariant in ``pipeline.aggregation``).

A window-total meter's partition sends one segment at a time: Stripe keeps the latest event it *received*
per customer and window, so a running total may go out only once the one before it was accepted."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from typing import Any, NamedTuple, cast

from connector.config.settings import Settings, TopicSettings
from connector.errors import RecordRejected
from connector.mapping.timestamps import format_millis
from connector.pipeline.aggregation import (
    Aggregate,
    Fixed,
    Flush,
    PartitionAggregator,
    Segment,
    aggregate_identifier,
    event_fields,
)
from connector.pipeline.batching import Item
from connector.pipeline.identity import IdentityPort
from connector.pipeline.offsets import PartitionOffsets
from connector.records import KafkaRecord, MeterEvent


class AggregatedMeter(NamedTuple):
    """What an aggregated topic's meter decides: ``sum`` or ``last``, and its ``event_time_window`` in
    seconds (None: every event counts; else the running window totals are sent)."""

    formula: str = "sum"
    window_s: int | None = None


class Answered(NamedTuple):
    """A segment Stripe answered in full: each aggregate with its refusal (None: accepted)."""

    offsets: PartitionOffsets
    results: list[tuple[Aggregate, RecordRejected | None]]


class Aggregating:
    """Owns the aggregators of the aggregated topics' partitions (see the module docstring)."""

    def __init__(
        self, settings: Settings, identity: IdentityPort, meters: Mapping[str, AggregatedMeter]
    ) -> None:
        self.topics: dict[str, TopicSettings] = {t.name: t for t in settings.topics if t.aggregate_s}
        self._identity = identity
        self._meters = meters  # topic -> its meter's formula and window
        self._aggregators: dict[int, tuple[PartitionOffsets, PartitionAggregator]] = {}
        # Window-total partitions: closed segments waiting for the one before to be answered.
        self._queues: dict[int, deque[Flush]] = {}
        self._current: dict[int, Flush] = {}
        # Records of closed segments not yet answered in full (queued or sent), per partition epoch.
        self._unanswered: dict[int, int] = {}
        self.max_records = settings.pipeline.aggregate_max_records
        self._stamps: dict[int, str] = {}  # unix seconds -> RFC 3339 prefix
        self._late_released = 0  # late records counted by aggregators since dropped

    @property
    def active(self) -> bool:
        return bool(self.topics)

    @property
    def held(self) -> int:
        """Records in segments, open or not yet answered, up to ``CONNECTOR_AGGREGATE_MAX_RECORDS``: they
        do not count toward the read buffer (a segment may be open for a whole window). Beyond that
        bound they do, so a Stripe too slow for the closed segments stops the reading."""
        return min(self._open_records() + sum(self._unanswered.values()), self.max_records)

    def _meter(self, topic: str) -> AggregatedMeter:
        """The topic's meter as read at start (a topic without an active meter sums)."""
        return self._meters.get(topic, AggregatedMeter())

    def _open_records(self) -> int:
        return sum(a.open.records for _o, a in self._aggregators.values() if a.open is not None)

    def run(self, offsets: PartitionOffsets) -> PartitionAggregator | None:
        """The aggregator of a partition epoch of an aggregated topic (made, with its plan, once)."""
        topic = self.topics.get(offsets.topic)
        if topic is None:
            return None
        found = self._aggregators.get(id(offsets))
        if found is None:
            assert topic.aggregate_s is not None
            aggregator = PartitionAggregator(
                topic.aggregate_s,
                topic.aggregate_grace_s,
                topic.aggregate_max_age_s,
                self._identity.plan(offsets),
                self._meter(topic.name).window_s,
            )
            found = self._aggregators[id(offsets)] = (offsets, aggregator)
        return found[1]

    def admit(self, offsets: PartitionOffsets, closed: list[Flush]) -> list[Flush]:
        """The closed segments that may be sent now: all of them, but for a window-total meter's partition
        one at a time, in order, each once the one before was answered (the rest wait here)."""
        unanswered = self._unanswered.get(id(offsets), 0) + sum(f.segment.records for f in closed)
        self._unanswered[id(offsets)] = unanswered
        if not self._meter(offsets.topic).window_s:
            return closed
        self._queues.setdefault(id(offsets), deque()).extend(closed)
        return self._release(offsets)

    def released(self) -> list[tuple[PartitionOffsets, Flush]]:
        """Waiting segments whose turn came (the one before them was answered)."""
        ready = []
        for key, queue in self._queues.items():
            if queue:
                offsets = self._aggregators[key][0]
                ready += [(offsets, flush) for flush in self._release(offsets)]
        return ready

    def _release(self, offsets: PartitionOffsets) -> list[Flush]:
        queue = self._queues[id(offsets)]
        current = self._current.get(id(offsets))
        ready = []
        while queue and (current is None or current.segment.settled):
            current = self._current[id(offsets)] = queue.popleft()
            current.segment.settled = not current.segment.aggregates
            ready.append(current)
        return ready

    def due(self, now: float) -> list[tuple[PartitionOffsets, Flush]]:
        """Segments to close now (event time, age), and the largest ones while too many records are held."""
        closing = []
        for offsets, aggregator in list(self._aggregators.values()):
            flush = aggregator.due(now, offsets.next_offset)
            if flush is not None:
                closing.append((offsets, flush))
        while self._open_records() - sum(f.segment.records for _o, f in closing) > self.max_records:
            largest = self._largest_open()
            if largest is None:
                break
            offsets, aggregator = largest
            closing.append((offsets, aggregator.close(offsets.next_offset, "size")))
        return closing

    def close_all(self) -> list[tuple[PartitionOffsets, Flush]]:
        """Close every open segment (revoke, shutdown); fixed ones wait for their end (replayed later)."""
        closing = []
        for offsets, aggregator in list(self._aggregators.values()):
            flush = aggregator.close_all(offsets.next_offset)
            if flush is not None:
                closing.append((offsets, flush))
        return closing

    def items(
        self, offsets: PartitionOffsets, flush: Flush, namespace: str, context: str | None
    ) -> list[Item]:
        """The events of a closed segment, after its range was fixed in the ledger (unless a run before
        fixed it already); the items carry the aggregate where a record's message would be."""
        segment = flush.segment
        if not segment.aggregates:
            self._settle(offsets, segment)
            return []
        assert segment.end is not None
        if segment.fixed_end is None:
            self._identity.fix_segment(offsets, Fixed(segment.start, segment.end, segment.snapshot))
        topic = self.topics[offsets.topic]
        formula = self._meter(topic.name).formula
        items = []
        for key, aggregate in segment.aggregates.items():
            payload, millis = event_fields(aggregate, formula, topic.customer_key, topic.value_key)
            identifier = aggregate_identifier(namespace, offsets.partition, segment.start, segment.end, key)
            stamp = format_millis(millis, self._stamps, "window")
            event = MeterEvent(identifier, topic.event_name, stamp, payload, context)
            # The aggregate stands where a record's message would: the loop tells them apart by type.
            items.append(Item(event, cast(Any, aggregate), offsets))
        segment.out = len(items)
        return items

    def answered(
        self, aggregate: Aggregate, offsets: PartitionOffsets, error: RecordRejected | None
    ) -> Answered | None:
        """Stripe answered one aggregate; its segment's results once every aggregate of it is answered."""
        segment = aggregate.segment
        segment.finished.append((aggregate, error))
        segment.out -= 1
        if segment.out > 0:
            return None
        self._settle(offsets, segment)
        return Answered(offsets, segment.finished)

    def forget_released(self) -> None:
        """Drop the aggregators of revoked or lost partitions (their records go to the next owner)."""
        for key, (offsets, _aggregator) in list(self._aggregators.items()):
            if offsets.released:
                self._late_released += self._aggregators[key][1].late
                del self._aggregators[key]
                self._queues.pop(key, None)
                self._unanswered.pop(key, None)
                self._current.pop(key, None)

    def _settle(self, offsets: PartitionOffsets, segment: Segment) -> None:
        """A closed segment answered in full (or with nothing to send)."""
        segment.settled = True
        if id(offsets) in self._unanswered:
            self._unanswered[id(offsets)] -= segment.records

    def open_aggregates(self) -> int:
        return sum(len(a.open.aggregates) for _o, a in self._aggregators.values() if a.open is not None)

    def late(self) -> int:
        """Records for a window this member had already flushed, since it started."""
        return self._late_released + sum(a.late for _o, a in self._aggregators.values())

    def _largest_open(self) -> tuple[PartitionOffsets, PartitionAggregator] | None:
        candidates = [
            (a.open.records, o, a)
            for o, a in self._aggregators.values()
            if a.open is not None and a.open.fixed_end is None and a.open.aggregates
        ]
        if not candidates:
            return None
        _records, offsets, aggregator = max(candidates, key=lambda c: c[0])
        return offsets, aggregator


def dead_letter_of(aggregate: Aggregate, offsets: PartitionOffsets) -> KafkaRecord:
    """The one dead letter of an aggregate Stripe refused: its key, value and the ranges of its records
    (the records themselves stay in Kafka: ``reconcile`` or a re-read names them)."""
    customer, window, rest = aggregate.key
    document: dict[str, Any] = {
        "aggregate": {"customer": customer, "window_start": window, "payload": dict(rest)},
        "records": aggregate.count,
        "offsets": _ranges(list(aggregate.offsets)),
    }
    return KafkaRecord(
        offsets.topic,
        offsets.partition,
        aggregate.offsets[0],
        customer.encode(),
        json.dumps(document, separators=(",", ":")).encode(),
        window * 1000,
    )


def _ranges(offsets: list[int]) -> str:
    """``3-7,9,12-13``: the offsets as inclusive ranges."""
    parts: list[str] = []
    start = previous = offsets[0]
    for offset in [*offsets[1:], None]:
        if offset is not None and offset == previous + 1:
            previous = offset
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if offset is not None:
            start = previous = offset
    return ",".join(parts)
