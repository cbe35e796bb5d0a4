"""Which member polls Stripe's error reports: the one Kafka assigns the ledger partition holding the cursor.

Every connector process (another instance of the group, or a ``CONNECTOR_WORKERS`` child) joins the
consumer group ``{KAFKA_GROUP_ID}.error-reports``, subscribed to the delivery ledger topic, with the eager
``range`` assignor; the member given partition ``CURSOR_PARTITION`` is the poller. Its partitions are
paused at once: it reads nothing, the group only elects. ``poll()`` serves the rebalance callbacks, so
leadership changes only between two calls, and the worker calls it before each report.

With the eager protocol a member keeps its partitions until it rejoins, which it does only inside
``poll()``: the old poller finishes the report in hand before the new one is given the partition. What
remains is a poller the group has already dropped (its session timed out, or ``max.poll.interval.ms``
passed) while it still writes: for that moment two members may work on one report. The intent record
makes this harmless for the dead-letter topic up to a duplicate (see ``connector.reports.intent``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from connector.reports.cursor import CURSOR_PARTITION

log = logging.getLogger("kafka_stripe.reports")

GROUP_SUFFIX = ".error-reports"
# Consumer properties of the main group that must not follow into the election group.
_NOT_INHERITED = ("group.instance.id", "group.protocol", "group.remote.assignor", "enable.partition.eof")


def election_config(consumer_config: Mapping[str, Any], group_id: str) -> dict[str, Any]:
    """The election consumer's config: the connection settings of ``consumer_config`` in group
    ``{group_id}.error-reports``, eager ``range`` assignment, nothing committed or fetched."""
    config = {k: v for k, v in consumer_config.items() if k not in _NOT_INHERITED}
    config.update(
        {
            "group.id": f"{group_id}{GROUP_SUFFIX}",
            "partition.assignment.strategy": "range",
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            "logger": logging.getLogger("kafka_stripe.kafka"),
        }
    )
    return config


class Election:
    """Membership of the election group; ``leader`` says whether this member is the poller now."""

    def __init__(self, consumer: Any, ledger_topic: str, partition: int = CURSOR_PARTITION) -> None:
        self._consumer = consumer
        self.topic = ledger_topic
        self.partition = partition
        self._owned: set[int] = set()
        self.leader = False

    def start(self) -> None:
        self._consumer.subscribe(
            [self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )

    def poll(self, timeout: float = 0.0) -> bool:
        """Serve the group (rebalances happen here) for up to ``timeout`` seconds; returns ``leader``."""
        message = self._consumer.poll(timeout)
        if message is not None and message.error() is not None:
            log.debug("error-report election: %s", message.error())
        return self.leader

    def close(self) -> None:
        self._set({})
        self._consumer.close()

    def _assigned(self, consumer: Any, partitions: list[Any]) -> None:
        consumer.assign(partitions)
        if partitions:
            consumer.pause(partitions)  # the group only elects: nothing is fetched
        self._set({p.partition for p in partitions if p.topic == self.topic})

    def _revoked(self, consumer: Any, partitions: list[Any]) -> None:
        self._set({})

    def _set(self, owned: set[int] | dict[int, int]) -> None:
        was = self.leader
        self._owned = set(owned)
        self.leader = self.partition in self._owned
        if self.leader != was:
            if self.leader:
                log.info(
                    "this member now polls Stripe's error reports (it holds %s[%d])",
                    self.topic,
                    self.partition,
                )
            else:
                log.info("this member no longer polls Stripe's error reports")
