"""Helpers for the end-to-end delivery tests: workloads with known totals, a fleet of connector processes,
waiting for commits, comparing Stripe's summaries with what was produced, readable failure messages."""

from __future__ import annotations

import random
import re
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, TopicPartition

from tests.support.harness import (
    ConnectorProcess,
    committed,
    emulator_stats,
    encode,
    meter_total,
    produce,
    usage,
)

Ends = dict[tuple[str, int], int]

GARBAGE = b"this is not an Avro usage record"
_ASSIGNED = re.compile(r"\bassigned (?!nothing)")
LOG_TAIL_LINES = 40


@dataclass
class Workload:
    """Records to produce, per topic, and what Stripe must show for them afterwards."""

    records: dict[str, list[tuple[bytes | None, bytes]]]
    partitions: dict[str, int]
    # event name -> customer -> exact total of the valid records
    expected: dict[str, dict[str, int]]
    valid: int
    garbage_keys: set[bytes]
    start_s: int
    end_s: int
    ends: Ends = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(pairs) for pairs in self.records.values())

    def produce(self, bootstrap: str) -> Ends:
        """Produce everything; the end offsets come from the delivery reports (never from watermarks)."""
        for topic, pairs in self.records.items():
            self.ends.update(produce(bootstrap, topic, pairs, self.partitions[topic]))
        # Every partition got records (round-robin), so every one must end up committed.
        expected_partitions = {(t, p) for t, n in self.partitions.items() for p in range(n)}
        assert set(self.ends) == expected_partitions, sorted(expected_partitions - set(self.ends))
        return self.ends


def make_workload(
    topics: Mapping[str, tuple[int, str]],
    records_per_topic: int,
    *,
    customers: int = 25,
    garbage_per_topic: int = 0,
    seed: int = 0,
) -> Workload:
    """``topics``: name -> (partitions, event name). Integer values keep the sums exact; timestamps lie
    in the last ten minutes, well inside Stripe's window."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    names = [f"cus_e2e{seed:04d}{n:04d}" for n in range(customers)]
    records: dict[str, list[tuple[bytes | None, bytes]]] = {}
    expected: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    garbage_keys: set[bytes] = set()
    low = high = now_ms
    valid = 0
    for topic, (_partitions, event_name) in topics.items():
        pairs: list[tuple[bytes | None, bytes]] = []
        garbage_at = set(rng.sample(range(records_per_topic), garbage_per_topic))
        for n in range(records_per_topic):
            if n in garbage_at:
                key = f"garbage-{topic}-{n}".encode()
                garbage_keys.add(key)
                pairs.append((key, GARBAGE))
                continue
            customer = rng.choice(names)
            value = rng.randint(1, 1000)
            ts_ms = now_ms - rng.randint(0, 600_000)
            low, high = min(low, ts_ms), max(high, ts_ms)
            # Every third record names its identifier; the others get one derived from their coordinates.
            identifier = f"e2e-{seed}-{topic}-{n}" if n % 3 == 0 else None
            record = usage(customer, value, ts_ms=ts_ms, identifier=identifier)
            pairs.append((customer.encode(), encode(record)))
            expected[event_name][customer] += value
            valid += 1
        records[topic] = pairs
    return Workload(
        records=records,
        partitions={t: p for t, (p, _e) in topics.items()},
        expected={e: dict(c) for e, c in expected.items()},
        valid=valid,
        garbage_keys=garbage_keys,
        start_s=low // 1000,
        end_s=high // 1000,
    )


# ------------------------------------------------------------------------------------------- processes


class Fleet:
    """Connector processes started by one test, all killed at the end; their logs for failure messages."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.all: list[ConnectorProcess] = []

    def start(self, **overrides: str) -> ConnectorProcess:
        process = ConnectorProcess({**self.env, **overrides}, self.log_dir)
        self.all.append(process)
        return process

    @property
    def running(self) -> list[ConnectorProcess]:
        return [p for p in self.all if p.proc.poll() is None]

    def tails(self, lines: int = LOG_TAIL_LINES, last: int = 4) -> str:
        """The last lines of the last ``last`` connectors' logs, each headed by its file and exit status."""
        parts = []
        shown = self.all[-last:]
        if len(self.all) > len(shown):
            parts.append(f"({len(self.all) - len(shown)} earlier connector logs in {self.log_dir})")
        for process in shown:
            status = process.proc.poll()
            state = "running" if status is None else f"exit {status}"
            tail = "\n".join(process.log().splitlines()[-lines:])
            parts.append(f"--- {process.log_path.name} ({state}) ---\n{tail}")
        return "\n".join(parts)

    def stop_all(self, timeout: float = 60) -> dict[str, int]:
        """SIGTERM every running connector, then wait for each; returns log name -> exit status."""
        running = self.running
        for process in running:
            process.signal(signal.SIGTERM)
        statuses = {}
        for process in running:
            try:
                statuses[process.log_path.name] = process.wait(timeout)
            except Exception:
                process.kill()
                statuses[process.log_path.name] = -999  # did not stop in time
        return statuses

    def close(self) -> None:
        for process in self.all:
            process.__exit__(None, None, None)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def assigned(process: ConnectorProcess) -> bool:
    """The connector's log shows it was given at least one partition."""
    return _ASSIGNED.search(process.log()) is not None


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    fleet: Fleet,
    interval: float = 0.1,
    watch: Iterable[ConnectorProcess] = (),
) -> None:
    """Like ``wait_until``, but fails at once if a watched connector exits, and quotes the logs."""
    watched = list(watch)
    deadline = time.monotonic() + timeout
    while not predicate():
        for process in watched:
            if process.proc.poll() is not None:
                raise AssertionError(
                    f"connector {process.log_path.name} exited with {process.proc.returncode} while "
                    f"waiting for {what}\n{fleet.tails()}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{fleet.tails()}")
        time.sleep(interval)


