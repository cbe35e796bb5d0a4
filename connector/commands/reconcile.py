"""``kafka-stripe reconcile``: compare a topic's usage in an event-time range with Stripe's meter summaries.

The records are re-read with a throwaway consumer that only ``assign()``s partitions and never commits,
so the connector's consumer group is never touched. Each record is mapped exactly as the connector maps
it (same topic settings, same derived identifiers), deduplicated by identifier as Stripe does, kept when
its *event* timestamp falls in [start, end), and aggregated per customer (and hour or day with
``--window``) with the meter's formula. The totals are then compared with
``GET /v1/billing/meters/{id}/event_summaries`` for the same customers and windows.

One Stripe context at a time (``--context``; the platform account without it): Stripe is read in it and
only the records whose events go to it are counted. The corrections topics that can correct the topic's
events are read too, and their net effect applied (``reconcile_corrections``).

The time range lives in ``reconcile_range``, the tally in ``reconcile_tally``, corrections in
``reconcile_corrections``, the comparison and its output in ``reconcile_report``; reading partitions to
their end in ``connector.kafka.reader``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from connector.commands import prologue
from connector.commands.reconcile_corrections import (
    CorrectionTally,
    corrections_topics,
    original_namespaces,
)
from connector.commands.reconcile_range import (
    WINDOW_SECONDS,
    ReconcileError,
    parse_instant,
    validate_range,
)
from connector.commands.reconcile_report import Report, as_json, compare, render
from connector.commands.reconcile_tally import Tally
from connector.config.contexts import context_problem
from connector.config.secrets import Redactor
from connector.config.settings import Settings, TopicSettings
from connector.config.topics import topic_env_key
from connector.errors import ConnectorError, RecordRejected
from connector.kafka.clients import reader_consumer
from connector.kafka.reader import IDLE_S, assign_reader, offsets_at, partition_metadata, watermarks
from connector.records import KafkaRecord

# Records are looked up by Kafka timestamp from this long before --start: a record's Kafka timestamp
# may precede its event timestamp (events up to 5 minutes ahead are accepted, producer clocks drift).
SEEK_SLACK_S = 3600
PROGRESS_EVERY_S = 10.0  # how often a long read says how far it got (on stderr)
NO_AGE_LIMIT_S = 10**11  # the mapping's max_past_seconds while reconciling: no record is too old


def reconcile(
    settings: Settings,
    topic: TopicSettings,
    start: int,
    end: int,
    window: str | None,
    *,
    context: str | None = None,
    customers: Sequence[str] = (),
    from_beginning: bool = False,
    timeout: float = 15.0,
    idle_s: float = IDLE_S,
    progress: TextIO | None = None,
) -> Report:
    """Read, map, tally and compare in ``context`` (None: the platform account); raises
    ``ReconcileError`` (or another ``ConnectorError``, e.g. a topic Kafka cannot read) when it cannot
    be done."""
    from connector.stripe.v1 import StripeApiError, StripeClient

    refusal = context_refusal(topic, context)
    if refusal is not None:
        raise ReconcileError(refusal)
    redact = prologue.redactor(settings)
    with StripeClient.from_settings(settings.stripe, settings.sender, context=context) as client:
        meter, warnings = _meter(client, topic, context, redact)
        tally = Tally(topic, meter.formula, start, end, window, context)
        reading = _Reading(settings, start, from_beginning, timeout, idle_s, progress, redact)
        namespace = reading.namespace(topic)
        partitions = reading.read(topic.name, _usage_counter(settings, topic, namespace, tally))
        corrections = _read_corrections(reading, settings, topic, namespace, tally)
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
        topic=topic.name,
        event_name=topic.event_name,
        meter_id=meter.id,
        formula=meter.formula,
        start=start,
        end=end,
        window=window,
        tally=tally,
        rows=rows,
        partitions=partitions,
        warnings=warnings,
        context=context,
        corrections=corrections,
    )


def context_refusal(topic: TopicSettings, context: str | None) -> str | None:
    """Why no record of ``topic`` can be sent in ``context``, or None when some can."""
    if topic.kind != "usage":
        return (
            f"topic {topic.name!r} is a corrections topic: reconcile the usage topic it corrects "
            "(its corrections are read with it)"
        )
    if topic.context_field is not None or topic.stripe_context == context:
        return None
    variable = f"TOPIC_{topic_env_key(topic.name)}_STRIPE_CONTEXT"
    if topic.stripe_context is None:
        return (
            f"topic {topic.name!r} sends every event to the platform account (no {variable} or "
            f"CONTEXT_FIELD): none is sent in context {context}; leave out --context"
        )
    return (
        f"topic {topic.name!r} sends every event in context {topic.stripe_context} ({variable}): "
        f"pass --context {topic.stripe_context}"
    )


def _meter(client: Any, topic: TopicSettings, context: str | None, redact: Redactor) -> tuple[Any, list[str]]:
    """The topic's active meter, and a warning when it reads other payload keys than the topic writes."""
    from connector.stripe.v1 import StripeApiError

    where = "the platform account" if context is None else f"context {context}"
    try:
        meter = client.active_meter(topic.event_name)
    except StripeApiError as exc:
        raise ReconcileError(redact(f"could not look up the meter in {where}: {exc}")) from None
    if meter is None:
        raise ReconcileError(
            f"no active meter has event_name {topic.event_name!r} (topic {topic.name}) in {where}: "
            "nothing at Stripe to compare with; `kafka-stripe check` says more"
        )
    warnings: list[str] = []
    if (meter.customer_key, meter.value_key) != (topic.customer_key, topic.value_key):
        warnings.append(
            f"meter {meter.id} reads payload keys {meter.customer_key!r}/{meter.value_key!r}, the topic "
            f"writes {topic.customer_key!r}/{topic.value_key!r}: Stripe cannot have counted these events"
        )
    return meter, warnings


