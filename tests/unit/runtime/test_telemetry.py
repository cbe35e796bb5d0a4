"""Unit tests of ``connector.runtime`` metrics, health and logging: a real socket, readiness, masked logs."""

from __future__ import annotations

import http.client
import io
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connector.config.secrets import redact
from connector.config.settings import (
    MASK,
    KafkaSettings,
    SchemaRegistrySettings,
    Secret,
    Settings,
    StripeSettings,
    TelemetrySettings,
)
from connector.errors import FatalError
from connector.runtime.health import HealthPolicy, HealthView, PartitionView, assess
from connector.runtime.logging import RedactingFilter, configure_logging
from connector.runtime.metrics import MAX_DEAD_LETTER_CODES, Telemetry
from connector.runtime.snapshot import PartitionSnapshot, SessionSnapshot, Snapshot
from connector.stripe.sender import SenderStats

T0 = 1_000.0
WALL = 1_795_000_000.0
API_KEY = "sk_live_51AbCdEfGhIjKlMnOpQrStUvWx"
SASL_PASSWORD = "kafka-pa55word with spaces"
REGISTRY_AUTH = "registry-user:registry-pa55"
OTHER_KEY = "rk_test_9ZyXwVuTsRqPoNmLkJiH"  # not in the settings: masked by its shape
SESSION_TOKEN = "mes_tok_" + "Ab3" * 13 + "Z"  # the emulator's shape: mes_tok_ and 40 base-62
OPAQUE_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
SECRETS = (API_KEY, SASL_PASSWORD, REGISTRY_AUTH, "registry-pa55", OTHER_KEY, SESSION_TOKEN, OPAQUE_TOKEN)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sender_stats(**overrides: int) -> SenderStats:
    fields = dict.fromkeys(SenderStats._fields, 0)
    fields.update(overrides)
    return SenderStats(**fields)


