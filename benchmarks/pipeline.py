"""The pipeline without a broker: CPU per record of the consumer and sender threads, for quick A/B runs.

``Pipeline`` runs as in ``kafka-stripe run`` (interpreter tuning, batching, offsets, completions), fed by
a stand-in consumer that hands out real ``confluent_kafka.Message`` objects built before the clock starts
(default-schema Avro values from ``benchmarks/mapping.py``'s realistic records, 8 partitions). The sender
is the real sender (``ContextSenders`` → ``MeterEventSender``) against ``kafka-stripe emulator --latency-ms
N`` in a child process, or, with ``--latency-ms -1``, an instant stand-in that accepts every batch (the
consumer thread alone).

    python -m benchmarks.pipeline [--records 300000] [--latency-ms 50] [--repeat 3] [--aggregate]
    python -m benchmarks.pipeline --aggregate --profile   # where the consumer thread's time goes

``--aggregate``: the records of ``benchmarks/e2e.py``'s aggregated contender (1,000 customers keyed to
partitions, whole values, five minutes of event time, in order) with its settings
(``TOPIC_<T>_AGGREGATE=1m``...), handed out in chunks of one partition's records.
``--profile``: one run under cProfile (the consumer thread), the top functions by own time.

Prints records/s and CPU µs per record of the consumer thread, the sender thread and the process, per
run. It leaves out what only a broker costs (librdkafka fetching, ``consume()`` building messages), so its
records/s run about 5% above ``benchmarks/e2e.py``'s at the same latency; it takes seconds instead of
minutes, which is what A/B comparisons on a noisy machine need (alternate the two versions, several runs
each). Never a test: timing on shared machines is noise.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from typing import Any

import fastavro
from confluent_kafka import Message

from benchmarks.e2e import AGGREGATED_SETTINGS, aggregation_records, records_now
from connector.config.environment import load_settings
from connector.config.topics import topic_env_key
from connector.devtools.emulator import EmulatorProcess
from connector.pipeline.identity import StaticIdentity
from connector.pipeline.loop import Pipeline
from connector.pipeline.sender_thread import THREAD_NAME as SENDER_THREAD
from connector.records import MeterEvent
from connector.runtime.process import new_event_loop, tune_interpreter
from connector.stripe.contexts import ContextSenders
from connector.stripe.results import BatchResult, SenderStats
from tests.support.harness import SCHEMA, connector_env

TOPIC = "usage"
PARTITIONS = 8
DISTINCT_VALUES = 10_000


class _Partition:
    def __init__(self, partition: int) -> None:
        self.topic, self.partition = TOPIC, partition


def sender_thread_cpu() -> float:
    """CPU seconds of the pipeline's sender thread so far (it is found by its name)."""
    for thread in threading.enumerate():
        if thread.name == SENDER_THREAD and thread.ident is not None:
            return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    raise RuntimeError(f"no thread named {SENDER_THREAD!r}")


class StandInConsumer:
    """Hands out pre-built messages ``consume()`` call by call; once every record it handed out is
    delivered it notes the sender thread's CPU time (the thread ends with the run) and asks the pipeline
    to stop."""

    def __init__(self, messages: list[Any]) -> None:
        self.messages = messages
        self.next = 0
        self.pipeline: Pipeline | None = None
        self.sender_cpu_s: float | None = None

    def subscribe(self, topics: Sequence[str], on_assign: Any, on_revoke: Any, on_lost: Any) -> None:
        on_assign(self, [_Partition(p) for p in range(PARTITIONS)])

    def consume(self, count: int, timeout: float) -> list[Any]:
        if self.next >= len(self.messages):
            if self.pipeline is not None and self.pipeline.progress.delivered >= len(self.messages):
                if self.sender_cpu_s is None:
                    self.sender_cpu_s = sender_thread_cpu()
                self.pipeline.request_stop()
            time.sleep(0.001)
            return []
        batch = self.messages[self.next : self.next + count]
        self.next += len(batch)
        return batch

    def commit(self, offsets: Any = None, asynchronous: bool = True) -> None:
        pass

    def assignment(self) -> list[Any]:
        return []

    def pause(self, partitions: Any) -> None:
        pass

    def resume(self, partitions: Any) -> None:
        pass

    def get_watermark_offsets(self, partition: Any, cached: bool = True) -> tuple[int, int]:
        return 0, -1

    def close(self) -> None:
        pass


class StandInProducer:
    """The dead-letter producer: nothing is dead-lettered with these records."""

    def __init__(self, config: Any) -> None:
        pass

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float | None = None) -> int:
        return 0

    def __len__(self) -> int:
        return 0


class InstantSender:
    """Accepts every batch at once: what is left is the consumer thread's own cost."""

    async def send(
        self, events: Sequence[MeterEvent], origins: object = None, context: str | None = None
    ) -> BatchResult:
        return BatchResult(len(events))

    def stats(self) -> SenderStats:
        return SenderStats(*(0 for _ in SenderStats._fields))

    async def aclose(self) -> None:
        pass


