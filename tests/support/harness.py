"""Helpers for end-to-end tests: produce Avro usage records, run the connector, read Stripe's totals."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastavro
import httpx
from confluent_kafka import Consumer, Producer, TopicPartition

from connector.config.settings import DEFAULT_SCHEMA, ENV_PREFIXES

if TYPE_CHECKING:
    import pytest

SCHEMA = fastavro.parse_schema(json.loads(DEFAULT_SCHEMA.read_text()))
API_KEY = "sk_test_e2e_" + "x" * 16


def encode(record: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, SCHEMA, dict(record))
    return buffer.getvalue()


def use_connector_env(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> None:
    """Make exactly ``env``'s connector variables the process environment's, for in-process command runs
    (the test process may carry its own, e.g. a CI broker's)."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith(ENV_PREFIXES):
            monkeypatch.setenv(name, value)


def usage(
    customer: str,
    value: int | float | Decimal | str,
    ts_ms: int | None = None,
    identifier: str | None = None,
    attributes: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "identifier": identifier,
        "stripe_customer_id": customer,
        "value": value,
        "timestamp": ts_ms if ts_ms is not None else int(time.time() * 1000),
        "attributes": attributes,
    }


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[tuple[bytes | None, bytes]],
    partitions: int,
    *,
    by_key: bool = False,
) -> dict[tuple[str, int], int]:
    """Produce (key, value) pairs round-robin over partitions (``by_key``: each key always to the same
    partition); returns end offsets from delivery reports."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 2000})
    ends: dict[tuple[str, int], int] = {}
    failures: list[str] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))
            return
        key = (msg.topic(), msg.partition())
        ends[key] = max(ends.get(key, 0), msg.offset() + 1)

    for n, (key, value) in enumerate(values):
        while True:
            try:
                partition = zlib.crc32(key or b"") % partitions if by_key else n % partitions
                producer.produce(topic, value=value, key=key, partition=partition, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.1)
        if n % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    assert not failures, failures[:3]
    return ends


def connector_env(
    bootstrap: str, stripe_url: str, topics: Iterable[str], group: str, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    topic_list = list(topics)
    env.update(
        {
            "STRIPE_API_KEY": API_KEY,
            "STRIPE_API_BASE": stripe_url,
            "STRIPE_METER_EVENTS_BASE": stripe_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_GROUP_ID": group,
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "CONNECTOR_TOPICS": ",".join(topic_list),
            "CONNECTOR_METRICS_PORT": "0",
            "CONNECTOR_COMMIT_INTERVAL_MS": "200",
            "CONNECTOR_LINGER_MS": "20",
            # The emulator has no sandbox limit unless started with sandbox_limits; tests of the
            # test-mode default (25 requests/s) remove this or start it so.
            "CONNECTOR_RATE_LIMIT_RPS": "10000",
            # Checking customers and reading error reports are on by default; tests of other behaviour
            # turn them off (they add lookups that hold records, and a group join per process), and the
            # tests of those features turn them on (tests/integration/pipeline/test_e2e_validation.py,
            # tests/integration/reports/).
            "CONNECTOR_VERIFY_CUSTOMERS": "false",
            "CONNECTOR_ERROR_REPORTS_POLL_S": "0",
        }
    )
    for topic in topic_list:
        env[f"TOPIC_{topic.upper().replace('-', '_').replace('.', '_')}_EVENT_NAME"] = "api_requests"
    env.update(extra)
    return env


class ConnectorProcess:
    """``kafka-stripe run`` in a child process, its log in a file."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.log_path = log_dir / f"connector-{uuid.uuid4().hex[:8]}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "connector", "run"],
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> ConnectorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self._log.close()


def stripe(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)


def create_meter(
    url: str, event_name: str = "api_requests", formula: str = "sum", window: str | None = None
) -> str:
    """A meter; ``window`` (hour, day): Stripe keeps the latest event per customer and window."""
    form = {"display_name": event_name, "event_name": event_name, "default_aggregation[formula]": formula}
    if window is not None:
        form["event_time_window"] = window
    with stripe(url) as client:
        response = client.post("/v1/billing/meters", data=form)
        response.raise_for_status()
        return str(response.json()["id"])


def meter_total(url: str, meter_id: str, customer: str, start_s: int, end_s: int) -> float:
    """Stripe's summary for one customer over [start, end) (seconds, aligned down/up to the minute)."""
    start = start_s - start_s % 60
    end = end_s - end_s % 60 + 60
    with stripe(url) as client:
        response = client.get(
            f"/v1/billing/meters/{meter_id}/event_summaries",
            params={"customer": customer, "start_time": start, "end_time": end},
        )
        response.raise_for_status()
        return float(sum(item["aggregated_value"] for item in response.json()["data"]))


def emulator_stats(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/_emulator/stats", timeout=120)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def committed(
    bootstrap: str, group: str, partitions: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        result = consumer.committed([TopicPartition(t, p) for t, p in partitions], timeout=30)
        return {(tp.topic, tp.partition): tp.offset for tp in result}
    finally:
        consumer.close()


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.25, message: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {message}")
        time.sleep(interval)
