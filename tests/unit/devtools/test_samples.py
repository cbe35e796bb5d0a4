"""The one sample-record generator: seeded, every value branch, optional identifiers and attributes."""

from __future__ import annotations

import io
import itertools
import random
from decimal import Decimal

import fastavro

from connector.devtools.samples import (
    ATTRIBUTES,
    WIDE_ATTRIBUTES,
    SampleRecords,
    encode,
    load_schema,
    random_customer_ids,
    worth,
)

CUSTOMERS = ["cus_a", "cus_b", "cus_c"]


def test_the_same_seed_gives_the_same_records() -> None:
    samples = SampleRecords(CUSTOMERS, seed=5)
    first = [samples.record(1_000 + i) for i in range(50)]
    again = SampleRecords(CUSTOMERS, seed=5)
    assert [again.record(1_000 + i) for i in range(50)] == first
    other = SampleRecords(CUSTOMERS, seed=6)
    assert [other.record(1_000 + i) for i in range(50)] != first


def test_values_cover_every_union_branch_and_their_worth_is_exact() -> None:
    samples = SampleRecords(CUSTOMERS, seed=1)
    values = [samples.value() for _ in range(2_000)]
    assert {type(v) for v in values} == {int, float, Decimal, str}
    assert worth(2) == Decimal(2) and worth(0.1) == Decimal("0.1") and worth("1.25") == Decimal("1.25")
    assert all(worth(v) > 0 for v in values)


def test_identifiers_only_for_their_share_and_never_twice() -> None:
    assert all(SampleRecords(CUSTOMERS, seed=2).identifier() is None for _ in range(100))
    samples = SampleRecords(CUSTOMERS, seed=2, identifier_share=0.25)
    found = [i for i in (samples.identifier() for _ in range(4_000)) if i is not None]
    assert 800 < len(found) < 1_200
    assert len(set(found)) == len(found)


def test_attributes_every_key_by_default_or_a_chosen_number_of_them() -> None:
    samples = SampleRecords(CUSTOMERS, seed=3)
    assert all(set(samples.attribute_map() or {}) == set(ATTRIBUTES) for _ in range(50))
    wide = SampleRecords(CUSTOMERS, seed=3, attributes=WIDE_ATTRIBUTES, attribute_keys=(1, 3))
    sizes = {len(wide.attribute_map() or {}) for _ in range(500)}
    assert sizes == {1, 2, 3}
    none = SampleRecords(CUSTOMERS, seed=3, attribute_share=0.0)
    assert none.attribute_map() is None


def test_weights_favour_the_first_customers() -> None:
    samples = SampleRecords(CUSTOMERS, seed=4, weights=[10.0, 1.0, 0.0])
    drawn = [samples.customer() for _ in range(1_000)]
    assert drawn.count("cus_a") > drawn.count("cus_b") > 0 and "cus_c" not in drawn


def test_spread_is_in_rough_time_order_and_encodes_with_the_default_schema() -> None:
    samples = SampleRecords(random_customer_ids(10, random.Random(0)), seed=0, identifier_share=0.3)
    records = list(samples.spread(100, 1_000_000, 3_600_000, 1_000_000, first=10, jitter_ms=2))
    stamps = [r["timestamp"] for r in records]
    assert stamps[0] >= 1_000_000 + 36 - 2
    assert all(b >= a - 2 for a, b in itertools.pairwise(stamps))
    schema = load_schema()
    for record in records:
        decoded = fastavro.schemaless_reader(io.BytesIO(encode(schema, record)), schema, None)
        assert decoded["stripe_customer_id"] == record["stripe_customer_id"]
        assert record["stripe_customer_id"].startswith("cus_") and len(record["stripe_customer_id"]) == 18
