"""``connector.runtime.metrics``: counters pushed, gauges pulled, read over a real socket."""

from __future__ import annotations

import http.client

import pytest

from connector.runtime.metrics import MAX_DEAD_LETTER_CODES, Telemetry
from connector.runtime.snapshot import PartitionSnapshot, SessionSnapshot, Snapshot
from tests.unit.runtime.support import (
    T0,
    WALL,
    Clock,
    FakePipeline,
    healthy_snapshot,
    scrape,
    sender_stats,
    settings,
    value,
)

# ------------------------------------------------------------------------------------------ metrics


def test_metrics_move_with_pushed_calls_and_pulled_snapshots(
    telemetry: Telemetry, pipeline: FakePipeline, clock: Clock
) -> None:
    pipeline.snapshot = healthy_snapshot()
    telemetry.consumed(500)
    telemetry.batch_done(100, 100, record_times_ms=(int(WALL * 1000) - 2_000, int(WALL * 1000) - 300))
    telemetry.batch_done(100, 97, 3)
    telemetry.batch_done(100, 40, 10)
    telemetry.batch_failed()
    telemetry.observe_send(0.04)
    telemetry.observe_send(2.0)
    telemetry.dead_lettered("invalid_value")
    telemetry.dead_lettered("invalid_value")
    telemetry.dead_lettered("timestamp_in_future")
    telemetry.paused(2)

    first = scrape(telemetry)
    assert value(first, "kafka_stripe_records_consumed_total") == 500
    assert value(first, "kafka_stripe_events_delivered_total") == 237
    for outcome, count in (("delivered", 1), ("rejected", 1), ("undelivered", 1), ("failed", 1)):
        assert value(first, "kafka_stripe_batches_total", outcome=outcome) == count
    assert value(first, "kafka_stripe_dead_lettered_total", code="invalid_value") == 2
    assert value(first, "kafka_stripe_dead_lettered_total", code="timestamp_in_future") == 1
    assert value(first, "kafka_stripe_paused_partitions") == 2
    assert value(first, "kafka_stripe_assigned_partitions") == 2
    assert value(first, "kafka_stripe_records_buffered") == 1234
    assert value(first, "kafka_stripe_batches_in_flight") == 1
    assert value(first, "kafka_stripe_committed_offset", topic="usage", partition="0") == 100
    assert value(first, "kafka_stripe_consumer_lag", topic="usage", partition="0") == 50
    # Nothing committed yet on partition 1: no offset and no lag rather than a made-up number.
    assert ("kafka_stripe_committed_offset", frozenset({("topic", "usage"), ("partition", "1")})) not in first
    assert value(first, "kafka_stripe_session_token_age_seconds") == 10
    assert value(first, "kafka_stripe_session_expires_in_seconds") == 900
    assert value(first, "kafka_stripe_session_renewals_total") == 0
    assert value(first, "kafka_stripe_request_duration_seconds_count") == 2
    assert value(first, "kafka_stripe_request_duration_seconds_bucket", le="0.05") == 1
    assert value(first, "kafka_stripe_request_duration_seconds_sum") == pytest.approx(2.04)
    # One sample per timestamp handed in (two for the first batch), none for batches without them.
    assert value(first, "kafka_stripe_record_to_acceptance_seconds_count") == 2
    assert value(first, "kafka_stripe_record_to_acceptance_seconds_bucket", le="0.5") == 1
    assert value(first, "kafka_stripe_record_to_acceptance_seconds_bucket", le="2.5") == 2
    assert value(first, "kafka_stripe_ready") == 1

    clock.now += 20
    telemetry.consumed(250)
    telemetry.batch_done(100, 100)
    telemetry.resumed()
    pipeline.snapshot = Snapshot(
        partitions=(PartitionSnapshot("usage", 0, 180, 400),),
        sender=sender_stats(
            batches_in_flight=0, retries=7, rate_limited=4, transport_errors=1, renewals=1, sessions_created=3
        ),
        session=SessionSnapshot("bmes_2", expires_at=T0 + 20 + 900),
    )
    second = scrape(telemetry)
    assert value(second, "kafka_stripe_records_consumed_total") == 750
    assert value(second, "kafka_stripe_events_delivered_total") == 337
    assert value(second, "kafka_stripe_batches_total", outcome="delivered") == 2
    assert value(second, "kafka_stripe_paused_partitions") == 0
    assert value(second, "kafka_stripe_committed_offset", topic="usage", partition="0") == 180
    assert value(second, "kafka_stripe_consumer_lag", topic="usage", partition="0") == 220
    assert value(second, "kafka_stripe_assigned_partitions") == 1  # partition 1 was revoked
    assert value(second, "kafka_stripe_retries_total", reason="rate_limited") == 4
    assert value(second, "kafka_stripe_retries_total", reason="transport") == 1
    assert value(second, "kafka_stripe_retries_total", reason="other") == 2
    assert value(second, "kafka_stripe_session_renewals_total") == 2
    assert value(second, "kafka_stripe_session_token_refusals_total") == 1
    # No creation time from the pipeline: the age counts from when this session was first seen.
    assert value(second, "kafka_stripe_session_token_age_seconds") == 0
    assert "kafka_stripe_records_buffered" not in {name for name, _ in second}


