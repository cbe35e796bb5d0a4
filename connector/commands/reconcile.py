"""``kafka-stripe reconcile``: compare a topic's usage in an event-time range with Stripe's meter summaries.

The records are re-read with a throwaway consumer that only ``assign()``s partitions and never commits,
so the connector's consumer group is never touched. Each record is mapped exactly as the connector maps
it (same topic settings, same derived identifiers), deduplicated by identifier as Stripe does, kept when
its *event* timestamp falls in [start, end), and aggregated per customer (and hour or day with
``--window``) with the meter's formula. The totals are then compared with
``GET /v1/billing/meters/{id}/event_summaries`` for the same customers and windows.

Reading "to the end" of a partition is also used by ``kafka-stripe dlq replay`` (``PartitionReader``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TextIO

from connector.config.settings import Settings, TopicSettings, load_settings
from connector.errors import ConfigurationError, ConnectorError, RecordRejected
from connector.records import KafkaRecord, MeterEvent

WINDOW_SECONDS = {"hour": 3600, "day": 86_400}
# Records are looked up by Kafka timestamp from this long before --start: a record's Kafka timestamp
# may precede its event timestamp (events up to 5 minutes ahead are accepted, producer clocks drift).
SEEK_SLACK_S = 3600
# Stripe aggregates meter events asynchronously: windows ending less than this long ago may still move.
RECENT_S = 15 * 60
IDLE_S = 2.0  # a partition at/after its high watermark is done after this long without a record
STALL_S = 30.0  # a partition that makes no progress at all for this long is given up (with a warning)
NO_CUSTOMER = "(unknown customer)"

log = logging.getLogger("kafka_stripe.reconcile")


class ReconcileError(ConnectorError):
    """Reconciliation cannot be done (bad arguments, no meter, Kafka or Stripe unreachable): exit 2."""


# -------------------------------------------------------------------------------------- time arguments


def parse_instant(text: str, option: str) -> int:
    """An instant given on the command line, as unix seconds.

    Accepts ISO 8601 with a ``Z`` or an offset (``2026-11-01T00:00Z``, ``2026-11-01T00:00:00+01:00``), a
    bare date (``2026-11-01``, midnight UTC) or unix seconds. A date-time without a zone is refused: it
    is ambiguous, and Stripe's windows are UTC.
    """
    value = text.strip()
    if value.isdigit():
        return int(value)
    try:
        if len(value) == 10:
            moment = datetime.fromisoformat(value).replace(tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(value)
    except ValueError:
        raise ReconcileError(
            f"{option} {text!r} is not a date-time: use ISO 8601 with a zone, e.g. 2026-11-01T00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise ReconcileError(f"{option} {text!r} has no time zone: add Z (UTC) or an offset such as +01:00")
    return math.floor(moment.timestamp())


def validate_range(start: int, end: int, window: str | None) -> list[str]:
    """Problems with [start, end): Stripe wants it aligned to the minute, or the hour/day of the window."""
    problems: list[str] = []
    step, unit = (WINDOW_SECONDS[window], f"the {window}") if window else (60, "the minute")
    if window == "day":
        unit = "a day (00:00 UTC)"
    why = f" (required with --window {window})" if window else " (Stripe summarises whole minutes)"
    for option, value in (("--start", start), ("--end", end)):
        if value % step:
            down = value - value % step
            problems.append(
                f"{option} {iso(value)} is not aligned to {unit}{why}: use {iso(down)} or {iso(down + step)}"
            )
    if end <= start:
        problems.append(f"--end {iso(end)} must be after --start {iso(start)}")
    return problems


def iso(seconds: int) -> str:
    """``2026-11-01T00:00:00Z``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_millis(timestamp: str) -> int:
    """Unix milliseconds of a meter event's RFC 3339 timestamp, in exact integer arithmetic."""
    delta = datetime.fromisoformat(timestamp) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


# ------------------------------------------------------------------------------- reading to the end


@dataclass(slots=True)
class _Partition:
    high: int  # high watermark when reading started (too low on Tansu; see PartitionReader)
    position: int  # next offset to read, as far as we know
    last_progress: float
    done: bool = False


