"""Identity and replay safety end to end: a re-created topic keeps its usage, and a second read of records
Stripe has forgotten (a new group, an offset reset, a rewound ledger) bills nothing twice — or exactly the
rewound range. Real broker, the emulator over HTTP (its clock moved past Stripe's 24-hour window), the
connector as a child process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from connector.devtools.broker import create_topics
from connector.devtools.emulator import EmulatorProcess
from tests.support.harness import (
    ConnectorProcess,
    committed,
    connector_env,
    create_meter,
    emulator_stats,
    encode,
    meter_total,
    produce,
    usage,
    wait_until,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
DAY_PLUS_S = 25 * 3600  # past Stripe's 24-hour identifier window
CUSTOMERS = ("cus_idA", "cus_idB", "cus_idC")

Ends = dict[tuple[str, int], int]


@pytest.fixture
def stripe_url() -> Iterator[str]:
    with EmulatorProcess(seed=14) as emulator:
        yield emulator.url


def records(count: int, value: int) -> tuple[list[tuple[bytes | None, bytes]], Counter[str]]:
    """``count`` records without identifiers of their own (derived ones), and the total per customer."""
    now_ms = int(time.time() * 1000)
    expected: Counter[str] = Counter()
    pairs: list[tuple[bytes | None, bytes]] = []
    for n in range(count):
        customer = CUSTOMERS[n % len(CUSTOMERS)]
        pairs.append((None, encode(usage(customer, value, now_ms - n))))
        expected[customer] += value
    return pairs, expected


def deliver(env: dict[str, str], ends: Ends, tmp_path: Path, group: str) -> str:
    """Run the connector until ``group`` committed ``ends``, stop it gracefully; returns its log."""
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    with ConnectorProcess(env, tmp_path) as connector:
        wait_until(
            lambda: committed(bootstrap, group, ends) == ends or connector.proc.poll() is not None,
            timeout=120,
            interval=0.5,
            message=f"group {group} to commit {ends}",
        )
        assert connector.proc.poll() is None, connector.log()
        assert connector.stop(60) == 0, connector.log()
        return connector.log()


def totals(url: str, meter: str, start_s: int) -> dict[str, float]:
    # A wide range: the emulator's clock may have been moved a day ahead of the records' timestamps.
    end_s = int(time.time()) + DAY_PLUS_S + 3600
    return {c: meter_total(url, meter, c, start_s - 3600, end_s) for c in CUSTOMERS}


def setup(make_topic: Callable[..., str], url: str, *, partitions: int) -> tuple[str, str, int]:
    """A topic with its dead-letter topic, a meter, and the time the test started: (topic, meter, start)."""
    topic = make_topic(partitions=partitions)
    make_topic(partitions=1, name=f"{topic}.dlq")
    return topic, create_meter(url), int(time.time())


def advance_clock(url: str, seconds: int) -> None:
    httpx.post(f"{url}/_emulator/clock", json={"advance_s": seconds}, timeout=30).raise_for_status()


def env_for(bootstrap: str, url: str, topic: str, group: str) -> dict[str, str]:
    return connector_env(bootstrap, url, [topic], group, KAFKA_AUTO_OFFSET_RESET="earliest")


def test_a_re_created_topic_bills_both_generations(
    kafka_bootstrap: str, make_topic: Callable[..., str], group_id: str, stripe_url: str, tmp_path: Path
) -> None:
    topic, meter, start_s = setup(make_topic, stripe_url, partitions=2)
    first, expected = records(300, 2)
    ends = produce(kafka_bootstrap, topic, first, partitions=2)
    deliver(env_for(kafka_bootstrap, stripe_url, topic, group_id), ends, tmp_path, group_id)

    # Delete and re-create: offsets start again at 0, the derived identifiers must not.
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.delete_topics([topic], operation_timeout=10).values():
        future.result(timeout=30)
    wait_until(lambda: topic not in admin.list_topics(timeout=10).topics, timeout=30, message="deletion")
    create_topics(kafka_bootstrap, [topic], partitions=2)
    second, more = records(300, 5)
    ends = produce(kafka_bootstrap, topic, second, partitions=2)
    group = f"{group_id}-after"  # the old group's offsets belong to the deleted topic
    deliver(env_for(kafka_bootstrap, stripe_url, topic, group), ends, tmp_path, group)

    expected.update(more)
    assert totals(stripe_url, meter, start_s) == {c: float(v) for c, v in expected.items()}
    stats = emulator_stats(stripe_url)
    assert stats["events_valid"] == 600 and stats["duplicates_ignored"] == 0, stats


def test_a_new_group_after_a_day_sends_nothing_again(
    kafka_bootstrap: str, make_topic: Callable[..., str], group_id: str, stripe_url: str, tmp_path: Path
) -> None:
    topic, meter, start_s = setup(make_topic, stripe_url, partitions=2)
    pairs, expected = records(400, 3)
    ends = produce(kafka_bootstrap, topic, pairs, partitions=2)
    deliver(env_for(kafka_bootstrap, stripe_url, topic, group_id), ends, tmp_path, group_id)
    received = emulator_stats(stripe_url)["events_received"]

    advance_clock(stripe_url, DAY_PLUS_S)  # Stripe has forgotten every identifier
    other = f"{group_id}-b"
    log = deliver(env_for(kafka_bootstrap, stripe_url, topic, other), ends, tmp_path, other)

    assert emulator_stats(stripe_url)["events_received"] == received, "a record was sent again"
    assert totals(stripe_url, meter, start_s) == {c: float(v) for c, v in expected.items()}
    assert committed(kafka_bootstrap, other, ends) == ends
    env = env_for(kafka_bootstrap, stripe_url, topic, other)
    show = [sys.executable, "-m", "connector", "ledger", "show", "--topic", topic, "--json"]
    shown = subprocess.run(show, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    marks = {(row["topic"], row["partition"]): row["mark"] for row in json.loads(shown.stdout)}
    assert marks == ends  # one mark per partition, shared by both groups (same account and event name)
    for partition in (0, 1):
        end = ends[(topic, partition)]
        assert f"{topic}[{partition}]: the delivery ledger says records below offset {end}" in log, log
        assert f"{topic}[{partition}]: skipped" in log, log
        assert f"below offset {end}, already delivered" in log, log


def test_an_offset_reset_after_a_day_sends_nothing_again(
    kafka_bootstrap: str, make_topic: Callable[..., str], group_id: str, stripe_url: str, tmp_path: Path
) -> None:
    topic, meter, start_s = setup(make_topic, stripe_url, partitions=1)
    pairs, expected = records(200, 4)
    ends = produce(kafka_bootstrap, topic, pairs, partitions=1)
    env = env_for(kafka_bootstrap, stripe_url, topic, group_id)
    deliver(env, ends, tmp_path, group_id)
    received = emulator_stats(stripe_url)["events_received"]

    # kafka-consumer-groups --reset-offsets --to-earliest, done as a client would: commit offset 0.
    config = {"bootstrap.servers": kafka_bootstrap, "group.id": group_id, "enable.auto.commit": False}
    reset = Consumer(config)
    reset.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    reset.close()
    assert committed(kafka_bootstrap, group_id, ends) == {(topic, 0): 0}
    advance_clock(stripe_url, DAY_PLUS_S)
    deliver(env, ends, tmp_path, group_id)

    assert emulator_stats(stripe_url)["events_received"] == received, "a record was sent again"
    assert totals(stripe_url, meter, start_s) == {c: float(v) for c, v in expected.items()}


def test_a_rewound_ledger_re_sends_exactly_the_rewound_range(
    kafka_bootstrap: str, make_topic: Callable[..., str], group_id: str, stripe_url: str, tmp_path: Path
) -> None:
    topic, meter, start_s = setup(make_topic, stripe_url, partitions=1)
    pairs, expected = records(100, 1)
    ends = produce(kafka_bootstrap, topic, pairs, partitions=1)
    env = env_for(kafka_bootstrap, stripe_url, topic, group_id)
    deliver(env, ends, tmp_path, group_id)
    advance_clock(stripe_url, DAY_PLUS_S)

    rewind = [sys.executable, "-m", "connector", "ledger", "rewind", "--topic", topic, "--partition", "0"]
    refused = subprocess.run([*rewind, "--to", "60"], env=env, cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and "--yes" in refused.stdout + refused.stderr, refused
    done = subprocess.run([*rewind, "--to", "60", "--yes"], env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

    other = f"{group_id}-again"
    deliver(env_for(kafka_bootstrap, stripe_url, topic, other), ends, tmp_path, other)
    # Offsets 60..99 were sent again and, Stripe having forgotten them, counted again; 0..59 were not.
    again: Counter[str] = Counter()
    for n in range(60, 100):
        again[CUSTOMERS[n % len(CUSTOMERS)]] += 1
    expected.update(again)
    assert totals(stripe_url, meter, start_s) == {c: float(v) for c, v in expected.items()}
