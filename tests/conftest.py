"""Shared pytest fixtures: a Kafka broker for the session, per-test topics and groups, a durable broker."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from connector.devtools.broker import EmbeddedBroker, create_topics
from tests.support.kafka import KafkaTarget, kafka_target, unique_name
from tests.support.kafka import consumer_config as build_consumer_config


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaTarget]:
    """The session's broker: KAFKA_BOOTSTRAP_SERVERS, else Kafka in Docker, else embedded Tansu."""
    # Tests may read the environment; connector code never does (configuration is read at the edge).
    with kafka_target(os.environ) as target:
        yield target


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka: KafkaTarget) -> str:
    """``bootstrap.servers`` of the session's broker."""
    return kafka.bootstrap_servers


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name unique to this test; the topic is not created (see ``make_topic``)."""
    return unique_name("t", request.node.name)


@pytest.fixture
def group_id(request: pytest.FixtureRequest) -> str:
    """A consumer group id unique to this test."""
    return unique_name("g", request.node.name)


@pytest.fixture
def make_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """``make_topic(partitions=1, name=None) -> name``: create a topic and wait until the metadata shows it.

    Topics are deleted after the test (best effort) so a shared external cluster does not fill up.
    """
    created: list[str] = []

    def make(partitions: int = 1, name: str | None = None) -> str:
        topic = name or unique_name("t", request.node.name)
        create_topics(kafka_bootstrap, [topic], partitions=partitions)
        created.append(topic)
        return topic

    yield make
    if created:
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        for future in admin.delete_topics(created, operation_timeout=5).values():
            with contextlib.suppress(Exception):
                future.result(timeout=10)


@pytest.fixture
def consumer_config(group_id: str, request: pytest.FixtureRequest) -> Callable[..., dict[str, Any]]:
    """``consumer_config(group=None, **overrides)``: consumer settings for tests.

    Manual commits, ``auto.offset.reset=earliest`` and ``session.timeout.ms=6000`` (see kafka_fixtures);
    ``group`` defaults to this test's ``group_id``. Pass ``**{"bootstrap.servers": ...}`` to use another
    broker (e.g. ``durable_broker``); only otherwise is the session's broker started.
    """

    def build(group: str | None = None, **overrides: Any) -> dict[str, Any]:
        bootstrap = overrides.pop("bootstrap.servers", None) or request.getfixturevalue("kafka_bootstrap")
        return build_consumer_config(bootstrap, group or group_id, **overrides)

    return build


@pytest.fixture
def durable_broker() -> Iterator[EmbeddedBroker]:
    """A fresh embedded Tansu broker on S3 (loopback moto), for tests that restart the broker."""
    with EmbeddedBroker(durable=True) as broker:
        yield broker
