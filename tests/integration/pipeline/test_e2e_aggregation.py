"""Exact pre-aggregation end to end: a real broker, the emulator over HTTP, ``kafka-stripe run`` as a child
process SIGKILLed at random moments while it sums records into one event per customer and minute.

Stripe's totals must equal the produced totals exactly, per customer and window, however the kills cut the
segments; ``reconcile --window hour`` must find no difference.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from connector.commands.reconcile import reconcile
from connector.config.environment import load_settings
from connector.config.topics import topic_env_key
from connector.devtools.broker import EmbeddedBroker
from tests.support.faults import set_faults
from tests.support.harness import (
    API_KEY,
    ConnectorProcess,
    committed,
    connector_env,
    create_meter,
    emulator_stats,
    encode,
    meter_total,
    produce,
    usage,
    wait_until,
)

pytestmark = pytest.mark.slow

MINUTE_MS = 60_000


def minute_totals(url: str, meter: str, keys: set[tuple[str, int]]) -> Counter[tuple[str, int]]:
    """Stripe's total of each (customer, minute) in ``keys``: one summary request per minute (Stripe groups
    summaries by hour or day at the finest, so a minute is asked for on its own)."""
    got: Counter[tuple[str, int]] = Counter()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as stripe:
        for customer, minute in sorted(keys):
            response = stripe.get(
                f"/v1/billing/meters/{meter}/event_summaries",
                params={"customer": customer, "start_time": minute, "end_time": minute + 60},
            )
            response.raise_for_status()
            got[(customer, minute)] += sum(item["aggregated_value"] for item in response.json()["data"])
    return got


def records(
    rng: random.Random, count: int, customers: int, start_ms: int, span_ms: int
) -> tuple[list[tuple[bytes | None, bytes]], Counter[tuple[str, int]]]:
    """``count`` records in rough time order over ``span_ms``, and their totals per customer and minute."""
    pairs = []
    truth: Counter[tuple[str, int]] = Counter()
    for n in range(count):
        customer = f"cus_agg{rng.randrange(customers):04d}"
        at = start_ms + n * span_ms // count + rng.randint(-2_000, 2_000)  # a little out of order
        value = rng.randint(1, 20)
        pairs.append((customer.encode(), encode(usage(customer, value, at))))
        truth[(customer, at // MINUTE_MS * 60)] += value
    return pairs, truth


def aggregated_env(bootstrap: str, url: str, topic: str, group: str, **extra: str) -> dict[str, str]:
    """The connector's environment with ``topic`` aggregated per minute, segments at most 1 s old."""
    key = topic_env_key(topic)
    aggregation = {f"TOPIC_{key}_AGGREGATE": "1m", f"TOPIC_{key}_AGGREGATE_MAX_AGE": "1"}
    return connector_env(bootstrap, url, [topic], group, **aggregation, **extra)


def kill_mid_segment(
    kills: int,
    env: dict[str, str],
    tmp_path: Path,
    url: str,
    bootstrap: str,
    group: str,
    ends: dict[tuple[str, int], int],
    rng: random.Random,
) -> None:
    """Start the connector and SIGKILL it ``kills`` times, each once it owns partitions (a kill before the
    assignment would test nothing), after a random moment of its work, and then as soon as Stripe accepts
    events again: most likely in the middle of a segment, some of whose aggregates are at Stripe and some
    not. A run that committed everything is killed at once."""
    for _ in range(kills):
        with ConnectorProcess(env, tmp_path) as connector:
            wait_until(lambda: "assigned" in connector.log(), 60, message="an assignment")
            time.sleep(rng.uniform(0.0, 1.5))
            accepted = emulator_stats(url)["events_accepted"]

            def sending(accepted: int = accepted) -> bool:
                more = emulator_stats(url)["events_accepted"] > accepted
                return more or committed(bootstrap, group, ends) == ends

            wait_until(sending, 60, 0.01, "events")
            connector.kill()


