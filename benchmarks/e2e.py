"""End to end, Kafka backlog → Stripe meter events: kafka-stripe, a bare consumer and the Stripe-docs loop.

One command runs every contender on the same machine in the same run: an embedded Kafka broker (Tansu)
holding a topic pre-loaded ONCE with ``--records`` default-schema Avro usage records over 8 partitions,
and the Stripe emulator in a child process, ``--latency-ms`` away. Contenders, each a child process
with a consumer group of its own reading from the beginning, the emulator reset (and the meter
recreated) before each so deduplication never makes a later contender cheap:

* ``ceiling``: a bare confluent-kafka consumer that only consumes and commits (no decoding, no HTTP);
* ``docs``: what one writes from Stripe's documentation: confluent-kafka ``poll()``, fastavro decode, the
  official ``stripe`` SDK's ``client.v2.billing.meter_event_stream.create({"events": [...]})`` per 100
  events with the session token as the client's key, the session renewed on
  ``stripe.TemporarySessionExpiredError``, a synchronous commit after each call. It only gets through
  the first ``--docs-records`` records (it is slow); its rate is measured over those;
* ``kafka-stripe``: ``python -m connector run``, one process, default settings
  (``CONNECTOR_METRICS_PORT=0``, the default linger and commit interval);
* ``workers``: the same with ``CONNECTOR_WORKERS=--workers``;
* ``aggregated``: ``kafka-stripe`` (one process) pre-aggregating per minute, on a topic of its own holding
  ``--records`` records over 1,000 customers keyed by customer (as usage topics are), whole values, in
  time order over 5 minutes of event time (``TOPIC_<T>_AGGREGATE=1m``, ``_AGGREGATE_GRACE=0``: the records
  are in order; ``_AGGREGATE_MAX_AGE=2``: the last minute, which no later record closes, waits 2 s). Its
  figures: stream requests against the ``kafka-stripe`` row's (the same number of records, one event
  each), records/s while consuming (the connector's ``kafka_stripe_records_consumed_total``, polled, from
  10% to 90% of the records: what one process can take in, as commits follow a minute behind) next to
  the usual window figure, and a sample of customers' totals at Stripe checked against the records.

A contender is done when its committed offsets reach the end offsets taken from the producer's delivery
reports (Tansu's high watermark is wrong); it is then stopped with SIGTERM. Figures:

* events/s over the window [first commit seen … every record committed], polled every 50 ms: this
  leaves out interpreter start-up and the broker's group join (about 3 s on Tansu), which are the same
  for every contender and say nothing about throughput;
* CPU µs/event: user+system CPU of the contender's whole process tree (supervisor and workers; from
  ``/proc/<pid>/stat``, exited children included through their parent's ``cutime``) over the same
  window, divided by the events committed in it;
* peak RSS: ``VmHWM`` of each process of the tree, sampled every second and just before SIGTERM; the
  largest is shown (every process is in the JSON);
* p50/p99 latency, in a separate steady run (``--steady-seconds``, ``--steady-rate``): a producer thread
  writes records stamped with the time of their ``produce()`` at a fixed rate onto a fresh topic while the
  contender runs (after a warm-up proving every partition is being consumed), and the latency of each
  record is the emulator's receipt time of its meter event (``EmulatorState.event_status(identifier)``,
  read through a small wrapper around the emulator app, see ``serve_emulator``) minus that produce
  time. Records not at Stripe when the run ends count as infinitely late.

The machine's load average is printed next to each row: other processes on a shared machine skew the
figures. Nothing in the test suite asserts on them.

    python -m benchmarks.e2e [--records 1000000] [--latency-ms 50,0] [--workers 2]
                             [--only ceiling,docs,kafka-stripe,workers] [--docs-records 100000]
                             [--steady-rate 5000] [--steady-seconds 20] [--json FILE] [--profile] [--quick]

``--quick`` (20,000 records at 0 ms, a 2 s steady run) only checks that everything runs and every record
arrives.
``--profile`` samples the one-process connector with py-spy during an extra 0 ms backlog run and prints
the functions it spends its time in.

Targets (issue "Throughput"): at 50 ms, kafka-stripe in one process >= 50,000 events/s and >= 30x the
Stripe-docs loop; at 0 ms, <= 18 µs CPU per event and CONNECTOR_WORKERS=2 >= 1.3x one process; peak
RSS <= 150 MB per process with the backlog; p99 <= 1 s at a steady 5,000 events/s with Stripe 50 ms away.
(Issue "Exact pre-aggregation"): at 50 ms, the aggregated connector >= 100x fewer stream requests than
kafka-stripe and >= 150,000 records/s in one process.
"""
# Over 400 lines: one self-contained benchmark script: contenders, process accounting, report.

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import httpx
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from connector.config.topics import topic_env_key
from connector.devtools.broker import EmbeddedBroker, die_with_parent, free_port
from connector.devtools.emulator import EmulatorProcess
from connector.devtools.samples import WIDE_ATTRIBUTES, SampleRecords, random_customer_ids
from tests.support.faults import set_faults
from tests.support.harness import (
    API_KEY,
    connector_env,
    create_meter,
    encode,
    meter_total,
    produce,
    stripe,
)

ROOT = Path(__file__).resolve().parents[1]

CEILING, DOCS, ONE, WORKERS, AGGREGATED = "ceiling", "docs", "kafka-stripe", "workers", "aggregated"
CONTENDERS = (CEILING, DOCS, ONE, WORKERS, AGGREGATED)
CONNECTORS = (ONE, WORKERS, AGGREGATED)  # the contenders that are kafka-stripe
PARTITIONS = 8
TOPIC = "usage-e2e"
SESSION_TIMEOUT_MS = 6000  # Tansu: a group join waits half of it
POLL_S = 0.05
# kafka-stripe commits once a second by default (the others after every batch): a window of only a few
# commit intervals measures the commit timing as much as the throughput. Such rows keep the same window
# as every other row (so ratios compare like with like) and are marked in the table.
COMMIT_INTERVAL_S = {"kafka-stripe": 1.0, "workers": 1.0}
SHORT_WINDOW_COMMITS = 5
SHORT_WINDOW_S = 2.0  # and any window this short: a few polls of the committed offsets make it up
WINDOW_MARKS = {"first commit→done, short": "*", "spawn→done": "†"}
WINDOW_NOTES = {
    "first commit→done, short": "window under 2 s or 5 commit intervals: the figure is rough",
    "spawn→done": "everything was in the first commit seen: measured from the spawn, start-up and "
    "group join included, so not comparable with the other rows",
}
RSS_EVERY_S = 1.0
EVENT_NAME = "api_requests"
CONNECTOR_OVERRIDES: dict[str, str] = {}  # --set NAME=VALUE: settings tried on both kafka-stripe rows

