"""Stripe's asynchronous error reports, end to end: a real broker, the emulator over HTTP, the connector
(``kafka-stripe run``) as child processes.

The connector sends events only Stripe can reject: fractional values with ``TOPIC_<T>_DECIMAL_VALUES=true``
to an account without decimal values (``meter_event_invalid_value``), and customers Stripe does not know
with ``CONNECTOR_VERIFY_CUSTOMERS=false`` (``meter_event_customer_not_found``). Stripe accepts them with
200, drops them while validating, and says so in error reports; every sample must come back to its record
in the dead-letter topic exactly once, also across a SIGKILL, and the error metric must add up to the
reports' ``error_count``.
"""

from __future__ import annotations

import io
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastavro
import httpx
import pytest
from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from connector.config.environment import load_settings
from connector.devtools.broker import free_port
from connector.devtools.emulator import EmulatorProcess
from connector.kafka.clients import reader_config
from connector.kafka.deadletter import (
    HEADER_CODE,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_REPORT,
    HEADER_TOPIC,
)
from connector.reports.cursor import Cursor, CursorKey, CursorStore
from tests.support.faults import DeadLetter, read_topic
from tests.support.harness import (
    API_KEY,
    SCHEMA,
    ConnectorProcess,
    connector_env,
    create_meter,
    encode,
    produce,
    stripe,
    usage,
    wait_until,
)

pytestmark = pytest.mark.slow

BURSTS = 10  # each burst: one fractional value and one unknown customer among whole, known ones
PER_BURST = 12
GAP_S = 0.4  # between bursts: the emulator validates what came in once the stream is idle for 50 ms
LEDGER_NAMESPACE = "acct_reports.test"
REPORT_TYPES = ("v1.billing.meter.error_report_triggered", "v1.billing.meter.no_meter_found")
VALUE_CODE, CUSTOMER_CODE = "meter_event_invalid_value", "meter_event_customer_not_found"


@pytest.fixture
def stripe_url() -> Iterator[str]:
    with EmulatorProcess(seed=21) as emulator:  # no --decimal-values: fractions are invalid at Stripe
        yield emulator.url


def burst(n: int, now_ms: int) -> list[tuple[bytes | None, bytes]]:
    """``PER_BURST`` records: at 3 the value ``n.5`` (a fraction), at 7 the customer ``cus_gone_n``
    (underscores: no customer Stripe knows); the others are whole values of a known customer."""
    pairs: list[tuple[bytes | None, bytes]] = []
    for i in range(PER_BURST):
        customer = f"cus_gone_{n}" if i == 7 else "cus_known1"
        value: float | int = n + 0.5 if i == 3 else 1 + i
        pairs.append((None, encode(usage(customer, value, now_ms - i))))
    return pairs


def expected_tokens() -> Counter[tuple[str, str]]:
    """(code, the value or customer the record carries) of every record Stripe drops."""
    return Counter(
        [(VALUE_CODE, f"{n}.5") for n in range(BURSTS)]
        + [(CUSTOMER_CODE, f"cus_gone_{n}") for n in range(BURSTS)]
    )


def produce_bursts(bootstrap: str, topic: str) -> None:
    now_ms = int(time.time() * 1000)
    for n in range(BURSTS):
        produce(bootstrap, topic, burst(n, now_ms), 2)
        time.sleep(GAP_S)


def token_of(letter: DeadLetter) -> tuple[str, str]:
    """(Stripe's code, the record's value or customer) of a dead letter."""
    record = fastavro.schemaless_reader(io.BytesIO(letter.value or b""), SCHEMA)
    code = (letter.header(HEADER_CODE) or "").removeprefix("stripe_async:")
    value = record["value"]
    return code, (str(value) if code == VALUE_CODE else str(record["stripe_customer_id"]))


def async_letters(bootstrap: str, dlq: str, expected: int) -> list[DeadLetter]:
    letters = read_topic(bootstrap, dlq, 1, expected, timeout=20)
    return [x for x in letters if (x.header(HEADER_CODE) or "").startswith("stripe_async:")]


def reports(url: str) -> dict[str, dict[str, Any]]:
    """Every error report the emulator made: id -> the retrieved event."""
    with stripe(url) as client:
        query = [("types[]", kind) for kind in REPORT_TYPES]
        path: str | None = "/v2/core/events?" + "&".join(f"{k}={v}" for k, v in query)
        found: dict[str, dict[str, Any]] = {}
        while path:
            page = client.get(path).json()
            for event in page["data"]:
                found[event["id"]] = client.get(f"/v2/core/events/{event['id']}").json()
            path = page.get("next_page_url")
        return found


