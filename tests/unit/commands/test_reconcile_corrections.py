"""``reconcile``'s corrections: their net effect on the tally (cancel, replace, duplicates, unmatched,
chains, coordinates), which corrections topics are read, and the report's account of them."""

from __future__ import annotations

import io
import json
import time
from decimal import Decimal
from typing import Any

import fastavro
import pytest

from connector.commands.reconcile_corrections import (
    CorrectionTally,
    corrections_topics,
    original_namespaces,
)
from connector.commands.reconcile_report import Report, as_json, render
from connector.commands.reconcile_tally import Tally
from connector.config.secrets import Secret
from connector.config.settings import (
    DEFAULT_CORRECTION_SCHEMA,
    KafkaSettings,
    Settings,
    StripeSettings,
    TopicSettings,
)
from connector.errors import RecordRejected
from connector.mapping.corrections import Correction, CorrectionMapper
from connector.mapping.identifiers import derived_identifier
from connector.mapping.mapper import Mapper
from connector.records import Coordinates, KafkaRecord, MeterEvent
from tests.support.harness import encode, usage

HOUR = 3600
START = 1_800_000_000 - 1_800_000_000 % HOUR
USAGE = TopicSettings(name="usage", event_name="api")
FIXES = TopicSettings(
    name="fixes", event_name="", kind="corrections", schema_path=DEFAULT_CORRECTION_SCHEMA, payload_fields=()
)
PREFIX = "kafka:usage:NS:"


def stamp(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(second))


def event(
    offset: int, customer: str, value: str, second: int, context: str | None = None
) -> tuple[MeterEvent, KafkaRecord]:
    """A usage record at usage[0]@offset with a derived identifier, and its event."""
    payload = {"stripe_customer_id": customer, "value": value}
    identifier = f"{PREFIX}0:{offset}"
    record = KafkaRecord("usage", 0, offset, None, b"", second * 1000)
    return MeterEvent(identifier, "api", stamp(second), payload, context), record


def correction(
    original: str,
    customer: str,
    replacement: str | None,
    second: int,
    *,
    offset: int,
    original_value: str | None = None,
    context: str | None = None,
    event_name: str = "api",
) -> tuple[Correction, KafkaRecord]:
    """A correction at fixes[0]@offset, produced after everything else (Kafka time = offset)."""
    fixed = Correction(
        original=original,
        event_name=event_name,
        customer=customer,
        original_value=original_value,
        replacement_value=replacement,
        timestamp=stamp(second),
        timestamp_ms=second * 1000,
        reason="test",
        attributes={},
        context=context,
        identifier=f"kafka:fixes:FX:0:{offset}",
    )
    return fixed, KafkaRecord("fixes", 0, offset, None, b"", 10**13 + offset)


def tallies(formula: str = "sum", window: str | None = None) -> tuple[Tally, CorrectionTally]:
    tally = Tally(USAGE, formula, START, START + 2 * HOUR, window)
    return tally, CorrectionTally(("fixes",), "api", None, formula)


def usage_of_a_and_b(tally: Tally) -> None:
    for n, (customer, value, seconds) in enumerate(
        [("cus_A", "5", 10), ("cus_A", "7", 20), ("cus_B", "3", 30), ("cus_B", "4", HOUR + 5)]
    ):
        tally.add(*event(n, customer, value, START + seconds), PREFIX)


def total(tally: Tally) -> dict[str, Decimal]:
    sums: dict[str, Decimal] = {}
    for (customer, _), value in tally.totals().items():
        sums[customer] = sums.get(customer, Decimal(0)) + value
    return sums


def test_a_cancel_only_correction_removes_its_original() -> None:
    tally, fixes = tallies()
    usage_of_a_and_b(tally)
    fixes.add(*correction(f"{PREFIX}0:0", "cus_A", None, START + 10, offset=0, original_value="5"))
    fixes.apply(tally)
    assert total(tally) == {"cus_A": Decimal(7), "cus_B": Decimal(7)}
    assert (fixes.applied, fixes.cancelled, fixes.replaced, fixes.unmatched) == (1, 1, 0, 0)
    assert fixes.inconsistent == 0 and tally.in_range == 4


