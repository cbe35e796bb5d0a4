"""Meter event identifiers: the record's own, or one derived from its topic, partition and offset."""

from __future__ import annotations

import hashlib

from connector.records import Coordinates
from connector.stripe.limits import MAX_IDENTIFIER_LENGTH

MAX_IDENTIFIER = MAX_IDENTIFIER_LENGTH
# Topics up to this length keep their name in derived identifiers: "kafka:" + topic + ":" + a
# partition (int32, 10 digits) + ":" + an offset (int64, 19 digits) is then at most 100 chars.
MAX_TOPIC_IN_IDENTIFIER = MAX_IDENTIFIER - len("kafka:") - 1 - 10 - 1 - 19


def identifier_prefix(topic: str) -> str:
    """The part of derived identifiers that names the topic: ``kafka:{topic}:`` for topics of up to
    63 characters, ``kafka~{topic[:24]}~{sha256(topic)[:32]}:`` for longer ones (Kafka allows 249).
    The two forms differ from the sixth character on, and ``~`` never occurs in a topic name."""
    if len(topic) <= MAX_TOPIC_IN_IDENTIFIER:
        return f"kafka:{topic}:"
    digest = hashlib.sha256(topic.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"kafka~{topic[:24]}~{digest}:"


def derived_identifier(coordinates: Coordinates) -> str:
    """The identifier of a record that carries none of its own."""
    return f"{identifier_prefix(coordinates.topic)}{coordinates.partition}:{coordinates.offset}"
