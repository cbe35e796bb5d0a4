"""``reconcile``'s time arguments and tally, without Kafka or Stripe."""

from __future__ import annotations

import time
from decimal import Decimal

from connector.commands.reconcile_range import parse_instant, validate_range
from connector.commands.reconcile_tally import Tally
from connector.config.settings import TopicSettings
from connector.records import KafkaRecord, MeterEvent


def test_time_arguments() -> None:
    assert parse_instant("2026-11-01T00:00Z", "--start") == 1_793_491_200
    assert parse_instant("2026-11-01", "--start") == 1_793_491_200
    assert parse_instant("2026-11-01T01:00:00+01:00", "--start") == 1_793_491_200
    assert parse_instant("1793491200", "--start") == 1_793_491_200
    assert validate_range(1_793_491_200, 1_793_491_200 + 86_400, "day") == []
    assert validate_range(1_793_491_200 + 60, 1_793_491_200 + 120, None) == []


def test_identifiers_of_their_own_count_once_at_their_first_receipt() -> None:
    topic = TopicSettings(name="usage", event_name="api")
    tally = Tally(topic, "sum", 1_000_000, 1_003_600, None)

    def event(identifier: str, value: str, second: int) -> MeterEvent:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(second))
        return MeterEvent(identifier, "api", stamp, {"stripe_customer_id": "cus_A", "value": value})

    def record(partition: int, offset: int, kafka_ms: int) -> KafkaRecord:
        return KafkaRecord("usage", partition, offset, None, b"", kafka_ms)

    tally.add(event("own-1", "5", 1_000_100), record(0, 7, 2_000), "kafka:usage:")
    tally.add(event("own-1", "9", 1_000_100), record(1, 3, 1_000), "kafka:usage:")  # produced earlier: wins
    tally.add(event("own-2", "4", 999_000), record(0, 8, 500), "kafka:usage:")  # first copy out of range
    tally.add(event("own-2", "4", 1_000_200), record(1, 9, 600), "kafka:usage:")
    tally.add(event("kafka:usage:0:9", "1", 1_000_300), record(0, 9, 700), "kafka:usage:")
    assert tally.totals() == {("cus_A", 1_000_000): Decimal(10)}
    assert (tally.read, tally.duplicates, tally.in_range) == (5, 2, 2)


def test_only_the_reconciled_context_counts() -> None:
    topic = TopicSettings(name="usage", event_name="api", context_field="tenant")

    def event(identifier: str, value: str, context: str | None) -> MeterEvent:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(1_000_100))
        return MeterEvent(identifier, "api", stamp, {"stripe_customer_id": "cus_A", "value": value}, context)

    def record(offset: int) -> KafkaRecord:
        return KafkaRecord("usage", 0, offset, None, b"", 1_000)

    for context, expected in ((None, 1), ("acct_A", 20), ("acct_A/acct_B", 300)):
        tally = Tally(topic, "sum", 1_000_000, 1_003_600, None, context)
        tally.add(event("kafka:usage:0:1", "1", None), record(1), "kafka:usage:")
        tally.add(event("kafka:usage:0:2", "20", "acct_A"), record(2), "kafka:usage:")
        tally.add(event("kafka:usage:0:3", "300", "acct_A/acct_B"), record(3), "kafka:usage:")
        # An identifier of its own is deduplicated per account: a copy in another context is no duplicate.
        tally.add(event("own", "4000", "acct_Other"), record(4), "kafka:usage:")
        tally.add(event("own", "4000", context), record(5), "kafka:usage:")
        tally.add_rejected("invalid_context")  # a context field the connector refuses: dead-lettered
        assert tally.totals() == {("cus_A", 1_000_000): Decimal(expected + 4000)}, context
        assert (tally.read, tally.other_context, tally.duplicates, tally.in_range) == (6, 3, 0, 2)
