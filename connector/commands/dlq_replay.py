"""One ``dlq replay`` pass: read a dead-letter topic to its end, map and send each record again, commit.

Each dead letter is rebuilt as the record it was (``dlq_letters``), mapped with the *original* topic's
settings and sent with the connector's ``MeterEventSender`` in batches. Progress is committed to the
replay's own consumer group with the pipeline's commit rule (``connector.pipeline.offsets``): per
partition, the first dead letter not settled, so one Stripe gave no answer for is read again next time.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from connector.commands import prologue
from connector.commands.dlq_letters import (
    AGE_CODES,
    DeadLetter,
    Outcome,
    Totals,
    age_warning,
    outcome_line,
    parse_dead_letter,
)
from connector.config.settings import Settings
from connector.errors import ConnectorError, FatalError, RecordRejected
from connector.kafka.clients import reader_consumer
from connector.kafka.reader import (
    IDLE_S,
    PartitionReader,
    assign_reader,
    committed_offsets,
    partition_metadata,
    watermarks,
)
from connector.pipeline.offsets import PartitionOffsets
from connector.records import Coordinates, kafka_timestamp_ms

DEFAULT_GROUP = "kafka-stripe-dlq-replay"
TIMEOUT_S = 15.0
NOT_SENT = "not sent: the sender stopped (see below)"


class ReplayError(ConnectorError):
    """The replay cannot run (bad arguments, Kafka unreachable): exit status 2."""


class ReplayCommits:
    """The replay group's commits: per dead-letter partition, the first dead letter not settled (an
    undelivered one never is in this run), with the pipeline's ``PartitionOffsets``."""

    def __init__(self, topic: str, group: str, warn: Callable[[str], None]) -> None:
        self.topic = topic
        self.group = group
        self.warn = warn
        self.committed: dict[int, int] = {}
        self._partitions: dict[int, PartitionOffsets] = {}

    def taken(self, partition: int, offset: int) -> None:
        """The dead letter at ``offset`` was read (offsets arrive in increasing order per partition)."""
        offsets = self._partitions.get(partition)
        if offsets is None:
            offsets = self._partitions[partition] = PartitionOffsets(self.topic, partition)
        offsets.track(offset)

    def settled(self, partition: int, offset: int) -> None:
        """The dead letter at ``offset`` needs no other replay: delivered, failing for good or skipped."""
        self._partitions[partition].done(offset)

    def targets(self, read_to: Mapping[int, int] | None = None) -> dict[int, int]:
        """Where to commit: past every settled dead letter taken so far, or, with ``read_to`` (the
        reader's positions at the end, possibly past the last record: transaction markers), there."""
        if read_to is None:
            found = {p: offsets.committable() for p, offsets in self._partitions.items()}
            return {p: position for p, position in found.items() if position is not None}
        targets: dict[int, int] = {}
        for partition, position in read_to.items():
            offsets = self._partitions.get(partition)
            unsettled = offsets.committable() if offsets is not None and offsets.pending else None
            targets[partition] = position if unsettled is None else min(position, unsettled)
        return targets

    def commit(self, consumer: Any, read_to: Mapping[int, int] | None = None) -> None:
        """Commit ``targets(read_to)`` where it moved; a failed commit is a warning, not an error."""
        from confluent_kafka import KafkaException, TopicPartition

        offsets = [
            TopicPartition(self.topic, partition, target)
            for partition, target in self.targets(read_to).items()
            if self.committed.get(partition) != target
        ]
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self.warn(f"warning: could not commit group {self.group}: {exc}")
            return
        for tp in offsets:
            self.committed[tp.partition] = tp.offset


class _Sending:
    """The connector's ``MeterEventSender`` on an event loop of its own, made at the first batch."""

    def __init__(self, settings: Settings, factory: Callable[[], Any] | None) -> None:
        self.settings = settings
        self.factory = factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sender: Any = None

    def send(self, events: list[Any], context: str | None = None) -> Any:
        """The sender's result for one batch (all in ``context``); ``FatalError`` when it cannot go on."""
        if self._sender is None:
            self._sender = self._run(self._make())
        return self._run(self._sender.send(events, None, context))

    async def _make(self) -> Any:
        if self.factory is not None:
            return self.factory()
        from connector.stripe.contexts import ContextSenders

        return ContextSenders(self.settings.stripe, self.settings.sender)

    def _run(self, coroutine: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coroutine)

    def close(self) -> None:
        if self._sender is not None:
            self._run(self._sender.aclose())
            self._sender = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None


