"""Producing rejected records, with their original bytes and the reason, to a dead-letter topic.

Headers follow Kafka Connect's ``__connect.errors.*`` names where one exists, so existing DLQ
tooling reads them, plus ``kafka_stripe.*`` headers for what Connect has no name for (the stable error
code, Stripe's own code, the original record timestamp, the connector version). The original record's
headers are kept in front of ours.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from connector import __version__
from connector.errors import RecordRejected
from connector.records import KafkaRecord

CONNECTOR_NAME = "kafka-stripe"

DeliveryCallback = Callable[[Exception | None], None]


def dead_letter_headers(record: KafkaRecord, error: RecordRejected) -> list[tuple[str, bytes]]:
    """Headers for a dead-lettered record: where it came from and why it was refused."""
    ours = [
        ("__connect.errors.topic", record.topic),
        ("__connect.errors.partition", str(record.partition)),
        ("__connect.errors.offset", str(record.offset)),
        ("__connect.errors.connector.name", CONNECTOR_NAME),
        ("__connect.errors.exception.class.name", type(error).__name__),
        ("__connect.errors.exception.message", error.reason),
        ("kafka_stripe.error.code", error.code),
        ("kafka_stripe.error.reason", error.reason),
        ("kafka_stripe.original.timestamp", "" if record.timestamp_ms is None else str(record.timestamp_ms)),
        ("kafka_stripe.version", __version__),
    ]
    original = [(k, v if v is not None else b"") for k, v in record.headers]
    return original + [(k, v.encode("utf-8", "replace")) for k, v in ours]


class DeadLetterQueue:
    """A thin shell over a confluent-kafka ``Producer``; delivery reports arrive on ``poll()``."""

    # Without records out, the producer's queue holds only client events (errors, logs): serving it
    # this often is enough, and each poll() gives up the GIL, which the sender thread then takes.
    IDLE_POLL_INTERVAL_S = 1.0

    def __init__(self, producer: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._producer = producer
        self._clock = clock
        self._next_idle_poll = 0.0

    def send(
        self, record: KafkaRecord, error: RecordRejected, topic: str, on_delivery: DeliveryCallback
    ) -> None:
        """Produce ``record`` to ``topic``; ``on_delivery(None)`` once the broker acknowledged it."""

        def report(err: Any, _msg: Any) -> None:
            on_delivery(
                None if err is None else RuntimeError(f"dead-letter produce to {topic} failed: {err}")
            )

        def produce() -> None:
            self._producer.produce(
                topic,
                value=record.value,
                key=record.key,
                headers=dead_letter_headers(record, error),
                timestamp=record.timestamp_ms or 0,
                on_delivery=report,
            )

        try:
            try:
                produce()
            except BufferError:
                # The local queue is full: serve delivery reports to make room, then try once more.
                self._producer.poll(1.0)
                produce()
        except Exception as exc:  # still full, an invalid topic name, or a fatal producer
            on_delivery(exc)

    @property
    def outstanding(self) -> int:
        """Records produced whose delivery report has not been served yet (librdkafka counts them)."""
        return len(self._producer)

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports (with nothing out and no timeout, at most once a second)."""
        if not timeout and not self.outstanding:
            now = self._clock()
            if now < self._next_idle_poll:
                return 0
            self._next_idle_poll = now + self.IDLE_POLL_INTERVAL_S
        served: int = self._producer.poll(timeout)
        return served

    def flush(self, timeout: float) -> int:
        """Wait for outstanding records; returns how many are still not acknowledged."""
        remaining: int = self._producer.flush(timeout)
        return remaining
