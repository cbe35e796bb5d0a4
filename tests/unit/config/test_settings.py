"""``connector.config.settings``: every variable's default, override and problem, all at once."""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connector.config.environment import load_settings, scrub_environ
from connector.config.secrets import MASK, Secret, is_secret_property
from connector.config.settings import DEFAULT_SCHEMA, KafkaSettings, Settings, StripeSettings
from connector.config.topics import inspect_schema, topic_env_key
from connector.errors import ConfigurationError

API_KEY = "sk_test_51AbCdEfGhIjKlMnOpQrStUv"
SASL_PASSWORD = "kafka-pa55word with spaces"
SSL_KEY_PASSWORD = "ssl-key-pa55"
OAUTH_SECRET = "oauth-client-s3cret"
REGISTRY_AUTH = "registry-user:registry-pa55"
SECRETS = (API_KEY, SASL_PASSWORD, SSL_KEY_PASSWORD, OAUTH_SECRET, REGISTRY_AUTH, "registry-pa55")

TIMESTAMP_MILLIS = {"type": "long", "logicalType": "timestamp-millis"}
DEFAULT_FIELDS: list[dict[str, Any]] = [
    {"name": "stripe_customer_id", "type": "string"},
    {"name": "value", "type": "double"},
    {"name": "timestamp", "type": TIMESTAMP_MILLIS},
    {"name": "identifier", "type": ["null", "string"], "default": None},
    {"name": "attributes", "type": {"type": "map", "values": "string"}, "default": {}},
]


def write_schema(directory: Path, fields: list[dict[str, Any]], name: str = "usage.avsc") -> Path:
    path = directory / name
    path.write_text(json.dumps({"type": "record", "name": "Usage", "namespace": "test", "fields": fields}))
    return path


@pytest.fixture
def schema(tmp_path: Path) -> Path:
    return write_schema(tmp_path, DEFAULT_FIELDS)


@pytest.fixture
def env(schema: Path) -> dict[str, str]:
    """The smallest valid environment: one topic with an explicit schema."""
    return {
        "STRIPE_API_KEY": API_KEY,
        "KAFKA_BOOTSTRAP_SERVERS": "localhost:9092",
        "CONNECTOR_TOPICS": "usage",
        "TOPIC_USAGE_EVENT_NAME": "api_requests",
        "TOPIC_USAGE_SCHEMA": str(schema),
    }


@pytest.fixture
def secret_env(env: dict[str, str]) -> dict[str, str]:
    """A valid environment holding every kind of credential."""
    return env | {
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "kafka-user",
        "KAFKA_SASL_PASSWORD": SASL_PASSWORD,
        "KAFKA_SSL_KEY_PASSWORD": SSL_KEY_PASSWORD,
        "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": OAUTH_SECRET,
        "SCHEMA_REGISTRY_URL": "https://registry.example:8081",
        "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": REGISTRY_AUTH,
        "TOPIC_USAGE_FORMAT": "avro",
    }


def problems_of(environ: dict[str, str]) -> tuple[str, ...]:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(environ)
    return caught.value.problems


def assert_problem(problems: tuple[str, ...], *fragments: str) -> None:
    """One problem mentions every fragment."""
    assert any(all(f in p for f in fragments) for p in problems), (fragments, problems)


# --------------------------------------------------------------------------------------------- defaults


def test_defaults(env: dict[str, str], schema: Path) -> None:
    settings = load_settings(env)
    assert settings.stripe.api_key.reveal() == API_KEY
    assert settings.stripe.api_base == "https://api.stripe.com"
    assert settings.stripe.meter_events_base == "https://meter-events.stripe.com"
    assert settings.stripe.api_version == "2024-09-30.acacia"
    assert settings.consumer_config() == {
        "bootstrap.servers": "localhost:9092",
        "group.id": "kafka-stripe",
        "client.id": "kafka-stripe",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": "false",
    }
    assert settings.kafka.bootstrap_servers == "localhost:9092"
    assert settings.kafka.group_id == "kafka-stripe"
    assert settings.schema_registry is None and settings.schema_registry_config() is None
    (topic,) = settings.topics
    assert topic.name == "usage" and topic.event_name == "api_requests"
    assert topic.schema_path == schema.resolve()
    assert topic.wire_format == "avro"
    assert (topic.customer_field, topic.value_field) == ("stripe_customer_id", "value")
    assert (topic.timestamp_field, topic.identifier_field) == ("timestamp", "identifier")
    assert topic.payload_fields == ("attributes",)
    assert (topic.customer_key, topic.value_key) == ("stripe_customer_id", "value")
    assert topic.dlq_topic == "usage.dlq"
    assert (topic.max_past_seconds, topic.max_future_seconds) == (3_024_000, 300)
    pipeline, sender, telemetry = settings.pipeline, settings.sender, settings.telemetry
    assert (pipeline.linger_ms, pipeline.batch_size, pipeline.commit_interval_ms) == (100, 100, 1000)
    assert (pipeline.max_buffered_records, pipeline.shutdown_timeout_s) == (20_000, 30.0)
    assert (pipeline.on_invalid, pipeline.workers) == ("dlq", 1)
    # API_KEY is a test-mode key: Stripe's sandbox limit applies to its stream.
    assert (sender.max_in_flight, sender.rate_limit_rps, sender.session_renew_margin_s) == (128, 25, 60)
    assert sender.rate_limit_source.startswith("test-mode key")
    assert topic.decimal_values is False
    assert (sender.retry_max_elapsed_s, sender.retry_initial_backoff_ms, sender.retry_max_backoff_ms) == (
        300,
        200,
        30_000,
    )
    assert (sender.http_connect_timeout_s, sender.http_read_timeout_s, sender.http_timeout_s) == (5, 30, 60)
    assert (telemetry.metrics_port, telemetry.log_format, telemetry.log_level) == (9464, "text", "INFO")
    assert settings.topic("usage") is topic and settings.topic_names == ("usage",)


def test_default_schema_is_the_packaged_one(env: dict[str, str]) -> None:
    del env["TOPIC_USAGE_SCHEMA"]
    if DEFAULT_SCHEMA.exists():
        assert load_settings(env).topics[0].schema_path == DEFAULT_SCHEMA
    else:  # the packaged schema is added separately; until then its absence is reported by path
        assert_problem(problems_of(env), "TOPIC_USAGE_SCHEMA (default)", str(DEFAULT_SCHEMA))


