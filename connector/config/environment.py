"""The environment reader: one function per section, all into one validated ``Settings``."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from pathlib import Path

from connector.config.librdkafka import librdkafka_problems
from connector.config.reader import IGNORED, Reader, show, url_problem
from connector.config.secrets import Redactor, Secret, is_secret_property
from connector.config.settings import (
    DEFAULT_GROUP_ID,
    LOG_LEVELS,
    KafkaSettings,
    PipelineSettings,
    SchemaRegistrySettings,
    SenderSettings,
    Settings,
    StripeSettings,
    TelemetrySettings,
    TopicSettings,
    ValidationSettings,
)
from connector.config.topics import (
    read_topic,
    read_topic_names,
    topic_env_key,
    topic_name_problem,
    unknown_topic_variables,
)
from connector.errors import ConfigurationError
from connector.stripe.limits import (
    DEFAULT_API_BASE,
    DEFAULT_API_VERSION,
    DEFAULT_METER_EVENTS_BASE,
    LIVE_RATE_LIMIT_RPS,
    MAX_EVENTS_PER_REQUEST,
    MAX_FUTURE_SECONDS,
    MAX_PAST_SECONDS,
    MIN_API_VERSION_DATE,
    SESSION_TTL_SECONDS,
    TEST_RATE_LIMIT_RPS,
    key_prefix,
)

_STRIPE_KEY = re.compile(r"(sk|rk)_(test|live)_[A-Za-z0-9_]+")
_API_VERSION = re.compile(r"(\d{4})-(\d{2})-(\d{2})\.[a-z]+")


def scrub_environ(text: str, environ: Mapping[str, str]) -> str:
    """``text`` with the values of credential variables in ``environ``, and anything shaped like a
    credential, masked (for problem reports, before settings exist)."""
    secrets = [
        value.strip()
        for name, value in environ.items()
        if name in ("STRIPE_API_KEY", "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO")
        or (name.startswith("KAFKA_") and is_secret_property(_kafka_property(name)))
    ]
    return Redactor(secrets)(text)


# -------------------------------------------------------------------------------------------- stripe


def _read_stripe(reader: Reader) -> StripeSettings:
    inline = reader.raw("STRIPE_API_KEY")
    key_file = reader.raw("STRIPE_API_KEY_FILE")
    key: str | None = None
    if inline is not None and key_file is not None:
        reader.problem("STRIPE_API_KEY and STRIPE_API_KEY_FILE are both set; set only one")
    elif inline is not None:
        key = inline.strip()
        _check_stripe_key(reader, "STRIPE_API_KEY", key)
    elif key_file is not None:
        path = Path(key_file.strip()).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as error:
            reader.problem(f"STRIPE_API_KEY_FILE: cannot read {path}: {error.strerror or error}")
        except UnicodeDecodeError:
            reader.problem(f"STRIPE_API_KEY_FILE: {path} is not UTF-8 text")
        else:
            if not key:
                reader.problem(f"STRIPE_API_KEY_FILE: {path} is empty")
            else:
                _check_stripe_key(reader, f"STRIPE_API_KEY_FILE ({path})", key)
    else:
        reader.required(
            "STRIPE_API_KEY",
            alternative=" (or STRIPE_API_KEY_FILE, a file holding the key)",
            aliases=("STRIPE_SECRET_KEY", "STRIPE_KEY", "STRIPE_SECRET"),
        )
    api_version = reader.text("STRIPE_API_VERSION", DEFAULT_API_VERSION)
    match = _API_VERSION.fullmatch(api_version)
    if match is None:
        reader.problem(f"STRIPE_API_VERSION must look like {DEFAULT_API_VERSION}, not {show(api_version)}")
        api_version = DEFAULT_API_VERSION
    else:
        try:
            date = dt.date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            date = None
        if date is None or date < MIN_API_VERSION_DATE:
            reader.problem(
                f"STRIPE_API_VERSION {api_version} is not a valid version from {DEFAULT_API_VERSION} on "
                "(the v2 meter event endpoints need it)"
            )
    return StripeSettings(
        api_key=Secret(key or "", key_prefix(key or "")),
        api_base=reader.url("STRIPE_API_BASE", DEFAULT_API_BASE),
        meter_events_base=reader.url("STRIPE_METER_EVENTS_BASE", DEFAULT_METER_EVENTS_BASE),
        api_version=api_version,
    )


def _check_stripe_key(reader: Reader, where: str, key: str) -> None:
    # Never quote the key: only which rule it breaks.
    if _STRIPE_KEY.fullmatch(key):
        return
    if key.startswith("pk_"):
        reader.problem(f"{where} is a publishable key (pk_…); the connector needs a secret key (sk_…/rk_…)")
    elif any(ch.isspace() for ch in key):
        reader.problem(f"{where} contains whitespace; a Stripe key is one word")
    else:
        reader.problem(
            f"{where} does not look like a Stripe secret key (sk_test_…, sk_live_…, rk_test_…, rk_live_…)"
        )


# --------------------------------------------------------------------------------------------- kafka


def _kafka_property(name: str) -> str:
    return name[len("KAFKA_") :].lower().replace("_", ".")


def _read_kafka(reader: Reader) -> KafkaSettings:
    options: dict[str, str | Secret] = {}
    origin: dict[str, str] = {}
    bootstrap = reader.required("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap is not None:
        for server in bootstrap.split(","):
            problem = _server_problem(server.strip())
            if problem:
                reader.problem(f"KAFKA_BOOTSTRAP_SERVERS: {problem}")
        options["bootstrap.servers"] = bootstrap
    options["group.id"] = reader.text("KAFKA_GROUP_ID", DEFAULT_GROUP_ID)
    options["client.id"] = reader.text("KAFKA_CLIENT_ID", "kafka-stripe")
    options["auto.offset.reset"] = reader.text("KAFKA_AUTO_OFFSET_RESET", "earliest")
    auto_commit = reader.raw("KAFKA_ENABLE_AUTO_COMMIT")
    if auto_commit is not None and auto_commit.strip().lower() not in ("false", "0"):
        reader.problem(
            f"KAFKA_ENABLE_AUTO_COMMIT must be false (or unset), not {show(auto_commit)}: "
            "offsets are committed only after Stripe accepted the records"
        )
    # Forced: librdkafka's auto-commit would commit records Stripe has not accepted yet.
    options["enable.auto.commit"] = "false"
    for key in options:
        origin[key] = "KAFKA_" + key.upper().replace(".", "_")
    for name in sorted(reader.environ):
        if not name.startswith("KAFKA_") or name in reader.known or name in IGNORED:
            continue
        reader.known.add(name)
        value = reader.environ[name]
        if not value.strip():
            continue
        prop = _kafka_property(name)
        if not prop or prop.startswith(".") or prop.endswith(".") or ".." in prop:
            reader.problem(f"{name} does not name a librdkafka property")
            continue
        if prop in origin:
            reader.problem(f"{name} sets {prop}, which {origin[prop]} already sets")
            continue
        # Credentials pass through untouched (spaces may be part of a password); the rest is trimmed.
        options[prop] = Secret(value) if is_secret_property(prop) else value.strip()
        origin[prop] = name
    for problem in librdkafka_problems(options, origin):
        reader.problem(problem)
    return KafkaSettings(options=tuple(sorted(options.items())))


def _server_problem(server: str) -> str | None:
    if not server:
        return "an entry is empty"
    # librdkafka also accepts a protocol prefix: SASL_SSL://host:9093
    server = server.partition("://")[2] or server if "://" in server else server
    host, _, port = server.rpartition(":") if not server.endswith("]") else (server, "", "")
    if not host:
        host, port = server, ""
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        return f"{show(server)} has an invalid port"
    if any(ch.isspace() for ch in server) or "/" in server:
        return f"{show(server)} must be host:port"
    return None


# ------------------------------------------------------------------------------------ schema registry


def _read_schema_registry(reader: Reader) -> SchemaRegistrySettings | None:
    url = reader.raw("SCHEMA_REGISTRY_URL")
    user_info = reader.raw("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO")
    if url is None:
        if user_info is not None:
            reader.problem("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO is set but SCHEMA_REGISTRY_URL is not")
        return None
    urls = [u.strip() for u in url.split(",") if u.strip()]
    for one in urls:
        # The registry client accepts a comma-separated list of equivalent URLs.
        problem = url_problem(one)
        if problem:
            reader.problem(f"SCHEMA_REGISTRY_URL {problem}")
    secret: Secret | None = None
    if user_info is not None:
        user, colon, _ = user_info.partition(":")
        if not colon or not user:
            reader.problem("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO must be user:password")
        secret = Secret(user_info)
    return SchemaRegistrySettings(url=",".join(u.rstrip("/") for u in urls), basic_auth_user_info=secret)


# ---------------------------------------------------------------------------------------------- topics


def _read_topics(reader: Reader, *, registry: bool) -> tuple[TopicSettings, ...]:
    max_past = reader.integer(
        "CONNECTOR_TIMESTAMP_MAX_AGE_S", MAX_PAST_SECONDS, minimum=1, maximum=MAX_PAST_SECONDS
    )
    max_future = reader.integer(
        "CONNECTOR_TIMESTAMP_MAX_FUTURE_S", MAX_FUTURE_SECONDS, minimum=0, maximum=MAX_FUTURE_SECONDS
    )
    names = read_topic_names(reader)
    topics = tuple(
        read_topic(reader, name, registry=registry, max_past=max_past, max_future=max_future)
        for name in names
    )
    for topic in topics:
        if topic.dlq_topic in names:
            what = (
                "the topic itself" if topic.dlq_topic == topic.name else f"source topic {topic.dlq_topic!r}"
            )
            reader.problem(
                f"TOPIC_{topic_env_key(topic.name)}_DLQ_TOPIC is {what}: "
                "rejected records would be consumed again"
            )
    namespaces = [t.namespace for t in topics if t.namespace]
    for namespace in sorted({n for n in namespaces if namespaces.count(n) > 1}):
        reader.problem(
            f"TOPIC_<T>_NAMESPACE {namespace!r} is set for several topics: their derived identifiers could "
            "collide; give each topic its own"
        )
    return topics


# ---------------------------------------------------------------------------- pipeline, sender, telemetry


def _read_pipeline(reader: Reader) -> PipelineSettings:
    pipeline = PipelineSettings(
        linger_ms=reader.integer("CONNECTOR_LINGER_MS", 100, minimum=0),
        batch_size=reader.integer("CONNECTOR_BATCH_SIZE", 100, minimum=1, maximum=MAX_EVENTS_PER_REQUEST),
        commit_interval_ms=reader.integer("CONNECTOR_COMMIT_INTERVAL_MS", 1000, minimum=1),
        max_buffered_records=reader.integer("CONNECTOR_MAX_BUFFERED_RECORDS", 20_000, minimum=1),
        shutdown_timeout_s=reader.number("CONNECTOR_SHUTDOWN_TIMEOUT_S", 30.0),
        on_invalid="fail"
        if reader.choice("CONNECTOR_ON_INVALID", "dlq", ("dlq", "fail")) == "fail"
        else "dlq",
        workers=reader.integer("CONNECTOR_WORKERS", 1, minimum=1),
        ledger_topic=reader.text("CONNECTOR_LEDGER_TOPIC", "kafka-stripe.ledger"),
        ledger_namespace=reader.raw("CONNECTOR_LEDGER_NAMESPACE"),
        aggregate_max_records=reader.integer("CONNECTOR_AGGREGATE_MAX_RECORDS", 1_000_000, minimum=1),
    )
    problem = topic_name_problem(pipeline.ledger_topic)
    if problem:
        reader.problem(f"CONNECTOR_LEDGER_TOPIC: {problem}")
    if pipeline.max_buffered_records < pipeline.batch_size:
        reader.problem(
            f"CONNECTOR_MAX_BUFFERED_RECORDS ({pipeline.max_buffered_records}) must be at least "
            f"CONNECTOR_BATCH_SIZE ({pipeline.batch_size})"
        )
    return pipeline


def _rate_limit(reader: Reader, stripe: StripeSettings) -> tuple[float, str]:
    """``CONNECTOR_RATE_LIMIT_RPS``, else the limit of the key's mode, with the reason either way."""
    if reader.raw("CONNECTOR_RATE_LIMIT_RPS") is not None:
        return reader.number("CONNECTOR_RATE_LIMIT_RPS", LIVE_RATE_LIMIT_RPS), "CONNECTOR_RATE_LIMIT_RPS"
    if stripe.livemode:
        return LIVE_RATE_LIMIT_RPS, "live-mode key: Stripe's stream limit of 10,000 requests/s"
    return TEST_RATE_LIMIT_RPS, "test-mode key: Stripe's sandbox (basic) limit of 25 requests/s"


