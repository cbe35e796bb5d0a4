"""Choosing the tests' Kafka broker (external, Docker, embedded Tansu) and helpers for the fixtures."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from connector.devtools.broker import TANSU_CONSUMER_SETTINGS, EmbeddedBroker

BrokerKind = Literal["external", "docker", "embedded"]


@dataclass(frozen=True)
class KafkaTarget:
    """Where the test session's broker is and what it is (tests loosen some assertions on Tansu)."""

    bootstrap_servers: str
    kind: BrokerKind

    @property
    def is_tansu(self) -> bool:
        # Only the embedded broker is known to be Tansu; an external cluster is assumed to be Kafka.
        return self.kind == "embedded"


def docker_daemon_answers(timeout: float = 2.0) -> bool:
    """True if a Docker daemon answers a ping within ``timeout``; never raises, never hangs."""
    answered = threading.Event()

    def ping() -> None:
        try:
            import docker

            client = docker.from_env(timeout=max(int(timeout), 1))
            try:
                if client.ping():
                    answered.set()
            finally:
                client.close()
        except Exception:
            pass  # no client library, no socket, refused, TLS trouble: all mean "no Docker"

    # A daemon thread with a join timeout: an unusual DOCKER_HOST (ssh://, a firewalled tcp://) can block
    # in places the client's own timeout does not cover.
    thread = threading.Thread(target=ping, name="docker-ping", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return answered.is_set()


@contextmanager
def kafka_target(env: Mapping[str, str]) -> Iterator[KafkaTarget]:
    """Yield a broker: KAFKA_BOOTSTRAP_SERVERS if set, else Kafka in Docker if a daemon answers, else Tansu.

    ``KAFKA_TEST_BROKER=external|docker|embedded`` skips the choice, e.g. ``embedded`` on a laptop whose
    Docker has no Kafka image cached and no network.
    """
    external = env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    forced = env.get("KAFKA_TEST_BROKER", "").strip().lower()
    if forced not in ("", "external", "docker", "embedded"):
        raise ValueError(f"KAFKA_TEST_BROKER must be external, docker or embedded, not {forced!r}")
    if forced == "external" and not external:
        raise ValueError("KAFKA_TEST_BROKER=external needs KAFKA_BOOTSTRAP_SERVERS")
    kind = forced or ("external" if external else "docker" if docker_daemon_answers() else "embedded")
    if kind == "external":
        yield KafkaTarget(external, "external")
    elif kind == "docker":
        with _kafka_container() as bootstrap_servers:
            yield KafkaTarget(bootstrap_servers, "docker")
    else:
        with EmbeddedBroker() as broker:
            yield KafkaTarget(broker.bootstrap_servers, "embedded")


@contextmanager
def _kafka_container() -> Iterator[str]:
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers before the "community" split
        from testcontainers.kafka import KafkaContainer

    # KRaft: no ZooKeeper container, so it starts faster. testcontainers' Ryuk sidecar removes the
    # container even if this process is killed. The timeout covers Kafka's startup, not the image pull.
    container = KafkaContainer().with_kraft()
    try:
        container.start(timeout=120)
        yield str(container.get_bootstrap_server())
    finally:
        container.stop()


def unique_name(prefix: str, hint: str = "") -> str:
    """A topic or group name unique to this call, readable in broker logs (letters, digits, dashes)."""
    readable = re.sub(r"[^A-Za-z0-9-]+", "-", hint).strip("-")[:60]
    return "-".join(part for part in (prefix, readable, uuid.uuid4().hex[:8]) if part)


def consumer_config(bootstrap_servers: str, group_id: str, **overrides: Any) -> dict[str, Any]:
    """librdkafka consumer settings for tests: manual commits, read from the start, short session.

    Overrides use librdkafka's dotted names, so pass them as a dict: ``**{"fetch.wait.max.ms": 10}``.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        # Tansu holds a group join for about half the session timeout: 3 s here, 23 s at the default.
        **TANSU_CONSUMER_SETTINGS,
    }
    config.update(overrides)
    return config
