"""Done-tracking: commits move only over a contiguous done prefix, whatever order batches finish in."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.pipeline.offsets import OffsetTracker, PartitionOffsets


def test_commit_waits_for_the_earliest_undone_record() -> None:
    p = PartitionOffsets("usage", 0)
    for offset in range(10, 15):
        p.track(offset)
    assert p.committable() == 10
    p.done(12)
    p.done(13)
    assert p.committable() == 10, "a later success never moves the commit past an earlier undone record"
    p.done(10)
    assert p.committable() == 11
    p.done(11)
    assert p.committable() == 14
    p.done(14)
    assert p.committable() == 15
    assert p.pending == 0


def test_gaps_in_offsets_are_skipped() -> None:
    # Compacted topics and transaction markers leave holes; the commit jumps over them.
    p = PartitionOffsets("usage", 0)
    p.track(5)
    p.track(9)
    p.done(5)
    assert p.committable() == 9
    p.done(9)
    assert p.committable() == 10


def test_to_commit_only_reports_progress() -> None:
    p = PartitionOffsets("usage", 0)
    assert p.to_commit() is None
    p.track(0)
    p.track(1)
    assert p.to_commit() == 0
    p.committed = 0
    assert p.to_commit() is None
    p.done(0)
    assert p.to_commit() == 1


def test_released_epoch_is_not_reachable_any_more() -> None:
    tracker = OffsetTracker()
    tracker.assign([("usage", 0)])
    old = tracker.for_record("usage", 0)
    old.track(0)
    assert tracker.release([("usage", 0)]) == [old]
    tracker.assign([("usage", 0)])
    new = tracker.get("usage", 0)
    assert new is not None and new is not old
    old.done(0)  # a batch finishing after the revoke marks the old epoch only
    assert new.committable() is None
    assert [p.committable() for p in tracker] == [None]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=60), st.randoms())
def test_commit_is_always_the_first_undone_offset(gaps: list[int], rnd: random.Random) -> None:
    offsets = []
    offset = 0
    for gap in gaps:
        offset += gap
        offsets.append(offset)
        offset += 1
    p = PartitionOffsets("t", 0)
    for o in offsets:
        p.track(o)
    order = list(offsets)
    rnd.shuffle(order)
    done: set[int] = set()
    for o in order:
        p.done(o)
        done.add(o)
        undone = [x for x in offsets if x not in done]
        expected = undone[0] if undone else offsets[-1] + 1
        assert p.committable() == expected
        assert p.pending == len(undone)
