"""The run loop: poll, map, batch, hand batches to the sender, apply completions, commit the done prefix.

(Over 400 lines: the hot path, completions, corrections and the shutdown that must end every run share
state: the offsets, the in-flight counts and the dead-letter producer.)

Two threads, one owner each:

* the **consumer thread** (the caller of ``Pipeline.run``) owns the Kafka consumer, the dead-letter
  producer, the offsets and the batcher. Rebalance callbacks (``connector.pipeline.rebalance``) run on
  it, as librdkafka calls them from ``consume``;
* the **sender thread** (``connector.pipeline.sender_thread``) runs the Stripe sender. Results come back
  through a queue the consumer thread drains; the sender's back-off signal goes to flow control
  (``connector.pipeline.flow``), which decides whether the loop reads, holds or pauses.

Only the consumer thread touches offsets, so no lock guards them. A record is done when Stripe
accepted its batch or the dead-letter topic acknowledged it; the commit for a partition is the
first offset not yet done (``connector.pipeline.offsets``).

Fatal errors travel as one ``FatalError`` from where they arise (sender, dead-letter producer, Kafka,
``CONNECTOR_ON_INVALID=fail``) to ``run``'s return value; whatever happens, ``run`` ends by committing
the done prefix, closing the consumer and stopping the sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from connector.config.settings import Settings, TopicSettings
from connector.errors import ConfigurationError, FatalError, RecordRejected, RetryableError
from connector.kafka.deadletter import DeadLetterQueue
from connector.mapping.corrections import CorrectionMapper
from connector.mapping.mapper import Mapper
from connector.pipeline.admission import Admission
from connector.pipeline.aggregating import AggregatedMeter, Aggregating, dead_letter_of
from connector.pipeline.aggregation import Aggregate, Flush, PartitionAggregator
from connector.pipeline.batching import Batch, Batcher, Item
from connector.pipeline.corrections import Corrected, CorrectionJob, Keys, StripePort, apply_correction
from connector.pipeline.customers import Verdict
from connector.pipeline.flow import FlowControl
from connector.pipeline.holds import TopicHolds
from connector.pipeline.identity import IdentityPort, UsesNamespace
from connector.pipeline.offsets import OffsetTracker, PartitionOffsets
from connector.pipeline.progress import PROGRESS_INTERVAL_S, VIEW_INTERVAL_S, Progress, Reporter
from connector.pipeline.rebalance import Rebalancer
from connector.pipeline.sender_thread import Failed, SenderFactory, SenderThread
from connector.pipeline.stripe_watch import StripeWatch
from connector.records import Coordinates, KafkaRecord, MeterEvent, kafka_timestamp_ms
from connector.runtime.metrics import Telemetry
from connector.runtime.snapshot import Snapshot
from connector.stripe.request_keys import Origin
from connector.stripe.results import BatchResult

log = logging.getLogger("kafka_stripe.pipeline")

CONSUME_BATCH = 500  # records per consume() call: amortises the C call, bounded by the buffer check
# librdkafka's local fetch queue, all partitions together: ~50,000 records of the default schema, i.e.
# seconds of input, refilled in milliseconds while it drains.
PREFETCH_KBYTES = 4096
FETCH_QUEUE_BACKOFF_MS = 20  # the next fetch after the prefetch queue was full (see _open)
POLL_TIMEOUT_S = 0.1  # the longest consume() or completion wait: bounds how late a stop or a commit is

# Item(...) without NamedTuple's Python-level __new__: one item is made per record.
_new_item: Callable[[tuple[MeterEvent, Any, PartitionOffsets]], Item] = functools.partial(tuple.__new__, Item)


def as_fatal(exc: Exception) -> FatalError:
    """The ``FatalError`` an error that stops the loop amounts to."""
    if isinstance(exc, FatalError):
        return exc
    if isinstance(exc, KafkaException):
        return FatalError(f"Kafka error: {exc}")
    # RetryableError: only the schema registry raises it outside the sender. Stopping (and being
    # restarted by the supervisor) replays from the last commit; skipping the record would lose usage.
    return FatalError(str(exc))


# What ends the loop with a fatal error: the first element is the typed one, the others are classified
# by ``as_fatal`` where they are caught.
_STOPS = (FatalError, KafkaException, RetryableError)


class Pipeline:
    """One consumer-group member delivering its partitions to Stripe."""

    def __init__(
        self,
        settings: Settings,
        sender_factory: SenderFactory,
        identity_factory: Callable[[Mapping[str, UsesNamespace]], IdentityPort],
        *,
        consumer_factory: Callable[[dict[str, Any]], Any] = Consumer,
        producer_factory: Callable[[dict[str, Any]], Any] = Producer,
        schema_lookup: Callable[[int], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        telemetry: Telemetry | None = None,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
        watch: StripeWatch | None = None,
        aggregate_meters: Mapping[str, AggregatedMeter] | None = None,
    ) -> None:
        self.settings = settings
        # A telemetry without a server still counts: the hot path never checks for None.
        self.telemetry = telemetry if telemetry is not None else Telemetry(port=None)
        self._clock = clock
        self._topics: dict[str, TopicSettings] = {t.name: t for t in settings.topics}
        self._mappers = {t.name: Mapper(t, schema_lookup) for t in settings.topics if t.kind == "usage"}
        self._correctors = {
            t.name: CorrectionMapper(t, schema_lookup) for t in settings.topics if t.kind == "corrections"
        }
        # Every topic's namespace holder: usage mappers and corrections mappers alike.
        self._namespaced: dict[str, Mapper | CorrectionMapper] = {**self._mappers, **self._correctors}
        self.identity = identity_factory(self._namespaced)
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        pipeline = settings.pipeline
        self.flow = FlowControl(pipeline.max_buffered_records, self.telemetry, clock=clock)
        self._sender = SenderThread(
            sender_factory,
            self.flow.backoff,
            settings.sender.max_in_flight,
            self.telemetry.observe_send,
            loop_factory,
            namespace_of=lambda topic: self._namespaced[topic].namespace or "",
        )
        self._batcher = Batcher(pipeline.batch_size, pipeline.linger_ms / 1000)
        self._tracker = OffsetTracker()
        # Meters and customers checked against Stripe before sending (None: nothing is checked).
        self.admission = Admission(settings, watch)
        # Pre-aggregated topics (TOPIC_<T>_AGGREGATE): their meters' formulas were read before the start.
        self._aggregating = Aggregating(settings, self.identity, aggregate_meters or {})
        self._releases_seen = 0
        self._holds = TopicHolds(self._tracker, self.flow)
        self.rebalance = Rebalancer(
            self._tracker, self.flow, self, pipeline.shutdown_timeout_s, on_assigned=self.identity.on_assign
        )
        # Finished batches, and finished corrections (``CorrectionJob``, ``Corrected``).
        self._completions: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
        self._in_flight_records = 0  # records in batches handed to the sender, not yet back
        self._stopping = False
        self._fatal: FatalError | None = None  # set where no exception can carry it (callbacks)
        self.progress = Progress()
        self._reporter = Reporter(self._tracker, self.progress)
        self._consumer: Any = None
        self._dlq: DeadLetterQueue | None = None

    # ----------------------------------------------------------------- lifecycle

    def request_stop(self) -> None:
        """Ask the loop to stop gracefully (signal handlers call this)."""
        self._stopping = True

    def run(self) -> FatalError | None:
        """Consume until stopped; returns the fatal error that stopped it, None after a requested stop."""
        try:
            # First: without the ledger and the topics' namespaces nothing may be consumed.
            self.identity.start()
            self.admission.start()
        except (ConfigurationError, *_STOPS) as exc:
            refused = FatalError(f"cannot start: {exc}")
            log.error("fatal: %s", refused)
            self.admission.stop()
            return refused
        self._open()
        fatal: FatalError | None = None
        try:
            self._loop()
        except _STOPS as exc:
            fatal = as_fatal(exc)
            log.error("fatal: %s", fatal)
        return self._shutdown(fatal)

    def _open(self) -> None:
        kafka = self.settings.kafka
        consumer_config: dict[str, Any] = dict(kafka.consumer_config())
        consumer_config.setdefault("enable.auto.offset.store", "false")
        # librdkafka prefetches up to 64 MB by default whatever our buffer limit says; a smaller
        # prefetch keeps memory flat with a large backlog and still holds seconds of records.
        consumer_config.setdefault("queued.max.messages.kbytes", str(PREFETCH_KBYTES))
        # Once that queue is full librdkafka waits fetch.queue.backoff.ms (1 s by default) before it
        # fetches again: a queue drained in less than that leaves the consumer idle, waiting for records.
        consumer_config.setdefault("fetch.queue.backoff.ms", str(FETCH_QUEUE_BACKOFF_MS))
        self._consumer = self._consumer_factory(consumer_config)
        self.flow.attach(self._consumer)
        self._holds.attach(self._consumer)
        self._dlq = DeadLetterQueue(self._producer_factory(dict(kafka.producer_config())))
        self._sender.start()
        topics = [t.name for t in self.settings.topics]
        rebalance = self.rebalance
        self._consumer.subscribe(
            topics, on_assign=rebalance.on_assign, on_revoke=rebalance.on_revoke, on_lost=rebalance.on_lost
        )
        log.info("subscribed to %s as group %s", ", ".join(topics), kafka.group_id)

    def _loop(self) -> None:
        interval = self.settings.pipeline.commit_interval_ms / 1000
        next_commit = self._clock() + interval
        next_progress = self._clock() + PROGRESS_INTERVAL_S
        next_view = 0.0
        consumer = self._consumer
        flow = self.flow
        while not self._stopping:
            deadline = self._batcher.deadline()
            now = self._clock()
            timeout = POLL_TIMEOUT_S if deadline is None else min(POLL_TIMEOUT_S, max(deadline - now, 0.0))
            if flow.reading:
                messages = consumer.consume(CONSUME_BATCH, timeout)
                if messages:
                    self._take(messages)
            else:
                # Buffer full: wait for Stripe's answers instead of reading more.
                self._drain(timeout=timeout or 0.01)
            now = self._clock()
            while (batch := self._batcher.due(now)) is not None:
                self._submit(batch)
            self._drain()
            self._apply_admission(now)
            held = 0
            if self._aggregating.active:
                for offsets, closing in self._aggregating.due(now):
                    self._send_segments([closing], offsets, now)
                for offsets, closing in self._aggregating.released():
                    self._emit_segment(closing, offsets, now)
                held = self._aggregating.held
            # Records waiting for a customer lookup or in aggregation segments have bounds of their own:
            # they must not stop reading.
            flow.update(self._tracker.pending - self.admission.gate.waiting - held)
            if now >= next_commit:
                self._commit(asynchronous=True)
                next_commit = now + interval
            if now >= next_view:
                self._reporter.refresh(consumer)
                next_view = now + VIEW_INTERVAL_S
            if now >= next_progress:
                self._log_progress()
                next_progress = now + PROGRESS_INTERVAL_S
            if self._fatal is not None:
                raise self._fatal

    # ----------------------------------------------------------------- records

    def _take(self, messages: list[Any]) -> None:
        self.telemetry.consumed(len(messages))
        now = self._clock()
        now_ms = int(time.time() * 1000)
        add = self._batcher.add
        admission = self.admission
        known = admission.gate.known
        consumed = 0
        # consume() returns runs of records of one partition: its epoch, mapper, meter state and customer
        # key are looked up once per run. The message travels with its event; no per-record copy is made.
        offsets: PartitionOffsets | None = None
        map_value = blocked = customer_key = run = None
        corrections = False
        for message in messages:
            if message.error() is not None:
                self._consumer_error(message.error())
                continue
            topic = message.topic()
            partition = message.partition()
            offset = message.offset()
            if offsets is None or offsets.partition != partition or offsets.topic != topic:
                offsets, map_value, blocked, customer_key, run = self._run_of(topic, partition)
                corrections = map_value is None
            if corrections:
                consumed += self._take_correction(message, offsets, now_ms)
                continue
            assert map_value is not None
            if blocked is not None and admission.pause_on_missing:
                self._holds.hold(offsets, offset)
                continue
            offsets.track(offset)
            consumed += 1
            if offset < offsets.skip_below:  # delivered before, per the ledger: done, not sent again
                self._skip_delivered(offsets, offset, run, now)
                continue
            try:
                if blocked is not None:
                    raise admission.meter_rejection(topic)
                event = map_value(
                    message.value(), topic, partition, offset, kafka_timestamp_ms(message), now_ms
                )
                if run is not None:
                    closed = run.add(offset, event[0], event[1], event[2], event[3], now)  # Parts
                    if closed:
                        self._send_segments(closed, offsets, now)
                    continue
            except RecordRejected as exc:
                self._reject(message, exc, offsets, run, now)
                continue
            item = _new_item((event, message, offsets))
            if (
                customer_key is not None
                and event.payload.get(customer_key) not in known
                and not self._admit(item, now)
            ):
                continue
            batch = add(item, now)
            if batch is not None:
                self._submit(batch)
        self.progress.consumed += consumed

    def _skip_delivered(
        self, offsets: PartitionOffsets, offset: int, run: PartitionAggregator | None, now: float
    ) -> None:
        offsets.done(offset)
        offsets.skipped += 1
        if run is not None:  # it still lies in a segment's range: the segment's ends must not move
            self._send_segments(run.skip(offset, now), offsets, now)

    def _reject(
        self,
        message: Any,
        error: RecordRejected,
        offsets: PartitionOffsets,
        run: PartitionAggregator | None,
        now: float,
    ) -> None:
        self._dead_letter(KafkaRecord.from_message(message), error, offsets)
        if run is not None:
            self._send_segments(run.skip(message.offset(), now), offsets, now)

    def _run_of(
        self, topic: str, partition: int
    ) -> tuple[
        PartitionOffsets, Callable[..., Any] | None, str | None, str | None, PartitionAggregator | None
    ]:
        """What a run of one partition's records needs: its epoch, its topic's mapping (None for a
        corrections topic), the reason its meter does not take events now (None: it does), the payload
        key to verify customers by, its aggregator (None: one event per record; else the mapping gives
        ``Parts``)."""
        admission = self.admission
        mapper = self._mappers.get(topic)
        offsets = self._tracker.for_record(topic, partition)
        run = self._aggregating.run(offsets) if self._aggregating.active else None
        return (
            offsets,
            None if mapper is None else mapper.map_parts if run is not None else mapper.map_value,
            admission.problem(topic),
            admission.customer_keys.get(topic) if admission.verify else None,
            run,
        )

    def _admit(self, item: Item, now: float) -> bool:
        """Whether an event of a customer not known to be at Stripe goes out now."""
        verdict = self.admission.admit(item, now)
        if verdict is Verdict.REJECT:
            record = KafkaRecord.from_message(item.message)
            self._dead_letter(record, self.admission.rejection(item).at(record.coordinates), item.offsets)
        return verdict is Verdict.SEND

    # ----------------------------------------------------------------- corrections

    def _take_correction(self, message: Any, offsets: PartitionOffsets, now_ms: int) -> int:
        """Map a correction record and hand it to the sender thread (``pipeline.corrections``); returns
        the records consumed (1)."""
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        offsets.track(offset)
        if offset < offsets.skip_below:  # applied before, per the ledger
            offsets.done(offset)
            offsets.skipped += 1
            return 1
        try:
            correction = self._correctors[topic].map_value(
                message.value(), Coordinates(topic, partition, offset), now_ms, self._usage_namespace
            )
        except RecordRejected as exc:
            self._dead_letter(KafkaRecord.from_message(message), exc, offsets)
            return 1
        origin = Origin(self._correctors[topic].namespace or "", partition, offset)
        self._submit_correction(CorrectionJob(correction, message, offsets, origin))
        return 1

    def _usage_namespace(self, topic: str) -> str | None:
        mapper = self._mappers.get(topic)
        return None if mapper is None else mapper.namespace

    def _submit_correction(self, job: CorrectionJob) -> None:
        job.offsets.batches_out += 1
        self._in_flight_records += 1
        settings = self._topics[job.offsets.topic]
        keys = Keys(settings.customer_key, settings.value_key)
        self._sender.call(
            lambda stripe: apply_correction(job, cast(StripePort, stripe), keys),
            lambda result: self._completions.put((job, result)),
        )

    def _corrected(self, job: CorrectionJob, result: Corrected | Failed) -> None:
        """Apply a correction's outcome on the consumer thread."""
        self._in_flight_records -= 1
        job.offsets.batches_out -= 1
        if isinstance(result, Failed):
            if result.fatal is not None:
                self._fatal = result.fatal
                return
            result = Corrected(undelivered=True, reason=result.reason)
        if result.undelivered:
            if not job.offsets.released and not self._stopping:
                log.warning("correction %s not applied yet (%s); trying again", job.origin, result.reason)
                self._submit_correction(job)
            return
        record, correction = KafkaRecord.from_message(job.message), job.correction
        if result.error is not None:
            self._dead_letter(record, result.error.at(record.coordinates), job.offsets, correction.context)
            return
        log.info(
            "correction at %s: %s %s (%s)",
            record.coordinates,
            result.action,
            correction.original,
            correction.reason,
        )
        self.telemetry.correction(result.action)
        job.offsets.done(record.offset)

    # ----------------------------------------------------------------- pre-aggregation

    def _send_segments(self, closed: Sequence[Flush], offsets: PartitionOffsets, now: float) -> None:
        """Hand closed segments' events to the batcher, those that may go now (``Aggregating.admit``)."""
        for closing in closed:
            self.telemetry.segment_closed(
                closing.reason, closing.segment.records, len(closing.segment.aggregates)
            )
        for closing in self._aggregating.admit(offsets, list(closed)):
            self._emit_segment(closing, offsets, now)

    def _emit_segment(self, closing: Flush, offsets: PartitionOffsets, now: float) -> None:
        """Batch a closed segment's events (``Aggregating.items`` fixes its range first)."""
        topic = self._topics[offsets.topic]
        namespace = self._mappers[topic.name].namespace or ""
        add = self._batcher.add
        for item in self._aggregating.items(offsets, closing, namespace, topic.stripe_context):
            batch = add(item, now)
            if batch is not None:
                self._submit(batch)

    def _aggregates_answered(self, items: list[Item], delivered: Sequence[int]) -> Sequence[int]:
        """Settle the delivered aggregates of a batch; returns the indices of its records' events."""
        records = []
        for index in delivered:
            item = items[index]
            if type(cast(object, item.message)) is Aggregate:
                self._answered(item, None)
            else:
                records.append(index)
        return records

    def _answered(self, item: Item, refusal: RecordRejected | None) -> None:
        """Stripe answered one aggregate; once its whole segment is answered, its records are done (or
        one dead letter per refused aggregate stands for them)."""
        answered = self._aggregating.answered(cast(Aggregate, item.message), item.offsets, refusal)
        if answered is None:
            return
        offsets = answered.offsets
        for aggregate, error in answered.results:
            if error is None:
                for offset in aggregate.offsets:
                    offsets.done(offset)
                self.progress.delivered += aggregate.count
                continue
            record = dead_letter_of(aggregate, offsets)
            self._dead_letter(record, error.at(record.coordinates), offsets, covers=aggregate.offsets)

    # ----------------------------------------------------------------- admission (meters, customers)

    def _apply_admission(self, now: float) -> None:
        """Send the events whose customer turned up, reject those whose wait is over, pause or resume
        topics whose meter went or came back."""
        admission = self.admission
        if self._tracker.releases != self._releases_seen:  # a rebalance: forget work for lost partitions
            self._releases_seen = self._tracker.releases
            admission.drop(lambda item: item.offsets.released)
            self._aggregating.forget_released()
            self._holds.forget_released()
        decisions = admission.poll(now)
        if admission.pause_on_missing:
            if decisions.blocked:
                self._holds.pause(decisions.blocked)
            if decisions.freed:
                self._holds.resume(decisions.freed)
        add = self._batcher.add
        for item in decisions.send:
            if not item.offsets.released:
                batch = add(item, now)
                if batch is not None:
                    self._submit(batch)
        for item, error in decisions.reject:
            if not item.offsets.released:
                record = KafkaRecord.from_message(item.message)
                self._dead_letter(record, error.at(record.coordinates), item.offsets)

    def _consumer_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise FatalError(f"Kafka consumer error: {error}")
        log.warning("consumer error: %s", error)

    def _submit(self, batch: Batch) -> None:
        for offsets in batch.partitions:
            offsets.batches_out += 1
        self._in_flight_records += len(batch)
        self._sender.submit(batch, self._on_sent)

    def _on_sent(self, batch: Batch, result: BatchResult | Failed) -> None:
        # Runs on the sender thread: hand over, never touch offsets here.
        self._completions.put((batch, result))

    def _drain(self, timeout: float | None = None) -> None:
        """Apply finished batches and dead-letter acknowledgements."""
        assert self._dlq is not None
        try:
            first = self._completions.get(timeout=timeout) if timeout else self._completions.get_nowait()
        except queue.Empty:
            self._dlq.poll(0)
            return
        self._complete(*first)
        while True:
            try:
                self._complete(*self._completions.get_nowait())
            except queue.Empty:
                break
        self._dlq.poll(0)

    def _complete(self, batch: Batch | CorrectionJob, result: Any) -> None:
        if type(batch) is CorrectionJob:
            self._corrected(batch, result)
            return
        assert isinstance(batch, Batch)
        self._in_flight_records -= len(batch)
        for offsets in batch.partitions:
            offsets.batches_out -= 1
        if isinstance(result, Failed):
            if result.fatal is not None:
                self._fatal = result.fatal
            elif not result.abandoned:
                self.telemetry.batch_failed()
                self._resend(batch.items, result.reason, batch.context)
            return
        if result.retries and batch.context is None:
            # Stripe answered 429/5xx or timed out on the way: hold back new records for a moment.
            # (A connected account's trouble stays with its own sender: the others keep flowing.)
            self.flow.stripe_struggling()
        items = batch.items
        delivered = result.delivered
        if self._aggregating.active:
            delivered = self._aggregates_answered(items, delivered)
        for index in delivered:
            _event, message, offsets = items[index]
            offsets.done(message.offset())
        self.progress.delivered += len(delivered)
        # Two samples per batch (its first and last delivered record) keep the histogram cheap.
        self.telemetry.batch_done(
            len(batch),
            len(delivered),
            len(result.rejected),
            record_times_ms=(
                (
                    kafka_timestamp_ms(items[delivered[0]].message),
                    kafka_timestamp_ms(items[delivered[-1]].message),
                )
                if delivered
                else ()
            ),
        )
        for rejection in result.rejected:
            item = items[rejection.index]
            if type(cast(object, item.message)) is Aggregate:
                self._answered(item, rejection.error())
                continue
            record = KafkaRecord.from_message(item.message)
            error = rejection.error().at(record.coordinates)
            self._dead_letter(record, error, item.offsets, item.event.context)
        if result.undelivered:
            self._resend([items[i] for i in result.undelivered], result.error, batch.context)

    def _resend(self, items: list[Item], error: str | None, context: str | None) -> None:
        # Not done: nothing is committed past these records. Send them again; the sender's retry
        # policy does the waiting, and partitions stay paused meanwhile (memory stays bounded).
        # Records of partitions revoked meanwhile are left to their new owner.
        items = [item for item in items if not item.offsets.released]
        if not items:
            return
        if context is None:
            self.flow.stripe_struggling()
        log.warning("%d events undelivered (%s); sending them again", len(items), error)
        if not self._stopping:
            self._submit(Batch(items, self._clock(), context))

    def _dead_letter(
        self,
        record: KafkaRecord,
        error: RecordRejected,
        offsets: PartitionOffsets,
        context: str | None = None,
        covers: Sequence[int] = (),
    ) -> None:
        if self.settings.pipeline.on_invalid == "fail":
            raise FatalError(f"invalid record and CONNECTOR_ON_INVALID=fail: {error}")
        assert self._dlq is not None
        topic = self._topics[record.topic].dlq_topic
        offset = record.offset

        def delivered(failure: Exception | None) -> None:
            offsets.dead_letters_out -= 1
            if failure is None:
                for done in covers or (offset,):  # an aggregate's dead letter stands for its records
                    offsets.done(done)
                self.progress.dead_lettered += 1
                self.telemetry.dead_lettered(error.code)
            else:
                # The record is not done, so nothing commits past it; stopping makes that visible
                # instead of leaving a partition silently stuck.
                self._fatal = FatalError(f"cannot write to dead-letter topic {topic}: {failure}")

        log.debug("dead-lettering %s: %s", record.coordinates, error)
        offsets.dead_letters_out += 1
        namespace = self._namespaced[record.topic].namespace
        context = context or self._topics[record.topic].stripe_context
        self._dlq.send(record, error, topic, delivered, namespace, context=context)

    # ----------------------------------------------------------------- commits (and what rebalances need)

    def _commit(self, asynchronous: bool, partitions: Sequence[PartitionOffsets] | None = None) -> None:
        chosen = list(self._tracker) if partitions is None else partitions
        positions = [(p, pos) for p in chosen if (pos := p.to_commit()) is not None]
        if not positions:
            return
        self.identity.before_commit(positions)
        try:
            self._consumer.commit(
                offsets=[TopicPartition(p.topic, p.partition, pos) for p, pos in positions],
                asynchronous=asynchronous,
            )
        except KafkaException as exc:
            # A failed commit only means a larger replay after a crash (identifiers dedup it).
            log.warning("commit failed: %s", exc)
            return
        for p, pos in positions:
            p.committed = pos

    def commit_now(self, partitions: Sequence[PartitionOffsets]) -> None:
        """Commit the done prefix of ``partitions`` synchronously (revoke)."""
        self._commit(asynchronous=False, partitions=partitions)

    def flush(self) -> None:
        """Close the open aggregation segments and send the open batches now (revoke, shutdown)."""
        now = self._clock()
        for offsets, closing in self._aggregating.close_all():
            self._send_segments([closing], offsets, now)
        while (batch := self._batcher.flush()) is not None:
            self._submit(batch)

    def wait_for(self, partitions: Sequence[PartitionOffsets], timeout: float) -> bool:
        """Apply completions until ``partitions`` have nothing out, or time runs out (or a fatal error)."""
        deadline = self._clock() + timeout
        while any(p.busy for p in partitions):
            remaining = deadline - self._clock()
            if remaining <= 0 or self._fatal is not None:
                return False
            self._drain(timeout=min(remaining, 0.05))
        return True

    # ----------------------------------------------------------------- shutdown

    def _shutdown(self, fatal: FatalError | None) -> FatalError | None:
        """Drain unless stopping for a fatal error; then always commit, leave the group, stop the sender."""
        try:
            if fatal is None:
                fatal = self._drain_for_shutdown()
        finally:
            # Commit the done prefix also after a fatal error: those records really are delivered.
            self.rebalance.closing = True
            self._commit(asynchronous=False)
            self._log_progress()
            with contextlib.suppress(Exception):
                self._consumer.close()  # leaves the group: partitions move at once, not after a timeout
            self._sender.stop()
            self.admission.stop()
            self.identity.close()
            log.info("stopped")
        return fatal

    def _drain_for_shutdown(self) -> FatalError | None:
        """Send the open batch and wait for what is out; a fatal error arising meanwhile is returned."""
        try:
            self.flush()
            finished = self.wait_for(list(self._tracker), self.settings.pipeline.shutdown_timeout_s)
        except _STOPS as exc:
            # E.g. CONNECTOR_ON_INVALID=fail and a rejection among the last answers: stop waiting, but
            # still commit what is done and close everything (see _shutdown).
            self._fatal = as_fatal(exc)
            finished = True
        if self._fatal is not None:
            log.error("fatal: %s", self._fatal)
            return self._fatal
        if not finished:
            log.warning(
                "shutdown timeout: %d records not done are left for the next run", self._tracker.pending
            )
        return None

    # ----------------------------------------------------------------- reporting

    def telemetry_snapshot(self) -> Snapshot:
        """Gauges for a scrape or probe; runs on the telemetry thread, so it only reads."""
        snapshot = self._reporter.snapshot(self._sender.sender)
        admission = self.admission
        aggregating = self._aggregating
        if aggregating.active:
            snapshot = snapshot._replace(
                open_aggregates=aggregating.open_aggregates(), late_records=aggregating.late()
            )
        return snapshot._replace(
            meters=admission.meters_snapshot(),
            customers_waiting=admission.gate.waiting if admission.verify else None,
        )

    def request_meter_refresh(self) -> None:
        """Read the meters again soon (thread-safe: Stripe reported a meter error)."""
        self.admission.refresh_meters()

    def lag(self) -> int | None:
        """Records behind the log end over owned partitions (librdkafka's cached watermarks)."""
        return self._reporter.lag(self._consumer)

    def _log_progress(self) -> None:
        self._reporter.log_line(self._consumer, self._in_flight_records, self.flow.paused)