# py-spy: "python" samples Python frames without pausing the connector; "native" also samples C frames
# (librdkafka, uvloop, the GIL, garbage collection) but pauses the process for every sample, so the
# connector runs slower meanwhile.
PYSPY_RATE = 250  # samples per second
PYSPY_FLAGS = {"python": ["--nonblocking"], "native": ["--native"]}
TARGET_RATE_50 = 50_000.0
TARGET_VS_DOCS = 30.0
TARGET_CPU_US = 18.0
TARGET_WORKERS_GAIN = 1.3
TARGET_RSS_MB = 150.0
TARGET_P99_MS = 1000.0
TARGET_FEWER_REQUESTS = 100.0
TARGET_AGGREGATED_RATE = 150_000.0

AGGREGATED_TOPIC = "usage-e2e-aggregated"
AGGREGATED_CUSTOMERS = 1_000
AGGREGATED_MINUTES = 5
AGGREGATED_SETTINGS = {"AGGREGATE": "1m", "AGGREGATE_GRACE": "0", "AGGREGATE_MAX_AGE": "2"}
CONSUMED_METRIC = "kafka_stripe_records_consumed_total"
SAMPLED_CUSTOMERS = 20  # customers whose totals at Stripe are checked after the aggregated row

# --quick: the backlog at 0 ms only (the steady run is at 50 ms), so the whole run takes under a minute.
QUICK = {"records": 20_000, "docs_records": 4_000, "steady_seconds": 2.0, "steady_rate": 2_000}
QUICK_LATENCIES = ["0"]


# ----------------------------------------------------------------------------------------- records


CUSTOMERS = 2_000  # distinct customers of the records; each exists at the emulated Stripe


def customer_ids(count: int = CUSTOMERS, seed: int = 42) -> list[str]:
    return random_customer_ids(count, random.Random(seed))


def records_now(count: int, seed: int = 42, customers: int = CUSTOMERS) -> Iterator[dict[str, Any]]:
    """Realistic records from the one sample generator (``customers`` customers, a third with identifiers,
    every value type, zero to three attributes), in rough time order over the hour before now (Stripe's
    window)."""
    samples = SampleRecords(
        customer_ids(customers),  # whatever the seed: the customers created at the emulated Stripe
        seed=seed,
        identifier_share=0.33,
        attribute_share=0.8,
        attributes=WIDE_ATTRIBUTES,
        attribute_keys=(1, 3),
    )
    hour_ms = 3_600_000
    # One million records would span the hour; fewer cover its start, as benchmarks/mapping.py's do.
    return samples.spread(count, int(time.time() * 1000) - hour_ms, hour_ms, 1_000_000, jitter_ms=2_000)


def encode_all(records: Iterator[dict[str, Any]]) -> Iterator[tuple[bytes | None, bytes]]:
    return ((None, encode(record)) for record in records)


def aggregation_records(
    count: int, totals: Counter[str] | None = None, minutes: int = AGGREGATED_MINUTES
) -> Iterator[tuple[bytes | None, bytes]]:
    """The aggregated contender's records: keyed by customer (1,000 of ``customer_ids()``), whole values,
    in time order over ``minutes`` minutes ending three minutes ago; ``totals`` gets each customer's sum."""
    rng = random.Random(7)
    customers = customer_ids()[:AGGREGATED_CUSTOMERS]
    start_ms = (int(time.time() * 1000) - (minutes + 3) * 60_000) // 60_000 * 60_000
    span_ms = minutes * 60_000
    for n in range(count):
        customer = customers[rng.randrange(len(customers))]
        value = rng.randint(1, 100)
        if totals is not None:
            totals[customer] += value
        record = {
            "identifier": None,
            "stripe_customer_id": customer,
            "value": value,
            "timestamp": start_ms + n * span_ms // count,
            "attributes": None,
        }
        yield customer.encode(), encode(record)


# ----------------------------------------------------------------------------------- process trees


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


class ProcessTree:
    """CPU and peak RSS of a process and all its descendants, from /proc (Linux)."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, root: int) -> None:
        self.root = root
        self.pids: set[int] = {root}
        self.hwm_kb: dict[int, int] = {}

    def refresh(self) -> None:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                fields = _stat(int(entry))
                if fields is not None:
                    children.setdefault(int(fields[1]), []).append(int(entry))
        found, todo = set(), [self.root]
        while todo:
            pid = todo.pop()
            found.add(pid)
            todo.extend(children.get(pid, ()))
        self.pids |= found

    def cpu_seconds(self) -> float:
        """utime+stime of every live process in the tree plus cutime+cstime (children they reaped)."""
        ticks = 0
        for pid in self.pids:
            fields = _stat(pid)
            if fields is not None:
                ticks += sum(int(x) for x in fields[11:15])
        return ticks / self.TICK

    def sample_rss(self) -> None:
        for pid in list(self.pids):
            try:
                with open(f"/proc/{pid}/status") as f:
                    status = f.read()
            except OSError:
                continue
            match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
            if match:
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), int(match.group(1)))

    def peak_mb(self) -> dict[str, float]:
        """Peak RSS (MB) per process: ``root`` for the process started, ``child <pid>`` for the others."""
        return {
            ("root" if pid == self.root else f"child {pid}"): kb / 1024
            for pid, kb in sorted(self.hwm_kb.items())
        }


def load_average() -> float:
    return os.getloadavg()[0]


# ------------------------------------------------------------------------------- committed offsets


class Commits:
    """Committed offsets of a group, read with one long-lived client (a new one per read is slow)."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        self._partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]

    def read(self) -> dict[int, int]:
        result = self._consumer.committed(self._partitions, timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in result}

    def close(self) -> None:
        self._consumer.close()


# ------------------------------------------------------------------------------------- contenders


