"""Flow control of the consumer thread: a full buffer first stops reading, and pauses only if it stays full.

Pausing a partition makes librdkafka drop what it prefetched and fetch it again on resume, so a buffer
that merely fills up for a moment (Stripe a little slower than Kafka) must not pause; one that stays full
(Stripe slow for longer) must, so that ``consume()`` runs again for rebalances. Stripe throttling or
failing pauses at once. The Kafka client here is a stand-in recording pause/resume: these rules are the
pipeline's, the broker plays no part in them.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import TopicPartition

from connector.config.settings import load_settings
from connector.pipeline.loop import DEGRADED_HOLD_S, HOLD_BEFORE_PAUSE_S, Pipeline

LIMIT = 1_000


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Consumer:
    """Records pause/resume; owns two partitions."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("usage", 0), TopicPartition("usage", 1)]

    def pause(self, partitions: list[Any]) -> None:
        self.calls.append("pause")

    def resume(self, partitions: list[Any]) -> None:
        self.calls.append("resume")


class Sender:
    retries = 0

    def stats(self) -> Any:
        return type("Stats", (), {"retries": self.retries})()


def pipeline() -> tuple[Pipeline, Consumer, Clock, Sender]:
    env = {
        "STRIPE_API_KEY": "sk_test_" + "x" * 24,
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "KAFKA_GROUP_ID": "g",
        "CONNECTOR_TOPICS": "usage",
        "TOPIC_USAGE_EVENT_NAME": "api_requests",
        "CONNECTOR_MAX_BUFFERED_RECORDS": str(LIMIT),
        "CONNECTOR_METRICS_PORT": "0",
    }
    clock = Clock()
    sender = Sender()
    p = Pipeline(load_settings(env), lambda: sender, clock=clock)  # type: ignore[arg-type,return-value]
    consumer = Consumer()
    p._consumer = consumer
    p._sender._sender = sender  # type: ignore[assignment]
    return p, consumer, clock, sender


def buffer(p: Pipeline, records: int) -> None:
    """Make ``records`` records pending on partition 0 (tracked, not done)."""
    tracker = p._offsets.for_record("usage", 0)
    while tracker.pending > records:
        tracker.done(tracker._outstanding[0])
    start = tracker._next or 0
    for offset in range(start, start + records - tracker.pending):
        tracker.track(offset)


def test_a_buffer_full_for_a_moment_stops_reading_without_pausing() -> None:
    p, consumer, clock, _ = pipeline()
    buffer(p, LIMIT)
    p._backpressure()
    assert p._holding_since == clock.now and consumer.calls == []
    clock.now += HOLD_BEFORE_PAUSE_S / 2
    buffer(p, LIMIT // 2 - 1)  # drained below half: read again
    p._backpressure()
    assert p._holding_since is None and consumer.calls == [] and not p._paused


def test_still_above_half_keeps_holding() -> None:
    p, consumer, clock, _ = pipeline()
    buffer(p, LIMIT)
    p._backpressure()
    clock.now += HOLD_BEFORE_PAUSE_S / 2
    buffer(p, LIMIT // 2 + 1)
    p._backpressure()
    assert p._holding_since is not None and consumer.calls == []


def test_a_buffer_full_for_long_pauses_then_resumes_at_half() -> None:
    p, consumer, clock, _ = pipeline()
    buffer(p, LIMIT)
    p._backpressure()
    clock.now += HOLD_BEFORE_PAUSE_S
    p._backpressure()
    assert consumer.calls == ["pause"] and p._paused and p._holding_since is None
    buffer(p, LIMIT // 2 + 1)
    clock.now += 5
    p._backpressure()
    assert consumer.calls == ["pause"]
    buffer(p, LIMIT // 2 - 1)
    p._backpressure()
    assert consumer.calls == ["pause", "resume"] and not p._paused


def test_stripe_throttling_pauses_at_once_even_with_room() -> None:
    p, consumer, clock, sender = pipeline()
    buffer(p, 10)
    sender.retries = 1
    p._backpressure()
    assert consumer.calls == ["pause"]
    clock.now += DEGRADED_HOLD_S / 2
    p._backpressure()
    assert consumer.calls == ["pause"]  # still within the hold after the retry
    clock.now += DEGRADED_HOLD_S
    p._backpressure()
    assert consumer.calls == ["pause", "resume"]
