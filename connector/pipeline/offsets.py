"""Per-partition done-tracking: the committable offset is the first record not yet done.

A record is *done* when Stripe accepted its batch (2xx) or the dead-letter topic acknowledged it.
Batches finish out of order, so a partition keeps the offsets it handed out, in order, and the set of
those already done; the commit position only ever moves over a contiguous done prefix. Nothing here
knows about Kafka clients or threads: the pipeline owns one ``OffsetTracker`` and calls it from one
thread.

Each assignment of a partition gets a fresh ``PartitionOffsets`` (its *epoch*). Work handed out under
an old epoch still holds a reference to the old object, so when it finishes after a revoke or a loss
it marks an object nobody commits from any more: batches for partitions no longer owned never commit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator


class PartitionOffsets:
    """Offsets of one partition under one assignment."""

    __slots__ = (
        "_done",
        "_next",
        "_outstanding",
        "batches_out",
        "committed",
        "dead_letters_out",
        "partition",
        "released",
        "skip_below",
        "skipped",
        "topic",
    )

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self._outstanding: deque[int] = deque()  # handed out, in consumption order
        self._done: set[int] = set()  # done but not yet at the head of _outstanding
        self._next: int | None = None  # one past the last offset handed out
        self.committed: int | None = None  # the last position committed for this epoch
        # Work of this epoch still out: batches at the sender and records at the dead-letter producer.
        self.batches_out = 0
        self.dead_letters_out = 0
        # Set when the partition is revoked or lost: batches not yet sent for it are abandoned, their
        # records left for the next owner. Read by the sender thread, written by the consumer thread.
        self.released = False
        # Records below this offset are done per the delivery ledger (delivered by some group before):
        # they are marked done without being sent (``connector.pipeline.identity``).
        self.skip_below = 0
        self.skipped = 0

    def track(self, offset: int) -> None:
        """A record at ``offset`` entered the pipeline (offsets arrive in increasing order)."""
        self._outstanding.append(offset)
        self._next = offset + 1

    def done(self, offset: int) -> None:
        """The record at ``offset`` is delivered or dead-lettered."""
        outstanding = self._outstanding
        if outstanding and outstanding[0] == offset:
            outstanding.popleft()
            done = self._done
            while outstanding and outstanding[0] in done:
                done.discard(outstanding.popleft())
        else:
            self._done.add(offset)

    @property
    def busy(self) -> bool:
        """Batches or dead-letter writes of this epoch are still out."""
        return self.batches_out > 0 or self.dead_letters_out > 0

    @property
    def pending(self) -> int:
        """Records handed out and not yet done."""
        return len(self._outstanding) - len(self._done)

    @property
    def next_offset(self) -> int:
        """One past the last offset handed out (0 before any)."""
        return self._next if self._next is not None else 0

    def committable(self) -> int | None:
        """The position to commit: the first undone offset, or one past the last tracked one."""
        if self._outstanding:
            return self._outstanding[0]
        return self._next

    def to_commit(self) -> int | None:
        """The committable position if it moved past the last commit, else None."""
        position = self.committable()
        if position is None or (self.committed is not None and position <= self.committed):
            return None
        return position


class OffsetTracker:
    """All partitions currently owned, keyed by ``(topic, partition)``."""

    def __init__(self) -> None:
        self._partitions: dict[tuple[str, int], PartitionOffsets] = {}
        self.releases = 0  # how many times partitions were released: work held for them may be stale

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        for key in partitions:
            self._partitions[key] = PartitionOffsets(*key)

    def release(self, partitions: Iterable[tuple[str, int]]) -> list[PartitionOffsets]:
        """Forget partitions (revoked or lost); returns their trackers for a final commit decision."""
        released = [p for key in partitions if (p := self._partitions.pop(key, None)) is not None]
        for p in released:
            p.released = True
        self.releases += 1
        return released

    def get(self, topic: str, partition: int) -> PartitionOffsets | None:
        return self._partitions.get((topic, partition))

    def for_record(self, topic: str, partition: int) -> PartitionOffsets:
        """The current epoch of a partition, created if the assignment callback has not run yet."""
        key = (topic, partition)
        tracker = self._partitions.get(key)
        if tracker is None:
            tracker = self._partitions[key] = PartitionOffsets(topic, partition)
        return tracker

    def __iter__(self) -> Iterator[PartitionOffsets]:
        return iter(list(self._partitions.values()))

    @property
    def pending(self) -> int:
        return sum(p.pending for p in self._partitions.values())
