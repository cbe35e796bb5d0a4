"""Throughput of the pure core: default-schema Avro bytes → decoded → mapped to meter events, on one core.

Encodes ``--records`` distinct, realistic usage records (a third with their own identifier,
``cus_…`` customers, long/double/decimal/string values, zero to three attributes, timestamps over
the last hour in rough time order) in chunks, then times ``Mapper.map_record`` over every chunk,
and the naive baseline over the same chunks: ``fastavro.schemaless_reader`` with the schema as
written (timestamps become datetimes) plus straightforward formatting. Only the mapping loops are
timed, never the encoding. Each chunk is mapped ``--repeat`` times by each path, alternating, and
the fastest pass counts (as ``timeit`` does): on a shared machine the slower passes measure the
neighbours. The mean over all passes is printed as well.

    python -m benchmarks.mapping [--records 1000000] [--chunk 100000] [--repeat 3] [--profile]

``--profile`` runs pyinstrument over one chunk of the fast path instead and prints its report.

Target (issue "Records to meter events"): >= 120,000 records/s (<= 8.3 µs per record) on one core.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import string
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro

from connector.config.settings import DEFAULT_SCHEMA, TopicSettings
from connector.mapping.mapper import Mapper
from connector.records import KafkaRecord, MeterEvent

TARGET_RPS = 120_000.0
TOPIC = "usage-events"
PARTITIONS = 12
NOW_MS = 1_795_000_000_000  # a fixed "now" keeps runs comparable; every timestamp is within the hour before
ATTRIBUTE_VALUES = {
    "region": ["us-east-1", "eu-west-1", "ap-south-1"],
    "plan": ["free", "pro", "enterprise"],
    "feature": ["search", "export", "api", "sync"],
    "model": ["small", "medium", "large"],
}


def make_records(count: int, first: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """``count`` usage records, the i-th stamped ``first + i`` steps into the last hour."""
    alphabet = string.ascii_letters + string.digits
    customers = ["cus_" + "".join(rng.choices(alphabet, k=14)) for _ in range(2_000)]
    for i in range(first, first + count):
        kind = rng.random()
        value: Any
        if kind < 0.4:
            value = rng.randint(1, 5_000)
        elif kind < 0.65:
            value = round(rng.uniform(0, 100), 3)
        elif kind < 0.85:
            value = Decimal(f"{rng.randint(0, 9_999)}.{rng.randint(0, 9_999):04d}")
        else:
            value = f"{rng.randint(0, 999)}.{rng.randint(0, 99)}"
        attributes = None
        if rng.random() < 0.8:
            keys = rng.sample(sorted(ATTRIBUTE_VALUES), rng.randint(1, 3))
            attributes = {k: rng.choice(ATTRIBUTE_VALUES[k]) for k in keys}
        yield {
            "identifier": f"req_{rng.getrandbits(96):024x}" if rng.random() < 0.33 else None,
            "stripe_customer_id": rng.choice(customers),
            "value": value,
            "timestamp": NOW_MS - 3_600_000 + i * 3_600_000 // 1_000_000 - rng.randint(0, 2_000),
            "attributes": attributes,
        }


def encode_chunk(schema: Any, records: Iterator[dict[str, Any]], first_offset: int) -> list[KafkaRecord]:
    chunk = []
    buffer = io.BytesIO()
    for n, record in enumerate(records):
        buffer.seek(0)
        buffer.truncate()
        fastavro.schemaless_writer(buffer, schema, record)
        offset = first_offset + n
        chunk.append(
            KafkaRecord(
                TOPIC,
                offset % PARTITIONS,
                offset // PARTITIONS,
                None,
                buffer.getvalue(),
                record["timestamp"] + 5,
            )
        )
    return chunk


def naive_mapper(settings: TopicSettings) -> Callable[[KafkaRecord, int], MeterEvent]:
    """What one writes first: fastavro with the schema as written, Decimal for every value."""
    schema = fastavro.parse_schema(json.loads(Path(settings.schema_path).read_text()))

    def map_record(record: KafkaRecord, now_ms: int) -> MeterEvent:
        assert record.value is not None
        datum = fastavro.schemaless_reader(io.BytesIO(record.value), schema)
        when: datetime = datum["timestamp"]
        millis = int(when.timestamp() * 1000)
        if (
            not now_ms - settings.max_past_seconds * 1000
            <= millis
            <= now_ms + settings.max_future_seconds * 1000
        ):
            raise ValueError("timestamp out of range")
        value = format(Decimal(str(datum["value"])).normalize(), "f")
        identifier = datum["identifier"] or f"kafka:{record.topic}:{record.partition}:{record.offset}"
        payload = {
            **(datum["attributes"] or {}),
            "stripe_customer_id": datum["stripe_customer_id"],
            "value": value,
        }
        timestamp = when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return MeterEvent(identifier, settings.event_name, timestamp, payload)

    return map_record


def run(map_record: Callable[[KafkaRecord, int], MeterEvent], chunk: list[KafkaRecord]) -> float:
    start = time.perf_counter()
    for record in chunk:
        map_record(record, NOW_MS)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="passes per chunk and path; the fastest counts")
    parser.add_argument("--profile", action="store_true", help="pyinstrument over one chunk of the fast path")
    args = parser.parse_args()

    # The records carry fractions: the topic allows them, as on an account with decimal values enabled.
    settings = TopicSettings(
        name=TOPIC, event_name="api_requests", schema_path=DEFAULT_SCHEMA, decimal_values=True
    )
    mapper = Mapper(settings)
    naive = naive_mapper(settings)
    schema = mapper.decoder.schema.parsed
    rng = random.Random(42)
    print(f"python {sys.version.split()[0]}, compiled reader: {mapper.decoder.schema.compiled is not None}")

    if args.profile:
        from pyinstrument import Profiler

        chunk = encode_chunk(schema, make_records(args.chunk, 0, rng), 0)
        profiler = Profiler(interval=0.0001)
        profiler.start()
        run(mapper.map_record, chunk)
        profiler.stop()
        print(profiler.output_text(unicode=True, color=False, show_all=False))
        return

    best = {"kafka-stripe": 0.0, "naive baseline": 0.0}
    total = {"kafka-stripe": 0.0, "naive baseline": 0.0}
    paths = {"kafka-stripe": mapper.map_record, "naive baseline": naive}
    done = 0
    while done < args.records:
        count = min(args.chunk, args.records - done)
        chunk = encode_chunk(schema, make_records(count, done, rng), done)
        # Same records, same answers (the naive path renders doubles with repr, so compare the rest).
        for record in chunk[:200]:
            ours, theirs = mapper.map_record(record, NOW_MS), naive(record, NOW_MS)
            assert (ours.identifier, ours.timestamp) == (theirs.identifier, theirs.timestamp), (ours, theirs)
        passes: dict[str, list[float]] = {label: [] for label in paths}
        for _ in range(args.repeat):
            for label, map_record in paths.items():
                passes[label].append(run(map_record, chunk))
        for label, seconds in passes.items():
            best[label] += min(seconds)
            total[label] += sum(seconds) / len(seconds)
        done += count

    for label in paths:
        print(
            f"{label:>15}: {done:,} records in {best[label]:.2f} s = {done / best[label]:>9,.0f} records/s, "
            f"{best[label] / done * 1e6:5.2f} µs/record (mean of passes {total[label] / done * 1e6:5.2f} µs)"
        )
    rate = done / best["kafka-stripe"]
    print(f"speed-up over the baseline: {best['naive baseline'] / best['kafka-stripe']:.2f}x")
    print(f"target >= {TARGET_RPS:,.0f} records/s: {'met' if rate >= TARGET_RPS else 'MISSED'}")


if __name__ == "__main__":
    main()
