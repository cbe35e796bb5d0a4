"""The run loop end to end in one process: an in-memory consumer and producer, a scripted sender.

What these pin: however a run ends (a requested stop, a fatal error while running, a fatal error while
draining at shutdown), the done prefix is committed, the consumer closed and the sender stopped, and a
fatal error comes back as one ``FatalError``; the sender's back-off signal reaches flow control.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest

from connector.errors import FatalError
from connector.pipeline.identity import StaticIdentity
from connector.pipeline.loop import Pipeline
from connector.records import MeterEvent
from connector.stripe.results import BatchResult, Rejection
from tests.unit.pipeline.fakes import Consumer, Producer, Sender, messages, settings

# Batches of 100 close by count; the rest of the records stays in the open batch until shutdown flushes it.
SLOW_LINGER = {"CONNECTOR_LINGER_MS": "60000", "CONNECTOR_SHUTDOWN_TIMEOUT_S": "5"}


def refuse_the_first_of_small_batches(events: Sequence[MeterEvent]) -> BatchResult:
    if len(events) == 100:
        return BatchResult(100)
    return BatchResult(len(events), rejected=(Rejection(0, "resource_missing", "No such customer", 400),))


def stop_once_delivered(pipeline_box: list[Pipeline], records: list[Any], delivered: int) -> Any:
    """A consume() script: hand out ``records`` once, then request a stop once ``delivered`` are."""
    handed = False

    def script(_consumer: Consumer) -> list[Any]:
        nonlocal handed
        if not handed:
            handed = True
            return records
        pipeline = pipeline_box[0]
        if pipeline.progress.delivered >= delivered:
            pipeline.request_stop()
        time.sleep(0.001)
        return []

    return script


def build(sender: Sender, consumer: Consumer, **env: str) -> tuple[Pipeline, Producer]:
    producer = Producer()
    chosen = settings(**env)
    pipeline = Pipeline(
        chosen,
        sender.factory,
        lambda mappers: StaticIdentity(mappers, {t.name: "TopicIdOfUsage00000001" for t in chosen.topics}),
        consumer_factory=lambda _config: consumer,
        producer_factory=lambda _config: producer,
    )
    return pipeline, producer


def test_a_requested_stop_flushes_waits_commits_everything_and_closes() -> None:
    box: list[Pipeline] = []
    consumer = Consumer(partitions=(0,), script=stop_once_delivered(box, messages(0, range(150)), 100))
    sender = Sender()
    pipeline, _ = build(sender, consumer, **SLOW_LINGER)
    box.append(pipeline)
    assert pipeline.run() is None
    assert sender.sent == [100, 50]
    assert consumer.committed_positions() == {("usage", 0): 150}
    assert consumer.closed and sender.closed


def test_a_fail_policy_rejection_while_draining_commits_the_done_prefix_closes_and_is_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The bug: with CONNECTOR_ON_INVALID=fail, a rejection arriving while shutdown drained raised a
    # FatalError out of the shutdown before the final commit, consumer.close() and sender.stop().
    box: list[Pipeline] = []
    consumer = Consumer(partitions=(0,), script=stop_once_delivered(box, messages(0, range(150)), 100))
    sender = Sender(refuse_the_first_of_small_batches)
    pipeline, _ = build(sender, consumer, CONNECTOR_ON_INVALID="fail", **SLOW_LINGER)
    box.append(pipeline)
    fatal = pipeline.run()
    assert isinstance(fatal, FatalError)
    assert "CONNECTOR_ON_INVALID=fail" in str(fatal) and "resource_missing" in str(fatal)
    assert consumer.committed_positions() == {("usage", 0): 100}, "the done prefix, nothing past the refusal"
    assert consumer.closed and sender.closed
    assert f"fatal: {fatal}" in caplog.text


def test_a_dead_letter_failure_while_draining_is_fatal_too() -> None:
    box: list[Pipeline] = []
    consumer = Consumer(partitions=(0,), script=stop_once_delivered(box, messages(0, range(150)), 100))
    sender = Sender(refuse_the_first_of_small_batches)
    pipeline, producer = build(sender, consumer, **SLOW_LINGER)

    def refuse(topic: str, value: bytes | None = None, on_delivery: Any = None, **_: Any) -> None:
        on_delivery("broker says no", None)

    producer.produce = refuse  # type: ignore[method-assign]
    box.append(pipeline)
    fatal = pipeline.run()
    assert isinstance(fatal, FatalError) and "cannot write to dead-letter topic usage.dlq" in str(fatal)
    assert consumer.committed_positions() == {("usage", 0): 100}
    assert consumer.closed and sender.closed


def test_a_fatal_error_from_the_sender_stops_the_run_and_still_commits_the_done_prefix() -> None:
    class Revoked(Sender):
        async def send(
            self, events: Sequence[MeterEvent], origins: object = None, context: str | None = None
        ) -> BatchResult:
            self.sent.append(len(events))
            if len(self.sent) > 1:
                raise FatalError("Stripe refused the API key (401)")
            return BatchResult(len(events))

    handed = 0

    def script(_consumer: Consumer) -> list[Any]:
        nonlocal handed
        handed += 1
        return (
            messages(0, range(0, 100)) if handed == 1 else messages(0, range(100, 200)) if handed == 2 else []
        )

    consumer = Consumer(partitions=(0,), script=script)
    sender = Revoked()
    pipeline, _ = build(sender, consumer, **SLOW_LINGER)
    fatal = pipeline.run()
    assert isinstance(fatal, FatalError) and str(fatal) == "Stripe refused the API key (401)"
    assert consumer.committed_positions() == {("usage", 0): 100}
    assert consumer.closed and sender.closed


def test_the_senders_backoff_signal_pauses_the_partitions() -> None:
    box: list[Pipeline] = []

    class Throttled(Sender):
        async def send(
            self, events: Sequence[MeterEvent], origins: object = None, context: str | None = None
        ) -> BatchResult:
            assert self.on_backoff is not None
            self.on_backoff("rate_limited")  # as MeterEventSender does when a 429 wait starts
            return await super().send(events)

    consumer = Consumer(partitions=(0, 1), script=stop_once_delivered(box, messages(0, range(100)), 100))
    sender = Throttled()
    pipeline, _ = build(sender, consumer, **SLOW_LINGER)
    box.append(pipeline)
    assert pipeline.run() is None
    assert consumer.calls[:1] == ["pause"]
    assert consumer.committed_positions() == {("usage", 0): 100}


@pytest.mark.parametrize(("env", "backoff"), [({}, "20"), ({"KAFKA_FETCH_QUEUE_BACKOFF_MS": "500"}, "500")])
def test_the_consumer_prefetches_little_and_refills_it_soon(env: dict[str, str], backoff: str) -> None:
    configs: list[dict[str, Any]] = []
    box: list[Pipeline] = []
    consumer = Consumer(partitions=(0,), script=stop_once_delivered(box, messages(0, range(5)), 5))
    chosen = settings(**env)

    def consumer_factory(config: dict[str, Any]) -> Consumer:
        configs.append(config)
        return consumer

    pipeline = Pipeline(
        chosen,
        Sender().factory,
        lambda mappers: StaticIdentity(mappers, {t.name: "TopicIdOfUsage00000001" for t in chosen.topics}),
        consumer_factory=consumer_factory,
        producer_factory=lambda _config: Producer(),
    )
    box.append(pipeline)
    assert pipeline.run() is None
    assert configs[0]["queued.max.messages.kbytes"] == "4096"
    assert configs[0]["fetch.queue.backoff.ms"] == backoff
