"""Operating the connector: Prometheus metrics, /healthz and /readyz on one port, and redacted logs."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO, cast

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from connector.config.settings import MASK
from connector.errors import FatalError

if TYPE_CHECKING:
    from connector.config.settings import Settings
    from connector.stripe.sender import SenderStats

log = logging.getLogger("kafka_stripe.telemetry")

PREFIX = "kafka_stripe"
BATCH_OUTCOMES = ("delivered", "rejected", "undelivered", "failed")
MAX_DEAD_LETTER_CODES = 64  # Stripe's codes are a bounded set; the cap keeps a surprise from exploding series
# A Stripe round trip is tens of ms; retries with back-off stretch a batch to minutes (RETRY_MAX_ELAPSED_S).
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# From the Kafka timestamp: seconds when keeping up, hours or days while a backlog is replayed.
ACCEPTANCE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)


# ------------------------------------------------------------------------------------ what is pulled


class PartitionSnapshot(NamedTuple):
    """One owned partition as the pipeline sees it when scraped."""

    topic: str
    partition: int
    committed: int | None = None  # last position this member committed under this assignment
    end: int | None = None  # log end offset (high watermark); None when unknown


class SessionSnapshot(NamedTuple):
    """The sender's current meter event session; times on the telemetry clock (``time.monotonic``)."""

    id: str
    expires_at: float
    created_at: float | None = None  # None: the age is counted from when telemetry first saw the session


class Snapshot(NamedTuple):
    """What the ``snapshot`` callback returns; read on the HTTP thread, so plain values only."""

    partitions: Sequence[PartitionSnapshot] = ()
    sender: SenderStats | None = None
    session: SessionSnapshot | None = None
    buffered: int | None = None  # records consumed and not yet done


# ------------------------------------------------------------------------------------------- health


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """How long a condition may last before /readyz fails."""

    stuck_after_s: float = 60.0  # a partition's commit not moving while its lag grows
    paused_after_s: float = 60.0  # partitions paused without a break
    session_grace_s: float = 30.0  # batches waiting with no usable session (covers one renewal's round trip)


class PartitionView(NamedTuple):
    """A partition with the history health needs: since when its committed offset has stood still."""

    topic: str
    partition: int
    committed: int | None
    end: int | None
    since: float  # when ``committed`` was first seen at its current value
    end_then: int | None  # ``end`` at that moment

    @property
    def lag(self) -> int | None:
        if self.end is None or self.committed is None:
            return None
        return max(self.end - self.committed, 0)


@dataclass(frozen=True, slots=True)
class HealthView:
    """Everything the readiness decision looks at; ``assess`` is a pure function of this and the clock."""

    partitions: tuple[PartitionView, ...] = ()
    paused_since: float | None = None
    session: SessionSnapshot | None = None
    waiting_since: float | None = None  # the sender has held batches continuously since then
    error: str | None = None  # the snapshot callback failed


class Health(NamedTuple):
    """The readiness verdict and, when not ready, every reason in words."""

    ready: bool
    reasons: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {"status": "ready" if self.ready else "not ready", "reasons": list(self.reasons)}


def assess(view: HealthView, now: float, policy: HealthPolicy = HealthPolicy()) -> Health:
    """Ready unless a rule fails; every failing rule is named, so one probe tells the whole story."""
    if view.error is not None:
        return Health(False, (f"pipeline snapshot failed: {view.error}",))
    reasons: list[str] = []
    if not view.partitions:
        reasons.append("no partitions assigned")
    if view.paused_since is not None and now - view.paused_since >= policy.paused_after_s:
        reasons.append(
            f"partitions paused for {now - view.paused_since:.0f} s (limit {policy.paused_after_s:g} s)"
        )
    session = view.session
    usable = session is not None and now < session.expires_at
    # An idle connector lets its session lapse and renews it with the next batch: only batches waiting
    # longer than a renewal takes make a missing or expired session a problem.
    if not usable and view.waiting_since is not None and now - view.waiting_since >= policy.session_grace_s:
        state = "none created" if session is None else f"expired {now - session.expires_at:.0f} s ago"
        reasons.append(
            f"no valid meter event session ({state}) while batches wait for "
            f"{now - view.waiting_since:.0f} s (limit {policy.session_grace_s:g} s)"
        )
    for p in view.partitions:
        # Idle partitions commit nothing and are fine; stuck means records keep arriving and none commit.
        end, end_then = p.end, p.end_then
        if end is None or end_then is None or end <= end_then or now - p.since < policy.stuck_after_s:
            continue
        at = "nothing committed" if p.committed is None else f"committed offset {p.committed}"
        reasons.append(
            f"{p.topic}[{p.partition}]: {at} for {now - p.since:.0f} s while {end - end_then} "
            f"records arrived (limit {policy.stuck_after_s:g} s)"
        )
    return Health(not reasons, tuple(reasons))


