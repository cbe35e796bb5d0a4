"""Metrics move while the connector works; /readyz turns unhealthy when Stripe is down long enough."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from connector.devtools.broker import free_port
from connector.devtools.emulator import EmulatorProcess
from tests.support.harness import (
    ConnectorProcess,
    committed,
    connector_env,
    create_meter,
    encode,
    produce,
    usage,
    wait_until,
)


def metric(text: str, name: str) -> float:
    """Sum of every sample of ``name`` (all label sets) in a Prometheus text exposition."""
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(text))


def test_metrics_and_readiness_follow_the_pipeline(
    kafka_bootstrap: str, make_topic, group_id: str, tmp_path: Path
) -> None:
    topic = make_topic(partitions=4)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with EmulatorProcess() as emulator:
        create_meter(emulator.url)
        env = connector_env(
            kafka_bootstrap,
            emulator.url,
            [topic],
            group_id,
            CONNECTOR_METRICS_PORT=str(port),
            CONNECTOR_HEALTH_STUCK_AFTER_S="3",
            CONNECTOR_RETRY_MAX_BACKOFF_MS="1000",
        )
        now = int(time.time() * 1000)
        first = [(None, encode(usage(f"cus_{i % 3}", 1, now - i))) for i in range(2000)]
        ends = produce(kafka_bootstrap, topic, first, 4)
        with ConnectorProcess(env, tmp_path) as connector:
            try:
                wait_until(lambda: _get(f"{base}/healthz") == 200, 30, message="/healthz")
                wait_until(lambda: committed(kafka_bootstrap, group_id, ends) == ends, 60, message="commits")
                wait_until(lambda: _get(f"{base}/readyz") == 200, 30, message="/readyz ready")
                # Partition gauges are refreshed by the consumer thread about once a second.
                wait_until(
                    lambda: metric(_metrics(base), "kafka_stripe_committed_offset") == sum(ends.values()),
                    30,
                    message="committed offset gauge",
                )
                text = _metrics(base)
                assert metric(text, "kafka_stripe_records_consumed_total") == 2000
                assert metric(text, "kafka_stripe_events_delivered_total") == 2000
                assert metric(text, "kafka_stripe_assigned_partitions") == 4
                assert "kafka_stripe_record_to_acceptance_seconds_bucket" in text
                assert "sk_test_" not in text

                # Stripe goes down while records keep arriving: partitions pause, commits stand
                # still, and after the stuck threshold the member must stop looking ready.
                httpx.post(f"{emulator.url}/_emulator/faults", json={"outage": True}).raise_for_status()
                more = [(None, encode(usage(f"cus_{i % 3}", 1, now + i))) for i in range(2000)]
                ends2 = produce(kafka_bootstrap, topic, more, 4)
                wait_until(lambda: _get(f"{base}/readyz") == 503, 60, message="/readyz unhealthy")
                reasons = httpx.get(f"{base}/readyz").json()["reasons"]
                assert reasons, "a 503 names its reasons"
                during = httpx.get(f"{base}/metrics").text
                assert metric(during, "kafka_stripe_retries_total") > 0

                httpx.post(f"{emulator.url}/_emulator/faults", json={"outage": False}).raise_for_status()
                caught_up = lambda: committed(kafka_bootstrap, group_id, ends2) == ends2  # noqa: E731
                wait_until(caught_up, 90, message="catch-up")
                wait_until(lambda: _get(f"{base}/readyz") == 200, 30, message="/readyz ready again")
                after = httpx.get(f"{base}/metrics").text
                assert metric(after, "kafka_stripe_events_delivered_total") == 4000
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n--- connector log ---\n{connector.log()[-4000:]}") from exc
            assert connector.stop() == 0


def _metrics(base: str) -> str:
    return httpx.get(f"{base}/metrics", timeout=5).text


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0