class PartitionReader:
    """Consume assigned partitions of one topic until each is read to its end, then stop.

    "The end" is the high watermark when reading starts, but that number cannot be trusted everywhere:
    the embedded test broker (Tansu) answers the base offset of the last produced batch + 1, short of the
    real end. So a partition is done when librdkafka reports end-of-partition (``enable.partition.eof``,
    which follows the fetch responses and is right on both), or, as a fallback, when its position is at
    or past the high watermark and no record arrived for ``idle_s``. A partition that makes no progress
    at all for ``stall_s`` is given up with a warning rather than waited for forever. Records arriving
    after the start are read too if they come before the end is seen: the tail of a busy topic is
    chased until the consumer catches up.

    The consumer must have ``enable.partition.eof=true``; done partitions are paused.
    """

    def __init__(
        self,
        consumer: Any,
        topic: str,
        starts: Mapping[int, int],
        highs: Mapping[int, int],
        lows: Mapping[int, int],
        *,
        idle_s: float = IDLE_S,
        stall_s: float = STALL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self.topic = topic
        self.idle_s = idle_s
        self.stall_s = stall_s
        self.clock = clock
        now = clock()
        self.partitions = {
            p: _Partition(highs[p], start if start >= 0 else lows[p], now) for p, start in starts.items()
        }
        self.warnings: list[str] = []
        self.read = 0

    def positions(self) -> dict[int, int]:
        """Next offset to read per partition: what a consumer group would commit after this read."""
        return {p: state.position for p, state in self.partitions.items()}

    def __iter__(self) -> Iterator[Any]:
        from confluent_kafka import KafkaError, KafkaException

        while not all(state.done for state in self.partitions.values()):
            messages = self.consumer.consume(500, 0.2)
            now = self.clock()
            for message in messages:
                error = message.error()
                state = self.partitions.get(message.partition())
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        if state is not None and not state.done:
                            state.position = max(state.position, message.offset())
                            self._finish(message.partition(), state)
                        continue
                    if error.fatal() or error.code() in (
                        KafkaError.UNKNOWN_TOPIC_OR_PART,
                        KafkaError._UNKNOWN_TOPIC,
                        KafkaError.TOPIC_AUTHORIZATION_FAILED,
                        KafkaError.GROUP_AUTHORIZATION_FAILED,
                    ):
                        raise KafkaException(error)
                    log.warning("consumer error: %s", error)
                    continue
                if state is None or state.done:
                    continue
                state.position = message.offset() + 1
                state.last_progress = now
                self.read += 1
                yield message
            for partition, state in self.partitions.items():
                if state.done:
                    continue
                quiet = now - state.last_progress
                if state.position >= state.high and quiet >= self.idle_s:
                    self._finish(partition, state)
                elif quiet >= self.stall_s:
                    self.warnings.append(
                        f"{self.topic}[{partition}]: no record for {self.stall_s:g} s at offset "
                        f"{state.position}, short of the high watermark {state.high}: stopped reading there"
                    )
                    self._finish(partition, state)

    def _finish(self, partition: int, state: _Partition) -> None:
        from confluent_kafka import TopicPartition

        state.done = True
        # Pausing only saves fetches: records of a done partition are ignored anyway.
        with contextlib.suppress(Exception):
            self.consumer.pause([TopicPartition(self.topic, partition)])


def partition_metadata(consumer: Any, topic: str, timeout: float) -> list[int]:
    """The topic's partitions; ``ReconcileError`` when it does not exist or Kafka does not answer."""
    from confluent_kafka import KafkaException

    try:
        metadata = consumer.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise ReconcileError(f"Kafka did not answer a metadata request within {timeout:g} s: {exc}") from None
    found = metadata.topics.get(topic)
    if found is None:
        raise ReconcileError(f"topic {topic!r} does not exist")
    if found.error is not None:
        raise ReconcileError(f"topic {topic!r}: {found.error.str()}")
    return sorted(found.partitions)


def watermarks(
    consumer: Any, topic: str, partitions: Sequence[int], timeout: float
) -> dict[int, tuple[int, int]]:
    from confluent_kafka import KafkaException, TopicPartition

    marks: dict[int, tuple[int, int]] = {}
    for partition in partitions:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        except KafkaException as exc:
            raise ReconcileError(f"{topic}[{partition}]: no watermark offsets: {exc}") from None
        marks[partition] = (int(low), int(high))
    return marks


def reader_consumer(settings: Settings, group_id: str) -> Any:
    """A consumer that reads by ``assign()``, commits nothing by itself and reports partition ends."""
    from confluent_kafka import Consumer

    config: dict[str, Any] = settings.consumer_config()
    config.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            # librdkafka's INFO chatter (disconnects) stays out of the output; warnings still show.
            "logger": logging.getLogger("kafka_stripe.kafka"),
        }
    )
    return Consumer(config)