def test_every_documented_metric_is_exposed(telemetry: Telemetry, pipeline: FakePipeline) -> None:
    pipeline.snapshot = healthy_snapshot()
    names = {name for name, _ in scrape(telemetry)}
    for name in (
        "kafka_stripe_records_consumed_total",
        "kafka_stripe_events_delivered_total",
        "kafka_stripe_batches_total",
        "kafka_stripe_retries_total",
        "kafka_stripe_session_renewals_total",
        "kafka_stripe_session_token_age_seconds",
        "kafka_stripe_batches_in_flight",
        "kafka_stripe_paused_partitions",
        "kafka_stripe_committed_offset",
        "kafka_stripe_consumer_lag",
        "kafka_stripe_request_duration_seconds_bucket",
        "kafka_stripe_record_to_acceptance_seconds_bucket",
        "kafka_stripe_ready",
    ):
        assert name in names, name
    # Every outcome starts at zero, so rate() and alerts work from the first scrape.
    fresh = scrape(telemetry)
    for outcome in ("delivered", "rejected", "undelivered", "failed"):
        assert value(fresh, "kafka_stripe_batches_total", outcome=outcome) == 0
    telemetry.dead_lettered("undecodable")
    assert value(scrape(telemetry), "kafka_stripe_dead_lettered_total", code="undecodable") == 1


def test_retry_split_never_goes_backwards(telemetry: Telemetry, pipeline: FakePipeline) -> None:
    pipeline.snapshot = Snapshot(sender=sender_stats(retries=5, rate_limited=1))
    assert value(scrape(telemetry), "kafka_stripe_retries_total", reason="other") == 4
    # A 429 that was not retried (the batch's time ran out) would make a naive "other" drop to 3.
    pipeline.snapshot = Snapshot(sender=sender_stats(retries=5, rate_limited=2))
    samples = scrape(telemetry)
    assert value(samples, "kafka_stripe_retries_total", reason="other") == 4
    assert value(samples, "kafka_stripe_retries_total", reason="rate_limited") == 2


def test_dead_letter_codes_are_capped(telemetry: Telemetry) -> None:
    for i in range(MAX_DEAD_LETTER_CODES + 5):
        telemetry.dead_lettered(f"code_{i}")
    samples = scrape(telemetry)
    codes = {dict(labels)["code"] for name, labels in samples if name == "kafka_stripe_dead_lettered_total"}
    assert len(codes) == MAX_DEAD_LETTER_CODES + 1
    assert value(samples, "kafka_stripe_dead_lettered_total", code="other") == 5


def test_openmetrics_when_asked(telemetry: Telemetry, pipeline: FakePipeline) -> None:
    pipeline.snapshot = healthy_snapshot()
    assert telemetry.port is not None
    connection = http.client.HTTPConnection("127.0.0.1", telemetry.port, timeout=5)
    connection.request("GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    response = connection.getresponse()
    body = response.read().decode()
    connection.close()
    assert response.getheader("Content-Type", "").startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_from_settings_port_zero_disables_and_workers_shift_the_port() -> None:
    disabled = Telemetry.from_settings(settings(metrics_port=0), None)
    disabled.start()  # serves nothing, and the calls still work
    disabled.consumed(1)
    assert disabled.port is None
    assert Telemetry.from_settings(settings(metrics_port=9500), None, worker=2).port == 9502
    assert Telemetry.from_settings(settings(), None).port == 9464
