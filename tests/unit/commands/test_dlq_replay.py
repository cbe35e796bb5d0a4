"""``dlq replay`` without a broker: dead letters rebuilt from their headers, the replay group's commits."""

from __future__ import annotations

from confluent_kafka import KafkaException, TopicPartition

from connector.commands.dlq_letters import parse_dead_letter
from connector.commands.dlq_replay import ReplayCommits
from connector.errors import MappingError
from connector.kafka.deadletter import dead_letter_headers
from connector.records import Coordinates, KafkaRecord


def test_dead_letter_headers_round_trip() -> None:
    original = KafkaRecord("usage", 3, 1042, b"k", b"v", 1_700_000_000_123, [("trace", b"abc")])
    error = MappingError("no customer", code="missing_customer").at(original.coordinates)
    where = Coordinates("usage.dlq", 0, 5)
    parsed = parse_dead_letter(where, b"k", b"v", 42, dead_letter_headers(original, error))
    assert parsed.original == original._replace(headers=(("trace", b"abc"),))
    assert (parsed.code, parsed.reason, parsed.problem) == ("missing_customer", "no customer", "")

    no_time = original._replace(timestamp_ms=None)
    parsed = parse_dead_letter(where, b"k", b"v", 42, dead_letter_headers(no_time, error))
    assert parsed.original is not None and parsed.original.timestamp_ms == 42  # the dead letter's own

    garbled = [("__connect.errors.topic", b"usage"), ("__connect.errors.partition", b"x")]
    assert "garbled" in parse_dead_letter(where, None, b"v", 1, garbled).problem
    assert parse_dead_letter(where, None, b"v", 1, []).original is None


class Consumer:
    """Records the offsets ``commit`` is asked for (a failing one raises like confluent-kafka)."""

    def __init__(self, fail: bool = False) -> None:
        self.commits: list[list[tuple[int, int]]] = []
        self.fail = fail

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert asynchronous is False
        if self.fail:
            raise KafkaException("broker gone")
        self.commits.append([(tp.partition, tp.offset) for tp in offsets])


def test_commits_stop_before_undelivered_records() -> None:
    """A dead letter Stripe gave no answer for is not committed past: the next replay retries it."""
    commits = ReplayCommits("usage.dlq", "g", warn=lambda line: None)
    for offset in range(12):
        commits.taken(0, offset)
    for offset in range(12):
        if offset != 7:  # undelivered: never settled in this run
            commits.settled(0, offset)
    consumer = Consumer()
    commits.commit(consumer, {0: 12, 1: 4})
    assert consumer.commits == [[(0, 7), (1, 4)]]
    commits.commit(consumer, {0: 12, 1: 4})  # nothing changed: nothing committed again
    assert len(consumer.commits) == 1


def test_commits_mid_run_go_past_what_was_taken_and_settled() -> None:
    """After a batch: per partition, the first dead letter not settled; settled out of order is fine."""
    commits = ReplayCommits("usage.dlq", "g", warn=lambda line: None)
    for partition, offset in [(0, 3), (1, 10), (0, 4), (1, 11), (0, 5)]:
        commits.taken(partition, offset)
    commits.settled(0, 4)  # out of order: 3 is not settled yet
    commits.settled(1, 10)
    commits.settled(1, 11)
    assert commits.targets() == {0: 3, 1: 12}
    commits.settled(0, 3)
    commits.settled(0, 5)
    assert commits.targets() == {0: 6, 1: 12}
    # At the end the reader's positions may lie past the last record (transaction markers).
    assert commits.targets({0: 8, 1: 12, 2: 0}) == {0: 8, 1: 12, 2: 0}


def test_a_failed_commit_is_a_warning_and_is_tried_again() -> None:
    warnings: list[str] = []
    commits = ReplayCommits("usage.dlq", "replay-group", warn=warnings.append)
    commits.taken(0, 0)
    commits.settled(0, 0)
    commits.commit(Consumer(fail=True))
    assert len(warnings) == 1 and "could not commit group replay-group" in warnings[0]
    assert commits.committed == {}
    consumer = Consumer()
    commits.commit(consumer)
    assert consumer.commits == [[(0, 1)]] and commits.committed == {0: 1}
