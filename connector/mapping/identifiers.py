"""Meter event identifiers: the record's own, or one derived from its topic's identity, partition and offset.

A derived identifier is ``kafka:{topic}:{namespace}:{partition}:{offset}``, where the namespace is the
topic's Kafka topic id (22 characters of URL-safe base64; it changes when the topic is re-created and
differs between clusters) or the ``TOPIC_<T>_NAMESPACE`` the user set. When that is longer than Stripe's 100
characters, the topic name is cut: ``kafka~{topic[:n]}:{namespace}:{partition}:{offset}``. Topic names
and namespaces never contain ``:``, so the last three fields always split off cleanly and the identifier
turns back into (namespace, partition, offset); the (possibly cut) topic name is for people reading
Stripe's dashboard.
"""

from __future__ import annotations

from typing import NamedTuple

from connector.stripe.limits import MAX_IDENTIFIER_LENGTH

MAX_IDENTIFIER = MAX_IDENTIFIER_LENGTH
# A partition is an int32 (10 digits), an offset an int64 (19 digits), plus their two separators.
_COORDINATES = 10 + 1 + 19 + 1
MAX_NAMESPACE = 22  # a topic id in URL-safe base64; configured namespaces are held to it too
FULL, CUT = "kafka:", "kafka~"


def identifier_prefix(topic: str, namespace: str) -> str:
    """The part of a derived identifier before the partition: it names the topic and its namespace."""
    full = f"{FULL}{topic}:{namespace}:"
    if len(full) + _COORDINATES - 1 <= MAX_IDENTIFIER:
        return full
    room = MAX_IDENTIFIER - (_COORDINATES - 1) - len(CUT) - 1 - len(namespace) - 1
    return f"{CUT}{topic[:room]}:{namespace}:"


def derived_identifier(topic: str, namespace: str, partition: int, offset: int) -> str:
    """The identifier of a record that carries none of its own."""
    return f"{identifier_prefix(topic, namespace)}{partition}:{offset}"


class DerivedIdentifier(NamedTuple):
    """A derived identifier taken apart; ``topic`` is the name as written, cut when ``cut``."""

    topic: str
    cut: bool
    namespace: str
    partition: int
    offset: int


def parse_identifier(identifier: str) -> DerivedIdentifier | None:
    """The parts of a derived identifier, or None for anything else (a record's own identifier)."""
    if not identifier.startswith((FULL, CUT)):
        return None
    fields = identifier[len(FULL) :].rsplit(":", 3)
    if len(fields) != 4:
        return None
    topic, namespace, partition, offset = fields
    if not (topic and namespace and partition.isdigit() and offset.isdigit()):
        return None
    return DerivedIdentifier(topic, identifier.startswith(CUT), namespace, int(partition), int(offset))