def _read_sender(reader: Reader, stripe: StripeSettings) -> SenderSettings:
    rate_limit_rps, rate_limit_source = _rate_limit(reader, stripe)
    sender = SenderSettings(
        max_in_flight=reader.integer("CONNECTOR_MAX_IN_FLIGHT", 128, minimum=1),
        rate_limit_rps=rate_limit_rps,
        rate_limit_source=rate_limit_source,
        session_renew_margin_s=reader.number(
            "CONNECTOR_SESSION_RENEW_MARGIN_S", 60.0, maximum=SESSION_TTL_SECONDS / 2
        ),
        retry_max_elapsed_s=reader.number("CONNECTOR_RETRY_MAX_ELAPSED_S", 300.0),
        retry_initial_backoff_ms=reader.integer("CONNECTOR_RETRY_INITIAL_BACKOFF_MS", 200, minimum=1),
        retry_max_backoff_ms=reader.integer("CONNECTOR_RETRY_MAX_BACKOFF_MS", 30_000, minimum=1),
        http_connect_timeout_s=reader.number("CONNECTOR_HTTP_CONNECT_TIMEOUT_S", 5.0),
        http_read_timeout_s=reader.number("CONNECTOR_HTTP_READ_TIMEOUT_S", 30.0),
        http_timeout_s=reader.number("CONNECTOR_HTTP_TIMEOUT_S", 60.0),
    )
    if sender.retry_initial_backoff_ms > sender.retry_max_backoff_ms:
        reader.problem(
            f"CONNECTOR_RETRY_INITIAL_BACKOFF_MS ({sender.retry_initial_backoff_ms}) must not exceed "
            f"CONNECTOR_RETRY_MAX_BACKOFF_MS ({sender.retry_max_backoff_ms})"
        )
    for name, part in (
        ("CONNECTOR_HTTP_CONNECT_TIMEOUT_S", sender.http_connect_timeout_s),
        ("CONNECTOR_HTTP_READ_TIMEOUT_S", sender.http_read_timeout_s),
    ):
        if part > sender.http_timeout_s:
            reader.problem(
                f"{name} ({part:g}) must not exceed CONNECTOR_HTTP_TIMEOUT_S ({sender.http_timeout_s:g})"
            )
    return sender


