"""``kafka-stripe reconcile --context`` on a real broker with the connector and the emulator over HTTP:
a topic whose records name their Stripe context reconciles per account (each account's meter, its own
deduplication, the other accounts' records left out), a cancellation in one account shows there only,
and a context the key cannot act in is refused clearly."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest

from connector.commands import reconcile as reconcile_command
from connector.config.settings import DEFAULT_SCHEMA
from connector.config.topics import topic_env_key
from connector.kafka.topics import current_namespace
from connector.mapping.identifiers import derived_identifier
from tests.support.harness import (
    API_KEY,
    ConnectorProcess,
    committed,
    connector_env,
    produce,
    stripe,
    use_connector_env,
    wait_until,
)

HOUR = 3600
TENANTS = ("acct_RecA1", "acct_RecB2")
CONTEXTS: tuple[str | None, ...] = (None, *TENANTS)
SCHEMA_JSON = json.loads(DEFAULT_SCHEMA.read_text())
SCHEMA_JSON["fields"].append({"name": "tenant", "type": ["null", "string"], "default": None})
SCHEMA = fastavro.parse_schema(SCHEMA_JSON)


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    from connector.devtools.emulator import EmulatorProcess

    with EmulatorProcess(context=list(TENANTS)) as emulator:
        yield emulator.url


def iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(seconds))


def record(customer: str, value: int, ts_ms: int, tenant: str | None, identifier: str | None = None) -> bytes:
    fields = {"identifier": identifier, "stripe_customer_id": customer, "value": value, "timestamp": ts_ms}
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, SCHEMA, fields | {"attributes": None, "tenant": tenant})
    return buffer.getvalue()


def post(url: str, path: str, context: str | None, form: dict[str, str]) -> dict[str, Any]:
    with stripe(url) as client:
        headers = {} if context is None else {"Stripe-Context": context}
        response = client.post(path, data=form, headers=headers)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


def reconcile_json(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, dict[str, Any] | None, str]:
    use_connector_env(monkeypatch, env)
    from connector.cli import build_parser

    status = reconcile_command.run(build_parser("reconcile").parse_args(["reconcile", *args, "--json"]))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and API_KEY not in captured.out + captured.err, captured.err
    return status, (json.loads(captured.out) if captured.out.strip() else None), captured.err


def test_each_context_reconciles_on_its_own(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    group_id: str,
    stripe_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = make_topic(partitions=2)
    make_topic(partitions=1, name=f"{topic}.dlq")
    event_name = f"ev_{uuid.uuid4().hex[:8]}"
    for context in CONTEXTS:  # one meter per account, the same event name
        form = {"display_name": event_name, "event_name": event_name, "default_aggregation[formula]": "sum"}
        post(stripe_url, "/v1/billing/meters", context, form)
    start = int(time.time()) - int(time.time()) % HOUR - 3 * HOUR
    # (partition, offset) of every record: produce() spreads them round-robin over two partitions.
    plan: list[tuple[str, int, int, str | None, str | None]] = []
    truth: dict[str | None, dict[str, Decimal]] = {context: {} for context in CONTEXTS}
    for n in range(36):
        context, customer, value = CONTEXTS[n % 3], ("cus_X", "cus_Y")[n % 2], n % 7 + 1
        plan.append((customer, value, (start + 90 * n) * 1000, context, None))
        truth[context][customer] = truth[context].get(customer, Decimal(0)) + value
    # One identifier of its own in two accounts: each account counts it once, neither is a duplicate.
    for context in (None, TENANTS[0]):
        plan.append(("cus_X", 100, (start + 60) * 1000, context, "shared-1"))
        truth[context]["cus_X"] += 100
    plan.append(("cus_X", 1000, (start + 60) * 1000, "not-an-account", None))  # dead-lettered
    schema_path = tmp_path / "tenants.avsc"
    schema_path.write_text(json.dumps(SCHEMA_JSON))
    key = f"TOPIC_{topic_env_key(topic)}_"
    env = connector_env(kafka_bootstrap, stripe_url, [topic], group_id)
    env |= {key + "EVENT_NAME": event_name, key + "SCHEMA": str(schema_path), key + "CONTEXT_FIELD": "tenant"}
    ends = produce(kafka_bootstrap, topic, [(None, record(*p)) for p in plan], 2)
    with ConnectorProcess(env, tmp_path) as connector:
        wait_until(lambda: committed(kafka_bootstrap, group_id, ends) == ends, 60, message="every record")
        assert connector.stop() == 0, connector.log()

    window = ("--topic", topic, "--start", iso(start), "--end", iso(start + 2 * HOUR))

    def reconciled(context: str | None) -> dict[str, Any]:
        args = (*window, "--context", context) if context else window
        status, document, err = reconcile_json(env, monkeypatch, capsys, *args)
        assert document is not None, err
        assert document["context"] == context
        return document | {"status": status}

    for context in CONTEXTS:
        document = reconciled(context)
        assert document["status"] == 0, document
        assert {r["customer"]: Decimal(r["kafka"]) for r in document["rows"]} == truth[context]
        assert document["kafka"]["rejected"] == {"invalid_context": 1}
        mine = sum(1 for p in plan if p[3] == context)
        assert document["kafka"]["other_contexts"] == len(plan) - 1 - mine
        assert document["kafka"]["duplicates"] == 0

    # One event cancelled in the first connected account: that account differs by its value, no other.
    index = next(n for n, p in enumerate(plan) if p[3] == TENANTS[0] and p[4] is None)
    customer, value = plan[index][0], plan[index][1]
    namespace = current_namespace({"bootstrap.servers": kafka_bootstrap}, topic)
    identifier = derived_identifier(topic, namespace, index % 2, index // 2)
    form = {"event_name": event_name, "type": "cancel", "cancel[identifier]": identifier}
    post(stripe_url, "/v1/billing/meter_event_adjustments", TENANTS[0], form)
    document = reconciled(TENANTS[0])
    assert document["status"] == 1
    assert [(r["customer"], Decimal(r["difference"])) for r in document["rows"] if r["differs"]] == [
        (customer, -value)
    ]
    assert reconciled(None)["status"] == 0 and reconciled(TENANTS[1])["status"] == 0

    # A context the key cannot act in: refused, naming it and Stripe's reason.
    status, document, err = reconcile_json(env, monkeypatch, capsys, *window, "--context", "acct_Stranger7")
    assert status == 2 and document is None
    assert "could not look up the meter in context acct_Stranger7" in err
    assert "does not have access to account 'acct_Stranger7'" in err
