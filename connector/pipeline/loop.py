"""The run loop: poll, decode, map, batch, send, dead-letter, commit the done prefix; rebalance, shutdown.

Two threads, one owner each:

* the **consumer thread** (the caller of ``Pipeline.run``) owns the Kafka consumer, the dead-letter
  producer, the offset tracker and the batcher. Rebalance callbacks run on it (librdkafka calls them
  from ``consume``), so revoke handling can wait for in-flight work without racing the poll loop;
* the **sender thread** runs an asyncio loop with the Stripe sender. Batches go to it with
  ``call_soon_threadsafe``; results come back through a queue the consumer thread drains.

Only the consumer thread touches offsets, so no lock guards them. A record is done when Stripe
accepted its batch or the dead-letter topic acknowledged it; the commit for a partition is the
first offset not yet done (``connector.pipeline.offsets``).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NamedTuple, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from connector.avro.decoder import registry_lookup
from connector.config.settings import Settings, TopicSettings
from connector.errors import FatalError, RecordRejected, RetryableError
from connector.kafka.deadletter import DeadLetterQueue
from connector.mapping.mapper import Mapper
from connector.pipeline.batching import Batch, Batcher, Item
from connector.pipeline.offsets import OffsetTracker, PartitionOffsets
from connector.records import KafkaRecord, MeterEvent, kafka_timestamp_ms
from connector.runtime.telemetry import (
    PartitionSnapshot,
    SessionSnapshot,
    Snapshot,
    Telemetry,
    configure_logging,
)
from connector.stripe.sender import BatchResult, MeterEventSender, SenderStats

log = logging.getLogger("kafka_stripe.pipeline")

CONSUME_BATCH = 500  # records per consume() call: amortises the C call, bounded by the buffer check
PROGRESS_INTERVAL_S = 10.0
VIEW_INTERVAL_S = 1.0  # how often the consumer thread refreshes the partition figures telemetry reads
RESUME_FRACTION = 0.5  # consume again when the buffer drained to half: avoids stop/start flapping
# librdkafka's local fetch queue, all partitions together: ~50,000 records of the default schema, i.e.
# seconds of input, refilled in milliseconds while it drains.
PREFETCH_KBYTES = 4096
DEGRADED_HOLD_S = 1.0  # how long partitions stay paused after Stripe throttled or failed a request
# A full buffer first only stops consume() calls: pausing makes librdkafka drop its prefetched records
# and fetch them again on resume, which starved the pipeline for ~0.3 s after every resume in the
# backlog benchmark. Only a buffer still full after this long pauses the partitions, so that consume()
# runs again and serves rebalances and errors while Stripe is slow.
HOLD_BEFORE_PAUSE_S = 1.0
# Garbage collection (see tune_interpreter): young-generation threshold, and collections of each generation
# before the next older one is collected.
GC_THRESHOLDS = (10_000, 20, 100)
SWITCH_INTERVAL_S = 0.001  # how long a thread may hold the GIL while another waits (default 5 ms)


class BatchSender(Protocol):
    """The Stripe side as the pipeline sees it (``connector.stripe.sender.MeterEventSender``)."""

    async def send(self, events: Sequence[MeterEvent]) -> BatchResult: ...

    def stats(self) -> SenderStats: ...

    async def aclose(self) -> None: ...


class _Failed(NamedTuple):
    """Stands in for a ``BatchResult`` when the sender raised instead of answering, or was skipped."""

    error: str
    fatal: bool
    abandoned: bool = False


# Item(...) without NamedTuple's Python-level __new__: one item is made per record.
_new_item: Callable[[tuple[MeterEvent, Any, PartitionOffsets]], Item] = functools.partial(tuple.__new__, Item)

# Every record of the batch belongs to partitions this member no longer owns: not sent at all.
_ABANDONED = _Failed("partitions revoked before the batch was sent", fatal=False, abandoned=True)


@dataclass
class Progress:
    """Counters for the periodic progress line (and, later, metrics)."""

    consumed: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    batches_sent: int = 0
    batches_undelivered: int = 0
    commits: int = 0
    started: float = field(default_factory=time.monotonic)


class _SenderThread:
    """An asyncio loop in a daemon thread, running the sender."""

    def __init__(self, factory: Callable[[], BatchSender], max_in_flight: int, telemetry: Telemetry) -> None:
        self._factory = factory
        self._telemetry = telemetry
        self._max_in_flight = max_in_flight
        self._gate: asyncio.Semaphore | None = None
        self._loop = _new_event_loop()
        self._ready = threading.Event()
        self._sender: BatchSender | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="kafka-stripe-sender", daemon=True)
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._sender = self._factory()
            self._gate = asyncio.Semaphore(self._max_in_flight)
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def submit(self, batch: Batch, done: Callable[[Batch, BatchResult | _Failed], None]) -> None:
        sender = self._sender
        gate = self._gate
        assert sender is not None and gate is not None

        async def send() -> None:
            result: BatchResult | _Failed
            try:
                # Batches queue here, not inside the sender, so that one whose partitions were
                # revoked meanwhile is dropped instead of sent for a partition another member owns.
                async with gate:
                    if all(tracker.released for tracker in batch.trackers):
                        result = _ABANDONED
                    else:
                        started = time.monotonic()
                        result = await sender.send(batch.events)
                        self._telemetry.observe_send(time.monotonic() - started)
            except FatalError as exc:
                result = _Failed(str(exc), fatal=True)
            except Exception as exc:  # a bug must not lose the batch: it stays undone and is resent
                log.exception("sender failed unexpectedly")
                result = _Failed(f"{type(exc).__name__}: {exc}", fatal=False)
            done(batch, result)

        # Not run_coroutine_threadsafe: nobody waits for a result here (done() hands it over), so the
        # thread-safe future it chains to every batch would be pure overhead on the sender's thread.
        self._loop.call_soon_threadsafe(self._start, send)

    def _start(self, send: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = self._loop.create_task(send())
        # The loop keeps only weak references to tasks: this set keeps each one until it is done.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def sender(self) -> BatchSender | None:
        return self._sender

    def retries(self) -> int:
        """Back-off waits the sender has taken so far (read across threads: a plain int)."""
        sender = self._sender
        return 0 if sender is None else sender.stats().retries

    def stop(self, timeout: float = 5.0) -> None:
        """Abandon sends still running (their records stay uncommitted), close the sender, end the loop."""
        sender = self._sender

        async def close() -> None:
            current = asyncio.current_task()
            pending = [task for task in asyncio.all_tasks() if task is not current]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if sender is not None:
                await sender.aclose()

        if self._loop.is_running():
            with _suppress():
                asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed: it cuts the sender's CPU per request by about 15% (benchmarks/sender.py)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class _suppress:
    """Swallow errors of best-effort cleanup (the run already has its outcome)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


