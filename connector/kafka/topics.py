"""Topic identity: each topic's Kafka topic id, the namespace its derived meter event identifiers carry."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any

from connector.errors import ConfigurationError

DESCRIBE_TIMEOUT_S = 10.0


def encode_topic_id(most: int, least: int) -> str:
    """A topic id (a UUID as two signed 64-bit halves) as 22 characters of URL-safe base64, the form
    Kafka's own tools print."""
    raw = most.to_bytes(8, "big", signed=True) + least.to_bytes(8, "big", signed=True)
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def topic_ids(admin: Any, topics: Iterable[str], *, timeout_s: float = DESCRIBE_TIMEOUT_S) -> dict[str, str]:
    """``{topic: topic id}`` from the cluster (``AdminClient.describe_topics``); a topic whose id the
    cluster does not give (older brokers answer the zero UUID) is left out."""
    from confluent_kafka import TopicCollection

    names = sorted(set(topics))
    if not names:
        return {}
    futures = admin.describe_topics(TopicCollection(names), request_timeout=timeout_s)
    found: dict[str, str] = {}
    for name, future in futures.items():
        description = future.result(timeout=timeout_s)
        uuid = getattr(description, "topic_id", None)
        if uuid is None:
            continue
        most, least = uuid.get_most_significant_bits(), uuid.get_least_significant_bits()
        if most or least:
            found[name] = encode_topic_id(most, least)
    return found


def namespaces(
    configured: Mapping[str, str | None], found: Mapping[str, str]
) -> dict[str, str]:
    """Each topic's identifier namespace: ``TOPIC_<T>_NAMESPACE`` when set, else its topic id.

    Raises ``ConfigurationError`` naming every topic that has neither: without one, a re-created topic
    (or the same topic name on another cluster) would reuse the identifiers of the first.
    """
    result: dict[str, str] = {}
    missing: list[str] = []
    for topic, namespace in configured.items():
        chosen = namespace or found.get(topic)
        if chosen is None:
            missing.append(topic)
        else:
            result[topic] = chosen
    if missing:
        raise ConfigurationError(
            [
                f"the cluster gives no topic id for {topic!r}: set TOPIC_<T>_NAMESPACE for it (1-22 letters, "
                "digits, '-' or '_', unique per topic and cluster) so its meter event identifiers cannot "
                "repeat when the topic is re-created"
                for topic in missing
            ]
        )
    return result


def current_namespace(admin_config: dict[str, Any], topic: str, configured: str | None = None) -> str:
    """``topic``'s identifier namespace now: ``configured`` (``TOPIC_<T>_NAMESPACE``) when set, else its
    topic id as the cluster says (for the operator commands; ``ConfigurationError`` when it has none)."""
    if configured:
        return configured
    from confluent_kafka.admin import AdminClient

    found = topic_ids(AdminClient(admin_config), [topic])
    unset: dict[str, str | None] = {topic: None}
    return namespaces(unset, found)[topic]
