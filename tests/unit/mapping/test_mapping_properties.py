"""Properties of decode + map: deterministic, only ``RecordRejected`` on any input, valid events otherwise."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.config.settings import TopicSettings
from connector.errors import RecordRejected
from connector.mapping import mapper as mapper_module
from connector.mapping.values import format_value
from connector.records import Coordinates, KafkaRecord, MeterEvent

NOW = 1_795_000_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NS = "TopicIdOfUsage00000001"


class Mapper(mapper_module.Mapper):
    """The connector's mapper with the identifier namespace of every topic here set."""

    def __init__(self, settings: TopicSettings, schema_lookup: Any = None) -> None:
        super().__init__(settings, schema_lookup)
        self.use_namespace(NS)


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


# The fast path (fields decoded straight into a tuple, the one map-of-strings payload field taken over)
# must agree with the general one (decode to a dict, then map) on every input: same event, or a
# rejection with the same class, code and reason. A wide schema puts every type a role accepts in it
# (``avro.fields``' rules refuse the rest at start-up); the timestamp comes as a long or as text.
WIDE_SCHEMA = {
    "type": "record",
    "name": "Wide",
    "fields": [
        {"name": "id", "type": ["null", "string"]},
        {"name": "cust", "type": "string"},
        {
            "name": "qty",
            "type": [
                "null",
                "int",
                "long",
                "float",
                "double",
                "string",
                {"type": "bytes", "logicalType": "decimal", "precision": 20, "scale": 4},
            ],
        },
        {"name": "at", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}]},
        {"name": "at_text", "type": ["null", "string"]},
        {"name": "micros", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "region", "type": ["null", "string", "long", "double", "boolean"]},
        {"name": "dims", "type": ["null", {"type": "map", "values": ["null", "string", "long"]}]},
        {"name": "labels", "type": {"type": "map", "values": "string"}},
    ],
}
_WIDE_DIR = Path(tempfile.mkdtemp(prefix="kafka-stripe-wide-"))
(_WIDE_DIR / "wide.avsc").write_text(json.dumps(WIDE_SCHEMA))
WIDE = TopicSettings(
    name="wide",
    event_name="api_requests",
    schema_path=_WIDE_DIR / "wide.avsc",
    customer_field="cust",
    value_field="qty",
    timestamp_field="at",
    identifier_field="id",
    payload_fields=("region", "dims", "labels"),
)
WIDE_MAPPERS = [
    Mapper(WIDE),
    Mapper(dataclasses.replace(WIDE, payload_fields=("labels",))),  # adopted: a map of strings
    Mapper(dataclasses.replace(WIDE, payload_fields=("dims",))),  # not adopted: values of any type
    Mapper(dataclasses.replace(WIDE, timestamp_field="micros", identifier_field="", payload_fields=())),
    Mapper(dataclasses.replace(WIDE, payload_fields=("labels",), customer_key="region", value_key="zone")),
    Mapper(dataclasses.replace(WIDE, timestamp_field="at_text")),
]
SHORT_TEXT = st.sampled_from(["", " ", "cus_1", "x" * 101, "2026-11-23T10:00:00Z", "12.5"]) | TEXT
LONGS = st.integers(-(2**63), 2**63 - 1)
# Each role draws a valid value about half the time, so that many records map and their events compare.
WIDE_RECORDS = st.fixed_dictionaries(
    {
        "id": st.none() | st.sampled_from(["req_1", "req_2"]) | SHORT_TEXT,
        "cust": st.sampled_from(["cus_1", "cus_2"]) | SHORT_TEXT,
        "qty": st.integers(-(2**31), 2**31 - 1)
        | LONGS
        | st.floats(width=32)
        | st.floats()
        | SHORT_TEXT
        | st.integers(-(10**19) + 1, 10**19 - 1).map(lambda u: Decimal(u).scaleb(-4))
        | st.none(),
        "at": WINDOW | st.none() | LONGS,
        "at_text": st.none()
        | SHORT_TEXT
        | WINDOW.map(lambda ms: datetime.fromtimestamp(ms / 1000, UTC).isoformat()),
        "micros": WINDOW.map(lambda ms: ms * 1000 + 999),
        "region": st.none() | SHORT_TEXT | LONGS | st.floats() | st.booleans(),
        "dims": st.none() | st.dictionaries(TEXT, st.none() | TEXT | LONGS, max_size=3),
        "labels": st.dictionaries(
            st.sampled_from(["stripe_customer_id", "value", "region", "zone"]) | TEXT, TEXT, max_size=3
        ),
    }
)


