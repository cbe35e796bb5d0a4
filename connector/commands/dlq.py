"""``kafka-stripe dlq replay``: send dead-lettered records through mapping and sending again.

After the cause of a rejection is fixed (a meter created, a schema or a customer corrected), each record of
a dead-letter topic is rebuilt as the record it was: the original topic, partition and offset come from
the ``__connect.errors.*`` headers the connector wrote, so a derived identifier (``kafka:{topic}:{p}:{o}``)
is the same as the first attempt's and Stripe deduplicates a record that was in fact delivered (within
its 24-hour identifier window). The record is mapped with the *original* topic's settings and sent with
the connector's ``MeterEventSender``.

Progress is kept in a consumer group of its own (``kafka-stripe-dlq-replay`` by default; never the
connector's), committed after each batch, so a second replay only looks at dead letters that arrived
since. ``--dry-run`` maps and reports without sending or committing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

from connector.config.settings import Settings, load_settings
from connector.errors import ConfigurationError, ConnectorError, FatalError, RecordRejected
from connector.records import Coordinates, KafkaRecord, MeterEvent, kafka_timestamp_ms

DEFAULT_GROUP = "kafka-stripe-dlq-replay"
IDENTIFIER_WINDOW_S = 24 * 3600  # Stripe deduplicates an identifier for 24 hours
TIMEOUT_S = 15.0

HEADER_TOPIC = "__connect.errors.topic"
HEADER_PARTITION = "__connect.errors.partition"
HEADER_OFFSET = "__connect.errors.offset"
HEADER_CODE = "kafka_stripe.error.code"
HEADER_REASON = "kafka_stripe.error.reason"
HEADER_ORIGINAL_TIMESTAMP = "kafka_stripe.original.timestamp"
_OUR_HEADER_PREFIXES = ("__connect.errors.", "kafka_stripe.")

Status = Literal["delivered", "would send", "still failing", "skipped", "undelivered"]


class ReplayError(ConnectorError):
    """The replay cannot run (bad arguments, Kafka unreachable): exit status 2."""


# ------------------------------------------------------------------------------------------ dead letters


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record of the dead-letter topic and, when its headers say, the original record it stands for."""

    where: Coordinates  # in the dead-letter topic
    original: KafkaRecord | None  # rebuilt from the headers; None when they are missing or garbled
    code: str  # why it was dead-lettered (kafka_stripe.error.code)
    reason: str
    problem: str = ""  # why it cannot be replayed (original is None)

    @property
    def label(self) -> str:
        return str(self.original.coordinates) if self.original is not None else str(self.where)


def parse_dead_letter(
    where: Coordinates,
    key: bytes | None,
    value: bytes | None,
    timestamp_ms: int | None,
    headers: Sequence[tuple[str, bytes | None]],
) -> DeadLetter:
    """Rebuild the original record from a dead letter's headers (``connector.kafka.deadletter``'s format)."""
    ours: dict[str, str] = {}
    original_headers: list[tuple[str, bytes | None]] = []
    for name, raw in headers:
        if name.startswith(_OUR_HEADER_PREFIXES):
            ours[name] = (raw or b"").decode("utf-8", "replace")  # the last one wins, as they are ours
        else:
            original_headers.append((name, raw))
    code = ours.get(HEADER_CODE, "")
    reason = ours.get(HEADER_REASON, "")
    topic = ours.get(HEADER_TOPIC)
    if not topic:
        return DeadLetter(
            where, None, code, reason, f"not a kafka-stripe dead letter: no {HEADER_TOPIC} header"
        )
    try:
        partition = int(ours.get(HEADER_PARTITION, ""))
        offset = int(ours.get(HEADER_OFFSET, ""))
    except ValueError:
        return DeadLetter(
            where,
            None,
            code,
            reason,
            f"garbled {HEADER_PARTITION}/{HEADER_OFFSET} headers: no original offset",
        )
    stamp = ours.get(HEADER_ORIGINAL_TIMESTAMP, "")
    original_ts = int(stamp) if stamp.lstrip("-").isdigit() else timestamp_ms
    record = KafkaRecord(topic, partition, offset, key, value, original_ts, tuple(original_headers))
    return DeadLetter(where, record, code, reason)


