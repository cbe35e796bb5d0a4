"""Fakes for driving the pipeline through its public methods: a clock, an in-memory consumer, a producer, a
sender whose answers the test scripts. They stand in for Kafka and Stripe clients only; the pipeline's own
modules run for real."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Message, TopicPartition

from connector.config.environment import load_settings
from connector.config.settings import Settings
from connector.records import MeterEvent
from connector.stripe.results import BatchResult, SenderStats
from tests.support.harness import encode, usage

TOPIC = "usage"


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings(**extra: str) -> Settings:
    env = {
        "STRIPE_API_KEY": "sk_test_" + "x" * 24,
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "KAFKA_GROUP_ID": "g",
        "CONNECTOR_TOPICS": TOPIC,
        "TOPIC_USAGE_EVENT_NAME": "api_requests",
        "CONNECTOR_METRICS_PORT": "0",
    }
    env.update(extra)
    return load_settings(env)


def messages(partition: int, offsets: range) -> list[Any]:
    """Valid default-schema records on ``usage[partition]``."""
    return [
        Message(topic=TOPIC, partition=partition, offset=o, value=encode(usage("cus_1", 1)), timestamp=(1, 0))
        for o in offsets
    ]


class Partition:
    def __init__(self, partition: int, topic: str = TOPIC) -> None:
        self.topic, self.partition = topic, partition


class Consumer:
    """In memory: owns ``partitions``, hands out scripted ``consume()`` answers, records everything else.

    ``script`` is called before each ``consume()`` with the consumer, and returns the messages to hand
    out (or None to hand out nothing).
    """

    def __init__(self, partitions: Sequence[int] = (0, 1), script: Callable[[Consumer], Any] | None = None):
        self.owned = [TopicPartition(TOPIC, p) for p in partitions]
        self.script = script
        self.calls: list[str] = []
        self.commits: list[dict[tuple[str, int], int]] = []
        self.closed = False
        self.callbacks: dict[str, Any] = {}

    def subscribe(self, topics: Sequence[str], on_assign: Any, on_revoke: Any, on_lost: Any) -> None:
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        on_assign(self, [Partition(p.partition) for p in self.owned])

    def consume(self, count: int, timeout: float) -> list[Any]:
        answer = self.script(self) if self.script is not None else None
        return list(answer or [])

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        self.commits.append({(p.topic, p.partition): p.offset for p in offsets})

    def committed_positions(self) -> dict[tuple[str, int], int]:
        merged: dict[tuple[str, int], int] = {}
        for commit in self.commits:
            merged.update(commit)
        return merged

    def assignment(self) -> list[TopicPartition]:
        return list(self.owned)

    def pause(self, partitions: list[Any]) -> None:
        self.calls.append("pause")

    def resume(self, partitions: list[Any]) -> None:
        self.calls.append("resume")

    def get_watermark_offsets(self, partition: Any, cached: bool = True) -> tuple[int, int]:
        return 0, -1

    def close(self) -> None:
        self.closed = True


class Producer:
    """The dead-letter producer: acknowledges every record at the next ``poll()``."""

    def __init__(self, config: Any = None) -> None:
        self.produced: list[tuple[str, bytes | None]] = []
        self._reports: list[Callable[[Any, Any], None]] = []

    def produce(self, topic: str, value: bytes | None = None, on_delivery: Any = None, **_: Any) -> None:
        self.produced.append((topic, value))
        self._reports.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        reports, self._reports = self._reports, []
        for report in reports:
            report(None, None)
        return len(reports)

    def flush(self, timeout: float | None = None) -> int:
        return self.poll()

    def __len__(self) -> int:
        return len(self._reports)


class Sender:
    """Answers each batch with ``answer(events)``, after ``gate`` is set when one is given."""

    def __init__(self, answer: Callable[[Sequence[MeterEvent]], BatchResult] | None = None) -> None:
        self.answer = answer or (lambda events: BatchResult(len(events)))
        self.gate: asyncio.Event | None = None
        self.sent: list[int] = []
        self.closed = False
        self.on_backoff: Callable[[str], None] | None = None

    async def send(
        self, events: Sequence[MeterEvent], origins: object = None, context: str | None = None
    ) -> BatchResult:
        self.sent.append(len(events))
        if self.gate is not None:
            await self.gate.wait()
        return self.answer(events)

    def stats(self) -> SenderStats:
        return SenderStats(*(0 for _ in SenderStats._fields))

    async def aclose(self) -> None:
        self.closed = True

    def factory(self, on_backoff: Callable[[str], None]) -> Sender:
        self.on_backoff = on_backoff
        return self
