"""Pausing the partitions of topics whose meter does not take their events, and resuming each exactly at
its first record not processed (the consumer thread's; ``connector.pipeline.admission`` decides)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from connector.errors import FatalError
from connector.pipeline.flow import FlowControl
from connector.pipeline.offsets import OffsetTracker, PartitionOffsets


class TopicHolds:
    """Held topics' partitions stay paused; records consume() returned for them anyway are not tracked
    (so nothing commits past them) and are read again from the first of them on resume."""

    def __init__(self, tracker: OffsetTracker, flow: FlowControl) -> None:
        self._tracker = tracker
        self._flow = flow
        self._consumer: Any = None
        # The epoch and first offset consumed but not processed, per held partition.
        self._rewind: dict[tuple[str, int], tuple[PartitionOffsets, int]] = {}

    def attach(self, consumer: Any) -> None:
        self._consumer = consumer

    def hold(self, offsets: PartitionOffsets, offset: int) -> None:
        """A record of a held topic came back from consume(): leave it for later."""
        key = (offsets.topic, offsets.partition)
        if key not in self._rewind:
            self._rewind[key] = (offsets, offset)
            self._consumer.pause([TopicPartition(offsets.topic, offsets.partition)])

    def forget_released(self) -> None:
        """After a rebalance: the next owner of a released partition reads from its commit."""
        self._rewind = {key: held for key, held in self._rewind.items() if not held[0].released}

    def pause(self, topics: Sequence[str]) -> None:
        self._flow.held_topics.update(topics)
        held = [tp for tp in self._consumer.assignment() if tp.topic in topics]
        if held:
            self._consumer.pause(held)

    def resume(self, topics: Sequence[str]) -> None:
        """Resume where each partition's first unprocessed record is. The seek must succeed, or records
        after it would commit past the ones never processed: stopping is then the safe way out."""
        self._flow.held_topics.difference_update(topics)
        parts = [tp for tp in self._consumer.assignment() if tp.topic in topics]
        if parts and not self._flow.paused:
            self._consumer.resume(parts)
        for key in [key for key in self._rewind if key[0] in topics]:
            epoch, offset = self._rewind.pop(key)
            if self._tracker.get(*key) is not epoch:
                continue
            try:
                self._consumer.seek(TopicPartition(key[0], key[1], offset))
            except KafkaException as exc:
                raise FatalError(f"cannot resume {key[0]}[{key[1]}] at offset {offset}: {exc}") from exc