class FakePipeline:
    """Stands in for the pipeline's snapshot callback; tests move its numbers between scrapes."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()
        self.error: Exception | None = None

    def __call__(self) -> Snapshot:
        if self.error is not None:
            raise self.error
        return self.snapshot


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pipeline() -> FakePipeline:
    return FakePipeline()


@pytest.fixture
def telemetry(pipeline: FakePipeline, clock: Clock) -> Iterator[Telemetry]:
    with Telemetry(pipeline, port=0, host="127.0.0.1", clock=clock, wall_clock=lambda: WALL) as served:
        yield served


def get(telemetry: Telemetry, path: str) -> tuple[int, str, str]:
    assert telemetry.port is not None
    connection = http.client.HTTPConnection("127.0.0.1", telemetry.port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        connection.close()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(telemetry: Telemetry) -> Samples:
    status, content_type, body = get(telemetry, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def healthy_snapshot(committed: int = 100, end: int = 150, in_flight: int = 1) -> Snapshot:
    return Snapshot(
        partitions=(
            PartitionSnapshot("usage", 0, committed, end),
            PartitionSnapshot("usage", 1, None, 10),
        ),
        sender=sender_stats(batches_in_flight=in_flight, batches=3, sessions_created=1),
        session=SessionSnapshot("bmes_1", expires_at=T0 + 900, created_at=T0 - 10),
        buffered=1234,
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


def settings(log_format: Literal["text", "json"] = "text", metrics_port: int = 9464) -> Settings:
    return Settings(
        stripe=StripeSettings(api_key=Secret(API_KEY, hint="sk_live_")),
        kafka=KafkaSettings(
            options=(("bootstrap.servers", "broker:9092"), ("sasl.password", Secret(SASL_PASSWORD)))
        ),
        topics=(),
        telemetry=TelemetrySettings(metrics_port=metrics_port, log_format=log_format),
        schema_registry=SchemaRegistrySettings("https://registry:8081", Secret(REGISTRY_AUTH)),
    )


def test_from_settings_port_zero_disables_and_workers_shift_the_port() -> None:
    disabled = Telemetry.from_settings(settings(metrics_port=0), None)
    disabled.start()  # serves nothing, and the calls still work
    disabled.consumed(1)
    assert disabled.port is None
    assert Telemetry.from_settings(settings(metrics_port=9500), None, worker=2).port == 9502
    assert Telemetry.from_settings(settings(), None).port == 9464


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


# ------------------------------------------------------------------------------------------ logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def log_everything(logger: logging.Logger) -> None:
    logger.info(f"key in the message <{API_KEY}>")
    logger.info("secrets in args: %s / %r / %s", SASL_PASSWORD, {"auth": REGISTRY_AUTH}, Secret(API_KEY))
    logger.warning("unknown keys %s and %s", OTHER_KEY, "registry-pa55")
    logger.warning("headers %s", {"Authorization": f"Bearer {SESSION_TOKEN}"})
    logger.warning("opaque Authorization: Bearer %s", OPAQUE_TOKEN)
    logger.info('session body {"authentication_token": "%s", "id": "bmes_1"}', SESSION_TOKEN)
    logger.info("100%% of %d records", 5)
    try:
        raise RuntimeError(f"Stripe refused {API_KEY} with {SESSION_TOKEN} on {SASL_PASSWORD}")
    except RuntimeError:
        logger.exception("delivery failed for %s", OTHER_KEY)


@pytest.mark.usefixtures("restore_logging")
def test_text_logs_are_redacted() -> None:
    out = io.StringIO()
    configure_logging(settings("text"), worker=3, stream=out)
    log_everything(logging.getLogger("kafka_stripe.test"))
    text = out.getvalue()
    for secret in SECRETS:
        assert secret not in text, secret
    assert "key in the message <sk_live_**********>" in text
    assert "secrets in args: ********** / {'auth': '**********'} / **********\n" in text
    assert "unknown keys rk_test_********** and **********" in text
    assert "Bearer mes_tok_**********" in text
    assert "Authorization: Bearer **********" in text
    assert '"authentication_token": "**********", "id": "bmes_1"' in text
    assert "100% of 5 records" in text
    assert "RuntimeError: Stripe refused sk_live_********** with mes_tok_********** on **********" in text
    assert "Traceback (most recent call last)" in text
    assert "INFO [worker 3] kafka_stripe.test: 100% of 5 records" in text


@pytest.mark.usefixtures("restore_logging")
def test_json_logs_are_redacted_one_object_per_line() -> None:
    out = io.StringIO()
    configure_logging(settings("json"), stream=out)
    log_everything(logging.getLogger("kafka_stripe.test"))
    text = out.getvalue()
    for secret in SECRETS:
        assert secret not in text, secret
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 8
    assert {line["logger"] for line in lines} == {"kafka_stripe.test"}
    assert lines[0]["message"] == "key in the message <sk_live_**********>"
    assert lines[0]["level"] == "INFO" and lines[0]["time"].endswith("Z")
    failure = lines[-1]
    assert failure["level"] == "ERROR"
    assert failure["message"] == "delivery failed for rk_test_**********"
    assert "Stripe refused sk_live_********** with mes_tok_********** on **********" in failure["exception"]
    assert "worker" not in failure


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_sets_the_level_and_one_handler() -> None:
    out = io.StringIO()
    configure_logging(settings("text"), stream=out)
    configure_logging(settings("text"), stream=out)  # called again by a worker: still one handler
    assert len(logging.getLogger().handlers) == 1
    logging.getLogger("kafka_stripe.test").debug("hidden")
    assert out.getvalue() == ""


def test_filter_is_idempotent_and_keeps_short_values_readable() -> None:
    scrubber = RedactingFilter(["pw", SASL_PASSWORD])
    once = scrubber.scrub(f"pw is not masked, {SASL_PASSWORD} is; key {API_KEY}")
    assert once == "pw is not masked, ********** is; key sk_live_**********"
    assert scrubber.scrub(once) == once
    assert redact("see https://user:hunter22@registry:8081/subjects") == (
        "see https://user:**********@registry:8081/subjects"
    )
    assert redact("Bearer short") == "Bearer short"


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
