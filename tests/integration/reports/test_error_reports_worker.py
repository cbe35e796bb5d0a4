"""The error-report thread in this process, on a real broker and the emulator over HTTP: each crash point
of a report finished exactly once by the next poller; samples it cannot map counted, not guessed; a meter
error asks for the meters; a key without access to events said once; cursor records beside the ledger's.

The records were sent by ``kafka-stripe run`` (error reports off), so Stripe's reports quote the connector's
own request keys; the thread is then run here, where a producer that dies at a chosen write stands in for
a SIGKILL at that moment.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import fastavro
import httpx
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from connector.config.environment import load_settings
from connector.config.settings import Settings
from connector.devtools.broker import create_topics
from connector.devtools.emulator import EmulatorProcess
from connector.kafka.clients import reader_config
from connector.kafka.deadletter import HEADER_CODE, HEADER_REPORT
from connector.kafka.delivery_ledger import LedgerKey, LedgerWriter, read_ledger
from connector.reports.cursor import Cursor, CursorKey, CursorStore
from connector.reports.worker import ErrorReportWorker
from connector.runtime.metrics import Telemetry
from connector.stripe.v1 import StripeClient
from tests.support.faults import read_topic
from tests.support.harness import (
    API_KEY,
    SCHEMA,
    ConnectorProcess,
    committed,
    connector_env,
    create_meter,
    encode,
    produce,
    stripe,
    usage,
    wait_until,
)
from tests.support.kafka import unique_name

pytestmark = pytest.mark.slow

NAMESPACE = "acct_worker.test"
FRACTIONS = ("1.5", "2.5", "3.5", "4.5")
GHOSTS = ("cus_gone_a", "cus_gone_b")


class Sent(NamedTuple):
    """Records delivered to the emulator by the connector, whose reports the thread is to route."""

    url: str
    bootstrap: str
    topic: str
    tmp: Path


@pytest.fixture(scope="module")
def sent(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sent]:
    """One burst with four fractional values and two unknown customers, sent and committed."""
    tmp = tmp_path_factory.mktemp("reports")
    topic = unique_name("t", "reports-worker")
    create_topics(kafka_bootstrap, [topic], partitions=2)
    with EmulatorProcess(seed=3) as emulator:
        create_meter(emulator.url)
        now_ms = int(time.time() * 1000)
        records: list[tuple[str, float | int]] = [(ghost, 1) for ghost in GHOSTS]
        records += [("cus_known1", float(v)) for v in FRACTIONS] + [("cus_known1", 1)] * 8
        pairs = [(None, encode(usage(c, v, now_ms - i))) for i, (c, v) in enumerate(records)]
        ends = produce(kafka_bootstrap, topic, pairs, 2)
        env = environment(kafka_bootstrap, emulator.url, topic, "sender", CONNECTOR_ERROR_REPORTS_POLL_S="0")
        with ConnectorProcess(env, tmp) as connector:
            wait_until(lambda: committed(kafka_bootstrap, "sender", ends) == ends, 60, message="commits")
            assert connector.stop(60) == 0, connector.log()
        yield Sent(emulator.url, kafka_bootstrap, topic, tmp)


def environment(bootstrap: str, url: str, topic: str, group: str, **extra: str) -> dict[str, str]:
    name = topic.upper().replace("-", "_").replace(".", "_")
    settings = {
        "CONNECTOR_LEDGER_NAMESPACE": NAMESPACE,
        "CONNECTOR_VERIFY_CUSTOMERS": "false",
        "CONNECTOR_ERROR_REPORTS_POLL_S": "1",
        f"TOPIC_{name}_DECIMAL_VALUES": "true",
    }
    return connector_env(bootstrap, url, [topic], group, **{**settings, **extra})


def settings_for(sent: Sent, group: str, dlq: str) -> Settings:
    name = sent.topic.upper().replace("-", "_").replace(".", "_")
    settings = load_settings(
        environment(sent.bootstrap, sent.url, sent.topic, group, **{f"TOPIC_{name}_DLQ_TOPIC": dlq})
    )
    return dataclasses.replace(
        settings, pipeline=dataclasses.replace(settings.pipeline, ledger_namespace=NAMESPACE)
    )


class Dying:
    """A producer that dies at one write: the intent (``intent``), the ``k``-th dead letter (``letter``),
    or the cursor that closes a report (``cursor``); every write after that fails too."""

    def __init__(self, producer: Any, ledger: str, point: str, k: int = 0) -> None:
        self._producer = producer
        self._ledger = ledger
        self.point, self.k = point, k
        self.letters = 0
        self.dead = threading.Event()

    def produce(self, topic: str, **kwargs: Any) -> None:
        if self.dead.is_set():
            raise RuntimeError("this process is dead")
        if topic == self._ledger:
            cursor = Cursor.decode(kwargs.get("value"))
            opening = cursor is not None and cursor.intent is not None
            if (self.point == "intent" and opening) or (
                self.point == "cursor" and not opening and self.letters
            ):
                self._die()
        else:
            self.letters += 1
            if self.point == "letter" and self.letters == self.k:
                self._die()
        self._producer.produce(topic, **kwargs)

    def _die(self) -> None:
        self.dead.set()
        raise RuntimeError(f"killed at {self.point} {self.k or ''}")

    def poll(self, timeout: float = 0.0) -> int:
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float) -> int:
        return int(self._producer.flush(timeout))

    def __len__(self) -> int:
        return len(self._producer)


def worker(
    settings: Settings,
    producer_factory: Callable[[dict[str, Any]], Any] = Producer,
    stripe_factory: Callable[[], StripeClient] | None = None,
    on_meter_error: Callable[[], None] | None = None,
) -> tuple[ErrorReportWorker, Telemetry]:
    telemetry = Telemetry(port=None)
    made = ErrorReportWorker(
        settings,
        telemetry,
        on_meter_error=on_meter_error,
        stripe_factory=stripe_factory or (lambda: StripeClient.from_settings(settings.stripe)),
        consumer_factory=Consumer,
        producer_factory=producer_factory,
        admin_factory=AdminClient,
    )
    return made, telemetry


def cursor_now(settings: Settings, group: str) -> Cursor | None:
    store = CursorStore(
        CursorKey(NAMESPACE, group),
        settings.pipeline.ledger_topic,
        producer=None,
        consumer_factory=Consumer,
        consumer_config=reader_config(settings, "test-cursor"),
    )
    return store.load()


def report_totals(url: str) -> tuple[set[str], Counter[str], int]:
    """The emulator's report ids, error_count per code, and the number of samples."""
    with stripe(url) as client:
        ids = [e["id"] for e in client.get("/v2/core/events", params={"limit": 100}).json()["data"]]
        totals: Counter[str] = Counter()
        samples = 0
        for event_id in ids:
            for kind in client.get(f"/v2/core/events/{event_id}").json()["data"]["reason"]["error_types"]:
                totals[kind["code"]] += kind["error_count"]
                samples += len(kind["sample_errors"])
    return set(ids), totals, samples


