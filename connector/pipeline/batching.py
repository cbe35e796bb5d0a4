"""Grouping meter events into stream requests of at most 100, closed by count or by age (linger)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from connector.pipeline.offsets import PartitionOffsets
from connector.records import ConsumedMessage, MeterEvent
from connector.stripe.request_keys import Origin

MAX_EVENTS_PER_REQUEST = 100  # Stripe's limit for one meter_event_stream request
# Partitions one request may touch: the idempotency key names one offset range per partition, and four
# ranges fit Stripe's 255 characters whatever the offsets (``connector.stripe.request_keys``). Records
# arrive in runs of one partition, so the cap rarely closes a batch early.
MAX_PARTITIONS_PER_REQUEST = 4


class Item(NamedTuple):
    """One event on its way to Stripe, with what is needed to mark it done or dead-letter it."""

    event: MeterEvent
    # The consumed message as the client returned it: its offset marks the record done, its bytes and
    # coordinates go to the dead-letter topic if Stripe refuses the event.
    message: ConsumedMessage
    offsets: PartitionOffsets  # the partition epoch the record was consumed under


class Batch:
    """Events sent in one request; ``items[i]`` is the source of ``events[i]``. All share one context."""

    __slots__ = ("context", "created_at", "items", "partitions")

    def __init__(self, items: list[Item], created_at: float, context: str | None = None) -> None:
        self.items = items
        self.created_at = created_at
        self.context = context  # the Stripe context every event of the batch is sent in
        # The distinct partition epochs the batch touches, in first-seen order; worked out once, as the
        # pipeline counts the batch out to them and back in.
        self.partitions: list[PartitionOffsets] = list({id(i.offsets): i.offsets for i in items}.values())

    @property
    def events(self) -> Sequence[MeterEvent]:
        return [item.event for item in self.items]

    def origins(self, namespace_of: Callable[[str], str]) -> list[Origin]:
        """Where each event's record came from, for the request's idempotency key."""
        namespaces = {p.topic: namespace_of(p.topic) for p in self.partitions}
        return [
            Origin(namespaces[item.offsets.topic], item.offsets.partition, item.message.offset())
            for item in self.items
        ]

    def __len__(self) -> int:
        return len(self.items)


class _Open:
    """One context's open batch."""

    __slots__ = ("context", "items", "opened_at", "partitions")

    def __init__(self, context: str | None, now: float) -> None:
        self.context = context
        self.items: list[Item] = []
        self.opened_at = now
        self.partitions: list[PartitionOffsets] = []  # its partition epochs, the latest last


class Batcher:
    """Holds one open batch per Stripe context (a request speaks for one account); pure: the caller
    passes the time in."""

    def __init__(self, max_events: int = MAX_EVENTS_PER_REQUEST, linger_s: float = 0.1) -> None:
        if not 1 <= max_events <= MAX_EVENTS_PER_REQUEST:
            raise ValueError(f"max_events must be 1..{MAX_EVENTS_PER_REQUEST}")
        self.max_events = max_events
        self.linger_s = linger_s
        self._open: dict[str | None, _Open] = {}
        # The open batch the last event joined: records come in runs of one context (nearly always the
        # platform's), so most events find their batch with one identity compare, no dict lookup.
        self._current: _Open | None = None

    def add(self, item: Item, now: float) -> Batch | None:
        """Add an event; returns the batch this event filled, or the one it could not join."""
        context = item.event.context
        current = self._current
        if current is None or current.context is not context:
            current = self._open.get(context)
            if current is None:
                current = self._open[context] = _Open(context, now)
            self._current = current
        closed = None
        offsets = item.offsets
        partitions = current.partitions
        if not partitions or partitions[-1] is not offsets:
            if not any(p is offsets for p in partitions):
                if len(partitions) >= MAX_PARTITIONS_PER_REQUEST:
                    closed = self._close(context)
                    current = self._current = self._open[context] = _Open(context, now)
                    partitions = current.partitions
                partitions.append(offsets)
            else:
                partitions.remove(offsets)  # keep the most recent last: the check above stays one compare
                partitions.append(offsets)
        current.items.append(item)
        if len(current.items) >= self.max_events:
            # Not after a batch was just closed for its partitions: one item fills a batch only when
            # max_events is 1, and then no batch ever holds two partitions.
            return self._close(context)
        return closed

    def due(self, now: float) -> Batch | None:
        """An open batch that has lingered long enough (the loop asks again until there is none)."""
        for context, current in self._open.items():
            if now - current.opened_at >= self.linger_s:
                return self._close(context)
        return None

    def deadline(self) -> float | None:
        """When the first open batch must close, or None if there is none."""
        if not self._open:
            return None
        return min(current.opened_at for current in self._open.values()) + self.linger_s

    def flush(self) -> Batch | None:
        """Close one open batch now (shutdown, revoke, linger); call until it returns None."""
        for context in self._open:
            return self._close(context)
        return None

    def _close(self, context: str | None) -> Batch:
        current = self._open.pop(context)
        if current is self._current:
            self._current = None
        return Batch(current.items, current.opened_at, context)

    def __len__(self) -> int:
        return sum(len(current.items) for current in self._open.values())