def build_messages(count: int, aggregate: bool = False) -> list[Any]:
    if aggregate:
        return aggregated_messages(count)
    values = []
    for record in records_now(DISTINCT_VALUES):
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, SCHEMA, record)
        values.append(buffer.getvalue())
    now_ms = int(time.time() * 1000)
    offsets = [0] * PARTITIONS
    messages = []
    for n in range(count):
        partition = n % PARTITIONS
        messages.append(
            Message(
                topic=TOPIC,
                partition=partition,
                offset=offsets[partition],
                value=values[n % DISTINCT_VALUES],
                timestamp=(1, now_ms),
            )
        )
        offsets[partition] += 1
    return messages


def aggregated_messages(count: int, chunk: int = 500) -> list[Any]:
    """``benchmarks.e2e``'s aggregated records, each customer's in one partition, handed out in chunks of
    one partition's records as librdkafka's ``consume()`` returns them."""
    now_ms = int(time.time() * 1000)
    values: list[list[bytes]] = [[] for _ in range(PARTITIONS)]
    for key, value in aggregation_records(count):
        values[zlib.crc32(key or b"") % PARTITIONS].append(value)
    return [
        Message(topic=TOPIC, partition=partition, offset=offset, value=value, timestamp=(1, now_ms))
        for start in range(0, max(len(v) for v in values), chunk)
        for partition, partition_values in enumerate(values)
        for offset, value in enumerate(partition_values[start : start + chunk], start)
    ]


def run_once(messages: list[Any], url: str | None, aggregate: bool = False) -> dict[str, float]:
    env = connector_env("127.0.0.1:1", url or "http://127.0.0.1:1", [TOPIC], "bench-pipeline")
    if aggregate:
        env |= {f"TOPIC_{topic_env_key(TOPIC)}_{k}": v for k, v in AGGREGATED_SETTINGS.items()}
    env.pop("CONNECTOR_COMMIT_INTERVAL_MS", None)  # the defaults, as in the end-to-end benchmark
    env.pop("CONNECTOR_LINGER_MS", None)
    env[f"TOPIC_{topic_env_key(TOPIC)}_DECIMAL_VALUES"] = "true"  # the records carry fractions
    settings = load_settings(env)
    consumer = StandInConsumer(messages)

    def sender(on_backoff: Any) -> Any:
        if url is None:
            return InstantSender()
        # As ``kafka-stripe run`` builds it: one sender per Stripe context (here only the platform's).
        return ContextSenders(settings.stripe, settings.sender, on_backoff=on_backoff)

    pipeline = Pipeline(
        settings,
        sender,
        # No cluster, no ledger: fixed topic ids (the ledger's cost is measured by benchmarks.e2e).
        lambda mappers: StaticIdentity(mappers, {TOPIC: "TopicIdOfBench00000001"}),
        consumer_factory=lambda _config: consumer,
        producer_factory=StandInProducer,
        loop_factory=new_event_loop,  # as kafka-stripe run: uvloop when installed
    )
    consumer.pipeline = pipeline
    started, consumer_cpu, process_cpu = time.perf_counter(), time.thread_time(), time.process_time()
    fatal = pipeline.run()
    elapsed = time.perf_counter() - started
    consumer_cpu = time.thread_time() - consumer_cpu
    process_cpu = time.process_time() - process_cpu
    count = len(messages)
    if fatal is not None or pipeline.progress.delivered != count:
        raise SystemExit(f"run failed: {fatal}, {pipeline.progress.delivered} of {count} delivered")
    return {
        "rate": count / elapsed,
        "consumer_us": consumer_cpu / count * 1e6,
        "sender_us": (consumer.sender_cpu_s or 0.0) / count * 1e6,
        "process_us": process_cpu / count * 1e6,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--latency-ms", type=int, default=50, help="emulator latency; -1: instant stand-in")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--aggregate", action="store_true", help="pre-aggregated per minute")
    parser.add_argument("--profile", action="store_true", help="one run under cProfile")
    args = parser.parse_args(argv)
    messages = build_messages(args.records, args.aggregate)
    tune_interpreter()
    emulator = None
    if args.latency_ms >= 0:
        emulator = EmulatorProcess(latency_ms=args.latency_ms, decimal_values=True)
    url = emulator.start() if emulator is not None else None
    where = f"emulator {args.latency_ms} ms away" if url else "instant stand-in sender"
    print(f"pipeline benchmark: {args.records:,} records, {where}, {os.cpu_count()} cores")
    try:
        if args.profile:
            profile(messages, url, args.aggregate)
            return 0
        for run in range(args.repeat):
            figures = run_once(messages, url, args.aggregate)
            print(
                f"  run {run + 1}: {figures['rate']:9,.0f} records/s; CPU µs/record: consumer thread "
                f"{figures['consumer_us']:5.2f}, sender thread {figures['sender_us']:5.2f}, "
                f"process {figures['process_us']:5.2f}"
            )
    finally:
        if emulator is not None:
            emulator.stop()
    return 0


def profile(messages: list[Any], url: str | None, aggregate: bool) -> None:
    """One run under cProfile (it sees the calling thread: the consumer thread)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    figures = run_once(messages, url, aggregate)
    profiler.disable()
    print(f"  profiled run: {figures['rate']:,.0f} records/s (slowed by the profiler)")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    sys.exit(main())
