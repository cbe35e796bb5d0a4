"""The settings model: frozen dataclasses of the whole configuration, read once by ``load_settings``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from connector.config.secrets import Redactor, Secret
from connector.stripe.limits import (
    DEFAULT_API_BASE,
    DEFAULT_API_VERSION,
    DEFAULT_METER_EVENTS_BASE,
    LIVE_RATE_LIMIT_RPS,
    MAX_FUTURE_SECONDS,
    MAX_PAST_SECONDS,
    is_live_key,
)


def _default_schema(name: str = "usage_record.avsc") -> Path:
    """A bundled schema: ``schemas/`` in a source checkout, ``connector/schemas/`` when installed."""
    package = Path(__file__).resolve().parents[1]  # connector/
    installed = package / "schemas" / name
    return installed if installed.exists() else package.parent / "schemas" / name


DEFAULT_SCHEMA = _default_schema()
DEFAULT_CORRECTION_SCHEMA = _default_schema("usage_correction.avsc")
TopicKind = Literal["usage", "corrections"]
DEFAULT_GROUP_ID = "kafka-stripe"
# Every variable the connector reads starts with one of these (the demo and the tests clear them so that
# the caller's own settings cannot leak into a connector they start).
ENV_PREFIXES = ("KAFKA_", "STRIPE_", "TOPIC_", "CONNECTOR_", "SCHEMA_REGISTRY_")

OnInvalid = Literal["dlq", "fail"]
OnMissingMeter = Literal["pause", "dlq"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Properties that only a consumer understands; a producer (the dead-letter topic's) would warn about them.
_CONSUMER_ONLY = frozenset(
    {
        "group.id",
        "group.instance.id",
        "group.protocol",
        "group.remote.assignor",
        "partition.assignment.strategy",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "auto.offset.reset",
        "enable.auto.commit",
        "auto.commit.interval.ms",
        "enable.auto.offset.store",
        "queued.min.messages",
        "queued.max.messages.kbytes",
        "fetch.wait.max.ms",
        "fetch.queue.backoff.ms",
        "fetch.message.max.bytes",
        "max.partition.fetch.bytes",
        "fetch.max.bytes",
        "fetch.min.bytes",
        "fetch.error.backoff.ms",
        "isolation.level",
        "enable.partition.eof",
        "check.crcs",
    }
)


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """How records of one topic become meter events (``TOPIC_<T>_*`` variables)."""

    name: str
    event_name: str
    schema_path: Path = DEFAULT_SCHEMA
    # "avro": raw Avro with the topic's schema, or "confluent": magic byte 0 + 4-byte schema id,
    # the writer schema fetched from the registry and resolved against ``schema_path``.
    wire_format: str = "avro"
    customer_field: str = "stripe_customer_id"
    value_field: str = "value"
    timestamp_field: str = "timestamp"
    identifier_field: str = "identifier"
    payload_fields: tuple[str, ...] = ("attributes",)
    customer_key: str = "stripe_customer_id"
    value_key: str = "value"
    dlq_topic: str = ""
    max_past_seconds: int = MAX_PAST_SECONDS
    max_future_seconds: int = MAX_FUTURE_SECONDS
    # Stripe takes whole numbers only unless the account has decimal values enabled (on request).
    decimal_values: bool = False
    # The namespace of derived identifiers (TOPIC_<T>_NAMESPACE); None: the topic's Kafka topic id.
    namespace: str | None = None
    # "usage": records are usage; "corrections": records cancel or compensate usage already sent.
    kind: TopicKind = "usage"
    # The Stripe context (connected account id or context path) the topic's usage is sent in; None:
    # the platform account the key belongs to. ``context_field`` names a record field that overrides it.
    stripe_context: str | None = None
    context_field: str | None = None
    # Pre-aggregation (TOPIC_<T>_AGGREGATE): records summed per customer, payload and event-time window of
    # this many seconds before sending; None: one event per record. See connector.pipeline.aggregation.
    aggregate_s: int | None = None
    aggregate_grace_s: float = 10.0
    aggregate_max_age_s: float = 70.0

    @property
    def on_platform(self) -> bool:
        """Whether every event of the topic goes to the key's own account (no context at all)."""
        return self.stripe_context is None and self.context_field is None

    def redacted(self) -> dict[str, object]:
        return {
            "event_name": self.event_name,
            "schema": str(self.schema_path),
            "format": self.wire_format,
            "customer_field": self.customer_field,
            "value_field": self.value_field,
            "timestamp_field": self.timestamp_field,
            "identifier_field": self.identifier_field,
            "payload_fields": list(self.payload_fields),
            "customer_key": self.customer_key,
            "value_key": self.value_key,
            "dlq_topic": self.dlq_topic,
            "max_past_seconds": self.max_past_seconds,
            "max_future_seconds": self.max_future_seconds,
            "decimal_values": self.decimal_values,
            "namespace": self.namespace,
            "kind": self.kind,
            "stripe_context": self.stripe_context,
            "context_field": self.context_field,
            "aggregate_s": self.aggregate_s,
            "aggregate_grace_s": self.aggregate_grace_s,
            "aggregate_max_age_s": self.aggregate_max_age_s,
        }


