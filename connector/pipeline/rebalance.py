"""Rebalance handling: assignment, revoke and loss of partitions, each assignment a new epoch.

librdkafka calls these from ``consume()``, so they run on the consumer thread and may wait for in-flight
work without racing the poll loop. Each assignment creates a fresh ``PartitionOffsets`` (its *epoch*,
``connector.pipeline.offsets``): work still out for a partition this member no longer owns marks an
object nobody commits from, so it can never commit.

* **assign**: new epochs; partitions join a pause in force.
* **revoke**: send the open batch, commit what is done at once, release the partitions (batches still
  queued for them are dropped unsent, their records left to the new owner), wait up to the revoke
  timeout for requests already at Stripe, commit again.
* **lost** (session timeout): another member may own them already, so nothing is committed for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from connector.pipeline.flow import FlowControl
from connector.pipeline.offsets import OffsetTracker, PartitionOffsets

log = logging.getLogger("kafka_stripe.pipeline")

MAX_REVOKE_WAIT_S = 10.0  # a rebalance waits for this member; longer would stall the whole group


class RebalanceHost(Protocol):
    """What rebalance handling needs from the run loop."""

    def flush(self) -> None:
        """Send the open batch now."""

    def commit_now(self, partitions: Sequence[PartitionOffsets]) -> None:
        """Commit the done prefix of ``partitions`` synchronously."""

    def wait_for(self, partitions: Sequence[PartitionOffsets], timeout: float) -> bool:
        """Apply results until ``partitions`` have nothing out, or ``timeout`` seconds passed."""


class Rebalancer:
    """The subscription's ``on_assign``, ``on_revoke`` and ``on_lost`` callbacks."""

    def __init__(
        self,
        tracker: OffsetTracker,
        flow: FlowControl,
        host: RebalanceHost,
        revoke_timeout_s: float,
        *,
        on_assigned: Callable[[Sequence[PartitionOffsets]], None] | None = None,
    ) -> None:
        # Called with the new epochs before any of their records is consumed (the delivery ledger's
        # skip marks, the topics' identifier namespaces: connector.pipeline.identity).
        self._on_assigned = on_assigned
        self._tracker = tracker
        self._flow = flow
        self._host = host
        self.revoke_timeout_s = min(revoke_timeout_s, MAX_REVOKE_WAIT_S)
        # Set once the final wait of a shutdown is over: the revoke that closing the consumer causes
        # must not wait again.
        self.closing = False

    def on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self._tracker.assign((p.topic, p.partition) for p in partitions)
        if self._on_assigned is not None:
            epochs = [t for p in partitions if (t := self._tracker.get(p.topic, p.partition)) is not None]
            self._on_assigned(epochs)
        self._flow.assigned(partitions)
        log.info("assigned %s", names(partitions))

    def on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        log.info("revoking %s", names(partitions))
        self._host.flush()
        owned = [t for key in keys if (t := self._tracker.get(*key)) is not None]
        # Commit what is done at once: if the wait below outlasts the rebalance, this still counts.
        self._host.commit_now(owned)
        # Releasing first makes batches still queued for these partitions be dropped unsent, so the
        # wait covers only requests already at Stripe, not the whole read-ahead buffer.
        self._tracker.release(keys)
        if not self.closing:
            self._host.wait_for(owned, self.revoke_timeout_s)
            self._host.commit_now(owned)

    def on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        # Another member may own these already: committing for them could move its position.
        log.warning("lost %s; committing nothing for them", names(partitions))
        self._tracker.release((p.topic, p.partition) for p in partitions)


def names(partitions: Sequence[Any]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"
