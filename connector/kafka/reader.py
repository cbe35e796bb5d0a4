"""Reading assigned partitions of a topic to their end, and the metadata that needs (partitions,
watermarks): shared by ``reconcile`` and ``dlq replay``, which read with a consumer of ``clients``."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connector.errors import ConnectorError

IDLE_S = 2.0  # a partition at/after its high watermark is done after this long without a record
STALL_S = 30.0  # a partition that makes no progress at all for this long is given up (with a warning)

log = logging.getLogger("kafka_stripe.reader")


class ReaderError(ConnectorError):
    """A topic cannot be read: it does not exist, or Kafka does not answer (the commands exit 2)."""


@dataclass(slots=True)
class _Partition:
    high: int  # high watermark when reading started (too low on Tansu; see PartitionReader)
    position: int  # next offset to read, as far as we know
    last_progress: float
    done: bool = False


class PartitionReader:
    """Consume assigned partitions of one topic until each is read to its end, then stop.

    "The end" is the high watermark when reading starts, but that number cannot be trusted everywhere:
    the embedded test broker (Tansu) answers the base offset of the last produced batch + 1, short of the
    real end. So a partition is done when librdkafka reports end-of-partition (``enable.partition.eof``,
    which follows the fetch responses and is right on both), or, as a fallback, when its position is at
    or past the high watermark and no record arrived for ``idle_s``. A partition that makes no progress
    at all for ``stall_s`` is given up with a warning rather than waited for forever. Records arriving
    after the start are read too if they come before the end is seen: the tail of a busy topic is
    chased until the consumer catches up.

    The consumer must have ``enable.partition.eof=true``; done partitions are paused.
    """

    def __init__(
        self,
        consumer: Any,
        topic: str,
        starts: Mapping[int, int],
        highs: Mapping[int, int],
        lows: Mapping[int, int],
        *,
        idle_s: float = IDLE_S,
        stall_s: float = STALL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self.topic = topic
        self.idle_s = idle_s
        self.stall_s = stall_s
        self.clock = clock
        now = clock()
        self.partitions = {
            p: _Partition(highs[p], start if start >= 0 else lows[p], now) for p, start in starts.items()
        }
        self.warnings: list[str] = []
        self.read = 0

    def positions(self) -> dict[int, int]:
        """Next offset to read per partition: what a consumer group would commit after this read."""
        return {p: state.position for p, state in self.partitions.items()}

    def __iter__(self) -> Iterator[Any]:
        from confluent_kafka import KafkaError, KafkaException

        while not all(state.done for state in self.partitions.values()):
            messages = self.consumer.consume(500, 0.2)
            now = self.clock()
            for message in messages:
                error = message.error()
                state = self.partitions.get(message.partition())
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        if state is not None and not state.done:
                            state.position = max(state.position, message.offset())
                            self._finish(message.partition(), state)
                        continue
                    if error.fatal() or error.code() in (
                        KafkaError.UNKNOWN_TOPIC_OR_PART,
                        KafkaError._UNKNOWN_TOPIC,
                        KafkaError.TOPIC_AUTHORIZATION_FAILED,
                        KafkaError.GROUP_AUTHORIZATION_FAILED,
                    ):
                        raise KafkaException(error)
                    log.warning("consumer error: %s", error)
                    continue
                if state is None or state.done:
                    continue
                state.position = message.offset() + 1
                state.last_progress = now
                self.read += 1
                yield message
            for partition, state in self.partitions.items():
                if state.done:
                    continue
                quiet = now - state.last_progress
                if state.position >= state.high and quiet >= self.idle_s:
                    self._finish(partition, state)
                elif quiet >= self.stall_s:
                    self.warnings.append(
                        f"{self.topic}[{partition}]: no record for {self.stall_s:g} s at offset "
                        f"{state.position}, short of the high watermark {state.high}: stopped reading there"
                    )
                    self._finish(partition, state)

    def _finish(self, partition: int, state: _Partition) -> None:
        from confluent_kafka import TopicPartition

        state.done = True
        # Pausing only saves fetches: records of a done partition are ignored anyway.
        with contextlib.suppress(Exception):
            self.consumer.pause([TopicPartition(self.topic, partition)])


def partition_metadata(consumer: Any, topic: str, timeout: float) -> list[int]:
    """The topic's partitions; ``ReaderError`` when it does not exist or Kafka does not answer."""
    from confluent_kafka import KafkaException

    try:
        metadata = consumer.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise ReaderError(f"Kafka did not answer a metadata request within {timeout:g} s: {exc}") from None
    found = metadata.topics.get(topic)
    if found is None:
        raise ReaderError(f"topic {topic!r} does not exist")
    if found.error is not None:
        raise ReaderError(f"topic {topic!r}: {found.error.str()}")
    return sorted(found.partitions)


def watermarks(
    consumer: Any, topic: str, partitions: Sequence[int], timeout: float
) -> dict[int, tuple[int, int]]:
    """(low, high) watermark per partition; ``ReaderError`` when Kafka does not answer."""
    from confluent_kafka import KafkaException, TopicPartition

    marks: dict[int, tuple[int, int]] = {}
    for partition in partitions:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        except KafkaException as exc:
            raise ReaderError(f"{topic}[{partition}]: no watermark offsets: {exc}") from None
        marks[partition] = (int(low), int(high))
    return marks


def assign_reader(
    consumer: Any,
    topic: str,
    starts: Mapping[int, int],
    marks: Mapping[int, tuple[int, int]],
    *,
    idle_s: float = IDLE_S,
) -> PartitionReader:
    """Assign the partitions at ``starts`` and return the reader that reads them to their end."""
    from confluent_kafka import TopicPartition

    consumer.assign([TopicPartition(topic, p, offset) for p, offset in starts.items()])
    highs = {p: marks[p][1] for p in starts}
    lows = {p: marks[p][0] for p in starts}
    return PartitionReader(consumer, topic, starts, highs, lows, idle_s=idle_s)


def offsets_at(
    consumer: Any, topic: str, marks: Mapping[int, tuple[int, int]], timestamp_ms: int, timeout: float
) -> dict[int, int]:
    """Per partition, the first offset with a Kafka timestamp at or after ``timestamp_ms`` (the high
    watermark when there is none). Only a shortcut: Tansu answers 0 for every partition."""
    from confluent_kafka import TopicPartition

    wanted = [TopicPartition(topic, p, timestamp_ms) for p in marks]
    found = consumer.offsets_for_times(wanted, timeout=timeout)
    return {tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1] for tp in found}


def committed_offsets(
    consumer: Any, topic: str, marks: Mapping[int, tuple[int, int]], timeout: float
) -> dict[int, int]:
    """Per partition, where the consumer's group left off (never before the low watermark), or the
    low watermark when the group committed nothing there."""
    from confluent_kafka import TopicPartition

    starts = {p: low for p, (low, _) in marks.items()}
    for tp in consumer.committed([TopicPartition(topic, p) for p in marks], timeout=timeout):
        if tp.offset >= 0:
            starts[tp.partition] = max(tp.offset, marks[tp.partition][0])
    return starts
