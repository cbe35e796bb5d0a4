"""Checks against Stripe's live state before sending, end to end: a real broker, the emulator over HTTP,
``kafka-stripe run`` as a child process.

Customers Stripe does not know never reach it (they wait, then go to the dead-letter topic); a customer
created during the wait is delivered; a topic whose meter is inactive is paused, named by /readyz, and
delivered exactly once its meter is active again.
"""

from __future__ import annotations

import random
import re
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.kafka.deadletter import HEADER_CODE, HEADER_OFFSET, HEADER_PARTITION
from tests.support.faults import read_topic
from tests.support.harness import (
    ConnectorProcess,
    committed,
    connector_env,
    create_meter,
    emulator_stats,
    encode,
    meter_total,
    produce,
    stripe,
    usage,
    wait_until,
)

pytestmark = pytest.mark.slow

Ends = dict[tuple[str, int], int]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """Every sample of the connector's /metrics, by name with labels."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def metric(port: int, name: str) -> float:
    try:
        return scrape(port).get(name, 0.0)
    except httpx.HTTPError:
        return 0.0


def create_customers(url: str, count: int) -> list[str]:
    with stripe(url) as client:
        return [str(client.post("/v1/customers", data={"name": f"c{n}"}).json()["id"]) for n in range(count)]


def test_unknown_customers_wait_then_go_to_the_dead_letter_topic_and_a_late_one_is_delivered(
    kafka_bootstrap: str,
    emulator: Callable[..., str],
    make_topic: Callable[..., str],
    group_id: str,
    tmp_path: Path,
) -> None:
    url = emulator(require_known_customers=True)
    meter = create_meter(url)
    known = create_customers(url, 20)
    ghosts = [f"cus_ghost{n:03d}" for n in range(30)]  # never created: 2% of the records
    late = "cus_latecomer1"  # created while its records wait
    topic = make_topic(partitions=3)
    make_topic(partitions=1, name=f"{topic}.dlq")
    rng = random.Random(5)
    now_ms = int(time.time() * 1000)
    pairs: list[tuple[bytes | None, bytes]] = []
    expected: Counter[str] = Counter()
    for n in range(1500):
        customer = ghosts[n // 50] if n % 50 == 25 else late if n % 100 == 7 else rng.choice(known)
        value = rng.randint(1, 100)
        pairs.append((customer.encode(), encode(usage(customer, value, ts_ms=now_ms - n))))
        if customer not in ghosts:
            expected[customer] += value
    ends = produce(kafka_bootstrap, topic, pairs, 3)
    port = free_port()
    env = connector_env(
        kafka_bootstrap,
        url,
        [topic],
        group_id,
        CONNECTOR_METRICS_PORT=str(port),
        CONNECTOR_VERIFY_CUSTOMERS="true",
        CONNECTOR_UNKNOWN_CUSTOMER_WAIT_S="8",
        CONNECTOR_CUSTOMER_LOOKUPS_RPS="100",
    )
    with ConnectorProcess(env, tmp_path) as connector:
        # Every unknown customer looked up and not found, the late one among them: create it now.
        wait_until(
            lambda: (
                metric(port, 'kafka_stripe_customer_lookups_total{result="not_found"}') >= len(ghosts) + 1
            ),
            timeout=60,
            message="the unknown customers' first lookups",
        )
        assert metric(port, "kafka_stripe_customers_waiting_records") > 0
        httpx.post(f"{url}/_emulator/customers", json={"id": late}, timeout=10).raise_for_status()
        wait_until(lambda: committed(kafka_bootstrap, group_id, ends) == ends, timeout=90, message="commits")
        assert connector.stop() == 0, connector.log()
        log = connector.log()
    assert "Traceback" not in log
    for customer, total in expected.items():
        assert meter_total(url, meter, customer, now_ms // 1000 - 60, now_ms // 1000 + 60) == total, customer
    stats = emulator_stats(url)
    # No event of an unknown customer reached Stripe: nothing invalid, nothing beyond the known ones.
    assert stats["events_invalid"] == 0, stats
    assert stats["events_accepted"] == sum(
        1 for key, _ in pairs if key is not None and key.decode() not in ghosts
    )
    letters = read_topic(kafka_bootstrap, f"{topic}.dlq", 1, expected=len(ghosts), timeout=30)
    assert Counter(letter.header(HEADER_CODE) for letter in letters) == {"customer_not_found": len(ghosts)}
    coordinates = Counter(
        (letter.header(HEADER_PARTITION), letter.header(HEADER_OFFSET)) for letter in letters
    )
    assert len(coordinates) == len(ghosts) and set(coordinates.values()) == {1}
    assert sorted(letter.key.decode() for letter in letters if letter.key) == sorted(ghosts)


def readiness(port: int) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    return response.status_code, response.json()


def test_a_topic_whose_meter_is_inactive_is_paused_named_and_delivered_once_it_is_back(
    kafka_bootstrap: str,
    emulator: Callable[..., str],
    make_topic: Callable[..., str],
    group_id: str,
    tmp_path: Path,
) -> None:
    url = emulator()
    live_meter = create_meter(url, "api_requests")
    dormant = create_meter(url, "tokens")
    with stripe(url) as client:
        client.post(f"/v1/billing/meters/{dormant}/deactivate").raise_for_status()
    live_topic, paused_topic = make_topic(partitions=2), make_topic(partitions=2)
    make_topic(partitions=1, name=f"{paused_topic}.dlq")
    now_ms = int(time.time() * 1000)
    totals: dict[str, Counter[str]] = {live_topic: Counter(), paused_topic: Counter()}
    ends: Ends = {}
    for topic in (live_topic, paused_topic):
        pairs = []
        for n in range(600):
            customer = f"cus_meter{n % 7}"
            pairs.append((customer.encode(), encode(usage(customer, n % 13 + 1, ts_ms=now_ms - n))))
            totals[topic][customer] += n % 13 + 1
        ends.update(produce(kafka_bootstrap, topic, pairs, 2))
    port = free_port()
    env = connector_env(
        kafka_bootstrap,
        url,
        [live_topic, paused_topic],
        group_id,
        CONNECTOR_METRICS_PORT=str(port),
        CONNECTOR_METER_REFRESH_S="1",
        **{f"TOPIC_{paused_topic.upper().replace('-', '_').replace('.', '_')}_EVENT_NAME": "tokens"},
    )
    live_ends = {k: v for k, v in ends.items() if k[0] == live_topic}
    with ConnectorProcess(env, tmp_path) as connector:
        wait_until(
            lambda: committed(kafka_bootstrap, group_id, live_ends) == live_ends, 60, message="live topic"
        )
        status, body = readiness(port)
        assert status == 503 and any(paused_topic in r and "tokens" in r for r in body["reasons"]), body
        assert metric(port, f'kafka_stripe_meter_active{{event_name="tokens",topic="{paused_topic}"}}') == 0
        held = {k: v for k, v in committed(kafka_bootstrap, group_id, ends).items() if k[0] == paused_topic}
        assert all(offset < 0 for offset in held.values()), held  # nothing committed for the paused topic
        assert emulator_stats(url)["events_received"] == 1200 - 1200 // 2  # only the live topic's
        with stripe(url) as client:
            client.post(f"/v1/billing/meters/{dormant}/reactivate").raise_for_status()
        wait_until(lambda: committed(kafka_bootstrap, group_id, ends) == ends, 60, message="paused topic")
        wait_until(lambda: readiness(port)[0] == 200, 30, message="ready again")
        assert connector.stop() == 0, connector.log()
        log = connector.log()
    assert re.search(rf"topic {re.escape(paused_topic)}: .*tokens.* inactive", log), log[-3000:]
    for topic, meter in ((live_topic, live_meter), (paused_topic, dormant)):
        for customer, total in totals[topic].items():
            assert meter_total(url, meter, customer, now_ms // 1000 - 60, now_ms // 1000 + 60) == total
    stats = emulator_stats(url)
    assert stats["events_accepted"] == 1200 and stats["events_invalid"] == 0, stats
    assert read_topic(kafka_bootstrap, f"{paused_topic}.dlq", 1, expected=0, timeout=3) == []


def test_with_on_missing_meter_dlq_records_of_a_meterless_topic_are_dead_lettered_not_sent(
    kafka_bootstrap: str,
    emulator: Callable[..., str],
    make_topic: Callable[..., str],
    group_id: str,
    tmp_path: Path,
) -> None:
    url = emulator()
    topic = make_topic(partitions=1)
    make_topic(partitions=1, name=f"{topic}.dlq")
    pairs = [(b"cus_x1", encode(usage("cus_x1", 1))) for _ in range(40)]
    ends = produce(kafka_bootstrap, topic, pairs, 1)
    env = connector_env(kafka_bootstrap, url, [topic], group_id, CONNECTOR_ON_MISSING_METER="dlq")
    with ConnectorProcess(env, tmp_path) as connector:
        wait_until(lambda: committed(kafka_bootstrap, group_id, ends) == ends, 60, message="commits")
        assert connector.stop() == 0, connector.log()
    letters = read_topic(kafka_bootstrap, f"{topic}.dlq", 1, expected=40, timeout=30)
    assert Counter(letter.header(HEADER_CODE) for letter in letters) == {"no_active_meter": 40}
    assert emulator_stats(url)["events_received"] == 0


def test_sigkills_while_customers_wait_and_a_topic_is_paused_keep_stripe_exact(
    kafka_bootstrap: str,
    emulator: Callable[..., str],
    make_topic: Callable[..., str],
    group_id: str,
    tmp_path: Path,
) -> None:
    url = emulator(require_known_customers=True)
    meters = {"api_requests": create_meter(url, "api_requests"), "tokens": create_meter(url, "tokens")}
    with stripe(url) as client:
        client.post(f"/v1/billing/meters/{meters['tokens']}/deactivate").raise_for_status()
    known = create_customers(url, 12)
    ghosts = [f"cus_phantom{n:03d}" for n in range(12)]
    topics = {"api_requests": make_topic(partitions=3), "tokens": make_topic(partitions=2)}
    for topic in topics.values():
        make_topic(partitions=1, name=f"{topic}.dlq")
    rng = random.Random(9)
    now_ms = int(time.time() * 1000)
    expected: dict[str, Counter[str]] = {name: Counter() for name in topics}
    ghost_records: set[tuple[str, int]] = set()
    ends: Ends = {}
    for name, topic in topics.items():
        pairs = []
        for n in range(2000):
            customer = rng.choice(ghosts) if n % 40 == 3 else rng.choice(known)
            value = rng.randint(1, 50)
            pairs.append((f"{customer}:{n}".encode(), encode(usage(customer, value, ts_ms=now_ms - n))))
            if customer in ghosts:
                ghost_records.add((topic, n))
            else:
                expected[name][customer] += value
        ends.update(produce(kafka_bootstrap, topic, pairs, 3 if name == "api_requests" else 2))
    env = connector_env(
        kafka_bootstrap,
        url,
        list(topics.values()),
        group_id,
        CONNECTOR_VERIFY_CUSTOMERS="true",
        CONNECTOR_UNKNOWN_CUSTOMER_WAIT_S="3",
        CONNECTOR_CUSTOMER_LOOKUPS_RPS="200",
        CONNECTOR_METER_REFRESH_S="1",
        CONNECTOR_MAX_IN_FLIGHT="4",
        **{f"TOPIC_{topics['tokens'].upper().replace('-', '_').replace('.', '_')}_EVENT_NAME": "tokens"},
    )
    kills = 0
    for round_ in range(5):
        with ConnectorProcess(env, tmp_path) as connector:
            time.sleep(rng.uniform(1.5, 4.0))
            if round_ == 2:
                with stripe(url) as client:
                    client.post(f"/v1/billing/meters/{meters['tokens']}/reactivate").raise_for_status()
            connector.kill()  # SIGKILL
            kills += 1
    with ConnectorProcess(env, tmp_path) as connector:
        wait_until(lambda: committed(kafka_bootstrap, group_id, ends) == ends, 120, message="final commits")
        assert connector.stop() == 0, connector.log()
    assert kills == 5
    for name, customers in expected.items():
        for customer, total in customers.items():
            got = meter_total(url, meters[name], customer, now_ms // 1000 - 60, now_ms // 1000 + 60)
            assert got == total, (name, customer, got, total)
    stats = emulator_stats(url)
    assert stats["events_invalid"] == 0, stats  # no unknown customer's event, nothing for an inactive meter
    # Dead letters: every ghost record, at least once (a kill between the write and the commit repeats
    # one), and nothing else.
    seen: set[tuple[str, int]] = set()
    for topic in topics.values():
        letters = read_topic(kafka_bootstrap, f"{topic}.dlq", 1, expected=1, timeout=10)
        assert {letter.header(HEADER_CODE) for letter in letters} <= {"customer_not_found"}
        for letter in letters:
            assert letter.key is not None
            seen.add((topic, int(letter.key.decode().rsplit(":", 1)[1])))
    assert seen == ghost_records
