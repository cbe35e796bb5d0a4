"""Produce sample usage records (raw Avro, the default schema) to try the connector on a local stack.

    python -m connector.devtools.sample_producer --topic usage --rate 10 --customers 5 [--records N]

Every option falls back to an environment variable (``KAFKA_BOOTSTRAP_SERVERS``, ``SAMPLE_TOPIC``,
``SAMPLE_RATE``, ``SAMPLE_CUSTOMERS``, ``SAMPLE_RECORDS``, ``SAMPLE_SEED``), so a container can be
configured either way; the command line wins. Records (connector.devtools.samples) are keyed by customer,
timestamped now, carry a small value in one of the schema's union branches (long, double, decimal, string)
and two attributes; their identifiers are null, so the connector derives them from the Kafka coordinates.
The producer runs until it has produced ``--records`` records (0: forever) or gets SIGTERM/SIGINT,
then flushes.
This is a development tool: it is not a ``kafka-stripe`` subcommand and has no place in production.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol, TextIO

from connector.config.topics import topic_name_problem
from connector.devtools.samples import SampleRecords, encode, load_schema

PROG = "python -m connector.devtools.sample_producer"
ENV_BOOTSTRAP = "KAFKA_BOOTSTRAP_SERVERS"
ENV_TOPIC = "SAMPLE_TOPIC"
ENV_RATE = "SAMPLE_RATE"
ENV_CUSTOMERS = "SAMPLE_CUSTOMERS"
ENV_RECORDS = "SAMPLE_RECORDS"
ENV_SEED = "SAMPLE_SEED"
DEFAULT_TOPIC = "usage"
DEFAULT_RATE = 10.0
DEFAULT_CUSTOMERS = 5
PROGRESS_INTERVAL_S = 5.0
FLUSH_TIMEOUT_S = 30.0


class ProducerLike(Protocol):
    """The part of ``confluent_kafka.Producer`` this module uses (a fake in tests)."""

    def produce(
        self, topic: str, *, value: bytes, key: bytes, on_delivery: Callable[[Any, Any], None]
    ) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...


@dataclass(frozen=True, slots=True)
class Options:
    bootstrap_servers: str
    topic: str
    rate: float  # records per second; 0: as fast as the producer takes them
    customers: int
    records: int  # 0: forever
    seed: int | None


# ----------------------------------------------------------------------------------------- options


def _topic(value: str) -> str:
    problem = topic_name_problem(value.strip())
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value.strip()


def _non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {value!r}")
    return number


def _integer(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = minimum - 1
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, not {value!r}")
        return number

    return parse


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The parser; defaults come from ``environ`` (argparse converts and checks string defaults too)."""

    def env(name: str, default: str) -> str:
        return environ.get(name, "").strip() or default

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Produce sample Avro usage records (schemas/usage_record.avsc) to a Kafka topic.",
        epilog="Each option defaults to the environment variable named in its help, then to the value shown.",
    )
    parser.add_argument(
        "--bootstrap-servers",
        default=env(ENV_BOOTSTRAP, ""),
        metavar="HOST:PORT[,...]",
        help=f"Kafka bootstrap servers (${ENV_BOOTSTRAP}; required)",
    )
    parser.add_argument(
        "--topic", type=_topic, default=env(ENV_TOPIC, DEFAULT_TOPIC), help=f"topic (${ENV_TOPIC}; usage)"
    )
    parser.add_argument(
        "--rate",
        type=_non_negative_float,
        default=env(ENV_RATE, str(DEFAULT_RATE)),
        metavar="N",
        help=f"records per second, 0 for as fast as possible (${ENV_RATE}; {DEFAULT_RATE:g})",
    )
    parser.add_argument(
        "--customers",
        type=_integer(1),
        default=env(ENV_CUSTOMERS, str(DEFAULT_CUSTOMERS)),
        metavar="N",
        help=f"customers cus_sample0001 … (${ENV_CUSTOMERS}; {DEFAULT_CUSTOMERS})",
    )
    parser.add_argument(
        "--records",
        type=_integer(0),
        default=env(ENV_RECORDS, "0"),
        metavar="N",
        help=f"records to produce, 0 for forever (${ENV_RECORDS}; 0)",
    )
    parser.add_argument(
        "--seed",
        type=_integer(0),
        default=env(ENV_SEED, "") or None,
        metavar="N",
        help=f"random seed for reproducible values (${ENV_SEED}; random)",
    )
    return parser


