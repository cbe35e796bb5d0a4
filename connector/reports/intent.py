"""A report's dead letters written exactly once, across SIGKILL and restarts: the intent record.

For a report whose samples map to records, the poller writes, each step waiting for the broker's
acknowledgement before the next:

1. **the intent** — the cursor with ``intent = (report id, end offsets of every partition of the
   dead-letter topics it will write to)``;
2. **the dead letters** — each with the header ``kafka_stripe.error.report`` (the report id) next to
   Kafka Connect's ``__connect.errors.topic/partition/offset`` (the original coordinates);
3. **the cursor** — the report done, the intent closed.

A crash before (1) is acknowledged left nothing in the dead-letter topics: the next poller does the
report from the start. A crash after (1) leaves the intent open; whoever polls next (this process
restarted, or another member) finds it when it loads the cursor, retrieves the report again, maps its
samples again — the same report, the same records and the same mapping time (the report's validation
end), so the same placements — and reads the dead-letter topics from the intent's offsets: a dead letter
carrying this report's id and a record's coordinates was written, anything else is written now. The
offsets are a lower bound of where the first dead letter can land (they were read before it was
produced, and a high watermark never passes the log end; the embedded test broker's watermark lags,
which only lengthens the read). A crash after (3) has nothing left to do. Every record therefore reaches
its dead-letter topic exactly once, as long as the dead-letter topic keeps what was written since the
intent (its retention is far longer than a restart).

What is not covered: a produce request the dying process had already sent and the broker appends only
after the next poller has read past it (a broker holds no request for seconds after its client is gone),
and two pollers at once (see ``connector.reports.election``), which can each write a missing dead letter:
both cases give a duplicate, never a loss, and ``kafka-stripe dlq replay`` derives the same identifier
for both copies. Kafka transactions would close these too, at the price of ``read_committed`` for every
reader of the dead-letter topics; the connector's other dead letters do not use them either.

Metrics are counted when (3) is acknowledged: each report's errors by the process that closes it.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from connector.errors import ConnectorError, StripeRejected
from connector.kafka.deadletter import DeadLetterHeaders, DeadLetterQueue
from connector.kafka.reader import PartitionReader, partition_metadata, watermarks
from connector.records import Coordinates
from connector.reports.cursor import Cursor, CursorStore, DlqOffsets, Intent
from connector.reports.locate import Candidate
from connector.reports.report import EventRef

CODE_PREFIX = "stripe_async:"


class StripeReportedError(StripeRejected):
    """Stripe accepted the event, then dropped it: an error report named its request and its value."""

    code = "stripe_async"


class DeadLetterError(ConnectorError):
    """Dead letters of a report could not be written or read back; the report is done again next poll."""


class Letter(NamedTuple):
    """One record on its way to its dead-letter topic because of ``report``."""

    candidate: Candidate
    dlq_topic: str
    code: str  # Stripe's code
    message: str  # Stripe's message

    @property
    def error(self) -> StripeReportedError:
        return StripeReportedError(self.message, code=f"{CODE_PREFIX}{self.code}")


class ReportWriter:
    """The three steps above, over the cursor store, the dead-letter producer and a reader for the scan."""

    def __init__(
        self,
        store: CursorStore,
        dlq: DeadLetterQueue,
        *,
        consumer_factory: Callable[[dict[str, Any]], Any],
        consumer_config: Mapping[str, Any],
        timeout_s: float = 30.0,
    ) -> None:
        self.store = store
        self._dlq = dlq
        self._consumer_factory = consumer_factory
        self._consumer_config = dict(consumer_config)
        self._timeout_s = timeout_s

    def open(self, cursor: Cursor, report: str, dlq_topics: Iterable[str]) -> Cursor:
        """Step 1: the intent, with the dead-letter topics' end offsets now."""
        opened = cursor.opening(Intent(report, self._ends(sorted(set(dlq_topics)))))
        self.store.save(opened)
        return opened

    def written(self, intent: Intent) -> set[Coordinates]:
        """The original coordinates of the dead letters already written for the intent's report."""
        per_topic: dict[str, dict[int, int]] = defaultdict(dict)
        for topic, partition, offset in intent.offsets:
            per_topic[topic][partition] = offset
        found: set[Coordinates] = set()
        for topic, starts in per_topic.items():
            for headers in self._headers_from(topic, starts):
                read = DeadLetterHeaders.read(headers)
                if read.report == intent.report and read.topic is not None and not read.problem:
                    assert read.partition is not None and read.offset is not None
                    found.add(Coordinates(read.topic, read.partition, read.offset))
        return found

    def write(self, letters: Sequence[Letter], report: str) -> None:
        """Step 2: every letter, each acknowledged (``DeadLetterError`` when one is not)."""
        failures: list[str] = []

        def delivered(failure: Exception | None) -> None:
            if failure is not None:
                failures.append(str(failure))

        for letter in letters:
            candidate = letter.candidate
            self._dlq.send(
                candidate.record, letter.error, letter.dlq_topic, delivered, candidate.namespace, report
            )
        left = self._dlq.flush(self._timeout_s)
        if left or failures:
            why = failures[0] if failures else f"{left} not acknowledged within {self._timeout_s:g} s"
            raise DeadLetterError(f"dead letters of error report {report} not written: {why}")

    def finish(self, cursor: Cursor, ref: EventRef) -> Cursor:
        """Step 3: the report done, the intent closed."""
        done = cursor.done(ref)
        self.store.save(done)
        return done

    def close(self, timeout: float = 10.0) -> None:
        """Wait for anything still queued (the writes of a report are awaited already)."""
        self._dlq.flush(timeout)

    def _ends(self, topics: Sequence[str]) -> DlqOffsets:
        """Every partition of ``topics`` with its high watermark (a lower bound of the log end)."""
        consumer = self._reader()
        try:
            entries: list[tuple[str, int, int]] = []
            for topic in topics:
                partitions = partition_metadata(consumer, topic, self._timeout_s)
                for partition, (_low, high) in watermarks(
                    consumer, topic, partitions, self._timeout_s
                ).items():
                    entries.append((topic, partition, high))
            return tuple(entries)
        except Exception as exc:
            raise DeadLetterError(f"cannot read the dead-letter topics' end offsets: {exc}") from None
        finally:
            consumer.close()

    def _headers_from(self, topic: str, starts: Mapping[int, int]) -> list[list[tuple[str, bytes | None]]]:
        """The headers of every record of ``topic`` from ``starts`` (per partition) to the end."""
        from confluent_kafka import TopicPartition

        consumer = self._reader()
        found: list[list[tuple[str, bytes | None]]] = []
        try:
            marks = watermarks(consumer, topic, sorted(starts), self._timeout_s)
            begin = {p: max(offset, marks[p][0]) for p, offset in starts.items()}
            consumer.assign([TopicPartition(topic, p, offset) for p, offset in begin.items()])
            highs, lows = {p: marks[p][1] for p in begin}, {p: marks[p][0] for p in begin}
            reader = PartitionReader(consumer, topic, begin, highs, lows)
            found = [list(message.headers() or []) for message in reader]
            if reader.warnings:  # a partition given up: what was written there is unknown
                raise DeadLetterError("; ".join(reader.warnings))
        except DeadLetterError:
            raise
        except Exception as exc:
            raise DeadLetterError(f"cannot read back the dead-letter topic {topic!r}: {exc}") from None
        finally:
            consumer.close()
        return found

    def _reader(self) -> Any:
        config = {**self._consumer_config, "group.id": f"kafka-stripe-report-dlq-{uuid.uuid4().hex[:12]}"}
        return self._consumer_factory(config)