def contender_argv(name: str, bootstrap: str, url: str, topic: str, group: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.e2e", "_contender", name, bootstrap, url, topic, group]


def contender_env(
    name: str, bootstrap: str, url: str, topic: str, group: str, workers: int, metrics_port: int = 0
) -> dict[str, str]:
    env = connector_env(bootstrap, url, [topic], group)
    # The records carry fractions: the emulated account has decimal values enabled, and the topic says so.
    env[f"TOPIC_{topic_env_key(topic)}_DECIMAL_VALUES"] = "true"
    # The harness shortens or turns these off for fast tests; the benchmark measures the defaults.
    for variable in (
        "CONNECTOR_COMMIT_INTERVAL_MS",
        "CONNECTOR_LINGER_MS",
        "CONNECTOR_VERIFY_CUSTOMERS",
        "CONNECTOR_ERROR_REPORTS_POLL_S",
    ):
        env.pop(variable, None)
    env["CONNECTOR_METRICS_PORT"] = str(metrics_port)
    # Every contender reads the same topic into a freshly reset emulator: each needs ledger marks of its
    # own, or the delivery ledger (on, as in production) would rightly skip what an earlier one delivered.
    env["CONNECTOR_LEDGER_NAMESPACE"] = f"bench-{name}-{group}"
    env["KAFKA_SESSION_TIMEOUT_MS"] = str(SESSION_TIMEOUT_MS)
    if name == WORKERS:
        env["CONNECTOR_WORKERS"] = str(workers)
    if name == AGGREGATED:
        env.update({f"TOPIC_{topic_env_key(topic)}_{k}": v for k, v in AGGREGATED_SETTINGS.items()})
    if name in CONNECTORS:
        env.update(CONNECTOR_OVERRIDES)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


class Child:
    """A contender in a child process (dies with this process), its output in a log file."""

    def __init__(
        self,
        name: str,
        bootstrap: str,
        url: str,
        topic: str,
        group: str,
        workers: int,
        log_dir: Path,
        metrics_port: int = 0,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{group}.log"
        if name in CONNECTORS:
            argv = [sys.executable, "-m", "connector", "run"]
        else:
            argv = contender_argv(name, bootstrap, url, topic, group)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                env=contender_env(name, bootstrap, url, topic, group, workers, metrics_port),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),
            )
        self.tree = ProcessTree(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def assigned_members(self) -> int:
        """kafka-stripe members (workers) that logged a non-empty assignment."""
        text = self.log_path.read_text(errors="replace")
        members = {m.group(1) for m in re.finditer(r"(\[worker \d+\] )?\S+: assigned (?!nothing)", text)}
        return len(members)


# ------------------------------------------------------------------------------ backlog measurement


@dataclass
class Row:
    scenario: str
    contender: str
    latency_ms: float
    expected: int = 0
    committed: int = 0
    accepted: int | None = None
    duplicates: int | None = None
    ok: bool = False
    problem: str = ""
    rate: float = 0.0  # events/s over the window
    window: str = "first commit→done"
    window_s: float = 0.0
    window_events: int = 0
    wall_s: float = 0.0  # spawn -> done
    cpu_us: float = 0.0  # per event, over the window
    cpu_total_s: float = 0.0  # spawn -> exit, the whole tree
    rss_mb: dict[str, float] = field(default_factory=dict)
    p50_ms: float | None = None
    p99_ms: float | None = None
    late: int = 0  # steady run: records not at Stripe by the end
    requests: int | None = None  # stream requests the emulator answered
    broker_cpu_us: float = 0.0  # the broker's CPU per record over the window
    consume_rate: float = 0.0  # records/s consumed from 10% to 90% (rows that expose metrics)
    load: tuple[float, float] = (0.0, 0.0)
    exit_code: int | None = None

    @property
    def peak_rss(self) -> float:
        return max(self.rss_mb.values(), default=0.0)


# The customers the records name (customer_ids()), created after every reset: the connector checks them
# before sending (CONNECTOR_VERIFY_CUSTOMERS) and lists them into its cache at start, as at a real Stripe.
BENCH_CUSTOMERS: list[str] = []
BROKER_PID: list[int] = []  # the embedded broker's process: its CPU is shown next to the contender's


def reset_emulator(url: str) -> None:
    httpx.post(f"{url}/_emulator/reset", timeout=60).raise_for_status()
    create_meter(url, EVENT_NAME)
    if BENCH_CUSTOMERS:
        created = httpx.post(f"{url}/_emulator/customers", json={"ids": BENCH_CUSTOMERS}, timeout=60)
        created.raise_for_status()


def emulator_counts(url: str) -> tuple[int, int, int]:
    """Events accepted, duplicates ignored and stream requests, at the emulator."""
    stats = httpx.get(f"{url}/_emulator/stats", timeout=300).json()  # validates the queue first
    return int(stats["events_accepted"]), int(stats["duplicates_ignored"]), int(stats["stream_requests"])


class ConsumedRate:
    """Records/s consumed between 10% and 90% of ``total``, from the connector's metrics endpoint."""

    def __init__(self, port: int, total: int) -> None:
        self._url = f"http://127.0.0.1:{port}/metrics"
        self._total = total
        self._low: tuple[float, float] | None = None
        self._high: tuple[float, float] | None = None

    def poll(self, now: float) -> None:
        if self._high is not None:
            return
        try:
            text = httpx.get(self._url, timeout=1).text
        except httpx.HTTPError:
            return  # not serving yet
        found = re.search(rf"^{CONSUMED_METRIC} (\S+)$", text, re.MULTILINE)
        consumed = float(found.group(1)) if found else 0.0
        if self._low is None and consumed >= 0.1 * self._total:
            self._low = (now, consumed)
        elif self._low is not None and consumed >= 0.9 * self._total:
            self._high = (now, consumed)

    def rate(self) -> float:
        if self._low is None or self._high is None or self._high[0] <= self._low[0]:
            return 0.0
        return (self._high[1] - self._low[1]) / (self._high[0] - self._low[0])


def run_backlog(
    name: str,
    scenario: str,
    latency_ms: float,
    bootstrap: str,
    url: str,
    ends: dict[int, int],
    target: int,
    workers: int,
    log_dir: Path,
    timeout: float,
    on_window: Callable[[Child], Callable[[], None]] | None = None,
    topic: str = TOPIC,
) -> Row:
    """Run one contender over the pre-loaded ``topic`` until ``target`` records are committed (every
    record for all but the docs loop), then SIGTERM it."""
    row = Row(scenario, name, latency_ms, expected=target, load=(load_average(), 0.0))
    reset_emulator(url)
    group = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    commits = Commits(bootstrap, group, topic)
    full = target >= sum(ends.values())
    started = time.monotonic()
    port = free_port() if name == AGGREGATED else 0
    consumed = ConsumedRate(port, target) if port else None
    child = Child(name, bootstrap, url, topic, group, workers, log_dir, port)
    first: tuple[float, int, float] | None = None
    broker = ProcessTree(BROKER_PID[0]) if BROKER_PID else None
    broker_cpu0 = 0.0
    finish: Callable[[], None] | None = None
    next_rss = 0.0
    try:
        while True:
            time.sleep(POLL_S)
            now = time.monotonic()
            if not child.alive():
                row.problem = f"exited early with {child.proc.returncode}:\n{child.log_tail()}"
                break
            if now - started > timeout:
                row.problem = f"timed out after {timeout:.0f} s:\n{child.log_tail()}"
                break
            if now >= next_rss:
                child.tree.refresh()
                child.tree.sample_rss()
                next_rss = now + RSS_EVERY_S
            if consumed is not None:
                consumed.poll(now)
            offsets = commits.read()
            done_count = sum(offsets.values())
            if first is None and done_count > 0:
                child.tree.refresh()
                first = (now, done_count, child.tree.cpu_seconds())
                broker_cpu0 = broker_cpu(broker)
                if on_window is not None:
                    finish = on_window(child)
            complete = (
                all(offsets.get(p, 0) >= end for p, end in ends.items()) if full else done_count >= target
            )
            if complete and first is not None:
                child.tree.refresh()
                cpu = child.tree.cpu_seconds()
                child.tree.sample_rss()
                if finish is not None:
                    finish()
                    finish = None
                t0, c0, cpu0 = first
                if done_count <= c0:
                    # Everything was committed at the first commit seen (a tiny run): there is no window
                    # after it. Measure from the spawn, start-up and group join included, and say so.
                    t0, c0, cpu0 = started, 0, 0.0
                    row.window = "spawn→done"
                elif now - t0 < max(
                    SHORT_WINDOW_S, SHORT_WINDOW_COMMITS * COMMIT_INTERVAL_S.get(name, POLL_S)
                ):
                    # The same window as every other row, but only a few commit intervals long: the
                    # figure measures the commit timing as much as the throughput.
                    row.window = "first commit→done, short"
                row.window_s = now - t0
                row.window_events = done_count - c0
                row.rate = row.window_events / max(row.window_s, 1e-9)
                row.cpu_us = (cpu - cpu0) / max(row.window_events, 1) * 1e6
                if row.window != "spawn→done":
                    row.broker_cpu_us = (broker_cpu(broker) - broker_cpu0) / max(row.window_events, 1) * 1e6
                row.wall_s = now - started
                row.committed = done_count
                break
    finally:
        if finish is not None:
            finish()
        child.tree.refresh()
        child.tree.sample_rss()
        row.exit_code, row.cpu_total_s = stop_counting(child)
        final = sum(commits.read().values())
        commits.close()
        row.consume_rate = consumed.rate() if consumed is not None else 0.0
    row.rss_mb = child.tree.peak_mb()
    row.load = (row.load[0], load_average())
    if row.problem:
        return row
    row.committed = final
    if name == CEILING:
        row.ok = final == target
    else:
        row.accepted, row.duplicates, row.requests = emulator_counts(url)
        if name == AGGREGATED:  # one event per customer, minute and segment: its totals are checked after
            row.ok = final == target and 0 < row.accepted < target
        elif full:
            row.ok = final == target and row.accepted == target
        else:
            # The docs loop commits after every accepted call, so what Stripe has is what is committed.
            row.ok = final >= target and row.accepted == final
    if not row.ok:
        row.problem = f"counts: committed {final:,}, at Stripe {row.accepted}, expected {target:,}"
    if row.exit_code not in (0, None):
        row.ok = False
        row.problem += f" exit status {row.exit_code}:\n{child.log_tail()}"
    return row


def broker_cpu(broker: ProcessTree | None) -> float:
    if broker is None:
        return 0.0
    broker.refresh()
    return broker.cpu_seconds()


def stop_counting(child: Child) -> tuple[int, float]:
    """SIGTERM, wait; returns the exit status and the CPU seconds of the whole tree from spawn to exit.

    Only the contender is reaped meanwhile (the broker and the emulator live on), so the growth of
    RUSAGE_CHILDREN is its CPU and that of every descendant it waited for (the workers).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    status = child.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return status, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


# ------------------------------------------------------------------------------- the steady run


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.inf
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def receipts(url: str, identifiers: list[str]) -> list[float | None]:
    out: list[float | None] = []
    with httpx.Client(timeout=300) as client:
        for start in range(0, len(identifiers), 20_000):
            response = client.post(f"{url}/_bench/receipts", json=identifiers[start : start + 20_000])
            response.raise_for_status()
            out.extend(response.json())
    return out


def run_steady(
    name: str,
    latency_ms: float,
    bootstrap: str,
    url: str,
    rate: float,
    seconds: float,
    workers: int,
    log_dir: Path,
    broker: EmbeddedBroker,
) -> Row:
    """A fresh topic, the contender running, then ``rate`` records/s for ``seconds``, each stamped with its
    produce time; latency = the emulator's receipt time of its event - that time."""
    row = Row(f"steady {rate:,.0f}/s, {latency_ms:g} ms", name, latency_ms, load=(load_average(), 0.0))
    reset_emulator(url)
    run_id = uuid.uuid4().hex[:8]
    topic = f"steady-{run_id}"
    broker.create_topics([topic], partitions=PARTITIONS)
    group = f"steady-{name}-{run_id}"
    commits = Commits(bootstrap, group, topic)
    child = Child(name, bootstrap, url, topic, group, workers, log_dir)
    producer = Producer({"bootstrap.servers": bootstrap})
    ends: dict[int, int] = {}
    failures: list[str] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))
        else:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    template = list(records_now(1_000, seed=7))

    def send(identifier: str, n: int) -> float:
        record = dict(template[n % len(template)])
        sent = time.time()
        record["identifier"] = identifier
        record["timestamp"] = int(sent * 1000)
        producer.produce(topic, value=encode(record), partition=n % PARTITIONS, on_delivery=report)
        return sent

    def committed_all() -> bool:
        offsets = commits.read()
        return all(offsets.get(p, 0) >= end for p, end in ends.items())

    try:
        # Warm-up: a record per partition until every one is consumed and committed (and, for workers,
        # every worker holds partitions), so the measured records never wait for a group join.
        deadline = time.monotonic() + 90
        warm = 0
        while True:
            for _ in range(PARTITIONS):
                send(f"warm-{run_id}-{warm}", warm)
                warm += 1
            producer.flush(10)
            wait_until = time.monotonic() + 15
            while time.monotonic() < wait_until and not committed_all() and child.alive():
                time.sleep(0.2)
            members_ok = name != WORKERS or child.assigned_members() >= workers
            if committed_all() and members_ok:
                break
            if not child.alive() or time.monotonic() > deadline:
                row.problem = f"warm-up failed:\n{child.log_tail()}"
                return row
            time.sleep(1.0)
        time.sleep(0.5)  # let the last rebalance settle

        reset_counts = httpx.get(f"{url}/_emulator/stats?process=false", timeout=60).json()
        warm_accepted = int(reset_counts["events_received"])
        sent_at: list[float] = []
        ids: list[str] = []
        total = int(rate * seconds)
        child.tree.refresh()
        cpu0 = child.tree.cpu_seconds()
        started = time.monotonic()
        n = 0
        while n < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            while n < due:
                identifier = f"steady-{run_id}-{n}"
                sent_at.append(send(identifier, n))
                ids.append(identifier)
                n += 1
            producer.poll(0)
            time.sleep(0.005)
        producer.flush(30)
        produced_s = time.monotonic() - started
        # Long enough for a contender that falls behind (the docs loop) to catch up, so its latencies are
        # figures rather than "late"; one that keeps up is done within a second or two.
        grace = max(30.0, 4 * seconds)
        finish_by = time.monotonic() + grace
        while time.monotonic() < finish_by and child.alive() and not committed_all():
            time.sleep(POLL_S)
        elapsed = time.monotonic() - started
        child.tree.refresh()
        child.tree.sample_rss()
        cpu = child.tree.cpu_seconds()
        received = receipts(url, ids)
        latencies = sorted(r - s for r, s in zip(received, sent_at, strict=True) if r is not None)
        row.late = sum(1 for r in received if r is None)
        row.expected = total
        row.committed = sum(commits.read().values()) - warm
        row.window_s = elapsed
        row.window_events = len(latencies)
        row.rate = len(latencies) / max(elapsed, 1e-9)
        row.cpu_us = (cpu - cpu0) / max(len(latencies), 1) * 1e6
        all_latencies = latencies + [math.inf] * row.late
        row.p50_ms = percentile(all_latencies, 0.50) * 1000
        row.p99_ms = percentile(all_latencies, 0.99) * 1000
        row.accepted = int(emulator_counts(url)[0]) - warm_accepted
        row.ok = not failures and row.late == 0 and row.accepted == total
        if not row.ok:
            row.problem = (
                f"{row.late:,} of {total:,} records not at Stripe {grace:.0f} s after the last was produced "
                f"(produced over {produced_s:.1f} s)"
            )
    finally:
        child.tree.sample_rss()
        row.exit_code = child.stop()
        commits.close()
        row.rss_mb = child.tree.peak_mb()
        row.load = (row.load[0], load_average())
    return row


