"""``kafka-stripe reconcile``: compare a topic's usage in an event-time range with Stripe's meter summaries.

The records are re-read with a throwaway consumer that only ``assign()``s partitions and never commits,
so the connector's consumer group is never touched. Each record is mapped exactly as the connector maps
it (same topic settings, same derived identifiers), deduplicated by identifier as Stripe does, kept when
its *event* timestamp falls in [start, end), and aggregated per customer (and hour or day with
``--window``) with the meter's formula. The totals are then compared with
``GET /v1/billing/meters/{id}/event_summaries`` for the same customers and windows.

The time range lives in ``reconcile_range``, the tally in ``reconcile_tally``, the comparison and its
output in ``reconcile_report``; reading partitions to their end in ``connector.kafka.reader``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any, TextIO

from connector.commands import prologue
from connector.commands.reconcile_range import (
    WINDOW_SECONDS,
    ReconcileError,
    parse_instant,
    validate_range,
)
from connector.commands.reconcile_report import Report, as_json, compare, render
from connector.commands.reconcile_tally import Tally
from connector.config.secrets import Redactor
from connector.config.settings import Settings, TopicSettings
from connector.errors import ConnectorError, RecordRejected
from connector.kafka.clients import reader_consumer
from connector.kafka.reader import IDLE_S, assign_reader, offsets_at, partition_metadata, watermarks
from connector.records import KafkaRecord

# Records are looked up by Kafka timestamp from this long before --start: a record's Kafka timestamp
# may precede its event timestamp (events up to 5 minutes ahead are accepted, producer clocks drift).
SEEK_SLACK_S = 3600
PROGRESS_EVERY_S = 10.0  # how often a long read says how far it got (on stderr)


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
    """Read, map, tally and compare; raises ``ReconcileError`` (or another ``ConnectorError``, e.g. a
    topic Kafka cannot read) when it cannot be done."""
    from connector.stripe.v1 import StripeApiError, StripeClient

    redact = prologue.redactor(settings)
    with StripeClient.from_settings(settings.stripe, settings.sender) as client:
        meter, warnings = _meter(client, topic, redact)
        tally = Tally(topic, meter.formula, start, end, window)
        reading = _Reading(settings, topic, timeout, idle_s, progress)
        partitions = reading.read_into(tally, start, from_beginning, redact)
        warnings.extend(reading.warnings)
        expected = tally.totals()
        wanted_customers = list(dict.fromkeys(customers)) or sorted({c for c, _ in expected})
        if customers:
            only = set(customers)
            expected = {k: v for k, v in expected.items() if k[0] in only}
        try:
            rows = compare(client, meter.id, expected, wanted_customers, start, end, window)
        except StripeApiError as exc:
            raise ReconcileError(redact(f"could not read the meter event summaries: {exc}")) from None
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
        partitions,
        warnings,
    )


def _meter(client: Any, topic: TopicSettings, redact: Redactor) -> tuple[Any, list[str]]:
    """The topic's active meter, and a warning when it reads other payload keys than the topic writes."""
    from connector.stripe.v1 import StripeApiError

    try:
        meter = client.active_meter(topic.event_name)
    except StripeApiError as exc:
        raise ReconcileError(redact(f"could not look up the meter: {exc}")) from None
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
    return meter, warnings


class _Reading:
    """One read of the topic with a throwaway consumer, every record mapped into a ``Tally``."""

    def __init__(
        self,
        settings: Settings,
        topic: TopicSettings,
        timeout: float,
        idle_s: float,
        progress: TextIO | None,
    ) -> None:
        from connector.kafka.topics import current_namespace
        from connector.mapping.identifiers import identifier_prefix
        from connector.mapping.mapper import Mapper
        from connector.runtime.process import schema_lookup_for

        self.settings = settings
        self.topic = topic
        self.timeout = timeout
        self.idle_s = idle_s
        self.progress = progress
        # The 35-day age limit is lifted: a historical window must reconcile too. Records the connector
        # dead-lettered for their age then show as usage Stripe does not have, which is the truth.
        self.mapper = Mapper(dataclasses.replace(topic, max_past_seconds=10**11), schema_lookup_for(settings))
        namespace = current_namespace(dict(settings.producer_config()), topic.name, topic.namespace)
        self.mapper.use_namespace(namespace)
        self.prefix = identifier_prefix(topic.name, namespace)
        self.warnings: list[str] = []

    def read_into(self, tally: Tally, start: int, from_beginning: bool, redact: Redactor) -> int:
        """Read every partition to its end into ``tally``; returns how many partitions were read."""
        from confluent_kafka import KafkaException

        name = self.topic.name
        consumer = reader_consumer(self.settings, f"kafka-stripe-reconcile-{uuid.uuid4().hex[:12]}")
        try:
            partitions = partition_metadata(consumer, name, self.timeout)
            marks = watermarks(consumer, name, partitions, self.timeout)
            if from_beginning:
                starts = {p: marks[p][0] for p in partitions}
            else:
                # offsets_for_times is only a shortcut: every record is still filtered by its mapped
                # event timestamp in the tally.
                starts = offsets_at(consumer, name, marks, (start - SEEK_SLACK_S) * 1000, self.timeout)
            reader = assign_reader(consumer, name, starts, marks, idle_s=self.idle_s)
            now_ms = int(time.time() * 1000)
            next_note = time.monotonic() + PROGRESS_EVERY_S
            for message in reader:
                self._count(tally, KafkaRecord.from_message(message), now_ms)
                if self.progress is not None and time.monotonic() >= next_note:
                    print(f"reconcile: {reader.read:,} records read", file=self.progress, flush=True)
                    next_note = time.monotonic() + PROGRESS_EVERY_S
            self.warnings.extend(reader.warnings)
        except KafkaException as exc:
            raise ReconcileError(redact(f"Kafka: {exc}")) from None
        finally:
            consumer.close()
        return len(partitions)

    def _count(self, tally: Tally, record: KafkaRecord, now_ms: int) -> None:
        try:
            event = self.mapper.map_record(record, now_ms)
        except RecordRejected as exc:
            tally.add_rejected(exc.code)
        else:
            tally.add(event, record, self.prefix)


# --------------------------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's options (``cli`` calls it only when this subcommand is chosen)."""
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
    """The subcommand: its exit status (0 fine, 1 a failure it found, 2 it could not run)."""
    loaded = prologue.load("reconcile")
    if loaded is None:
        return prologue.EXIT_INVALID
    settings, redact = loaded.settings, loaded.redact
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
    except ConnectorError as exc:  # ReconcileError, a topic Kafka cannot read, a bad mapping setting
        return prologue.refuse("reconcile", str(exc), redact)
    # Stripe's answers are quoted in the notes: the whole output goes through the redactor.
    if args.json:
        print(redact(json.dumps(as_json(report), indent=2)))
    else:
        print(redact(render(report, time.time(), show_all=args.all)))
    return 1 if report.differences else 0
