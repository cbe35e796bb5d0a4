"""``kafka-stripe reconcile`` on a real broker and the emulator over HTTP: zero differences after a clean
run of the connector, the exact difference after some events are cancelled at Stripe, every formula,
and readable refusals of bad arguments."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from connector.commands import reconcile as reconcile_command
from connector.config.secrets import Secret
from connector.config.settings import TopicSettings
from connector.config.topics import topic_env_key
from connector.kafka.topics import current_namespace
from connector.mapping.identifiers import derived_identifier
from connector.mapping.mapper import Mapper
from connector.records import KafkaRecord, MeterEvent
from connector.stripe.sender import MeterEventSender
from tests.support.harness import (
    API_KEY,
    ConnectorProcess,
    committed,
    connector_env,
    create_meter,
    emulator_stats,
    encode,
    stripe,
    usage,
    use_connector_env,
    wait_until,
)

REPO = Path(__file__).resolve().parents[3]
HOUR = 3600
MS = 1000


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    from connector.devtools.emulator import EmulatorProcess

    # Compressing like a Stripe that gzips for clients accepting it: reconcile's v1 client must decode.
    # The records carry fractions: an account with decimal values enabled.
    with EmulatorProcess(compress=True, decimal_values=True) as emulator:
        yield emulator.url


def hour_start(seconds: float) -> int:
    return int(seconds) - int(seconds) % HOUR


def iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(seconds))


Placed = tuple[int, bytes]  # (partition, Avro bytes)


def produce(bootstrap: str, topic: str, records: Sequence[Placed]) -> dict[int, list[int]]:
    """Produce each record to its partition, in order; returns the offsets per partition."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    offsets: dict[int, list[int]] = {}
    errors: list[str] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            offsets.setdefault(msg.partition(), []).append(msg.offset())

    for partition, value in records:
        producer.produce(topic, value=value, partition=partition, on_delivery=report)
    assert producer.flush(30) == 0 and not errors, errors
    return {p: sorted(o) for p, o in offsets.items()}


def reconcile_in_process(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
) -> tuple[int, dict[str, Any] | None, str]:
    """``reconcile ARGS --json`` in-process with exactly ``env``: (status, document or None, stderr)."""
    use_connector_env(monkeypatch, env)
    from connector.cli import build_parser

    parsed = build_parser("reconcile").parse_args(["reconcile", *args, "--json"])
    status = reconcile_command.run(parsed)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and API_KEY not in captured.out + captured.err
    document = json.loads(captured.out) if captured.out.strip() else None
    return status, document, captured.err


def cancel(url: str, event_name: str, identifier: str) -> None:
    with stripe(url) as client:
        response = client.post(
            "/v1/billing/meter_event_adjustments",
            data={"event_name": event_name, "type": "cancel", "cancel[identifier]": identifier},
        )
        assert response.status_code == 200, response.text


def rows(document: dict[str, Any]) -> dict[tuple[str, str], tuple[str, str, str]]:
    return {
        (r["customer"], r["window_start"]): (r["kafka"], r["stripe"], r["difference"])
        for r in document["rows"]
    }


# ------------------------------------------------------------------------------------------ end to end