# -------------------------------------------------------------------------------------------- tallying


@dataclass(slots=True)
class _Counted:
    customer: str
    window: int  # start of the window (the range start without --window)
    value: Decimal
    order: tuple[int, int, int, int]  # (event ms, Kafka ms, partition, offset): "last" takes the max


@dataclass
class Tally:
    """Usage per (customer, window) as Stripe would count it from these records."""

    topic: TopicSettings
    formula: str
    start: int
    end: int
    window: str | None
    read: int = 0
    in_range: int = 0  # set by totals()
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    # Own identifiers (derived ones are unique by construction): the first receipt counts.
    _claimed: dict[str, tuple[tuple[int, int, int], _Counted | None]] = field(default_factory=dict)
    _derived: list[_Counted] = field(default_factory=list)

    def add_rejected(self, code: str) -> None:
        self.read += 1
        self.rejected[code] += 1

    def add(self, event: MeterEvent, record: KafkaRecord, derived_prefix: str) -> None:
        self.read += 1
        millis = event_millis(event.timestamp)
        kafka_ms = record.timestamp_ms if record.timestamp_ms is not None else 0
        counted: _Counted | None = None
        if self.start * 1000 <= millis < self.end * 1000:
            payload = event.payload
            customer = payload.get(self.topic.customer_key, NO_CUSTOMER)
            try:
                value = Decimal(payload.get(self.topic.value_key, "0"))
            except InvalidOperation:
                value = Decimal(0)
            size = WINDOW_SECONDS[self.window] if self.window else None
            second = millis // 1000
            window = self.start if size is None else second - second % size
            counted = _Counted(customer, window, value, (millis, kafka_ms, record.partition, record.offset))
        if event.identifier.startswith(derived_prefix):
            if counted is not None:
                self._derived.append(counted)
            return
        # An identifier of the record's own may repeat: Stripe counts the copy it received first, which
        # is the one produced first (ties broken by partition and offset), wherever its event time falls.
        receipt = (kafka_ms, record.partition, record.offset)
        previous = self._claimed.get(event.identifier)
        if previous is not None:
            self.duplicates += 1
            if previous[0] <= receipt:
                return
        self._claimed[event.identifier] = (receipt, counted)

    def totals(self) -> dict[tuple[str, int], Decimal]:
        """(customer, window start) -> aggregated value with the meter's formula."""
        counted = self._derived + [c for _, c in self._claimed.values() if c is not None]
        self.in_range = len(counted)
        sums: dict[tuple[str, int], Decimal] = {}
        latest: dict[tuple[str, int], _Counted] = {}
        for item in counted:
            key = (item.customer, item.window)
            if self.formula == "count":
                sums[key] = sums.get(key, Decimal(0)) + 1
            elif self.formula == "last":
                best = latest.get(key)
                if best is None or item.order > best.order:
                    latest[key] = item
            else:
                sums[key] = sums.get(key, Decimal(0)) + item.value
        if self.formula == "last":
            return {key: item.value for key, item in latest.items()}
        return sums


# --------------------------------------------------------------------------------------------- compare


