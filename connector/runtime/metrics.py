"""Prometheus metrics of one group member: counters pushed by the pipeline, gauges pulled at scrape."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from connector.config.secrets import Redactor, redact
from connector.runtime.health import Health, HealthHistory, HealthPolicy, HealthServer, HealthView, assess
from connector.runtime.logging import known_secrets
from connector.runtime.snapshot import Snapshot

if TYPE_CHECKING:
    from connector.config.settings import Settings
    from connector.stripe.results import SenderStats

log = logging.getLogger("kafka_stripe.telemetry")

PREFIX = "kafka_stripe"
BATCH_OUTCOMES = ("delivered", "rejected", "undelivered", "failed")
MAX_DEAD_LETTER_CODES = 64  # Stripe's codes are a bounded set; the cap keeps a surprise from exploding series
# A Stripe round trip is tens of ms; retries with back-off stretch a batch to minutes (RETRY_MAX_ELAPSED_S).
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# From the Kafka timestamp: seconds when keeping up, hours or days while a backlog is replayed.
ACCEPTANCE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)


class Observation(NamedTuple):
    """One look at the pipeline: its snapshot, the view health judged, and the verdict."""

    snapshot: Snapshot
    view: HealthView
    health: Health
    now: float


def retry_reasons(stats: SenderStats) -> dict[str, int]:
    """The sender's back-off waits split by cause, from the counters it keeps.

    ``rate_limited`` (429) and ``transport`` (timeouts, refused or dropped connections) count answers,
    nearly all of which are retried; ``other`` is the rest of the waits (5xx, 408, 409, no session).
    """
    limited = min(stats.rate_limited, stats.retries)
    transport = min(stats.transport_errors, stats.retries)
    return {
        "rate_limited": limited,
        "transport": transport,
        "other": max(stats.retries - stats.rate_limited - stats.transport_errors, 0),
    }


class _Collector:
    """Gauges and sender counters computed when Prometheus scrapes: nothing on the hot path."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    def collect(self) -> Iterator[Metric]:
        t = self._telemetry
        obs = t.observe()
        snap, view, now = obs.snapshot, obs.view, obs.now
        yield _gauge("ready", "1 when /readyz answers 200, else 0.", 1 if obs.health.ready else 0)
        yield _gauge("assigned_partitions", "Partitions this member owns.", len(view.partitions))
        yield _gauge("paused_partitions", "Partitions paused for backpressure.", t.paused_partitions)
        if snap.buffered is not None:
            yield _gauge("records_buffered", "Records consumed and not yet done.", snap.buffered)
        if snap.customers_waiting is not None:
            yield _gauge(
                "customers_waiting_records",
                "Records held until Stripe knows their customer (dead-lettered after the wait).",
                snap.customers_waiting,
            )
        yield from self._meters(snap)
        yield from self._partitions(view)
        if snap.sender is not None:
            yield from self._sender(snap.sender)
        if snap.contexts is not None:
            yield from self._contexts(snap.contexts)
        if snap.open_aggregates is not None:
            yield _gauge(
                "open_aggregates", "Pre-aggregates in segments not yet closed.", snap.open_aggregates
            )
            yield _counter(
                "late_records",
                "Records for a window this member had already flushed.",
                snap.late_records or 0,
            )
            records, events = t._aggregation
            yield _gauge(
                "aggregation_ratio",
                "Records per pre-aggregated event sent (the compression ratio), since the start.",
                records / events if events else 0.0,
            )
        session = snap.session
        if session is not None:
            created = session.created_at if session.created_at is not None else t._history.session_seen
            yield _gauge("session_token_age_seconds", "Age of the meter event session token.", now - created)
            yield _gauge(
                "session_expires_in_seconds",
                "Seconds until the session token expires (negative: expired).",
                session.expires_at - now,
            )

    def _partitions(self, view: HealthView) -> Iterator[Metric]:
        committed = GaugeMetricFamily(
            f"{PREFIX}_committed_offset",
            "Last offset committed per partition.",
            labels=("topic", "partition"),
        )
        lag = GaugeMetricFamily(
            f"{PREFIX}_consumer_lag",
            "Log end offset minus committed offset per partition.",
            labels=("topic", "partition"),
        )
        for p in view.partitions:
            labels = (p.topic, str(p.partition))
            if p.committed is not None:
                committed.add_metric(labels, p.committed)
            if p.lag is not None:
                lag.add_metric(labels, p.lag)
        yield committed
        yield lag

    def _meters(self, snap: Snapshot) -> Iterator[Metric]:
        active = GaugeMetricFamily(
            f"{PREFIX}_meter_active",
            "1 while the topic's event name has an active meter with matching payload keys; 0 while its "
            "events are held back (paused or dead-lettered, CONNECTOR_ON_MISSING_METER).",
            labels=("topic", "event_name"),
        )
        for meter in snap.meters:
            active.add_metric((meter.topic, meter.event_name), 0 if meter.problem else 1)
        yield active

    def _contexts(self, contexts: Mapping[str, SenderStats]) -> Iterator[Metric]:
        """The sender's counters per Stripe context (labels bounded: ``stripe.contexts``)."""
        events = CounterMetricFamily(
            f"{PREFIX}_context_events",
            "Meter events by Stripe context and outcome (delivered, rejected, undelivered).",
            labels=("context", "outcome"),
        )
        limited = CounterMetricFamily(
            f"{PREFIX}_context_rate_limited", "429 answers by Stripe context.", labels=("context",)
        )
        for label, stats in contexts.items():
            events.add_metric((label, "delivered"), stats.events_delivered)
            events.add_metric((label, "rejected"), stats.events_rejected)
            events.add_metric((label, "undelivered"), stats.events_undelivered)
            limited.add_metric((label,), stats.rate_limited)
        yield events
        yield limited

    def _sender(self, stats: SenderStats) -> Iterator[Metric]:
        yield _gauge("batches_in_flight", "Batches the sender is working on.", stats.batches_in_flight)
        yield _gauge("requests_in_flight", "Stream requests awaiting Stripe.", stats.requests_in_flight)
        yield _gauge(
            "concurrency_limit",
            "Adaptive cap on requests in flight (shrinks on 429s).",
            stats.concurrency_limit,
        )
        retries = CounterMetricFamily(
            f"{PREFIX}_retries",
            "Back-off waits before resending a request, by cause.",
            labels=("reason",),
        )
        for reason, value in self._telemetry._monotonic_retries(stats).items():
            retries.add_metric((reason,), value)
        yield retries
        yield _counter(
            "stream_requests",
            "POSTs to meter_event_stream, retries and bisection halves included.",
            stats.requests,
        )
        yield _counter(
            "session_renewals",
            "Meter event sessions created after the first (scheduled or forced).",
            max(stats.sessions_created - 1, 0),
        )
        yield _counter(
            "session_token_refusals",
            "Stream requests whose session token Stripe refused; each was resent with a new session.",
            stats.renewals,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


class Telemetry:
    """Metrics and health of one consumer-group member, served on one port.

    Counters and histograms are pushed with batch-level calls (``consumed``, ``batch_done``...), each
    thread-safe and a microsecond or two; gauges, per-partition offsets and the sender's counters are
    pulled from ``snapshot()`` when Prometheus scrapes or a probe asks. ``port=None`` serves nothing
    (the calls still work); ``port=0`` binds a free port (tests).
    """

    def __init__(
        self,
        snapshot: Callable[[], Snapshot] | None = None,
        *,
        port: int | None = 9464,
        host: str = "0.0.0.0",
        policy: HealthPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        scrub: Callable[[str], str] | None = None,
    ) -> None:
        self.snapshot = snapshot  # may be set after construction (the pipeline needs the telemetry first)
        self._requested_port = port
        self._host = host
        self.policy = policy or HealthPolicy()
        self._clock = clock
        self._wall_clock = wall_clock
        self._scrub = scrub or redact
        self._lock = threading.Lock()  # observations, the retry split, dead-letter codes
        self._history = HealthHistory()
        self._retries_seen: dict[str, int] = {}
        self._paused_since: float | None = None
        self.paused_partitions = 0
        self._server: HealthServer | None = None
        self.registry = registry = CollectorRegistry(auto_describe=False)
        self._consumed = Counter(
            f"{PREFIX}_records_consumed", "Records consumed from Kafka.", registry=registry
        )
        self._delivered = Counter(
            f"{PREFIX}_events_delivered", "Meter events Stripe accepted (2xx).", registry=registry
        )
        batches = Counter(
            f"{PREFIX}_batches", "Batches finished, by outcome.", labelnames=("outcome",), registry=registry
        )
        # Children bound once: a labels() lookup per batch would cost more than the increment.
        self._batches = {outcome: batches.labels(outcome) for outcome in BATCH_OUTCOMES}
        self._dead_lettered = Counter(
            f"{PREFIX}_dead_lettered",
            "Records the dead-letter topic acknowledged, by rejection code.",
            labelnames=("code",),
            registry=registry,
        )
        self._codes: set[str] = set()
        skipped = "Records not sent: the delivery ledger says they were delivered already (by reason)."
        self._skipped = Counter(f"{PREFIX}_records_skipped", skipped, ["reason"], registry=registry)
        self._skipped_delivered = self._skipped.labels("already_delivered")
        self._register_validation(registry)
        self._request_seconds = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time the sender took over one batch: a request's round trip, plus any back-off and resends.",
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self._acceptance_seconds = Histogram(
            f"{PREFIX}_record_to_acceptance_seconds",
            "From a record's Kafka timestamp to Stripe accepting its event (sampled per batch).",
            buckets=ACCEPTANCE_BUCKETS,
            registry=registry,
        )
        registry.register(_Collector(self))

    def _register_validation(self, registry: CollectorRegistry) -> None:
        """Counters of the checks against Stripe's live state and of its asynchronous error reports."""
        self._flushes = Counter(
            f"{PREFIX}_aggregate_flushes",
            "Pre-aggregation segments closed, by reason (window, age, size, fixed, revoke).",
            labelnames=("reason",),
            registry=registry,
        )
        self._aggregated = Counter(
            f"{PREFIX}_aggregated_records", "Records summed into pre-aggregated events.", registry=registry
        )
        self._aggregate_events = Counter(
            f"{PREFIX}_aggregate_events", "Pre-aggregated events made (one per aggregate).", registry=registry
        )
        self._aggregation = (0, 0)  # records, events: the ratio's terms
        self._corrections = Counter(
            f"{PREFIX}_corrections",
            "Corrections applied, by action (cancelled, replaced, compensated, unchanged); refused ones are "
            "dead-lettered and counted there.",
            labelnames=("action",),
            registry=registry,
        )
        self._async_errors = Counter(
            f"{PREFIX}_stripe_async_errors",
            "Errors Stripe reported after accepting events (error reports' error_count), by code.",
            labelnames=("code",),
            registry=registry,
        )
        self._async_samples = Counter(
            f"{PREFIX}_stripe_async_samples",
            "Sample errors of Stripe's error reports: dead_lettered (mapped to records) or unmapped.",
            labelnames=("outcome",),
            registry=registry,
        )
        self._customer_lookups = Counter(
            f"{PREFIX}_customer_lookups",
            "Customer ids looked up at Stripe before sending, by result (found, not_found, error).",
            labelnames=("result",),
            registry=registry,
        )
        self._meter_refreshes = Counter(
            f"{PREFIX}_meter_refreshes",
            "Reads of the account's meters, by result (ok, error).",
            labelnames=("result",),
            registry=registry,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        snapshot: Callable[[], Snapshot] | None,
        *,
        worker: int | None = None,
        **options: Any,
    ) -> Telemetry:
        """``CONNECTOR_METRICS_PORT`` (0: no server); worker ``i`` of several serves that port + ``i``."""
        port = settings.telemetry.metrics_port
        served = None if port == 0 else port + (worker or 0)
        stuck = settings.telemetry.health_stuck_after_s
        options.setdefault("policy", HealthPolicy(stuck_after_s=stuck, paused_after_s=stuck))
        return cls(snapshot, port=served, scrub=Redactor(known_secrets(settings)), **options)

    # -- pushed by the pipeline (batch-level: never once per record) ---------------------------

    def consumed(self, records: int) -> None:
        """Records taken from one ``consume()`` call."""
        self._consumed.inc(records)

    def batch_done(
        self, size: int, delivered: int, rejected: int = 0, *, record_times_ms: Iterable[int | None] = ()
    ) -> None:
        """A batch came back from the sender; ``record_times_ms``: Kafka timestamps of delivered records."""
        if delivered + rejected < size:
            outcome = "undelivered"
        elif rejected:
            outcome = "rejected"
        else:
            outcome = "delivered"
        self._batches[outcome].inc()
        if delivered:
            self._delivered.inc(delivered)
            now_ms = self._wall_clock() * 1000
            for stamp in record_times_ms:
                if stamp is not None:
                    self._acceptance_seconds.observe(max(now_ms - stamp, 0.0) / 1000)

    def batch_failed(self) -> None:
        """The sender raised instead of answering (the batch is resent)."""
        self._batches["failed"].inc()

    def observe_send(self, seconds: float) -> None:
        """The sender finished one batch after ``seconds`` (call from the sender thread)."""
        self._request_seconds.observe(seconds)

    def skipped(self, records: int) -> None:
        """``records`` were at or below their partition's ledger mark: done without being sent."""
        self._skipped_delivered.inc(records)

    def dead_lettered(self, code: str, records: int = 1) -> None:
        """The dead-letter topic acknowledged a record rejected with ``code``."""
        self._dead_lettered.labels(self._bounded_code(code)).inc(records)

    def _bounded_code(self, code: str) -> str:
        with self._lock:
            if code not in self._codes:
                if len(self._codes) >= MAX_DEAD_LETTER_CODES:
                    return "other"
                self._codes.add(code)
        return code

    def async_errors(self, code: str, count: int) -> None:
        """An error report counted ``count`` errors of ``code``."""
        self._async_errors.labels(self._bounded_code(code)).inc(count)

    def async_samples(self, outcome: str, count: int = 1) -> None:
        """Sample errors that were dead-lettered (``dead_lettered``) or could not be mapped (``unmapped``)."""
        self._async_samples.labels(outcome).inc(count)

    def customer_lookup(self, result: str) -> None:
        """One customer lookup ended: ``found``, ``not_found`` or ``error``."""
        self._customer_lookups.labels(result).inc()

    def segment_closed(self, reason: str, records: int, events: int) -> None:
        """A pre-aggregation segment closed (``window``, ``age``, ``size``, ``fixed``, ``revoke``)."""
        self._flushes.labels(reason).inc()
        self._aggregated.inc(records)
        self._aggregate_events.inc(events)
        done_records, done_events = self._aggregation
        self._aggregation = (done_records + records, done_events + events)

    def correction(self, action: str) -> None:
        """A correction was applied: ``cancelled``, ``replaced``, ``compensated`` or ``unchanged``."""
        self._corrections.labels(action).inc()

    def meter_refresh(self, result: str) -> None:
        """One read of the meters ended: ``ok`` or ``error``."""
        self._meter_refreshes.labels(result).inc()

    def paused(self, partitions: int) -> None:
        """Partitions are paused now (again with the new count when more are paused while paused)."""
        if self._paused_since is None:
            self._paused_since = self._clock()
        self.paused_partitions = partitions

    def resumed(self) -> None:
        self._paused_since = None
        self.paused_partitions = 0

    # -- pulled -------------------------------------------------------------------------------

    def observe(self) -> Observation:
        """Take a snapshot, fold it into the history, judge readiness (every scrape and probe)."""
        # One at a time: folding an older snapshot after a newer one would look like a moved offset.
        with self._lock:
            snap, error = Snapshot(), None
            if self.snapshot is not None:
                try:
                    snap = self.snapshot()
                except Exception as exc:  # e.g. the consumer already closed: report, never break a scrape
                    error = self._scrub(f"{type(exc).__name__}: {exc}")
            now = self._clock()
            view = self._history.fold(snap, now, self._paused_since, error)
        return Observation(snap, view, assess(view, now, self.policy), now)

    def health(self) -> Health:
        return self.observe().health

    def _monotonic_retries(self, stats: SenderStats) -> dict[str, int]:
        # The split is derived from separate counters and could dip by one; a counter never may.
        with self._lock:
            seen = self._retries_seen
            for reason, value in retry_reasons(stats).items():
                seen[reason] = max(seen.get(reason, 0), value)
            return dict(seen)

    # -- the HTTP server ----------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The bound port once started, else the configured one."""
        return self._server.port if self._server is not None else self._requested_port

    def start(self) -> None:
        """Serve /metrics, /healthz and /readyz from a daemon thread (nothing when the port is None)."""
        if self._requested_port is None or self._server is not None:
            return
        self._server = HealthServer(self, self._host, self._requested_port)
        log.info("metrics and health on http://%s:%d/metrics, /healthz, /readyz", self._host, self.port)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> Telemetry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
