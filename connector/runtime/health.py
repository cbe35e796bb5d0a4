"""Readiness rules and the one HTTP server of a member: /healthz, /readyz and /metrics on one port."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, Protocol, cast

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from connector.errors import FatalError
from connector.runtime.snapshot import SessionSnapshot, Snapshot

log = logging.getLogger("kafka_stripe.telemetry")


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
    meter_problems: tuple[str, ...] = ()  # topics whose events are held back for their meter


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
    reasons.extend(view.meter_problems)
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


class HealthHistory:
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
        meters = tuple(
            f"topic {m.topic} is paused: {m.problem}" for m in snap.meters if m.problem is not None
        )
        return HealthView(
            tuple(current.values()), paused_since, snap.session, self._waiting_since, error, meters
        )


class Observed(Protocol):
    """What the server serves (``connector.runtime.metrics.Telemetry``)."""

    registry: CollectorRegistry

    def health(self) -> Health: ...


class HealthServer:
    """/metrics, /healthz and /readyz from a daemon thread; ``port=0`` binds a free port (tests)."""

    def __init__(self, observed: Observed, host: str, port: int) -> None:
        try:
            server = _Server((host, port), _Handler)
        except OSError as exc:
            raise FatalError(
                f"cannot serve metrics on {host}:{port} ({exc}); "
                "set CONNECTOR_METRICS_PORT to a free port, or 0 to disable"
            ) from None
        server.observed = observed
        self._server = server
        self.port: int = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="kafka-stripe-telemetry",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung scraper must never keep the process alive
    observed: Observed


class _Handler(BaseHTTPRequestHandler):
    timeout = 10  # seconds a client may dawdle; each request has its own thread
    server_version = "kafka-stripe"

    def do_GET(self) -> None:
        telemetry = cast(_Server, self.server).observed
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
