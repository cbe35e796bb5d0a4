"""``check``'s Kafka check: the brokers answer, every consumed topic and its dead-letter topic exist."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence
from typing import Any

from connector.commands.check_result import CheckResult, plural
from connector.commands.prologue import redactor
from connector.config.settings import Settings
from connector.config.topics import topic_env_key

KAFKA_TIMEOUT_S = 10.0  # how long the broker may take to answer the metadata request


class _LogLines(logging.Handler):
    """Collects librdkafka's log lines (why a connection failed) instead of printing them on stderr."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # "FAIL [rdkafka#producer-1] [thrd:host:9092/bootstrap]: host:9092/bootstrap: Connect to ... failed:
        # Connection refused (after 0ms in state CONNECT)" -> "host:9092/bootstrap: Connect ... refused"
        text = record.getMessage()
        text = re.sub(r"^\S+ \[[^\]]*\] \[thrd:[^\]]*\]: ", "", text)
        self.lines.append(re.sub(r" \(after \d+ms in state \w+\)$", "", text))


def check_kafka(settings: Settings) -> CheckResult:
    """The brokers answer a metadata request, every consumed topic exists, dead-letter topics too."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    handler = _LogLines()
    logger = logging.Logger("kafka_stripe.check.kafka")  # unregistered: never reaches the root logger
    logger.addHandler(handler)
    config: dict[str, Any] = {**settings.producer_config(), "logger": logger}
    admin: Any = None
    try:
        admin = AdminClient(config)
        metadata = admin.list_topics(timeout=KAFKA_TIMEOUT_S)
    except KafkaException as exc:
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.poll(0.2)  # serve the log lines that say why
        return _unanswered(settings, exc, handler.lines)
    problems, warnings, details = _topic_findings(settings, metadata)
    if not problems:
        identity_problems, identity_details = _identity_findings(settings, admin, metadata)
        problems += identity_problems
        details += identity_details
    brokers = len(metadata.brokers)
    where = f"{settings.kafka.bootstrap_servers} answered ({plural(brokers, 'broker')})"
    if problems:
        return CheckResult(
            "kafka", "failed", f"{where}; {len(problems)} topic problem(s)", (*problems, *warnings, *details)
        )
    summary = f"{where}; {plural(len(settings.topics), 'topic')} found"
    if warnings:
        return CheckResult("kafka", "warning", summary, (*warnings, *details))
    return CheckResult("kafka", "ok", summary, tuple(details))


def _unanswered(settings: Settings, exc: Exception, log_lines: Sequence[str]) -> CheckResult:
    """The failed result when the brokers gave no metadata, with librdkafka's last words on why."""
    redact = redactor(settings)
    error = exc.args[0] if exc.args else exc
    text = error.str() if hasattr(error, "str") else str(error)
    bootstrap = settings.kafka.bootstrap_servers
    return CheckResult(
        "kafka",
        "failed",
        redact(f"no metadata from {bootstrap} (waited up to {KAFKA_TIMEOUT_S:g} s): {text}"),
        tuple(redact(line) for line in _distinct_tail(log_lines, 3)),
    )


def _topic_findings(settings: Settings, metadata: Any) -> tuple[list[str], list[str], list[str]]:
    """(problems, warnings, details) about the consumed topics and their dead-letter topics."""
    bootstrap = settings.kafka.bootstrap_servers
    details: list[str] = []
    problems: list[str] = []
    warnings: list[str] = []
    for topic in settings.topics:
        found = metadata.topics.get(topic.name)
        if found is None:
            problems.append(
                f"topic {topic.name!r} does not exist on {bootstrap} (CONNECTOR_TOPICS); create it, "
                "or fix the name"
            )
            continue
        if found.error is not None:
            problems.append(f"topic {topic.name!r}: {found.error.str()}")
            continue
        details.append(f"{topic.name}: {len(found.partitions)} partition(s)")
        if settings.pipeline.on_invalid == "fail":  # CONNECTOR_ON_INVALID=fail: no dead-letter topic
            continue
        dlq = metadata.topics.get(topic.dlq_topic)
        if dlq is None or dlq.error is not None:
            warnings.append(
                f"dead-letter topic {topic.dlq_topic!r} of {topic.name!r} does not exist "
                f"(TOPIC_{topic_env_key(topic.name)}_DLQ_TOPIC): the first rejected record creates it if "
                "the brokers auto-create topics, otherwise the connector stops there; create it now"
            )
        else:
            details.append(f"{topic.dlq_topic}: {len(dlq.partitions)} partition(s) (dead letters)")
    return problems, warnings, details


def _identity_findings(settings: Settings, admin: Any, metadata: Any) -> tuple[list[str], list[str]]:
    """(problems, details): each topic's identifier namespace (its topic id, or the configured one) and
    the delivery ledger topic."""
    from connector.errors import ConfigurationError
    from connector.kafka.topics import namespaces, topic_ids

    configured = {t.name: t.namespace for t in settings.topics}
    try:
        found = topic_ids(admin, [name for name, ns in configured.items() if ns is None])
        chosen = namespaces(configured, found)
    except ConfigurationError as exc:
        return list(exc.problems), []
    except Exception as exc:  # a broker that cannot describe topics: the same as no topic ids
        return [f"the cluster did not describe the topics ({exc}): set TOPIC_<T>_NAMESPACE per topic"], []
    details = [
        f"{name}: identifiers in namespace {ns} ({'TOPIC_<T>_NAMESPACE' if configured[name] else 'topic id'})"
        for name, ns in chosen.items()
    ]
    ledger = settings.pipeline.ledger_topic
    if ledger in metadata.topics:
        details.append(f"{ledger}: the delivery ledger (CONNECTOR_LEDGER_TOPIC)")
    else:
        details.append(f"{ledger}: the delivery ledger does not exist yet; `run` creates it (compacted)")
    return [], details


def _distinct_tail(lines: Sequence[str], count: int) -> list[str]:
    tail: list[str] = []
    for line in reversed(lines):
        if line not in tail:
            tail.append(line)
        if len(tail) == count:
            break
    return tail[::-1]