def run_to_the_end(
    env: dict[str, str], tmp_path: Path, bootstrap: str, group: str, ends: dict[tuple[str, int], int]
) -> str:
    """One more run until every record is committed, stopped with SIGTERM (exit 0); returns its log."""
    with ConnectorProcess(env, tmp_path) as connector:
        wait_until(lambda: "assigned" in connector.log(), 60, message="an assignment")  # signals handled
        wait_until(lambda: committed(bootstrap, group, ends) == ends, 180, message="commits")
        assert connector.stop() == 0, connector.log()
        return connector.log()


def test_aggregates_are_exact_per_customer_and_minute_across_ten_sigkills(
    kafka_bootstrap: str,
    emulator: Callable[..., str],
    make_topic: Callable[..., str],
    group_id: str,
    tmp_path: Path,
) -> None:
    # Stripe 50 ms away and four requests in flight: a segment's events take a while to be answered, so
    # the kills land between its first accepted event and its last, where an aggregate cut differently
    # on replay would be counted twice.
    url = emulator(latency_ms=50)
    meter = create_meter(url)
    rng = random.Random(17)
    topic = make_topic(partitions=4)
    make_topic(partitions=1, name=f"{topic}.dlq")
    now_ms = int(time.time() * 1000)
    start_ms = (now_ms - 6 * MINUTE_MS) // MINUTE_MS * MINUTE_MS
    pairs, truth = records(rng, 200_000, 500, start_ms, 5 * MINUTE_MS)
    ends = produce(kafka_bootstrap, topic, pairs, 4)
    env = aggregated_env(
        kafka_bootstrap,
        url,
        topic,
        group_id,
        CONNECTOR_MAX_IN_FLIGHT="4",
        # Static membership: each run is the same member restarted, so a restart takes its partitions back
        # at once instead of waiting for the killed member's session to time out.
        KAFKA_GROUP_INSTANCE_ID=f"{group_id}-member",
        # Segments cut by age and by the held-records bound too, not only by event time: those cuts
        # depend on timing, so only the fixed ranges make a replay cut where the first run did.
        CONNECTOR_AGGREGATE_MAX_RECORDS="40000",
    )
    kill_mid_segment(10, env, tmp_path, url, kafka_bootstrap, group_id, ends, rng)
    set_faults(url, latency_ms=0)
    run_to_the_end(env, tmp_path, kafka_bootstrap, group_id, ends)

    got = minute_totals(url, meter, set(truth))
    assert got == truth
    # Nothing landed outside those minutes either: each customer's total over the whole range agrees.
    customers = {c for c, _m in truth}
    whole_range = start_ms // 1000 - 3600, start_ms // 1000 + 3600
    for customer in sorted(customers)[:50]:
        expected = sum(v for (c, _m), v in truth.items() if c == customer)
        assert meter_total(url, meter, customer, *whole_range) == expected, customer
    stats = emulator_stats(url)
    events = stats["events_accepted"]
    print(f"\n200,000 records reached Stripe as {events} events ({200_000 / events:.0f} records per event)")
    assert 12_000 <= events < 200_000  # at least 4 partitions x 500 customers x 6 minutes

    settings = load_settings(env)
    hour = start_ms // 3_600_000 * 3600
    report = reconcile(settings, settings.topic(topic), hour, hour + 2 * 3600, "hour", from_beginning=True)
    assert not report.differences, report.differences[:3]