# ------------------------------------------------------------------------------- the emulator


class ReceiptsEmulator(EmulatorProcess):
    """``EmulatorProcess`` running the same emulator app behind ``serve_emulator``'s one extra route."""

    def command(self) -> list[str]:
        argv = super().command()
        index = argv.index("emulator")
        return [self.python, "-m", "benchmarks.e2e", "_emulator", *argv[index + 1 :]]


def serve_emulator(argv: list[str]) -> int:
    """The emulator (``connector.devtools.emulator.server``, unchanged) plus ``POST /_bench/receipts``: a
    JSON list of identifiers in, the receipt time (unix seconds) of each one's meter event out, null if never
    received. Everything else goes to the emulator app untouched."""
    import asyncio

    import orjson
    import uvloop

    from connector.devtools.emulator import create_app
    from connector.devtools.emulator.server import _bind, add_arguments, config_from_args, serve

    parser = argparse.ArgumentParser(prog="e2e.py _emulator")
    add_arguments(parser)
    args = parser.parse_args(argv)
    app = create_app(config_from_args(args))

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/_bench/receipts":
            chunks = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            state = app.state
            state.process_pending()
            times = []
            for identifier in orjson.loads(b"".join(chunks)):
                status = state.event_status(identifier)
                times.append(None if status is None else status.received_at)
            body = orjson.dumps(times)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    sock = _bind(args.host, args.port)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(wrapped, sock, args.host))  # type: ignore[arg-type]
    return 0