def test_every_event_cancelled_still_compares_the_customer_as_zero() -> None:
    tally, fixes = tallies()
    tally.add(*event(0, "cus_Z", "9", START + 10), PREFIX)
    fixes.add(*correction(f"{PREFIX}0:0", "cus_Z", None, START + 10, offset=0))
    fixes.apply(tally)
    assert tally.totals() == {("cus_Z", START): Decimal(0)}


def test_a_replacement_takes_the_original_s_place() -> None:
    tally, fixes = tallies(window="hour")
    usage_of_a_and_b(tally)
    fixes.add(*correction(f"{PREFIX}0:3", "cus_B", "40", START + HOUR + 5, offset=0))
    fixes.apply(tally)
    assert tally.totals() == {
        ("cus_A", START): Decimal(12),
        ("cus_B", START): Decimal(3),
        ("cus_B", START + HOUR): Decimal(40),
    }
    assert (fixes.applied, fixes.cancelled, fixes.replaced) == (1, 1, 1)
    assert tally.replacements == 1


def test_count_meters_lose_one_event_per_cancel_and_gain_one_per_replacement() -> None:
    tally, fixes = tallies("count")
    usage_of_a_and_b(tally)
    fixes.add(*correction(f"{PREFIX}0:0", "cus_A", None, START + 10, offset=0))
    fixes.add(*correction(f"{PREFIX}0:2", "cus_B", "0", START + 30, offset=1))
    fixes.apply(tally)
    assert total(tally) == {"cus_A": Decimal(1), "cus_B": Decimal(2)}


def test_a_correction_read_twice_counts_once() -> None:
    tally, fixes = tallies()
    usage_of_a_and_b(tally)
    twice = correction(f"{PREFIX}0:0", "cus_A", "1", START + 10, offset=0)
    fixes.add(*twice)
    fixes.add(*twice)
    fixes.apply(tally)
    assert total(tally)["cus_A"] == Decimal(8)
    assert (fixes.read, fixes.duplicates, fixes.applied, fixes.replaced) == (2, 1, 1, 1)


def test_two_corrections_of_one_original_cancel_it_once_and_both_replace() -> None:
    """The connector's cancel key is the original's (the second cancel gets the first's answer), and
    each correction sends its own replacement."""
    tally, fixes = tallies()
    usage_of_a_and_b(tally)
    fixes.add(*correction(f"{PREFIX}0:0", "cus_A", "2", START + 10, offset=0))
    fixes.add(*correction(f"{PREFIX}0:0", "cus_A", "3", START + 10, offset=1))
    fixes.apply(tally)
    assert total(tally)["cus_A"] == Decimal(7 + 2 + 3)
    assert (fixes.applied, fixes.cancelled, fixes.replaced) == (2, 1, 2)


def test_a_correction_of_a_replacement_chains_whatever_the_partition_order() -> None:
    tally, fixes = tallies()
    usage_of_a_and_b(tally)
    first, first_record = correction(f"{PREFIX}0:0", "cus_A", "50", START + 10, offset=5)
    second, _ = correction(first.identifier, "cus_A", "60", START + 10, offset=6)
    # The second was produced on another partition with an earlier Kafka timestamp.
    fixes.add(second, KafkaRecord("fixes", 1, 0, None, b"", 10**13))
    fixes.add(first, first_record)
    fixes.apply(tally)
    assert total(tally)["cus_A"] == Decimal(7 + 60)
    assert (fixes.applied, fixes.cancelled, fixes.replaced, fixes.unmatched) == (2, 2, 2, 0)


def test_an_original_not_among_the_events_is_unmatched_and_not_applied() -> None:
    tally, fixes = tallies()
    usage_of_a_and_b(tally)
    before = total(tally)
    fixes.add(*correction("never-sent", "cus_A", "100", START + 10, offset=0, original_value="1"))
    fixes.add(*correction("long-ago", "cus_A", "100", START - HOUR, offset=1, original_value="1"))
    fixes.apply(tally)
    assert total(tally) == before
    assert (fixes.applied, fixes.unmatched, fixes.out_of_range) == (0, 1, 1)
    assert fixes.samples == [
        f"fixes[0]@0: original never-sent of cus_A at {stamp(START + 10)} not among the events read"
    ]


