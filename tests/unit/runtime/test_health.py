"""``connector.runtime.health``: the readiness rules, their history across observations, and the server."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from connector.config.secrets import MASK
from connector.errors import FatalError
from connector.runtime.health import HealthPolicy, HealthView, PartitionView, assess
from connector.runtime.metrics import Telemetry
from connector.runtime.snapshot import PartitionSnapshot, SessionSnapshot, Snapshot
from tests.unit.runtime.support import (
    API_KEY,
    T0,
    Clock,
    FakePipeline,
    get,
    healthy_snapshot,
    scrape,
    sender_stats,
    value,
)

# -------------------------------------------------------------------------------------------- http


def test_healthz_and_unknown_paths(telemetry: Telemetry) -> None:
    assert get(telemetry, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    status, _, body = get(telemetry, "/nope")
    assert status == 404 and "/readyz" in body


def test_readyz_over_http(telemetry: Telemetry, pipeline: FakePipeline, clock: Clock) -> None:
    status, content_type, body = get(telemetry, "/readyz")
    assert (status, content_type) == (503, "application/json")
    assert json.loads(body) == {"status": "not ready", "reasons": ["no partitions assigned"]}

    pipeline.snapshot = healthy_snapshot()
    status, _, body = get(telemetry, "/readyz")
    assert status == 200 and json.loads(body) == {"status": "ready", "reasons": []}

    telemetry.paused(2)
    clock.now += 61
    status, _, body = get(telemetry, "/readyz")
    assert status == 503 and json.loads(body)["reasons"] == ["partitions paused for 61 s (limit 60 s)"]
    telemetry.resumed()
    assert get(telemetry, "/readyz")[0] == 200


def test_stuck_consumer_is_found_across_observations(
    telemetry: Telemetry, pipeline: FakePipeline, clock: Clock
) -> None:
    pipeline.snapshot = Snapshot(partitions=(PartitionSnapshot("usage", 3, 100, 100),))
    assert telemetry.health().ready
    clock.now += 30
    pipeline.snapshot = Snapshot(partitions=(PartitionSnapshot("usage", 3, 100, 160),))
    assert telemetry.health().ready  # the lag grows, but not for long enough yet
    clock.now += 31
    pipeline.snapshot = Snapshot(partitions=(PartitionSnapshot("usage", 3, 100, 220),))
    status, _, body = get(telemetry, "/readyz")
    assert status == 503
    assert json.loads(body)["reasons"] == [
        "usage[3]: committed offset 100 for 61 s while 120 records arrived (limit 60 s)"
    ]
    assert value(scrape(telemetry), "kafka_stripe_ready") == 0
    clock.now += 1
    pipeline.snapshot = Snapshot(partitions=(PartitionSnapshot("usage", 3, 150, 230),))
    assert telemetry.health().ready  # the commit moved: its clock starts again


def test_idle_partition_with_standing_commit_stays_ready(
    telemetry: Telemetry, pipeline: FakePipeline, clock: Clock
) -> None:
    pipeline.snapshot = Snapshot(partitions=(PartitionSnapshot("usage", 0, 500, 500),))
    for _ in range(5):
        assert telemetry.health().ready
        clock.now += 60


def test_session_grace_counts_from_when_batches_started_waiting(
    telemetry: Telemetry, pipeline: FakePipeline, clock: Clock
) -> None:
    expired = SessionSnapshot("bmes_1", expires_at=T0 - 600)  # lapsed while the connector was idle
    parts = (PartitionSnapshot("usage", 0, 10, 10),)
    pipeline.snapshot = Snapshot(parts, sender_stats(batches_in_flight=0), expired)
    assert telemetry.health().ready
    pipeline.snapshot = Snapshot(parts, sender_stats(batches_in_flight=2), expired)
    assert telemetry.health().ready  # the next batch is renewing it
    clock.now += 31
    health = telemetry.health()
    assert not health.ready
    assert health.reasons == (
        "no valid meter event session (expired 631 s ago) while batches wait for 31 s (limit 30 s)",
    )


def test_snapshot_failure_fails_readiness_but_not_metrics(
    telemetry: Telemetry, pipeline: FakePipeline
) -> None:
    pipeline.error = RuntimeError(f"Consumer closed (token {API_KEY})")
    telemetry.consumed(3)
    status, _, body = get(telemetry, "/readyz")
    assert status == 503
    (reason,) = json.loads(body)["reasons"]
    assert reason.startswith("pipeline snapshot failed: RuntimeError: Consumer closed")
    assert API_KEY not in reason and "sk_live_" + MASK in reason
    samples = scrape(telemetry)
    assert value(samples, "kafka_stripe_records_consumed_total") == 3
    assert value(samples, "kafka_stripe_ready") == 0


def test_port_in_use_is_a_clear_fatal_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        telemetry = Telemetry(port=port, host="127.0.0.1")
        with pytest.raises(FatalError, match="CONNECTOR_METRICS_PORT"):
            telemetry.start()


# ------------------------------------------------------------------------------------------ health

POLICY = HealthPolicy(stuck_after_s=60, paused_after_s=60, session_grace_s=30)
VALID = SessionSnapshot("bmes_1", expires_at=T0 + 600)
EXPIRED = SessionSnapshot("bmes_1", expires_at=T0 - 5)


def part(
    committed: int | None = 100, end: int | None = 150, age: float = 0, end_then: int | None = 150
) -> PartitionView:
    return PartitionView("usage", 0, committed, end, T0 - age, end_then)


def view(**fields: Any) -> HealthView:
    fields.setdefault("partitions", (part(),))
    return HealthView(**fields)


@pytest.mark.parametrize(
    ("case", "health_view", "reason"),
    [
        ("healthy", view(session=VALID, waiting_since=T0 - 500), None),
        ("nothing assigned", view(partitions=()), "no partitions assigned"),
        ("paused briefly", view(paused_since=T0 - 59), None),
        ("paused too long", view(paused_since=T0 - 60), "partitions paused for 60 s"),
        ("no batch has needed a session", view(session=None, waiting_since=None), None),
        ("first session being created", view(session=None, waiting_since=T0 - 29), None),
        ("no session while batches wait", view(session=None, waiting_since=T0 - 30), "(none created)"),
        ("expired while idle", view(session=EXPIRED, waiting_since=None), None),
        ("expired, renewal under way", view(session=EXPIRED, waiting_since=T0 - 10), None),
        ("expired while batches wait", view(session=EXPIRED, waiting_since=T0 - 45), "expired 5 s ago"),
        ("valid while batches wait", view(session=VALID, waiting_since=T0 - 3600), None),
        ("commit standing, idle", view(partitions=(part(age=3600, end_then=150),)), None),
        ("commit standing, lag grows briefly", view(partitions=(part(age=59, end_then=120),)), None),
        (
            "commit stuck while lag grows",
            view(partitions=(part(age=60, end_then=120),)),
            "usage[0]: committed offset 100 for 60 s while 30 records arrived",
        ),
        (
            "never committed while records arrive",
            view(partitions=(part(committed=None, age=90, end_then=0),)),
            "usage[0]: nothing committed for 90 s while 150 records arrived",
        ),
        ("log end unknown", view(partitions=(part(end=None, age=600, end_then=None),)), None),
        ("snapshot failed", view(error="RuntimeError: boom"), "pipeline snapshot failed: RuntimeError: boom"),
    ],
)
def test_readiness_rules(case: str, health_view: HealthView, reason: str | None) -> None:
    health = assess(health_view, T0, POLICY)
    if reason is None:
        assert health.ready and health.reasons == (), case
    else:
        assert not health.ready, case
        assert any(reason in r for r in health.reasons), (case, health.reasons)


def test_every_failing_rule_is_reported_and_thresholds_are_parameters() -> None:
    broken = view(
        partitions=(part(age=20, end_then=100),),
        paused_since=T0 - 20,
        session=None,
        waiting_since=T0 - 20,
    )
    assert assess(broken, T0, POLICY).ready
    strict = assess(broken, T0, HealthPolicy(stuck_after_s=10, paused_after_s=10, session_grace_s=10))
    assert len(strict.reasons) == 3
    assert strict.as_json()["status"] == "not ready"


def test_a_failed_snapshot_keeps_the_history(
    telemetry: Telemetry, pipeline: FakePipeline, clock: Clock
) -> None:
    pipeline.snapshot = Snapshot(partitions=(PartitionSnapshot("usage", 0, 100, 100),))
    assert telemetry.health().ready
    clock.now += 40
    pipeline.error = RuntimeError("race with a rebalance")
    assert not telemetry.health().ready
    pipeline.error = None
    clock.now += 21
    pipeline.snapshot = Snapshot(partitions=(PartitionSnapshot("usage", 0, 100, 130),))
    assert telemetry.health().reasons == (
        "usage[0]: committed offset 100 for 61 s while 30 records arrived (limit 60 s)",
    )