class _Tracker:
    """Folds successive snapshots into a ``HealthView``: remembers when each value last changed.

    Changes are seen at observation time (each scrape and probe), so a "since" is late by at most one
    probe interval; an offset that never changed between two observations did not move in between.
    """

    def __init__(self) -> None:
        self._partitions: dict[tuple[str, int], PartitionView] = {}
        self._waiting_since: float | None = None
        self._session_id: str | None = None
        self.session_seen = 0.0

    def fold(self, snap: Snapshot, now: float, paused_since: float | None, error: str | None) -> HealthView:
        if error is not None:  # keep the history: one failed look must not restart every clock
            return HealthView(paused_since=paused_since, error=error)
        current: dict[tuple[str, int], PartitionView] = {}
        for p in snap.partitions:
            key = (p.topic, p.partition)
            before = self._partitions.get(key)
            if before is None or before.committed != p.committed:
                since, end_then = now, p.end
            else:
                since, end_then = before.since, p.end if before.end_then is None else before.end_then
            current[key] = PartitionView(p.topic, p.partition, p.committed, p.end, since, end_then)
        self._partitions = current  # revoked and lost partitions drop out with their history
        waiting = snap.sender is not None and snap.sender.batches_in_flight > 0
        if not waiting:
            self._waiting_since = None
        elif self._waiting_since is None:
            self._waiting_since = now
        if snap.session is not None and snap.session.id != self._session_id:
            self._session_id, self.session_seen = snap.session.id, now
        return HealthView(tuple(current.values()), paused_since, snap.session, self._waiting_since, error)


# ------------------------------------------------------------------------------------------ metrics


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

        stats = snap.sender
        if stats is not None:
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
            for reason, value in t._monotonic_retries(stats).items():
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
        session = snap.session
        if session is not None:
            created = session.created_at if session.created_at is not None else t._tracker.session_seen
            yield _gauge("session_token_age_seconds", "Age of the meter event session token.", now - created)
            yield _gauge(
                "session_expires_in_seconds",
                "Seconds until the session token expires (negative: expired).",
                session.expires_at - now,
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
        self._tracker = _Tracker()
        self._retries_seen: dict[str, int] = {}
        self._paused_since: float | None = None
        self.paused_partitions = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

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
        return cls(snapshot, port=served, scrub=RedactingFilter(known_secrets(settings)).scrub, **options)

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

    def dead_lettered(self, code: str, records: int = 1) -> None:
        """The dead-letter topic acknowledged a record rejected with ``code``."""
        with self._lock:
            if code not in self._codes:
                if len(self._codes) >= MAX_DEAD_LETTER_CODES:
                    code = "other"
                self._codes.add(code)
        self._dead_lettered.labels(code).inc(records)

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
            view = self._tracker.fold(snap, now, self._paused_since, error)
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
        return self._server.server_address[1] if self._server is not None else self._requested_port

    def start(self) -> None:
        """Serve /metrics, /healthz and /readyz from a daemon thread (nothing when the port is None)."""
        if self._requested_port is None or self._server is not None:
            return
        try:
            server = _Server((self._host, self._requested_port), _Handler)
        except OSError as exc:
            raise FatalError(
                f"cannot serve metrics on {self._host}:{self._requested_port} ({exc}); "
                "set CONNECTOR_METRICS_PORT to a free port, or 0 to disable"
            ) from None
        server.telemetry = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="kafka-stripe-telemetry",
            daemon=True,
        )
        self._thread.start()
        log.info("metrics and health on http://%s:%d/metrics, /healthz, /readyz", self._host, self.port)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)

    def __enter__(self) -> Telemetry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung scraper must never keep the process alive
    telemetry: Telemetry


