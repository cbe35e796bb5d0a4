"""The error-report thread: poll Stripe's reports, count and log them, dead-letter the records they name.

Every ``CONNECTOR_ERROR_REPORTS_POLL_S`` seconds the elected member (``connector.reports.election``)
lists the report events after its cursor, retrieves each one not done yet, oldest first, and for each:
counts every error in ``kafka_stripe_stripe_async_errors_total{code}`` (by ``error_count``: Stripe sends
only samples), logs it once, asks the pipeline to read its meters again on ``archived_meter`` or
``no_meter``, maps the samples to records (``connector.reports.locate``) and writes them to their
dead-letter topics exactly once (``connector.reports.intent``). Errors reading Stripe or Kafka are
logged and the work is tried again at the next poll; nothing here stops the pipeline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from connector.config.settings import Settings
from connector.errors import ConfigurationError
from connector.kafka.clients import reader_config
from connector.kafka.deadletter import DeadLetterQueue
from connector.kafka.delivery_ledger import ensure_ledger_topic
from connector.kafka.topics import namespaces, topic_ids
from connector.mapping.mapper import Mapper
from connector.reports.cursor import Cursor, CursorKey, CursorStore
from connector.reports.election import Election, election_config
from connector.reports.events import PERMISSION, EventsClient
from connector.reports.intent import CODE_PREFIX, Letter, ReportWriter
from connector.reports.locate import Placement, RecordSource, place, ranges_needed
from connector.reports.report import ErrorReport, EventRef, ReportFormatError
from connector.runtime.metrics import Telemetry
from connector.stripe.v1 import StripeClient, StripeNotFound, StripePermissionError

log = logging.getLogger("kafka_stripe.reports")

TICK_S = 0.5  # how often the thread serves the election group and looks at the stop flag
STOP_TIMEOUT_S = 5.0  # how long stop() waits for the report in hand, after the pipeline has stopped
LOGGED_REPORTS = 1_000  # report ids remembered so that a report retried in this process is logged once


class ErrorReportWorker:
    """One per process; ``start()`` before the pipeline runs, ``stop()`` after."""

    def __init__(
        self,
        settings: Settings,
        telemetry: Telemetry,
        *,
        on_meter_error: Callable[[], None] | None = None,
        stripe_factory: Callable[[], StripeClient],
        consumer_factory: Callable[[dict[str, Any]], Any],
        producer_factory: Callable[[dict[str, Any]], Any],
        admin_factory: Callable[[dict[str, Any]], Any],
        schema_lookup: Callable[[int], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        namespace = settings.pipeline.ledger_namespace
        if not namespace:
            raise ConfigurationError(["error reports need the ledger namespace (CONNECTOR_LEDGER_NAMESPACE)"])
        self.settings = settings
        self.telemetry = telemetry
        self.on_meter_error = on_meter_error
        self.key = CursorKey(namespace, settings.kafka.group_id)
        self._stripe_factory = stripe_factory
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self._admin_factory = admin_factory
        self._schema_lookup = schema_lookup
        self._clock = clock
        self._wall_clock = wall_clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cursor: Cursor | None = None  # as last written, while this member is the poller
        self._logged: deque[str] = deque(maxlen=LOGGED_REPORTS)
        self._last_problem = ""
        self._parts: _Parts | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="error-reports", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Stop after the report in hand (thread-safe; from a signal handler too)."""
        self._stop.set()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Ask the thread to stop and wait for it; a report still in hand after ``timeout`` is left to its
        intent (the thread is a daemon: it never holds the process up)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the error-report thread did not stop within %g s", timeout)

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and self._parts is None:
                self._attempt(self._open)
                if self._parts is None:
                    self._stop.wait(max(self.settings.validation.error_reports_poll_s, 1))
            if self._parts is not None:
                self._serve(self._parts)
        finally:
            if self._parts is not None:
                self._parts.close()

    def _serve(self, parts: _Parts) -> None:
        """Serve the election group every tick; poll Stripe every interval while elected."""
        next_poll = self._clock()
        while not self._stop.is_set():
            try:
                leader = parts.election.poll(TICK_S)
            except Exception as exc:  # a Kafka error of the election consumer: membership is unknown
                self._problem(f"error reports: the election group failed: {exc}")
                leader = False
                self._stop.wait(TICK_S)
            if not leader:
                self._cursor = None  # another member may move it: read it again when elected
            elif self._clock() >= next_poll:
                next_poll = self._clock() + self.settings.validation.error_reports_poll_s
                self._attempt(self._cycle)

    def _attempt(self, step: Callable[[], None]) -> None:
        """Run ``step``; any error is logged (once while it repeats) and left for the next poll."""
        try:
            step()
        except StripePermissionError as exc:
            self._problem(f"cannot read Stripe's error reports: the key needs {PERMISSION} ({exc})")
        except Exception as exc:
            self._problem(f"error reports: {type(exc).__name__}: {exc}; trying again at the next poll")
        else:
            self._last_problem = ""

    def _problem(self, message: str) -> None:
        if message != self._last_problem:
            log.warning("%s", message)
            self._last_problem = message

    def _open(self) -> None:
        settings = self.settings
        admin = self._admin_factory(settings.producer_config())
        ledger = settings.pipeline.ledger_topic
        problem = ensure_ledger_topic(admin, ledger, create=True)
        if problem is not None:
            raise RuntimeError(problem)
        reader = reader_config(settings, f"{settings.kafka.group_id}.error-reports.reader")
        producer = self._producer_factory(settings.producer_config())
        store = CursorStore(
            self.key,
            ledger,
            producer=producer,
            consumer_factory=self._consumer_factory,
            consumer_config=reader,
        )
        writer = ReportWriter(
            store, DeadLetterQueue(producer), consumer_factory=self._consumer_factory, consumer_config=reader
        )
        # Usage topics only: a correction's replacement is located by its corrections record, which no
        # usage mapper reads; its samples are counted as unmapped.
        usage = [t for t in settings.topics if t.kind == "usage"]
        mappers = {t.name: Mapper(t, self._schema_lookup) for t in usage}
        configured = {t.name: t.namespace for t in usage}

        def current() -> Mapping[str, str]:
            found = topic_ids(admin, [t for t, ns in configured.items() if ns is None])
            return namespaces(configured, found)

        source = RecordSource(
            usage, mappers, current, consumer_factory=self._consumer_factory, consumer_config=reader
        )
        election = Election(
            self._consumer_factory(election_config(settings.consumer_config(), self.key.group)), ledger
        )
        election.start()
        events = EventsClient(self._stripe_factory())
        self._parts = _Parts(election, events, writer, source)

    # -- one poll -------------------------------------------------------------------------------

    def _cycle(self) -> None:
        parts = self._parts
        assert parts is not None
        cursor = self._cursor if self._cursor is not None else self._load(parts)
        if cursor.intent is not None:
            cursor = self._resume(parts, cursor)
        for ref in parts.events.list_since(cursor.floor):
            if self._stop.is_set() or not parts.election.poll(0):
                return
            if cursor.is_done(ref):
                continue
            try:
                report = parts.events.retrieve(ref.id)
            except (ReportFormatError, StripeNotFound) as exc:  # it will never read better: go past it
                log.warning("error report %s cannot be read (%s); going on without it", ref.id, exc)
                cursor = self._cursor = parts.writer.finish(cursor, ref)
                continue
            cursor = self._handle(parts, cursor, ref, report)

    def _load(self, parts: _Parts) -> Cursor:
        cursor = parts.writer.store.load()
        if cursor is None:
            cursor = Cursor.starting(self._wall_clock())
            parts.writer.store.save(cursor)
            log.info(
                "error reports: no cursor yet for %s and group %s; reading reports from %.0f s ago on",
                self.key.namespace,
                self.key.group,
                self._wall_clock() - cursor.floor,
            )
        self._cursor = cursor
        return cursor

    def _resume(self, parts: _Parts, cursor: Cursor) -> Cursor:
        """Finish the report whose dead letters may have been written in part (an open intent)."""
        intent = cursor.intent
        assert intent is not None
        log.info(
            "error reports: finishing report %s, whose dead letters may be written in part", intent.report
        )
        try:
            report = parts.events.retrieve(intent.report)
        except StripeNotFound:
            log.warning(
                "error report %s is gone from Stripe; its dead letters may be incomplete", intent.report
            )
            closed = Cursor(cursor.floor, cursor.seen, None)
            parts.writer.store.save(closed)
            self._cursor = closed
            return closed
        return self._handle(parts, cursor, EventRef(report.id, report.type, report.created), report)

    def _handle(self, parts: _Parts, cursor: Cursor, ref: EventRef, report: ErrorReport) -> Cursor:
        """Log, route and close one report; ``cursor.intent`` set means its dead letters were begun."""
        self._announce(report)
        now_ms = int((report.validated_at or self._wall_clock()) * 1000)
        samples = report.samples
        ranges = ranges_needed(samples)
        placements = place(samples, parts.source.read(ranges, now_ms) if ranges else {})
        letters = self._letters(placements)
        if letters:
            resumed = cursor.intent is not None and cursor.intent.report == report.id
            if not resumed:
                cursor = self._cursor = parts.writer.open(cursor, report.id, {x.dlq_topic for x in letters})
            assert cursor.intent is not None
            written = parts.writer.written(cursor.intent) if resumed else set()
            parts.writer.write(
                [x for x in letters if x.candidate.record.coordinates not in written], report.id
            )
        cursor = self._cursor = parts.writer.finish(cursor, ref)
        self._count(report, placements)
        return cursor

    def _letters(self, placements: Sequence[Placement]) -> list[Letter]:
        topics = {t.name: t.dlq_topic for t in self.settings.topics}
        return [
            Letter(p.candidate, topics[p.candidate.record.topic], p.sample.code, p.sample.message)
            for p in placements
            if p.candidate is not None
        ]

    def _announce(self, report: ErrorReport) -> None:
        """Log the report once per process, and ask for the meters on a meter error."""
        if report.id not in self._logged:
            self._logged.append(report.id)
            log.warning("%s", report.describe())
        if report.meter_error and self.on_meter_error is not None:
            self.on_meter_error()

    def _count(self, report: ErrorReport, placements: Sequence[Placement]) -> None:
        """The metrics of a closed report (its dead letters too, as ``dead_lettered{code="stripe_async:…"}``),
        and one line per reason samples were not mapped."""
        for kind in report.error_types:
            self.telemetry.async_errors(kind.code, kind.error_count)
        codes = Counter(f"{CODE_PREFIX}{p.sample.code}" for p in placements if p.candidate is not None)
        for code, count in codes.items():
            self.telemetry.dead_lettered(code, count)
        mapped = sum(codes.values())
        if mapped:
            self.telemetry.async_samples("dead_lettered", mapped)
        reasons = Counter(p.reason for p in placements if p.candidate is None)
        for reason, count in reasons.items():
            self.telemetry.async_samples("unmapped", count)
            first = next(p.sample for p in placements if p.reason == reason)
            log.warning(
                "error report %s: %d sample(s) not mapped to records: %s (e.g. %s: %r, request %s)",
                report.id,
                count,
                reason,
                first.code,
                first.message,
                first.request_id or "?",
            )
        log.info("error report %s done: %d record(s) dead-lettered", report.id, mapped)


class _Parts:
    """What the thread opened: the election, Stripe's events, the writer and the record source."""

    def __init__(
        self, election: Election, events: EventsClient, writer: ReportWriter, source: RecordSource
    ) -> None:
        self.election = election
        self.events = events
        self.writer = writer
        self.source = source

    def close(self) -> None:
        """Leave the election group (another member takes over at once) and let go of the clients."""
        for close in (self.election.close, self.events.close, self.writer.close):
            try:
                close()
            except Exception as exc:  # closing at shutdown: say so, go on with the others
                log.warning("error reports: closing: %s", exc)