class Replay:
    """One pass over a dead-letter topic: read to its end, map, send in batches, commit, report."""

    def __init__(
        self,
        settings: Settings,
        dlq_topic: str,
        *,
        group: str = DEFAULT_GROUP,
        from_beginning: bool = False,
        dry_run: bool = False,
        out: TextIO | None = None,
        quiet: bool = False,
        sender_factory: Callable[[], Any] | None = None,
        idle_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.dlq_topic = dlq_topic
        self.group = group
        self.from_beginning = from_beginning
        self.dry_run = dry_run
        self.out = sys.stdout if out is None else out
        self.quiet = quiet
        self.idle_s = IDLE_S if idle_s is None else idle_s
        self.clock = clock
        self.redact = prologue.redactor(settings)
        self.totals = Totals()
        self.fatal: str | None = None
        self.commits = ReplayCommits(dlq_topic, group, self._say)
        self._sending = _Sending(settings, sender_factory)
        self._mappers: dict[str, Any] = {}
        self._namespaces: dict[str, str] = {}
        self._seen: dict[str, DeadLetter] = {}  # identifier -> the dead letter that sent it in this run
        self._pending: list[Outcome] = []

    # -- the pass -------------------------------------------------------------------------------

    def run(self) -> int:
        """Replay, print every outcome and the totals; 0 when nothing still fails or waits."""
        from confluent_kafka import KafkaException

        consumer = reader_consumer(self.settings, self.group)
        try:
            try:
                reader = self._open(consumer)
                self._replay(consumer, reader)
            except KafkaException as exc:
                raise ReplayError(f"Kafka: {exc}") from None
        finally:
            self._sending.close()
            consumer.close()
        self._summary()
        if self.fatal is not None:
            return 1
        return 1 if self.totals.still_failing or self.totals.undelivered else 0

    def _open(self, consumer: Any) -> PartitionReader:
        """Assign every partition where this replay starts, and say so."""
        partitions = partition_metadata(consumer, self.dlq_topic, TIMEOUT_S)
        marks = watermarks(consumer, self.dlq_topic, partitions, TIMEOUT_S)
        if self.from_beginning:
            starts = {p: marks[p][0] for p in partitions}
        else:
            starts = committed_offsets(consumer, self.dlq_topic, marks, TIMEOUT_S)
        reader = assign_reader(consumer, self.dlq_topic, starts, marks, idle_s=self.idle_s)
        where = "from the beginning" if self.from_beginning else f"after group {self.group}'s commits"
        mode = "dry run: nothing is sent or committed" if self.dry_run else f"committing group {self.group}"
        self._say(f"Replaying {self.dlq_topic} ({len(partitions)} partition(s)) {where}; {mode}")
        return reader

    def _replay(self, consumer: Any, reader: PartitionReader) -> None:
        for message in reader:
            self._take(message)
            if len(self._pending) >= self.settings.pipeline.batch_size:
                self._flush()
                self._commit(consumer)
            if self.fatal is not None:
                break
        self._flush()
        for warning in reader.warnings:
            self._say(f"warning: {warning}")
        # Read to the end (unless the sender stopped): commit where the reader stands.
        self._commit(consumer, None if self.fatal is not None else reader.positions())

    def _commit(self, consumer: Any, read_to: Mapping[int, int] | None = None) -> None:
        if not self.dry_run:
            self.commits.commit(consumer, read_to)

    def _take(self, message: Any) -> None:
        where = Coordinates(message.topic(), message.partition(), message.offset())
        dead_letter = parse_dead_letter(
            where, message.key(), message.value(), kafka_timestamp_ms(message), message.headers() or ()
        )
        self.totals.read += 1
        self.commits.taken(where.partition, where.offset)
        outcome = self._map(dead_letter)
        if outcome is not None:
            self._finish(outcome)

    def _map(self, dead_letter: DeadLetter) -> Outcome | None:
        """The outcome now, or None when the event waits in the pending batch."""
        record = dead_letter.original
        if record is None:
            return Outcome(dead_letter, "skipped", dead_letter.problem)
        if record.topic not in self.settings.topic_names:
            return Outcome(
                dead_letter,
                "still failing",
                f"topic {record.topic!r} is not in CONNECTOR_TOPICS: configure it (its event name, schema) "
                "to replay its records",
            )
        if self.settings.topic(record.topic).kind == "corrections":
            return Outcome(
                dead_letter,
                "still failing",
                "a correction: fix what its code says, then produce the record again to its corrections "
                "topic (dlq replay re-sends usage; the connector applies corrections)",
            )
        now_ms = int(self.clock() * 1000)
        mapper = self._mapper(record.topic)
        # The namespace the first attempt used (a topic re-created since has another id).
        mapper.use_namespace(dead_letter.namespace or self._namespace(record.topic))
        try:
            event = mapper.map_record(record, now_ms)
        except RecordRejected as exc:
            outcome = Outcome(dead_letter, "still failing", f"{exc.code}: {exc.reason}")
            if exc.code in AGE_CODES:
                outcome.warnings.append(AGE_CODES[exc.code])
            return outcome
        first = self._seen.get(event.identifier)
        if first is not None:
            detail = f"same identifier {event.identifier} as dead letter {first.where} in this replay"
            return Outcome(dead_letter, "skipped", detail, event)
        self._seen[event.identifier] = dead_letter
        outcome = Outcome(dead_letter, "would send" if self.dry_run else "delivered", "", event)
        warning = age_warning(dead_letter, now_ms)
        if warning is not None:
            outcome.warnings.append(warning)
        if self.dry_run:
            return outcome
        pending = self._pending
        if pending and pending[-1].event is not None and pending[-1].event.context != event.context:
            self._flush()  # a request speaks for one Stripe account
        self._pending.append(outcome)
        return None

    def _mapper(self, topic: str) -> Any:
        mapper = self._mappers.get(topic)
        if mapper is None:
            from connector.mapping.mapper import Mapper
            from connector.runtime.process import schema_lookup_for

            mapper = Mapper(self.settings.topic(topic), schema_lookup_for(self.settings))
            self._mappers[topic] = mapper
        return mapper

    def _namespace(self, topic: str) -> str:
        namespace = self._namespaces.get(topic)
        if namespace is None:
            from connector.kafka.topics import current_namespace

            configured = self.settings.topic(topic).namespace
            namespace = current_namespace(dict(self.settings.producer_config()), topic, configured)
            self._namespaces[topic] = namespace
        return namespace

    def _flush(self) -> None:
        """Send the pending events as one batch and settle each one."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        result = None
        if self.fatal is None:  # once the sender stopped, nothing more is sent in this run
            try:
                events = [o.event for o in batch if o.event is not None]
                result = self._sending.send(events, events[0].context if events else None)
            except FatalError as exc:
                self.fatal = self.redact(str(exc))
        if result is None:
            for outcome in batch:
                outcome.status, outcome.detail = "undelivered", NOT_SENT
                self._finish(outcome)
            return
        rejected = {r.index: r for r in result.rejected}
        undelivered = set(result.undelivered)
        for index, outcome in enumerate(batch):
            if index in rejected:
                outcome.status = "still failing"
                outcome.detail = f"Stripe refused it: {rejected[index].code}: {rejected[index].message}"
            elif index in undelivered:
                outcome.status = "undelivered"
                outcome.detail = f"no answer from Stripe to trust ({result.error}); replay again later"
            self._finish(outcome)

    def _finish(self, outcome: Outcome) -> None:
        self.totals.count(outcome)
        where = outcome.dead_letter.where
        if outcome.status != "undelivered":
            self.commits.settled(where.partition, where.offset)
        if self.quiet and outcome.status in ("delivered", "would send") and not outcome.warnings:
            return
        self._say(outcome_line(outcome))
        for warning in outcome.warnings:
            self._say(f"{'':15}warning: {warning}")

    # -- output -----------------------------------------------------------------------------------

    def _say(self, line: str) -> None:
        print(self.redact(line), file=self.out, flush=True)

    def _summary(self) -> None:
        t = self.totals
        if self.dry_run:
            parts = [f"{t.would_send} would be sent", f"{t.still_failing} would still fail"]
        else:
            parts = [f"{t.delivered} delivered", f"{t.still_failing} still failing"]
            if t.undelivered:
                parts.append(f"{t.undelivered} undelivered (not committed: replay again)")
        parts.append(f"{t.skipped} skipped")
        warned = f"; {t.warnings} warning(s)" if t.warnings else ""
        self._say("")
        self._say(f"{t.read} dead letter(s) read from {self.dlq_topic}: {', '.join(parts)}{warned}.")
        if self.fatal is not None:
            self._say(f"stopped: {self.fatal}")
        if self.dry_run and t.would_send:
            self._say(
                "Stripe validates events asynchronously: an event sent with 200 can still be refused later "
                "(unknown customer, no meter); `kafka-stripe check` and the meter's error reports tell."
            )
