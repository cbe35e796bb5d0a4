"""Against a real broker: group consumption and commits, resuming, durable restarts, the ``broker`` CLI."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from connector.devtools.broker import EmbeddedBroker, EmbeddedBrokerError, die_with_parent

POLL_DEADLINE_SECONDS = 30.0
ConsumerConfig = Callable[..., dict[str, Any]]


def produce(bootstrap_servers: str, topic: str, values: Iterable[bytes]) -> dict[int, int]:
    """Produce and return each partition's end offset (last delivered offset + 1).

    The end offsets come from the delivery reports because Tansu's high watermark is wrong (it answers the
    base offset of the last batch + 1), so watermarks cannot tell when a partition is fully read.
    """
    end_offsets: dict[int, int] = {}
    errors: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            errors.append(error)
            return
        partition, offset = message.partition(), message.offset()
        assert partition is not None and offset is not None
        end_offsets[partition] = max(end_offsets.get(partition, 0), offset + 1)

    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 5})
    for index, value in enumerate(values):
        producer.produce(topic, value=value, key=str(index).encode(), on_delivery=on_delivery)
    assert producer.flush(15) == 0, "records still undelivered after 15 s"
    assert not errors, errors
    return end_offsets


@contextmanager
def open_consumer(config: dict[str, Any]) -> Iterator[Consumer]:
    consumer = Consumer(config)
    try:
        yield consumer
    finally:
        consumer.close()


class Received(NamedTuple):
    partition: int
    offset: int
    value: bytes


def consume(consumer: Consumer, count: int) -> list[Received]:
    """Poll until ``count`` records arrived; fail with how many did otherwise."""
    received: list[Received] = []
    deadline = time.monotonic() + POLL_DEADLINE_SECONDS
    while len(received) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            continue
        assert message.error() is None, message.error()
        partition, offset, value = message.partition(), message.offset(), message.value()
        assert partition is not None and offset is not None and isinstance(value, bytes)
        received.append(Received(partition, offset, value))
    assert len(received) == count, f"got {len(received)} of {count} records in {POLL_DEADLINE_SECONDS:.0f} s"
    return received


def committed(consumer: Consumer, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    return {
        tp.partition: tp.offset
        for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    }


def test_group_reads_everything_produced_and_commits_it(
    kafka_bootstrap: str, make_topic: Callable[..., str], consumer_config: ConsumerConfig
) -> None:
    topic = make_topic(partitions=3)
    values = [f"record-{i}".encode() for i in range(30)]
    end_offsets = produce(kafka_bootstrap, topic, values)

    with open_consumer(consumer_config()) as consumer:
        consumer.subscribe([topic])
        messages = consume(consumer, len(values))
        assert sorted(m.value for m in messages) == sorted(values)
        reached = {p: max(m.offset for m in messages if m.partition == p) + 1 for p in end_offsets}
        assert reached == end_offsets

        # The offset committed is the next one to read, as the connector commits it.
        consumer.commit(
            offsets=[TopicPartition(topic, p, offset) for p, offset in end_offsets.items()],
            asynchronous=False,
        )
        assert committed(consumer, topic, end_offsets) == end_offsets


def test_second_member_resumes_after_the_committed_offset(
    kafka_bootstrap: str, make_topic: Callable[..., str], consumer_config: ConsumerConfig
) -> None:
    topic = make_topic(partitions=1)
    produce(kafka_bootstrap, topic, [f"first-{i}".encode() for i in range(10)])

    with open_consumer(consumer_config()) as first:
        first.subscribe([topic])
        read = consume(first, 4)
        assert [m.offset for m in read] == [0, 1, 2, 3]
        # Commit only what was handled, though more was fetched: the rest must be read again.
        first.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)

    produce(kafka_bootstrap, topic, [f"second-{i}".encode() for i in range(2)])
    with open_consumer(consumer_config()) as second:
        second.subscribe([topic])
        rest = consume(second, 8)
        assert [m.offset for m in rest] == list(range(4, 12))
        assert [m.value for m in rest][-2:] == [b"second-0", b"second-1"]
        assert second.poll(1.0) is None


def test_durable_broker_restart_keeps_records_and_committed_offsets(
    durable_broker: EmbeddedBroker, consumer_config: ConsumerConfig, topic_name: str
) -> None:
    bootstrap = durable_broker.bootstrap_servers
    durable_broker.create_topics([topic_name], partitions=2)
    values = [f"kept-{i}".encode() for i in range(20)]
    end_offsets = produce(bootstrap, topic_name, values)
    halfway = {p: end // 2 for p, end in end_offsets.items()}

    config = consumer_config(**{"bootstrap.servers": bootstrap})
    with open_consumer(config) as consumer:
        consumer.subscribe([topic_name])
        consume(consumer, len(values))
        consumer.commit(
            offsets=[TopicPartition(topic_name, p, o) for p, o in halfway.items()], asynchronous=False
        )

    durable_broker.restart()  # SIGKILL, like a crash, then the same port and bucket

    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    assert len(metadata.topics[topic_name].partitions) == 2
    with open_consumer(config) as consumer:
        assert committed(consumer, topic_name, end_offsets) == halfway
        # assign() reads from the log start without a group join: every record is still there.
        consumer.assign([TopicPartition(topic_name, p, 0) for p in end_offsets])
        assert sorted(m.value for m in consume(consumer, len(values))) == sorted(values)

    with open_consumer(config) as resumed:
        resumed.subscribe([topic_name])
        rest = consume(resumed, sum(end - halfway[p] for p, end in end_offsets.items()))
        assert all(m.offset >= halfway[m.partition] for m in rest)


def test_a_taken_port_is_reported_not_shared() -> None:
    # Tansu would die of EADDRINUSE while the first broker answered the second one's readiness probe.
    with EmbeddedBroker() as first, pytest.raises(EmbeddedBrokerError, match="in use"):
        EmbeddedBroker(port=first.port).start()


# --- the ``kafka-stripe broker`` command --------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc (Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name in parentheses may contain spaces; fields after it are fixed.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


@contextmanager
def broker_command(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run ``kafka-stripe broker ARGS``; yield the process and the address it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "connector", "broker", "--port", "0", *args],
        # Its log directory lands under tmp_path, so a killed command leaves nothing in /tmp.
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Should pytest itself be killed, the command (and through it Tansu and moto) goes too.
        preexec_fn=die_with_parent(),
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        line = process.stdout.readline() if ready else ""
        if not line.startswith("broker listening on "):
            process.kill()
            _, stderr = process.communicate()
            pytest.fail(f"`kafka-stripe broker` printed no address (got {line!r}); stderr:\n{stderr}")
        yield process, line.removeprefix("broker listening on ").strip()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_broker_command_serves_topics_and_stops_on_sigint(tmp_path: Path) -> None:
    with broker_command(tmp_path, "--topic", "usage:3", "--topic", "dlq") as (process, address):
        metadata = AdminClient({"bootstrap.servers": address}).list_topics(timeout=10)
        assert len(metadata.topics["usage"].partitions) == 3
        assert len(metadata.topics["dlq"].partitions) == 1
        tansu = children_of(process.pid)
        assert tansu

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
        assert not any(alive(pid) for pid in tansu)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_broker_children_die_when_the_command_is_killed(tmp_path: Path) -> None:
    with broker_command(tmp_path, "--durable") as (process, _):
        children = children_of(process.pid)
        assert len(children) == 2  # moto and Tansu

        # SIGKILL runs no handler, finalizer or atexit: only PR_SET_PDEATHSIG can clean up.
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
        assert wait_until(lambda: not any(alive(pid) for pid in children), timeout=10)
