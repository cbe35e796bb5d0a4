"""Helpers for the fault-injection end-to-end tests (tests/integration/test_e2e_faults.py).

Producing with per-record coordinates, driving the emulator's fault controls, sampling a child's RSS,
reading a dead-letter topic, and asking Stripe (the emulator) which individual records it holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import httpx
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from tests.support.harness import ConnectorProcess, stripe

HOUR_S = 3600


class Sent(NamedTuple):
    """Where the broker put one produced record (from its delivery report)."""

    partition: int
    offset: int
    timestamp_ms: int


class Outgoing(NamedTuple):
    """One record to produce: key, value (None is a tombstone), headers."""

    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


def produce_tracked(
    bootstrap: str, topic: str, records: Sequence[Outgoing], partitions: int
) -> tuple[list[Sent], dict[tuple[str, int], int]]:
    """Produce ``records[n]`` to partition ``n % partitions``, in order; returns each record's coordinates
    (indexed like ``records``) and the end offsets, both from delivery reports (never watermarks)."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 2000,
            # Idempotence keeps the order within a partition through internal retries, so the n-th
            # record of a partition lands at the n-th offset.
            "enable.idempotence": True,
        }
    )
    sent: list[Sent | None] = [None] * len(records)
    failures: list[str] = []

    def reporter(index: int) -> Any:
        def report(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))
                return
            sent[index] = Sent(msg.partition(), msg.offset(), msg.timestamp()[1])

        return report

    for n, record in enumerate(records):
        while True:
            try:
                producer.produce(
                    topic,
                    value=record.value,
                    key=record.key,
                    headers=list(record.headers) or None,
                    partition=n % partitions,
                    on_delivery=reporter(n),
                )
                break
            except BufferError:
                producer.poll(0.1)
        if n % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0, "producer did not flush within 60 s"
    assert not failures, failures[:3]
    assert all(s is not None for s in sent), "a record got no delivery report"
    coordinates = [s for s in sent if s is not None]
    ends: dict[tuple[str, int], int] = {}
    for s in coordinates:
        key = (topic, s.partition)
        ends[key] = max(ends.get(key, 0), s.offset + 1)
    return coordinates, ends


# ----------------------------------------------------------------------------------------- emulator


def set_faults(url: str, **settings: Any) -> None:
    """``POST /_emulator/faults``; raises on a refused setting."""
    response = httpx.post(f"{url}/_emulator/faults", json=settings, timeout=30)
    response.raise_for_status()


def quick_stats(url: str) -> dict[str, Any]:
    """``GET /_emulator/stats?process=false``: counters without validating the queue first."""
    response = httpx.get(f"{url}/_emulator/stats", params={"process": "false"}, timeout=30)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


class FaultToggler:
    """A background thread flipping emulator faults on a schedule while a test runs.

    Every ``period`` seconds it applies the next entry of ``phases`` (cycling); entries are
    ``/_emulator/faults`` bodies, e.g. ``[{"latency_ms": 200}, {"latency_ms": 0}]`` for latency spikes.
    """

    def __init__(self, url: str, phases: Sequence[Mapping[str, Any]], period: float) -> None:
        self.url = url
        self.phases = list(phases)
        self.period = period
        self.applied = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-toggler", daemon=True)

    def _run(self) -> None:
        index = 0
        while not self._stop.wait(self.period):
            try:
                set_faults(self.url, **self.phases[index % len(self.phases)])
                self.applied += 1
            except Exception as exc:  # reported by the test, never silently swallowed
                self.errors.append(repr(exc))
            index += 1

    def __enter__(self) -> FaultToggler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def hourly_values(url: str, meter_id: str, customer: str, start_s: int, end_s: int) -> dict[int, float]:
    """Stripe's per-hour aggregates for ``customer`` over [start, end) (both hour-aligned), only the
    hours holding events: ``{hour start (unix s): aggregated value}``. Giving every record of a
    customer its own hour makes this a per-record lookup (see ``hour_plan``)."""
    values: dict[int, float] = {}
    params: dict[str, Any] = {
        "customer": customer,
        "start_time": start_s,
        "end_time": end_s,
        "value_grouping_window": "hour",
        "limit": 100,
    }
    with stripe(url) as client:
        while True:
            response = client.get(f"/v1/billing/meters/{meter_id}/event_summaries", params=params)
            response.raise_for_status()
            body = response.json()
            for item in body["data"]:
                values[int(item["start_time"])] = float(item["aggregated_value"])
            if not body["has_more"] or not body["data"]:
                return values
            params["starting_after"] = body["data"][-1]["id"]


