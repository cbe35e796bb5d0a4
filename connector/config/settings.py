"""Environment variables → one frozen, validated ``Settings``; every problem reported at once."""

from __future__ import annotations

import datetime as dt
import difflib
import hmac
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn
from urllib.parse import urlsplit

from connector.errors import ConfigurationError


def _default_schema() -> Path:
    """The default schema: ``schemas/`` in a source checkout, ``connector/schemas/`` when installed."""
    package = Path(__file__).resolve().parents[1]  # connector/
    installed = package / "schemas" / "usage_record.avsc"
    return installed if installed.exists() else package.parent / "schemas" / "usage_record.avsc"


DEFAULT_SCHEMA = _default_schema()
MAX_PAST_SECONDS = 35 * 24 * 3600  # Stripe accepts events up to 35 days old
MAX_FUTURE_SECONDS = 5 * 60  # ... and at most 5 minutes ahead
SESSION_TTL_SECONDS = 15 * 60  # a meter event session token lives 15 minutes
MAX_EVENT_NAME_LENGTH = 100
MAX_BATCH_SIZE = 100  # Stripe's meter_event_stream takes 1 to 100 events per request
# Stripe's stream allows 10,000 requests/s in live mode; in test mode and sandboxes it counts toward the
# basic limit of about 25 requests/s across the account.
LIVE_RATE_LIMIT_RPS = 10_000.0
TEST_RATE_LIMIT_RPS = 25.0

DEFAULT_API_BASE = "https://api.stripe.com"
DEFAULT_METER_EVENTS_BASE = "https://meter-events.stripe.com"
DEFAULT_API_VERSION = "2024-09-30.acacia"
# The v2 meter event endpoints exist from this API version on.
MIN_API_VERSION_DATE = dt.date(2024, 9, 30)
DEFAULT_GROUP_ID = "kafka-stripe"
STRIPE_KEY_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_")
# Every variable the connector reads starts with one of these (the demo and the tests clear them so that
# the caller's own settings cannot leak into a connector they start).
ENV_PREFIXES = ("KAFKA_", "STRIPE_", "TOPIC_", "CONNECTOR_", "SCHEMA_REGISTRY_")
MASK = "**********"

