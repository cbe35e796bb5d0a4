"""Backpressure as a state machine: reading, holding (buffer full, not reading), paused (partitions paused).

The consumer thread feeds it three signals: the buffer level (``update``), batch results that show Stripe
struggling (``stripe_struggling``), and the sender's back-off signal (``backoff``, called on the sender's
thread the moment a back-off wait starts). ``update`` applies them and moves between the states:

* **reading** → **holding** when the buffer reaches its limit: ``consume()`` is no longer called, but
  the partitions are not paused. Pausing makes librdkafka drop its prefetched records and fetch them
  again on resume, which starved the pipeline for ~0.3 s after every resume in the backlog benchmark.
* **holding** → **reading** when the buffer drained below half (no stop/start flapping);
  **holding** → **paused** when it stayed full for ``HOLD_BEFORE_PAUSE_S``, so ``consume()`` runs again
  and serves rebalances and errors while Stripe is slow.
* **reading** or **holding** → **paused** at once while Stripe throttles or fails (a back-off signal or a
  struggling batch less than ``DEGRADED_HOLD_S`` ago).
* **paused** → **reading** when the buffer is below half and Stripe is no longer struggling.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

log = logging.getLogger("kafka_stripe.pipeline")

RESUME_FRACTION = 0.5  # consume again when the buffer drained to half: avoids stop/start flapping
DEGRADED_HOLD_S = 1.0  # how long partitions stay paused after Stripe throttled or failed a request
HOLD_BEFORE_PAUSE_S = 1.0  # how long a full buffer only stops reading before the partitions are paused


class FlowState(enum.Enum):
    READING = "reading"
    HOLDING = "holding"  # buffer full: consume() not called, partitions not paused
    PAUSED = "paused"  # partitions paused: consume() runs for rebalances and errors only


class Partitions(Protocol):
    """The consumer as flow control sees it (``confluent_kafka.Consumer``)."""

    def assignment(self) -> list[Any]: ...

    def pause(self, partitions: list[Any]) -> None: ...

    def resume(self, partitions: list[Any]) -> None: ...


class PauseListener(Protocol):
    """Told about pauses and resumes (``connector.runtime.metrics.Telemetry``)."""

    def paused(self, partitions: int) -> None: ...

    def resumed(self) -> None: ...


class FlowControl:
    """Decides when the consumer thread reads, holds or pauses; see the module docstring."""

    def __init__(
        self,
        max_buffered: int,
        listener: PauseListener | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_buffered = max_buffered
        self._listener = listener
        self._clock = clock
        self._consumer: Partitions | None = None
        self.state = FlowState.READING
        self._holding_since = 0.0
        self._degraded_until = 0.0
        self._why_degraded = "Stripe is throttling or failing"
        # Written only by the sender thread (backoff), read by the consumer thread (update): a counter
        # with one writer needs no lock, and a signal arriving while update() runs is seen next time.
        self._backoffs = 0
        self._backoff_reason = ""
        self._seen_backoffs = 0
        # Topics whose meter does not take their events: their partitions stay paused whatever the
        # buffer does (``connector.pipeline.admission``); the loop pauses and resumes them itself.
        self.held_topics: set[str] = set()

    def attach(self, consumer: Partitions) -> None:
        """The consumer whose partitions are paused and resumed."""
        self._consumer = consumer

    @property
    def reading(self) -> bool:
        """Whether the consumer thread should call ``consume()`` (it does while paused too)."""
        return self.state is not FlowState.HOLDING

    @property
    def paused(self) -> bool:
        return self.state is FlowState.PAUSED

    # ----------------------------------------------------------------- signals

    def backoff(self, reason: str) -> None:
        """The sender started a back-off wait (called on the sender's thread; touches one counter)."""
        self._backoff_reason = reason
        self._backoffs += 1

    def stripe_struggling(self) -> None:
        """A batch came back retried or undelivered: hold back new records for a moment."""
        self._degraded_until = self._clock() + DEGRADED_HOLD_S
        self._why_degraded = "Stripe is throttling or failing"

    def update(self, buffered: int) -> None:
        """Apply the signals received since the last call and the buffer level; pause or resume."""
        now = self._clock()
        backoffs = self._backoffs
        if backoffs != self._seen_backoffs:
            self._seen_backoffs = backoffs
            self._degraded_until = now + DEGRADED_HOLD_S
            self._why_degraded = f"Stripe is throttling or failing ({self._backoff_reason})"
        degraded = now < self._degraded_until
        has_room = buffered < self.max_buffered * RESUME_FRACTION
        if self.state is FlowState.PAUSED:
            if has_room and not degraded:
                self._set_paused(False, "buffer has room")
            return
        if self.state is FlowState.READING and buffered >= self.max_buffered:
            self.state, self._holding_since = FlowState.HOLDING, now
        holding_long = self.state is FlowState.HOLDING and now - self._holding_since >= HOLD_BEFORE_PAUSE_S
        if degraded or holding_long:
            self._set_paused(True, self._why_degraded if degraded else "buffer full")
        elif has_room:
            self.state = FlowState.READING

    def assigned(self, partitions: Sequence[Any]) -> None:
        """Newly assigned partitions join a pause in force (called from the assignment callback)."""
        if self._consumer is None:
            return
        if self.paused:
            self._consumer.pause(list(partitions))
        elif self.held_topics:
            held = [p for p in partitions if p.topic in self.held_topics]
            if held:
                self._consumer.pause(held)

    def _set_paused(self, paused: bool, why: str) -> None:
        consumer = self._consumer
        assert consumer is not None, "attach() the consumer first"
        assignment = consumer.assignment()
        if paused:
            consumer.pause(assignment)
            if self._listener is not None:
                self._listener.paused(len(assignment))
        else:
            consumer.resume([p for p in assignment if p.topic not in self.held_topics])
            if self._listener is not None:
                self._listener.resumed()
        self.state = FlowState.PAUSED if paused else FlowState.READING
        log.info("%s %d partitions: %s", "paused" if paused else "resumed", len(assignment), why)