def _usage_counter(
    settings: Settings, topic: TopicSettings, namespace: str, tally: Tally
) -> Callable[[KafkaRecord], None]:
    """Maps each usage record exactly as the connector does and counts it in ``tally``."""
    from connector.mapping.identifiers import identifier_prefix
    from connector.mapping.mapper import Mapper
    from connector.runtime.process import schema_lookup_for

    # The 35-day age limit is lifted: a historical window must reconcile too. Records the connector
    # dead-lettered for their age then show as usage Stripe does not have, which is the truth.
    mapper = Mapper(dataclasses.replace(topic, max_past_seconds=NO_AGE_LIMIT_S), schema_lookup_for(settings))
    mapper.use_namespace(namespace)
    prefix = identifier_prefix(topic.name, namespace)
    now_ms = int(time.time() * 1000)

    def count(record: KafkaRecord) -> None:
        try:
            event = mapper.map_record(record, now_ms)
        except RecordRejected as exc:
            tally.add_rejected(exc.code)
        else:
            tally.add(event, record, prefix)

    return count


def _read_corrections(
    reading: _Reading, settings: Settings, usage: TopicSettings, namespace: str, tally: Tally
) -> CorrectionTally | None:
    """Read every corrections topic that can correct the tally's events and apply them to it; None
    when no corrections topic can."""
    from connector.mapping.corrections import CorrectionMapper
    from connector.runtime.process import schema_lookup_for

    topics = corrections_topics(settings, usage, tally.context)
    if not topics:
        return None
    corrections = CorrectionTally(
        tuple(t.name for t in topics), usage.event_name, tally.context, tally.formula
    )
    namespace_of = original_namespaces(settings, usage, namespace)
    now_ms = int(time.time() * 1000)
    for topic in topics:
        # The age limit is lifted as for usage records (see ``_usage_counter``).
        lifted = dataclasses.replace(topic, max_past_seconds=NO_AGE_LIMIT_S)
        mapper = CorrectionMapper(lifted, schema_lookup_for(settings))
        mapper.use_namespace(reading.namespace(topic))

        def count(record: KafkaRecord, mapper: CorrectionMapper = mapper) -> None:
            try:
                correction = mapper.map_value(record.value, record.coordinates, now_ms, namespace_of)
            except RecordRejected as exc:
                corrections.add_rejected(exc.code)
            else:
                corrections.add(correction, record)

        reading.read(topic.name, count)
    corrections.apply(tally)
    return corrections


class _Reading:
    """Reads of topics with throwaway consumers (nothing committed), each record handed to a callback."""

    def __init__(
        self,
        settings: Settings,
        start: int,
        from_beginning: bool,
        timeout: float,
        idle_s: float,
        progress: TextIO | None,
        redact: Redactor,
    ) -> None:
        self.settings = settings
        self.start = start
        self.from_beginning = from_beginning
        self.timeout = timeout
        self.idle_s = idle_s
        self.progress = progress
        self.redact = redact
        self.warnings: list[str] = []

    def namespace(self, topic: TopicSettings) -> str:
        """The topic's identifier namespace now (its topic id, or ``TOPIC_<T>_NAMESPACE``)."""
        from connector.kafka.topics import current_namespace

        return current_namespace(dict(self.settings.producer_config()), topic.name, topic.namespace)

    def read(self, name: str, count: Callable[[KafkaRecord], None]) -> int:
        """Read every partition of ``name`` to its end; returns how many partitions were read."""
        from confluent_kafka import KafkaException

        consumer = reader_consumer(self.settings, f"kafka-stripe-reconcile-{uuid.uuid4().hex[:12]}")
        try:
            partitions = partition_metadata(consumer, name, self.timeout)
            marks = watermarks(consumer, name, partitions, self.timeout)
            if self.from_beginning:
                starts = {p: marks[p][0] for p in partitions}
            else:
                # offsets_for_times is only a shortcut: every record is still filtered by its mapped
                # event timestamp in the tally. Corrections come after their originals, so the same
                # point finds them too.
                since_ms = (self.start - SEEK_SLACK_S) * 1000
                starts = offsets_at(consumer, name, marks, since_ms, self.timeout)
            reader = assign_reader(consumer, name, starts, marks, idle_s=self.idle_s)
            next_note = time.monotonic() + PROGRESS_EVERY_S
            for message in reader:
                count(KafkaRecord.from_message(message))
                if self.progress is not None and time.monotonic() >= next_note:
                    print(f"reconcile: {name}: {reader.read:,} records read", file=self.progress, flush=True)
                    next_note = time.monotonic() + PROGRESS_EVERY_S
            self.warnings.extend(reader.warnings)
        except KafkaException as exc:
            raise ReconcileError(self.redact(f"Kafka: {exc}")) from None
        finally:
            consumer.close()
        return len(partitions)


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
        "--context",
        metavar="ACCT",
        help="the Stripe context to reconcile (a connected account acct_..., or a path acct_.../acct_...): "
        "Stripe is read in it and only records sent in it are counted; default: the platform account",
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
        context = getattr(args, "context", None)
        if context is not None and (problem := context_problem(context)):
            raise ReconcileError(f"--context {problem}")
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
            context=context,
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