OnInvalid = Literal["dlq", "fail"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_FIELD_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STRIPE_KEY = re.compile(r"(sk|rk)_(test|live)_[A-Za-z0-9_]+")
_API_VERSION = re.compile(r"(\d{4})-(\d{2})-(\d{2})\.[a-z]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")

# Variables in our own namespaces that are not settings of this module. KAFKA_TEST_BROKER picks the test
# suite's broker (tests/kafka_fixtures.py); it is never a librdkafka property.
_IGNORED = frozenset({"KAFKA_TEST_BROKER"})

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


# --------------------------------------------------------------------------------------------- secrets


class Secret:
    """A credential whose ``repr`` and ``str`` are masked; ``reveal()`` is the only way to the value."""

    __slots__ = ("_hint", "_value")
    _hint: str
    _value: str

    def __init__(self, value: str, hint: str = "") -> None:
        # ``hint`` is a non-secret prefix shown before the mask, e.g. ``sk_live_`` to tell test from live.
        object.__setattr__(self, "_value", value)
        object.__setattr__(self, "_hint", hint)

    def reveal(self) -> str:
        """The secret itself: only for the client that sends it, never for display."""
        return self._value

    def masked(self) -> str:
        return self._hint + MASK

    def __repr__(self) -> str:
        return f"Secret({self.masked()!r})"

    def __str__(self) -> str:
        return self.masked()

    def __format__(self, spec: str) -> str:
        return format(self.masked(), spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __reduce__(self) -> tuple[type[Secret], tuple[str, str]]:
        # Settings may be handed to worker processes; pickling must rebuild the object, not leak it.
        return (Secret, (self._value, self._hint))


def is_secret_property(name: str) -> bool:
    """Whether a librdkafka or schema-registry property holds a credential and must be masked."""
    lowered = name.lower()
    return (
        any(word in lowered for word in ("password", "secret", "passphrase", "user.info", "auth.token"))
        or lowered.endswith(".pem")
        or lowered in ("sasl.oauthbearer.config", "ssl_key")
    )


# -------------------------------------------------------------------------------------------- settings


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
        return "_live_" in self.api_key.reveal()[:8]

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
        }

    def secrets(self) -> tuple[Secret, ...]:
        found = [self.stripe.api_key]
        found += [value for _, value in self.kafka.options if isinstance(value, Secret)]
        if self.schema_registry is not None and self.schema_registry.basic_auth_user_info is not None:
            found.append(self.schema_registry.basic_auth_user_info)
        return tuple(found)

    def scrub(self, text: str) -> str:
        """``text`` with any secret value masked: a last guard for messages from third-party code."""
        return _scrub(text, [secret.reveal() for secret in self.secrets()])


def _plain(settings: PipelineSettings | SenderSettings | TelemetrySettings) -> dict[str, object]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


def _reveal(value: str | Secret) -> str:
    return value.reveal() if isinstance(value, Secret) else value


def _scrub(text: str, secrets: Iterable[str]) -> str:
    # Longest first, so a password that contains another secret is masked whole. Values under four
    # characters are skipped: masking every "a" would make the text unreadable and hide nothing real.
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def scrub_environ(text: str, environ: Mapping[str, str]) -> str:
    """``text`` with the values of credential variables in ``environ`` masked (for problem reports)."""
    secrets = [
        value.strip()
        for name, value in environ.items()
        if name in ("STRIPE_API_KEY", "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO")
        or (name.startswith("KAFKA_") and is_secret_property(_kafka_property(name)))
    ]
    return _scrub(text, secrets)


# --------------------------------------------------------------------------------------------- reading


def _show(value: str) -> str:
    """A non-secret value quoted for a problem message, cut short."""
    return repr(value if len(value) <= 60 else value[:57] + "...")


class _Reader:
    """Reads variables, remembers which names are known, and collects problems instead of raising."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []
        self.known: set[str] = set()

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def raw(self, name: str) -> str | None:
        """The value, or None when unset or blank (compose files often pass ``VAR=`` for unset)."""
        self.known.add(name)
        value = self.environ.get(name)
        if value is None or not value.strip():
            return None
        return value

    def text(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None else value.strip()

    def required(self, name: str, *, alternative: str = "", aliases: tuple[str, ...] = ()) -> str | None:
        value = self.raw(name)
        if value is None:
            self.problem(f"{name} is required{alternative}{self.near_misses(name, aliases)}")
            return None
        return value.strip()

    def near_misses(self, name: str, aliases: tuple[str, ...] = ()) -> str:
        """Set variables that look like ``name`` (or are other tools' names for it): likely mistakes."""
        similar = difflib.get_close_matches(name, [n for n in self.environ if n != name], n=3, cutoff=0.8)
        similar += [alias for alias in aliases if alias in self.environ and alias not in similar]
        return f" ({', '.join(similar)} is set: a typo?)" if similar else ""

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        if not _INTEGER.fullmatch(value.strip()):
            self.problem(f"{name} must be an integer {bounds}, not {_show(value)}")
            return default
        number = int(value)
        if number < minimum or (maximum is not None and number > maximum):
            self.problem(f"{name} must be an integer {bounds}, not {number}")
            return default
        return number

    def number(
        self, name: str, default: float, *, minimum: float = 0.0, maximum: float | None = None
    ) -> float:
        """A finite float greater than ``minimum`` (and at most ``maximum``)."""
        value = self.raw(name)
        if value is None:
            return default
        bounds = f"> {minimum:g}" + (f" and <= {maximum:g}" if maximum is not None else "")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            self.problem(f"{name} must be a number {bounds}, not {_show(value)}")
            return default
        if number <= minimum or (maximum is not None and number > maximum):
            self.problem(f"{name} must be a number {bounds}, not {value.strip()}")
            return default
        return number

    def flag(self, name: str, default: bool) -> bool:
        """``true``/``false`` (also ``1``/``0``, ``yes``/``no``), any case."""
        value = self.raw(name)
        if value is None:
            return default
        normalised = value.strip().lower()
        if normalised in ("true", "1", "yes"):
            return True
        if normalised in ("false", "0", "no"):
            return False
        self.problem(f"{name} must be true or false, not {_show(value)}")
        return default

    def choice(self, name: str, default: str, choices: tuple[str, ...], *, upper: bool = False) -> str:
        value = self.raw(name)
        if value is None:
            return default
        normalised = value.strip().upper() if upper else value.strip().lower()
        if normalised not in choices:
            self.problem(f"{name} must be one of {', '.join(choices)}, not {_show(value)}")
            return default
        return normalised

    def url(self, name: str, default: str) -> str:
        value = self.text(name, default)
        problem = _url_problem(value)
        if problem:
            self.problem(f"{name} {problem}")
            return default
        return value.rstrip("/")

    def unknown(self, prefix: str, *, strict: bool = True) -> None:
        """Report variables under ``prefix`` that nothing read: almost always typos."""
        known = sorted(n for n in self.known if n.startswith(prefix))
        for name in sorted(n for n in self.environ if n.startswith(prefix)):
            if name in self.known or name in _IGNORED:
                continue
            similar = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
            if strict:
                hint = f"; did you mean {similar[0]}?" if similar else ""
                self.problem(f"{name} is not a known setting{hint}")
            elif similar:
                # Other tools share this prefix (STRIPE_WEBHOOK_SECRET, ...): only near-misses are flagged.
                self.problem(f"{name} is not a known setting; did you mean {similar[0]}?")


def _url_problem(value: str) -> str | None:
    """Why ``value`` is not a usable http(s) base URL, without echoing credentials."""
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        return "is not a valid URL"
    if "@" in parts.netloc:
        # Credentials in a URL would end up in every log line that shows it.
        return "must not contain credentials (user:password@)"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// URL, not {_show(value)}"
    if parts.query or parts.fragment:
        return f"must be a base URL without query or fragment, not {_show(value)}"
    return None


# -------------------------------------------------------------------------------------------- stripe


def _read_stripe(reader: _Reader) -> StripeSettings:
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
        reader.problem(f"STRIPE_API_VERSION must look like {DEFAULT_API_VERSION}, not {_show(api_version)}")
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
    hint = next((p for p in STRIPE_KEY_PREFIXES if key and key.startswith(p)), "")
    return StripeSettings(
        api_key=Secret(key or "", hint),
        api_base=reader.url("STRIPE_API_BASE", DEFAULT_API_BASE),
        meter_events_base=reader.url("STRIPE_METER_EVENTS_BASE", DEFAULT_METER_EVENTS_BASE),
        api_version=api_version,
    )


def _check_stripe_key(reader: _Reader, where: str, key: str) -> None:
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


def _read_kafka(reader: _Reader) -> KafkaSettings:
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
            f"KAFKA_ENABLE_AUTO_COMMIT must be false (or unset), not {_show(auto_commit)}: "
            "offsets are committed only after Stripe accepted the records"
        )
    # Forced: librdkafka's auto-commit would commit records Stripe has not accepted yet.
    options["enable.auto.commit"] = "false"
    for key in options:
        origin[key] = "KAFKA_" + key.upper().replace(".", "_")
    for name in sorted(reader.environ):
        if not name.startswith("KAFKA_") or name in reader.known or name in _IGNORED:
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
    for problem in _librdkafka_problems(options, origin):
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
        return f"{_show(server)} has an invalid port"
    if any(ch.isspace() for ch in server) or "/" in server:
        return f"{_show(server)} must be host:port"
    return None


_PROPERTY_IN_MESSAGE = (
    re.compile(r"configuration property:? \"([^\"]+)\""),
    re.compile(r"^([a-z0-9_.]+) failed:"),
)


def _librdkafka_problems(options: Mapping[str, str | Secret], origin: Mapping[str, str]) -> list[str]:
    """What librdkafka itself says about the properties: names, enum values, TLS files, SASL support.

    A consumer is created without ``bootstrap.servers``, so it contacts no broker, and closed again.
    librdkafka stops at the first bad property; that one is dropped and the rest tried again, so every
    bad property is reported, not only the first.
    """
    from confluent_kafka import Consumer, KafkaException

    secrets = [value.reveal() for value in options.values() if isinstance(value, Secret)]
    probe: dict[str, object] = {k: _reveal(v) for k, v in options.items() if k != "bootstrap.servers"}
    problems: list[str] = []
    for _ in range(len(options) + 1):
        try:
            Consumer({**probe, "logger": _SILENT}).close()
            break
        except KafkaException as error:
            detail = error.args[0].str() if error.args and hasattr(error.args[0], "str") else str(error)
            message = _scrub(str(detail).removeprefix("Failed to create consumer: "), secrets)
            prop = next((m[1] for p in _PROPERTY_IN_MESSAGE if (m := p.search(message))), None)
            where = origin.get(prop, "KAFKA_*") if prop else "KAFKA_*"
            if message.startswith("No such configuration property"):
                problems.append(f"{where}: {prop!r} is not a librdkafka configuration property")
            elif "SASL mechanism GSSAPI" in message and not {"sasl.mechanism", "sasl.mechanisms"} & set(
                probe
            ):
                # librdkafka's default mechanism is GSSAPI (Kerberos), which its wheels are built without.
                problems.append(
                    "KAFKA_SASL_MECHANISM is needed with a SASL security.protocol "
                    f"(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER); librdkafka: {message}"
                )
            else:
                problems.append(f"{where}: librdkafka rejects it: {message}")
            if prop is None or prop not in probe:
                break
            del probe[prop]
    return problems


# The probe client must not print librdkafka's logs (e.g. "no bootstrap.servers") on the user's terminal.
_SILENT = logging.Logger("kafka-stripe.settings.probe")
_SILENT.addHandler(logging.NullHandler())
_SILENT.propagate = False


# ------------------------------------------------------------------------------------ schema registry


def _read_schema_registry(reader: _Reader) -> SchemaRegistrySettings | None:
    url = reader.raw("SCHEMA_REGISTRY_URL")
    user_info = reader.raw("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO")
    if url is None:
        if user_info is not None:
            reader.problem("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO is set but SCHEMA_REGISTRY_URL is not")
        return None
    urls = [u.strip() for u in url.split(",") if u.strip()]
    for one in urls:
        # The registry client accepts a comma-separated list of equivalent URLs.
        problem = _url_problem(one)
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

TOPIC_SUFFIXES = (
    "EVENT_NAME",
    "SCHEMA",
    "FORMAT",
    "CUSTOMER_FIELD",
    "VALUE_FIELD",
    "TIMESTAMP_FIELD",
    "IDENTIFIER_FIELD",
    "PAYLOAD_FIELDS",
    "CUSTOMER_KEY",
    "VALUE_KEY",
    "DLQ_TOPIC",
    "DECIMAL_VALUES",
)


def topic_env_key(topic: str) -> str:
    """``<T>`` of ``TOPIC_<T>_*``: the topic name upper-cased, every non-alphanumeric character ``_``."""
    return re.sub(r"[^A-Za-z0-9]", "_", topic).upper()


def topic_name_problem(name: str) -> str | None:
    if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
        return f"{_show(name)} is not a legal Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"
    return None


def _read_topic_names(reader: _Reader) -> list[str]:
    value = reader.required("CONNECTOR_TOPICS")
    if value is None:
        return []
    names: list[str] = []
    keys: dict[str, str] = {}
    # Empty entries (a trailing comma) are ignored.
    for name in (n.strip() for n in value.split(",")):
        if not name:
            continue
        problem = topic_name_problem(name)
        if problem:
            reader.problem(f"CONNECTOR_TOPICS: {problem}")
        elif name in names:
            reader.problem(f"CONNECTOR_TOPICS: {name!r} is listed twice")
        elif topic_env_key(name) in keys:
            reader.problem(
                f"CONNECTOR_TOPICS: {keys[topic_env_key(name)]!r} and {name!r} both map to "
                f"TOPIC_{topic_env_key(name)}_*; rename one"
            )
        else:
            names.append(name)
            keys[topic_env_key(name)] = name
    if not names and not any("CONNECTOR_TOPICS" in p for p in reader.problems):
        reader.problem("CONNECTOR_TOPICS lists no topic")
    return names


def _split_fields(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _field_path_problem(path: str) -> str | None:
    if not all(_FIELD_SEGMENT.fullmatch(segment) for segment in path.split(".")):
        return f"{_show(path)} is not a field name or dotted path (a.b.c)"
    return None


def _read_topic(
    reader: _Reader,
    name: str,
    *,
    registry: bool,
    max_past: int,
    max_future: int,
    schemas: dict[Path, _Schema],
) -> TopicSettings:
    prefix = f"TOPIC_{topic_env_key(name)}_"
    event_name = reader.required(prefix + "EVENT_NAME") or ""
    if len(event_name) > MAX_EVENT_NAME_LENGTH:
        reader.problem(f"{prefix}EVENT_NAME is {len(event_name)} characters; Stripe allows at most 100")

    schema_value = reader.raw(prefix + "SCHEMA")
    schema_path = Path(schema_value.strip()).expanduser().resolve() if schema_value else DEFAULT_SCHEMA

    wire_format = reader.choice(prefix + "FORMAT", "confluent" if registry else "avro", ("avro", "confluent"))
    if wire_format == "confluent" and not registry:
        reader.problem(f"{prefix}FORMAT is confluent, which needs SCHEMA_REGISTRY_URL")

    explicit: set[str] = set()
    fields: dict[str, str] = {}
    for role, default in (
        ("customer", "stripe_customer_id"),
        ("value", "value"),
        ("timestamp", "timestamp"),
        ("identifier", "identifier"),
    ):
        env = f"{prefix}{role.upper()}_FIELD"
        value = reader.raw(env)
        if value is not None:
            explicit.add(role)
            problem = _field_path_problem(value.strip())
            if problem:
                reader.problem(f"{env}: {problem}")
                value = None
        fields[role] = value.strip() if value is not None else default

    payload_env = prefix + "PAYLOAD_FIELDS"
    reader.known.add(payload_env)
    payload_value = reader.environ.get(payload_env)
    payload: tuple[str, ...] | None = None  # None: the default, decided once the schema is known
    if payload_value is not None:
        # The one variable where an empty value means something: "copy no extra fields".
        payload = _split_fields(payload_value)
        for path in payload:
            problem = _field_path_problem(path)
            if problem:
                reader.problem(f"{payload_env}: {problem}")
        payload = tuple(p for p in payload if not _field_path_problem(p))
        if len(set(payload)) != len(payload):
            reader.problem(f"{payload_env} lists a field twice")

    customer_key = reader.text(prefix + "CUSTOMER_KEY", "stripe_customer_id")
    value_key = reader.text(prefix + "VALUE_KEY", "value")
    if customer_key == value_key:
        reader.problem(f"{prefix}CUSTOMER_KEY and {prefix}VALUE_KEY are both {customer_key!r}")

    decimal_values = reader.flag(prefix + "DECIMAL_VALUES", False)
    dlq_topic = reader.text(prefix + "DLQ_TOPIC", f"{name}.dlq")
    problem = topic_name_problem(dlq_topic)
    if problem:
        reader.problem(f"{prefix}DLQ_TOPIC: {problem}")

    schema = schemas.get(schema_path)
    if schema is None:
        schema = schemas[schema_path] = _Schema.load(schema_path)
    if schema.error is not None:
        where = f"{prefix}SCHEMA" if schema_value else f"{prefix}SCHEMA (default)"
        reader.problem(f"{where}: {schema.error}")
    if payload is None:
        # Default: copy ``attributes`` when the schema has it; a schema without it simply has no extras.
        has_attributes = schema.error is None and schema.lookup("attributes")[0] is not None
        payload = ("attributes",) if has_attributes or schema.error is not None else ()

    topic = TopicSettings(
        name=name,
        event_name=event_name,
        schema_path=schema_path,
        wire_format=wire_format,
        customer_field=fields["customer"],
        value_field=fields["value"],
        timestamp_field=fields["timestamp"],
        identifier_field=fields["identifier"],
        payload_fields=payload,
        customer_key=customer_key,
        value_key=value_key,
        dlq_topic=dlq_topic,
        max_past_seconds=max_past,
        max_future_seconds=max_future,
        decimal_values=decimal_values,
    )
    if schema.error is None:
        for problem in check_fields(schema, topic, explicit=frozenset(explicit)).problems:
            reader.problem(problem)
    return topic


def _unknown_topic_variables(reader: _Reader, names: list[str]) -> None:
    keys = {topic_env_key(name): name for name in names}
    known = sorted(n for n in reader.known if n.startswith("TOPIC_"))
    for name in sorted(n for n in reader.environ if n.startswith("TOPIC_") and n not in reader.known):
        suffix = next((s for s in TOPIC_SUFFIXES if name.endswith("_" + s)), None)
        middle = name[len("TOPIC_") : -len(suffix) - 1] if suffix else ""
        if suffix and middle and middle not in keys:
            if names:  # without valid topics, that problem is already reported on CONNECTOR_TOPICS
                listed = ", ".join(f"{topic} → TOPIC_{key}_*" for key, topic in keys.items())
                reader.problem(f"{name} belongs to no topic in CONNECTOR_TOPICS ({listed})")
            continue
        similar = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        hint = (
            f"; did you mean {similar[0]}?"
            if similar
            else f" (TOPIC_<T>_ + one of {', '.join(TOPIC_SUFFIXES)})"
        )
        reader.problem(f"{name} is not a known setting{hint}")


# --------------------------------------------------------------------------------------------- schemas


@dataclass(frozen=True, slots=True)
class _Schema:
    """A parsed ``.avsc`` file (fastavro's form) with its named types, or why it could not be read."""

    path: Path
    parsed: Any = None
    named: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def load(cls, path: Path) -> _Schema:
        import fastavro

        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path, error=f"{path}: no such file")
        except IsADirectoryError:
            return cls(path, error=f"{path} is a directory, not an .avsc file")
        except OSError as error:
            return cls(path, error=f"{path}: cannot read: {error.strerror or error}")
        except UnicodeDecodeError:
            return cls(path, error=f"{path} is not UTF-8 text")
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            return cls(
                path, error=f"{path} is not JSON: {error.msg} at line {error.lineno} column {error.colno}"
            )
        named: dict[str, Any] = {}
        try:
            parsed = fastavro.parse_schema(document, named_schemas=named)
        except Exception as error:  # fastavro raises assorted types for malformed input
            kind = type(error).__name__
            return cls(path, error=f"{path} is not a valid Avro schema: {kind}: {error}")
        root = _deref(parsed, named)
        if not (isinstance(root, dict) and root.get("type") == "record"):
            return cls(
                path, error=f"{path}: the top-level type must be a record, not {describe(root, named)}"
            )
        return cls(path, parsed=root, named=named)

    @property
    def record_name(self) -> str:
        return str(self.parsed.get("name", "")) if isinstance(self.parsed, dict) else ""

    def lookup(self, dotted: str) -> tuple[Any, str | None]:
        """The Avro type at a dotted path, or None and why not.

        The path follows records and nullable unions, and a map's values count as fields of any name
        (``attributes.region``), as the mapper reads them.
        """
        current: Any = self.parsed
        walked: list[str] = []
        for segment in dotted.split("."):
            branches, _ = _branches(current, self.named)
            container = branches[0] if len(branches) == 1 and isinstance(branches[0], dict) else {}
            if container.get("type") == "map":
                current = container.get("values")
            elif container.get("type") == "record":
                match = next((f for f in container.get("fields", ()) if f.get("name") == segment), None)
                if match is None:
                    names = ", ".join(f.get("name", "?") for f in container.get("fields", ())) or "none"
                    why = f"record {container.get('name')} has no field {segment!r} (its fields: {names})"
                    return None, why
                current = match["type"]
            else:
                here = ".".join(walked)
                what = describe(current, self.named)
                return None, f"{here!r} is {what}, not a record or map, so it has no {segment!r}"
            walked.append(segment)
        return current, None


def _deref(schema: Any, named: Mapping[str, Any]) -> Any:
    while isinstance(schema, str) and schema in named:
        schema = named[schema]
    while isinstance(schema, dict) and isinstance(schema.get("type"), dict | list):
        # {"type": {"type": "string"}} is the same type as {"type": "string"}
        schema = schema["type"]
    return schema


def _branches(schema: Any, named: Mapping[str, Any]) -> tuple[list[Any], bool]:
    """The non-null branches of a type (a lone type is one branch) and whether null is allowed."""
    schema = _deref(schema, named)
    options = schema if isinstance(schema, list) else [schema]
    resolved = [_deref(option, named) for option in options]
    non_null = [o for o in resolved if o != "null" and not (isinstance(o, dict) and o.get("type") == "null")]
    return non_null, len(non_null) != len(resolved)


def _kind(schema: Any, named: Mapping[str, Any]) -> str:
    """A one-word category of a non-union type: primitive name, ``decimal``, ``timestamp``, record, …"""
    schema = _deref(schema, named)
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    base = str(schema.get("type"))
    logical = schema.get("logicalType")
    if logical == "decimal" and base in ("bytes", "fixed"):
        return "decimal"
    if logical in ("timestamp-millis", "timestamp-micros") and base == "long":
        return "timestamp"
    if logical and base in ("int", "long"):
        return f"{base}:{logical}"  # date, time-*, local-timestamp-*: not quantities, not instants
    return base


def describe(schema: Any, named: Mapping[str, Any]) -> str:
    """A short human form of an Avro type: ``long (timestamp-millis)``, ``null | string``, ``map<string>``."""
    schema = _deref(schema, named)
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return " | ".join(describe(branch, named) for branch in schema)
    if not isinstance(schema, dict):
        return repr(schema)
    base = schema.get("type")
    if base in ("record", "enum", "fixed", "error"):
        return f"{base} {schema.get('name')}"
    if base == "map":
        return f"map<{describe(schema.get('values'), named)}>"
    if base == "array":
        return f"array<{describe(schema.get('items'), named)}>"
    logical = schema.get("logicalType")
    return f"{base} ({logical})" if logical else str(base)


_VALUE_KINDS = frozenset({"int", "long", "float", "double", "decimal", "string"})
_SCALAR_KINDS = _VALUE_KINDS | {"boolean", "enum", "timestamp"}


@dataclass(frozen=True, slots=True)
class FieldReport:
    """One configured field of a topic: its role, path, Avro type (None when absent) and a note."""

    role: str
    path: str
    type: str | None
    note: str = ""


@dataclass(frozen=True, slots=True)
class SchemaReport:
    """What a topic's schema offers for its configured fields, and what is wrong with it."""

    topic: str
    path: Path
    record: str
    fields: tuple[FieldReport, ...]
    problems: tuple[str, ...]


def inspect_schema(topic: TopicSettings) -> SchemaReport:
    """Load the topic's schema and check its configured fields (the ``check`` command's view)."""
    schema = _Schema.load(topic.schema_path)
    if schema.error is not None:
        problem = f"TOPIC_{topic_env_key(topic.name)}_SCHEMA: {schema.error}"
        return SchemaReport(topic.name, topic.schema_path, "", (), (problem,))
    return check_fields(schema, topic, explicit=frozenset())


def check_fields(schema: _Schema, topic: TopicSettings, *, explicit: frozenset[str]) -> SchemaReport:
    """Check that the topic's fields exist in ``schema`` with usable types.

    A missing customer or value field is a problem. A missing timestamp or identifier field is allowed
    when it is the default name (the Kafka record's timestamp and coordinates stand in), but not when
    the user named it in ``explicit``: a field they configured and the schema lacks is a typo.
    """
    prefix = f"TOPIC_{topic_env_key(topic.name)}_"
    named = schema.named
    reports: list[FieldReport] = []
    problems: list[str] = []
    where = schema.path.name

    def bad(env: str, path: str, found: Any, wanted: str) -> None:
        problems.append(f"{prefix}{env}: field {path!r} in {where} is {describe(found, named)}; {wanted}")

    roles = (
        ("customer", "CUSTOMER_FIELD", topic.customer_field),
        ("value", "VALUE_FIELD", topic.value_field),
        ("timestamp", "TIMESTAMP_FIELD", topic.timestamp_field),
        ("identifier", "IDENTIFIER_FIELD", topic.identifier_field),
    )
    for role, env, path in roles:
        found, why = schema.lookup(path)
        if found is None:
            if role in ("customer", "value") or role in explicit:
                problems.append(f"{prefix}{env}: {path!r} is not in {where}: {why}")
                reports.append(FieldReport(role, path, None, "missing"))
            else:
                stand_in = "the Kafka record's timestamp" if role == "timestamp" else "topic-partition-offset"
                reports.append(FieldReport(role, path, None, f"absent: {stand_in} is used"))
            continue
        reports.append(FieldReport(role, path, describe(found, named)))
        branches, nullable = _branches(found, named)
        kinds = [_kind(b, named) for b in branches]
        if role == "customer" and (kinds != ["string"] or nullable):
            bad(env, path, found, "the customer id must be a (non-null) string")
        elif role == "value" and (not kinds or not set(kinds) <= _VALUE_KINDS):
            bad(env, path, found, "the value must be int, long, float, double, decimal or string (or null)")
        elif role == "timestamp" and (len(kinds) != 1 or kinds[0] not in ("timestamp", "string")):
            # Nullable is fine: a null timestamp falls back to the Kafka record's, like an absent field.
            unit = ""
            if kinds == ["long"]:
                unit = "; a plain long has no unit: add logicalType timestamp-millis or -micros"
            wanted = "long (timestamp-millis/-micros) or string, optionally nullable"
            bad(env, path, found, f"the timestamp must be {wanted}{unit}")
        elif role == "identifier" and kinds != ["string"]:
            bad(env, path, found, "the identifier must be a string or a nullable string")
    for path in topic.payload_fields:
        found, why = schema.lookup(path)
        if found is None:
            problems.append(f"{prefix}PAYLOAD_FIELDS: {path!r} is not in {where}: {why}")
            reports.append(FieldReport("payload", path, None, "missing"))
            continue
        reports.append(FieldReport("payload", path, describe(found, named)))
        if not _payload_usable(found, named):
            bad(
                "PAYLOAD_FIELDS",
                path,
                found,
                "payload values are strings: use a scalar, or a map or record of scalars",
            )
    return SchemaReport(topic.name, schema.path, schema.record_name, tuple(reports), tuple(problems))


def _payload_usable(schema: Any, named: Mapping[str, Any]) -> bool:
    branches, _ = _branches(schema, named)
    if not branches:
        return False
    for branch in branches:
        kind = _kind(branch, named)
        # A map's entries, or a record's fields, become payload keys: their values must be scalars.
        if kind == "map":
            inner = [branch.get("values")]
        elif kind == "record":
            inner = [f.get("type") for f in branch.get("fields", ())]
        elif kind in _SCALAR_KINDS:
            continue
        else:
            return False
        for values in inner:
            scalars, _ = _branches(values, named)
            if not scalars or not all(_kind(v, named) in _SCALAR_KINDS for v in scalars):
                return False
    return True


# ------------------------------------------------------------------------------------------ the loader


def _rate_limit(reader: _Reader, stripe: StripeSettings) -> tuple[float, str]:
    """``CONNECTOR_RATE_LIMIT_RPS``, else the limit of the key's mode, with the reason either way."""
    if reader.raw("CONNECTOR_RATE_LIMIT_RPS") is not None:
        return reader.number("CONNECTOR_RATE_LIMIT_RPS", LIVE_RATE_LIMIT_RPS), "CONNECTOR_RATE_LIMIT_RPS"
    if stripe.livemode:
        return LIVE_RATE_LIMIT_RPS, "live-mode key: Stripe's stream limit of 10,000 requests/s"
    return TEST_RATE_LIMIT_RPS, "test-mode key: Stripe's sandbox (basic) limit of 25 requests/s"


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Read and validate the whole configuration; raise ``ConfigurationError`` listing every problem."""
    reader = _Reader(environ)
    stripe = _read_stripe(reader)
    kafka = _read_kafka(reader)
    registry = _read_schema_registry(reader)

    max_past = reader.integer(
        "CONNECTOR_TIMESTAMP_MAX_AGE_S", MAX_PAST_SECONDS, minimum=1, maximum=MAX_PAST_SECONDS
    )
    max_future = reader.integer(
        "CONNECTOR_TIMESTAMP_MAX_FUTURE_S", MAX_FUTURE_SECONDS, minimum=0, maximum=MAX_FUTURE_SECONDS
    )
    names = _read_topic_names(reader)
    schemas: dict[Path, _Schema] = {}
    topics = tuple(
        _read_topic(
            reader,
            name,
            registry=registry is not None,
            max_past=max_past,
            max_future=max_future,
            schemas=schemas,
        )
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

    pipeline = PipelineSettings(
        linger_ms=reader.integer("CONNECTOR_LINGER_MS", 100, minimum=0),
        batch_size=reader.integer("CONNECTOR_BATCH_SIZE", 100, minimum=1, maximum=MAX_BATCH_SIZE),
        commit_interval_ms=reader.integer("CONNECTOR_COMMIT_INTERVAL_MS", 1000, minimum=1),
        max_buffered_records=reader.integer("CONNECTOR_MAX_BUFFERED_RECORDS", 20_000, minimum=1),
        shutdown_timeout_s=reader.number("CONNECTOR_SHUTDOWN_TIMEOUT_S", 30.0),
        on_invalid="fail"
        if reader.choice("CONNECTOR_ON_INVALID", "dlq", ("dlq", "fail")) == "fail"
        else "dlq",
        workers=reader.integer("CONNECTOR_WORKERS", 1, minimum=1),
    )
    if pipeline.max_buffered_records < pipeline.batch_size:
        reader.problem(
            f"CONNECTOR_MAX_BUFFERED_RECORDS ({pipeline.max_buffered_records}) must be at least "
            f"CONNECTOR_BATCH_SIZE ({pipeline.batch_size})"
        )
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
    log_format = reader.choice("CONNECTOR_LOG_FORMAT", "text", ("text", "json"))
    telemetry = TelemetrySettings(
        metrics_port=reader.integer("CONNECTOR_METRICS_PORT", 9464, minimum=0, maximum=65535),
        log_format="json" if log_format == "json" else "text",
        log_level=reader.choice("CONNECTOR_LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
        health_stuck_after_s=reader.number("CONNECTOR_HEALTH_STUCK_AFTER_S", 60.0, minimum=1.0),
    )

    _unknown_topic_variables(reader, names)
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
    )
