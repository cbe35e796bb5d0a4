"""Pre-aggregation against the raw connector, end to end, in one run: stream requests and records/s.

An embedded broker holds ``--records`` usage records over ``--customers`` customers (8 partitions), all
within one minute of event time a few minutes ago, no attributes: the shape pre-aggregation is for. The
Stripe emulator runs ``--latency-ms`` away. ``kafka-stripe run`` (one process, default settings) reads the
topic from the beginning twice per repeat, alternating: ``raw`` (one event per record) and ``aggregated``
(``TOPIC_<T>_AGGREGATE=1m``, ``TOPIC_<T>_AGGREGATE_MAX_AGE=--max-age``: a backlog read in seconds closes
its segments by age, not by a window that never closes). Each row uses ``benchmarks.e2e``'s accounting:
records/s and CPU µs/record over [first commit seen … all committed], and spawn → done; plus the stream
requests and events the emulator received.

    python -m benchmarks.aggregation [--records 1000000] [--customers 1000] [--latency-ms 50] [--repeat 1]

Targets (issue "Exact pre-aggregation"): >= 100x fewer stream requests than raw; one process >= 150,000
records/s. Never a test: timing on a shared machine is noise.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks import e2e
from connector.config.topics import topic_env_key
from connector.devtools.broker import EmbeddedBroker
from connector.devtools.emulator import EmulatorProcess
from tests.support.harness import encode, produce, usage

TOPIC = "usage-aggregation"
TARGET_FEWER = 100.0
TARGET_RATE = 150_000.0


def records(count: int, customers: list[str], seed: int = 7) -> Iterator[tuple[bytes | None, bytes]]:
    """``count`` records within one minute (three minutes ago), whole values, in time order."""
    rng = random.Random(seed)
    minute_ms = (int(time.time() * 1000) - 3 * 60_000) // 60_000 * 60_000
    for n in range(count):
        customer = customers[rng.randrange(len(customers))]
        record: dict[str, Any] = usage(customer, rng.randint(1, 100), minute_ms + n * 50_000 // count)
        yield None, encode(record)


def run(
    kind: str, args: argparse.Namespace, bootstrap: str, url: str, ends: dict[int, int], logs: Path
) -> dict[str, Any]:
    e2e.TOPIC = TOPIC
    e2e.CONNECTOR_OVERRIDES.clear()
    if kind == "aggregated":
        key = topic_env_key(TOPIC)
        e2e.CONNECTOR_OVERRIDES.update(
            {f"TOPIC_{key}_AGGREGATE": "1m", f"TOPIC_{key}_AGGREGATE_MAX_AGE": str(args.max_age)}
        )
    row = e2e.run_backlog(
        e2e.ONE, kind, args.latency_ms, bootstrap, url, ends, args.records, 1, logs, args.timeout
    )
    stats = httpx.get(f"{url}/_emulator/stats", timeout=300).json()
    # run_backlog counts one event per record; an aggregated run is whole when every record is committed.
    ok = row.ok or (
        kind == "aggregated" and row.committed >= args.records and row.problem.startswith("counts")
    )
    result = {
        "kind": kind,
        "ok": ok,
        "problem": "" if ok else row.problem,
        "rate": row.rate,
        "wall_rate": args.records / row.wall_s if row.wall_s else 0.0,
        "cpu_us": row.cpu_us,
        "requests": int(stats["stream_requests"]),
        "events": int(stats["events_accepted"]),
        "load": row.load,
    }
    print(
        f"  {kind:>10}: {'ok' if ok else 'FAILED ' + row.problem}; {row.rate:,.0f} records/s over "
        f"[first commit … done] ({result['wall_rate']:,.0f} spawn → done), {row.cpu_us:.2f} µs CPU/record, "
        f"{result['requests']:,} stream requests, {result['events']:,} events; load "
        f"{row.load[0]:.2f}→{row.load[1]:.2f}",
        flush=True,
    )
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.aggregation")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=1_000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--max-age", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    customers = e2e.customer_ids(args.customers)
    e2e.BENCH_CUSTOMERS[:] = customers
    logs = Path(tempfile.mkdtemp(prefix="kafka-stripe-aggregation-"))
    print(
        f"aggregation benchmark: {args.records:,} records, {args.customers:,} customers, one minute of event "
        f"time, {e2e.PARTITIONS} partitions, Stripe {args.latency_ms:g} ms away, {args.repeat} repeat(s)",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        broker.create_topics([TOPIC], partitions=e2e.PARTITIONS)
        by_key = produce(bootstrap, TOPIC, records(args.records, customers), e2e.PARTITIONS)
        ends = {p: end for (_t, p), end in by_key.items()}
        with EmulatorProcess(latency_ms=args.latency_ms) as emulator:
            for n in range(args.repeat):
                order = ("raw", "aggregated") if n % 2 == 0 else ("aggregated", "raw")
                for kind in order:
                    results.append(run(kind, args, bootstrap, emulator.url, ends, logs))
    return verdict(results)


def verdict(results: list[dict[str, Any]]) -> int:
    raw = [r for r in results if r["kind"] == "raw"]
    aggregated = [r for r in results if r["kind"] == "aggregated"]
    fewer = min(r["requests"] for r in raw) / max(max(r["requests"] for r in aggregated), 1)
    rates = sorted(r["rate"] for r in aggregated)
    walls = sorted(r["wall_rate"] for r in aggregated)
    raw_rates = sorted(r["rate"] for r in raw)
    median = rates[len(rates) // 2]
    requests = ([r["requests"] for r in raw], [r["requests"] for r in aggregated])
    print(f"\nstream requests: raw {requests[0]}, aggregated {requests[1]}")
    met = "met" if fewer >= TARGET_FEWER else "NOT met"
    print(f"  {fewer:,.0f}x fewer (target >= {TARGET_FEWER:.0f}x): {met}")
    print(
        f"aggregated records/s: {_list(rates)} over the window (spawn → done: {_list(walls)}); "
        f"raw: {_list(raw_rates)}"
    )
    met = "met" if median >= TARGET_RATE else "NOT met"
    print(f"  median {median:,.0f} (target >= {TARGET_RATE:,.0f}): {met}")
    ok = all(r["ok"] for r in results)
    print(f"every record committed in every run: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
