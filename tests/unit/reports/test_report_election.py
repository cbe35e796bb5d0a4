"""The election: the member holding the cursor's ledger partition polls; it fetches nothing."""

from __future__ import annotations

from typing import Any, NamedTuple

from connector.reports.election import Election, election_config


class Partition(NamedTuple):
    topic: str
    partition: int


class Consumer:
    """Records what the election asks of it; ``poll`` runs the rebalance callback it is told to."""

    def __init__(self) -> None:
        self.subscribed: list[str] = []
        self.callbacks: dict[str, Any] = {}
        self.assigned: list[Partition] = []
        self.paused: list[Partition] = []
        self.next: tuple[str, list[Partition]] | None = None
        self.closed = False

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.subscribed = topics
        self.callbacks = callbacks

    def poll(self, timeout: float) -> None:
        if self.next is not None:
            name, partitions = self.next
            self.next = None
            self.callbacks[name](self, partitions)

    def assign(self, partitions: list[Partition]) -> None:
        self.assigned = partitions

    def pause(self, partitions: list[Partition]) -> None:
        self.paused = partitions

    def close(self) -> None:
        self.closed = True


def test_the_member_given_partition_zero_leads_until_it_is_revoked_or_lost() -> None:
    consumer = Consumer()
    election = Election(consumer, "kafka-stripe.ledger")
    election.start()
    assert consumer.subscribed == ["kafka-stripe.ledger"] and not election.poll(0)
    consumer.next = ("on_assign", [Partition("kafka-stripe.ledger", 0), Partition("kafka-stripe.ledger", 1)])
    assert election.poll(0)
    assert consumer.paused == consumer.assigned  # the group only elects: nothing is fetched
    consumer.next = ("on_revoke", [Partition("kafka-stripe.ledger", 0)])
    assert not election.poll(0)
    consumer.next = ("on_assign", [Partition("kafka-stripe.ledger", 1)])
    assert not election.poll(0)
    consumer.next = ("on_assign", [Partition("kafka-stripe.ledger", 0)])
    assert election.poll(0)
    consumer.next = ("on_lost", [Partition("kafka-stripe.ledger", 0)])
    assert not election.poll(0)
    election.close()
    assert consumer.closed


def test_the_election_group_is_its_own_eager_group_on_the_main_connection() -> None:
    main = {
        "bootstrap.servers": "b:9092",
        "group.id": "usage",
        "security.protocol": "SASL_SSL",
        "group.instance.id": "pod-1",
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.partition.eof": "true",
    }
    config = election_config(main, "usage")
    assert config["group.id"] == "usage.error-reports"
    assert config["partition.assignment.strategy"] == "range"
    assert config["bootstrap.servers"] == "b:9092" and config["security.protocol"] == "SASL_SSL"
    assert "group.instance.id" not in config and "enable.partition.eof" not in config
    assert config["enable.auto.commit"] is False