@dataclass(frozen=True, slots=True)
class StripeSettings:
    """Where and how to reach Stripe (``STRIPE_*``)."""

    api_key: Secret
    api_base: str = DEFAULT_API_BASE
    meter_events_base: str = DEFAULT_METER_EVENTS_BASE
    api_version: str = DEFAULT_API_VERSION

    @property
    def livemode(self) -> bool:
        return is_live_key(self.api_key.reveal())

    def redacted(self) -> dict[str, object]:
        return {
            "api_key": self.api_key.masked(),
            "api_base": self.api_base,
            "meter_events_base": self.meter_events_base,
            "api_version": self.api_version,
        }


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """The librdkafka configuration (``KAFKA_*``), credentials kept as ``Secret``."""

    # Every property, sorted, including bootstrap.servers, group.id and the forced enable.auto.commit.
    options: tuple[tuple[str, str | Secret], ...]

    def get(self, name: str) -> str | Secret | None:
        return next((value for key, value in self.options if key == name), None)

    @property
    def bootstrap_servers(self) -> str:
        return str(self.get("bootstrap.servers") or "")

    @property
    def group_id(self) -> str:
        return str(self.get("group.id") or "")

    def consumer_config(self) -> dict[str, str]:
        """The librdkafka dict with secrets revealed: hand it to the client, never to a log."""
        return {key: _reveal(value) for key, value in self.options}

    def producer_config(self) -> dict[str, str]:
        """Connection and security properties without consumer-only ones, for the dead-letter producer."""
        return {key: _reveal(value) for key, value in self.options if key not in _CONSUMER_ONLY}

    def redacted(self) -> dict[str, str]:
        return {key: value.masked() if isinstance(value, Secret) else value for key, value in self.options}


@dataclass(frozen=True, slots=True)
class SchemaRegistrySettings:
    """The Confluent schema registry (``SCHEMA_REGISTRY_*``) for the ``confluent`` wire format."""

    url: str
    basic_auth_user_info: Secret | None = None

    def client_config(self) -> dict[str, str]:
        config = {"url": self.url}
        if self.basic_auth_user_info is not None:
            config["basic.auth.user.info"] = self.basic_auth_user_info.reveal()
        return config

    def redacted(self) -> dict[str, object]:
        auth = self.basic_auth_user_info
        return {"url": self.url, "basic_auth_user_info": auth.masked() if auth is not None else None}


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """Batching, buffering, committing and shutdown of the run loop (``CONNECTOR_*``)."""

    linger_ms: int = 100
    batch_size: int = 100
    commit_interval_ms: int = 1000
    max_buffered_records: int = 20_000
    shutdown_timeout_s: float = 30.0
    on_invalid: OnInvalid = "dlq"
    workers: int = 1
    # The delivery ledger: a compacted topic shared by every group on purpose, and the namespace of its
    # marks (None: the Stripe account and mode, looked up with the key at start).
    ledger_topic: str = "kafka-stripe.ledger"
    ledger_namespace: str | None = None
    # Records held in pre-aggregation segments (not yet sent or not yet answered), all partitions: a
    # segment is closed early when they reach this (8 bytes a record, plus the tracker's entry).
    aggregate_max_records: int = 1_000_000


