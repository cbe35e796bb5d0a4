"""Rebalance handling through the subscription callbacks, with a fake consumer and a recording run loop.

The run loop's side (flush, commit, wait) is a stand-in that records calls and plays out in-flight work,
so these tests pin the order of steps and what is committed for which epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

from connector.pipeline.flow import FlowControl
from connector.pipeline.offsets import OffsetTracker, PartitionOffsets
from connector.pipeline.rebalance import MAX_REVOKE_WAIT_S, Rebalancer
from tests.unit.pipeline.fakes import Clock, Consumer, Partition


class Host:
    """Records the loop calls; ``wait_for`` finishes the work out (marks every tracked offset done)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.committed: list[dict[tuple[str, int], int]] = []
        self.finish_on_wait = True

    def flush(self) -> None:
        self.calls.append("flush")

    def commit_now(self, partitions: Sequence[PartitionOffsets]) -> None:
        self.calls.append("commit")
        positions = {}
        for p in partitions:
            position = p.to_commit()
            if position is not None:
                positions[(p.topic, p.partition)] = p.committed = position
        self.committed.append(positions)

    def wait_for(self, partitions: Sequence[PartitionOffsets], timeout: float) -> bool:
        self.calls.append(f"wait {timeout:g}")
        if not self.finish_on_wait:
            return False
        for p in partitions:
            p.batches_out = 0
            while p.pending:
                p.done(p.committable() or 0)
        return True


def rebalancer(
    shutdown_timeout_s: float = 30.0,
) -> tuple[Rebalancer, OffsetTracker, Host, Consumer, FlowControl]:
    tracker = OffsetTracker()
    consumer = Consumer(partitions=(0, 1))
    flow = FlowControl(1000, clock=Clock())
    flow.attach(consumer)
    host = Host()
    return Rebalancer(tracker, flow, host, shutdown_timeout_s), tracker, host, consumer, flow


def test_assignment_starts_a_new_epoch_per_partition() -> None:
    r, tracker, _host, consumer, _ = rebalancer()
    r.on_assign(consumer, [Partition(0), Partition(1)])
    first = tracker.get("usage", 0)
    assert first is not None and tracker.get("usage", 1) is not None
    r.on_assign(consumer, [Partition(0)])
    assert tracker.get("usage", 0) is not first


def test_revoke_flushes_commits_the_done_prefix_releases_waits_and_commits_again() -> None:
    r, tracker, host, consumer, _ = rebalancer()
    r.on_assign(consumer, [Partition(0), Partition(1)])
    p0 = tracker.for_record("usage", 0)
    for offset in range(10):
        p0.track(offset)
    for offset in range(4):
        p0.done(offset)
    p0.batches_out = 1  # a batch still at Stripe
    r.on_revoke(consumer, [Partition(0)])
    assert host.calls == ["flush", "commit", f"wait {MAX_REVOKE_WAIT_S:g}", "commit"]
    assert host.committed == [{("usage", 0): 4}, {("usage", 0): 10}]
    assert p0.released and tracker.get("usage", 0) is None
    assert tracker.get("usage", 1) is not None  # untouched


def test_the_revoke_wait_is_bounded_by_the_shutdown_timeout_and_ten_seconds() -> None:
    assert rebalancer(shutdown_timeout_s=3.0)[0].revoke_timeout_s == 3.0
    assert rebalancer(shutdown_timeout_s=60.0)[0].revoke_timeout_s == MAX_REVOKE_WAIT_S == 10.0


def test_revoke_while_closing_commits_once_and_does_not_wait() -> None:
    r, tracker, host, consumer, _ = rebalancer()
    r.on_assign(consumer, [Partition(0)])
    p0 = tracker.for_record("usage", 0)
    p0.track(0)
    p0.done(0)
    r.closing = True
    r.on_revoke(consumer, [Partition(0)])
    assert host.calls == ["flush", "commit"]
    assert host.committed == [{("usage", 0): 1}]


def test_a_revoke_that_times_out_commits_only_what_is_done() -> None:
    r, tracker, host, consumer, _ = rebalancer()
    host.finish_on_wait = False
    r.on_assign(consumer, [Partition(0)])
    p0 = tracker.for_record("usage", 0)
    for offset in range(5):
        p0.track(offset)
    p0.done(0)
    p0.done(2)
    r.on_revoke(consumer, [Partition(0)])
    assert host.committed == [{("usage", 0): 1}, {}]


def test_lost_partitions_commit_nothing_and_old_work_cannot_commit() -> None:
    r, tracker, host, consumer, _ = rebalancer()
    r.on_assign(consumer, [Partition(0)])
    old = tracker.for_record("usage", 0)
    old.track(0)
    r.on_lost(consumer, [Partition(0)])
    assert host.calls == [] and old.released
    r.on_assign(consumer, [Partition(0)])
    old.done(0)  # work of the lost epoch finishing late
    new = tracker.get("usage", 0)
    assert new is not None and new is not old and new.to_commit() is None


def test_partitions_assigned_during_a_pause_are_paused() -> None:
    r, _tracker, _host, consumer, flow = rebalancer()
    r.on_assign(consumer, [Partition(0)])
    assert consumer.calls == []
    flow.backoff("rate_limited")
    flow.update(0)
    r.on_assign(consumer, [Partition(1)])
    assert consumer.calls == ["pause", "pause"]