def test_corrections_of_other_meters_and_contexts_are_skipped() -> None:
    tally, fixes = tallies()
    usage_of_a_and_b(tally)
    fixes.add(*correction(f"{PREFIX}0:0", "cus_A", None, START + 10, offset=0, event_name="other"))
    fixes.add(*correction(f"{PREFIX}0:0", "cus_A", None, START + 10, offset=1, context="acct_X1"))
    fixes.add_rejected("invalid_context")
    fixes.apply(tally)
    assert total(tally)["cus_A"] == Decimal(12)
    assert (fixes.read, fixes.elsewhere, fixes.applied, dict(fixes.rejected)) == (
        3,
        2,
        0,
        {"invalid_context": 1},
    )


def test_a_correction_that_misdescribes_its_original_is_applied_and_flagged() -> None:
    tally, fixes = tallies()
    usage_of_a_and_b(tally)
    fixes.add(*correction(f"{PREFIX}0:0", "cus_B", "1", START + 10, offset=0, original_value="6"))
    fixes.apply(tally)
    assert total(tally) == {"cus_A": Decimal(7), "cus_B": Decimal(8)}
    assert fixes.inconsistent == 1
    (mismatch,) = fixes.mismatches
    assert "customer cus_B, the original's is cus_A" in mismatch and "original_value 6" in mismatch


def test_last_meters_apply_no_correction() -> None:
    tally, fixes = tallies("last")
    usage_of_a_and_b(tally)
    before = tally.totals()
    fixes.add(*correction(f"{PREFIX}0:1", "cus_A", "1", START + 20, offset=0))
    fixes.apply(tally)
    assert tally.totals() == before
    assert (fixes.reconciled, fixes.not_applied, fixes.applied) == (False, 1, 0)


def test_own_identifiers_are_corrected_in_the_copy_stripe_kept() -> None:
    tally, fixes = tallies()
    own, first = event(0, "cus_A", "5", START + 10)
    tally.add(own._replace(identifier="order-1"), first, PREFIX)
    copy, later = event(1, "cus_A", "5", START + 10)
    # The copy produced later: Stripe kept the first, and the correction names what Stripe kept.
    tally.add(copy._replace(identifier="order-1"), later._replace(timestamp_ms=(START + 99) * 1000), PREFIX)
    fixes.add(*correction("order-1", "cus_A", "2", START + 10, offset=0))
    fixes.apply(tally)
    assert total(tally) == {"cus_A": Decimal(2)} and tally.duplicates == 1


# ---------------------------------------------------------------------------------- coordinates


CORRECTION_SCHEMA = fastavro.parse_schema(json.loads(DEFAULT_CORRECTION_SCHEMA.read_text()))


def correction_bytes(**fields: Any) -> bytes:
    record: dict[str, Any] = dict.fromkeys(
        ("original_identifier", "original_topic", "original_partition", "original_offset"), None
    )
    record |= {"event_name": "api", "stripe_customer_id": "cus_A", "original_value": None}
    record |= {"replacement_value": None, "reason": "test", "attributes": None}
    record.update(fields)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, CORRECTION_SCHEMA, record)
    return buffer.getvalue()


def settings_of(*topics: TopicSettings) -> Settings:
    return Settings(stripe=StripeSettings(Secret("sk_test_x")), kafka=KafkaSettings(()), topics=topics)


