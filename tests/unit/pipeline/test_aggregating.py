"""The aggregation shell's bounds: records in segments are exempt from the read buffer up to
CONNECTOR_AGGREGATE_MAX_RECORDS (open or closed, until answered); a window-total meter's partition sends
one segment at a time."""

from __future__ import annotations

from connector.pipeline.aggregating import AggregatedMeter, Aggregating
from connector.pipeline.aggregation import Aggregate
from connector.pipeline.identity import StaticIdentity
from connector.pipeline.offsets import PartitionOffsets
from tests.unit.pipeline.fakes import TOPIC, settings

T0 = 1_794_999_600_000  # an hour boundary


def shell(meter: AggregatedMeter, max_records: int = 10) -> Aggregating:
    configured = settings(TOPIC_USAGE_AGGREGATE="1m", CONNECTOR_AGGREGATE_MAX_RECORDS=str(max_records))
    return Aggregating(configured, StaticIdentity({}, {}), {TOPIC: meter})


def feed(aggregating: Aggregating, offsets: PartitionOffsets, start: int, count: int, minute: int) -> list:
    aggregator = aggregating.run(offsets)
    assert aggregator is not None
    closed = []
    for offset in range(start, start + count):
        offsets.track(offset)
        closed += aggregator.add(offset, f"cus_{offset % 3}", "1", T0 + minute * 60_000, {}, now=0)
    return closed


def answer_all(aggregating: Aggregating, offsets: PartitionOffsets, items: list) -> None:
    for item in items:
        assert isinstance(item.message, Aggregate)
        aggregating.answered(item.message, offsets, None)


def test_records_in_segments_are_exempt_from_the_read_buffer_only_up_to_the_bound() -> None:
    aggregating = shell(AggregatedMeter(), max_records=10)
    offsets = PartitionOffsets(TOPIC, 0)
    feed(aggregating, offsets, 0, 8, minute=0)
    assert aggregating.held == 8  # an open segment
    closed = feed(aggregating, offsets, 8, 6, minute=2)  # the first minute closes: 8 records out
    assert [f.segment.records for f in closed] == [8]
    admitted = aggregating.admit(offsets, closed)
    items = [item for flush in admitted for item in aggregating.items(offsets, flush, "ns", None)]
    assert aggregating.held == 10  # 8 unanswered + 6 open = 14, of which 4 count toward the read buffer
    answer_all(aggregating, offsets, items)
    assert aggregating.held == 6


def test_a_window_total_partition_sends_its_next_segment_once_the_one_before_was_answered() -> None:
    aggregating = shell(AggregatedMeter("sum", 3600), max_records=100)
    offsets = PartitionOffsets(TOPIC, 0)
    first = feed(aggregating, offsets, 0, 3, minute=0) + feed(aggregating, offsets, 3, 3, minute=2)
    second = feed(aggregating, offsets, 6, 3, minute=4)
    assert len(first) == 1 and len(second) == 1
    sent = aggregating.admit(offsets, first)
    assert sent == first and aggregating.admit(offsets, second) == []  # waits for the first
    items = aggregating.items(offsets, sent[0], "ns", None)
    assert aggregating.released() == []
    answer_all(aggregating, offsets, items)
    released = aggregating.released()
    assert [flush for _offsets, flush in released] == second
    values = [i.event.payload["value"] for i in aggregating.items(offsets, second[0], "ns", None)]
    assert sorted(values) == ["2", "2", "2"]  # running totals of the hour: 1 + 1 per customer