def lagging(bootstrap: str, group: str, ends: Ends) -> dict[tuple[str, int], tuple[int, int]]:
    """Partitions whose committed offset is not the end offset: (topic, partition) -> (committed, end)."""
    got = committed(bootstrap, group, ends)
    return {key: (got.get(key, -1), end) for key, end in sorted(ends.items()) if got.get(key) != end}


def wait_for_commits(
    bootstrap: str,
    group: str,
    ends: Ends,
    fleet: Fleet,
    timeout: float,
    watch: Iterable[ConnectorProcess] = (),
) -> None:
    """Wait until the group's committed offsets equal the end offsets on every partition."""
    behind: dict[tuple[str, int], tuple[int, int]] = {}

    def caught_up() -> bool:
        nonlocal behind
        behind = lagging(bootstrap, group, ends)
        return not behind

    try:
        wait_for(caught_up, timeout, "committed == end offsets", fleet, interval=0.5, watch=watch)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n(committed, end) of lagging partitions: {behind}") from None


# ------------------------------------------------------------------------------------------- checking


def total_mismatches(url: str, meters: Mapping[str, str], workload: Workload) -> list[str]:
    """Customers whose Stripe summary differs from the produced total, as readable lines."""
    wrong = []
    for event_name, customers in sorted(workload.expected.items()):
        meter_id = meters[event_name]
        for customer, want in sorted(customers.items()):
            got = meter_total(url, meter_id, customer, workload.start_s, workload.end_s)
            if got != want:
                wrong.append(f"{event_name}/{customer}: Stripe {got:g}, produced {want} ({got - want:+g})")
    return wrong


def read_keys(bootstrap: str, topic: str, partitions: int, want: int, timeout: float = 30) -> Counter[bytes]:
    """Keys of the records of ``topic`` (e.g. a dead-letter topic), read with assign() (no group) until
    ``want`` records arrived or ``timeout`` passed; nobody here produced to it, so no delivery reports
    tell its end, and Tansu's watermarks are wrong."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "e2e-reader", "enable.auto.commit": False}
    )
    keys: Counter[bytes] = Counter()
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        deadline = time.monotonic() + timeout
        while sum(keys.values()) < want and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                if message.error() is None:
                    keys[message.key() or b""] += 1
    finally:
        consumer.close()
    return keys


def last_assignment(process: ConnectorProcess) -> list[tuple[str, int]]:
    """The partitions of the connector's last ``assigned ...`` log line."""
    lines = [line for line in process.log().splitlines() if _ASSIGNED.search(line)]
    if not lines:
        return []
    listed = lines[-1].split("assigned ", 1)[1]
    found = re.findall(r"([A-Za-z0-9._-]+)\[(\d+)\]", listed)
    return [(topic, int(partition)) for topic, partition in found]


def committed_records(bootstrap: str, group: str, ends: Ends) -> int:
    """How many records the group's committed offsets cover (each partition starts at offset 0)."""
    got = committed(bootstrap, group, ends)
    return sum(min(max(got.get(key, 0), 0), end) for key, end in ends.items())


def quick_stats(url: str) -> dict[str, Any]:
    """The emulator's counters without validating its queue first (cheap enough to poll)."""
    response = httpx.get(f"{url}/_emulator/stats", params={"process": "false"}, timeout=30)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def assert_stripe_exact(
    url: str, meters: Mapping[str, str], workload: Workload, fleet: Fleet, *context: str
) -> dict[str, Any]:
    """Stripe's summary equals the produced total for every customer, every valid record was accepted
    exactly once and anything else received was a deduplicated copy; returns the emulator's stats."""
    stats = emulator_stats(url)
    wrong = total_mismatches(url, meters, workload)
    details = "\n".join([f"emulator stats: {stats}", *context, fleet.tails()])
    assert not wrong, "\n".join([f"{len(wrong)} customers' totals are wrong:", *wrong[:20], details])
    assert stats["events_accepted"] == stats["events_valid"] == workload.valid, details
    assert stats["events_invalid"] == 0, details
    assert stats["events_received"] == workload.valid + stats["duplicates_ignored"], details
    return stats