@dataclass(frozen=True, slots=True)
class Row:
    """One customer and window: what Kafka says Stripe should hold, and what Stripe holds."""

    customer: str
    window_start: int
    window_end: int
    kafka: Decimal
    stripe: float | None  # None: Stripe could not answer for this customer
    note: str = ""

    @property
    def difference(self) -> Decimal | None:
        if self.stripe is None:
            return None
        return Decimal(repr(self.stripe)) - self.kafka

    @property
    def differs(self) -> bool:
        if self.stripe is None:
            return True
        return not math.isclose(float(self.kafka), self.stripe, rel_tol=1e-12, abs_tol=1e-9)


@dataclass
class Report:
    topic: str
    event_name: str
    meter_id: str
    formula: str
    start: int
    end: int
    window: str | None
    tally: Tally
    rows: list[Row]
    partitions: int
    warnings: list[str]

    @property
    def differences(self) -> list[Row]:
        return [row for row in self.rows if row.differs]


def compare(
    client: Any,
    meter_id: str,
    expected: Mapping[tuple[str, int], Decimal],
    customers: Sequence[str],
    start: int,
    end: int,
    window: str | None,
) -> list[Row]:
    """Fetch Stripe's summaries for ``customers`` and line them up with ``expected``."""
    from connector.stripe.v1 import StripeApiError

    size = WINDOW_SECONDS[window] if window else end - start
    rows: list[Row] = []
    for customer in customers:
        mine = {w: v for (c, w), v in expected.items() if c == customer}
        theirs: dict[int, float] | None
        try:
            summaries = client.meter_event_summaries(meter_id, customer, start, end, window)
        except StripeApiError as exc:
            if exc.status != 400:  # the key, the meter or the network: nothing per customer about it
                raise
            theirs, note = None, f"Stripe: {exc.detail}"  # e.g. "No such customer: 'cus_…'"
            windows = sorted(mine) or [start]
        else:
            theirs = {s.start_time: s.aggregated_value for s in summaries if start <= s.start_time < end}
            note = ""
            windows = sorted(set(mine) | set(theirs))
        for window_start in windows:
            stripe_value = None if theirs is None else theirs.get(window_start, 0.0)
            rows.append(
                Row(
                    customer,
                    window_start,
                    window_start + size,
                    mine.get(window_start, Decimal(0)),
                    stripe_value,
                    note,
                )
            )
    return rows


# ---------------------------------------------------------------------------------------------- running