@dataclass(frozen=True, slots=True)
class SenderSettings:
    """Requests to Stripe: concurrency, rate, sessions, retries and timeouts (``CONNECTOR_*``)."""

    # Throughput is at most max_in_flight / round-trip: 128 at ~50 ms to Stripe allows ~2,500 requests/s.
    max_in_flight: int = 128
    rate_limit_rps: float = LIVE_RATE_LIMIT_RPS
    # Why ``rate_limit_rps`` has its value (the variable, or the key's mode), for the start-up line.
    rate_limit_source: str = "default"
    session_renew_margin_s: float = 60.0
    retry_max_elapsed_s: float = 300.0
    retry_initial_backoff_ms: int = 200
    retry_max_backoff_ms: int = 30_000
    http_connect_timeout_s: float = 5.0
    http_read_timeout_s: float = 30.0
    http_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class ValidationSettings:
    """Checking events against Stripe's live state before sending, and reading back what Stripe dropped
    after its 200 (``CONNECTOR_*``)."""

    # Meters: re-read this often (and at once when Stripe reports archived_meter or no_meter); what to do
    # with a topic whose event name has no active meter.
    meter_refresh_s: float = 60.0
    on_missing_meter: OnMissingMeter = "pause"
    # Customers: each id looked up once; records of an unknown one wait this long before the dead-letter
    # topic; lookups are paced to fit Stripe's read limit (25 requests/s per endpoint in test mode).
    verify_customers: bool = True
    unknown_customer_wait_s: float = 600.0
    customer_lookups_rps: float = 20.0
    customer_cache_size: int = 1_000_000
    # Records held for a customer lookup at most; beyond, events go out unchecked (Stripe still validates
    # them and its error reports are read back) rather than stall other customers' deliveries.
    max_waiting_records: int = 10_000
    # Customers listed at start (100 per request) to fill the cache before the first lookups; 0: none.
    customer_preload: int = 10_000
    # Stripe's asynchronous error reports (GET /v2/core/events): polled this often; 0 turns it off.
    error_reports_poll_s: int = 30


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """Metrics endpoint and logging (``CONNECTOR_*``)."""

    metrics_port: int = 9464  # 0 disables the endpoint
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    # /readyz fails when partitions stay paused, or commits stand still while lag grows, this long.
    health_stuck_after_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Settings:
    """The connector's whole configuration, read once from the environment by ``load_settings``."""

    stripe: StripeSettings
    kafka: KafkaSettings
    topics: tuple[TopicSettings, ...]
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    sender: SenderSettings = field(default_factory=SenderSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    schema_registry: SchemaRegistrySettings | None = None
    validation: ValidationSettings = field(default_factory=ValidationSettings)

    @property
    def topic_names(self) -> tuple[str, ...]:
        return tuple(topic.name for topic in self.topics)

    def topic(self, name: str) -> TopicSettings:
        for topic in self.topics:
            if topic.name == name:
                return topic
        raise KeyError(name)

    def consumer_config(self) -> dict[str, str]:
        """The librdkafka consumer dict, secrets revealed: for the client only."""
        return self.kafka.consumer_config()

    def producer_config(self) -> dict[str, str]:
        """The librdkafka producer dict (dead-letter topic), secrets revealed: for the client only."""
        return self.kafka.producer_config()

    def schema_registry_config(self) -> dict[str, str] | None:
        """A ``SchemaRegistryClient`` config dict (credentials revealed), or None without a registry."""
        return self.schema_registry.client_config() if self.schema_registry is not None else None

    def redacted(self) -> dict[str, object]:
        """Everything, for display: every credential replaced by a mask."""
        return {
            "stripe": self.stripe.redacted(),
            "kafka": self.kafka.redacted(),
            "schema_registry": self.schema_registry.redacted() if self.schema_registry is not None else None,
            "topics": {topic.name: topic.redacted() for topic in self.topics},
            "pipeline": _plain(self.pipeline),
            "sender": _plain(self.sender),
            "telemetry": _plain(self.telemetry),
            "validation": _plain(self.validation),
        }

    def secrets(self) -> tuple[Secret, ...]:
        found = [self.stripe.api_key]
        found += [value for _, value in self.kafka.options if isinstance(value, Secret)]
        if self.schema_registry is not None and self.schema_registry.basic_auth_user_info is not None:
            found.append(self.schema_registry.basic_auth_user_info)
        return tuple(found)

    def scrub(self, text: str) -> str:
        """``text`` with any secret value, and anything shaped like a credential, masked: a last guard for
        messages from third-party code."""
        return Redactor(self.secrets())(text)


def _plain(
    settings: PipelineSettings | SenderSettings | TelemetrySettings | ValidationSettings,
) -> dict[str, object]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


def _reveal(value: str | Secret) -> str:
    return value.reveal() if isinstance(value, Secret) else value
