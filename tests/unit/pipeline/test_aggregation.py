"""The pure pre-aggregation core: sums and latest values per customer, window and payload; segments close
on event time, age, or a fixed end; a replay along the fixed ranges rebuilds the same aggregates."""

from __future__ import annotations

import random
from decimal import Decimal

from connector.pipeline.aggregation import (
    Flush,
    PartitionAggregator,
    aggregate_identifier,
    event_fields,
)

MINUTE_MS = 60_000
T0 = 1_795_000_020_000  # a minute boundary: 1795000020 s is divisible by 60


def aggregator(plan: list[tuple[int, int]] | None = None) -> PartitionAggregator:
    return PartitionAggregator(window_s=60, grace_s=10, max_age_s=300, plan=plan or [])


def test_records_sum_per_customer_window_and_payload() -> None:
    agg = aggregator()
    agg.add(0, "cus_a", "5", T0 + 1, (), now=0)
    agg.add(1, "cus_a", "7", T0 + 2, (), now=0)
    agg.add(2, "cus_b", "1", T0 + 3, (), now=0)
    agg.add(3, "cus_a", "2.5", T0 + 4, {"region": "eu"}, now=0)
    agg.add(4, "cus_a", "1", T0 + MINUTE_MS, (), now=0)  # the next window
    segment = agg.open
    assert segment is not None and segment.records == 5
    totals = {key: a.total for key, a in segment.aggregates.items()}
    window = T0 // 1000
    assert totals == {
        ("cus_a", window, ()): 12,
        ("cus_b", window, ()): 1,
        ("cus_a", window, (("region", "eu"),)): Decimal("2.5"),
        ("cus_a", window + 60, ()): 1,
    }
    payload, at = event_fields(segment.aggregates[("cus_a", window, ())], "sum", "customer", "value")
    assert payload == {"customer": "cus_a", "value": "12"} and at == window * 1000
    payload, at = event_fields(segment.aggregates[("cus_a", window, ())], "last", "customer", "value")
    assert payload["value"] == "7" and at == T0 + 2


def test_a_segment_closes_when_its_earliest_window_closed_in_event_time_plus_grace() -> None:
    agg = aggregator()
    agg.add(10, "cus_a", "1", T0 + 5, (), now=0)
    agg.add(11, "cus_a", "1", T0 + MINUTE_MS + 9_000, (), now=1)  # window end + 9 s: within the grace
    assert agg.due(now=2, next_offset=12) is None
    closed = agg.add(12, "cus_b", "1", T0 + MINUTE_MS + 10_000, (), now=3)  # cut before it
    assert [(f.segment.start, f.segment.end, f.reason) for f in closed] == [(10, 12, "window")]
    # A late record for an earlier window, added to the open segment once event time is past that
    # window's close, closes it at the next check.
    agg.add(13, "cus_c", "1", T0 + 5, (), now=4)
    flush = agg.due(now=4, next_offset=14)
    assert flush is not None and flush.reason == "window"
    assert (flush.segment.start, flush.segment.end) == (12, 14)
    assert agg.open is None


def test_a_segment_closes_at_its_maximum_age_and_late_records_are_counted() -> None:
    agg = aggregator()
    agg.add(0, "cus_a", "1", T0, (), now=100)
    assert agg.due(now=399, next_offset=1) is None
    flush = agg.due(now=400, next_offset=1)
    assert flush is not None and flush.reason == "age"
    agg.add(1, "cus_a", "1", T0 + 1, (), now=401)  # a window already flushed: a new aggregate for it
    assert agg.late == 1


