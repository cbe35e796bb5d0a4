"""Properties of decode + map: deterministic, only ``RecordRejected`` on any input, valid events otherwise."""

from __future__ import annotations

import dataclasses
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import fastavro
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.errors import RecordRejected
from connector.mapper import Mapper, format_value
from connector.records import Coordinates, KafkaRecord, MeterEvent
from connector.settings import TopicSettings

NOW = 1_795_000_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SETTINGS = TopicSettings(name="usage", event_name="api_requests")
MAPPER = Mapper(SETTINGS)
CONFLUENT = Mapper(
    dataclasses.replace(SETTINGS, wire_format="confluent"),
    {1: SETTINGS.schema_path.read_text()}.__getitem__,
)
WINDOW = st.integers(NOW - 35 * 86_400_000 - 5_000, NOW + 300_000 + 5_000)  # straddles both edges

VALUE_TEXT = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?\Z")
TIMESTAMP_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z\Z")

TEXT = st.text(max_size=12)
IDENTIFIERS = st.none() | st.text(max_size=110) | st.sampled_from(["", "x" * 100, "x" * 101])
VALUES = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.integers(-(10**38) + 1, 10**38 - 1).map(lambda u: Decimal(f"{u}E-12")),
    TEXT,
    st.from_regex(r"\s?[+-]?[0-9]{0,17}(\.[0-9]{0,14})?([eE][+-]?[0-9]{1,3})?\s?", fullmatch=True),
)
# Records of the default schema, any values of the right types: they encode, so they exercise decode + map.
TYPED_RECORDS = st.fixed_dictionaries(
    {
        "identifier": IDENTIFIERS,
        "stripe_customer_id": st.sampled_from(["", " ", "cus_NffrFeUfNV2Hib"]) | TEXT,
        "value": VALUES,
        "timestamp": WINDOW | st.integers(-(2**63), 2**63 - 1),
        "attributes": st.none() | st.dictionaries(TEXT, TEXT, max_size=4),
    }
)
# Anything at all, of any type, in any field: what map() may be handed by other code.
ANYTHING = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.decimals()
    | st.text(max_size=20)
    | st.binary(max_size=8)
    | st.datetimes(timezones=st.none() | st.timezones())
    | WINDOW
    | VALUES
    | st.integers(4301, 4400).map(lambda digits: 10**digits),  # too long for str()
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = ["identifier", "stripe_customer_id", "value", "timestamp", "attributes"]
ANY_RECORDS = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), ANYTHING, max_size=6)
COORDINATES = st.builds(
    Coordinates,
    st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", min_size=1, max_size=249),
    st.integers(0, 2**31 - 1),
    st.integers(0, 2**63 - 1),
)


def encode(record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, MAPPER.decoder.schema.parsed, record)
    return buffer.getvalue()


def assert_valid(event: MeterEvent, now_ms: int) -> None:
    """What Stripe requires of an event, checked independently of the mapper's own code."""
    assert 0 < len(event.identifier) <= 100
    assert event.event_name == "api_requests"
    assert TIMESTAMP_TEXT.match(event.timestamp), event.timestamp
    millis = (datetime.fromisoformat(event.timestamp) - EPOCH) // timedelta(milliseconds=1)
    assert now_ms - 35 * 86_400_000 <= millis <= now_ms + 300_000
    assert all(type(k) is str and type(v) is str for k, v in event.payload.items())
    customer, value = event.payload["stripe_customer_id"], event.payload["value"]
    assert customer.strip()
    assert VALUE_TEXT.match(value) and value != "-0", value
    assert len(value.lstrip("-").replace(".", "").lstrip("0")) <= 15


def map_or_reject(map_it: Any) -> MeterEvent | None:
    try:
        event: MeterEvent = map_it()
    except RecordRejected as rejected:
        assert rejected.coordinates is not None and rejected.reason
        return None
    return event


