"""``kafka-stripe reconcile`` of a corrected stream, on a real broker with the connector and the emulator
over HTTP: after the connector cancelled and replaced usage (by coordinates and by identifier, twice for
one original, a correction of a replacement, one of usage Stripe never had), reconcile reading the
usage and corrections topics finds no difference and counts what it applied and could not match."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest

from connector.commands import reconcile as reconcile_command
from connector.config.settings import DEFAULT_CORRECTION_SCHEMA
from connector.config.topics import topic_env_key
from connector.kafka.topics import current_namespace
from connector.mapping.identifiers import derived_identifier
from tests.support.harness import (
    API_KEY,
    ConnectorProcess,
    committed,
    connector_env,
    create_meter,
    encode,
    produce,
    usage,
    use_connector_env,
    wait_until,
)

REPO = Path(__file__).resolve().parents[3]
HOUR = 3600
CORRECTION_SCHEMA = fastavro.parse_schema(json.loads(DEFAULT_CORRECTION_SCHEMA.read_text()))


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    from connector.devtools.emulator import EmulatorProcess

    with EmulatorProcess() as emulator:
        yield emulator.url


def iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(seconds))


def correction_bytes(event_name: str, customer: str, ts_ms: int, **fields: Any) -> bytes:
    record: dict[str, Any] = dict.fromkeys(
        ("original_identifier", "original_topic", "original_partition", "original_offset"), None
    )
    record |= {"event_name": event_name, "stripe_customer_id": customer, "timestamp": ts_ms}
    record |= {"original_value": None, "replacement_value": None, "reason": "test", "attributes": None}
    record.update(fields)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, CORRECTION_SCHEMA, record)
    return buffer.getvalue()


def reconcile_json(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, dict[str, Any]]:
    use_connector_env(monkeypatch, env)
    from connector.cli import build_parser

    status = reconcile_command.run(build_parser("reconcile").parse_args(["reconcile", *args, "--json"]))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and API_KEY not in captured.out + captured.err, captured.err
    return status, json.loads(captured.out)


class Stream:
    """Usage records produced round-robin over two partitions, and what Stripe should hold per customer."""

    def __init__(self, topic: str, start: int, count: int) -> None:
        self.topic = topic
        # (partition, offset, customer, value, event ms, own identifier)
        self.records: list[tuple[int, int, str, int, int, str | None]] = []
        for n in range(count):
            customer = ("cus_A", "cus_B", "cus_C")[n % 3]
            own = f"order-{n}" if n % 4 == 0 else None
            self.records.append((n % 2, n // 2, customer, n % 9 + 1, (start + 60 * n) * 1000, own))
        self.truth: dict[str, Decimal] = {}
        for *_, customer, value, _, _ in self.records:
            self.truth[customer] = self.truth.get(customer, Decimal(0)) + value

    def values(self) -> list[tuple[bytes | None, bytes]]:
        return [(None, encode(usage(c, v, ms, identifier=own))) for _, _, c, v, ms, own in self.records]


def test_a_corrected_stream_reconciles_to_zero_differences(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    group_id: str,
    stripe_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic, fixes = make_topic(partitions=2), make_topic(partitions=2)
    for name in (topic, fixes):
        make_topic(partitions=1, name=f"{name}.dlq")
    event_name = f"ev_{uuid.uuid4().hex[:8]}"
    create_meter(stripe_url, event_name)
    start = int(time.time()) - int(time.time()) % HOUR - 3 * HOUR
    end = start + 2 * HOUR
    stream = Stream(topic, start, 40)
    env = connector_env(kafka_bootstrap, stripe_url, [topic, fixes], group_id)
    env[f"TOPIC_{topic_env_key(topic)}_EVENT_NAME"] = event_name
    del env[f"TOPIC_{topic_env_key(fixes)}_EVENT_NAME"]
    env[f"TOPIC_{topic_env_key(fixes)}_KIND"] = "corrections"
    ends = produce(kafka_bootstrap, topic, stream.values(), 2)

    def fix(index: int, replacement: int | None, *, by_id: str | None = None) -> tuple[bytes | None, bytes]:
        partition, offset, customer, value, ms, own = stream.records[index]
        where: dict[str, Any] = (
            {"original_identifier": by_id or own}
            if by_id or own
            else {"original_topic": topic, "original_partition": partition, "original_offset": offset}
        )
        replaced = None if replacement is None else str(replacement)
        if by_id is None:
            stream.truth[customer] += (replacement or 0) - value
        return None, correction_bytes(
            event_name, customer, ms, original_value=value, replacement_value=replaced, **where
        )

    first_round = [
        fix(1, None),  # cancelled only, named by coordinates
        fix(2, 50),  # replaced, by coordinates
        fix(4, 70),  # replaced, named by its own identifier
        (None, correction_bytes(event_name, "cus_A", (start + 30) * 1000, original_identifier="never-sent")),
    ]
    # Two corrections of one original: cancelled once, both replacements count.
    _, _, customer, value, _, _ = stream.records[5]
    first_round += [fix(5, 11), fix(5, 12)]
    stream.truth[customer] += value  # the original went once, not twice
    with ConnectorProcess(env, tmp_path) as connector:
        wait_until(lambda: committed(kafka_bootstrap, group_id, ends) == ends, 60, message="the usage")
        # Produced after their originals were delivered (one per partition so coordinates stay known).
        fix_ends = produce(kafka_bootstrap, fixes, first_round, 1)
        wait_until(lambda: committed(kafka_bootstrap, group_id, fix_ends) == fix_ends, 60, message="fixes")
        # A correction of a replacement: fixes[0]@1 replaced record 2 with 50; now 55 instead.
        namespace = current_namespace({"bootstrap.servers": kafka_bootstrap}, fixes)
        replacement = derived_identifier(fixes, namespace, 0, 1)
        chained = [fix(2, 55, by_id=replacement)]
        stream.truth[stream.records[2][2]] += 55 - 50
        fix_ends = produce(kafka_bootstrap, fixes, chained, 1)
        wait_until(
            lambda: committed(kafka_bootstrap, group_id, fix_ends) == fix_ends, 60, message="the chain"
        )
        assert connector.stop() == 0, connector.log()

    args = ("--topic", topic, "--start", iso(start), "--end", iso(end))
    status, document = reconcile_json(env, monkeypatch, capsys, *args)
    assert status == 0, document
    assert {r["customer"]: Decimal(r["kafka"]) for r in document["rows"]} == stream.truth
    corrections = document["corrections"]
    assert corrections["topics"] == [fixes] and corrections["records_read"] == 7
    assert (corrections["applied"], corrections["cancelled"], corrections["replaced"]) == (6, 5, 5)
    assert corrections["unmatched"] == 1 and "never-sent" in corrections["unmatched_samples"][0]
    assert corrections["inconsistent"] == 1  # the chain's original_value is the first original's

    # Without the corrections topic, the same usage differs from Stripe: the corrections are what count.
    usage_only = env | {"CONNECTOR_TOPICS": topic}
    del usage_only[f"TOPIC_{topic_env_key(fixes)}_KIND"]
    status, document = reconcile_json(usage_only, monkeypatch, capsys, *args)
    assert status == 1 and document["corrections"] is None and document["differences"] == 2

    # The text report, as an operator reads it.
    result = subprocess.run(
        [sys.executable, "-m", "connector", "reconcile", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "in the platform account" in result.stdout.splitlines()[0]
    assert f"7 correction record(s) read from {fixes}" in result.stdout
    assert "6 applied (5 original(s) cancelled, 5 replacement(s) added); 1 unmatched" in result.stdout
    assert "No differences: 3 customer window(s) match." in result.stdout