class HourPlan:
    """Record ``(partition, offset)`` ↦ (customer, timestamp) such that each customer holds at most
    ``block`` records, each in its own hour: Stripe's hourly summaries then say, record by record,
    whether it was delivered (and how often it counts: exactly 1 with value 1)."""

    def __init__(self, tag: str, base_hour_s: int, block: int = 500) -> None:
        assert base_hour_s % HOUR_S == 0
        self.tag = tag
        self.base_hour_s = base_hour_s  # the newest hour used (its start)
        self.block = block

    def customer(self, partition: int, offset: int) -> str:
        return f"cus_{self.tag}p{partition}b{offset // self.block}"

    def hour(self, offset: int) -> int:
        return self.base_hour_s - (offset % self.block) * HOUR_S

    def timestamp_ms(self, offset: int) -> int:
        return (self.hour(offset) + 1800) * 1000  # mid-hour

    def delivered(
        self, url: str, meter_id: str, ends: Mapping[tuple[str, int], int]
    ) -> dict[int, dict[int, float]]:
        """``{partition: {offset: value counted by Stripe}}`` for every record Stripe holds."""
        start = self.base_hour_s - (self.block - 1) * HOUR_S
        end = self.base_hour_s + HOUR_S
        found: dict[int, dict[int, float]] = {}
        for (_topic, partition), end_offset in ends.items():
            offsets = found.setdefault(partition, {})
            for first in range(0, end_offset, self.block):
                hours = hourly_values(url, meter_id, self.customer(partition, first), start, end)
                for hour_start, value in hours.items():
                    offset = first + (self.base_hour_s - hour_start) // HOUR_S
                    offsets[offset] = value
        return found


# ------------------------------------------------------------------------------------- processes


def rss_kb(pid: int) -> int | None:
    """The resident set size of a process in kB (``VmRSS`` in /proc/<pid>/status), None once gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def log_tail(connector: ConnectorProcess, lines: int = 60) -> str:
    """The last lines of a connector's log, for assertion messages."""
    # Read the file, not the handle: the log may be asked for after the process context closed it.
    text = connector.log_path.read_text(errors="replace").splitlines()
    return (
        f"\n--- connector log ({connector.log_path}), last {min(lines, len(text))} lines ---\n"
        + "\n".join(text[-lines:])
    )


def unexpected_failures(connector: ConnectorProcess) -> list[str]:
    """Log lines showing a failure the connector itself calls a bug or did not expect: tracebacks and
    the run loop's "sender failed unexpectedly". Faults the emulator injects never produce these."""
    text = connector.log_path.read_text(errors="replace").splitlines()
    return [
        line
        for n, line in enumerate(text)
        if "sender failed unexpectedly" in line
        or (line.startswith("Traceback") and n + 1 < len(text))
        or "Task was destroyed but it is pending" in line
    ]


def logs(connectors: Iterable[ConnectorProcess], lines: int = 40) -> str:
    return "".join(log_tail(c, lines) for c in connectors)


# ----------------------------------------------------------------------------------- dead letters


class DeadLetter(NamedTuple):
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", "replace") if value is not None else None
        return None


def read_topic(
    bootstrap: str, topic: str, partitions: int, expected: int, timeout: float
) -> list[DeadLetter]:
    """Every record of ``topic`` from the beginning: reads until ``expected`` arrived (or ``timeout``),
    then a little longer to catch extras. Assigns partitions directly (no group join)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "dlq-reader-unused",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    out: list[DeadLetter] = []
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while True:
            now = time.monotonic()
            if now > deadline or (settle_until is not None and now > settle_until):
                break
            for message in consumer.consume(500, 0.5):
                if message.error() is not None:
                    continue
                out.append(
                    DeadLetter(
                        message.partition(),
                        message.offset(),
                        message.key(),
                        message.value(),
                        list(message.headers() or []),
                        message.timestamp()[1],
                    )
                )
            if settle_until is None and len(out) >= expected:
                settle_until = time.monotonic() + 2.0
    finally:
        consumer.close()
    return out