class Pipeline:
    """One consumer-group member delivering its partitions to Stripe."""

    def __init__(
        self,
        settings: Settings,
        sender_factory: Callable[[], BatchSender],
        *,
        consumer_factory: Callable[[dict[str, Any]], Any] = Consumer,
        producer_factory: Callable[[dict[str, Any]], Any] = Producer,
        schema_lookup: Callable[[int], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings
        # A telemetry without a server still counts: the hot path never checks for None.
        self.telemetry = telemetry if telemetry is not None else Telemetry(port=None)
        self._clock = clock
        self._topics: dict[str, TopicSettings] = {t.name: t for t in settings.topics}
        self._mappers = {t.name: Mapper(t, schema_lookup) for t in settings.topics}
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self._sender = _SenderThread(sender_factory, settings.sender.max_in_flight, self.telemetry)
        pipeline = settings.pipeline
        self._batcher = Batcher(pipeline.batch_size, pipeline.linger_ms / 1000)
        self._offsets = OffsetTracker()
        self._completions: queue.SimpleQueue[tuple[Batch, BatchResult | _Failed]] = queue.SimpleQueue()
        self._in_flight_records = 0  # records in batches handed to the sender, not yet back
        self._paused = False
        self._holding_since: float | None = None  # buffer full: consume() not called since then
        self._degraded_until = 0.0
        self._seen_retries = 0
        self._next_retry_check = 0.0
        self._stopping = False
        self._closing = False  # set once the final wait is over: revoke during close must not wait again
        self._fatal: str | None = None
        self.progress = Progress()
        self._partition_view: tuple[PartitionSnapshot, ...] = ()
        self._buffered = 0
        self._last_consumed = 0
        self._last_progress = time.monotonic()
        self._consumer: Any = None
        self._dlq: DeadLetterQueue | None = None

    # ----------------------------------------------------------------- lifecycle

    def request_stop(self) -> None:
        """Ask the loop to stop gracefully (signal handlers call this)."""
        self._stopping = True

    def run(self) -> int:
        """Consume until stopped; returns the process exit status."""
        kafka = self.settings.kafka
        consumer_config: dict[str, Any] = dict(kafka.consumer_config())
        consumer_config.setdefault("enable.auto.offset.store", "false")
        # librdkafka prefetches up to 64 MB by default whatever our buffer limit says; a smaller
        # prefetch keeps memory flat with a large backlog and still holds seconds of records.
        consumer_config.setdefault("queued.max.messages.kbytes", str(PREFETCH_KBYTES))
        self._consumer = self._consumer_factory(consumer_config)
        self._dlq = DeadLetterQueue(self._producer_factory(dict(kafka.producer_config())))
        self._sender.start()
        topics = [t.name for t in self.settings.topics]
        self._consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        log.info("subscribed to %s as group %s", ", ".join(topics), kafka.group_id)
        status = 0
        try:
            self._loop()
        except FatalError as exc:
            self._fatal = str(exc)
        except KafkaException as exc:
            self._fatal = f"Kafka error: {exc}"
        except RetryableError as exc:
            # Only the schema registry raises this outside the sender. Stopping (and being restarted
            # by the supervisor) replays from the last commit; skipping the record would lose usage.
            self._fatal = str(exc)
        if self._fatal is not None:
            log.error("fatal: %s", self._fatal)
            status = 1
        self._shutdown(graceful=self._fatal is None)
        return status

    def _loop(self) -> None:
        interval = self.settings.pipeline.commit_interval_ms / 1000
        next_commit = self._clock() + interval
        next_progress = self._clock() + PROGRESS_INTERVAL_S
        next_view = 0.0
        consumer = self._consumer
        while not self._stopping:
            deadline = self._batcher.deadline()
            now = self._clock()
            timeout = 0.1 if deadline is None else min(0.1, max(deadline - now, 0.0))
            if self._holding_since is None:
                messages = consumer.consume(CONSUME_BATCH, timeout)
                if messages:
                    self._take(messages)
            else:
                # Buffer full: wait for Stripe's answers instead of reading more.
                self._drain(timeout=timeout or 0.01)
            now = self._clock()
            batch = self._batcher.due(now)
            if batch is not None:
                self._submit(batch)
            self._drain()
            self._backpressure()
            if now >= next_commit:
                self._commit(asynchronous=True)
                next_commit = now + interval
            if now >= next_view:
                self._refresh_partition_view()
                next_view = now + VIEW_INTERVAL_S
            if now >= next_progress:
                self._log_progress()
                next_progress = now + PROGRESS_INTERVAL_S
            if self._fatal is not None:
                raise FatalError(self._fatal)

    # ----------------------------------------------------------------- records

    def _take(self, messages: list[Any]) -> None:
        self.telemetry.consumed(len(messages))
        now = self._clock()
        now_ms = int(time.time() * 1000)
        add = self._batcher.add
        consumed = 0
        # consume() returns runs of records of one partition: its epoch and mapper are looked up once
        # per run. The message itself travels with its event; no per-record copy is made of it.
        tracker: PartitionOffsets | None = None
        map_value = None
        for message in messages:
            if message.error() is not None:
                self._consumer_error(message.error())
                continue
            topic = message.topic()
            partition = message.partition()
            offset = message.offset()
            if tracker is None or tracker.partition != partition or tracker.topic != topic:
                tracker = self._offsets.for_record(topic, partition)
                map_value = self._mappers[topic].map_value
            assert map_value is not None
            tracker.track(offset)
            consumed += 1
            try:
                event = map_value(
                    message.value(), topic, partition, offset, kafka_timestamp_ms(message), now_ms
                )
            except RecordRejected as exc:
                self._dead_letter(KafkaRecord.from_message(message), exc, tracker)
                continue
            batch = add(_new_item((event, message, tracker)), now)
            if batch is not None:
                self._submit(batch)
        self.progress.consumed += consumed

    def _consumer_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise FatalError(f"Kafka consumer error: {error}")
        log.warning("consumer error: %s", error)

    def _submit(self, batch: Batch) -> None:
        for tracker in batch.trackers:
            tracker.batches_out += 1
        self._in_flight_records += len(batch)
        self.progress.batches_sent += 1
        self._sender.submit(batch, self._on_sent)

    def _on_sent(self, batch: Batch, result: BatchResult | _Failed) -> None:
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

    def _complete(self, batch: Batch, result: BatchResult | _Failed) -> None:
        self._in_flight_records -= len(batch)
        for tracker in batch.trackers:
            tracker.batches_out -= 1
        if isinstance(result, _Failed):
            if result.fatal:
                self._fatal = result.error
            elif not result.abandoned:
                self.telemetry.batch_failed()
                self._resend(batch.items, result.error)
            return
        if result.retries:
            # Stripe answered 429/5xx or timed out on the way: hold back new records for a moment.
            self._degraded_until = self._clock() + DEGRADED_HOLD_S
        items = batch.items
        delivered = result.delivered
        for index in delivered:
            _event, message, tracker = items[index]
            tracker.done(message.offset())
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
            record = KafkaRecord.from_message(item.message)
            self._dead_letter(record, rejection.error().at(record.coordinates), item.tracker)
        if result.undelivered:
            self._resend([items[i] for i in result.undelivered], result.error)

    def _resend(self, items: list[Item], error: str | None) -> None:
        # Not done: nothing is committed past these records. Send them again; the sender's retry
        # policy does the waiting, and partitions stay paused meanwhile (memory stays bounded).
        # Records of partitions revoked meanwhile are left to their new owner.
        items = [item for item in items if not item.tracker.released]
        if not items:
            return
        self.progress.batches_undelivered += 1
        self._degraded_until = self._clock() + DEGRADED_HOLD_S
        log.warning("%d events undelivered (%s); sending them again", len(items), error)
        if not self._stopping:
            self._submit(Batch(items, self._clock()))

    def _dead_letter(self, record: KafkaRecord, error: RecordRejected, tracker: PartitionOffsets) -> None:
        if self.settings.pipeline.on_invalid == "fail":
            raise FatalError(f"invalid record and CONNECTOR_ON_INVALID=fail: {error}")
        assert self._dlq is not None
        topic = self._topics[record.topic].dlq_topic
        offset = record.offset

        def delivered(failure: Exception | None) -> None:
            tracker.dead_letters_out -= 1
            if failure is None:
                tracker.done(offset)
                self.progress.dead_lettered += 1
                self.telemetry.dead_lettered(error.code)
            else:
                # The record is not done, so nothing commits past it; stopping makes that visible
                # instead of leaving a partition silently stuck.
                self._fatal = f"cannot write to dead-letter topic {topic}: {failure}"

        log.debug("dead-lettering %s: %s", record.coordinates, error)
        tracker.dead_letters_out += 1
        self._dlq.send(record, error, topic, delivered)

    # ----------------------------------------------------------------- flow control

    def _backpressure(self) -> None:
        now = self._clock()
        if now >= self._next_retry_check:
            # Batches in back-off come back only when they succeed or give up; the retry counter
            # tells at once that Stripe is throttling or failing, so new records wait meanwhile.
            self._next_retry_check = now + 0.1
            retries = self._sender.retries()
            if retries != self._seen_retries:
                self._seen_retries = retries
                self._degraded_until = now + DEGRADED_HOLD_S
        limit = self.settings.pipeline.max_buffered_records
        buffered = self._offsets.pending
        degraded = now < self._degraded_until
        has_room = buffered < limit * RESUME_FRACTION
        # Three states: reading; holding (buffer full, consume() not called); paused.
        if self._paused:
            if has_room and not degraded:
                self._set_paused(False, "buffer has room")
            return
        if self._holding_since is None and buffered >= limit:
            self._holding_since = now
        holding_s = None if self._holding_since is None else now - self._holding_since
        if degraded or (holding_s is not None and holding_s >= HOLD_BEFORE_PAUSE_S):
            self._holding_since = None
            self._set_paused(True, "Stripe is throttling or failing" if degraded else "buffer full")
        elif has_room:
            self._holding_since = None

    def _set_paused(self, paused: bool, why: str) -> None:
        assignment = self._consumer.assignment()
        if paused:
            self._consumer.pause(assignment)
            self.telemetry.paused(len(assignment))
        else:
            self._consumer.resume(assignment)
            self.telemetry.resumed()
        self._paused = paused
        log.info("%s %d partitions: %s", "paused" if paused else "resumed", len(assignment), why)

    # ----------------------------------------------------------------- commits

    def _commit(self, asynchronous: bool, trackers: Sequence[PartitionOffsets] | None = None) -> None:
        chosen = list(self._offsets) if trackers is None else trackers
        positions = [(p, pos) for p in chosen if (pos := p.to_commit()) is not None]
        if not positions:
            return
        partitions = [TopicPartition(p.topic, p.partition, pos) for p, pos in positions]
        try:
            self._consumer.commit(offsets=partitions, asynchronous=asynchronous)
        except KafkaException as exc:
            # A failed commit only means a larger replay after a crash (identifiers dedup it).
            log.warning("commit failed: %s", exc)
            return
        for p, pos in positions:
            p.committed = pos
        self.progress.commits += 1

    # ----------------------------------------------------------------- rebalance

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self._offsets.assign((p.topic, p.partition) for p in partitions)
        if self._paused:
            consumer.pause(partitions)
        log.info("assigned %s", _names(partitions))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        log.info("revoking %s", _names(partitions))
        batch = self._batcher.flush()
        if batch is not None:
            self._submit(batch)
        trackers = [t for key in keys if (t := self._offsets.get(*key)) is not None]
        # Commit what is done at once: if the wait below outlasts the rebalance, this still counts.
        self._commit(asynchronous=False, trackers=trackers)
        # Releasing first makes batches still queued for these partitions be dropped unsent, so the
        # wait covers only requests already at Stripe, not the whole read-ahead buffer.
        self._offsets.release(keys)
        if not self._closing:
            self._wait_for(trackers, self._revoke_timeout())
            self._commit(asynchronous=False, trackers=trackers)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        # Another member may own these already: committing for them could move its position.
        log.warning("lost %s; committing nothing for them", _names(partitions))
        self._offsets.release((p.topic, p.partition) for p in partitions)

    def _revoke_timeout(self) -> float:
        return min(self.settings.pipeline.shutdown_timeout_s, 10.0)

    def _wait_for(self, trackers: Sequence[PartitionOffsets], timeout: float) -> bool:
        """Process completions until the given partitions have nothing out, or time runs out."""
        deadline = self._clock() + timeout
        while any(t.busy for t in trackers):
            remaining = deadline - self._clock()
            if remaining <= 0 or self._fatal is not None:
                return False
            self._drain(timeout=min(remaining, 0.05))
        return True

    # ----------------------------------------------------------------- shutdown

    def _shutdown(self, graceful: bool) -> None:
        if graceful:
            batch = self._batcher.flush()
            if batch is not None:
                self._submit(batch)
            finished = self._wait_for(list(self._offsets), self.settings.pipeline.shutdown_timeout_s)
            if not finished:
                log.warning(
                    "shutdown timeout: %d records not done are left for the next run", self._offsets.pending
                )
        # Commit the done prefix also after a fatal error: those records really are delivered.
        self._closing = True
        self._commit(asynchronous=False)
        self._log_progress()
        with _suppress():
            self._consumer.close()  # leaves the group: partitions move at once, not after a timeout
        self._sender.stop()
        log.info("stopped")

    def telemetry_snapshot(self) -> Snapshot:
        """Gauges for a scrape or probe; runs on the telemetry thread, so it only reads."""
        # Partition figures come from the consumer thread (refresh_partition_view): confluent-kafka
        # blocks calls from other threads while that thread sits in consume().
        partitions = self._partition_view
        sender = self._sender.sender
        session = None
        stats = None
        if sender is not None:
            stats = sender.stats()
            current = getattr(getattr(sender, "sessions", None), "session", None)
            if current is not None:
                session = SessionSnapshot(current.id, current.expires_at)
        return Snapshot(partitions, stats, session, buffered=self._buffered)

    def _refresh_partition_view(self) -> None:
        """Committed offsets and log ends of owned partitions, for telemetry and the progress line."""
        view = []
        for t in self._offsets:
            high: int | None = None
            try:
                _low, watermark = self._consumer.get_watermark_offsets(
                    TopicPartition(t.topic, t.partition), cached=True
                )
                high = watermark if watermark >= 0 else None
            except KafkaException:
                high = None
            view.append(PartitionSnapshot(t.topic, t.partition, t.committed, high))
        self._partition_view = tuple(view)
        self._buffered = self._offsets.pending

    def _log_progress(self) -> None:
        p = self.progress
        now = time.monotonic()
        rate = (p.consumed - self._last_consumed) / max(now - self._last_progress, 1e-9)
        self._last_consumed, self._last_progress = p.consumed, now
        log.info(
            "progress: consumed %d (%.0f records/s), delivered %d, dead-lettered %d, in flight %d, "
            "buffered %d, lag %s%s",
            p.consumed,
            rate,
            p.delivered,
            p.dead_lettered,
            self._in_flight_records,
            self._offsets.pending,
            self.lag(),
            ", paused" if self._paused else "",
        )

    def lag(self) -> int | None:
        """Records behind the log end over owned partitions (librdkafka's cached watermarks)."""
        total = 0
        known = False
        for tracker in self._offsets:
            position = tracker.committable()
            if position is None:
                continue
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(tracker.topic, tracker.partition), cached=True
                )
            except KafkaException:
                continue
            if high >= 0:
                total += max(high - position, 0)
                known = True
        return total if known else None


def _names(partitions: Sequence[Any]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"


def install_signal_handlers(pipeline: Pipeline) -> None:
    """First SIGTERM/SIGINT: graceful stop. Second: exit at once, committing nothing new."""
    received = 0

    def handle(signum: int, _frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        if received == 1:
            log.info("received %s: stopping (again to exit at once)", signal.Signals(signum).name)
            pipeline.request_stop()
        else:
            log.warning("received %s again: exiting now without committing", signal.Signals(signum).name)
            os._exit(130)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def schema_lookup_for(settings: Settings) -> Callable[[int], str] | None:
    """The registry lookup for Confluent wire-format topics, or None without a registry."""
    config = settings.schema_registry_config()
    if config is None:
        return None
    from confluent_kafka.schema_registry import SchemaRegistryClient

    client = SchemaRegistryClient(config)
    return registry_lookup(client.get_schema)


def run(settings: Settings) -> int:
    """``kafka-stripe run``: one group member, or ``CONNECTOR_WORKERS`` of them in child processes."""
    if settings.pipeline.workers > 1:
        configure_logging(settings)
        from connector.runtime.workers import supervise

        return supervise(settings)
    return run_one(settings)


def tune_interpreter() -> None:
    """Make the garbage collector's cost independent of the buffer size; hand the GIL over sooner.

    Buffered records live long enough to reach the oldest generation, and CPython collects it whenever
    it grew by a quarter: with tens of thousands of records buffered, full collections ran every few
    thousand records and took a quarter of the CPU at 50 ms from Stripe (benchmarks/e2e.py). Freezing
    what start-up allocated and collecting the young generation less often removes most of that; the
    hot path creates no reference cycles, so garbage is still freed at once by reference counting.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    # The consumer thread keeps the GIL busy decoding; the sender thread needs it only briefly per
    # response but waited up to the default 5 ms each time. 1 ms: 56,000 instead of 48,000 events/s at
    # 50 ms from Stripe, with less CPU per event (benchmarks/e2e.py).
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def run_one(settings: Settings, worker: int | None = None) -> int:
    """One consumer-group member until SIGTERM/SIGINT or a fatal error; returns the exit status."""
    configure_logging(settings, worker)

    def sender() -> MeterEventSender:
        return MeterEventSender.from_settings(settings.stripe, settings.sender)

    telemetry = Telemetry.from_settings(settings, None, worker=worker)
    pipeline = Pipeline(settings, sender, schema_lookup=schema_lookup_for(settings), telemetry=telemetry)
    telemetry.snapshot = pipeline.telemetry_snapshot
    install_signal_handlers(pipeline)
    tune_interpreter()
    telemetry.start()
    try:
        return pipeline.run()
    finally:
        telemetry.stop()
