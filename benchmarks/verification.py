"""Customer verification's cost end to end: kafka-stripe with CONNECTOR_VERIFY_CUSTOMERS=true against false.

The machinery of ``benchmarks/e2e.py`` (an embedded broker, the emulator in a child process ``--latency-ms``
away, ``python -m connector run`` as the contender, events/s over [first commit seen … every record
committed]) on a topic pre-loaded once with ``--records`` records over ``--customers`` customers, all of
which exist at the emulated Stripe (created after every reset, as the records' customers would be at a
real one). The two settings run alternately, ``--repeat`` times each (on, off, on, off, ...), because this
machine is shared and noisy: the figures are the median and the spread of each, and the ratio of medians.

    python -m benchmarks.verification [--records 1000000] [--customers 1000] [--latency-ms 50] [--repeat 3]

Target (issue "Closing the loop with Stripe's validation"): with verification on, throughput within 10%
of off (ratio of medians >= 0.90).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import e2e
from connector.devtools.broker import EmbeddedBroker
from connector.devtools.emulator import EmulatorProcess

TARGET_RATIO = 0.90
SETTINGS = {"on": "true", "off": "false"}


def run_once(setting: str, args: argparse.Namespace, bootstrap: str, url: str, log_dir: Path) -> e2e.Row:
    e2e.CONNECTOR_OVERRIDES.clear()
    e2e.CONNECTOR_OVERRIDES["CONNECTOR_VERIFY_CUSTOMERS"] = SETTINGS[setting]
    return e2e.run_backlog(
        e2e.ONE,
        f"verification {setting}",
        args.latency_ms,
        bootstrap,
        url,
        args.ends,
        args.records,
        1,
        log_dir,
        args.timeout,
    )


def spread(rates: list[float]) -> str:
    return f"median {statistics.median(rates):>9,.0f}  min {min(rates):>9,.0f}  max {max(rates):>9,.0f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=1_000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    print(
        f"verification benchmark: {args.records:,} records over {args.customers:,} customers, Stripe "
        f"{args.latency_ms:g} ms away, {args.repeat}x on/off alternated, {os.cpu_count()} cores, "
        f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    e2e.BENCH_CUSTOMERS[:] = e2e.customer_ids(args.customers)
    log_dir = Path(tempfile.mkdtemp(prefix="kafka-stripe-verification-"))
    rates: dict[str, list[float]] = {"on": [], "off": []}
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        broker.create_topics([e2e.TOPIC], partitions=e2e.PARTITIONS)
        started = time.monotonic()
        records = e2e.records_now(args.records, customers=args.customers)
        by_key = e2e.produce(bootstrap, e2e.TOPIC, e2e.encode_all(records), e2e.PARTITIONS)
        args.ends = {p: end for (_topic, p), end in by_key.items()}
        print(f"pre-loaded {args.records:,} records in {time.monotonic() - started:.1f} s", flush=True)
        with EmulatorProcess(latency_ms=args.latency_ms, decimal_values=True) as emulator:
            for round_ in range(args.repeat):
                for setting in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                    row = run_once(setting, args, bootstrap, emulator.url, log_dir)
                    if not row.ok:
                        print(f"verification {setting}: FAILED {row.problem}", flush=True)
                        return 1
                    rates[setting].append(row.rate)
                    print(
                        f"  round {round_ + 1} verification {setting:>3}: {row.rate:>9,.0f} events/s "
                        f"({row.cpu_us:.1f} µs CPU/event, load {row.load[0]:.2f}→{row.load[1]:.2f})",
                        flush=True,
                    )
    ratio = statistics.median(rates["on"]) / statistics.median(rates["off"])
    print(f"verification on : {spread(rates['on'])} events/s")
    print(f"verification off: {spread(rates['off'])} events/s")
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(f"on/off ratio of medians {ratio:.3f} (target >= {TARGET_RATIO:.2f}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
