"""``kafka-stripe dlq replay`` on a real broker and the emulator over HTTP: dead letters whose cause is gone
are delivered once under their original identifiers, the others are reported with their reason, a second
replay sends nothing, and ``--dry-run`` sends and commits nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from connector.commands import dlq as replay_command
from connector.commands.dlq_replay import DEFAULT_GROUP
from connector.config.secrets import Secret
from connector.config.settings import TopicSettings
from connector.config.topics import topic_env_key
from connector.devtools.emulator import EmulatorProcess
from connector.errors import DecodeError, MappingError
from connector.kafka.deadletter import dead_letter_headers
from connector.kafka.topics import current_namespace
from connector.mapping.identifiers import derived_identifier
from connector.mapping.mapper import Mapper
from connector.records import KafkaRecord
from connector.stripe.sender import MeterEventSender
from tests.support.harness import (
    API_KEY,
    committed,
    connector_env,
    create_meter,
    emulator_stats,
    encode,
    meter_total,
    usage,
    use_connector_env,
)

REPO = Path(__file__).resolve().parents[3]
DAY_MS = 86_400_000


@pytest.fixture
def stripe_url() -> Iterator[str]:
    # dlq replay sends with the connector's sender, which asks for uncompressed answers: it must work
    # against a Stripe that compresses for clients accepting it.
    with EmulatorProcess(compress=True) as emulator:
        yield emulator.url


def replay_in_process(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    use_connector_env(monkeypatch, env)
    from connector.cli import build_parser

    parsed = build_parser("dlq").parse_args(["dlq", "replay", *args])
    status = replay_command.run(parsed)
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "Traceback" not in output and API_KEY not in output, output
    return status, output


def lines_starting(output: str, status: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(f"{status:<14} ")]


def test_replay_delivers_fixed_records_once(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    group_id: str,
    stripe_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = make_topic(partitions=1)
    dlq = make_topic(partitions=2, name=f"{topic}.dlq")
    event_name = f"ev_{uuid.uuid4().hex[:8]}"
    meter_id = create_meter(stripe_url, event_name)
    now_ms = int(time.time() * 1000)

    # The original records, as they were produced (a producer's clock ran 10 minutes ahead, so the
    # connector refused most as timestamp_in_future; they are valid now).
    originals = [
        usage("cus_R", 1, now_ms - 600_000),
        usage("cus_R", 2, now_ms - 590_000),
        usage("cus_R", 3, now_ms - 580_000),
        usage("cus_R", 4, now_ms - 570_000),  # this one Stripe did receive after all
        usage("cus_R", 50, now_ms - 2 * DAY_MS),  # two days old: beyond the 24-hour identifier window
        usage("cus_R", 600, now_ms - 40 * DAY_MS),  # beyond Stripe's 35 days: can never be sent
    ]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    offsets: list[int] = []
    for record in originals:
        producer.produce(
            topic,
            value=encode(record),
            partition=0,
            timestamp=record["timestamp"],
            on_delivery=lambda err, msg: offsets.append(msg.offset()),
        )
    assert producer.flush(30) == 0
    kafka_records = [
        KafkaRecord(topic, 0, offset, None, encode(record), record["timestamp"])
        for offset, record in zip(offsets, originals, strict=True)
    ]
    future = MappingError("timestamp: 10 minutes ahead", code="timestamp_in_future")
    garbage = KafkaRecord(topic, 0, 999, None, b"\x00garbage", now_ms)
    stray = KafkaRecord("elsewhere", 3, 7, None, encode(originals[0]), now_ms)

    # The dead-letter topic: (DLQ partition, original record, error); plus one message of another tool.
    dead_letters: list[tuple[int, KafkaRecord, Any]] = [
        (0, kafka_records[0], future),
        (1, kafka_records[1], future),
        (0, kafka_records[2], future),
        (1, kafka_records[3], MappingError("Stripe timed out", code="stripe_rejected")),
        (0, kafka_records[4], future),
        (1, kafka_records[5], MappingError("too old", code="timestamp_too_far_in_past")),
        (0, garbage, DecodeError("not Avro", code="undecodable")),
        (1, kafka_records[0], future),  # dead-lettered twice (a crash before the commit)
        (0, stray, future),
    ]
    for partition, record, error in dead_letters:
        producer.produce(
            dlq,
            value=record.value,
            partition=partition,
            headers=dead_letter_headers(record, error.at(record.coordinates)),
            timestamp=record.timestamp_ms or 0,
        )
    producer.produce(dlq, value=b"from another tool", partition=1, headers=[("source", b"elsewhere")])
    assert producer.flush(30) == 0
    ends = {(dlq, 0): 5, (dlq, 1): 5}

    # Stripe did accept the fourth record once, under its derived identifier.
    topic_settings = TopicSettings(name=topic, event_name=event_name)
    namespace = current_namespace({"bootstrap.servers": kafka_bootstrap}, topic)  # its topic id
    mapper = Mapper(topic_settings)
    mapper.use_namespace(namespace)
    accepted = mapper.map_record(kafka_records[3], now_ms)
    assert accepted.identifier == derived_identifier(topic, namespace, 0, offsets[3])

    async def send_once() -> None:
        async with MeterEventSender(
            api_key=Secret(API_KEY), api_base=stripe_url, meter_events_base=stripe_url
        ) as s:
            assert (await s.send([accepted])).status == "delivered"

    asyncio.run(send_once())

    env = connector_env(
        kafka_bootstrap,
        stripe_url,
        [topic],
        group_id,
        **{f"TOPIC_{topic_env_key(topic)}_EVENT_NAME": event_name},
    )
    replay_group = f"replay-{group_id}"

    # Dry run: what would happen, nothing sent, nothing committed.
    status, output = replay_in_process(
        env, monkeypatch, capsys, "--topic", dlq, "--dry-run", "--group", replay_group
    )
    assert status == 1, output
    assert len(lines_starting(output, "would send")) == 5, output
    assert "10 dead letter(s) read from" in output
    assert "5 would be sent, 4 would still fail, 1 skipped" not in output  # the duplicate is skipped too
    assert "5 would be sent, 3 would still fail, 2 skipped" in output, output
    assert emulator_stats(stripe_url)["events_received"] == 1
    assert set(committed(kafka_bootstrap, replay_group, ends).values()) == {-1001}

    # The replay.
    status, output = replay_in_process(env, monkeypatch, capsys, "--topic", dlq, "--group", replay_group)
    assert status == 1, output  # three dead letters still fail
    delivered = lines_starting(output, "delivered")
    assert len(delivered) == 5, output
    identifiers = {derived_identifier(topic, namespace, 0, offsets[n]) for n in range(5)}
    assert {line.split()[5] for line in delivered} == identifiers, delivered
    failing = "\n".join(lines_starting(output, "still failing"))
    assert "undecodable" in failing and "timestamp_too_far_in_past" in failing
    assert "topic 'elsewhere' is not in CONNECTOR_TOPICS" in failing
    skipped = "\n".join(lines_starting(output, "skipped"))
    assert "not a kafka-stripe dead letter" in skipped and "same identifier" in skipped
    assert "beyond Stripe's 24-hour identifier window" in output
    assert "older than Stripe's 35-day window" in output
    assert "10 dead letter(s) read from" in output and "5 delivered, 3 still failing, 2 skipped" in output

    # Exactly once at Stripe: 1 + 2 + 3 + 4 (received before and again now: deduplicated) + 50.
    start_s = (now_ms - 3 * DAY_MS) // 1000
    assert meter_total(stripe_url, meter_id, "cus_R", start_s, now_ms // 1000) == 60.0
    stats = emulator_stats(stripe_url)
    assert (stats["events_received"], stats["duplicates_ignored"]) == (6, 1), stats
    assert committed(kafka_bootstrap, replay_group, ends) == ends

    # A second replay, from the command line, finds nothing new and sends nothing.
    result = subprocess.run(
        [sys.executable, "-m", "connector", "dlq", "replay", "--topic", dlq, "--group", replay_group],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 dead letter(s) read from" in result.stdout and "0 delivered" in result.stdout
    assert emulator_stats(stripe_url)["events_received"] == 6

    # --from-beginning looks at everything again (a dry run here: nothing is sent or committed).
    status, output = replay_in_process(
        env, monkeypatch, capsys, "--topic", dlq, "--dry-run", "--from-beginning", "--quiet"
    )
    assert "10 dead letter(s) read from" in output and "5 would be sent" in output
    assert len(lines_starting(output, "would send")) == 1  # --quiet: only the one with a warning
    assert emulator_stats(stripe_url)["events_received"] == 6
    assert committed(kafka_bootstrap, DEFAULT_GROUP, ends) == {k: -1001 for k in ends}


def test_refusals(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    group_id: str,
    stripe_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = make_topic()
    env = connector_env(kafka_bootstrap, stripe_url, [topic], group_id)
    status, output = replay_in_process(env, monkeypatch, capsys, "--topic", topic)
    assert status == 2 and "is a consumed topic, not a dead-letter topic" in output
    status, output = replay_in_process(
        env, monkeypatch, capsys, "--topic", f"{topic}.dlq", "--group", group_id
    )
    assert status == 2 and "is the connector's own group" in output
    status, output = replay_in_process(env, monkeypatch, capsys, "--topic", f"{topic}.nowhere")
    assert status == 2 and "does not exist" in output
    assert httpx.get(f"{stripe_url}/_emulator/health", timeout=10).status_code == 200