def counter(telemetry: Telemetry, name: str, **labels: str) -> float:
    return telemetry.registry.get_sample_value(name, labels) or 0.0


def errors_counted(telemetry: Telemetry, totals: Counter[str]) -> Counter[str]:
    return Counter(
        {
            code: int(counter(telemetry, "kafka_stripe_stripe_async_errors_total", code=code))
            for code in totals
        }
    )


@pytest.mark.parametrize(("point", "k"), [("intent", 0), ("letter", 3), ("cursor", 0)])
def test_a_poller_dying_at_each_write_of_a_report_is_finished_once_by_the_next(
    sent: Sent, point: str, k: int
) -> None:
    group, dlq = unique_name("g", f"crash-{point}"), unique_name("t", f"dlq-{point}")
    create_topics(sent.bootstrap, [dlq], partitions=2)
    settings = settings_for(sent, group, dlq)
    ledger = settings.pipeline.ledger_topic
    dying = Dying(Producer(settings.producer_config()), ledger, point, k)
    first, first_metrics = worker(settings, lambda _config: dying)
    first.start()
    try:
        wait_until(dying.dead.is_set, 60, message=f"the first poller to die at {point}")
    finally:
        first.stop()
    before = cursor_now(settings, group)
    assert before is not None and (before.intent is None) == (point == "intent"), before
    written = {"intent": 0, "letter": k - 1, "cursor": len(FRACTIONS) + len(GHOSTS)}[point]
    assert len(read_topic(sent.bootstrap, dlq, 2, written, timeout=20)) == written
    ids, totals, samples = report_totals(sent.url)

    second, metrics = worker(settings)
    second.start()
    try:
        wait_until(
            lambda: (
                (c := cursor_now(settings, group)) is not None and c.intent is None and ids <= set(c.seen)
            ),
            60,
            interval=0.5,
            message="the second poller to finish every report",
        )
    finally:
        second.stop()
    letters = read_topic(sent.bootstrap, dlq, 2, len(FRACTIONS) + len(GHOSTS), timeout=20)
    found = Counter(_token(x.value) for x in letters)
    assert found == Counter(FRACTIONS + GHOSTS), found  # each record once: none lost, none repeated
    assert {x.header(HEADER_REPORT) for x in letters} <= ids
    assert {x.header(HEADER_CODE) for x in letters} == {
        "stripe_async:meter_event_invalid_value",
        "stripe_async:meter_event_customer_not_found",
    }
    # Only the poller that closes a report counts it; the one that died closed none.
    assert errors_counted(first_metrics, totals) == Counter({c: 0 for c in totals})
    assert errors_counted(metrics, totals) == totals
    assert counter(metrics, "kafka_stripe_stripe_async_samples_total", outcome="dead_lettered") == samples
    dead = {c: counter(metrics, "kafka_stripe_dead_lettered_total", code=f"stripe_async:{c}") for c in totals}
    assert dead == {
        "meter_event_invalid_value": len(FRACTIONS),
        "meter_event_customer_not_found": len(GHOSTS),
    }