def test_rebalances_with_three_members_and_late_records_stay_exact(
    kafka_bootstrap: str,
    emulator: Callable[..., str],
    make_topic: Callable[..., str],
    group_id: str,
    tmp_path: Path,
) -> None:
    url = emulator(latency_ms=30)
    meter = create_meter(url)
    rng = random.Random(29)
    topic = make_topic(partitions=6)
    make_topic(partitions=1, name=f"{topic}.dlq")
    start_ms = (int(time.time() * 1000) - 5 * MINUTE_MS) // MINUTE_MS * MINUTE_MS
    pairs, truth = records(rng, 60_000, 300, start_ms, 3 * MINUTE_MS)
    ends = produce(kafka_bootstrap, topic, pairs, 6)
    env = aggregated_env(kafka_bootstrap, url, topic, group_id, CONNECTOR_MAX_IN_FLIGHT="1")
    with ConnectorProcess(env, tmp_path) as first:
        wait_until(lambda: "assigned" in first.log(), 60, message="the first member's assignment")
        wait_until(lambda: emulator_stats(url)["events_accepted"] > 0, 60, message="first events")
        # Two more members join while the first is mid-window: partitions move with segments open.
        with ConnectorProcess(env, tmp_path) as second, ConnectorProcess(env, tmp_path) as third:
            wait_until(lambda: "assigned" in third.log(), 60, message="the third member's assignment")
            time.sleep(1.0)
            assert second.stop() == 0, second.log()  # a graceful leave: its partitions are revoked
            # Late records: the first minute was flushed long ago; each starts a new aggregate.
            late, late_truth = records(rng, 3_000, 300, start_ms, MINUTE_MS // 2)
            ends |= produce(kafka_bootstrap, topic, late, 6)
            truth.update(late_truth)
            wait_until(lambda: committed(kafka_bootstrap, group_id, ends) == ends, 150, message="commits")
            assert third.stop() == 0, third.log()
        assert first.stop() == 0, first.log()
    set_faults(url, latency_ms=0)  # reads
    assert minute_totals(url, meter, set(truth)) == truth


def test_a_broker_restart_mid_aggregation_stays_exact(
    durable_broker: EmbeddedBroker,
    emulator: Callable[..., str],
    group_id: str,
    tmp_path: Path,
) -> None:
    # The broker (SIGKILLed and restarted on the same storage) holds the records, the commits and the
    # ledger's fixed ranges: segments being fixed, sent and committed across it must stay exact.
    bootstrap = durable_broker.bootstrap_servers
    url = emulator(latency_ms=30)
    meter = create_meter(url)
    rng = random.Random(53)
    topic = f"agg-restart-{group_id}"
    durable_broker.create_topics([topic], partitions=4)
    durable_broker.create_topics([f"{topic}.dlq"], partitions=1)
    start_ms = (int(time.time() * 1000) - 5 * MINUTE_MS) // MINUTE_MS * MINUTE_MS
    pairs, truth = records(rng, 40_000, 200, start_ms, 4 * MINUTE_MS)
    ends = produce(bootstrap, topic, pairs, 4)
    env = aggregated_env(bootstrap, url, topic, group_id, CONNECTOR_MAX_IN_FLIGHT="2")

    def done() -> int:
        return sum(max(offset, 0) for offset in committed(bootstrap, group_id, ends).values())

    with ConnectorProcess(env, tmp_path) as connector:
        wait_until(lambda: "assigned" in connector.log(), 60, message="an assignment")
        wait_until(lambda: done() > 0, 60, 0.05, "first commits")
        durable_broker.restart()
        left = sum(ends.values()) - done()
        assert left > 0, "everything was committed before the broker restarted"
        wait_until(lambda: committed(bootstrap, group_id, ends) == ends, 180, message="all commits")
        assert connector.stop() == 0, connector.log()
    set_faults(url, latency_ms=0)
    assert minute_totals(url, meter, set(truth)) == truth, durable_broker.log_tail()


def test_window_total_and_last_meters_are_exact_after_sigkills(
    kafka_bootstrap: str,
    emulator: Callable[..., str],
    make_topic: Callable[..., str],
    group_id: str,
    tmp_path: Path,
) -> None:
    # A meter with event_time_window=hour keeps only the latest event received per customer and hour:
    # the connector must send running hour totals, in order, from exactly the totals the killed run had.
    url = emulator(latency_ms=50)
    # One stream request in ten fails (500) and is retried: a total sent again after a later one was
    # accepted would replace it, unless each partition's next segment waits for the one before.
    set_faults(url, error_rate=0.1)
    hourly_meter = create_meter(url, "api_hours", window="hour")
    last_meter = create_meter(url, "seats", formula="last")
    rng = random.Random(41)
    hourly, latest = make_topic(partitions=4), make_topic(partitions=3)
    for topic in (hourly, latest):
        make_topic(partitions=1, name=f"{topic}.dlq")
    start_ms = (int(time.time() * 1000) - 100 * MINUTE_MS) // MINUTE_MS * MINUTE_MS
    pairs, by_minute = records(rng, 24_000, 200, start_ms, 90 * MINUTE_MS)  # crosses an hour boundary
    hour_truth: Counter[tuple[str, int]] = Counter()
    for (customer, minute), value in by_minute.items():
        hour_truth[(customer, minute // 3600 * 3600)] += value
    # Window totals need each customer's records in one partition (keyed by customer, as Kafka does).
    ends = produce(kafka_bootstrap, hourly, pairs, 4, by_key=True)
    last_pairs, last_truth = latest_values(rng, 9_000, 100, start_ms, 20 * MINUTE_MS)
    ends |= produce(kafka_bootstrap, latest, last_pairs, 3)
    names = {f"TOPIC_{topic_env_key(hourly)}_EVENT_NAME": "api_hours"}
    names[f"TOPIC_{topic_env_key(latest)}_EVENT_NAME"] = "seats"
    names |= {
        f"TOPIC_{topic_env_key(latest)}_AGGREGATE": "1m",
        f"TOPIC_{topic_env_key(latest)}_AGGREGATE_MAX_AGE": "1",
    }
    env = aggregated_env(
        kafka_bootstrap,
        url,
        hourly,
        group_id,
        CONNECTOR_MAX_IN_FLIGHT="4",
        KAFKA_GROUP_INSTANCE_ID=f"{group_id}-member",
        CONNECTOR_RETRY_INITIAL_BACKOFF_MS="50",  # a retry still goes out after a later request
        **names,
    )
    env["CONNECTOR_TOPICS"] = f"{hourly},{latest}"
    kill_mid_segment(4, env, tmp_path, url, kafka_bootstrap, group_id, ends, rng)
    log = run_to_the_end(env, tmp_path, kafka_bootstrap, group_id, ends)
    assert "sending running hour totals" in log
    set_faults(url, latency_ms=0, error_rate=0)

    got = Counter(
        {
            (customer, hour): meter_total(url, hourly_meter, customer, hour, hour + 3600 - 60)
            for customer, hour in sorted(hour_truth)
        }
    )
    assert got == hour_truth  # the latest event of each customer and hour is the whole hour
    assert minute_totals(url, last_meter, set(last_truth)) == last_truth
    print(f"\n33,000 records reached Stripe as {emulator_stats(url)['events_accepted']} events")


def latest_values(
    rng: random.Random, count: int, customers: int, start_ms: int, span_ms: int
) -> tuple[list[tuple[bytes | None, bytes]], Counter[tuple[str, int]]]:
    """``count`` records of a ``last`` meter, each at its own millisecond (a little out of order), and
    the latest value per customer and minute."""
    pairs = []
    latest: dict[tuple[str, int], tuple[int, int]] = {}
    times = [start_ms + n * (span_ms // count) for n in range(count)]
    for n in range(0, count - 1, 2):  # neighbours swapped at random: out of order, never tied
        if rng.random() < 0.5:
            times[n], times[n + 1] = times[n + 1], times[n]
    for at in times:
        customer = f"cus_last{rng.randrange(customers):03d}"
        value = rng.randint(1, 1000)
        pairs.append((customer.encode(), encode(usage(customer, value, at))))
        key = (customer, at // MINUTE_MS * 60)
        if key not in latest or latest[key][0] < at:
            latest[key] = (at, value)
    return pairs, Counter({key: value for key, (_at, value) in latest.items()})
