"""Running window totals (meters with an event_time_window): each aggregate carries its customer's running
total for the meter's window; the totals after each fixed range make a replay send exactly what the run
before sent; records for windows no longer kept are refused the same way on every replay."""

from __future__ import annotations

import json
import random
from decimal import Decimal

import pytest

from connector.errors import RecordRejected
from connector.kafka.delivery_ledger import LedgerKey
from connector.kafka.segments import decode_segments, segments_key
from connector.pipeline.aggregation import Fixed, Flush, PartitionAggregator, event_fields
from connector.pipeline.identity import _beyond
from connector.pipeline.window_totals import Snapshot

HOUR = 3600
T0 = 1_794_999_600_000  # an hour boundary (1794999600 is divisible by 3600)
MINUTE_MS = 60_000


def aggregator(plan: list[Fixed] | None = None) -> PartitionAggregator:
    return PartitionAggregator(window_s=60, grace_s=10, max_age_s=300, plan=plan or [], totals_window_s=HOUR)


def sent(flush: Flush, formula: str = "sum") -> dict[tuple[str, int], str]:
    """The value each aggregate of a closed segment sends, per (customer, window)."""
    out = {}
    for key, aggregate in flush.segment.aggregates.items():
        payload, _at = event_fields(aggregate, formula, "customer", "value")
        out[(key[0], key[1])] = payload["value"]
    return out


def test_each_segment_sends_the_running_total_of_the_hour() -> None:
    agg = aggregator()
    agg.add(0, "cus_a", "5", T0 + 1, {"region": "eu"}, now=0)
    agg.add(1, "cus_a", "7", T0 + 2, {"region": "us"}, now=0)  # one total per customer and hour
    first = agg.close(2, "window")
    assert sent(first) == {("cus_a", T0 // 1000): "12"}
    agg.add(2, "cus_a", "1.5", T0 + MINUTE_MS, (), now=0)
    agg.add(3, "cus_b", "4", T0 + MINUTE_MS, (), now=0)
    second = agg.close(4, "window")
    assert sent(second) == {("cus_a", T0 // 1000): "13.5", ("cus_b", T0 // 1000): "4"}
    assert second.segment.snapshot is not None
    assert second.segment.snapshot.totals[("cus_a", T0 // 1000)][0] == Decimal("13.5")
    agg.add(4, "cus_a", "2", T0 + HOUR * 1000, (), now=0)  # the next hour starts from nothing
    assert sent(agg.close(5, "window")) == {("cus_a", T0 // 1000 + HOUR): "2"}


def test_last_meters_send_the_latest_value_of_the_hour_so_far() -> None:
    agg = aggregator()
    agg.add(0, "cus_a", "9", T0 + 50, (), now=0)
    agg.add(1, "cus_a", "3", T0 + 10, (), now=0)  # older in event time: not the latest
    assert sent(agg.close(2, "window"), "last") == {("cus_a", T0 // 1000): "9"}
    agg.add(2, "cus_a", "4", T0 + 20, (), now=0)  # still older than 9's time
    assert sent(agg.close(3, "window"), "last") == {("cus_a", T0 // 1000): "9"}


def test_a_replay_from_any_commit_sends_what_the_first_run_sent() -> None:
    rng = random.Random(11)
    customers = ["cus_a", "cus_b", "cus_c", "cus_d"]
    records = [(o, rng.choice(customers), str(rng.randint(1, 9)), T0 + o * 20_000) for o in range(400)]

    def run(agg: PartitionAggregator, start: int, cut_every: int) -> list[Flush]:
        flushes: list[Flush] = []
        for offset, customer, value, millis in records[start:]:
            flushes += agg.add(offset, customer, value, millis, (), now=0)
            if rng.random() < 1 / cut_every and agg.open is not None and agg.open.fixed_end is None:
                flushes.append(agg.close(offset + 1, "age"))
        if (last := agg.close_all(len(records))) is not None:
            flushes.append(last)
        return flushes

    first = run(aggregator(), 0, cut_every=15)
    fixed = [Fixed(f.segment.start, f.segment.end or 0, f.segment.snapshot) for f in first]
    for commit_index in range(len(first)):  # the group committed at the start of this segment
        commit = first[commit_index].segment.start
        plan = fixed[max(commit_index - 1, 0) :]  # the ledger keeps the last range below the commit
        again = run(aggregator(plan), commit, cut_every=7)
        assert [sent(f) for f in again[: len(first) - commit_index]] == [
            sent(f) for f in first[commit_index:]
        ]
    # Stripe's view (the latest received per customer and hour) is the hour's whole total.
    latest: dict[tuple[str, int], str] = {}
    for flush in first:
        latest.update(sent(flush))
    truth: dict[tuple[str, int], int] = {}
    for _o, customer, value, millis in records:
        key = (customer, millis // 1000 // HOUR * HOUR)
        truth[key] = truth.get(key, 0) + int(value)
    assert {k: int(v) for k, v in latest.items()} == truth


def test_records_for_windows_no_longer_kept_are_refused_on_every_replay_alike() -> None:
    agg = aggregator()
    agg.add(0, "cus_a", "1", T0, (), now=0)
    agg.add(1, "cus_a", "1", T0 + 2 * HOUR * 1000, (), now=0)  # two hours later: the first hour ends
    with pytest.raises(RecordRejected) as refused:
        agg.add(2, "cus_a", "1", T0 + 5, (), now=0)
    assert refused.value.code == "window_total_expired"
    agg.add(2, "cus_a", "1", T0 + HOUR * 1000, (), now=0)  # the hour before the latest: still kept
    flush = agg.close(3, "window")
    assert flush.segment.snapshot is not None
    assert ("cus_a", T0 // 1000) not in flush.segment.snapshot.totals  # dropped once too old
    replay = aggregator([Fixed(0, 3, flush.segment.snapshot)])
    with pytest.raises(RecordRejected):  # the watermark came back with the totals
        replay.add(3, "cus_a", "1", T0 + 5, (), now=0)


def test_snapshots_survive_the_ledger_and_its_pruning() -> None:
    snapshot = Snapshot(
        T0 + 5, {("cus_a", T0 // 1000): (Decimal("1.25"), T0 + 5, "1.25"), ("cus_b", 0): (3, -1, "0")}
    )
    key = LedgerKey("ns", "api_calls", "topic-id", 3)
    ranges = [(0, 10, snapshot.encode()), (10, 20, snapshot.encode())]

    value = json.dumps({"segments": [list(r) for r in ranges]}).encode()
    found = decode_segments(segments_key(key), value)
    assert found is not None and found[0] == key
    assert [Snapshot.decode(t) for _s, _e, t in found[1] if t is not None] == [snapshot, snapshot]
    assert _beyond(found[1], 10) == found[1]  # the range ending at the commit keeps its totals
    assert _beyond(found[1], 20) == found[1][1:]
    assert _beyond([(0, 10, None), (10, 20, None)], 10) == [(10, 20, None)]
    with pytest.raises(ValueError):
        Snapshot.decode({"watermark": 1, "totals": [["cus_a"]]})


def test_a_segment_not_fixed_closes_where_a_fixed_range_begins() -> None:
    agg = PartitionAggregator(window_s=60, grace_s=10, max_age_s=300, plan=[(20, 30)])
    agg.add(12, "cus_a", "1", T0, (), now=0)
    closed = agg.add(21, "cus_a", "1", T0, (), now=0)  # 13..20 gone: the range fixed before starts at 20
    assert [(f.segment.start, f.segment.end) for f in closed] == [(12, 20)]
    assert agg.open is not None and (agg.open.start, agg.open.fixed_end) == (20, 30)
