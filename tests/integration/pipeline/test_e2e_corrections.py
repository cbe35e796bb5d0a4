"""Corrections end to end: a real broker, the emulator over HTTP, ``kafka-stripe run`` as a child process
SIGKILLed at random moments while it corrects.

Within Stripe's 24 hours originals are cancelled and replaced; after the emulator's clock moved 25 hours
they are compensated; corrections of events Stripe never had, or that cannot be compensated, go to the
dead-letter topic. Stripe's totals must equal the corrected truth exactly.
"""

from __future__ import annotations

import io
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import httpx
import pytest

from connector.config.settings import DEFAULT_CORRECTION_SCHEMA
from connector.config.topics import topic_env_key
from connector.kafka.deadletter import HEADER_CODE
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
    usage,
    wait_until,
)

pytestmark = pytest.mark.slow

CORRECTION_SCHEMA = fastavro.parse_schema(json.loads(DEFAULT_CORRECTION_SCHEMA.read_text()))
CUSTOMERS = [f"cus_fix{n:02d}" for n in range(8)]


def correction_bytes(**fields: Any) -> bytes:
    record: dict[str, Any] = {
        "original_identifier": None,
        "original_topic": None,
        "original_partition": None,
        "original_offset": None,
        "event_name": "api_requests",
        "original_value": None,
        "replacement_value": None,
        "reason": "test",
        "attributes": None,
    }
    record.update(fields)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, CORRECTION_SCHEMA, record)
    return buffer.getvalue()


