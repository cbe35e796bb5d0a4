"""The dead-letter topic: its header contract (written and read here only) and the producer shell.

Headers follow Kafka Connect's ``__connect.errors.*`` names where one exists, so existing DLQ
tooling reads them, plus ``kafka_stripe.*`` headers for what Connect has no name for (the stable error
code, Stripe's own code, the original record timestamp, the connector version, and for a record Stripe
dropped after accepting it, the id of the error report that said so). The original record's headers are
kept in front of ours. ``DeadLetterHeaders.read`` is the reading side: what ``dlq replay``
and the demo learn from a dead letter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from connector import __version__
from connector.errors import RecordRejected
from connector.records import KafkaRecord

CONNECTOR_NAME = "kafka-stripe"

HEADER_TOPIC = "__connect.errors.topic"
HEADER_PARTITION = "__connect.errors.partition"
HEADER_OFFSET = "__connect.errors.offset"
HEADER_CONNECTOR_NAME = "__connect.errors.connector.name"
HEADER_EXCEPTION_CLASS = "__connect.errors.exception.class.name"
HEADER_EXCEPTION_MESSAGE = "__connect.errors.exception.message"
HEADER_CODE = "kafka_stripe.error.code"
HEADER_REASON = "kafka_stripe.error.reason"
HEADER_ORIGINAL_TIMESTAMP = "kafka_stripe.original.timestamp"
# The identifier namespace (topic id) the record's derived identifier was made with: a replay after the
# topic was re-created still derives the identifier the first attempt had.
HEADER_ORIGINAL_NAMESPACE = "kafka_stripe.original.namespace"
HEADER_VERSION = "kafka_stripe.version"
# The Stripe error report (a v2 event id) that named the record: with the original coordinates it says
# whether a report's dead letter was written already (connector.reports.intent).
HEADER_REPORT = "kafka_stripe.error.report"
# The Stripe context (connected account) the record's usage was for; absent for the platform account.
HEADER_CONTEXT = "kafka_stripe.context"
# Every header of ours starts with one of these; the others are the original record's.
OUR_HEADER_PREFIXES = ("__connect.errors.", "kafka_stripe.")

Headers = Sequence[tuple[str, bytes | None]]
DeliveryCallback = Callable[[Exception | None], None]


def dead_letter_headers(
    record: KafkaRecord,
    error: RecordRejected,
    namespace: str | None = None,
    report: str | None = None,
    context: str | None = None,
) -> list[tuple[str, bytes]]:
    """Headers for a dead-lettered record: where it came from and why it was refused."""
    ours = [
        (HEADER_TOPIC, record.topic),
        (HEADER_PARTITION, str(record.partition)),
        (HEADER_OFFSET, str(record.offset)),
        (HEADER_CONNECTOR_NAME, CONNECTOR_NAME),
        (HEADER_EXCEPTION_CLASS, type(error).__name__),
        (HEADER_EXCEPTION_MESSAGE, error.reason),
        (HEADER_CODE, error.code),
        (HEADER_REASON, error.reason),
        (HEADER_ORIGINAL_TIMESTAMP, "" if record.timestamp_ms is None else str(record.timestamp_ms)),
        (HEADER_VERSION, __version__),
    ]
    if namespace:
        ours.append((HEADER_ORIGINAL_NAMESPACE, namespace))
    if report:
        ours.append((HEADER_REPORT, report))
    if context:
        ours.append((HEADER_CONTEXT, context))
    original = [(k, v if v is not None else b"") for k, v in record.headers]
    return original + [(k, v.encode("utf-8", "replace")) for k, v in ours]


@dataclass(frozen=True, slots=True)
class DeadLetterHeaders:
    """What a dead letter's headers say: the original record's coordinates and headers, and why it
    was refused. ``problem`` says why the original cannot be rebuilt ("" when it can)."""

    topic: str | None
    partition: int | None
    offset: int | None
    code: str
    reason: str
    original_timestamp_ms: int | None
    original_headers: tuple[tuple[str, bytes | None], ...]
    problem: str = ""
    namespace: str | None = None  # the identifier namespace of the original's topic, when written
    report: str | None = None  # the Stripe error report that named the record, for asynchronous errors
    context: str | None = None  # the Stripe context the usage was for (None: the platform account)

    @classmethod
    def read(cls, headers: Headers) -> DeadLetterHeaders:
        """Read the headers ``dead_letter_headers`` wrote (any message's headers: ours may be absent)."""
        ours: dict[str, str] = {}
        original: list[tuple[str, bytes | None]] = []
        for name, raw in headers:
            if name.startswith(OUR_HEADER_PREFIXES):
                ours[name] = (raw or b"").decode("utf-8", "replace")  # the last one wins, as they are ours
            else:
                original.append((name, raw))
        stamp = ours.get(HEADER_ORIGINAL_TIMESTAMP, "")
        timestamp = int(stamp) if stamp.lstrip("-").isdigit() else None
        topic = ours.get(HEADER_TOPIC) or None
        partition, offset = _int(ours.get(HEADER_PARTITION)), _int(ours.get(HEADER_OFFSET))
        problem = ""
        if topic is None:
            problem = f"not a kafka-stripe dead letter: no {HEADER_TOPIC} header"
        elif partition is None or offset is None:
            problem = f"garbled {HEADER_PARTITION}/{HEADER_OFFSET} headers: no original offset"
        code, reason = ours.get(HEADER_CODE, ""), ours.get(HEADER_REASON, "")
        namespace = ours.get(HEADER_ORIGINAL_NAMESPACE) or None
        report = ours.get(HEADER_REPORT) or None
        context = ours.get(HEADER_CONTEXT) or None
        return cls(
            topic,
            partition,
            offset,
            code,
            reason,
            timestamp,
            tuple(original),
            problem,
            namespace,
            report,
            context,
        )

    def original(
        self, key: bytes | None, value: bytes | None, timestamp_ms: int | None
    ) -> KafkaRecord | None:
        """The original record, with the dead letter's key and value; ``timestamp_ms`` (the dead
        letter's own) stands in for a missing original timestamp. None when ``problem`` says why."""
        if self.topic is None or self.partition is None or self.offset is None:
            return None
        timestamp = self.original_timestamp_ms if self.original_timestamp_ms is not None else timestamp_ms
        return KafkaRecord(
            self.topic, self.partition, self.offset, key, value, timestamp, self.original_headers
        )


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


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
        self,
        record: KafkaRecord,
        error: RecordRejected,
        topic: str,
        on_delivery: DeliveryCallback,
        namespace: str | None = None,
        report: str | None = None,
        context: str | None = None,
    ) -> None:
        """Produce ``record`` to ``topic``; ``on_delivery(None)`` once the broker acknowledged it.
        ``report``: the Stripe error report that named the record (its own header); ``context``: the
        Stripe context its usage was for."""

        def acknowledged(err: Any, _msg: Any) -> None:
            on_delivery(
                None if err is None else RuntimeError(f"dead-letter produce to {topic} failed: {err}")
            )

        def produce() -> None:
            self._producer.produce(
                topic,
                value=record.value,
                key=record.key,
                headers=dead_letter_headers(record, error, namespace, report, context),
                timestamp=record.timestamp_ms or 0,
                on_delivery=acknowledged,
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