def reconcile(
    settings: Settings,
    topic: TopicSettings,
    start: int,
    end: int,
    window: str | None,
    *,
    customers: Sequence[str] = (),
    from_beginning: bool = False,
    timeout: float = 15.0,
    idle_s: float = IDLE_S,
    progress: TextIO | None = None,
) -> Report:
    """Read, map, tally and compare; raises ``ReconcileError`` when it cannot be done."""
    from confluent_kafka import KafkaException, TopicPartition

    from connector.mapping.mapper import Mapper, identifier_prefix
    from connector.pipeline.loop import schema_lookup_for
    from connector.stripe.v1 import StripeApiError, StripeClient

    with StripeClient.from_settings(settings.stripe, settings.sender) as client:
        try:
            meter = client.active_meter(topic.event_name)
        except StripeApiError as exc:
            raise ReconcileError(settings.scrub(f"could not look up the meter: {exc}")) from None
        if meter is None:
            raise ReconcileError(
                f"no active meter has event_name {topic.event_name!r} (topic {topic.name}): nothing at "
                "Stripe to compare with; `kafka-stripe check` says more"
            )
        warnings: list[str] = []
        if (meter.customer_key, meter.value_key) != (topic.customer_key, topic.value_key):
            warnings.append(
                f"meter {meter.id} reads payload keys {meter.customer_key!r}/{meter.value_key!r}, the topic "
                f"writes {topic.customer_key!r}/{topic.value_key!r}: Stripe cannot have counted these events"
            )

        # The 35-day age limit is lifted: a historical window must reconcile too. Records the connector
        # dead-lettered for their age then show as usage Stripe does not have, which is the truth.
        mapper = Mapper(dataclasses.replace(topic, max_past_seconds=10**11), schema_lookup_for(settings))
        tally = Tally(topic, meter.formula, start, end, window)
        prefix = identifier_prefix(topic.name)
        consumer = reader_consumer(settings, f"kafka-stripe-reconcile-{uuid.uuid4().hex[:12]}")
        try:
            partitions = partition_metadata(consumer, topic.name, timeout)
            marks = watermarks(consumer, topic.name, partitions, timeout)
            if from_beginning:
                starts = {p: marks[p][0] for p in partitions}
            else:
                # offsets_for_times is only a shortcut (Tansu answers 0 for every partition): every record
                # is still filtered by its mapped event timestamp below.
                wanted = [TopicPartition(topic.name, p, (start - SEEK_SLACK_S) * 1000) for p in partitions]
                found = consumer.offsets_for_times(wanted, timeout=timeout)
                starts = {
                    tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1] for tp in found
                }
            consumer.assign([TopicPartition(topic.name, p, starts[p]) for p in partitions])
            reader = PartitionReader(
                consumer,
                topic.name,
                starts,
                {p: marks[p][1] for p in partitions},
                {p: marks[p][0] for p in partitions},
                idle_s=idle_s,
            )
            now_ms = int(time.time() * 1000)
            next_note = time.monotonic() + 10.0
            for message in reader:
                record = KafkaRecord.from_message(message)
                try:
                    event = mapper.map_record(record, now_ms)
                except RecordRejected as exc:
                    tally.add_rejected(exc.code)
                else:
                    tally.add(event, record, prefix)
                if progress is not None and time.monotonic() >= next_note:
                    print(f"reconcile: {reader.read:,} records read", file=progress, flush=True)
                    next_note = time.monotonic() + 10.0
            warnings.extend(reader.warnings)
        except KafkaException as exc:
            raise ReconcileError(settings.scrub(f"Kafka: {exc}")) from None
        finally:
            consumer.close()

        expected = tally.totals()
        wanted_customers = list(dict.fromkeys(customers)) or sorted({c for c, _ in expected})
        if customers:
            only = set(customers)
            expected = {k: v for k, v in expected.items() if k[0] in only}
        try:
            rows = compare(client, meter.id, expected, wanted_customers, start, end, window)
        except StripeApiError as exc:
            raise ReconcileError(settings.scrub(f"could not read the meter event summaries: {exc}")) from None
    return Report(
        topic.name,
        topic.event_name,
        meter.id,
        meter.formula,
        start,
        end,
        window,
        tally,
        rows,
        len(partitions),
        warnings,
    )


# ---------------------------------------------------------------------------------------------- output


