"""Connected accounts end to end: a real broker, the emulator over HTTP with four connected accounts,
``kafka-stripe run`` as a child process, SIGKILLed at random moments.

One topic carries three tenants and the platform (a context field), another is sent in one account
(``TOPIC_<T>_STRIPE_CONTEXT``) and corrected there by a corrections topic. A 429 storm on one account
delays only that account; an account the key cannot act in is dead-lettered with Stripe's reason; every
account's totals are exact, and ``reconcile`` finds zero differences in each context.
"""

from __future__ import annotations

import io
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import httpx
import pytest

from connector.commands.reconcile import reconcile
from connector.config.environment import load_settings
from connector.config.settings import DEFAULT_SCHEMA
from connector.config.topics import topic_env_key
from connector.kafka.deadletter import HEADER_CODE, HEADER_CONTEXT
from tests.integration.pipeline.test_e2e_corrections import correction_bytes
from tests.support.faults import read_topic
from tests.support.harness import (
    API_KEY,
    ConnectorProcess,
    committed,
    connector_env,
    produce,
    wait_until,
)

pytestmark = pytest.mark.slow

TENANTS = ("acct_1TenantA", "acct_1TenantB", "acct_1TenantC")
STATIC = "acct_1Static"
GHOST = "acct_1Ghost"  # never connected: the key cannot act in it
THROTTLED = TENANTS[1]
CUSTOMERS = [f"cus_ctx{n}" for n in range(5)]


def tenant_schema(tmp_path: Path) -> tuple[Path, Any]:
    document = json.loads(DEFAULT_SCHEMA.read_text())
    document["fields"].append({"name": "tenant", "type": ["null", "string"], "default": None})
    path = tmp_path / "tenant_usage.avsc"
    path.write_text(json.dumps(document))
    return path, fastavro.parse_schema(document)


def encode(schema: Any, record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, record)
    return buffer.getvalue()


