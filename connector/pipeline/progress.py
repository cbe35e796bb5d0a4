"""What the run loop reports: counters, the periodic progress line, lag, and the snapshot telemetry pulls."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from connector.pipeline.offsets import OffsetTracker
from connector.pipeline.sender_thread import BatchSender
from connector.runtime.snapshot import PartitionSnapshot, SessionSnapshot, Snapshot

log = logging.getLogger("kafka_stripe.pipeline")

PROGRESS_INTERVAL_S = 10.0
VIEW_INTERVAL_S = 1.0  # how often the consumer thread refreshes the partition figures telemetry reads


@dataclass
class Progress:
    """Counters for the periodic progress line."""

    consumed: int = 0
    delivered: int = 0
    dead_lettered: int = 0


class Reporter:
    """The progress line and the partition figures; owned by the consumer thread except ``snapshot``."""

    def __init__(self, tracker: OffsetTracker, progress: Progress) -> None:
        self._tracker = tracker
        self._progress = progress
        self._partition_view: tuple[PartitionSnapshot, ...] = ()
        self._buffered = 0
        self._last_consumed = 0
        self._last_line = time.monotonic()

    def refresh(self, consumer: Any) -> None:
        """Committed offsets and log ends of owned partitions, for telemetry (consumer thread)."""
        view = []
        for t in self._tracker:
            view.append(
                PartitionSnapshot(t.topic, t.partition, t.committed, _high(consumer, t.topic, t.partition))
            )
        self._partition_view = tuple(view)
        self._buffered = self._tracker.pending

    def snapshot(self, sender: BatchSender | None) -> Snapshot:
        """Gauges for a scrape or probe; runs on the telemetry thread, so it only reads."""
        # Partition figures come from the consumer thread (refresh): confluent-kafka blocks calls from
        # other threads while that thread sits in consume().
        session = None
        stats = None
        if sender is not None:
            stats = sender.stats()
            current = getattr(getattr(sender, "sessions", None), "session", None)
            if current is not None:
                session = SessionSnapshot(current.id, current.expires_at)
        per_context = getattr(sender, "context_stats", None)
        contexts = per_context() if per_context is not None else None
        return Snapshot(self._partition_view, stats, session, buffered=self._buffered, contexts=contexts)

    def lag(self, consumer: Any) -> int | None:
        """Records behind the log end over owned partitions (librdkafka's cached watermarks)."""
        total = 0
        known = False
        for offsets in self._tracker:
            position = offsets.committable()
            if position is None:
                continue
            high = _high(consumer, offsets.topic, offsets.partition)
            if high is not None:
                total += max(high - position, 0)
                known = True
        return total if known else None

    def log_line(self, consumer: Any, in_flight: int, paused: bool) -> None:
        p = self._progress
        now = time.monotonic()
        rate = (p.consumed - self._last_consumed) / max(now - self._last_line, 1e-9)
        self._last_consumed, self._last_line = p.consumed, now
        log.info(
            "progress: consumed %d (%.0f records/s), delivered %d, dead-lettered %d, in flight %d, "
            "buffered %d, lag %s%s",
            p.consumed,
            rate,
            p.delivered,
            p.dead_lettered,
            in_flight,
            self._tracker.pending,
            self.lag(consumer),
            ", paused" if paused else "",
        )


def _high(consumer: Any, topic: str, partition: int) -> int | None:
    """The partition's cached high watermark, or None when unknown."""
    try:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
    except KafkaException:
        return None
    return high if high >= 0 else None
