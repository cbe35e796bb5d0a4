"""Derived identifiers: scoped to the topic's identity, at most 100 characters, stable, reversible."""

from __future__ import annotations

import itertools

import pytest

from connector.mapping.identifiers import derived_identifier, identifier_prefix, parse_identifier

LEGAL_TOPIC_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
TOPIC_ID = "o3I2k1pDSgG6hQ5J9ZxYtA"  # 22 characters of URL-safe base64, as Kafka prints topic ids
OTHER_ID = "Zm9vYmFyYmF6cXV4MTIzNA"


@pytest.mark.parametrize("length", [1, 40, 41, 42, 45, 100, 249])
@pytest.mark.parametrize("namespace", [TOPIC_ID, "eu", "x"])
def test_any_legal_topic_fits_and_comes_back(length: int, namespace: str) -> None:
    topic = (LEGAL_TOPIC_CHARS * 4)[:length]
    biggest = derived_identifier(topic, namespace, 2**31 - 1, 2**63 - 1)
    assert len(biggest) <= 100
    parsed = parse_identifier(biggest)
    assert parsed is not None
    assert (parsed.namespace, parsed.partition, parsed.offset) == (namespace, 2**31 - 1, 2**63 - 1)
    if parsed.cut:
        assert topic.startswith(parsed.topic) and len(parsed.topic) >= 40 and biggest.startswith("kafka~")
    else:
        assert parsed.topic == topic and biggest.startswith("kafka:")


def test_the_format_is_pinned() -> None:
    # Pinned: a change of scheme would make Stripe count replayed events twice.
    assert derived_identifier("usage", TOPIC_ID, 1, 10) == f"kafka:usage:{TOPIC_ID}:1:10"
    assert identifier_prefix("usage", TOPIC_ID) == f"kafka:usage:{TOPIC_ID}:"
    long = "a" * 200
    assert derived_identifier(long, TOPIC_ID, 0, 0) == f"kafka~{'a' * 40}:{TOPIC_ID}:0:0"


def test_a_re_created_topic_or_another_cluster_never_repeats_an_identifier() -> None:
    coordinates = list(itertools.product(("usage", "usage2", "a" * 200 + "-eu"), (0, 1, 11), (0, 1, 10)))
    first = {derived_identifier(t, TOPIC_ID, p, o) for t, p, o in coordinates}
    second = {derived_identifier(t, OTHER_ID, p, o) for t, p, o in coordinates}
    assert len(first) == len(second) == len(coordinates)
    assert not first & second


@pytest.mark.parametrize(
    "text",
    ["req_1", "kafka:usage:3:42", "kafka:usage:NS:x:1", "kafka:usage::1:2", "kafka~:NS:1:2", "kafkaX:b:1:2"],
)
def test_anything_else_is_not_a_derived_identifier(text: str) -> None:
    assert parse_identifier(text) is None
