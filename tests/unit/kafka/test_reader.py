"""``PartitionReader`` over an in-memory consumer and a fake clock: partition ends, the idle fallback for a
wrong high watermark, stalls, errors; and where reading starts (committed offsets, timestamps)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from connector.kafka.clients import reader_config
from connector.kafka.reader import (
    PartitionReader,
    ReaderError,
    assign_reader,
    committed_offsets,
    offsets_at,
    partition_metadata,
    watermarks,
)

TOPIC = "usage.dlq"


class Message:
    def __init__(self, partition: int, offset: int, error: KafkaError | None = None) -> None:
        self._partition, self._offset, self._error = partition, offset, error

    def error(self) -> KafkaError | None:
        return self._error

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


def eof(partition: int, offset: int) -> Message:
    return Message(partition, offset, KafkaError(KafkaError._PARTITION_EOF))


class Consumer:
    """Hands out one prepared batch per ``consume`` call (then nothing), advancing a fake clock."""

    def __init__(self, batches: Iterable[list[Message]], clock: list[float], step: float = 1.0) -> None:
        self.batches = list(batches)
        self.clock = clock
        self.step = step
        self.paused: list[int] = []
        self.assigned: list[tuple[str, int, int]] = []
        self.calls = 0

    def consume(self, count: int, timeout: float) -> list[Message]:
        self.calls += 1
        assert self.calls < 1000, "the reader never stopped"
        self.clock[0] += self.step
        return self.batches.pop(0) if self.batches else []

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused += [tp.partition for tp in partitions]

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = [(tp.topic, tp.partition, tp.offset) for tp in partitions]


def reader(
    consumer: Consumer, clock: list[float], starts: dict[int, int], highs: dict[int, int]
) -> PartitionReader:
    lows = dict.fromkeys(starts, 0)
    return PartitionReader(
        consumer, TOPIC, starts, highs, lows, idle_s=2.0, stall_s=30.0, clock=lambda: clock[0]
    )


def test_a_partition_ends_at_its_end_of_partition_event_past_a_short_high_watermark() -> None:
    clock = [0.0]
    # Tansu's high watermark (2) is short of the real end (5): only the EOF event ends partition 0.
    batches = [[Message(0, 0), Message(0, 1), Message(1, 0)], [Message(0, 2), eof(1, 1)], [Message(0, 3)]]
    batches += [[Message(0, 4), eof(0, 5)]]
    consumer = Consumer(batches, clock, step=0.1)
    read = reader(consumer, clock, {0: 0, 1: 0}, {0: 2, 1: 1})
    seen = [(m.partition(), m.offset()) for m in read]
    assert seen == [(0, 0), (0, 1), (1, 0), (0, 2), (0, 3), (0, 4)]
    assert read.positions() == {0: 5, 1: 1} and read.read == 6 and not read.warnings
    assert sorted(consumer.paused) == [0, 1], "done partitions are paused"


def test_without_an_end_event_a_partition_at_its_watermark_ends_after_the_idle_time() -> None:
    clock = [0.0]
    consumer = Consumer([[Message(0, 7), Message(0, 8)]], clock, step=0.5)
    read = reader(consumer, clock, {0: 7}, {0: 9})
    assert [m.offset() for m in read] == [7, 8]
    assert read.positions() == {0: 9} and not read.warnings
    assert 2.0 <= clock[0] <= 3.5


def test_a_partition_without_progress_is_given_up_with_a_warning() -> None:
    clock = [0.0]
    consumer = Consumer([[Message(0, 0)]], clock, step=5.0)
    read = reader(consumer, clock, {0: -1}, {0: 10})  # a negative start: the low watermark
    assert [m.offset() for m in read] == [0]
    assert read.positions() == {0: 1}
    assert len(read.warnings) == 1 and "short of the high watermark 10" in read.warnings[0]


def test_records_of_other_or_done_partitions_are_ignored_and_fatal_errors_raise() -> None:
    clock = [0.0]
    batches = [[eof(0, 0), Message(0, 0), Message(5, 3)]]
    consumer = Consumer(batches, clock)
    assert list(reader(consumer, clock, {0: 0}, {0: 0})) == []

    broken = Consumer([[Message(0, 0, KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))]], clock)
    with pytest.raises(KafkaException):
        list(reader(broken, clock, {0: 0}, {0: 1}))
    passing = Consumer([[Message(0, 0, KafkaError(KafkaError._TRANSPORT)), eof(0, 0)]], clock)
    assert list(reader(passing, clock, {0: 0}, {0: 1})) == [], "a transient error is only logged"


class Metadata:
    def __init__(self, topics: dict[str, Any]) -> None:
        self.topics = topics


class Topic:
    def __init__(self, partitions: Iterable[int], error: Any = None) -> None:
        self.partitions = dict.fromkeys(partitions)
        self.error = error


class AdminConsumer:
    """The metadata, watermark and offset lookups of a consumer, answered from memory."""

    def __init__(self) -> None:
        self.marks = {0: (2, 10), 1: (0, 4)}
        self.committed_at = {0: 7, 1: -1001}
        self.by_time = {0: 5, 1: -1}
        self.assigned: list[tuple[str, int, int]] = []

    def list_topics(self, timeout: float) -> Metadata:
        return Metadata({TOPIC: Topic([1, 0]), "broken": Topic([0], error=KafkaError(KafkaError._TRANSPORT))})

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        if tp.partition not in self.marks:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        return self.marks[tp.partition]

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.committed_at[tp.partition]) for tp in tps]

    def offsets_for_times(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.by_time[tp.partition]) for tp in tps]

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = [(tp.topic, tp.partition, tp.offset) for tp in partitions]


def test_partitions_watermarks_and_where_reading_starts() -> None:
    consumer = AdminConsumer()
    partitions = partition_metadata(consumer, TOPIC, 1.0)
    assert partitions == [0, 1]
    with pytest.raises(ReaderError, match="does not exist"):
        partition_metadata(consumer, "nowhere", 1.0)
    with pytest.raises(ReaderError, match="'broken'"):
        partition_metadata(consumer, "broken", 1.0)
    marks = watermarks(consumer, TOPIC, partitions, 1.0)
    assert marks == {0: (2, 10), 1: (0, 4)}
    with pytest.raises(ReaderError, match="no watermark offsets"):
        watermarks(consumer, TOPIC, [2], 1.0)

    assert committed_offsets(consumer, TOPIC, marks, 1.0) == {0: 7, 1: 0}, "nothing committed: the low mark"
    consumer.committed_at[0] = 1  # committed before the low watermark (records deleted since)
    assert committed_offsets(consumer, TOPIC, marks, 1.0)[0] == 2
    assert offsets_at(consumer, TOPIC, marks, 1_700_000_000_000, 1.0) == {0: 5, 1: 4}, "none: the high mark"

    read = assign_reader(consumer, TOPIC, {0: 5, 1: 4}, marks, idle_s=0.5)
    assert consumer.assigned == [(TOPIC, 0, 5), (TOPIC, 1, 4)]
    assert read.positions() == {0: 5, 1: 4} and read.idle_s == 0.5


def test_the_reader_consumer_commits_nothing_by_itself_and_reports_partition_ends() -> None:
    from connector.config.environment import load_settings

    settings = load_settings(
        {
            "STRIPE_API_KEY": "sk_test_" + "x" * 24,
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "CONNECTOR_TOPICS": "usage",
            "TOPIC_USAGE_EVENT_NAME": "api",
        }
    )
    config = reader_config(settings, "replay-group")
    assert config["group.id"] == "replay-group" and config["bootstrap.servers"] == "127.0.0.1:1"
    assert config["enable.auto.commit"] is False and config["enable.auto.offset.store"] is False
    assert config["enable.partition.eof"] is True and config["auto.offset.reset"] == "earliest"