def parse_options(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Options:
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    bootstrap = str(args.bootstrap_servers).strip()
    if not bootstrap:
        parser.error(f"--bootstrap-servers or ${ENV_BOOTSTRAP} is required")
    return Options(
        bootstrap_servers=bootstrap,
        topic=args.topic,
        rate=args.rate,
        customers=args.customers,
        records=args.records,
        seed=args.seed,
    )


# ----------------------------------------------------------------------------------------- records


def customer_ids(count: int) -> list[str]:
    # Letters and digits only after ``cus_``: the shape Stripe's (and the emulator's) customer ids have.
    return [f"cus_sample{n:04d}" for n in range(1, count + 1)]


# ----------------------------------------------------------------------------------------- running


class _Counts:
    def __init__(self) -> None:
        self.delivered = 0
        self.failed = 0
        self.first_error = ""

    def report(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
            self.first_error = self.first_error or str(err)


def run(
    options: Options,
    producer: ProducerLike,
    stop: threading.Event,
    *,
    clock: Callable[[], float] = time.monotonic,
    out: TextIO = sys.stdout,
) -> int:
    """Produce until ``options.records`` are sent or ``stop`` is set; 0 if every record was delivered."""
    schema = load_schema()
    # Identifiers stay null: the connector derives them from the Kafka coordinates.
    samples = SampleRecords(customer_ids(options.customers), seed=options.seed)
    counts = _Counts()
    rate = f"{options.rate:g}/s" if options.rate else "as fast as possible"
    total = str(options.records) if options.records else "forever"
    print(
        f"producing to {options.topic} on {options.bootstrap_servers}: {rate}, "
        f"{options.customers} customers, {total}",
        file=out,
        flush=True,
    )
    started = clock()
    next_progress = started + PROGRESS_INTERVAL_S
    produced = 0
    while not stop.is_set() and (not options.records or produced < options.records):
        if options.rate:
            wait = started + produced / options.rate - clock()
            if wait > 0 and stop.wait(wait):
                break
        record = samples.record(int(time.time() * 1000))
        value = encode(schema, record)
        key = str(record["stripe_customer_id"]).encode()
        while True:
            try:
                producer.produce(options.topic, value=value, key=key, on_delivery=counts.report)
                break
            except BufferError:  # the local queue is full: serve delivery reports, then try again
                producer.poll(0.1)
        produced += 1
        producer.poll(0)
        if clock() >= next_progress:
            next_progress += PROGRESS_INTERVAL_S
            print(
                f"produced {produced} ({counts.delivered} delivered, {counts.failed} failed)",
                file=out,
                flush=True,
            )
    undelivered = producer.flush(FLUSH_TIMEOUT_S)
    print(
        f"done: produced {produced}, delivered {counts.delivered}, failed {counts.failed}, "
        f"still queued {undelivered}" + (f"; first error: {counts.first_error}" if counts.failed else ""),
        file=out,
        flush=True,
    )
    return 0 if counts.failed == 0 and undelivered == 0 else 1


def producer_config(options: Options) -> dict[str, str | int | bool]:
    return {
        "bootstrap.servers": options.bootstrap_servers,
        "client.id": "kafka-stripe-sample-producer",
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 20,
    }


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    options = parse_options(argv, os.environ if environ is None else environ)
    from confluent_kafka import Producer

    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    # As PID 1 in a container, SIGTERM would otherwise be ignored until the stop timeout kills us.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return run(options, Producer(producer_config(options)), stop)


if __name__ == "__main__":
    raise SystemExit(main())