@dataclass(slots=True)
class Outcome:
    """What became of one dead letter in this replay."""

    dead_letter: DeadLetter
    status: Status
    detail: str = ""
    event: MeterEvent | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class Totals:
    read: int = 0
    delivered: int = 0
    would_send: int = 0
    still_failing: int = 0
    skipped: int = 0
    undelivered: int = 0
    warnings: int = 0

    def count(self, outcome: Outcome) -> None:
        name = outcome.status.replace(" ", "_")
        setattr(self, name, getattr(self, name) + 1)
        self.warnings += len(outcome.warnings)


def age_warning(dead_letter: DeadLetter, now_ms: int) -> str | None:
    """Replaying a record first sent more than 24 hours ago is no longer deduplicated by Stripe."""
    record = dead_letter.original
    if record is None or record.timestamp_ms is None:
        return None
    age_s = (now_ms - record.timestamp_ms) / 1000
    if age_s <= IDENTIFIER_WINDOW_S:
        return None
    return (
        f"the original record is {age_s / 86_400:.1f} days old, beyond Stripe's 24-hour identifier window: "
        "Stripe no longer deduplicates it, so if it was ever accepted (by an earlier replay, or by the "
        "connector after a restart) it now counts twice; the connector never sends a record it dead-lettered"
    )


_AGE_CODES = {
    "timestamp_too_far_in_past": (
        "its event timestamp is older than Stripe's 35-day window: Stripe refuses it, so this usage can no "
        "longer be metered (bill it another way, e.g. an invoice item)"
    ),
    "timestamp_in_future": "its event timestamp is still more than the allowed tolerance ahead of now",
}


