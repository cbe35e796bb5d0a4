"""Shared by the runtime tests: secrets to hunt for, a fake clock and pipeline, an HTTP scraper, settings."""

from __future__ import annotations

import http.client
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families

from connector.config.secrets import Secret
from connector.config.settings import (
    KafkaSettings,
    SchemaRegistrySettings,
    Settings,
    StripeSettings,
    TelemetrySettings,
)
from connector.runtime.metrics import Telemetry
from connector.runtime.snapshot import PartitionSnapshot, SessionSnapshot, Snapshot
from connector.stripe.results import SenderStats

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