def outcome(map_it: Any) -> tuple[Any, ...]:
    try:
        return ("event", map_it())
    except RecordRejected as rejected:
        return ("rejected", type(rejected), rejected.code, rejected.reason)


def wide_encode(record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(WIDE_SCHEMA), record)
    return buffer.getvalue()


def test_the_fast_path_is_taken_where_it_applies() -> None:
    assert MAPPER.projects_fields and CONFLUENT.projects_fields
    assert all(mapper.projects_fields for mapper in WIDE_MAPPERS)
    nested = Mapper(dataclasses.replace(WIDE, payload_fields=("labels.region",)))
    assert not nested.projects_fields  # a dotted path: the general path digs it out


@settings(max_examples=600, deadline=None)
@given(record=WIDE_RECORDS, kafka_ts=st.none() | WINDOW, data=st.data())
def test_fast_path_agrees_with_the_general_path(
    record: dict[str, Any], kafka_ts: int | None, data: Any
) -> None:
    value = wide_encode(record)
    at = Coordinates("wide", 3, 42)
    for mapper in WIDE_MAPPERS:
        fast = outcome(lambda mapper=mapper: mapper.map_value(value, *at, kafka_ts, NOW))
        general = outcome(lambda mapper=mapper: mapper.map(mapper.decoder.decode(value), at, kafka_ts, NOW))
        assert fast == general
    # Damaged bytes: the same rejection both ways.
    cut = data.draw(st.integers(0, len(value)))
    damaged = value[:cut] + data.draw(st.binary(max_size=3))
    for mapper in WIDE_MAPPERS[:2]:
        fast = outcome(lambda mapper=mapper: mapper.map_value(damaged, *at, kafka_ts, NOW))
        general = outcome(lambda mapper=mapper: mapper.map(mapper.decoder.decode(damaged), at, kafka_ts, NOW))
        assert fast == general


@settings(max_examples=300, deadline=None)
@given(record=TYPED_RECORDS, kafka_ts=st.none() | WINDOW)
def test_fast_path_agrees_with_the_general_path_on_the_default_schema(
    record: dict[str, Any], kafka_ts: int | None
) -> None:
    value = encode(record)
    at = Coordinates("usage", 0, 7)
    for mapper, data in ((MAPPER, value), (CONFLUENT, b"\x00\x00\x00\x00\x01" + value)):
        fast = outcome(lambda mapper=mapper, data=data: mapper.map_value(data, *at, kafka_ts, NOW))
        general = outcome(
            lambda mapper=mapper, data=data: mapper.map(mapper.decoder.decode(data), at, kafka_ts, NOW)
        )
        assert fast == general


def test_fast_path_keeps_copied_entries_and_lets_customer_and_value_win() -> None:
    record = {
        "id": None,
        "cust": "cus_1",
        "qty": 5,
        "at": NOW - 1_000,
        "at_text": datetime.fromtimestamp((NOW - 1_000) / 1000, UTC).isoformat(),
        "micros": NOW * 1000,
        "region": "eu",
        "dims": {"tier": "gold", "n": 3, "gone": None},
        "labels": {"region": "us", "zone": "z9", "stripe_customer_id": "cus_forged"},
    }
    value = wide_encode(record)
    at = Coordinates("wide", 3, 42)
    payloads = [mapper.map_value(value, *at, None, NOW).payload for mapper in WIDE_MAPPERS]
    for mapper, payload in zip(WIDE_MAPPERS, payloads, strict=True):
        assert payload == mapper.map(mapper.decoder.decode(value), at, None, NOW).payload
    assert payloads[0] == {
        "region": "us",
        "tier": "gold",
        "n": "3",
        "zone": "z9",
        "stripe_customer_id": "cus_1",
        "value": "5",
    }
    assert payloads[1] == {"region": "us", "zone": "z9", "stripe_customer_id": "cus_1", "value": "5"}
    assert payloads[4] == {"region": "cus_1", "zone": "5", "stripe_customer_id": "cus_forged"}