def test_settings_are_frozen(env: dict[str, str]) -> None:
    settings = load_settings(env)
    with pytest.raises(AttributeError):
        settings.topics = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        settings.pipeline.batch_size = 5  # type: ignore[misc]


# -------------------------------------------------------------------------------------------- overrides

Getter = Callable[[Settings], object]

OVERRIDES: list[tuple[dict[str, str], Getter, object]] = [
    ({"STRIPE_API_BASE": "http://localhost:12111/"}, lambda s: s.stripe.api_base, "http://localhost:12111"),
    (
        {"STRIPE_METER_EVENTS_BASE": "http://127.0.0.1:1"},
        lambda s: s.stripe.meter_events_base,
        "http://127.0.0.1:1",
    ),
    ({"STRIPE_API_VERSION": "2026-10-28.endive"}, lambda s: s.stripe.api_version, "2026-10-28.endive"),
    ({"STRIPE_API_KEY": "rk_live_abc"}, lambda s: s.stripe.livemode, True),
    ({"KAFKA_GROUP_ID": "billing"}, lambda s: s.consumer_config()["group.id"], "billing"),
    ({"KAFKA_AUTO_OFFSET_RESET": "latest"}, lambda s: s.consumer_config()["auto.offset.reset"], "latest"),
    ({"KAFKA_SESSION_TIMEOUT_MS": "6000"}, lambda s: s.consumer_config()["session.timeout.ms"], "6000"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL"}, lambda s: s.consumer_config()["security.protocol"], "SSL"),
    ({"KAFKA_CLIENT_ID": "meter-1"}, lambda s: s.consumer_config()["client.id"], "meter-1"),
    ({"KAFKA_ENABLE_AUTO_COMMIT": "false"}, lambda s: s.consumer_config()["enable.auto.commit"], "false"),
    ({"KAFKA_TEST_BROKER": "embedded"}, lambda s: "test.broker" in s.consumer_config(), False),
    ({"KAFKA_BOOTSTRAP_SERVERS": "a:1,[::1]:2,b"}, lambda s: s.kafka.bootstrap_servers, "a:1,[::1]:2,b"),
    ({"CONNECTOR_TOPICS": " usage , "}, lambda s: s.topic_names, ("usage",)),
    ({"TOPIC_USAGE_EVENT_NAME": "x" * 100}, lambda s: len(s.topics[0].event_name), 100),
    ({"TOPIC_USAGE_CUSTOMER_KEY": "customer"}, lambda s: s.topics[0].customer_key, "customer"),
    ({"TOPIC_USAGE_VALUE_KEY": "amount"}, lambda s: s.topics[0].value_key, "amount"),
    ({"TOPIC_USAGE_DLQ_TOPIC": "rejected"}, lambda s: s.topics[0].dlq_topic, "rejected"),
    ({"TOPIC_USAGE_FORMAT": "AVRO"}, lambda s: s.topics[0].wire_format, "avro"),
    ({"TOPIC_USAGE_PAYLOAD_FIELDS": ""}, lambda s: s.topics[0].payload_fields, ()),
    (
        {"TOPIC_USAGE_PAYLOAD_FIELDS": "identifier, attributes"},
        lambda s: s.topics[0].payload_fields,
        ("identifier", "attributes"),
    ),
    (
        {"TOPIC_USAGE_IDENTIFIER_FIELD": ""},
        lambda s: s.topics[0].identifier_field,
        "identifier",
    ),  # blank = unset
    ({"SCHEMA_REGISTRY_URL": "http://r:8081"}, lambda s: s.topics[0].wire_format, "confluent"),
    (
        {"SCHEMA_REGISTRY_URL": "http://r:8081", "TOPIC_USAGE_FORMAT": "avro"},
        lambda s: s.topics[0].wire_format,
        "avro",
    ),
    (
        {"SCHEMA_REGISTRY_URL": "http://r:8081/"},
        lambda s: s.schema_registry_config(),
        {"url": "http://r:8081"},
    ),
    ({"CONNECTOR_TIMESTAMP_MAX_AGE_S": "86400"}, lambda s: s.topics[0].max_past_seconds, 86_400),
    ({"CONNECTOR_TIMESTAMP_MAX_FUTURE_S": "0"}, lambda s: s.topics[0].max_future_seconds, 0),
    ({"CONNECTOR_LINGER_MS": "0"}, lambda s: s.pipeline.linger_ms, 0),
    ({"CONNECTOR_BATCH_SIZE": "1"}, lambda s: s.pipeline.batch_size, 1),
    ({"CONNECTOR_COMMIT_INTERVAL_MS": "250"}, lambda s: s.pipeline.commit_interval_ms, 250),
    ({"CONNECTOR_MAX_BUFFERED_RECORDS": "1000"}, lambda s: s.pipeline.max_buffered_records, 1000),
    ({"CONNECTOR_MAX_IN_FLIGHT": "8"}, lambda s: s.sender.max_in_flight, 8),
    ({"CONNECTOR_RATE_LIMIT_RPS": "2500"}, lambda s: s.sender.rate_limit_rps, 2500.0),
    ({"CONNECTOR_RATE_LIMIT_RPS": "40"}, lambda s: s.sender.rate_limit_source, "CONNECTOR_RATE_LIMIT_RPS"),
    ({"STRIPE_API_KEY": "sk_live_" + "x" * 24}, lambda s: s.sender.rate_limit_rps, 10_000.0),
    ({"STRIPE_API_KEY": "rk_live_" + "x" * 24}, lambda s: s.sender.rate_limit_source[:13], "live-mode key"),
    ({"STRIPE_API_KEY": "rk_test_" + "x" * 24}, lambda s: s.sender.rate_limit_rps, 25.0),
    (
        {"STRIPE_API_KEY": "sk_live_" + "x" * 24, "CONNECTOR_RATE_LIMIT_RPS": "100"},
        lambda s: s.sender.rate_limit_rps,
        100.0,
    ),
    ({"TOPIC_USAGE_DECIMAL_VALUES": "true"}, lambda s: s.topics[0].decimal_values, True),
    ({"TOPIC_USAGE_DECIMAL_VALUES": "FALSE"}, lambda s: s.topics[0].decimal_values, False),
    ({"TOPIC_USAGE_DECIMAL_VALUES": "1"}, lambda s: s.topics[0].redacted()["decimal_values"], True),
    ({"CONNECTOR_SHUTDOWN_TIMEOUT_S": "2.5"}, lambda s: s.pipeline.shutdown_timeout_s, 2.5),
    ({"CONNECTOR_ON_INVALID": "FAIL"}, lambda s: s.pipeline.on_invalid, "fail"),
    ({"CONNECTOR_SESSION_RENEW_MARGIN_S": "120"}, lambda s: s.sender.session_renew_margin_s, 120.0),
    ({"CONNECTOR_RETRY_MAX_ELAPSED_S": "10"}, lambda s: s.sender.retry_max_elapsed_s, 10.0),
    ({"CONNECTOR_RETRY_INITIAL_BACKOFF_MS": "50"}, lambda s: s.sender.retry_initial_backoff_ms, 50),
    ({"CONNECTOR_RETRY_MAX_BACKOFF_MS": "500"}, lambda s: s.sender.retry_max_backoff_ms, 500),
    ({"CONNECTOR_HTTP_CONNECT_TIMEOUT_S": "1"}, lambda s: s.sender.http_connect_timeout_s, 1.0),
    ({"CONNECTOR_HTTP_READ_TIMEOUT_S": "2"}, lambda s: s.sender.http_read_timeout_s, 2.0),
    ({"CONNECTOR_HTTP_TIMEOUT_S": "40"}, lambda s: s.sender.http_timeout_s, 40.0),
    ({"CONNECTOR_WORKERS": "4"}, lambda s: s.pipeline.workers, 4),
    ({"CONNECTOR_METRICS_PORT": "0"}, lambda s: s.telemetry.metrics_port, 0),
    ({"CONNECTOR_LOG_FORMAT": "json"}, lambda s: s.telemetry.log_format, "json"),
    ({"CONNECTOR_LOG_LEVEL": "debug"}, lambda s: s.telemetry.log_level, "DEBUG"),
    ({"STRIPE_WEBHOOK_SECRET": "whsec_x"}, lambda s: s.stripe.api_base, "https://api.stripe.com"),  # not ours
]


@pytest.mark.parametrize(
    ("overrides", "get", "expected"), OVERRIDES, ids=[",".join(o) for o, *_ in OVERRIDES]
)
def test_override(env: dict[str, str], overrides: dict[str, str], get: Getter, expected: object) -> None:
    assert get(load_settings(env | overrides)) == expected


def test_api_key_from_file(env: dict[str, str], tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"  {API_KEY}\n")
    del env["STRIPE_API_KEY"]
    assert load_settings(env | {"STRIPE_API_KEY_FILE": str(key_file)}).stripe.api_key.reveal() == API_KEY


def test_topic_variables_use_the_upper_cased_name(env: dict[str, str], schema: Path) -> None:
    assert topic_env_key("billing.events-v2") == "BILLING_EVENTS_V2"
    env |= {
        "CONNECTOR_TOPICS": "usage,billing.events-v2",
        "TOPIC_BILLING_EVENTS_V2_EVENT_NAME": "storage_gb",
        "TOPIC_BILLING_EVENTS_V2_SCHEMA": str(schema),
        "TOPIC_BILLING_EVENTS_V2_DLQ_TOPIC": "usage.dlq",  # several topics may share one DLQ
    }
    settings = load_settings(env)
    assert [(t.name, t.event_name, t.dlq_topic) for t in settings.topics] == [
        ("usage", "api_requests", "usage.dlq"),
        ("billing.events-v2", "storage_gb", "usage.dlq"),
    ]


def test_timestamp_tolerances_apply_to_every_topic(env: dict[str, str], schema: Path) -> None:
    env |= {
        "CONNECTOR_TOPICS": "a,b",
        "TOPIC_A_EVENT_NAME": "a",
        "TOPIC_A_SCHEMA": str(schema),
        "TOPIC_B_EVENT_NAME": "b",
        "TOPIC_B_SCHEMA": str(schema),
        "CONNECTOR_TIMESTAMP_MAX_AGE_S": "3600",
        "CONNECTOR_TIMESTAMP_MAX_FUTURE_S": "60",
    }
    del env["TOPIC_USAGE_EVENT_NAME"], env["TOPIC_USAGE_SCHEMA"]
    settings = load_settings(env)
    assert {(t.max_past_seconds, t.max_future_seconds) for t in settings.topics} == {(3600, 60)}


# --------------------------------------------------------------------------------------------- problems

PROBLEMS: list[tuple[dict[str, str | None], tuple[str, ...]]] = [
    # Stripe
    ({"STRIPE_API_KEY": None}, ("STRIPE_API_KEY is required", "STRIPE_API_KEY_FILE")),
    ({"STRIPE_API_KEY": "  "}, ("STRIPE_API_KEY is required",)),
    (
        {"STRIPE_API_KEY": None, "STRIPE_SECRET_KEY": API_KEY},
        ("STRIPE_API_KEY is required", "STRIPE_SECRET_KEY"),
    ),
    ({"STRIPE_API_KEY": "pk_test_abc"}, ("STRIPE_API_KEY", "publishable")),
    ({"STRIPE_API_KEY": "sk_test_"}, ("STRIPE_API_KEY", "does not look like")),
    ({"STRIPE_API_KEY": "sk_prod_abc"}, ("STRIPE_API_KEY", "does not look like")),
    ({"STRIPE_API_KEY": "sk_test_a b"}, ("STRIPE_API_KEY", "whitespace")),
    ({"STRIPE_API_KEY_FILE": "/nonexistent/key"}, ("both set",)),
    ({"STRIPE_API_BASE": "ftp://x"}, ("STRIPE_API_BASE", "http:// or https://")),
    ({"STRIPE_API_BASE": "api.stripe.com"}, ("STRIPE_API_BASE", "http:// or https://")),
    ({"STRIPE_API_BASE": "https://u:p@host"}, ("STRIPE_API_BASE", "credentials")),
    ({"STRIPE_METER_EVENTS_BASE": "https://x/?a=1"}, ("STRIPE_METER_EVENTS_BASE", "query")),
    ({"STRIPE_METER_EVENTS_BASE": "http://x:99999"}, ("STRIPE_METER_EVENTS_BASE", "not a valid URL")),
    ({"STRIPE_API_VERSION": "acacia"}, ("STRIPE_API_VERSION", "must look like")),
    ({"STRIPE_API_VERSION": "2024-04-10.acacia"}, ("STRIPE_API_VERSION", "v2 meter")),
    ({"STRIPE_API_VERSION": "2024-13-40.acacia"}, ("STRIPE_API_VERSION", "not a valid version")),
    ({"STRIPE_API_BASE_URL": "http://x"}, ("STRIPE_API_BASE_URL", "did you mean STRIPE_API_BASE?")),
    # Kafka
    ({"KAFKA_BOOTSTRAP_SERVERS": None}, ("KAFKA_BOOTSTRAP_SERVERS is required",)),
    ({"KAFKA_BOOTSTRAP_SERVERS": "a:1,,b:2"}, ("KAFKA_BOOTSTRAP_SERVERS", "empty")),
    ({"KAFKA_BOOTSTRAP_SERVERS": "a:port"}, ("KAFKA_BOOTSTRAP_SERVERS", "invalid port")),
    ({"KAFKA_BOOTSTRAP_SERVERS": "a:1 b:2"}, ("KAFKA_BOOTSTRAP_SERVERS", "host:port")),
    ({"KAFKA_ENABLE_AUTO_COMMIT": "true"}, ("KAFKA_ENABLE_AUTO_COMMIT must be false",)),
    ({"KAFKA_HOME": "/opt/kafka"}, ("KAFKA_HOME", "'home' is not a librdkafka configuration property")),
    ({"KAFKA_SECURITY_PROTOCOL": "bogus"}, ("KAFKA_SECURITY_PROTOCOL", 'Invalid value "bogus"')),
    ({"KAFKA_SESSION_TIMEOUT_MS": "soon"}, ("KAFKA_SESSION_TIMEOUT_MS", "session.timeout.ms")),
    ({"KAFKA_AUTO_OFFSET_RESET": "oldest"}, ("KAFKA_AUTO_OFFSET_RESET", "auto.offset.reset")),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, ("KAFKA_SASL_MECHANISM is needed",)),
    (
        {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": "/nonexistent/ca.pem"},
        ("ssl.ca.location",),
    ),
    ({"KAFKA__X": "1"}, ("KAFKA__X does not name a librdkafka property",)),
    ({"KAFKA_sasl_mechanism": "PLAIN", "KAFKA_SASL_MECHANISM": "PLAIN"}, ("already sets",)),
    # Schema registry
    ({"SCHEMA_REGISTRY_URL": "registry:8081"}, ("SCHEMA_REGISTRY_URL", "http:// or https://")),
    ({"SCHEMA_REGISTRY_URL": "http://u:p@registry"}, ("SCHEMA_REGISTRY_URL", "credentials")),
    (
        {"SCHEMA_REGISTRY_URL": "http://r", "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "nocolon"},
        ("user:password",),
    ),
    ({"SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "u:p"}, ("SCHEMA_REGISTRY_URL is not",)),
    ({"SCHEMA_REGISTRY_USERINFO": "u:p"}, ("SCHEMA_REGISTRY_USERINFO is not a known setting",)),
    # Topics
    ({"CONNECTOR_TOPICS": None}, ("CONNECTOR_TOPICS is required",)),
    ({"CONNECTOR_TOPICS": ","}, ("CONNECTOR_TOPICS lists no topic",)),
    (
        {"CONNECTOR_TOPICS": "usage,bad/name"},
        ("CONNECTOR_TOPICS", "'bad/name' is not a legal Kafka topic name"),
    ),
    ({"CONNECTOR_TOPICS": "usage,.."}, ("CONNECTOR_TOPICS", "'..' is not a legal")),
    ({"CONNECTOR_TOPICS": "usage," + "x" * 250}, ("CONNECTOR_TOPICS", "not a legal Kafka topic name")),
    ({"CONNECTOR_TOPICS": "usage,usage"}, ("'usage' is listed twice",)),
    ({"CONNECTOR_TOPICS": "usage,a.b,a_b"}, ("'a.b' and 'a_b' both map to TOPIC_A_B_*",)),
    ({"TOPIC_USAGE_EVENT_NAME": None}, ("TOPIC_USAGE_EVENT_NAME is required",)),
    ({"TOPIC_USAGE_EVENT_NAME": "x" * 101}, ("TOPIC_USAGE_EVENT_NAME is 101 characters",)),
    (
        {"TOPIC_USAGE_EVENTNAME": "x"},
        ("TOPIC_USAGE_EVENTNAME is not a known setting", "TOPIC_USAGE_EVENT_NAME?"),
    ),
    ({"TOPIC_USAGE_WHATEVER": "x"}, ("TOPIC_USAGE_WHATEVER is not a known setting", "EVENT_NAME")),
    (
        {"TOPIC_BILLING_EVENT_NAME": "x"},
        ("TOPIC_BILLING_EVENT_NAME belongs to no topic", "usage → TOPIC_USAGE_*"),
    ),
    ({"TOPIC_USAGE_SCHEMA": "/nonexistent/s.avsc"}, ("TOPIC_USAGE_SCHEMA", "no such file")),
    ({"TOPIC_USAGE_SCHEMA": "/"}, ("TOPIC_USAGE_SCHEMA", "is a directory")),
    ({"TOPIC_USAGE_FORMAT": "json"}, ("TOPIC_USAGE_FORMAT must be one of avro, confluent",)),
    (
        {"TOPIC_USAGE_FORMAT": "confluent"},
        ("TOPIC_USAGE_FORMAT is confluent, which needs SCHEMA_REGISTRY_URL",),
    ),
    ({"TOPIC_USAGE_CUSTOMER_FIELD": "customer-id"}, ("TOPIC_USAGE_CUSTOMER_FIELD", "not a field name")),
    ({"TOPIC_USAGE_VALUE_FIELD": "usage..amount"}, ("TOPIC_USAGE_VALUE_FIELD", "not a field name")),
    ({"TOPIC_USAGE_PAYLOAD_FIELDS": "a,,1x"}, ("TOPIC_USAGE_PAYLOAD_FIELDS", "'1x' is not a field name")),
    (
        {"TOPIC_USAGE_PAYLOAD_FIELDS": "attributes,attributes"},
        ("TOPIC_USAGE_PAYLOAD_FIELDS lists a field twice",),
    ),
    ({"TOPIC_USAGE_VALUE_KEY": "stripe_customer_id"}, ("CUSTOMER_KEY and TOPIC_USAGE_VALUE_KEY are both",)),
    ({"TOPIC_USAGE_DLQ_TOPIC": "usage"}, ("TOPIC_USAGE_DLQ_TOPIC is the topic itself",)),
    ({"TOPIC_USAGE_DLQ_TOPIC": "bad topic"}, ("TOPIC_USAGE_DLQ_TOPIC", "not a legal Kafka topic name")),
    ({"CONNECTOR_TOPICS": "usage," + "y" * 246}, ("TOPIC_" + "Y" * 246 + "_DLQ_TOPIC", "not a legal")),
    # Global knobs
    ({"CONNECTOR_TIMESTAMP_MAX_AGE_S": "3024001"}, ("CONNECTOR_TIMESTAMP_MAX_AGE_S", "from 1 to 3024000")),
    ({"CONNECTOR_TIMESTAMP_MAX_AGE_S": "0"}, ("CONNECTOR_TIMESTAMP_MAX_AGE_S", "from 1 to 3024000")),
    ({"CONNECTOR_TIMESTAMP_MAX_FUTURE_S": "301"}, ("CONNECTOR_TIMESTAMP_MAX_FUTURE_S", "from 0 to 300")),
    ({"CONNECTOR_LINGER_MS": "-1"}, ("CONNECTOR_LINGER_MS must be an integer >= 0",)),
    ({"CONNECTOR_LINGER_MS": "1.5"}, ("CONNECTOR_LINGER_MS must be an integer", "'1.5'")),
    ({"CONNECTOR_BATCH_SIZE": "101"}, ("CONNECTOR_BATCH_SIZE must be an integer from 1 to 100, not 101",)),
    ({"CONNECTOR_BATCH_SIZE": "0"}, ("CONNECTOR_BATCH_SIZE",)),
    ({"CONNECTOR_COMMIT_INTERVAL_MS": "0"}, ("CONNECTOR_COMMIT_INTERVAL_MS",)),
    ({"CONNECTOR_MAX_BUFFERED_RECORDS": "ten"}, ("CONNECTOR_MAX_BUFFERED_RECORDS", "'ten'")),
    ({"CONNECTOR_MAX_BUFFERED_RECORDS": "50"}, ("CONNECTOR_MAX_BUFFERED_RECORDS (50) must be at least",)),
    ({"CONNECTOR_MAX_IN_FLIGHT": "0"}, ("CONNECTOR_MAX_IN_FLIGHT",)),
    ({"CONNECTOR_RATE_LIMIT_RPS": "0"}, ("CONNECTOR_RATE_LIMIT_RPS must be a number > 0",)),
    ({"TOPIC_USAGE_DECIMAL_VALUES": "maybe"}, ("TOPIC_USAGE_DECIMAL_VALUES must be true or false", "maybe")),
    ({"TOPIC_USAGE_DECIMAL_VALUE": "true"}, ("TOPIC_USAGE_DECIMAL_VALUE is not a known setting",)),
    ({"CONNECTOR_RATE_LIMIT_RPS": "inf"}, ("CONNECTOR_RATE_LIMIT_RPS must be a number",)),
    ({"CONNECTOR_RATE_LIMIT_RPS": "nan"}, ("CONNECTOR_RATE_LIMIT_RPS must be a number",)),
    ({"CONNECTOR_SHUTDOWN_TIMEOUT_S": "-3"}, ("CONNECTOR_SHUTDOWN_TIMEOUT_S",)),
    ({"CONNECTOR_ON_INVALID": "skip"}, ("CONNECTOR_ON_INVALID must be one of dlq, fail",)),
    ({"CONNECTOR_SESSION_RENEW_MARGIN_S": "600"}, ("CONNECTOR_SESSION_RENEW_MARGIN_S", "<= 450")),
    ({"CONNECTOR_RETRY_MAX_ELAPSED_S": "0"}, ("CONNECTOR_RETRY_MAX_ELAPSED_S",)),
    ({"CONNECTOR_RETRY_INITIAL_BACKOFF_MS": "0"}, ("CONNECTOR_RETRY_INITIAL_BACKOFF_MS",)),
    (
        {"CONNECTOR_RETRY_INITIAL_BACKOFF_MS": "5000", "CONNECTOR_RETRY_MAX_BACKOFF_MS": "1000"},
        ("must not exceed",),
    ),
    ({"CONNECTOR_HTTP_CONNECT_TIMEOUT_S": "x"}, ("CONNECTOR_HTTP_CONNECT_TIMEOUT_S",)),
    ({"CONNECTOR_HTTP_READ_TIMEOUT_S": "90"}, ("CONNECTOR_HTTP_READ_TIMEOUT_S (90) must not exceed",)),
    ({"CONNECTOR_HTTP_TIMEOUT_S": "0"}, ("CONNECTOR_HTTP_TIMEOUT_S",)),
    ({"CONNECTOR_WORKERS": "0"}, ("CONNECTOR_WORKERS",)),
    ({"CONNECTOR_METRICS_PORT": "70000"}, ("CONNECTOR_METRICS_PORT must be an integer from 0 to 65535",)),
    ({"CONNECTOR_LOG_FORMAT": "xml"}, ("CONNECTOR_LOG_FORMAT must be one of text, json",)),
    ({"CONNECTOR_LOG_LEVEL": "LOUD"}, ("CONNECTOR_LOG_LEVEL must be one of DEBUG",)),
    ({"CONNECTOR_LINGERMS": "5"}, ("CONNECTOR_LINGERMS is not a known setting", "CONNECTOR_LINGER_MS?")),
    ({"CONNECTOR_FOO": "5"}, ("CONNECTOR_FOO is not a known setting",)),
]


@pytest.mark.parametrize(("overrides", "fragments"), PROBLEMS, ids=[",".join(o)[:60] for o, _ in PROBLEMS])
def test_problem(env: dict[str, str], overrides: dict[str, str | None], fragments: tuple[str, ...]) -> None:
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    assert_problem(problems_of(env), *fragments)


def test_api_key_file_problems(env: dict[str, str], tmp_path: Path) -> None:
    del env["STRIPE_API_KEY"]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    bad = tmp_path / "bad"
    bad.write_text("pk_live_nope")
    for path, fragment in (
        (tmp_path / "missing", "cannot read"),
        (tmp_path, "cannot read"),
        (empty, "is empty"),
        (bad, "publishable"),
    ):
        assert_problem(problems_of(env | {"STRIPE_API_KEY_FILE": str(path)}), "STRIPE_API_KEY_FILE", fragment)


def test_dlq_must_not_be_another_source_topic(env: dict[str, str], schema: Path) -> None:
    env |= {
        "CONNECTOR_TOPICS": "usage,retry",
        "TOPIC_RETRY_EVENT_NAME": "x",
        "TOPIC_RETRY_SCHEMA": str(schema),
        "TOPIC_USAGE_DLQ_TOPIC": "retry",
    }
    assert_problem(problems_of(env), "TOPIC_USAGE_DLQ_TOPIC is source topic 'retry'")


def test_every_problem_is_reported_at_once(env: dict[str, str]) -> None:
    env |= {
        "STRIPE_API_KEY": "pk_live_x",
        "STRIPE_API_BASE": "ftp://x",
        "KAFKA_SECURITY_PROTOCOL": "bogus",
        "KAFKA_HOME": "/opt",
        "KAFKA_ENABLE_AUTO_COMMIT": "true",
        "TOPIC_USAGE_EVENTNAME": "x",
        "TOPIC_USAGE_VALUE_FIELD": "missing",
        "TOPIC_USAGE_DLQ_TOPIC": "usage",
        "CONNECTOR_BATCH_SIZE": "500",
        "CONNECTOR_LOG_FORMAT": "xml",
        "CONNECTOR_LINGERMS": "3",
    }
    del env["KAFKA_BOOTSTRAP_SERVERS"]
    problems = problems_of(env)
    expected = [
        "STRIPE_API_KEY",
        "STRIPE_API_BASE",
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_HOME",
        "KAFKA_ENABLE_AUTO_COMMIT",
        "KAFKA_BOOTSTRAP_SERVERS",
        "TOPIC_USAGE_EVENTNAME",
        "TOPIC_USAGE_VALUE_FIELD",
        "TOPIC_USAGE_DLQ_TOPIC",
        "CONNECTOR_BATCH_SIZE",
        "CONNECTOR_LOG_FORMAT",
        "CONNECTOR_LINGERMS",
    ]
    for name in expected:
        assert_problem(problems, name)
    assert len(problems) == len(expected), problems
    assert "invalid configuration" in str(ConfigurationError(problems))


def test_without_topics_only_unknown_suffixes_are_reported(env: dict[str, str]) -> None:
    del env["CONNECTOR_TOPICS"]
    problems = problems_of(env | {"TOPIC_USAGE_EVENTNAME": "x"})
    assert_problem(problems, "TOPIC_USAGE_EVENTNAME is not a known setting")
    assert not any(p.startswith(("TOPIC_USAGE_EVENT_NAME ", "TOPIC_USAGE_SCHEMA ")) for p in problems)


# ---------------------------------------------------------------------------------------------- schemas

NULLABLE_STRING = ["null", "string"]
DECIMAL = {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 3}

# (role variable, Avro type of the field it names, usable?)
FIELD_TYPES: list[tuple[str, Any, bool]] = [
    ("CUSTOMER_FIELD", "string", True),
    ("CUSTOMER_FIELD", {"type": "string", "logicalType": "uuid"}, True),
    ("CUSTOMER_FIELD", NULLABLE_STRING, False),
    ("CUSTOMER_FIELD", "long", False),
    ("VALUE_FIELD", "int", True),
    ("VALUE_FIELD", "long", True),
    ("VALUE_FIELD", "float", True),
    ("VALUE_FIELD", "double", True),
    ("VALUE_FIELD", "string", True),
    ("VALUE_FIELD", DECIMAL, True),
    ("VALUE_FIELD", ["null", "long", "double"], True),
    ("VALUE_FIELD", "boolean", False),
    ("VALUE_FIELD", {"type": "int", "logicalType": "date"}, False),
    ("VALUE_FIELD", {"type": "map", "values": "long"}, False),
    ("TIMESTAMP_FIELD", TIMESTAMP_MILLIS, True),
    ("TIMESTAMP_FIELD", {"type": "long", "logicalType": "timestamp-micros"}, True),
    ("TIMESTAMP_FIELD", "string", True),
    ("TIMESTAMP_FIELD", "long", False),
    ("TIMESTAMP_FIELD", ["null", TIMESTAMP_MILLIS], True),  # null falls back to the Kafka timestamp
    ("TIMESTAMP_FIELD", ["null", "string"], True),
    ("TIMESTAMP_FIELD", ["string", TIMESTAMP_MILLIS], False),
    ("TIMESTAMP_FIELD", {"type": "long", "logicalType": "local-timestamp-millis"}, False),
    ("IDENTIFIER_FIELD", "string", True),
    ("IDENTIFIER_FIELD", NULLABLE_STRING, True),
    ("IDENTIFIER_FIELD", "long", False),
    ("PAYLOAD_FIELDS", "string", True),
    ("PAYLOAD_FIELDS", ["null", "boolean"], True),
    ("PAYLOAD_FIELDS", {"type": "enum", "name": "Region", "symbols": ["EU", "US"]}, True),
    ("PAYLOAD_FIELDS", {"type": "map", "values": ["null", "string", "long"]}, True),
    (
        "PAYLOAD_FIELDS",
        {"type": "record", "name": "Dims", "fields": [{"name": "a", "type": ["null", "int"]}]},
        True,
    ),
    (
        "PAYLOAD_FIELDS",
        {"type": "record", "name": "Deep", "fields": [{"name": "a", "type": "test.Usage"}]},
        False,
    ),
    ("PAYLOAD_FIELDS", {"type": "array", "items": "string"}, False),
    ("PAYLOAD_FIELDS", {"type": "map", "values": {"type": "array", "items": "string"}}, False),
    ("PAYLOAD_FIELDS", "bytes", False),
]


@pytest.mark.parametrize(
    ("variable", "avro_type", "usable"), FIELD_TYPES, ids=[f"{v}-{json.dumps(t)}" for v, t, _ in FIELD_TYPES]
)
def test_field_types(
    env: dict[str, str], tmp_path: Path, variable: str, avro_type: Any, usable: bool
) -> None:
    fields = [*DEFAULT_FIELDS, {"name": "probe", "type": avro_type}]
    env |= {
        "TOPIC_USAGE_SCHEMA": str(write_schema(tmp_path, fields, "probe.avsc")),
        f"TOPIC_USAGE_{variable}": "probe",
    }
    if usable:
        load_settings(env)
    else:
        assert_problem(problems_of(env), f"TOPIC_USAGE_{variable}", "field 'probe' in probe.avsc is")


def test_nested_fields_through_records_and_nullable_unions(env: dict[str, str], tmp_path: Path) -> None:
    usage = {
        "type": "record",
        "name": "Amount",
        "fields": [{"name": "amount", "type": DECIMAL}, {"name": "region", "type": "string"}],
    }
    fields = [
        {
            "name": "account",
            "type": {"type": "record", "name": "Account", "fields": [{"name": "customer", "type": "string"}]},
        },
        {"name": "usage", "type": ["null", usage]},
        {"name": "previous", "type": ["null", "test.Amount"]},  # a named type referenced by name
        {"name": "tags", "type": ["null", {"type": "map", "values": "string"}]},
    ]
    env |= {
        "TOPIC_USAGE_SCHEMA": str(write_schema(tmp_path, fields, "nested.avsc")),
        "TOPIC_USAGE_CUSTOMER_FIELD": "account.customer",
        "TOPIC_USAGE_VALUE_FIELD": "usage.amount",
        "TOPIC_USAGE_PAYLOAD_FIELDS": "usage.region,previous.region,tags.team",
    }
    topic = load_settings(env).topics[0]
    assert (topic.customer_field, topic.value_field) == ("account.customer", "usage.amount")
    assert topic.payload_fields == ("usage.region", "previous.region", "tags.team")  # a map value by key
    assert_problem(
        problems_of(env | {"TOPIC_USAGE_VALUE_FIELD": "usage.amount.x"}), "'usage.amount' is bytes"
    )
    assert_problem(
        problems_of(env | {"TOPIC_USAGE_VALUE_FIELD": "usage.nope"}), "has no field 'nope'", "amount, region"
    )


def test_missing_fields(env: dict[str, str], tmp_path: Path) -> None:
    # Only customer and value: identifier and timestamp fall back to the Kafka record, attributes to none.
    minimal = write_schema(tmp_path, DEFAULT_FIELDS[:2], "minimal.avsc")
    env["TOPIC_USAGE_SCHEMA"] = str(minimal)
    assert load_settings(env).topics[0].payload_fields == ()
    report = inspect_schema(load_settings(env).topics[0])
    notes = {found.role: found.note for found in report.fields}
    assert "Kafka record's timestamp" in notes["timestamp"] and "offset" in notes["identifier"]
    # ... but a field the user named explicitly must exist: that is a typo, not a fallback.
    for variable in ("TIMESTAMP_FIELD", "IDENTIFIER_FIELD", "PAYLOAD_FIELDS"):
        assert_problem(problems_of(env | {f"TOPIC_USAGE_{variable}": "timestamp"}), f"TOPIC_USAGE_{variable}")
    without_customer = write_schema(tmp_path, DEFAULT_FIELDS[1:], "no_customer.avsc")
    without_value = write_schema(tmp_path, [DEFAULT_FIELDS[0]], "no_value.avsc")
    assert_problem(
        problems_of(env | {"TOPIC_USAGE_SCHEMA": str(without_customer)}), "CUSTOMER_FIELD", "not in"
    )
    assert_problem(problems_of(env | {"TOPIC_USAGE_SCHEMA": str(without_value)}), "VALUE_FIELD", "not in")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "is not JSON: Expecting property name"),
        ('{"type": "record", "name": "X", "fields": [{"name": "a", "type": "Nope"}]}', "UnknownType: Nope"),
        ('{"type": "enum", "name": "E", "symbols": ["A"]}', "top-level type must be a record, not enum E"),
        ("42", "not a valid Avro schema"),
        ("\udcff", "not UTF-8"),
    ],
)
def test_schema_parse_errors_are_reported(
    env: dict[str, str], tmp_path: Path, text: str, fragment: str
) -> None:
    path = tmp_path / "broken.avsc"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    assert_problem(problems_of(env | {"TOPIC_USAGE_SCHEMA": str(path)}), "TOPIC_USAGE_SCHEMA", fragment)


def test_inspect_schema_describes_the_configured_fields(env: dict[str, str]) -> None:
    report = inspect_schema(load_settings(env).topics[0])
    assert report.record == "test.Usage" and report.problems == ()
    assert [(f.role, f.path, f.type) for f in report.fields] == [
        ("customer", "stripe_customer_id", "string"),
        ("value", "value", "double"),
        ("timestamp", "timestamp", "long (timestamp-millis)"),
        ("identifier", "identifier", "null | string"),
        ("payload", "attributes", "map<string>"),
    ]


# ---------------------------------------------------------------------------------------------- secrets


def test_secret_never_shows_its_value() -> None:
    secret = Secret("hunter2-long", "sk_test_")
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{secret:>40}", repr([secret])):
        assert "hunter2" not in shown
    assert str(secret) == "sk_test_" + MASK and repr(secret) == f"Secret('sk_test_{MASK}')"
    assert secret.reveal() == "hunter2-long"
    assert (
        secret == Secret("hunter2-long")
        and secret != Secret("other")
        and hash(secret) == hash(Secret("hunter2-long"))
    )
    with pytest.raises(AttributeError):
        secret._value = "x"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(secret)).reveal() == "hunter2-long"
    assert copy.deepcopy(secret).reveal() == "hunter2-long"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("sasl.password", True),
        ("ssl.key.password", True),
        ("ssl.keystore.password", True),
        ("sasl.oauthbearer.client.secret", True),
        ("sasl.oauthbearer.config", True),
        ("ssl.key.pem", True),
        ("sasl.oauthbearer.assertion.private.key.passphrase", True),
        ("basic.auth.user.info", True),
        ("sasl.username", False),
        ("ssl.key.location", False),
        ("security.protocol", False),
    ],
)
def test_secret_properties(name: str, secret: bool) -> None:
    assert is_secret_property(name) is secret