def test_a_clean_run_reconciles_and_cancellations_show_exactly(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    group_id: str,
    stripe_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = make_topic(partitions=3)
    make_topic(partitions=1, name=f"{topic}.dlq")
    event_name = f"ev_{uuid.uuid4().hex[:8]}"
    create_meter(stripe_url, event_name)
    start = hour_start(time.time()) - 3 * HOUR  # three whole hours ago: [start, start + 2h) is reconciled
    end = start + 2 * HOUR

    # (partition, customer, value, seconds after start, own identifier)
    plan: list[tuple[int, str, Any, int, str | None]] = []
    for n in range(60):
        customer = ("cus_A", "cus_B", "cus_C")[n % 3]
        value: Any = n % 7 + 1 if n % 2 else Decimal(f"{n}.25")
        plan.append((n % 3, customer, value, (n * 113) % (2 * HOUR), None))
    plan += [
        (1, "cus_B", 40, 600, "retried-1"),  # a producer retry: the same event twice, counted once
        (1, "cus_B", 40, 600, "retried-1"),
        (2, "cus_C", 1000, -2 * HOUR, None),  # before the range
        (0, "cus_A", 1000, 2 * HOUR + 60, None),  # after it (end excluded)
    ]
    records: list[Placed] = [
        (p, encode(usage(c, v, (start + s) * MS, identifier=i))) for p, c, v, s, i in plan
    ]
    records.append((0, b"\x00not avro"))  # dead-lettered by the connector, skipped by reconcile
    offsets = produce(kafka_bootstrap, topic, records)
    ends = {(topic, p): o[-1] + 1 for p, o in offsets.items()}

    expected: dict[tuple[str, int], Decimal] = {}
    for _, customer, value, seconds, _ in plan[:61]:  # the in-range ones, the retry once
        window = start + seconds - seconds % HOUR
        expected[(customer, window)] = expected.get((customer, window), Decimal(0)) + Decimal(value)

    env = connector_env(
        kafka_bootstrap,
        stripe_url,
        [topic],
        group_id,
        **{f"TOPIC_{topic_env_key(topic)}_EVENT_NAME": event_name},
        **{f"TOPIC_{topic_env_key(topic)}_DECIMAL_VALUES": "true"},
    )
    with ConnectorProcess(env, tmp_path) as connector:
        wait_until(
            lambda: committed(kafka_bootstrap, group_id, ends) == ends or connector.proc.poll() is not None,
            timeout=60,
            message="the connector to commit every record",
        )
        assert connector.proc.poll() is None, connector.log()
        assert connector.stop() == 0, connector.log()

    # Through the command line, as an operator runs it: no differences, exit 0.
    command = ["reconcile", "--topic", topic, "--start", iso(start), "--end", iso(end), "--window", "hour"]
    result = subprocess.run(
        [sys.executable, "-m", "connector", *command],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No differences: 6 customer window(s) match." in result.stdout
    assert "1 duplicate identifier(s) counted once" in result.stdout
    assert "1 record(s) rejected by the mapping, skipped: undecodable 1" in result.stdout
    assert API_KEY not in result.stdout + result.stderr

    status, document, _ = reconcile_in_process(
        env,
        monkeypatch,
        capsys,
        "--topic",
        topic,
        "--start",
        iso(start),
        "--end",
        iso(end),
        "--window",
        "hour",
    )
    assert status == 0 and document is not None
    assert document["kafka"] == {
        "records_read": 65,
        "events_in_range": 61,
        "duplicates": 1,
        "rejected": {"undecodable": 1},
        "other_contexts": 0,
    }
    assert document["context"] is None and document["corrections"] is None
    want = {(c, iso(w).replace("Z", ":00Z")): str(v.normalize()) for (c, w), v in expected.items()}
    got = {key: kafka for key, (kafka, stripe_value, _) in rows(document).items() if kafka == stripe_value}
    assert {k: Decimal(v) for k, v in got.items()} == {k: Decimal(v) for k, v in want.items()}
    # httpx, reconcile's client, accepts gzip: with compression on, its reads arrived gzipped.
    assert emulator_stats(stripe_url)["responses_compressed"] > 0

    # Cancel two of cus_A's events in the second hour at Stripe: exactly that window differs, by their sum.
    second = start + HOUR
    # cus_A's records are plan[0], plan[3], ... on partition 0, at its offsets 0, 1, ...
    cancelled = [
        (offsets[0][n // 3], v) for n, (p, c, v, s, _) in enumerate(plan[:60]) if p == 0 and s >= HOUR
    ]
    cancelled = cancelled[:2]
    assert len(cancelled) == 2
    for offset, _ in cancelled:
        cancel(stripe_url, event_name, derived_identifier(topic, topic_id(kafka_bootstrap, topic), 0, offset))
    gone = sum(Decimal(v) for _, v in cancelled)

    status, document, _ = reconcile_in_process(
        env,
        monkeypatch,
        capsys,
        "--topic",
        topic,
        "--start",
        iso(start),
        "--end",
        iso(end),
        "--window",
        "hour",
    )
    assert status == 1 and document is not None and document["differences"] == 1
    (row,) = [r for r in document["rows"] if r["differs"]]
    assert (row["customer"], row["window_start"]) == ("cus_A", iso(second).replace("Z", ":00Z"))
    assert Decimal(row["difference"]) == -gone
    assert Decimal(row["kafka"]) - Decimal(row["stripe"]) == gone

    # One total per customer over the whole range: the same difference, now on cus_A's single row.
    status, document, _ = reconcile_in_process(
        env, monkeypatch, capsys, "--topic", topic, "--start", iso(start), "--end", iso(end)
    )
    assert status == 1 and document is not None
    assert [(r["customer"], Decimal(r["difference"])) for r in document["rows"] if r["differs"]] == [
        ("cus_A", -gone)
    ]
    assert len(document["rows"]) == 3

    # --customer narrows the comparison; a customer Kafka knows nothing of is compared too (0 vs 0).
    status, document, _ = reconcile_in_process(
        env,
        monkeypatch,
        capsys,
        *("--topic", topic, "--start", iso(start), "--end", iso(end)),
        *("--customer", "cus_B", "--customer", "cus_Nobody"),
    )
    assert status == 0 and document is not None
    assert sorted(r["customer"] for r in document["rows"]) == ["cus_B", "cus_Nobody"]


def topic_id(bootstrap: str, topic: str) -> str:
    """The topic's id: the namespace of its derived identifiers."""
    return current_namespace({"bootstrap.servers": bootstrap}, topic)


def deliver(
    url: str, topic: TopicSettings, records: Sequence[KafkaRecord], bootstrap: str
) -> list[MeterEvent]:
    """Map and send records the way the connector would (no connector process needed)."""
    mapper = Mapper(topic)
    mapper.use_namespace(topic_id(bootstrap, topic.name))
    now_ms = int(time.time() * MS)
    events = [mapper.map_record(record, now_ms) for record in records]

    async def send() -> None:
        async with MeterEventSender(
            api_key=Secret(API_KEY), api_base=url, meter_events_base=url, max_in_flight=4
        ) as sender:
            for n in range(0, len(events), 100):
                result = await sender.send(events[n : n + 100])
                assert result.status == "delivered" and not result.rejected, result

    asyncio.run(send())
    return events


@pytest.mark.parametrize(("formula", "hour_values"), [("count", ("3", "2")), ("last", ("9", "4.5"))])
def test_count_and_last_formulas(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    group_id: str,
    stripe_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    formula: str,
    hour_values: tuple[str, str],
) -> None:
    topic = make_topic(partitions=2)
    event_name = f"ev_{uuid.uuid4().hex[:8]}"
    create_meter(stripe_url, event_name, formula=formula)
    start = hour_start(time.time()) - 4 * HOUR
    # The latest event of an hour lies on the other partition than the one produced last.
    plan = [(0, 5, 100), (1, 9, 3000), (0, 7, 200), (1, 4.5, 3700), (0, 8, 3650)]
    offsets = produce(
        kafka_bootstrap, topic, [(p, encode(usage("cus_L", v, (start + s) * MS))) for p, v, s in plan]
    )
    positions = {0: iter(offsets[0]), 1: iter(offsets[1])}
    records = [
        KafkaRecord(topic, p, next(positions[p]), None, encode(usage("cus_L", v, (start + s) * MS)), None)
        for p, v, s in plan
    ]
    settings = TopicSettings(name=topic, event_name=event_name, decimal_values=True)
    deliver(stripe_url, settings, records, kafka_bootstrap)

    env = connector_env(
        kafka_bootstrap,
        stripe_url,
        [topic],
        group_id,
        **{f"TOPIC_{topic_env_key(topic)}_EVENT_NAME": event_name},
        **{f"TOPIC_{topic_env_key(topic)}_DECIMAL_VALUES": "true"},
    )
    status, document, _ = reconcile_in_process(
        env,
        monkeypatch,
        capsys,
        *("--topic", topic, "--start", iso(start), "--end", iso(start + 2 * HOUR), "--window", "hour"),
    )
    assert status == 0 and document is not None, document
    assert document["formula"] == formula
    assert [(r["kafka"], r["stripe"]) for r in document["rows"]] == [(v, v) for v in hour_values]

    # A late correction for the first hour's latest minute: Kafka and Stripe now disagree on "last".
    late = derived_identifier(topic, topic_id(kafka_bootstrap, topic), 1, offsets[1][0])
    cancel(stripe_url, event_name, late)
    status, document, _ = reconcile_in_process(
        env,
        monkeypatch,
        capsys,
        *("--topic", topic, "--start", iso(start), "--end", iso(start + 2 * HOUR), "--window", "hour"),
    )
    assert status == 1 and document is not None
    first = document["rows"][0]
    assert first["differs"] and first["kafka"] == hour_values[0]
    assert first["stripe"] == ("2" if formula == "count" else "7")


# ------------------------------------------------------------------------------------------- arguments


def test_bad_arguments_are_refused_clearly(
    kafka_bootstrap: str,
    stripe_url: str,
    group_id: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = connector_env(kafka_bootstrap, stripe_url, ["usage"], group_id)

    def refused(*args: str) -> str:
        status, document, err = reconcile_in_process(env, monkeypatch, capsys, *args)
        assert status == 2 and document is None
        assert err.startswith("kafka-stripe reconcile: "), err
        return err

    err = refused(
        "--topic", "usage", "--start", "2026-11-01T00:30Z", "--end", "2026-11-02T00:00Z", "--window", "hour"
    )
    assert "--start 2026-11-01T00:30:00Z is not aligned to the hour (required with --window hour)" in err
    assert "use 2026-11-01T00:00:00Z or 2026-11-01T01:00:00Z" in err
    err = refused(
        "--topic", "usage", "--start", "2026-11-01T00:00Z", "--end", "2026-11-02T05:00Z", "--window", "day"
    )
    assert "--end 2026-11-02T05:00:00Z is not aligned to a day (00:00 UTC)" in err
    err = refused("--topic", "usage", "--start", "2026-11-01T00:00:30Z", "--end", "2026-11-01T00:00Z")
    assert "not aligned to the minute" in err and "--end 2026-11-01T00:00:00Z must be after --start" in err
    assert "no time zone" in refused("--topic", "usage", "--start", "2026-11-01T00:00", "--end", "2026-11-02")
    assert "not a date-time" in refused("--topic", "usage", "--start", "yesterday", "--end", "2026-11-02")
    assert "'other' is not consumed" in refused(
        "--topic", "other", "--start", "2026-11-01", "--end", "2026-11-02"
    )


def test_partitions_are_read_to_their_real_end(
    kafka_bootstrap: str, make_topic: Callable[..., str], group_id: str, stripe_url: str
) -> None:
    """More records than one poll returns, in one big last batch: Tansu's high watermark (the last batch's
    base offset + 1) is far short of the end, and reading must not stop there."""
    from confluent_kafka import TopicPartition

    from connector.config.environment import load_settings
    from connector.kafka.clients import reader_consumer
    from connector.kafka.reader import PartitionReader, partition_metadata, watermarks

    topic = make_topic(partitions=2)
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "linger.ms": 500, "batch.num.messages": 10_000}
    )
    for n in range(1500):
        producer.produce(topic, value=b"%d" % n, partition=0)
    producer.produce(topic, value=b"alone", partition=1)
    assert producer.flush(30) == 0

    settings = load_settings(connector_env(kafka_bootstrap, stripe_url, [topic], group_id))
    consumer = reader_consumer(settings, f"probe-{group_id}")
    try:
        partitions = partition_metadata(consumer, topic, 10)
        marks = watermarks(consumer, topic, partitions, 10)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        reader = PartitionReader(
            consumer,
            topic,
            dict.fromkeys(partitions, 0),
            {p: marks[p][1] for p in partitions},
            dict.fromkeys(partitions, 0),
        )
        seen = [(message.partition(), message.value()) for message in reader]
    finally:
        consumer.close()
    assert len(seen) == 1501 and seen.count((1, b"alone")) == 1
    assert [value for partition, value in seen if partition == 0] == [b"%d" % n for n in range(1500)]
    assert reader.positions() == {0: 1500, 1: 1} and not reader.warnings
    # The connector's group was never touched.
    assert committed(kafka_bootstrap, group_id, [(topic, 0), (topic, 1)]) == {
        (topic, 0): -1001,
        (topic, 1): -1001,
    }