def error_totals(events: dict[str, dict[str, Any]], ids: set[str] | None = None) -> Counter[str]:
    """error_count per code over the reports ``ids`` (all by default)."""
    totals: Counter[str] = Counter()
    for event_id, event in events.items():
        if ids is None or event_id in ids:
            for kind in event["data"]["reason"]["error_types"]:
                totals[kind["code"]] += kind["error_count"]
    return totals


def sample_count(events: dict[str, dict[str, Any]]) -> int:
    return sum(len(k["sample_errors"]) for e in events.values() for k in e["data"]["reason"]["error_types"])


def scrape(port: int, name: str) -> Counter[str]:
    """The samples of counter ``name`` by their one label's value; empty when nothing answers."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return Counter()
    found: Counter[str] = Counter()
    for label, value in re.findall(rf'^{re.escape(name)}{{\w+="([^"]*)"}} (\S+)$', text, re.MULTILINE):
        found[label] += int(float(value))
    return found


def cursor_of(bootstrap: str, url: str, topic: str, group: str) -> Cursor | None:
    settings = load_settings(connector_env(bootstrap, url, [topic], group))
    store = CursorStore(
        CursorKey(LEDGER_NAMESPACE, group),
        settings.pipeline.ledger_topic,
        producer=None,
        consumer_factory=Consumer,
        consumer_config=reader_config(settings, "test-cursor-reader"),
    )
    return store.load()


def await_intent(bootstrap: str, key: CursorKey, nth: int, timeout: float = 60) -> None:
    """Return as the ``nth`` cursor record with an open intent for ``key`` reaches the ledger topic."""
    config = reader_config(load_settings(connector_env(bootstrap, "http://x", ["t"], "g")), "tail")
    consumer = Consumer({**config, "fetch.wait.max.ms": 1, "fetch.error.backoff.ms": 1})
    try:
        consumer.assign([TopicPartition("kafka-stripe.ledger", 0, OFFSET_END)])
        seen = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(0.01)
            if message is None or message.error() is not None or message.key() != key.encode():
                continue
            cursor = Cursor.decode(message.value())
            seen += cursor is not None and cursor.intent is not None
            if seen >= nth:
                return
        raise AssertionError(f"no intent number {nth} in {timeout:.0f} s")
    finally:
        consumer.close()


def setup(
    make_topic: Callable[..., str], url: str, bootstrap: str, group: str, **extra: str
) -> tuple[str, dict[str, str]]:
    topic = make_topic(partitions=2)
    make_topic(partitions=1, name=f"{topic}.dlq")
    create_meter(url)
    name = topic.upper().replace("-", "_").replace(".", "_")
    env = connector_env(
        bootstrap,
        url,
        [topic],
        group,
        CONNECTOR_LEDGER_NAMESPACE=LEDGER_NAMESPACE,
        CONNECTOR_VERIFY_CUSTOMERS="false",
        CONNECTOR_ERROR_REPORTS_POLL_S="1",
        **{f"TOPIC_{name}_DECIMAL_VALUES": "true"},
        **extra,
    )
    return topic, env


def check_dead_letters(letters: list[DeadLetter], events: dict[str, dict[str, Any]], topic: str) -> None:
    """Each record Stripe dropped is in the dead-letter topic once, with Stripe's code, message and report."""
    found = Counter(token_of(x) for x in letters)
    assert found == expected_tokens(), (
        f"missing {expected_tokens() - found}, extra {found - expected_tokens()}"
    )
    coordinates = Counter((x.header(HEADER_PARTITION), x.header(HEADER_OFFSET)) for x in letters)
    assert max(coordinates.values()) == 1
    messages = {
        s["error_message"]: event_id
        for event_id, e in events.items()
        for k in e["data"]["reason"]["error_types"]
        for s in k["sample_errors"]
    }
    for letter in letters:
        assert letter.header(HEADER_TOPIC) == topic
        reason = letter.header("kafka_stripe.error.reason")
        assert reason in messages and messages[reason] == letter.header(HEADER_REPORT), reason
        assert letter.header("__connect.errors.exception.message") == reason
        assert not any(API_KEY.encode() in (v or b"") for _, v in letter.headers)