# ------------------------------------------------------------------------ contender processes


def _stop_flag() -> list[bool]:
    flag = [False]

    def handle(signum: int, frame: Any) -> None:
        flag[0] = True

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return flag


def _consumer(bootstrap: str, topic: str, group: str) -> Any:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
        }
    )
    consumer.subscribe([topic])
    return consumer


def ceiling_main(bootstrap: str, topic: str, group: str) -> int:
    """Consume and commit, nothing else."""
    stop = _stop_flag()
    consumer = _consumer(bootstrap, topic, group)
    consumed = False
    while not stop[0]:
        messages = consumer.consume(1000, 0.5)
        if messages:
            consumer.commit(asynchronous=True)
            consumed = True
    if consumed:
        with contextlib.suppress(KafkaException):  # _NO_OFFSET: everything was committed already
            consumer.commit(asynchronous=False)
    consumer.close()
    return 0


def docs_main(bootstrap: str, url: str, topic: str, group: str) -> int:
    """The loop a user writes from Stripe's docs and confluent-kafka's: poll, decode, send 100, commit."""
    from datetime import UTC

    import stripe

    from connector.config.settings import DEFAULT_SCHEMA

    stop = _stop_flag()
    schema = fastavro.parse_schema(json.loads(DEFAULT_SCHEMA.read_text()))
    bases: Any = {"api": url, "meter_events": url}
    client = stripe.StripeClient(API_KEY, base_addresses=bases)

    def new_stream_client() -> stripe.StripeClient:
        # stripe-python's meter_event_stream example: a client whose key is the session's token.
        session = client.v2.billing.meter_event_session.create()
        return stripe.StripeClient(session.authentication_token, base_addresses=bases)

    stream = new_stream_client()
    consumer = _consumer(bootstrap, topic, group)
    events: list[dict[str, Any]] = []

    def send() -> None:
        nonlocal stream
        try:
            stream.v2.billing.meter_event_stream.create({"events": events})
        except stripe.TemporarySessionExpiredError:
            stream = new_stream_client()
            stream.v2.billing.meter_event_stream.create({"events": events})
        consumer.commit(asynchronous=False)
        events.clear()

    while not stop[0]:
        msg = consumer.poll(1.0)
        if msg is None:
            if events:
                send()
            continue
        if msg.error():
            continue
        record = fastavro.schemaless_reader(io.BytesIO(msg.value()), schema)
        events.append(
            {
                "event_name": EVENT_NAME,
                "identifier": record["identifier"] or f"kafka:{msg.topic()}:{msg.partition()}:{msg.offset()}",
                "timestamp": record["timestamp"]
                .astimezone(UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "payload": {
                    **(record["attributes"] or {}),
                    "stripe_customer_id": record["stripe_customer_id"],
                    "value": format(Decimal(str(record["value"])).normalize(), "f"),
                },
            }
        )
        if len(events) == 100:
            send()
    consumer.close()
    return 0


# ------------------------------------------------------------------------------- profiling


def profile_window(seconds_hint: float, out: Path, mode: str) -> Callable[[Child], Callable[[], None]]:
    """Attach ``py-spy record`` to the connector once it is committing; stop it when the run is done."""

    def start(child: Child) -> Callable[[], None]:
        spy = Path(sys.executable).with_name("py-spy")
        proc = subprocess.Popen(
            [
                str(spy),
                "record",
                "--pid",
                str(child.proc.pid),
                "--rate",
                str(PYSPY_RATE),
                "--format",
                "raw",
                "--threads",
                *PYSPY_FLAGS[mode],
                "--output",
                str(out),
                "--duration",
                str(int(seconds_hint)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent(),
        )

        def finish() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        return finish

    return start


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
_WRAPPERS = {
    "_run_module_as_main",
    "_run_code",
    "<module>",
    "main",
    "run",
    "run_one",
    "Pipeline.run",
    "Thread._bootstrap",
    "Thread._bootstrap_inner",
    "Thread.run",
}


def _short(path: str) -> str:
    for marker in ("site-packages/", "connector/", "benchmarks/"):
        if marker in path:
            return (
                path.split(marker, 1)[1] if marker == "site-packages/" else marker + path.split(marker, 1)[1]
            )
    return path


def summarise_profile(path: Path, top: int = 15) -> list[str]:
    """py-spy's collapsed stacks: the split between threads, self time by function and by line, and
    inclusive time by function (the interpreter's and threading's wrappers left out)."""
    if not path.exists():
        return ["  (py-spy wrote no profile)"]
    by_function: Counter[str] = Counter()
    by_line: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for text in path.read_text().splitlines():
        stack, _, count_text = text.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        if not frames:
            continue
        total += count
        threads[re.sub(r"^thread \(\d+\): ?", "", thread) or thread] += count
        functions = []
        for frame in frames:
            match = _FRAME.match(frame)
            func, file, line = (match["func"], match["file"], match["line"]) if match else (frame, "", None)
            functions.append((func, f"{func} ({_short(file)})", f"{func} ({_short(file)}:{line})"))
        func, name, where = functions[-1]
        by_function[name] += count
        by_line[where] += count
        for name in {n for f, n, _ in functions if f not in _WRAPPERS}:
            inclusive[name] += count
    if not total:
        return ["  (no samples)"]
    lines = [
        f"  {total:,} samples of running threads: "
        + ", ".join(f"{t} {n / total:.0%}" for t, n in threads.most_common())
    ]
    lines.append("  self time by function:")
    lines += [f"    {n / total:6.1%}  {name}" for name, n in by_function.most_common(top)]
    lines.append("  self time by line:")
    lines += [f"    {n / total:6.1%}  {name}" for name, n in by_line.most_common(top)]
    lines.append("  inclusive time by function:")
    lines += [f"    {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top + 5)]
    return lines


# ------------------------------------------------------------------------------- the report


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "—"
    return "late" if math.isinf(value) else f"{value:,.0f}"


def print_table(rows: list[Row], docs_cap: int, total: int, workers: int) -> None:
    docs_rate = {
        r.latency_ms: r.rate for r in rows if r.contender == DOCS and not r.scenario.startswith("st")
    }
    header = (
        f"| {'scenario':<22} | {'contender':<14} | {'records':>9} | {'events/s':>10} | {'window s':>8} | "
        f"{'vs docs':>7} | "
        f"{'CPU µs/event':>12} | {'peak RSS MB':>11} | {'p50 / p99 ms':>13} | {'load 1m':>9} | ok |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        steady = r.scenario.startswith("steady")
        vs = docs_rate.get(r.latency_ms) if not steady else None
        ratio = f"{r.rate / vs:.1f}x" if vs and r.contender != DOCS else "—"
        label = f"{r.contender}" + (f" ({workers})" if r.contender == WORKERS else "")
        latency = f"{fmt_ms(r.p50_ms)} / {fmt_ms(r.p99_ms)}" if steady else "—"
        rss = f"{r.peak_rss:,.0f}"
        mark = WINDOW_MARKS.get(r.window, "") if not steady else ""
        rate = f"{r.rate:,.0f}{mark}"
        print(
            f"| {r.scenario:<22} | {label:<14} | {r.expected:>9,} | {rate:>10} | {r.window_s:>8.1f} | "
            f"{ratio:>7} | "
            f"{r.cpu_us:>12,.1f} | {rss:>11} | {latency:>13} | {r.load[0]:>4.2f}/{r.load[1]:<4.2f} | "
            f"{'yes' if r.ok else 'NO'} |"
        )
    marks = {r.window for r in rows if not r.scenario.startswith("steady")} & set(WINDOW_MARKS)
    for window in sorted(marks):
        print(f"{WINDOW_MARKS[window]} {WINDOW_NOTES[window]}")
    if docs_cap < total and docs_rate:
        print(
            f"docs rows: the Stripe-docs loop measured over the first {docs_cap:,} records only "
            f"(a rate; at that rate the {total:,} records would take "
            + ", ".join(f"{total / rate:,.0f} s at {lat:g} ms" for lat, rate in docs_rate.items() if rate)
            + ")"
        )


def verdicts(rows: list[Row], workers: int) -> list[str]:
    def find(contender: str, latency: float, steady: bool = False) -> Row | None:
        for r in rows:
            if (
                r.contender == contender
                and r.latency_ms == latency
                and r.scenario.startswith("steady") == steady
            ):
                return r
        return None

    def line(ok: bool | None, text: str) -> str:
        word = "n/a   " if ok is None else ("met   " if ok else "MISSED")
        return f"  [{word}] {text}"

    out = []
    one50, docs50 = find(ONE, 50), find(DOCS, 50)
    if one50:
        out.append(
            line(
                one50.rate >= TARGET_RATE_50,
                f"50 ms: kafka-stripe one process >= {TARGET_RATE_50:,.0f} events/s: {one50.rate:,.0f}"
                + ("" if one50.rate >= TARGET_RATE_50 else f" ({one50.rate / TARGET_RATE_50 - 1:+.0%})"),
            )
        )
        if docs50 and docs50.rate:
            ratio = one50.rate / docs50.rate
            out.append(
                line(
                    ratio >= TARGET_VS_DOCS,
                    f"50 ms: kafka-stripe >= {TARGET_VS_DOCS:.0f}x the Stripe-docs loop: {ratio:.1f}x "
                    f"({one50.rate:,.0f} vs {docs50.rate:,.0f} events/s)",
                )
            )
    one0, workers0 = find(ONE, 0), find(WORKERS, 0)
    if one0:
        out.append(
            line(
                one0.cpu_us <= TARGET_CPU_US,
                f"0 ms: <= {TARGET_CPU_US:.0f} µs CPU per event in the connector process: "
                f"{one0.cpu_us:.1f} µs"
                + ("" if one0.cpu_us <= TARGET_CPU_US else f" ({one0.cpu_us / TARGET_CPU_US - 1:+.0%})"),
            )
        )
        if workers0:
            gain = workers0.rate / max(one0.rate, 1e-9)
            out.append(
                line(
                    gain >= TARGET_WORKERS_GAIN,
                    f"0 ms: CONNECTOR_WORKERS={workers} >= {TARGET_WORKERS_GAIN}x one process: "
                    f"{gain:.2f}x ({workers0.rate:,.0f} vs {one0.rate:,.0f} events/s)",
                )
            )
    ours = [r for r in rows if r.contender in (ONE, WORKERS) and not r.scenario.startswith("steady")]
    if ours:
        worst = max(ours, key=lambda r: r.peak_rss)
        out.append(
            line(
                worst.peak_rss <= TARGET_RSS_MB,
                f"peak RSS <= {TARGET_RSS_MB:.0f} MB per process with the backlog: largest "
                f"{worst.peak_rss:.0f} MB ({worst.contender}, {worst.scenario})",
            )
        )
    aggregated = find(AGGREGATED, 50)
    if one50 and aggregated and one50.requests and aggregated.requests:
        fewer = one50.requests / aggregated.requests
        out.append(
            line(
                fewer >= TARGET_FEWER_REQUESTS,
                f"50 ms: pre-aggregated >= {TARGET_FEWER_REQUESTS:.0f}x fewer stream requests than "
                f"kafka-stripe: {fewer:.0f}x ({aggregated.requests:,} vs {one50.requests:,} for "
                f"{aggregated.expected:,} records each)",
            )
        )
    if aggregated:
        rate = aggregated.consume_rate
        out.append(
            line(
                rate >= TARGET_AGGREGATED_RATE,
                f"50 ms: pre-aggregated one process >= {TARGET_AGGREGATED_RATE:,.0f} records/s: {rate:,.0f} "
                f"consumed/s from 10% to 90% ({aggregated.rate:,.0f} committed/s over [first commit … "
                f"done], {aggregated.expected / max(aggregated.wall_s, 1e-9):,.0f} spawn → done)",
            )
        )
    steady = find(ONE, 50, steady=True)
    if steady and steady.p99_ms is not None:
        out.append(
            line(
                steady.p99_ms <= TARGET_P99_MS,
                f"p99 <= {TARGET_P99_MS:,.0f} ms at a steady input, 50 ms: {fmt_ms(steady.p99_ms)} ms "
                f"(p50 {fmt_ms(steady.p50_ms)} ms, {steady.scenario})",
            )
        )
    return out


# ------------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument(
        "--records", type=int, default=1_000_000, help="records pre-loaded (default 1,000,000)"
    )
    parser.add_argument(
        "--latency-ms",
        action="append",
        default=None,
        help="emulator latency scenarios, repeatable or comma list (default 50,0)",
    )
    parser.add_argument("--workers", type=int, default=2, help="CONNECTOR_WORKERS of the workers contender")
    parser.add_argument("--only", default=",".join(CONTENDERS), help="comma list of contenders")
    parser.add_argument(
        "--docs-records",
        type=int,
        default=100_000,
        help="records the Stripe-docs loop is measured over (default 100,000)",
    )
    parser.add_argument("--steady-rate", type=float, default=5_000.0, help="records/s of the steady run")
    parser.add_argument(
        "--steady-seconds", type=float, default=20.0, help="length of the steady run; 0 skips it"
    )
    parser.add_argument("--steady-latency-ms", type=float, default=50.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="longest run of one contender (s)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the kafka-stripe contenders (e.g. CONNECTOR_MAX_IN_FLIGHT=64)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="python",
        choices=sorted(PYSPY_FLAGS),
        help="afterwards, py-spy the one-process connector during an extra 0 ms backlog run "
        "(python: Python frames, connector not paused; native: C frames too, connector paused per sample)",
    )
    parser.add_argument(
        "--profile-latency-ms",
        type=float,
        default=0.0,
        help="emulator latency of the profiled run (default 0)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="20,000 records and a 3 s steady run: checks that it runs, not how fast",
    )
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if parser.get_default(key) == getattr(args, key):
                setattr(args, key, value)
    raw = args.latency_ms or (QUICK_LATENCIES if args.quick else ["50,0"])
    args.latencies = [float(x) for item in raw for x in str(item).split(",") if x.strip()]
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--set {item!r}: expected NAME=VALUE")
        CONNECTOR_OVERRIDES[name] = value
    args.contenders = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}; choose from {', '.join(CONTENDERS)}")
    return args


def main(argv: list[str]) -> int:
    if argv and argv[0] == "_contender":
        name, bootstrap, url, topic, group = argv[1:6]
        return (
            ceiling_main(bootstrap, topic, group)
            if name == CEILING
            else docs_main(bootstrap, url, topic, group)
        )
    if argv and argv[0] == "_emulator":
        return serve_emulator(argv[1:])
    args = parse_args(argv)
    BENCH_CUSTOMERS[:] = customer_ids()
    docs_cap = min(args.docs_records, args.records)
    print(
        f"e2e benchmark: {args.records:,} records, {PARTITIONS} partitions, "
        f"contenders {', '.join(args.contenders)}, "
        f"latency {', '.join(f'{x:g}' for x in args.latencies)} ms, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores shared by broker, emulator, contender and this script; "
        + "".join(f"{k}={v}; " for k, v in CONNECTOR_OVERRIDES.items())
        + f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    rows: list[Row] = []
    log_dir = Path(tempfile.mkdtemp(prefix="kafka-stripe-e2e-"))
    profile_lines: list[str] = []
    started = time.monotonic()
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        BROKER_PID[:] = [broker.pid] if broker.pid is not None else []
        broker.create_topics([TOPIC], partitions=PARTITIONS)
        t = time.monotonic()
        ends_by_key = produce(bootstrap, TOPIC, encode_all(records_now(args.records)), PARTITIONS)
        ends = {p: end for (_topic, p), end in ends_by_key.items()}
        assert sum(ends.values()) == args.records, ends
        print(f"pre-loaded {args.records:,} records in {time.monotonic() - t:.1f} s", flush=True)
        totals: Counter[str] = Counter()
        aggregated_ends = (
            preload_aggregated(broker, args.records, totals) if AGGREGATED in args.contenders else {}
        )

        for latency in args.latencies:
            with EmulatorProcess(latency_ms=latency, decimal_values=True) as emulator:
                for name in args.contenders:
                    target = docs_cap if name == DOCS else args.records
                    aggregated = name == AGGREGATED
                    row = run_backlog(
                        name,
                        f"backlog, {latency:g} ms",
                        latency,
                        bootstrap,
                        emulator.url,
                        aggregated_ends if aggregated else ends,
                        target,
                        args.workers,
                        log_dir,
                        args.timeout,
                        topic=AGGREGATED_TOPIC if aggregated else TOPIC,
                    )
                    if aggregated and row.ok:
                        check_totals(row, emulator.url, totals)
                    rows.append(row)
                    report_row(row)

        steady_names = [c for c in args.contenders if c not in (CEILING, AGGREGATED)]
        if args.steady_seconds > 0 and steady_names:
            with ReceiptsEmulator(latency_ms=args.steady_latency_ms, decimal_values=True) as emulator:
                for name in steady_names:
                    row = run_steady(
                        name,
                        args.steady_latency_ms,
                        bootstrap,
                        emulator.url,
                        args.steady_rate,
                        args.steady_seconds,
                        args.workers,
                        log_dir,
                        broker,
                    )
                    rows.append(row)
                    report_row(row)

        if args.profile:
            out = log_dir / "py-spy.txt"
            latency = args.profile_latency_ms
            with EmulatorProcess(latency_ms=latency, decimal_values=True) as emulator:
                row = run_backlog(
                    ONE,
                    f"profile, {latency:g} ms",
                    latency,
                    bootstrap,
                    emulator.url,
                    ends,
                    args.records,
                    1,
                    log_dir,
                    args.timeout,
                    on_window=profile_window(args.timeout, out, args.profile),
                )
            profile_lines = [
                f"py-spy record --rate {PYSPY_RATE} {' '.join(PYSPY_FLAGS[args.profile])} on kafka-stripe, "
                f"one process, backlog of {args.records:,} records at {latency:g} ms (while sampled: "
                f"{row.rate:,.0f} events/s, {row.cpu_us:.1f} µs CPU/event"
                f"{'' if row.ok else ', FAILED: ' + row.problem}; {out}):",
                *summarise_profile(out),
            ]

    print(f"\nfinished in {time.monotonic() - started:.0f} s; logs in {log_dir}\n")
    print_table(rows, docs_cap, args.records, args.workers)
    print(
        "events/s: [first commit seen … all committed]; CPU: the contender's process tree over that window;"
        " load: 1-minute load average before/after the row"
    )
    print("targets:" + ("  (a --quick run: figures mean nothing)" if args.quick else ""))
    for text in verdicts(rows, args.workers):
        print(text)
    for text in profile_lines:
        print(text)
    all_ok = all(r.ok for r in rows)
    print(f"every record delivered for every contender: {'yes' if all_ok else 'NO'}")
    for r in rows:
        if not r.ok:
            print(f"  {r.scenario} / {r.contender}: {r.problem}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "records": args.records,
                    "docs_records": docs_cap,
                    "workers": args.workers,
                    "cores": os.cpu_count(),
                    "rows": [asdict(r) | {"peak_rss": r.peak_rss} for r in rows],
                    "all_ok": all_ok,
                },
                indent=2,
                default=lambda x: None if isinstance(x, float) and math.isinf(x) else str(x),
            )
        )
    return 0 if all_ok else 1


def preload_aggregated(broker: EmbeddedBroker, count: int, totals: Counter[str]) -> dict[int, int]:
    """The aggregated contender's topic, loaded with ``aggregation_records`` (keyed by customer)."""
    broker.create_topics([AGGREGATED_TOPIC], partitions=PARTITIONS)
    t = time.monotonic()
    records = aggregation_records(count, totals)
    ends_by_key = produce(broker.bootstrap_servers, AGGREGATED_TOPIC, records, PARTITIONS, by_key=True)
    print(f"pre-loaded {count:,} records keyed by customer in {time.monotonic() - t:.1f} s", flush=True)
    return {p: end for (_topic, p), end in ends_by_key.items()}


def check_totals(row: Row, url: str, totals: Counter[str]) -> None:
    """Stripe's total of a sample of customers, over the records' whole time range, against theirs."""
    set_faults(url, latency_ms=0)
    now = int(time.time())
    with stripe(url) as client:
        meter_id = client.get("/v1/billing/meters").json()["data"][0]["id"]
    wrong = []
    for customer in sorted(totals)[:SAMPLED_CUSTOMERS]:
        got = meter_total(url, meter_id, customer, now - (AGGREGATED_MINUTES + 10) * 60, now)
        if got != totals[customer]:
            wrong.append(f"{customer}: {got} at Stripe, {totals[customer]} in the records")
    set_faults(url, latency_ms=row.latency_ms)
    if wrong:
        row.ok = False
        row.problem = "totals differ: " + "; ".join(wrong[:3])


def report_row(row: Row) -> None:
    status = "ok" if row.ok else f"FAILED: {row.problem}"
    latency = f", p50 {fmt_ms(row.p50_ms)} ms, p99 {fmt_ms(row.p99_ms)} ms" if row.p50_ms is not None else ""
    print(
        f"  {row.scenario:<22} {row.contender:<13} {row.rate:>9,.0f} events/s over {row.window_s:5.1f} s, "
        f"{row.cpu_us:6.1f} µs CPU/event (broker {row.broker_cpu_us:4.1f}), "
        f"peak RSS {row.peak_rss:4.0f} MB{latency}, "
        f"committed {row.committed:,}, at Stripe {'—' if row.accepted is None else row.accepted}; {status}",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