def test_secrets_are_kept_out_of_every_display(secret_env: dict[str, str]) -> None:
    settings = load_settings(secret_env)
    shown = [repr(settings), str(settings), json.dumps(settings.redacted()), repr(settings.kafka)]
    for text in shown:
        for secret in SECRETS:
            assert secret not in text, (secret, text)
    redacted = settings.redacted()
    assert redacted["stripe"]["api_key"] == "sk_test_" + MASK  # type: ignore[index]
    kafka = redacted["kafka"]
    assert isinstance(kafka, dict)
    assert (
        kafka["sasl.password"] == kafka["ssl.key.password"] == kafka["sasl.oauthbearer.client.secret"] == MASK
    )
    assert kafka["sasl.username"] == "kafka-user"
    assert redacted["schema_registry"] == {
        "url": "https://registry.example:8081",
        "basic_auth_user_info": MASK,
    }


def test_clients_get_the_revealed_secrets(secret_env: dict[str, str]) -> None:
    settings = load_settings(secret_env)
    consumer = settings.consumer_config()
    assert consumer["sasl.password"] == SASL_PASSWORD  # passed through untrimmed
    assert consumer["ssl.key.password"] == SSL_KEY_PASSWORD
    assert consumer["enable.auto.commit"] == "false"
    assert all(isinstance(value, str) for value in consumer.values())
    producer = settings.producer_config()
    assert producer["sasl.password"] == SASL_PASSWORD
    assert "group.id" not in producer and "auto.offset.reset" not in producer
    assert settings.schema_registry_config() == {
        "url": "https://registry.example:8081",
        "basic.auth.user.info": REGISTRY_AUTH,
    }