# ----------------------------------------------------------------------------------------------- replay


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
        self.sender_factory = sender_factory
        self.idle_s = idle_s
        self.clock = clock
        self.totals = Totals()
        self.fatal: str | None = None
        self.committed: dict[int, int] = {}
        self._mappers: dict[str, Any] = {}
        self._seen: dict[str, DeadLetter] = {}  # identifier -> the dead letter that sent it in this run
        self._pending: list[Outcome] = []
        self._blocked: dict[int, int] = {}  # DLQ partition -> first offset not settled (undelivered)
        self._processed: dict[int, int] = {}  # DLQ partition -> offset after the last record taken
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sender: Any = None

    # -- the pass -------------------------------------------------------------------------------

    def run(self) -> int:
        from confluent_kafka import KafkaException, TopicPartition

        from connector.commands.reconcile import (
            IDLE_S,
            PartitionReader,
            ReconcileError,
            partition_metadata,
            reader_consumer,
            watermarks,
        )

        consumer = reader_consumer(self.settings, self.group)
        try:
            try:
                partitions = partition_metadata(consumer, self.dlq_topic, TIMEOUT_S)
                marks = watermarks(consumer, self.dlq_topic, partitions, TIMEOUT_S)
                starts = {p: marks[p][0] for p in partitions}
                if not self.from_beginning:
                    tps = [TopicPartition(self.dlq_topic, p) for p in partitions]
                    for tp in consumer.committed(tps, timeout=TIMEOUT_S):
                        if tp.offset >= 0:
                            starts[tp.partition] = max(tp.offset, marks[tp.partition][0])
            except ReconcileError as exc:
                raise ReplayError(str(exc)) from None
            except KafkaException as exc:
                raise ReplayError(f"Kafka: {exc}") from None
            consumer.assign([TopicPartition(self.dlq_topic, p, starts[p]) for p in partitions])
            reader = PartitionReader(
                consumer,
                self.dlq_topic,
                starts,
                {p: marks[p][1] for p in partitions},
                {p: marks[p][0] for p in partitions},
                idle_s=IDLE_S if self.idle_s is None else self.idle_s,
            )
            where = "from the beginning" if self.from_beginning else f"after group {self.group}'s commits"
            mode = (
                "dry run: nothing is sent or committed" if self.dry_run else f"committing group {self.group}"
            )
            self._say(f"Replaying {self.dlq_topic} ({len(partitions)} partition(s)) {where}; {mode}")
            try:
                for message in reader:
                    self._take(message)
                    if len(self._pending) >= self.settings.pipeline.batch_size:
                        self._flush()
                        self._commit(consumer, self._processed)
                    if self.fatal is not None:
                        break
                self._flush()
            except KafkaException as exc:
                raise ReplayError(f"Kafka: {exc}") from None
            for warning in reader.warnings:
                self._say(f"warning: {warning}")
            # Read to the end: the reader's positions may lie past the last record (transaction markers).
            self._commit(consumer, self._processed if self.fatal is not None else reader.positions())
        finally:
            self._close_sender()
            consumer.close()
        self._summary()
        if self.fatal is not None:
            return 1
        return 1 if self.totals.still_failing or self.totals.undelivered else 0

    def _take(self, message: Any) -> None:
        where = Coordinates(message.topic(), message.partition(), message.offset())
        dead_letter = parse_dead_letter(
            where, message.key(), message.value(), kafka_timestamp_ms(message), message.headers() or ()
        )
        self.totals.read += 1
        self._processed[where.partition] = where.offset + 1
        outcome = self._map(dead_letter)
        if outcome is None:
            return
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
        mapper = self._mapper(record.topic)
        now_ms = int(self.clock() * 1000)
        try:
            event = mapper.map_record(record, now_ms)
        except RecordRejected as exc:
            outcome = Outcome(dead_letter, "still failing", f"{exc.code}: {exc.reason}")
            if exc.code in _AGE_CODES:
                outcome.warnings.append(_AGE_CODES[exc.code])
            return outcome
        first = self._seen.get(event.identifier)
        if first is not None:
            return Outcome(
                dead_letter,
                "skipped",
                f"same identifier {event.identifier} as dead letter {first.where} in this replay",
                event,
            )
        self._seen[event.identifier] = dead_letter
        outcome = Outcome(dead_letter, "would send" if self.dry_run else "delivered", "", event)
        warning = age_warning(dead_letter, now_ms)
        if warning is not None:
            outcome.warnings.append(warning)
        if self.dry_run:
            return outcome
        self._pending.append(outcome)
        return None

    def _mapper(self, topic: str) -> Any:
        mapper = self._mappers.get(topic)
        if mapper is None:
            from connector.mapping.mapper import Mapper
            from connector.pipeline.loop import schema_lookup_for

            mapper = Mapper(self.settings.topic(topic), schema_lookup_for(self.settings))
            self._mappers[topic] = mapper
        return mapper

    def _flush(self) -> None:
        """Send the pending events as one batch and settle each one."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        if self.fatal is not None:  # the sender stopped: nothing more is sent in this run
            for outcome in batch:
                outcome.status, outcome.detail = "undelivered", "not sent: the sender stopped (see below)"
                self._finish(outcome)
            return
        events = [outcome.event for outcome in batch if outcome.event is not None]
        try:
            result = self._run(self._ensure_sender().send(events))
        except FatalError as exc:
            self.fatal = self.settings.scrub(str(exc))
            for outcome in batch:
                outcome.status = "undelivered"
                outcome.detail = "not sent: the sender stopped (see below)"
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
        if outcome.status == "undelivered":
            current = self._blocked.get(where.partition)
            if current is None or where.offset < current:
                self._blocked[where.partition] = where.offset
        if self.quiet and outcome.status in ("delivered", "would send") and not outcome.warnings:
            return
        self._say(_line(outcome))
        for warning in outcome.warnings:
            self._say(f"{'':15}warning: {warning}")

    def _commit(self, consumer: Any, positions: Mapping[int, int]) -> None:
        """Commit, per partition, past every settled dead letter (never past an undelivered one)."""
        if self.dry_run:
            return
        from confluent_kafka import KafkaException, TopicPartition

        offsets: list[Any] = []
        for partition, position in positions.items():
            target = min(position, self._blocked.get(partition, position))
            if self.committed.get(partition) != target:
                offsets.append(TopicPartition(self.dlq_topic, partition, target))
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self._say(f"warning: could not commit group {self.group}: {exc}")
            return
        for tp in offsets:
            self.committed[tp.partition] = tp.offset

    # -- the sender -------------------------------------------------------------------------------

    def _run(self, coroutine: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coroutine)

    def _ensure_sender(self) -> Any:
        if self._sender is None:

            async def make() -> Any:
                if self.sender_factory is not None:
                    return self.sender_factory()
                from connector.stripe.sender import MeterEventSender

                return MeterEventSender.from_settings(self.settings.stripe, self.settings.sender)

            self._sender = self._run(make())
        return self._sender

    def _close_sender(self) -> None:
        if self._sender is not None:
            self._run(self._sender.aclose())
            self._sender = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    # -- output -----------------------------------------------------------------------------------

    def _say(self, line: str) -> None:
        print(self.settings.scrub(line), file=self.out, flush=True)

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


def _line(outcome: Outcome) -> str:
    dead_letter = outcome.dead_letter
    head = f"{outcome.status:<14} {dead_letter.label}"
    if dead_letter.original is not None:
        head += f" (dead letter {dead_letter.where.partition}@{dead_letter.where.offset})"
    event = outcome.event
    if event is not None and outcome.status in ("delivered", "would send"):
        customer_value = " ".join(f"{k}={v}" for k, v in list(event.payload.items())[:4])
        text = f"{head}  {event.identifier}  {event.timestamp}  {customer_value}"
        if dead_letter.code:
            text += f"  (was {dead_letter.code})"
        return text
    return f"{head}  {outcome.detail}" if outcome.detail else head


# --------------------------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="dlq_command", metavar="ACTION")
    replay = commands.add_parser(
        "replay",
        help="map and send the records of a dead-letter topic again, after their cause was fixed",
        description="Map and send the records of a dead-letter topic again, with the original topic's "
        "settings and identifiers; progress is committed to a consumer group of the replay's own.",
    )
    replay.add_argument("--topic", required=True, help="the dead-letter topic, e.g. usage.dlq")
    replay.add_argument(
        "--dry-run", action="store_true", help="show what would be sent and what still fails; send nothing"
    )
    start = replay.add_mutually_exclusive_group()
    start.add_argument(
        "--from-beginning",
        action="store_true",
        help=f"read the whole topic, ignoring what the group ({DEFAULT_GROUP}) committed",
    )
    start.add_argument(
        "--group",
        default=DEFAULT_GROUP,
        help=f"consumer group keeping the replay's progress (default {DEFAULT_GROUP})",
    )
    replay.add_argument("--quiet", action="store_true", help="print only failures, warnings and the totals")


def run(args: argparse.Namespace) -> int:
    from connector.commands.check import report_problems

    if getattr(args, "dlq_command", None) != "replay":
        print(
            "usage: kafka-stripe dlq replay --topic TOPIC.dlq [--dry-run] [--from-beginning | --group G]",
            file=sys.stderr,
        )
        return 2
    environ = dict(os.environ)
    try:
        settings = load_settings(environ)
    except ConfigurationError as error:
        report_problems("dlq replay", error, environ, sys.stderr)
        return 2
    if args.topic in settings.topic_names:
        print(
            f"kafka-stripe dlq replay: {args.topic!r} is a consumed topic, not a dead-letter topic "
            f"(dead-letter topics: {', '.join(t.dlq_topic for t in settings.topics)})",
            file=sys.stderr,
        )
        return 2
    if args.group == settings.kafka.group_id:
        print(
            f"kafka-stripe dlq replay: --group {args.group} is the connector's own group (KAFKA_GROUP_ID); "
            "use another one",
            file=sys.stderr,
        )
        return 2
    replay = Replay(
        settings,
        args.topic,
        group=args.group,
        from_beginning=args.from_beginning,
        dry_run=args.dry_run,
        quiet=args.quiet,
    )
    try:
        return replay.run()
    except (ReplayError, ConnectorError) as exc:
        print(f"kafka-stripe dlq replay: {settings.scrub(str(exc))}", file=sys.stderr)
        return 2