def client(url: str, context: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    if context is not None:
        headers["Stripe-Context"] = context
    return httpx.Client(base_url=url, headers=headers, timeout=60)


def create_meter(url: str, context: str | None) -> str:
    with client(url, context) as stripe:
        response = stripe.post(
            "/v1/billing/meters",
            data={"display_name": "api", "event_name": "api_requests", "default_aggregation[formula]": "sum"},
        )
        response.raise_for_status()
        return str(response.json()["id"])


def total(url: str, context: str | None, meter: str, customer: str, around_ms: int) -> float:
    start = around_ms // 1000 - 3600
    start -= start % 60
    with client(url, context) as stripe:
        response = stripe.get(
            f"/v1/billing/meters/{meter}/event_summaries",
            params={"customer": customer, "start_time": start, "end_time": start + 7200},
        )
        response.raise_for_status()
        return float(sum(item["aggregated_value"] for item in response.json()["data"]))


def faults(url: str, context: str, **settings: Any) -> None:
    httpx.post(
        f"{url}/_emulator/faults", json={"context": context, **settings}, timeout=10
    ).raise_for_status()


class Truth:
    """What each account must have, per customer."""

    def __init__(self) -> None:
        self.by_context: dict[str | None, Counter[str]] = {c: Counter() for c in (None, *TENANTS, STATIC)}

    def exact(self, url: str, meters: dict[str | None, str], now_ms: int, contexts: Any) -> bool:
        return all(
            total(url, c, meters[c], customer, now_ms) == self.by_context[c][customer]
            for c in contexts
            for customer in CUSTOMERS
        )


def test_contexts_are_isolated_exact_across_sigkills_and_reconcile_to_zero(
    kafka_bootstrap: str,
    emulator: Callable[..., str],
    make_topic: Callable[..., str],
    group_id: str,
    tmp_path: Path,
) -> None:
    url = emulator(context=[*TENANTS, STATIC])
    meters = {context: create_meter(url, context) for context in (None, *TENANTS, STATIC)}
    rng = random.Random(17)
    now_ms = int(time.time() * 1000)
    schema_path, schema = tenant_schema(tmp_path)
    tenants, static, fixes = make_topic(partitions=3), make_topic(partitions=2), make_topic(partitions=1)
    for topic in (tenants, static, fixes):
        make_topic(partitions=1, name=f"{topic}.dlq")
    truth = Truth()
    ghosts: set[int] = set()
    pairs = []
    for n in range(2500):
        tenant = GHOST if n % 50 == 7 else rng.choice([None, *TENANTS])
        customer, value = rng.choice(CUSTOMERS), rng.randint(1, 40)
        record = {
            "identifier": None,
            "stripe_customer_id": customer,
            "value": value,
            "timestamp": now_ms - n,
            "attributes": None,
            "tenant": tenant,
        }
        pairs.append((f"t{n}".encode(), encode(schema, record)))
        if tenant == GHOST:
            ghosts.add(n)
        else:
            truth.by_context[tenant][customer] += value
    static_records = []
    for n in range(600):
        customer, value = rng.choice(CUSTOMERS), rng.randint(1, 40)
        record = {
            "identifier": None,
            "stripe_customer_id": customer,
            "value": value,
            "timestamp": now_ms - n,
            "attributes": None,
            "tenant": None,
        }
        static_records.append((f"s{n}".encode(), encode(schema, record)))
        truth.by_context[STATIC][customer] += value
    ends = produce(kafka_bootstrap, tenants, pairs, 3) | produce(kafka_bootstrap, static, static_records, 2)
    env = connector_env(
        kafka_bootstrap,
        url,
        [tenants, static, fixes],
        group_id,
        **{
            f"TOPIC_{topic_env_key(tenants)}_SCHEMA": str(schema_path),
            f"TOPIC_{topic_env_key(tenants)}_CONTEXT_FIELD": "tenant",
            f"TOPIC_{topic_env_key(static)}_SCHEMA": str(schema_path),
            f"TOPIC_{topic_env_key(static)}_STRIPE_CONTEXT": STATIC,
            f"TOPIC_{topic_env_key(fixes)}_KIND": "corrections",
            f"TOPIC_{topic_env_key(fixes)}_STRIPE_CONTEXT": STATIC,
            "CONNECTOR_RETRY_MAX_ELAPSED_S": "5",
            "KAFKA_GROUP_INSTANCE_ID": f"{group_id}-member",  # a restart rejoins at once
        },
    )
    # A 429 storm on one account: everyone else is delivered exactly while it still has nothing.
    faults(url, THROTTLED, rate_limited_rate=1.0)
    others = [c for c in (None, *TENANTS, STATIC) if c != THROTTLED]
    with ConnectorProcess(env, tmp_path) as connector:
        wait_until(lambda: truth.exact(url, meters, now_ms, others), 90, message="the other accounts")
        assert all(total(url, THROTTLED, meters[THROTTLED], c, now_ms) == 0 for c in CUSTOMERS)
        connector.kill()  # SIGKILL in the middle of the storm
    faults(url, THROTTLED, rate_limited_rate=0.0)
    for _ in range(2):
        with ConnectorProcess(env, tmp_path) as connector:
            time.sleep(rng.uniform(1.0, 3.0))
            connector.kill()
    with ConnectorProcess(env, tmp_path) as connector:
        wait_until(lambda: committed(kafka_bootstrap, group_id, ends) == ends, 120, message="commits")
        assert connector.stop() == 0, connector.log()
    assert truth.exact(url, meters, now_ms, (None, *TENANTS, STATIC))

    # Corrections in the static account, by coordinates: half cancelled, half replaced.
    chosen = rng.sample(range(600), 40)
    fixes_pairs = []
    for index in chosen:
        customer_value = static_records[index]
        record = fastavro.schemaless_reader(io.BytesIO(customer_value[1]), schema)
        replacement = None if index % 2 else rng.randint(0, 40)
        fixes_pairs.append(
            (
                f"fix-{index}".encode(),
                correction_bytes(
                    original_topic=static,
                    original_partition=index % 2,
                    original_offset=index // 2,
                    stripe_customer_id=record["stripe_customer_id"],
                    original_value=record["value"],
                    replacement_value=None if replacement is None else str(replacement),
                    timestamp=record["timestamp"],
                ),
            )
        )
        truth.by_context[STATIC][record["stripe_customer_id"]] += (replacement or 0) - record["value"]
    ends |= produce(kafka_bootstrap, fixes, fixes_pairs, 1)
    with ConnectorProcess(env, tmp_path) as connector:
        time.sleep(rng.uniform(0.5, 2.0))
        connector.kill()
    with ConnectorProcess(env, tmp_path) as connector:
        wait_until(lambda: committed(kafka_bootstrap, group_id, ends) == ends, 120, message="corrections")
        assert connector.stop() == 0, connector.log()
    assert truth.exact(url, meters, now_ms, (None, *TENANTS, STATIC))

    # The unknown account's records, each dead-lettered with Stripe's reason and the context.
    letters = read_topic(kafka_bootstrap, f"{tenants}.dlq", 1, expected=len(ghosts), timeout=15)
    assert {int((letter.key or b"t-1").decode()[1:]) for letter in letters} == ghosts
    assert {letter.header(HEADER_CODE) for letter in letters} == {"context_refused"}
    assert {letter.header(HEADER_CONTEXT) for letter in letters} == {GHOST}
    assert not read_topic(kafka_bootstrap, f"{fixes}.dlq", 1, expected=0, timeout=2)

    # reconcile, per context, finds nothing to report (the corrected static account included).
    settings = load_settings(env)
    start, end = (now_ms // 1000 - 3600) // 3600 * 3600, (now_ms // 1000 // 3600 + 1) * 3600
    for topic, context in [(tenants, c) for c in (None, *TENANTS)] + [(static, STATIC)]:
        report = reconcile(
            settings, settings.topic(topic), start, end, None, context=context, from_beginning=True
        )
        assert not report.differences, (topic, context, report.differences[:3])