def test_problems_never_quote_secrets(secret_env: dict[str, str]) -> None:
    secret_env |= {
        "KAFKA_SECURITY_PROTOCOL": "bogus",
        "STRIPE_API_KEY": "sk_test_has space",
        "CONNECTOR_X": "1",
    }
    secret_env["SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"] = "no-colon-secret"
    problems = "\n".join(problems_of(secret_env))
    for secret in (*SECRETS, "has space", "no-colon-secret"):
        assert secret not in problems


def test_scrubbing() -> None:
    environ = {"KAFKA_SASL_PASSWORD": "pa55word", "STRIPE_API_KEY": API_KEY, "KAFKA_GROUP_ID": "group"}
    # The one redactor: a Stripe key keeps its non-secret prefix, as in every other masked output.
    assert scrub_environ(f"x pa55word {API_KEY} group", environ) == f"x {MASK} sk_test_{MASK} group"
    # ... and credential-shaped text is masked though no variable holds it.
    assert scrub_environ("token mes_tok_abc123XYZ at https://u:pw@host/", {}) == (
        f"token mes_tok_{MASK} at https://u:{MASK}@host/"
    )
    settings = Settings(
        stripe=StripeSettings(api_key=Secret(API_KEY, "sk_test_")),
        kafka=KafkaSettings(options=(("sasl.password", Secret("pa55word")),)),
        topics=(),
    )
    assert settings.scrub(f"auth {API_KEY} / pa55word") == f"auth sk_test_{MASK} / {MASK}"
    assert settings.scrub("Authorization: Bearer 0123456789abcdefXYZ") == f"Authorization: Bearer {MASK}"