class Usage:
    """The usage records produced: where each lives, its customer, value and time."""

    def __init__(self, rng: random.Random, topic: str, count: int, partitions: int) -> None:
        self.now_ms = int(time.time() * 1000)
        self.records: list[tuple[str, int, int, str, int, str | None]] = []  # topic, p, o, cus, value, id
        pairs = []
        for n in range(count):
            customer, value = rng.choice(CUSTOMERS), rng.randint(1, 100)
            own = f"order-{n}" if n % 5 == 0 else None  # every fifth carries its own identifier
            pairs.append((customer.encode(), encode(usage(customer, value, self.now_ms - n, own))))
            # produce() spreads round-robin: record n lands in partition n % partitions at n // partitions.
            self.records.append((topic, n % partitions, n // partitions, customer, value, own))
        self.pairs = pairs
        self.truth: Counter[str] = Counter()
        for record in self.records:
            self.truth[record[3]] += record[4]
        self.ts = {(r[0], r[1], r[2]): self.now_ms - i for i, r in enumerate(self.records)}


def corrections_for(
    used: Usage, chosen: list[int], rng: random.Random, *, value_known: bool = True
) -> list[tuple[bytes, bytes]]:
    """One correction per chosen usage record (by its own identifier when it has one, else by its
    coordinates); the truth moves from the original value to the replacement (or to nothing)."""
    pairs = []
    for index in chosen:
        topic, partition, offset, customer, value, own = used.records[index]
        replacement = None if index % 3 == 0 else rng.randint(0, 100)
        where: dict[str, Any] = (
            {"original_identifier": own}
            if own
            else {"original_topic": topic, "original_partition": partition, "original_offset": offset}
        )
        pairs.append(
            (
                f"fix-{index}".encode(),
                correction_bytes(
                    stripe_customer_id=customer,
                    original_value=value if value_known else None,
                    replacement_value=None if replacement is None else str(replacement),
                    timestamp=used.ts[(topic, partition, offset)],
                    **where,
                ),
            )
        )
        if value_known:
            used.truth[customer] += (replacement or 0) - value
    return pairs


def run_with_kills(
    env: dict[str, str], tmp_path: Path, rng: random.Random, kills: int, done: Callable[[], bool]
) -> None:
    """Start the connector, SIGKILL it ``kills`` times at random moments, then run it until ``done``."""
    for _ in range(kills):
        with ConnectorProcess(env, tmp_path) as connector:
            time.sleep(rng.uniform(1.0, 3.5))
            connector.kill()
    with ConnectorProcess(env, tmp_path) as connector:
        wait_until(done, 120, message="commits to the end")
        assert connector.stop() == 0, connector.log()


def test_corrections_cancel_replace_and_compensate_exactly_across_sigkills(
    kafka_bootstrap: str,
    emulator: Callable[..., str],
    make_topic: Callable[..., str],
    group_id: str,
    tmp_path: Path,
) -> None:
    url = emulator()
    meter = create_meter(url)
    rng = random.Random(16)
    usage_topic, fixes = make_topic(partitions=2), make_topic(partitions=2)
    make_topic(partitions=1, name=f"{usage_topic}.dlq")
    make_topic(partitions=1, name=f"{fixes}.dlq")
    used = Usage(rng, usage_topic, 1200, 2)
    ends = produce(kafka_bootstrap, usage_topic, used.pairs, 2)
    key = topic_env_key(fixes)
    env = connector_env(
        kafka_bootstrap,
        url,
        [usage_topic, fixes],
        group_id,
        KAFKA_GROUP_INSTANCE_ID=f"{group_id}-member",  # a restart rejoins at once (static membership)
        **{f"TOPIC_{key}_KIND": "corrections"},
    )
    env.pop(f"TOPIC_{key}_EVENT_NAME")
    run_with_kills(env, tmp_path, rng, 0, lambda: committed(kafka_bootstrap, group_id, ends) == ends)

    # Within the window: 90 corrections (cancel-only and replacements), 6 of events Stripe never had.
    order = rng.sample(range(len(used.records)), 150)
    within = corrections_for(used, order[:90], rng)
    ghosts = [
        (
            f"ghost-{n}".encode(),
            correction_bytes(
                original_identifier=f"never-sent-{n}",
                stripe_customer_id=CUSTOMERS[0],
                original_value=5,
                replacement_value="1",
                timestamp=used.now_ms,
            ),
        )
        for n in range(6)
    ]
    ends |= produce(kafka_bootstrap, fixes, within + ghosts, 2)
    run_with_kills(env, tmp_path, rng, 2, lambda: committed(kafka_bootstrap, group_id, ends) == ends)
    canceled = emulator_stats(url)["events_canceled"]
    assert canceled == 90, canceled  # each original once, whatever the kills replayed

    # 25 hours later: Stripe cannot cancel any more; sums are compensated, unknown originals refused.
    httpx.post(f"{url}/_emulator/clock", json={"advance_s": 25 * 3600}, timeout=30).raise_for_status()
    after = corrections_for(used, order[90:140], rng)
    unknowable = corrections_for(used, order[140:], rng, value_known=False)
    before = {p: o for p, o in ends.items() if p[0] == fixes}
    ends |= produce(kafka_bootstrap, fixes, after + unknowable, 2)
    run_with_kills(env, tmp_path, rng, 2, lambda: committed(kafka_bootstrap, group_id, ends) == ends)
    assert emulator_stats(url)["events_canceled"] == canceled
    # The second batch of corrections lies after the first in every corrections partition.
    assert before and all(ends[p] > offset for p, offset in before.items())

    start, end = used.now_ms // 1000 - 3600, used.now_ms // 1000 + 60
    for customer in CUSTOMERS:
        assert meter_total(url, meter, customer, start, end) == used.truth[customer], customer
    letters = read_topic(kafka_bootstrap, f"{fixes}.dlq", 1, expected=1, timeout=10)
    codes = {(letter.key or b"").decode(): letter.header(HEADER_CODE) for letter in letters}
    expected = {f"ghost-{n}": "cancel_refused" for n in range(6)}
    expected |= {f"fix-{index}": "adjustment_window_passed" for index in order[140:]}
    assert codes == expected
    assert not read_topic(kafka_bootstrap, f"{usage_topic}.dlq", 1, expected=0, timeout=2)
