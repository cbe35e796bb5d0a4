"""Samples → records: whole-token matching, and every way a sample is left unmapped rather than guessed."""

from __future__ import annotations

import pytest

from connector.records import KafkaRecord
from connector.reports.locate import (
    AMBIGUOUS,
    FOREIGN_KEY,
    NO_FIELD,
    NO_MATCH,
    NO_TOKEN,
    RECORDS_GONE,
    TRUNCATED,
    UNKNOWN_NAMESPACE,
    Candidate,
    RangeRead,
    Reads,
    field_for,
    place,
    ranges_needed,
    tokens,
)
from connector.reports.report import Sample
from connector.stripe.request_keys import KeyRange, Origin, request_key

NS = "TopicIdOfUsage00000001"
CUSTOMER = "meter_event_customer_not_found"
VALUE = "meter_event_invalid_value"


def candidate(offset: int, customer: str = "cus_ok", value: str = "1", partition: int = 0) -> Candidate:
    record = KafkaRecord("usage", partition, offset, None, b"", 0)
    return Candidate(record, NS, customer, value, "api_requests")


def key_for(*offsets: int, partition: int = 0, body: bytes = b"{}") -> str:
    return request_key([Origin(NS, partition, o) for o in offsets], body)


def reads_of(
    *candidates: Candidate, first: int, last: int, partition: int = 0, complete: bool = True
) -> Reads:
    records = {c.record.offset: c for c in candidates if c.record.partition == partition}
    return {KeyRange(NS, partition, first, last): RangeRead(records, complete)}


def customer_sample(customer: str, key: str) -> Sample:
    return Sample(CUSTOMER, f"No customer found with id '{customer}'.", "req_1", key)


def value_sample(value: str, key: str) -> Sample:
    return Sample(VALUE, f"Value '{value}' for key value is not a whole number.", "req_1", key)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("No customer found with id 'cus_X'.", {"cus_X"}),
        ("Value '12.5' for key value is not a whole number: this account accepts whole numbers", {"12.5"}),
        ('No active meter was found for event_name "api".', {"api"}),
        ("No such customer: cus_X.", {"No", "such", "customer", "cus_X"}),
        ("", set()),
    ],
)
def test_tokens_are_the_quoted_ones_or_else_the_words(message: str, expected: set[str]) -> None:
    assert tokens(message) == expected


def test_codes_name_the_field_they_are_about() -> None:
    assert field_for(CUSTOMER) == "customer"
    assert field_for(VALUE) == "value" and field_for("meter_event_value_too_many_digits") == "value"
    assert field_for("archived_meter") == field_for("no_meter") == "event_name"
    assert field_for("timestamp_too_far_in_past") is None


def test_each_sample_maps_to_the_one_record_it_names() -> None:
    key = key_for(10, 11, 12, 13)
    bad_customer, bad_value = candidate(11, customer="cus_gone_1"), candidate(13, value="12.5")
    reads = reads_of(candidate(10), bad_customer, candidate(12), bad_value, first=10, last=13)
    samples = [customer_sample("cus_gone_1", key), value_sample("12.5", key)]
    assert ranges_needed(samples) == {KeyRange(NS, 0, 10, 13)}
    placed = place(samples, reads)
    assert [(p.sample, p.candidate, p.reason) for p in placed] == [
        (samples[0], bad_customer, ""),
        (samples[1], bad_value, ""),
    ]


def test_n_samples_of_one_request_and_token_map_to_n_matching_records() -> None:
    key = key_for(0, 1, 2)
    gone = [candidate(0, customer="cus_gone_1"), candidate(2, customer="cus_gone_1")]
    reads = reads_of(gone[0], candidate(1), gone[1], first=0, last=2)
    placed = place([customer_sample("cus_gone_1", key)] * 2, reads)
    assert [p.candidate for p in placed] == gone


def test_matches_are_whole_tokens_never_substrings() -> None:
    key = key_for(0, 1)
    reads = reads_of(candidate(0, value="2.5"), candidate(1, value="12.5"), first=0, last=1)
    (placed,) = place([value_sample("12.5", key)], reads)
    assert placed.candidate is not None and placed.candidate.record.offset == 1


@pytest.mark.parametrize(
    ("records", "samples", "reason"),
    [
        # Nothing in the request's ranges has the customer the message names.
        ([candidate(0), candidate(1)], 1, NO_MATCH),
        # Two records name it, one sample: which one Stripe meant cannot be told.
        ([candidate(0, customer="cus_gone_1"), candidate(1, customer="cus_gone_1")], 1, AMBIGUOUS),
        # More samples than records: some of the request's records are not where the key says.
        ([candidate(0, customer="cus_gone_1"), candidate(1)], 2, AMBIGUOUS),
    ],
)
def test_no_match_or_a_count_that_differs_is_not_guessed(
    records: list[Candidate], samples: int, reason: str
) -> None:
    key = key_for(0, 1)
    placed = place([customer_sample("cus_gone_1", key)] * samples, reads_of(*records, first=0, last=1))
    assert [(p.candidate, p.reason) for p in placed] == [(None, reason)] * samples


def test_a_record_two_groups_could_claim_is_ambiguous_for_both() -> None:
    # Two requests whose ranges overlap (a range may hold records of other requests): the record at
    # offset 5 matches the sample of each.
    first, second = key_for(3, 5, body=b"a"), key_for(5, 7, body=b"b")
    shared = candidate(5, customer="cus_gone_1")
    reads = {
        KeyRange(NS, 0, 3, 5): RangeRead({3: candidate(3), 5: shared}, True),
        KeyRange(NS, 0, 5, 7): RangeRead({5: shared, 7: candidate(7)}, True),
    }
    placed = place([customer_sample("cus_gone_1", first), customer_sample("cus_gone_1", second)], reads)
    assert [p.reason for p in placed] == [AMBIGUOUS, AMBIGUOUS]


def test_samples_that_cannot_be_placed_say_why() -> None:
    key = key_for(0, 1)
    known = reads_of(candidate(0, customer="cus_gone_1"), candidate(1), first=0, last=1)
    truncated = key + ";+"  # what request_key writes when not every range fits
    cases = [
        (
            Sample("timestamp_too_far_in_past", "Timestamp must be within the past 35 days.", "r", key),
            known,
            NO_FIELD,
        ),
        (customer_sample("cus_gone_1", "2d1b4a5e-6b0f-4d0a-9d55-0c8a1c2f3e4d"), known, FOREIGN_KEY),
        (customer_sample("cus_gone_1", truncated), known, TRUNCATED),
        (customer_sample("cus_gone_1", key), {}, UNKNOWN_NAMESPACE),
        (customer_sample("cus_gone_1", key), reads_of(first=0, last=1, complete=False), RECORDS_GONE),
        (Sample(CUSTOMER, "", "r", key), known, NO_TOKEN),
    ]
    for sample, reads, reason in cases:
        (placed,) = place([sample], {**reads, KeyRange("OtherNamespace", 0, 0, 1): None})
        assert (placed.candidate, placed.reason) == (None, reason), sample


def test_a_truncated_key_asks_for_no_ranges() -> None:
    key = key_for(0, 1) + ";+"
    assert ranges_needed([customer_sample("cus_gone_1", key)]) == set()