def test_every_sample_comes_back_once_from_two_workers_and_the_errors_add_up(
    kafka_bootstrap: str, make_topic: Callable[..., str], group_id: str, stripe_url: str, tmp_path: Path
) -> None:
    port = free_port()
    topic, env = setup(
        make_topic,
        stripe_url,
        kafka_bootstrap,
        group_id,
        CONNECTOR_WORKERS="2",
        CONNECTOR_METRICS_PORT=str(port),
    )
    ports = (port, port + 1)  # worker i serves the port + i
    with ConnectorProcess(env, tmp_path) as connector:
        wait_until(
            lambda: connector.log().count("now polls Stripe's error reports") >= 1, 60, message="a poller"
        )
        produce_bursts(kafka_bootstrap, topic)
        events = reports(stripe_url)  # every burst delivered and validated by now or soon: read again below

        def settled() -> bool:
            nonlocal events
            events = reports(stripe_url)
            counted = sum((scrape(p, "kafka_stripe_stripe_async_errors_total") for p in ports), Counter())
            return sum(error_totals(events).values()) == 2 * BURSTS and counted == error_totals(events)

        try:
            wait_until(settled, 60, interval=1.0, message="every report counted")
            letters = async_letters(kafka_bootstrap, f"{topic}.dlq", 2 * BURSTS)
            samples = sum((scrape(p, "kafka_stripe_stripe_async_samples_total") for p in ports), Counter())
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{connector.log()[-6000:]}") from None
        assert connector.stop(60) == 0, connector.log()[-4000:]
        log = connector.log()
    check_dead_letters(letters, events, topic)
    assert samples == Counter({"dead_lettered": sample_count(events)})
    done = Counter(re.findall(r"error report (\S+) done", log))
    assert set(done) == set(events) and set(done.values()) == {1}, done  # one poller per report
    assert API_KEY not in log


def test_a_sigkill_while_reports_are_routed_neither_repeats_nor_skips_a_dead_letter(
    kafka_bootstrap: str, make_topic: Callable[..., str], group_id: str, stripe_url: str, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    topic, env = setup(make_topic, stripe_url, kafka_bootstrap, group_id)
    producer = threading.Thread(target=produce_bursts, args=(kafka_bootstrap, topic), daemon=True)
    with ConnectorProcess(env, tmp_path) as first:
        wait_until(lambda: "now polls Stripe's error reports" in first.log(), 60, message="a poller")
        producer.start()
        nth, anytime = rng.randint(1, 3), rng.random() < 0.5
        if anytime:
            # At a random moment of the processing of a random early report (each takes a few hundred
            # ms: Kafka reads, the intent, the dead letters, the cursor).
            wait_until(lambda: first.log().count("Stripe error report") >= nth, 60, message=f"report {nth}")
            time.sleep(rng.uniform(0.0, 0.3))
        else:  # as an intent reaches the ledger (the report is mostly closed by the time the kill lands)
            await_intent(kafka_bootstrap, CursorKey(LEDGER_NAMESPACE, group_id), nth)
            time.sleep(rng.uniform(0.0, 0.005))
        first.signal(signal.SIGKILL)
        first.wait(30)
    cursor = cursor_of(kafka_bootstrap, stripe_url, topic, group_id)
    done_before = set(cursor.seen) if cursor is not None else set()
    intent = cursor.intent if cursor is not None else None
    when = "at any moment" if anytime else "after an intent"
    note = f"seed {seed}, killed {when} of report {nth} with {len(done_before)} reports done, intent {intent}"
    port = free_port()
    with ConnectorProcess({**env, "CONNECTOR_METRICS_PORT": str(port)}, tmp_path) as second:
        producer.join(60)

        def finished() -> bool:
            events = reports(stripe_url)
            now = cursor_of(kafka_bootstrap, stripe_url, topic, group_id)
            return (
                sum(error_totals(events).values()) == 2 * BURSTS
                and now is not None
                and now.intent is None
                and set(events) <= set(now.seen)
            )

        try:
            wait_until(finished, 60, interval=1.0, message=f"every report done ({note})")
            events = reports(stripe_url)
            counted = scrape(port, "kafka_stripe_stripe_async_errors_total")
            letters = async_letters(kafka_bootstrap, f"{topic}.dlq", 2 * BURSTS)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{first.log()[-3000:]}\n---\n{second.log()[-3000:]}") from None
        assert second.stop(60) == 0, second.log()[-4000:]
    check_dead_letters(letters, events, topic)
    # The second run counts the reports the first did not close (Stripe's totals minus the first's share).
    assert counted == error_totals(events, set(events) - done_before), note