def test_a_replay_cuts_along_the_fixed_ranges_and_rebuilds_the_same_aggregates() -> None:
    rng = random.Random(3)
    records = [(o, rng.choice(["cus_a", "cus_b", "cus_c"]), str(rng.randint(1, 9))) for o in range(40)]

    def run(agg: PartitionAggregator, closes_at: set[int]) -> list[Flush]:
        flushes: list[Flush] = []
        for offset, customer, value in records:
            flushes += agg.add(offset, customer, value, T0 + offset, (), now=0)
            if offset in closes_at and agg.open is not None and agg.open.fixed_end is None:
                flushes.append(agg.close(offset + 1, "age"))
        if (last := agg.close_all(40)) is not None:
            flushes.append(last)
        return flushes

    first = run(aggregator(), closes_at={12, 25})
    ranges = [(f.segment.start, f.segment.end) for f in first]
    assert ranges == [(0, 13), (13, 26), (26, 40)]
    # A replay from offset 0 with the first two ranges fixed, closing at other moments of its own:
    again = run(aggregator(plan=[(0, 13), (13, 26)]), closes_at={5, 30})
    assert [(f.segment.start, f.segment.end) for f in again][:2] == ranges[:2]

    def identifiers(flushes: list[Flush]) -> dict[str, int | Decimal]:
        return {
            aggregate_identifier("ns", 0, f.segment.start, f.segment.end or 0, key): a.total
            for f in flushes
            for key, a in f.segment.aggregates.items()
        }

    fixed_first = identifiers(first[:2])
    fixed_again = identifiers(again[:2])
    assert fixed_first == fixed_again  # same identifiers, same values: Stripe deduplicates the resend
    assert sum(identifiers(again).values()) == sum(int(v) for _o, _c, v in records)


def test_a_fixed_segment_is_not_closed_early_and_starts_where_it_was_fixed() -> None:
    agg = aggregator(plan=[(100, 110)])
    agg.skip(102, now=0)  # its first records are gone (a transaction marker, a skipped record)
    agg.add(103, "cus_a", "1", T0, (), now=0)
    assert agg.open is not None and (agg.open.start, agg.open.fixed_end) == (100, 110)
    assert agg.due(now=10_000, next_offset=104) is None  # age and windows do not close a fixed range
    flush = aggregator(plan=[(0, 2)])
    flush.add(0, "cus_a", "1", T0, (), now=0)
    flush.add(1, "cus_a", "1", T0, (), now=0)
    closed = flush.due(now=0, next_offset=2)  # read up to its end: closed, even with no record after it
    assert closed is not None and (closed.segment.start, closed.segment.end, closed.reason) == (0, 2, "fixed")
    assert agg.close_all(104) is None  # a revoke leaves it to the next reader, who replays it whole
    closed = agg.add(110, "cus_a", "1", T0, (), now=0)
    assert [(f.segment.start, f.segment.end, f.reason) for f in closed] == [(100, 110, "fixed")]


def test_identifiers_fit_stripes_hundred_characters() -> None:
    key = ("cus_" + "x" * 200, 1_795_000_020, (("region", "y" * 300),))
    identifier = aggregate_identifier("A" * 22, 2**31 - 1, 2**63 - 2, 2**63 - 1, key)
    assert len(identifier) <= 100


def test_a_record_past_a_windows_close_starts_the_next_segment() -> None:
    agg = aggregator()
    agg.add(0, "cus_a", "1", T0 + 1, {}, now=0)
    agg.add(1, "cus_b", "1", T0 + MINUTE_MS + 9_999, {}, now=0)  # within the grace: same segment
    closed = agg.add(2, "cus_a", "1", T0 + MINUTE_MS + 10_000, {}, now=0)  # the first minute closes
    assert [(f.segment.start, f.segment.end, f.reason) for f in closed] == [(0, 2, "window")]
    assert agg.open is not None and agg.open.start == 2 and list(agg.open.aggregates) == [
        ("cus_a", T0 // 1000 + 60, ())
    ]
    replay = aggregator(plan=[(0, 2)])  # a fixed range is cut where it was fixed, whatever the times say
    replay.add(0, "cus_a", "1", T0 + 1, {}, now=0)
    assert replay.add(1, "cus_b", "1", T0 + 5 * MINUTE_MS, {}, now=0) == []
