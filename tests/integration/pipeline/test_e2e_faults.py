"""End to end under faults: a real broker, the emulator over HTTP, ``kafka-stripe run`` as a child process.

Each test checks the delivery contract from the outside: Stripe's totals per customer are exact (every
good record counted once, however often it was sent), the committed offsets end at the end offsets taken
from delivery reports (Tansu's high watermark is wrong), and nothing is committed past a record that is
not in Stripe or in the dead-letter topic.
"""

from __future__ import annotations

import io
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest

from connector.config.topics import topic_env_key
from tests.support.faults import (
    HOUR_S,
    FaultToggler,
    HourPlan,
    Outgoing,
    log_tail,
    logs,
    produce_tracked,
    quick_stats,
    read_topic,
    rss_kb,
    set_faults,
    unexpected_failures,
)
from tests.support.harness import (
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

Ends = dict[tuple[str, int], int]


def merge(total: Ends, more: Ends) -> None:
    for key, end in more.items():
        total[key] = max(total.get(key, 0), end)


def totals(url: str, meter: str, customers: Any, start_s: int) -> dict[str, float]:
    end_s = int(time.time()) + 120
    return {c: meter_total(url, meter, c, start_s - 120, end_s) for c in customers}


# ------------------------------------------------------------------------------------ 1. faults


WAVES = 6
WAVE_RECORDS = 2500
VALUES: list[Any] = [3, 2.5, "0.25", Decimal("1.125"), 7]  # long, double, string, decimal: all dyadic


def test_faults_retries_and_short_tokens_keep_totals_exact(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    group_id: str,
    tmp_path: Path,
    emulator: Callable[..., str],
) -> None:
    """10% 500s, 5% 429s (Retry-After 1 s), 2% responses lost after recording, 200 ms latency spikes,
    5-second tokens (and forced expiries): every record counted exactly once, everything committed."""
    topic = make_topic(partitions=4)
    make_topic(partitions=1, name=f"{topic}.dlq")
    url = emulator(
        session_ttl=5,
        error_rate=0.10,
        rate_limited_rate=0.05,
        retry_after=1,
        drop_rate=0.02,
        seed=1101,
        decimal_values=True,  # VALUES have fractions: an account with decimals enabled
    )
    meter = create_meter(url)
    start_s = int(time.time())
    env = connector_env(kafka_bootstrap, url, [topic], group_id, CONNECTOR_RETRY_MAX_BACKOFF_MS="2000")
    env[f"TOPIC_{topic_env_key(topic)}_DECIMAL_VALUES"] = "true"
    customers = [f"cus_faults{i}" for i in range(7)]
    expected: Counter[str] = Counter()
    ends: Ends = {}
    spikes = [
        {"latency_ms": 200},
        {"latency_ms": 0},
        {"latency_ms": 200, "expire_tokens": True},
        {"latency_ms": 0},
    ]
    with ConnectorProcess(env, tmp_path) as connector:
        with FaultToggler(url, spikes, period=0.7) as toggler:
            n = 0
            for _wave in range(WAVES):
                pairs = []
                for _ in range(WAVE_RECORDS):
                    customer = customers[n % len(customers)]
                    value = VALUES[n % len(VALUES)]
                    # Every third record carries its own identifier; the rest get kafka:topic:p:o.
                    identifier = f"faults-{topic}-{n}" if n % 3 == 0 else None
                    pairs.append((None, encode(usage(customer, value, identifier=identifier))))
                    expected[customer] += float(Decimal(str(value)))
                    n += 1
                merge(ends, produce(kafka_bootstrap, topic, pairs, partitions=4))
                time.sleep(2.0)
            wait_until(
                lambda: committed(kafka_bootstrap, group_id, ends) == ends,
                timeout=150,
                interval=1.0,
                message=f"committed == end offsets {ends}" + log_tail(connector),
            )
        assert not toggler.errors, toggler.errors
        set_faults(url, latency_ms=0)
        status = connector.stop(60)
        assert status == 0, f"exit status {status}" + log_tail(connector)

        got = totals(url, meter, customers, start_s)
        assert got == dict(expected), f"totals {got} != expected {dict(expected)}" + log_tail(connector)
        assert committed(kafka_bootstrap, group_id, ends) == ends, log_tail(connector)

        stats = emulator_stats(url)
        injected = stats["faults_injected"]
        # The faults really happened (otherwise this test proves nothing).
        assert injected["error"] > 0 and injected["rate_limited"] > 0, stats
        assert injected["latency"] > 0 and injected["dropped"] > 0, stats
        assert stats["sessions_created"] >= 3, stats  # 5-second tokens were renewed
        assert stats["events_valid"] == WAVES * WAVE_RECORDS, stats
        assert stats["events_invalid"] == 0, stats
        print(f"faults: {stats}")
        assert not unexpected_failures(connector), log_tail(connector)


# ------------------------------------------------------------------------------ 2. poison records

WRONG_SCHEMA = fastavro.parse_schema(
    {
        "type": "record",
        "name": "BillingEvent",
        "namespace": "other_team",
        "fields": [
            {"name": "account", "type": "string"},
            {"name": "units", "type": "double"},
            {"name": "occurred_at", "type": "long"},
        ],
    }
)


def wrong_schema(record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, WRONG_SCHEMA, record)
    return buffer.getvalue()


def poison(kind: str, n: int, now_ms: int) -> tuple[bytes | None, str, str]:
    """(value, expected kafka_stripe.error.code, expected exception class) of a bad record."""
    day_ms = 86_400_000
    if kind == "garbage":
        return b"\xff\xfe not Avro at all \x00" + str(n).encode(), "undecodable", "DecodeError"
    if kind == "wrong_schema":
        value = wrong_schema({"account": f"cus_other{n}", "units": 3.5, "occurred_at": now_ms})
        return value, "undecodable", "DecodeError"
    if kind == "empty_customer":
        return encode(usage("", 5, now_ms)), "missing_customer", "MappingError"
    if kind == "nan":
        return encode(usage("cus_poison0", float("nan"), now_ms)), "invalid_value", "MappingError"
    if kind == "too_old":
        return (
            encode(usage("cus_poison1", 5, now_ms - 40 * day_ms)),
            "timestamp_too_far_in_past",
            "MappingError",
        )
    if kind == "future":
        return encode(usage("cus_poison2", 5, now_ms + 3_600_000)), "timestamp_in_future", "MappingError"
    if kind == "long_identifier":
        value = encode(usage("cus_poison0", 5, now_ms, identifier="i" * 101))
        return value, "identifier_too_long", "MappingError"
    if kind == "tombstone":
        return None, "tombstone", "DecodeError"
    if kind == "not_whole":  # the topic takes whole numbers only (the default)
        return encode(usage("cus_poison1", 12.5, now_ms)), "value_not_whole", "MappingError"
    raise AssertionError(kind)


POISON_KINDS = [
    "garbage",
    "wrong_schema",
    "empty_customer",
    "nan",
    "too_old",
    "future",
    "long_identifier",
    "tombstone",
    "not_whole",
]


def test_poison_records_go_to_the_dead_letter_topic_and_good_ones_to_stripe(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    group_id: str,
    tmp_path: Path,
    emulator: Callable[..., str],
) -> None:
    """One record in nine is bad (garbage bytes, another team's schema, empty customer, NaN, 40 days
    old, 1 hour ahead, a 101-character identifier, a tombstone): each lands once in the dead-letter
    topic with its original key, value and headers, its coordinates and its error code; every good
    record is billed exactly; nothing bad reaches Stripe; everything is committed."""
    partitions = 3
    topic = make_topic(partitions=partitions)
    dlq = make_topic(partitions=1, name=f"{topic}.dlq")
    url = emulator(seed=2202)
    meter = create_meter(url)
    start_s = int(time.time())
    now_ms = int(time.time() * 1000)
    customers = [f"cus_poison{i}" for i in range(3)]

    records: list[Outgoing] = []
    bad: dict[int, tuple[str, str, str]] = {}  # index -> (kind, code, class)
    expected: Counter[str] = Counter()
    for n in range(900):
        key = f"key-{n}".encode()
        if n % 9 == 4:  # interleaved: one bad record in nine, every kind several times
            kind = POISON_KINDS[(n // 9) % len(POISON_KINDS)]
            value, code, cls = poison(kind, n, now_ms)
            bad[n] = (kind, code, cls)
            records.append(Outgoing(key, value, [("trace-id", f"trace-{n}".encode())]))
            continue
        customer = customers[n % 3]
        identifier = f"poison-{topic}-{n}" if n % 2 else None
        records.append(Outgoing(key, encode(usage(customer, n % 10 + 1, now_ms, identifier))))
        expected[customer] += n % 10 + 1
    kinds = Counter(kind for kind, _, _ in bad.values())
    assert set(kinds) == set(POISON_KINDS) and min(kinds.values()) >= 3, kinds

    sent, ends = produce_tracked(kafka_bootstrap, topic, records, partitions)
    env = connector_env(kafka_bootstrap, url, [topic], group_id)
    with ConnectorProcess(env, tmp_path) as connector:
        wait_until(
            lambda: committed(kafka_bootstrap, group_id, ends) == ends,
            timeout=90,
            interval=0.5,
            message=f"committed == end offsets {ends}" + log_tail(connector),
        )
        status = connector.stop(60)
        assert status == 0, f"exit status {status}" + log_tail(connector)

        got = totals(url, meter, customers, start_s)
        assert got == {c: float(v) for c, v in expected.items()}, f"totals {got} != {dict(expected)}" + (
            log_tail(connector)
        )
        stats = emulator_stats(url)
        assert stats["events_invalid"] == 0, f"a bad record reached Stripe: {stats}"
        assert stats["events_valid"] == len(records) - len(bad), stats

        letters = read_topic(kafka_bootstrap, dlq, 1, expected=len(bad), timeout=30)
        by_origin: dict[tuple[int, int], list[Any]] = {}
        for letter in letters:
            assert letter.header("__connect.errors.topic") == topic, letter
            origin = (
                int(letter.header("__connect.errors.partition") or -1),
                int(letter.header("__connect.errors.offset") or -1),
            )
            by_origin.setdefault(origin, []).append(letter)
        wanted = {(sent[n].partition, sent[n].offset): n for n in bad}
        missing = sorted(set(wanted) - set(by_origin))
        unexpected = sorted(set(by_origin) - set(wanted))
        duplicated = sorted(o for o, copies in by_origin.items() if len(copies) > 1)
        assert not missing and not unexpected, (
            f"dead letters missing for {missing[:10]}, unexpected for {unexpected[:10]}" + log_tail(connector)
        )
        assert not duplicated, f"dead-lettered more than once: {duplicated[:10]}"
        for origin, n in wanted.items():
            kind, code, cls = bad[n]
            letter = by_origin[origin][0]
            where = f"{kind} record #{n} at {topic}[{origin[0]}]@{origin[1]}"
            assert letter.key == records[n].key, f"{where}: key bytes changed"
            assert letter.value == records[n].value, f"{where}: value bytes changed"
            assert letter.header("kafka_stripe.error.code") == code, (where, letter.headers)
            assert letter.header("__connect.errors.exception.class.name") == cls, (where, letter.headers)
            reason = letter.header("kafka_stripe.error.reason")
            assert reason and letter.header("__connect.errors.exception.message") == reason, (where, letter)
            assert letter.header("kafka_stripe.original.timestamp") == str(sent[n].timestamp_ms), where
            assert letter.header("kafka_stripe.version"), where
            assert letter.headers[0] == ("trace-id", f"trace-{n}".encode()), f"{where}: original header lost"
        assert committed(kafka_bootstrap, group_id, ends) == ends
        print(f"poison: {len(bad)} dead letters {dict(kinds)}, {len(records) - len(bad)} delivered")
        assert not unexpected_failures(connector), log_tail(connector)


# ------------------------------------------------------------------------------------ 3. outage

OUTAGE_S = 30.0
BACKLOG = 100_000
MAX_BUFFERED = 5_000
RSS_GROWTH_LIMIT_MB = 50


def test_stripe_outage_pauses_with_flat_memory_commits_nothing_and_catches_up(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    group_id: str,
    tmp_path: Path,
    emulator: Callable[..., str],
) -> None:
    """Stripe refuses everything for 30 s while 100,000 records wait in Kafka.

    Why RSS growth stays under 50 MB. Python side: at most CONNECTOR_MAX_BUFFERED_RECORDS (5,000)
    consumed-but-not-done records plus one consume() call (500) before partitions pause (they pause even
    earlier once the sender starts backing off). Each costs ~1.2 kB (the KafkaRecord with its bytes,
    the MeterEvent and payload dict, the JSON document and request body the sender keeps for retries;
    measured with tracemalloc), so ~7 MB. librdkafka side: the connector caps the fetch queue at
    queued.max.messages.kbytes=4 MB of payload; this whole backlog is only ~2.3 MB of payload (23-byte
    records) but each fetched message also costs a few hundred bytes of librdkafka bookkeeping, so
    even with every record pre-fetched before the pause it stays around 30 MB, and pausing purges it.
    ~7 + ~30 MB < 50 MB. A buffer that kept the whole backlog in Python would need ~120 MB
    (100,000 × 1.2 kB) on top, so the bound tells them apart. Flatness: the peak in the second half
    of the outage may not exceed the first half's by more than 10 MB (no growth with time or retries).
    """
    partitions = 4
    topic = make_topic(partitions=partitions)
    make_topic(partitions=1, name=f"{topic}.dlq")
    url = emulator(seed=3303)
    meter = create_meter(url)
    start_s = int(time.time())
    customers = [f"cus_outagep{p}" for p in range(partitions)]  # one per partition: count = offsets
    env = connector_env(
        kafka_bootstrap,
        url,
        [topic],
        group_id,
        CONNECTOR_MAX_BUFFERED_RECORDS=str(MAX_BUFFERED),
        CONNECTOR_RETRY_MAX_BACKOFF_MS="2000",
    )

    def records(count: int) -> list[tuple[bytes | None, bytes]]:
        now_ms = int(time.time() * 1000)
        encoded = [encode(usage(c, 1, now_ms)) for c in customers]
        return [(None, encoded[n % partitions]) for n in range(count)]  # record n -> partition n % 4

    def stripe_counts() -> dict[int, float]:
        end_s = int(time.time()) + 120
        return {p: meter_total(url, meter, customers[p], start_s - 120, end_s) for p in range(partitions)}

    violations: list[str] = []

    def consistent(offsets: Ends) -> None:
        """Everything below a committed offset must already be in Stripe (value 1 per record)."""
        counts = stripe_counts()  # read after the commits: Stripe's counts only grow
        for (_t, p), position in offsets.items():
            if position >= 0 and counts[p] < position:
                violations.append(f"partition {p}: committed {position}, Stripe holds {counts[p]:.0f}")

    with ConnectorProcess(env, tmp_path) as connector:
        pid = connector.proc.pid
        ends = produce(kafka_bootstrap, topic, records(4_000), partitions)
        wait_until(
            lambda: committed(kafka_bootstrap, group_id, ends) == ends,
            timeout=90,
            message="the warm-up records committed" + log_tail(connector),
        )
        time.sleep(1.0)
        baseline_kb = 0
        for _ in range(4):
            baseline_kb = max(baseline_kb, rss_kb(pid) or 0)
            time.sleep(0.25)
        before = dict(ends)
        accepted_before = quick_stats(url)["events_accepted"]

        set_faults(url, outage=True)
        outage_started = time.monotonic()
        merge(ends, produce(kafka_bootstrap, topic, records(BACKLOG), partitions))
        rss: list[tuple[float, int]] = []
        commits: list[Ends] = []
        next_commit_check = 0.0
        while (elapsed := time.monotonic() - outage_started) < OUTAGE_S:
            sample = rss_kb(pid)
            assert sample is not None, "the connector died during the outage" + log_tail(connector)
            rss.append((elapsed, sample))
            if elapsed >= next_commit_check:
                offsets = committed(kafka_bootstrap, group_id, before)
                commits.append(offsets)
                consistent(offsets)
                next_commit_check = elapsed + 3.0
            time.sleep(0.5)
        outage_stats = quick_stats(url)
        set_faults(url, outage=False)
        log_during_outage = connector.log()

        def caught_up() -> bool:
            offsets = committed(kafka_bootstrap, group_id, ends)
            consistent(offsets)
            return offsets == ends

        wait_until(
            caught_up,
            timeout=150,
            interval=1.0,
            message=f"catch-up: committed == end offsets {ends}" + log_tail(connector),
        )
        status = connector.stop(60)
        assert status == 0, f"exit status {status}" + log_tail(connector)

        peak_kb = max(kb for _, kb in rss)
        growth_mb = (peak_kb - baseline_kb) / 1024
        first_half = max(kb for t, kb in rss if t < OUTAGE_S / 2)
        second_half = max(kb for t, kb in rss if t >= OUTAGE_S / 2)
        figures = (
            f"RSS baseline {baseline_kb / 1024:.1f} MB, peak during outage {peak_kb / 1024:.1f} MB "
            f"(growth {growth_mb:.1f} MB), max first half {first_half / 1024:.1f} MB, "
            f"second half {second_half / 1024:.1f} MB; samples (s, MB): "
            + ", ".join(f"{t:.0f}:{kb / 1024:.0f}" for t, kb in rss[::6])
        )
        print(figures)
        (tmp_path / "rss.txt").write_text(figures + "\n")

        assert "paused" in log_during_outage, "no 'paused' in the log during the outage" + log_tail(connector)
        assert outage_stats["faults_injected"]["outage"] > 0, outage_stats
        assert outage_stats["events_accepted"] == accepted_before, (
            f"Stripe accepted events during the outage: {outage_stats}"
        )
        assert all(c == before for c in commits), (
            f"committed offsets moved during the outage: {before} -> {commits}" + log_tail(connector)
        )
        assert not violations, violations[:10]
        assert growth_mb < RSS_GROWTH_LIMIT_MB, figures + log_tail(connector)
        assert (second_half - first_half) / 1024 < 10, f"RSS still growing: {figures}" + log_tail(connector)

        got = stripe_counts()
        want = {p: float(ends[(topic, p)]) for p in range(partitions)}
        assert got == want, f"totals {got} != {want}" + log_tail(connector)
        assert sum(want.values()) == 4_000 + BACKLOG
        assert not unexpected_failures(connector), log_tail(connector)


# ---------------------------------------------------------------------------- 4. graceful shutdown

SHUTDOWN_TIMEOUT_S = 10
SHUTDOWN_GRACE_S = 8  # commit, leaving the group, closing the HTTP client: on top of the timeout
SHUTDOWN_RECORDS = 16_000
MAX_IN_FLIGHT = 2


def test_sigterm_commits_the_done_prefix_second_sigterm_exits_at_once_restart_finishes(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    group_id: str,
    tmp_path: Path,
    emulator: Callable[..., str],
) -> None:
    """Slow Stripe (250 ms a request, 2 in flight: ~800 events/s) so SIGTERM lands mid-load.

    Periodic commits are off (60 s) for the first two runs, so every committed offset comes from the
    shutdown itself. Every record has its own (customer, hour), so Stripe's hourly summaries tell,
    record by record, what was delivered.
    """
    partitions = 4
    topic = make_topic(partitions=partitions)
    make_topic(partitions=1, name=f"{topic}.dlq")
    url = emulator(latency_ms=250, seed=4404)
    meter = create_meter(url)
    tag = uuid.uuid4().hex[:6]
    plan = HourPlan(tag, base_hour_s=int(time.time()) // HOUR_S * HOUR_S - HOUR_S, block=500)
    records = []
    for n in range(SHUTDOWN_RECORDS):
        p, o = n % partitions, n // partitions  # the planned coordinates; checked against the reports
        value = encode(usage(plan.customer(p, o), 1, plan.timestamp_ms(o), identifier=f"sd-{tag}-{p}-{o}"))
        records.append(Outgoing(None, value))
    sent, ends = produce_tracked(kafka_bootstrap, topic, records, partitions)
    assert [(s.partition, s.offset) for s in sent] == [
        (n % partitions, n // partitions) for n in range(SHUTDOWN_RECORDS)
    ], "records did not land where planned (fresh topic, one producer, idempotent)"
    keys = list(ends)
    slow = dict(
        CONNECTOR_SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_TIMEOUT_S),
        CONNECTOR_COMMIT_INTERVAL_MS="60000",
        CONNECTOR_MAX_IN_FLIGHT=str(MAX_IN_FLIGHT),
    )
    env = connector_env(kafka_bootstrap, url, [topic], group_id, **slow)
    runs: list[ConnectorProcess] = []

    # --- run A: SIGTERM under load -> exit 0 within the timeout, commit the done prefix
    with ConnectorProcess(env, tmp_path) as a:
        runs.append(a)
        wait_until(
            lambda: quick_stats(url)["events_accepted"] >= 2_000,
            timeout=60,
            message="run A delivering" + log_tail(a),
        )
        a.signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            status = a.wait(SHUTDOWN_TIMEOUT_S + 60)
        except Exception:
            pytest.fail("run A did not exit within 70 s of SIGTERM" + log_tail(a))
        took = time.monotonic() - signalled
        assert status == 0, f"run A exit status {status}" + log_tail(a)
        assert took <= SHUTDOWN_TIMEOUT_S + SHUTDOWN_GRACE_S, (
            f"run A took {took:.1f} s to exit after SIGTERM, timeout {SHUTDOWN_TIMEOUT_S} s" + log_tail(a)
        )
    after_a = committed(kafka_bootstrap, group_id, keys)
    set_faults(url, latency_ms=0)  # the latency applies to every API route: not to our lookups
    in_stripe = plan.delivered(url, meter, ends)
    print(
        f"run A: exit {took:.1f} s after SIGTERM; committed {[after_a[k] for k in keys]}; in Stripe "
        f"{[len(in_stripe.get(k[1], {})) for k in keys]}, contiguous from 0: "
        f"{[next(o for o in range(ends[k] + 1) if o not in in_stripe.get(k[1], {})) for k in keys]}"
    )
    # The shutdown commit happened (periodic commits are off). Not necessarily on every partition:
    # the sender is FIFO in consumption order, and librdkafka may hand over one partition's backlog
    # after another's, so a partition may have had nothing done yet.
    assert sum(max(position, 0) for position in after_a.values()) > 0, (
        f"run A committed nothing: {after_a}" + log_tail(a)
    )
    for (_t, p), position in after_a.items():
        holes = [o for o in range(position) if in_stripe.get(p, {}).get(o) != 1.0]
        assert not holes, (
            f"partition {p}: committed {position} but {len(holes)} records below it are not in Stripe "
            f"exactly once (first {holes[:10]})" + log_tail(a)
        )
    beyond = sum(1 for (_t, p), pos in after_a.items() for o in in_stripe.get(p, {}) if o >= pos)
    # Delivered but not committed: at most what was in flight, or done out of order, when the final
    # commit was taken (2 requests of 100 events, twice over), not a whole stretch of finished work.
    assert beyond <= 4 * MAX_IN_FLIGHT * 100, (
        f"{beyond} records in Stripe beyond the committed offsets {after_a}: the shutdown commit lags"
        + log_tail(a)
    )

    # --- run B: two SIGTERMs -> exits at once, non-zero, commits nothing new
    set_faults(url, latency_ms=250)
    with ConnectorProcess(env, tmp_path) as b:
        runs.append(b)
        received = quick_stats(url)["events_received"]
        wait_until(
            lambda: quick_stats(url)["events_received"] >= received + 300,
            timeout=60,
            message="run B delivering" + log_tail(b),
        )
        b.signal(signal.SIGTERM)
        time.sleep(0.5)
        b.signal(signal.SIGTERM)
        second = time.monotonic()
        try:
            status = b.wait(30)
        except Exception:
            pytest.fail("run B did not exit after the second SIGTERM" + log_tail(b))
        took = time.monotonic() - second
        assert status != 0, f"run B exit status {status} after two SIGTERMs" + log_tail(b)
        assert took < 5, f"run B took {took:.1f} s to exit after the second SIGTERM" + log_tail(b)
        assert "exiting now without committing" in b.log(), log_tail(b)
    after_b = committed(kafka_bootstrap, group_id, keys)
    assert after_b == after_a, f"run B committed after the second SIGTERM: {after_a} -> {after_b}" + logs(
        runs
    )

    # --- run C: a fresh connector finishes the rest; every record exactly once
    set_faults(url, latency_ms=0)
    env_c = connector_env(kafka_bootstrap, url, [topic], group_id, CONNECTOR_SHUTDOWN_TIMEOUT_S="10")
    with ConnectorProcess(env_c, tmp_path) as c:
        runs.append(c)
        wait_until(
            lambda: committed(kafka_bootstrap, group_id, keys) == ends,
            timeout=120,
            interval=0.5,
            message=f"run C: committed == end offsets {ends}" + log_tail(c),
        )
        status = c.stop(60)
        assert status == 0, f"run C exit status {status}" + log_tail(c)
    in_stripe = plan.delivered(url, meter, ends)
    for (_t, p), end in ends.items():
        held = in_stripe.get(p, {})
        wrong = {o: held.get(o) for o in range(end) if held.get(o) != 1.0}
        extra = sorted(o for o in held if o >= end)
        assert not wrong and not extra, (
            f"partition {p}: {len(wrong)} records not counted exactly once (first "
            f"{dict(list(wrong.items())[:10])}), {len(extra)} unknown" + logs(runs)
        )
    stats = emulator_stats(url)
    assert stats["events_valid"] == SHUTDOWN_RECORDS, stats
    # A graceful stop abandons the sends still running; that must not look like a sender bug.
    for run in runs:
        failures = unexpected_failures(run)
        assert not failures, f"{len(failures)} unexpected failures logged, e.g. {failures[:3]}" + log_tail(
            run
        )


# ------------------------------------------------------------- Stripe-Should-Retry, compression, limits


def origin(letter: Any) -> tuple[int, int]:
    """The (partition, offset) a dead letter came from, by its Connect headers."""
    partition = letter.header("__connect.errors.partition")
    offset = letter.header("__connect.errors.offset")
    return int(partition or -1), int(offset or -1)


def test_do_not_retry_answers_and_compressed_answers_keep_totals_exact(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    group_id: str,
    tmp_path: Path,
    emulator: Callable[..., str],
) -> None:
    """5% of stream answers are 500 + ``Stripe-Should-Retry: false``, every answer is gzipped for a
    client that accepts it, tokens live 5 seconds: the refused-for-now batches are sent again later,
    never dead-lettered; the dead-letter topic holds the deliberately malformed records and nothing else."""
    topic = make_topic(partitions=4)
    dlq = make_topic(partitions=1, name=f"{topic}.dlq")
    url = emulator(error_rate=0.05, should_retry="false", compress=True, session_ttl=5, seed=1212)
    meter = create_meter(url)
    start_s = int(time.time())
    now_ms = int(time.time() * 1000)
    customers = [f"cus_dnr{i}" for i in range(4)]
    records: list[Outgoing] = []
    bad: dict[int, str] = {}
    expected: Counter[str] = Counter()
    for n in range(6000):
        if n % 500 == 7:
            kind = ("not_whole", "nan", "garbage")[(n // 500) % 3]
            value, code, _cls = poison(kind, n, now_ms)
            bad[n] = code
            records.append(Outgoing(f"k{n}".encode(), value))
            continue
        customer = customers[n % len(customers)]
        records.append(Outgoing(f"k{n}".encode(), encode(usage(customer, n % 9 + 1, now_ms))))
        expected[customer] += n % 9 + 1
    # Batches of 20: some 300 stream requests, so 5% of them is a dozen refusals, not a handful.
    env = connector_env(kafka_bootstrap, url, [topic], group_id, CONNECTOR_BATCH_SIZE="20")
    env["CONNECTOR_RETRY_INITIAL_BACKOFF_MS"] = "50"
    half = len(records) // 2
    with ConnectorProcess(env, tmp_path) as connector:
        sent, ends = produce_tracked(kafka_bootstrap, topic, records[:half], 4)
        wait_until(
            lambda: committed(kafka_bootstrap, group_id, ends) == ends,
            timeout=120,
            interval=0.5,
            message=f"committed == end offsets {ends}" + log_tail(connector),
        )
        # Every token dies at once: the expiry 401s come back while the rest streams in.
        set_faults(url, expire_tokens=True)
        more, ends = produce_tracked(kafka_bootstrap, topic, records[half:], 4)
        sent += more
        wait_until(
            lambda: committed(kafka_bootstrap, group_id, ends) == ends,
            timeout=120,
            interval=0.5,
            message=f"committed == end offsets {ends}" + log_tail(connector),
        )
        status = connector.stop(60)
        assert status == 0, f"exit status {status}" + log_tail(connector)
        got = totals(url, meter, customers, start_s)
        assert got == {c: float(v) for c, v in expected.items()}, f"totals {got}" + log_tail(connector)
        stats = emulator_stats(url)
        assert stats["faults_injected"]["error"] >= 5, stats  # the refusals really happened
        assert stats["sessions_created"] >= 2, stats  # 5-second tokens were renewed
        assert stats["events_invalid"] == 0, stats
        letters = read_topic(kafka_bootstrap, dlq, 1, expected=len(bad), timeout=30)
        lettered = {origin(x): x.header("kafka_stripe.error.code") for x in letters}
        assert len(letters) == len(bad), f"{len(letters)} dead letters for {len(bad)} malformed records"
        assert lettered == {(sent[n].partition, sent[n].offset): code for n, code in bad.items()}
        print(f"do-not-retry: {stats['faults_injected']['error']} answers 500 + Stripe-Should-Retry: false")
        assert not unexpected_failures(connector), log_tail(connector)


def test_the_test_mode_rate_limit_meets_the_sandbox_limit_with_few_429s(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    group_id: str,
    tmp_path: Path,
    emulator: Callable[..., str],
) -> None:
    """Against Stripe's sandbox limit (25 requests/s across the account) a test-mode key's default
    (25 requests/s) delivers every record exactly once, meeting few 429s on the way."""
    topic = make_topic(partitions=2)
    make_topic(partitions=1, name=f"{topic}.dlq")
    url = emulator(sandbox_limits=True, seed=1313)
    meter = create_meter(url)
    start_s = int(time.time())
    now_ms = int(time.time() * 1000)
    customers = [f"cus_sandbox{i}" for i in range(3)]
    records = [Outgoing(None, encode(usage(customers[n % 3], n % 5 + 1, now_ms))) for n in range(8000)]
    expected: Counter[str] = Counter()
    for n in range(8000):
        expected[customers[n % 3]] += n % 5 + 1
    _sent, ends = produce_tracked(kafka_bootstrap, topic, records, 2)
    env = connector_env(kafka_bootstrap, url, [topic], group_id)
    del env["CONNECTOR_RATE_LIMIT_RPS"]  # the default of a test-mode key
    with ConnectorProcess(env, tmp_path) as connector:
        wait_until(
            lambda: committed(kafka_bootstrap, group_id, ends) == ends,
            timeout=120,
            interval=0.5,
            message=f"committed == end offsets {ends}" + log_tail(connector),
        )
        status = connector.stop(60)
        assert status == 0, f"exit status {status}" + log_tail(connector)
        assert "rate limit 25 requests/s to Stripe (test-mode key" in connector.log()
        got = totals(url, meter, customers, start_s)
        assert got == {c: float(v) for c, v in expected.items()}, f"totals {got}" + log_tail(connector)
        stats = emulator_stats(url)
        by_status = {int(k): v for k, v in stats["stream_requests_by_status"].items()}
        ok, limited = by_status.get(200, 0), by_status.get(429, 0)
        print(f"sandbox limits: {ok} stream requests accepted, {limited} answered 429")
        assert ok >= 80, by_status  # 8,000 events need at least 80 requests of 100
        assert limited <= max(3, ok // 20), f"too many 429s for a paced client: {by_status}"