class _Handler(BaseHTTPRequestHandler):
    timeout = 10  # seconds a client may dawdle; each request has its own thread
    server_version = "kafka-stripe"

    def do_GET(self) -> None:
        telemetry = cast(_Server, self.server).telemetry
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, content_type, encoder(telemetry.registry))
            elif path == "/healthz":
                self._send(200, "text/plain; charset=utf-8", b"ok\n")
            elif path == "/readyz":
                health = telemetry.health()
                body = json.dumps(health.as_json()).encode() + b"\n"
                self._send(200 if health.ready else 503, "application/json", body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics, /healthz, /readyz\n")
        except Exception:
            log.exception("telemetry request %s failed", path)
            self._send(500, "text/plain; charset=utf-8", b"internal error\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Probes and scrapes arrive every few seconds; an access line each would drown the real logs.
        pass


# ------------------------------------------------------------------------------------------ logging

# Stripe keys keep their prefix (test or live tells the reader something); the secret part goes.
_KEY = re.compile(r"\b((?:sk|rk)_(?:test|live)_)[A-Za-z0-9]+")
# Meter event session tokens: the emulator's shape (mes_tok_ + 40 base-62) and Stripe's field name.
_SESSION_TOKEN = re.compile(r"\bmes_tok_[A-Za-z0-9]+")
_TOKEN_FIELD = re.compile(r"""(["']?authentication_token["']?\s*[:=]\s*["']?)[^"'\s,}]+""")
# Whatever follows Bearer/Basic when long enough to be a credential rather than prose.
_AUTH_HEADER = re.compile(r"\b(Bearer|Basic)(\s+)[A-Za-z0-9._~+/=-]{16,}")
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^/\s@]+@")


def redact(text: str) -> str:
    """``text`` with anything shaped like a Stripe key, session token or credential masked."""
    text = _KEY.sub(lambda m: m.group(1) + MASK, text)
    text = _SESSION_TOKEN.sub("mes_tok_" + MASK, text)
    text = _TOKEN_FIELD.sub(lambda m: m.group(1) + MASK, text)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    return _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + "@", text)


class RedactingFilter(logging.Filter):
    """Masks known secret values and credential-shaped text in a record's message, args and traceback.

    The message is formatted here and the args dropped, so an argument's ``str`` can't carry a secret
    past the filter; the traceback is rendered once, masked, and cached where every formatter reads it.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a password containing another secret is masked whole; tiny values skipped.
        # A Stripe key keeps its prefix, as everywhere else settings are shown.
        values = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self._secrets = [(s, _masked(s)) for s in values]

    def scrub(self, text: str) -> str:
        for secret, mask in self._secrets:
            text = text.replace(secret, mask)
        return redact(text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging reports it; still mask what is there
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = self.scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


_TRACEBACKS = logging.Formatter()


def _masked(secret: str) -> str:
    key = _KEY.fullmatch(secret)
    return key.group(1) + MASK if key else MASK


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, worker, exception."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        document: dict[str, object] = {
            "time": moment.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._worker is not None:
            document["worker"] = self._worker
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = record.stack_info
        return json.dumps(document, ensure_ascii=False, default=str)


def known_secrets(settings: Settings) -> list[str]:
    """Every credential value in the settings, and a registry password on its own too."""
    values = [secret.reveal() for secret in settings.secrets()]
    registry = settings.schema_registry
    if registry is not None and registry.basic_auth_user_info is not None:
        values.append(registry.basic_auth_user_info.reveal().partition(":")[2])
    return values


def configure_logging(
    settings: Settings, worker: int | None = None, *, stream: TextIO | None = None
) -> logging.Handler:
    """Text or JSON lines on stderr at ``CONNECTOR_LOG_LEVEL``, secrets masked; workers name themselves."""
    telemetry = settings.telemetry
    handler = logging.StreamHandler(stream or sys.stderr)
    # On the handler, not a logger: logger filters skip records propagated from child loggers.
    handler.addFilter(RedactingFilter(known_secrets(settings)))
    if telemetry.log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        who = "" if worker is None else f"[worker {worker}] "
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(telemetry.log_level)
    return handler