def _number(value: Decimal | float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def render(report: Report, now: float, show_all: bool = False) -> str:
    tally = report.tally
    window = f"by {report.window}" if report.window else "one total per customer"
    lines = [
        f"Reconciling topic {report.topic} (event_name {report.event_name!r}) with meter {report.meter_id} "
        f"(formula {report.formula})",
        f"  range   {iso(report.start)} - {iso(report.end)} (end excluded), {window}",
        f"  Kafka   {tally.read:,} records read from {report.partitions} partition(s); "
        f"{tally.in_range:,} events in range; {tally.duplicates:,} duplicate identifier(s) counted once",
    ]
    if tally.rejected:
        codes = ", ".join(f"{code} {count}" for code, count in tally.rejected.most_common())
        lines.append(
            f"          {sum(tally.rejected.values()):,} record(s) rejected by the mapping, skipped: {codes}"
        )
    customers = len({row.customer for row in report.rows})
    lines.append(f"  Stripe  summaries for {customers} customer(s), {len(report.rows)} customer window(s)")
    lines += [f"  warning: {warning}" for warning in report.warnings]
    shown = report.rows if show_all else report.differences
    if shown:
        width = max(len(row.customer) for row in shown)
        width = max(width, len("customer"))
        lines.append("")
        heads = ("kafka", "stripe", "difference")
        lines.append(
            f"  {'customer':<{width}}  {'window start':<20}  " + "  ".join(f"{h:>18}" for h in heads)
        )
        for row in shown:
            flag = "" if row.differs else "  (same)"
            if row.differs and row.window_end > now - RECENT_S:
                flag = "  (recent: Stripe may still be aggregating)"
            if row.note:
                flag += f"  {row.note}"
            lines.append(
                f"  {row.customer:<{width}}  {iso(row.window_start):<20}  {_number(row.kafka):>18}  "
                f"{_number(row.stripe):>18}  {_number(row.difference):>18}{flag}"
            )
    lines.append("")
    count = len(report.differences)
    if count:
        lines.append(
            f"{count} of {len(report.rows)} customer window(s) differ (difference = stripe - kafka)."
        )
        if report.end > now - RECENT_S:
            lines.append(
                "The range reaches into the last 15 minutes: Stripe aggregates meter events asynchronously, "
                "so recent windows can lag for a few minutes; run again before acting on them."
            )
    else:
        lines.append(f"No differences: {len(report.rows)} customer window(s) match.")
    return "\n".join(lines)


def as_json(report: Report) -> dict[str, Any]:
    tally = report.tally
    return {
        "topic": report.topic,
        "event_name": report.event_name,
        "meter": report.meter_id,
        "formula": report.formula,
        "start": iso(report.start),
        "end": iso(report.end),
        "window": report.window,
        "kafka": {
            "records_read": tally.read,
            "events_in_range": tally.in_range,
            "duplicates": tally.duplicates,
            "rejected": dict(tally.rejected),
        },
        "warnings": report.warnings,
        "differences": len(report.differences),
        "rows": [
            {
                "customer": row.customer,
                "window_start": iso(row.window_start),
                "window_end": iso(row.window_end),
                "kafka": _number(row.kafka),
                "stripe": _number(row.stripe),
                "difference": _number(row.difference),
                "differs": row.differs,
                "note": row.note,
            }
            for row in report.rows
        ],
    }


# --------------------------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic", required=True, help="a consumed topic (CONNECTOR_TOPICS)")
    parser.add_argument(
        "--start",
        required=True,
        help="range start, inclusive: 2026-11-01T00:00Z (aligned to the minute/window)",
    )
    parser.add_argument("--end", required=True, help="range end, exclusive: 2026-11-02T00:00Z")
    parser.add_argument(
        "--window", choices=tuple(WINDOW_SECONDS), help="compare per hour or per day instead of one total"
    )
    parser.add_argument(
        "--customer",
        action="append",
        default=[],
        metavar="CUS",
        help="only this customer (repeatable); compared even when Kafka has no usage for it",
    )
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="read whole partitions instead of seeking by timestamp (for topics with unreliable timestamps)",
    )
    parser.add_argument(
        "--all", action="store_true", help="print every customer window, not only differences"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from connector.commands.check import report_problems

    environ = dict(os.environ)
    try:
        settings = load_settings(environ)
    except ConfigurationError as error:
        report_problems("reconcile", error, environ, sys.stderr)
        return 2
    try:
        if args.topic not in settings.topic_names:
            raise ReconcileError(
                f"topic {args.topic!r} is not consumed by this configuration (CONNECTOR_TOPICS: "
                f"{', '.join(settings.topic_names)})"
            )
        start = parse_instant(args.start, "--start")
        end = parse_instant(args.end, "--end")
        problems = validate_range(start, end, args.window)
        if problems:
            raise ReconcileError("; ".join(problems))
        report = reconcile(
            settings,
            settings.topic(args.topic),
            start,
            end,
            args.window,
            customers=args.customer,
            from_beginning=args.from_beginning,
            progress=sys.stderr,
        )
    except ReconcileError as exc:
        print(f"kafka-stripe reconcile: {settings.scrub(str(exc))}", file=sys.stderr)
        return 2
    except ConnectorError as exc:
        print(f"kafka-stripe reconcile: {settings.scrub(str(exc))}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(as_json(report), indent=2))
    else:
        print(render(report, time.time(), show_all=args.all))
    return 1 if report.differences else 0