def _token(value: bytes | None) -> str:
    record = fastavro.schemaless_reader(io.BytesIO(value or b""), SCHEMA)
    value_text = str(record["value"])
    return value_text if "." in value_text else str(record["stripe_customer_id"])


def _stream(url: str, value: str) -> None:
    """An event sent the way another client would: without an Idempotency-Key of the connector's."""
    events = [{"event_name": "api_requests", "payload": {"stripe_customer_id": "cus_x1", "value": value}}]
    with stripe(url) as client:
        token = client.post("/v2/billing/meter_event_session").json()["authentication_token"]
        response = httpx.post(
            f"{url}/v2/billing/meter_event_stream",
            json={"events": events},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        response.raise_for_status()


def test_samples_it_cannot_map_are_counted_and_a_meter_error_asks_for_the_meters(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique_name("t", "foreign")
    create_topics(kafka_bootstrap, [topic, f"{topic}.dlq"], partitions=1)
    with EmulatorProcess(seed=4) as emulator:
        meter = create_meter(emulator.url)
        _stream(emulator.url, "2.5")
        with stripe(emulator.url) as client:
            client.get("/v2/core/events").raise_for_status()  # validated now, while its meter is active
            client.post(f"/v1/billing/meters/{meter}/deactivate").raise_for_status()
        _stream(emulator.url, "3")
        refreshes: list[float] = []
        group = unique_name("g", "foreign")
        sent = Sent(emulator.url, kafka_bootstrap, topic, tmp_path)
        settings = settings_for(sent, group, f"{topic}.dlq")
        thread, metrics = worker(settings, on_meter_error=lambda: refreshes.append(time.time()))
        caplog.set_level(logging.INFO, logger="kafka_stripe.reports")
        thread.start()
        try:
            _ids, totals, samples = report_totals(emulator.url)
            wait_until(lambda: errors_counted(metrics, totals) == totals, 60, message="both reports counted")
        finally:
            thread.stop()
    assert totals == Counter({"meter_event_invalid_value": 1, "archived_meter": 1})
    assert counter(metrics, "kafka_stripe_stripe_async_samples_total", outcome="unmapped") == samples == 2
    assert counter(metrics, "kafka_stripe_stripe_async_samples_total", outcome="dead_lettered") == 0
    assert refreshes, "archived_meter asks the pipeline for the meters"
    assert "not mapped to records: its request key is not one the connector makes" in caplog.text
    assert API_KEY not in caplog.text
    assert read_topic(kafka_bootstrap, f"{topic}.dlq", 1, 1, timeout=3) == []


def test_a_key_without_access_to_events_is_said_once_with_the_permission(
    sent: Sent, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        error = {"type": "invalid_request_error", "message": "The provided key does not have access."}
        return httpx.Response(403, json={"error": error})

    group = unique_name("g", "forbidden")
    settings = settings_for(sent, group, f"{sent.topic}.dlq")
    stripe_factory = lambda: StripeClient(API_KEY, transport=httpx.MockTransport(refuse), max_retries=0)  # noqa: E731
    thread, _metrics = worker(settings, stripe_factory=stripe_factory)
    caplog.set_level(logging.INFO, logger="kafka_stripe.reports")
    thread.start()
    try:
        wait_until(lambda: len(calls) >= 3, 60, message="three polls")
    finally:
        thread.stop()
    said = [r.getMessage() for r in caplog.records if "read access to Events" in r.getMessage()]
    assert len(said) == 1, said
    assert "403" in said[0] and API_KEY not in caplog.text


def test_cursor_records_live_beside_the_delivery_ledgers_marks(kafka_bootstrap: str) -> None:
    ledger = unique_name("t", "ledger")
    create_topics(kafka_bootstrap, [ledger], partitions=1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    mark = LedgerKey(NAMESPACE, "api_requests", "TopicIdOfUsage00000001", 0)
    writer = LedgerWriter(producer, ledger)
    writer.write(mark, 40, "usage")
    config = {"bootstrap.servers": kafka_bootstrap, "enable.partition.eof": True}
    store = CursorStore(
        CursorKey(NAMESPACE, "g"),
        ledger,
        producer=producer,
        consumer_factory=Consumer,
        consumer_config=config,
    )
    store.save(Cursor(1_767_323_045.0, {"evt_1": 1_767_323_050.0}))
    writer.write(mark, 50, "usage")
    assert writer.flush(10) == 0
    marks = read_ledger(Consumer, {"bootstrap.servers": kafka_bootstrap}, ledger)
    assert {k: m.mark for k, m in marks.items()} == {mark: 50}  # the cursor is not a mark
    assert store.load() == Cursor(1_767_323_045.0, {"evt_1": 1_767_323_050.0})
    assert (
        CursorStore(
            CursorKey(NAMESPACE, "other"),
            ledger,
            producer=producer,
            consumer_factory=Consumer,
            consumer_config=config,
        ).load()
        is None
    )
