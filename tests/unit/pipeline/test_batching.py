"""Batches close on count, on linger and on flush, and never exceed Stripe's 100 events."""

from __future__ import annotations

import pytest
from confluent_kafka import Message

from connector.pipeline.batching import Batcher, Item
from connector.pipeline.offsets import PartitionOffsets
from connector.records import MeterEvent


def item(offset: int) -> Item:
    record = Message(topic="usage", partition=0, offset=offset, value=b"x")
    event = MeterEvent(f"id-{offset}", "api_requests", "2026-11-23T00:00:00.000Z", {"value": "1"})
    return Item(event, record, PartitionOffsets("usage", 0))


def test_closes_on_count() -> None:
    batcher = Batcher(max_events=3, linger_s=10)
    assert batcher.add(item(0), now=0) is None
    assert batcher.add(item(1), now=0) is None
    batch = batcher.add(item(2), now=0)
    assert batch is not None and [e.identifier for e in batch.events] == ["id-0", "id-1", "id-2"]
    assert len(batcher) == 0


def test_closes_on_linger_measured_from_the_first_event() -> None:
    batcher = Batcher(max_events=100, linger_s=0.1)
    batcher.add(item(0), now=1.0)
    batcher.add(item(1), now=1.05)
    assert batcher.deadline() == pytest.approx(1.1)
    assert batcher.due(now=1.09) is None
    batch = batcher.due(now=1.1)
    assert batch is not None and len(batch) == 2 and batch.created_at == 1.0
    assert batcher.deadline() is None and batcher.due(now=5) is None


def test_flush_closes_whatever_is_open() -> None:
    batcher = Batcher()
    assert batcher.flush() is None
    batcher.add(item(0), now=0)
    batch = batcher.flush()
    assert batch is not None and len(batch) == 1


@pytest.mark.parametrize("size", [0, 101])
def test_rejects_sizes_stripe_would_refuse(size: int) -> None:
    with pytest.raises(ValueError):
        Batcher(max_events=size)


def test_a_batch_lists_each_partition_epoch_once_in_first_seen_order() -> None:
    a, b, c = (PartitionOffsets("usage", p) for p in range(3))
    batcher = Batcher(max_events=100, linger_s=10)
    for n, tracker in enumerate([a, a, b, a, c, c, b]):
        record = Message(topic="usage", partition=tracker.partition, offset=n, value=b"x")
        event = MeterEvent(f"id-{n}", "api_requests", "2026-11-23T00:00:00.000Z", {"value": "1"})
        batcher.add(Item(event, record, tracker), now=0)
    batch = batcher.flush()
    assert batch is not None and batch.partitions == [a, b, c]
    # The next batch starts with an empty list; a batch built by hand works its list out itself.
    batcher.add(item(9), now=0)
    following = batcher.flush()
    assert following is not None and len(following.partitions) == 1
    again = type(batch)(batch.items, 0.0)
    assert again.partitions == [a, b, c]


def on(offsets: PartitionOffsets, offset: int) -> Item:
    record = Message(topic=offsets.topic, partition=offsets.partition, offset=offset, value=b"x")
    event = MeterEvent(f"id-{offsets.partition}-{offset}", "api_requests", "2026-11-23T00:00:00.000Z", {})
    return Item(event, record, offsets)


def test_a_batch_touches_at_most_four_partitions_so_its_idempotency_key_names_them_all() -> None:
    from connector.pipeline.batching import MAX_PARTITIONS_PER_REQUEST

    parts = [PartitionOffsets("usage", p) for p in range(6)]
    batcher = Batcher(max_events=100, linger_s=10)
    closed = []
    # Interleaved runs: back to a partition already in the batch does not count twice.
    for offset, p in enumerate([0, 1, 0, 2, 3, 1, 4, 5, 4, 0]):
        batch = batcher.add(on(parts[p], offset), now=0)
        if batch is not None:
            closed.append(batch)
    assert len(closed) == 1
    first = closed[0]
    assert [e.identifier for e in first.events] == [
        "id-0-0",
        "id-1-1",
        "id-0-2",
        "id-2-3",
        "id-3-4",
        "id-1-5",
    ]
    assert len(first.partitions) == MAX_PARTITIONS_PER_REQUEST
    rest = batcher.flush()
    assert rest is not None and [p.partition for p in rest.partitions] == [4, 5, 0]


def test_origins_name_each_event_s_namespace_partition_and_offset() -> None:
    parts = [PartitionOffsets("usage", 0), PartitionOffsets("other", 3)]
    batcher = Batcher(max_events=100, linger_s=10)
    for offset, p in enumerate([0, 1, 0]):
        batcher.add(on(parts[p], 10 + offset), now=0)
    batch = batcher.flush()
    assert batch is not None
    namespaces = {"usage": "NS-usage", "other": "NS-other"}
    assert batch.origins(namespaces.__getitem__) == [
        ("NS-usage", 0, 10),
        ("NS-other", 3, 11),
        ("NS-usage", 0, 12),
    ]


PARTITION = PartitionOffsets("usage", 0)


def in_context(offset: int, context: str | None) -> Item:
    event = MeterEvent(f"id-{offset}", "api", "2026-11-18T00:00:00.000Z", {}, context)
    return Item(event, Message(topic="usage", partition=0, offset=offset, value=b"x"), PARTITION)


def test_a_batch_never_mixes_contexts_and_each_context_fills_its_own() -> None:
    batcher = Batcher(max_events=2, linger_s=1.0)
    assert batcher.add(in_context(0, "acct_a"), 0.0) is None
    assert batcher.add(in_context(1, None), 0.0) is None
    assert batcher.add(in_context(2, "acct_b"), 0.0) is None
    full = batcher.add(in_context(3, "acct_a"), 0.5)
    assert full is not None and full.context == "acct_a"
    assert [i.message.offset() for i in full.items] == [0, 3]
    assert len(batcher) == 2 and batcher.deadline() == 1.0
    due = []
    while (batch := batcher.due(1.0)) is not None:
        due.append(batch)
    assert sorted((b.context or "", len(b)) for b in due) == [("", 1), ("acct_b", 1)]
    assert batcher.deadline() is None and batcher.flush() is None and len(batcher) == 0