@settings(max_examples=400, deadline=None)
@given(record=TYPED_RECORDS, coordinates=COORDINATES, kafka_ts=st.none() | WINDOW)
def test_decode_and_map_of_typed_records_is_valid_or_rejected(
    record: dict[str, Any], coordinates: Coordinates, kafka_ts: int | None
) -> None:
    kafka_record = KafkaRecord(*coordinates, None, encode(record), kafka_ts)
    event = map_or_reject(lambda: MAPPER.map_record(kafka_record, NOW))
    if event is not None:
        assert_valid(event, NOW)


@settings(max_examples=400, deadline=None)
@given(record=ANY_RECORDS, coordinates=COORDINATES, kafka_ts=st.none() | st.integers() | WINDOW)
def test_arbitrary_field_values_only_ever_raise_rejections(
    record: dict[str, Any], coordinates: Coordinates, kafka_ts: int | None
) -> None:
    event = map_or_reject(lambda: MAPPER.map(record, coordinates, kafka_ts, NOW))
    if event is not None:
        assert_valid(event, NOW)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=100), kafka_ts=st.none() | WINDOW)
def test_arbitrary_bytes_only_ever_raise_rejections(data: bytes, kafka_ts: int | None) -> None:
    for mapper, value in ((MAPPER, data), (CONFLUENT, data), (CONFLUENT, b"\x00\x00\x00\x00\x01" + data)):
        record = KafkaRecord("usage", 0, 1, None, value, kafka_ts)
        event = map_or_reject(lambda mapper=mapper, record=record: mapper.map_record(record, NOW))
        if event is not None:
            assert_valid(event, NOW)


@settings(max_examples=300, deadline=None)
@given(
    record=TYPED_RECORDS, coordinates=COORDINATES, kafka_ts=st.none() | WINDOW, later=st.integers(0, 60_000)
)
def test_mapping_is_deterministic(
    record: dict[str, Any], coordinates: Coordinates, kafka_ts: int | None, later: int
) -> None:
    # A fresh mapper (empty caches), another "now": a replay must produce the very same event.
    kafka_record = KafkaRecord(*coordinates, None, encode(record), kafka_ts)
    first = map_or_reject(lambda: MAPPER.map_record(kafka_record, NOW))
    if first is None:
        return
    again = map_or_reject(lambda: Mapper(SETTINGS).map_record(kafka_record, NOW + later))
    assert again is None or again == first
    assert MAPPER.map_record(kafka_record, NOW) == first


@settings(max_examples=500, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False, min_value=-1e14, max_value=1e14))
def test_doubles_render_to_their_15_digit_value(value: float) -> None:
    try:
        text = format_value(value)
    except RecordRejected as rejected:
        # Only tiny doubles: 15 digits below 1e-15 take more than the 30 decimal places allowed.
        assert rejected.code == "value_too_many_digits" and abs(value) < 1e-15
        return
    assert Decimal(text) == Decimal(f"{value:.15g}")


@settings(max_examples=500, deadline=None)
@given(
    unscaled=st.integers(-(10**15) + 1, 10**15 - 1),
    exponent=st.integers(-30, 10),
    padding=st.integers(0, 5),
)
def test_exact_values_keep_their_value(unscaled: int, exponent: int, padding: int) -> None:
    # The same number written with extra trailing zeros renders the same, exactly.
    value = Decimal(f"{unscaled}E{exponent}")
    padded = Decimal(f"{unscaled * 10**padding}E{exponent - padding}")
    try:
        text = format_value(value)
    except RecordRejected as rejected:
        assert rejected.code == "value_too_many_digits"
        return
    assert Decimal(text) == value
    assert format_value(padded) == text == format_value(str(padded))


FOREVER = Mapper(dataclasses.replace(SETTINGS, max_past_seconds=10**12, max_future_seconds=10**12))


@settings(max_examples=500, deadline=None)
@given(millis=st.integers(-62_135_596_800_000, 253_402_300_799_999) | WINDOW)
def test_timestamps_match_datetime(millis: int) -> None:
    record = {"stripe_customer_id": "c", "value": 1, "timestamp": millis}
    event = FOREVER.map(record, Coordinates("t", 0, 0), None, 0)
    expected = EPOCH + timedelta(milliseconds=millis)
    assert event.timestamp == expected.isoformat(timespec="milliseconds").replace("+00:00", "Z")