def _read_telemetry(reader: Reader) -> TelemetrySettings:
    log_format = reader.choice("CONNECTOR_LOG_FORMAT", "text", ("text", "json"))
    return TelemetrySettings(
        metrics_port=reader.integer("CONNECTOR_METRICS_PORT", 9464, minimum=0, maximum=65535),
        log_format="json" if log_format == "json" else "text",
        log_level=reader.choice("CONNECTOR_LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
        health_stuck_after_s=reader.number("CONNECTOR_HEALTH_STUCK_AFTER_S", 60.0, minimum=1.0),
    )


def _read_validation(reader: Reader) -> ValidationSettings:
    on_missing = reader.choice("CONNECTOR_ON_MISSING_METER", "pause", ("pause", "dlq"))
    return ValidationSettings(
        meter_refresh_s=reader.number("CONNECTOR_METER_REFRESH_S", 60.0),
        on_missing_meter="dlq" if on_missing == "dlq" else "pause",
        verify_customers=reader.flag("CONNECTOR_VERIFY_CUSTOMERS", True),
        unknown_customer_wait_s=reader.number("CONNECTOR_UNKNOWN_CUSTOMER_WAIT_S", 600.0),
        customer_lookups_rps=reader.number("CONNECTOR_CUSTOMER_LOOKUPS_RPS", 20.0, minimum=0.1),
        customer_cache_size=reader.integer("CONNECTOR_CUSTOMER_CACHE_SIZE", 1_000_000, minimum=1),
        max_waiting_records=reader.integer("CONNECTOR_MAX_WAITING_RECORDS", 10_000, minimum=1),
        customer_preload=reader.integer("CONNECTOR_CUSTOMER_PRELOAD", 10_000, minimum=0),
        error_reports_poll_s=reader.integer("CONNECTOR_ERROR_REPORTS_POLL_S", 30, minimum=0),
    )


# ------------------------------------------------------------------------------------------ the loader


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Read and validate the whole configuration; raise ``ConfigurationError`` listing every problem."""
    reader = Reader(environ)
    stripe = _read_stripe(reader)
    kafka = _read_kafka(reader)
    registry = _read_schema_registry(reader)
    topics = _read_topics(reader, registry=registry is not None)
    pipeline = _read_pipeline(reader)
    sender = _read_sender(reader, stripe)
    telemetry = _read_telemetry(reader)
    validation = _read_validation(reader)
    unknown_topic_variables(reader, [topic.name for topic in topics])
    reader.unknown("CONNECTOR_")
    reader.unknown("SCHEMA_REGISTRY_")
    reader.unknown("STRIPE_", strict=False)
    if reader.problems:
        raise ConfigurationError(reader.problems)
    return Settings(
        stripe=stripe,
        kafka=kafka,
        topics=topics,
        pipeline=pipeline,
        sender=sender,
        telemetry=telemetry,
        schema_registry=registry,
        validation=validation,
    )
