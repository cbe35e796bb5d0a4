"""The process around the run loop: ``kafka-stripe run``'s entry, signals, interpreter tuning, event loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from types import FrameType

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from connector.avro.decoder import registry_lookup
from connector.config.settings import Settings
from connector.pipeline.aggregating import AggregatedMeter
from connector.pipeline.identity import Identity, UsesNamespace
from connector.pipeline.loop import Pipeline
from connector.pipeline.sender_thread import BatchSender, OnBackoff
from connector.pipeline.stripe_watch import watch_for
from connector.pipeline.window_totals import WINDOW_SECONDS
from connector.reports.worker import ErrorReportWorker
from connector.runtime.logging import configure_logging
from connector.runtime.metrics import Telemetry
from connector.stripe.contexts import ContextSenders
from connector.stripe.v1 import StripeApiError, StripeClient

log = logging.getLogger("kafka_stripe.pipeline")

# Garbage collection (see tune_interpreter): young-generation threshold, and collections of each generation
# before the next older one is collected.
GC_THRESHOLDS = (10_000, 20, 100)
SWITCH_INTERVAL_S = 0.001  # how long a thread may hold the GIL while another waits (default 5 ms)
EXIT_FATAL = 1
EXIT_AT_ONCE = 130  # a second signal: exit without committing anything new


def run(settings: Settings) -> int:
    """``kafka-stripe run``: one group member, or ``CONNECTOR_WORKERS`` of them in child processes."""
    if settings.pipeline.workers > 1:
        configure_logging(settings)
        # Imported here: workers import this module (each child runs run_one).
        from connector.runtime.workers import supervise

        return supervise(settings)
    return run_one(settings)


def run_one(settings: Settings, worker: int | None = None) -> int:
    """One consumer-group member until SIGTERM/SIGINT or a fatal error; returns the exit status."""
    configure_logging(settings, worker)

    def sender(on_backoff: OnBackoff) -> BatchSender:
        contexts = [t.stripe_context for t in settings.topics if t.stripe_context]
        return ContextSenders(settings.stripe, settings.sender, on_backoff=on_backoff, labelled=contexts)

    try:
        meters = aggregated_meters(settings)
    except StripeApiError as exc:
        log.error("fatal: cannot start: the meters of pre-aggregated topics cannot be read: %s", exc)
        return EXIT_FATAL
    telemetry = Telemetry.from_settings(settings, None, worker=worker)

    def identity(mappers: Mapping[str, UsesNamespace]) -> Identity:
        return Identity(
            settings,
            mappers,
            telemetry,
            admin_factory=AdminClient,
            producer_factory=Producer,
            consumer_factory=Consumer,
        )

    pipeline = Pipeline(
        settings,
        sender,
        identity,
        schema_lookup=schema_lookup_for(settings),
        telemetry=telemetry,
        loop_factory=new_event_loop,
        watch=watch_for(settings, telemetry.customer_lookup, telemetry.meter_refresh),
        aggregate_meters=meters,
    )
    telemetry.snapshot = pipeline.telemetry_snapshot
    reports = error_reports_for(settings, telemetry, pipeline.request_meter_refresh)

    def request_stop() -> None:
        pipeline.request_stop()
        if reports is not None:
            reports.request_stop()  # stops after the report in hand, while the pipeline drains

    install_signal_handlers(request_stop)
    tune_interpreter()
    telemetry.start()
    if reports is not None:
        reports.start()
    try:
        fatal = pipeline.run()
    finally:
        if reports is not None:
            reports.stop()
        telemetry.stop()
    return 0 if fatal is None else EXIT_FATAL


def aggregated_meters(settings: Settings) -> dict[str, AggregatedMeter]:
    """The meter of each pre-aggregated topic, read in its context before anything is consumed: records
    are summed for ``sum`` meters and the latest kept for ``last`` ones (``count`` meters are refused
    before this by ``run``'s preflight), as running window totals for a meter with an
    ``event_time_window``. A topic without an active meter sums (Stripe drops its events anyway, and
    the admission pauses the topic)."""
    topics = [t for t in settings.topics if t.aggregate_s]
    found: dict[str, AggregatedMeter] = {}
    for context in dict.fromkeys(t.stripe_context for t in topics):
        with StripeClient.from_settings(settings.stripe, settings.sender, context=context) as client:
            meters = client.list_meters(status="active")
        for topic in (t for t in topics if t.stripe_context == context):
            meter = next((m for m in meters if m.event_name == topic.event_name), None)
            if meter is None:
                found[topic.name] = AggregatedMeter()
                continue
            window = WINDOW_SECONDS.get(meter.event_time_window or "")
            found[topic.name] = AggregatedMeter(meter.formula, window)
            if window:
                log.info(
                    "%s: meter %s keeps the latest event per customer and %s: sending running %s totals",
                    topic.name,
                    meter.id,
                    meter.event_time_window,
                    meter.event_time_window,
                )
    return found


def error_reports_for(
    settings: Settings, telemetry: Telemetry, on_meter_error: Callable[[], None]
) -> ErrorReportWorker | None:
    """The thread reading Stripe's asynchronous error reports, or None when
    ``CONNECTOR_ERROR_REPORTS_POLL_S`` is 0 (one per process; the members elect the one that polls)."""
    if not settings.validation.error_reports_poll_s:
        return None
    return ErrorReportWorker(
        settings,
        telemetry,
        on_meter_error=on_meter_error,
        stripe_factory=lambda: StripeClient.from_settings(settings.stripe, settings.sender),
        consumer_factory=Consumer,
        producer_factory=Producer,
        admin_factory=AdminClient,
        schema_lookup=schema_lookup_for(settings),
    )


def install_signal_handlers(request_stop: Callable[[], None]) -> None:
    """First SIGTERM/SIGINT: graceful stop. Second: exit at once, committing nothing new."""
    received = 0

    def handle(signum: int, _frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        if received == 1:
            log.info("received %s: stopping (again to exit at once)", signal.Signals(signum).name)
            request_stop()
        else:
            log.warning("received %s again: exiting now without committing", signal.Signals(signum).name)
            os._exit(EXIT_AT_ONCE)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


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


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed: it cuts the sender's CPU per request by about 15% (benchmarks/sender.py)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def schema_lookup_for(settings: Settings) -> Callable[[int], str] | None:
    """The registry lookup for Confluent wire-format topics, or None without a registry."""
    config = settings.schema_registry_config()
    if config is None:
        return None
    from confluent_kafka.schema_registry import SchemaRegistryClient

    client = SchemaRegistryClient(config)
    return registry_lookup(client.get_schema)
