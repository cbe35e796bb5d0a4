"""Flow control through its public methods, with a fake consumer and a fake clock.

A full buffer first stops reading, and pauses only if it stays full: pausing a partition makes librdkafka
drop what it prefetched and fetch it again on resume, so a buffer that merely fills up for a moment (Stripe
a little slower than Kafka) must not pause; one that stays full (Stripe slow for longer) must, so that
``consume()`` runs again for rebalances. Stripe throttling or failing pauses at once. The Kafka client here
is a stand-in recording pause/resume: these rules are the pipeline's, the broker plays no part in them.
"""

from __future__ import annotations

import logging
import threading

import pytest

from connector.pipeline.flow import DEGRADED_HOLD_S, HOLD_BEFORE_PAUSE_S, FlowControl, FlowState
from tests.unit.pipeline.fakes import Clock, Consumer, Partition

LIMIT = 1_000


class Listener:
    def __init__(self) -> None:
        self.events: list[object] = []

    def paused(self, partitions: int) -> None:
        self.events.append(("paused", partitions))

    def resumed(self) -> None:
        self.events.append("resumed")


def flow() -> tuple[FlowControl, Consumer, Clock, Listener]:
    clock = Clock()
    consumer = Consumer(partitions=(0, 1))
    listener = Listener()
    control = FlowControl(LIMIT, listener, clock=clock)
    control.attach(consumer)
    return control, consumer, clock, listener


def test_a_buffer_full_for_a_moment_stops_reading_without_pausing() -> None:
    f, consumer, clock, _ = flow()
    f.update(LIMIT)
    assert f.state is FlowState.HOLDING and not f.reading and consumer.calls == []
    clock.now += HOLD_BEFORE_PAUSE_S / 2
    f.update(LIMIT // 2 - 1)  # drained below half: read again
    assert f.state is FlowState.READING and f.reading and consumer.calls == [] and not f.paused


def test_still_above_half_keeps_holding() -> None:
    f, consumer, clock, _ = flow()
    f.update(LIMIT)
    clock.now += HOLD_BEFORE_PAUSE_S / 2
    f.update(LIMIT // 2 + 1)
    assert f.state is FlowState.HOLDING and consumer.calls == []


def test_the_hold_counts_from_when_the_buffer_filled() -> None:
    f, consumer, clock, _ = flow()
    f.update(LIMIT - 1)  # not full yet: still reading
    assert f.state is FlowState.READING
    clock.now += 5
    f.update(LIMIT)
    clock.now += HOLD_BEFORE_PAUSE_S * 0.99
    f.update(LIMIT)
    assert f.state is FlowState.HOLDING and consumer.calls == []
    clock.now += HOLD_BEFORE_PAUSE_S * 0.01
    f.update(LIMIT)
    assert consumer.calls == ["pause"]


def test_a_buffer_full_for_long_pauses_then_resumes_at_half() -> None:
    f, consumer, clock, listener = flow()
    f.update(LIMIT)
    clock.now += HOLD_BEFORE_PAUSE_S
    f.update(LIMIT)
    assert consumer.calls == ["pause"] and f.paused and f.reading  # paused: consume() serves rebalances
    assert listener.events == [("paused", 2)]
    clock.now += 5
    f.update(LIMIT // 2 + 1)
    assert consumer.calls == ["pause"]
    f.update(LIMIT // 2 - 1)
    assert consumer.calls == ["pause", "resume"] and not f.paused and f.state is FlowState.READING
    assert listener.events == [("paused", 2), "resumed"]


def test_the_senders_backoff_signal_pauses_at_once_even_with_room(caplog: pytest.LogCaptureFixture) -> None:
    f, consumer, clock, _ = flow()
    f.update(10)
    assert consumer.calls == []
    with caplog.at_level(logging.INFO, "kafka_stripe.pipeline"):
        f.backoff("rate_limited")
        f.update(10)
    assert consumer.calls == ["pause"]
    assert "paused 2 partitions: Stripe is throttling or failing (rate_limited)" in caplog.text
    clock.now += DEGRADED_HOLD_S / 2
    f.update(10)
    assert consumer.calls == ["pause"]  # still within the hold after the back-off
    clock.now += DEGRADED_HOLD_S
    f.update(10)
    assert consumer.calls == ["pause", "resume"]


def test_each_new_backoff_extends_the_hold() -> None:
    f, consumer, clock, _ = flow()
    f.backoff("transport")
    f.update(10)
    clock.now += DEGRADED_HOLD_S * 0.9
    f.backoff("transport")
    f.update(10)
    clock.now += DEGRADED_HOLD_S * 0.9
    f.update(10)
    assert consumer.calls == ["pause"]
    clock.now += DEGRADED_HOLD_S * 0.2
    f.update(10)
    assert consumer.calls == ["pause", "resume"]


def test_a_struggling_batch_pauses_at_once_too() -> None:
    f, consumer, clock, _ = flow()
    f.stripe_struggling()
    f.update(10)
    assert consumer.calls == ["pause"]
    clock.now += DEGRADED_HOLD_S
    f.update(10)
    assert consumer.calls == ["pause", "resume"]


def test_backoff_signals_from_the_sender_thread_are_all_seen() -> None:
    f, consumer, clock, _ = flow()
    threads = [threading.Thread(target=f.backoff, args=("other",)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    f.update(10)
    assert consumer.calls == ["pause"]
    clock.now += DEGRADED_HOLD_S
    f.update(10)
    assert consumer.calls == ["pause", "resume"]
    f.update(10)  # no new signal since: stays reading
    assert consumer.calls == ["pause", "resume"]


def test_paused_needs_both_room_and_stripe_recovered() -> None:
    f, consumer, clock, _ = flow()
    f.backoff("rate_limited")
    f.update(LIMIT)
    clock.now += DEGRADED_HOLD_S
    f.update(LIMIT)  # Stripe recovered but the buffer is still full
    assert consumer.calls == ["pause"]
    f.update(0)
    assert consumer.calls == ["pause", "resume"]


def test_partitions_assigned_while_paused_join_the_pause() -> None:
    f, consumer, _clock, _ = flow()
    f.assigned([Partition(2)])
    assert consumer.calls == []  # reading: nothing to do
    f.backoff("other")
    f.update(0)
    f.assigned([Partition(3)])
    assert consumer.calls == ["pause", "pause"]