def test_originals_named_by_coordinates_get_the_identifier_the_usage_was_sent_with() -> None:
    other = TopicSettings(name="other-usage", event_name="api")
    settings = settings_of(USAGE, other, FIXES)
    now_ms = (START + 2 * HOUR) * 1000
    usage_mapper = Mapper(USAGE)
    usage_mapper.use_namespace("NS")
    value = encode(usage("cus_A", 5, (START + 10) * 1000))
    sent = usage_mapper.map_value(value, "usage", 2, 41, None, now_ms)
    assert sent.identifier == derived_identifier("usage", "NS", 2, 41)

    tally, fixes = tallies()
    tally.add(sent, KafkaRecord("usage", 2, 41, None, value, now_ms), PREFIX)
    mapper = CorrectionMapper(FIXES)
    mapper.use_namespace("FX")
    namespace_of = original_namespaces(settings, USAGE, "NS")
    ts = (START + 10) * 1000
    named = [
        correction_bytes(original_topic="usage", original_partition=2, original_offset=41, timestamp=ts),
        correction_bytes(
            original_topic="other-usage", original_partition=2, original_offset=41, timestamp=ts
        ),
        correction_bytes(original_topic="elsewhere", original_partition=2, original_offset=41, timestamp=ts),
    ]
    for offset, raw in enumerate(named):
        record = KafkaRecord("fixes", 0, offset, None, raw, now_ms + offset)
        try:
            fixed = mapper.map_value(raw, Coordinates("fixes", 0, offset), now_ms, namespace_of)
        except RecordRejected as exc:  # the connector dead-letters it
            fixes.add_rejected(exc.code)
        else:
            fixes.add(fixed, record)
    fixes.apply(tally)
    assert tally.totals() == {("cus_A", START): Decimal(0)}
    # Another usage topic's record is never among this topic's; a topic the connector does not
    # consume is a correction it dead-letters.
    assert (fixes.applied, fixes.unmatched, dict(fixes.rejected)) == (1, 1, {"unknown_original_topic": 1})


def test_corrections_topics_read_are_those_that_can_touch_the_meter_in_the_context() -> None:
    topics = (
        USAGE,
        TopicSettings(name="any", event_name="", kind="corrections"),
        TopicSettings(name="same", event_name="api", kind="corrections"),
        TopicSettings(name="named-other", event_name="other", kind="corrections"),
        TopicSettings(name="in-acct", event_name="", kind="corrections", stripe_context="acct_1"),
        TopicSettings(name="by-field", event_name="", kind="corrections", context_field="tenant"),
    )
    settings = settings_of(*topics)
    names = [t.name for t in corrections_topics(settings, USAGE, None)]
    assert names == ["any", "same", "by-field"]
    assert [t.name for t in corrections_topics(settings, USAGE, "acct_1")] == ["in-acct", "by-field"]


# ------------------------------------------------------------------------------------------ report


@pytest.mark.parametrize("context", [None, "acct_1/acct_2"])
def test_the_report_states_the_context_and_the_corrections(context: str | None) -> None:
    tally, fixes = tallies()
    tally.context = fixes.context = context
    for n, (customer, value, seconds) in enumerate([("cus_A", "5", 10), ("cus_A", "7", 20)]):
        tally.add(*event(n, customer, value, START + seconds, context), PREFIX)
    tally.add(*event(9, "cus_A", "1", START + 30, "acct_other"), PREFIX)
    fixes.add(*correction(f"{PREFIX}0:0", "cus_A", "1", START + 10, offset=0, context=context))
    fixes.add(*correction("nowhere", "cus_A", "1", START + 10, offset=1, context=context))
    fixes.apply(tally)
    tally.totals()
    report = Report(
        topic="usage",
        event_name="api",
        meter_id="mtr_1",
        formula="sum",
        start=START,
        end=START + 2 * HOUR,
        window=None,
        tally=tally,
        rows=[],
        partitions=1,
        warnings=[],
        context=context,
        corrections=fixes,
    )
    text = render(report, now=START + 10 * HOUR)
    where = "the platform account" if context is None else f"context {context}"
    assert text.splitlines()[0].endswith(f"(formula sum) in {where}")
    assert "1 record(s) sent in other contexts, skipped" in text
    assert "2 correction record(s) read from fixes" in text
    assert "1 applied (1 original(s) cancelled, 1 replacement(s) added); 1 unmatched" in text
    assert "unmatched: fixes[0]@1: original nowhere of cus_A" in text
    document = as_json(report)
    assert document["context"] == context and document["kafka"]["other_contexts"] == 1
    corrections = document["corrections"]
    assert (corrections["applied"], corrections["unmatched"], corrections["reconciled"]) == (1, 1, True)