def test_every_accepted_field_type_builds_a_mapper(env: dict[str, str], tmp_path: Path) -> None:
    # The contract with the mapper: a topic that passes these checks must never fail at startup there.
    from connector.mapping.mapper import Mapper

    for number, (variable, avro_type, usable) in enumerate(FIELD_TYPES):
        if usable:
            fields = [*DEFAULT_FIELDS, {"name": "probe", "type": avro_type}]
            # One file per case: the decoder caches parsed schemas by path.
            path = write_schema(tmp_path, fields, f"contract{number}.avsc")
            Mapper(
                load_settings(
                    env | {"TOPIC_USAGE_SCHEMA": str(path), f"TOPIC_USAGE_{variable}": "probe"}
                ).topics[0]
            )
    del env["TOPIC_USAGE_SCHEMA"]
    Mapper(load_settings(env).topics[0])  # the packaged schema with every default


def test_identity_and_ledger_settings(env: dict[str, str]) -> None:
    settings = load_settings(env)
    assert settings.topics[0].namespace is None  # the topic id, from the cluster
    pipeline = settings.pipeline
    assert (pipeline.ledger_topic, pipeline.ledger_namespace) == ("kafka-stripe.ledger", None)
    settings = load_settings(
        env
        | {
            "TOPIC_USAGE_NAMESPACE": "eu-west_1",
            "CONNECTOR_LEDGER_TOPIC": "billing.ledger",
            "CONNECTOR_LEDGER_NAMESPACE": "acct_1.live",
        }
    )
    assert settings.topics[0].namespace == "eu-west_1"
    pipeline = settings.pipeline
    assert (pipeline.ledger_topic, pipeline.ledger_namespace) == ("billing.ledger", "acct_1.live")


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"TOPIC_USAGE_NAMESPACE": "has:colon"}, "TOPIC_USAGE_NAMESPACE must be 1-22 letters"),
        ({"TOPIC_USAGE_NAMESPACE": "x" * 23}, "TOPIC_USAGE_NAMESPACE must be 1-22 letters"),
        ({"CONNECTOR_LEDGER_TOPIC": "bad topic"}, "CONNECTOR_LEDGER_TOPIC"),
    ],
)
def test_identity_setting_problems(env: dict[str, str], overrides: dict[str, str], fragment: str) -> None:
    assert_problem(problems_of(env | overrides), fragment)
