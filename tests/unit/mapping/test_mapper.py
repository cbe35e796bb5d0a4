"""Mapping rules, one table per rule: values, timestamps, identifiers, customers, payloads, configuration."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from connector.avro.decoder import registry_lookup
from connector.config.settings import DEFAULT_SCHEMA, TopicSettings
from connector.errors import ConfigurationError, DecodeError, MappingError, RecordRejected
from connector.mapping import mapper as mapper_module
from connector.mapping.values import format_value
from connector.records import Coordinates, KafkaRecord, MeterEvent

NOW = 1_795_000_000_000  # 2026-11-18T11:06:40Z
AT = Coordinates("usage", 3, 42)
NS = "TopicIdOfUsage00000001"  # a topic id's shape: 22 characters of URL-safe base64


class Mapper(mapper_module.Mapper):
    """The connector's mapper with its topic's identifier namespace set, as the pipeline sets it."""

    def __init__(self, settings: TopicSettings, schema_lookup: Any = None) -> None:
        super().__init__(settings, schema_lookup)
        self.use_namespace(NS)


# Most tests here map decimals: they describe an account with decimal values enabled. The default
# (whole numbers only) has its own table below (WHOLE_NUMBERS).
SETTINGS = TopicSettings(name="usage", event_name="api_requests", decimal_values=True)
RECORD: dict[str, Any] = {
    "identifier": None,
    "stripe_customer_id": "cus_NffrFeUfNV2Hib",
    "value": 5,
    "timestamp": NOW - 1_000,
    "attributes": None,
}


@pytest.fixture(scope="module")
def mapper() -> Mapper:
    return Mapper(SETTINGS)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rejection(mapper: Mapper, record: dict[str, Any], kafka_ts: int | None = NOW) -> RecordRejected:
    with pytest.raises(RecordRejected) as caught:
        mapper.map(record, AT, kafka_ts, NOW)
    return caught.value


def encode(mapper: Mapper, record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, mapper.decoder.schema.parsed, record)
    return buffer.getvalue()


def write_schema(tmp_path: Path, fields: list[dict[str, Any]]) -> Path:
    path = tmp_path / "custom.avsc"
    path.write_text(json.dumps({"type": "record", "name": "Custom", "namespace": "test", "fields": fields}))
    return path


def test_a_record_becomes_a_meter_event(mapper: Mapper) -> None:
    record = {**RECORD, "timestamp": 1_795_000_000_721, "attributes": {"region": "eu-west-1"}}
    event = mapper.map(record, AT, None, NOW)
    assert event == MeterEvent(
        identifier=f"kafka:usage:{NS}:3:42",
        event_name="api_requests",
        timestamp="2026-11-18T11:06:40.721Z",
        payload={"region": "eu-west-1", "stripe_customer_id": "cus_NffrFeUfNV2Hib", "value": "5"},
    )
    assert type(event) is MeterEvent and event.as_json()["payload"] == event.payload


def test_map_record_decodes_then_maps(mapper: Mapper) -> None:
    data = encode(mapper, {**RECORD, "identifier": "req_1", "value": Decimal("2.500000000000")})
    event = mapper.map_record(KafkaRecord("usage", 0, 9, b"key", data, NOW), NOW)
    assert (event.identifier, event.payload["value"]) == ("req_1", "2.5")


# ---------------------------------------------------------------------------------------------- value

VALUES = [
    (0, "0"),
    (-7, "-7"),
    (999_999_999_999_999, "999999999999999"),
    (0.1 + 0.2, "0.3"),
    (2.0, "2"),
    (-0.0, "0"),
    (1.5, "1.5"),
    (1e-7, "0.0000001"),
    (123456.789, "123456.789"),
    (1.2345678901234567, "1.23456789012346"),
    (999999999999999.0, "999999999999999"),
    (Decimal("1.50"), "1.5"),
    (Decimal("12.500000000000"), "12.5"),
    (Decimal("-0.000"), "0"),
    (Decimal("1E+3"), "1000"),
    (Decimal("0.000000000001"), "0.000000000001"),
    (Decimal("-123456789012345"), "-123456789012345"),
    (Decimal("0.00000000000000123456789012345"), "0.00000000000000123456789012345"),
    ("12.5", "12.5"),
    (" 12.50\n", "12.5"),
    ("007", "7"),
    ("-0", "0"),
    ("+3", "3"),
    (".5", "0.5"),
    ("5.", "5"),
    ("1e3", "1000"),
    ("2.5E-3", "0.0025"),
    ("100", "100"),
]


@pytest.mark.parametrize(("value", "text"), VALUES, ids=[repr(v) for v, _ in VALUES])
def test_values_render_as_canonical_decimals(mapper: Mapper, value: Any, text: str) -> None:
    assert format_value(value) == text
    assert mapper.map({**RECORD, "value": value}, AT, None, NOW).payload["value"] == text


BAD_VALUES = [
    (None, "missing_value"),
    (float("nan"), "invalid_value"),
    (float("inf"), "invalid_value"),
    (float("-inf"), "invalid_value"),
    (Decimal("NaN"), "invalid_value"),
    (Decimal("-Infinity"), "invalid_value"),
    (True, "invalid_value"),
    (False, "invalid_value"),
    ("", "invalid_value"),
    ("  ", "invalid_value"),
    ("twelve", "invalid_value"),
    ("1_000", "invalid_value"),
    ("NaN", "invalid_value"),
    ("Infinity", "invalid_value"),
    ("0x10", "invalid_value"),
    ("1,5", "invalid_value"),
    ("١٢", "invalid_value"),  # Arabic-Indic digits: Decimal() would take them
    (b"12", "invalid_value"),
    ([1], "invalid_value"),
    ({"amount": 1}, "invalid_value"),
    (10**15, "value_too_many_digits"),
    (-(10**15), "value_too_many_digits"),
    (1e15, "value_too_many_digits"),
    (1e300, "value_too_many_digits"),
    (Decimal("1234567890.123456"), "value_too_many_digits"),
    (Decimal("1E+15"), "value_too_many_digits"),
    ("0.0000000000000001234567890123456", "value_too_many_digits"),
    ("1234567890123456", "value_too_many_digits"),
    ("1e999999999", "value_too_many_digits"),
    ("1e-31", "value_too_many_digits"),
    (Decimal("1E-999999999"), "value_too_many_digits"),
    (1.25e-29, "value_too_many_digits"),
]


@pytest.mark.parametrize(("value", "code"), BAD_VALUES, ids=[repr(v) for v, _ in BAD_VALUES])
def test_bad_values_are_rejected(mapper: Mapper, value: Any, code: str) -> None:
    error = rejection(mapper, {**RECORD, "value": value})
    assert isinstance(error, MappingError)
    assert (error.code, error.coordinates) == (code, AT)
    assert error.reason.startswith("value:")


def test_a_missing_value_field_is_missing_value(mapper: Mapper) -> None:
    record = {k: v for k, v in RECORD.items() if k != "value"}
    assert rejection(mapper, record).code == "missing_value"


# ------------------------------------------------------------------------------------------ timestamp

TIMESTAMPS = [
    (NOW, "2026-11-18T11:06:40.000Z"),
    (NOW - 1, "2026-11-18T11:06:39.999Z"),
    ("2026-11-18T11:06:40.721Z", "2026-11-18T11:06:40.721Z"),
    ("2026-11-18T12:06:40.7219+01:00", "2026-11-18T11:06:40.721Z"),  # converted to UTC, floored
    ("2026-11-18T09:36:40-01:30", "2026-11-18T11:06:40.000Z"),
    (datetime(2026, 11, 18, 11, 6, 40, 5_000, tzinfo=UTC), "2026-11-18T11:06:40.005Z"),
    (datetime(2026, 11, 18, 11, 6, 40), "2026-11-18T11:06:40.000Z"),  # naive: taken as UTC
]


@pytest.mark.parametrize(("timestamp", "text"), TIMESTAMPS, ids=[str(t) for t, _ in TIMESTAMPS])
def test_timestamps_render_as_rfc3339_utc_milliseconds(mapper: Mapper, timestamp: Any, text: str) -> None:
    assert mapper.map({**RECORD, "timestamp": timestamp}, AT, None, NOW).timestamp == text


def test_an_absent_timestamp_takes_the_kafka_timestamp(mapper: Mapper) -> None:
    event = mapper.map({**RECORD, "timestamp": None}, AT, NOW - 2_500, NOW)
    assert event.timestamp == iso(NOW - 2_500)
    for kafka_ts in (None, -1):
        assert rejection(mapper, {**RECORD, "timestamp": None}, kafka_ts).code == "missing_timestamp"


BAD_TIMESTAMPS = [
    ("2026-11-19 09:46:40Z", "invalid_timestamp"),  # a space: ISO 8601 allows it, RFC 3339 profile here not
    ("2026-11-18T11:06:40", "invalid_timestamp"),  # no offset
    ("20261119T094640Z", "invalid_timestamp"),
    ("2026-11-19T25:46:40Z", "invalid_timestamp"),
    ("yesterday", "invalid_timestamp"),
    ("", "invalid_timestamp"),
    (1.795e12, "invalid_timestamp"),
    (True, "invalid_timestamp"),
    (b"2026", "invalid_timestamp"),
    (NOW - 35 * 86_400_000 - 1, "timestamp_too_far_in_past"),
    (NOW + 300_001, "timestamp_in_future"),
    ("1970-01-01T00:00:00Z", "timestamp_too_far_in_past"),
    ("2099-01-01T00:00:00Z", "timestamp_in_future"),
]


@pytest.mark.parametrize(("timestamp", "code"), BAD_TIMESTAMPS, ids=[repr(t) for t, _ in BAD_TIMESTAMPS])
def test_bad_timestamps_are_rejected(mapper: Mapper, timestamp: Any, code: str) -> None:
    error = rejection(mapper, {**RECORD, "timestamp": timestamp})
    assert (error.code, error.coordinates) == (code, AT)
    assert error.reason.startswith("timestamp:")


def test_the_window_edges_are_inclusive(mapper: Mapper) -> None:
    for ts in (NOW - 35 * 86_400_000, NOW + 300_000):
        assert mapper.map({**RECORD, "timestamp": ts}, AT, None, NOW).timestamp == iso(ts)


def test_a_kafka_timestamp_out_of_the_window_is_rejected_naming_it(mapper: Mapper) -> None:
    error = rejection(mapper, {**RECORD, "timestamp": None}, NOW + 600_000)
    assert error.code == "timestamp_in_future"
    assert error.reason.startswith("the Kafka timestamp:")


def test_configured_windows_apply() -> None:
    mapper = Mapper(dataclasses.replace(SETTINGS, max_past_seconds=60, max_future_seconds=0))
    assert rejection(mapper, {**RECORD, "timestamp": NOW - 60_001}).code == "timestamp_too_far_in_past"
    assert rejection(mapper, {**RECORD, "timestamp": NOW + 1}).code == "timestamp_in_future"


def test_years_outside_rfc3339_are_invalid() -> None:
    forever = dataclasses.replace(SETTINGS, max_past_seconds=10**12, max_future_seconds=10**12)
    mapper = Mapper(forever)
    last = 253_402_300_799_999
    assert mapper.map({**RECORD, "timestamp": last}, AT, None, NOW).timestamp == "9999-12-31T23:59:59.999Z"
    assert mapper.map({**RECORD, "timestamp": -62_135_596_800_000}, AT, None, NOW).timestamp == (
        "0001-01-01T00:00:00.000Z"
    )
    assert rejection(mapper, {**RECORD, "timestamp": last + 1}).code == "invalid_timestamp"
    assert rejection(mapper, {**RECORD, "timestamp": "0001-01-01T00:30:00+01:00"}).code == "invalid_timestamp"


def test_timestamp_micros_fields_are_divided_to_milliseconds(tmp_path: Path) -> None:
    fields = [
        {"name": "customer", "type": "string"},
        {"name": "amount", "type": "long"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    ]
    settings = dataclasses.replace(
        SETTINGS,
        schema_path=write_schema(tmp_path, fields),
        customer_field="customer",
        value_field="amount",
        timestamp_field="at",
        payload_fields=(),
    )
    event = Mapper(settings).map({"customer": "cus_1", "amount": 1, "at": NOW * 1000 + 999}, AT, None, NOW)
    assert event.timestamp == iso(NOW)


def test_many_distinct_seconds_still_format_correctly(mapper: Mapper) -> None:
    # More seconds than the prefix cache holds, out of order.
    for ms in range(NOW - 35 * 86_400_000, NOW, 86_400_000 // 7 + 13):
        assert mapper.map({**RECORD, "timestamp": ms}, AT, None, NOW).timestamp == iso(ms)


# ----------------------------------------------------------------------------------------- identifier


def test_the_records_own_identifier_wins(mapper: Mapper) -> None:
    for identifier in ("req_1", "x" * 100, " spaced "):
        assert mapper.map({**RECORD, "identifier": identifier}, AT, None, NOW).identifier == identifier


@pytest.mark.parametrize(
    ("identifier", "code"),
    [
        ("x" * 101, "identifier_too_long"),
        ("", "invalid_identifier"),
        (17, "invalid_identifier"),
        (b"req", "invalid_identifier"),
        (["req"], "invalid_identifier"),
    ],
)
def test_bad_identifiers_are_rejected(mapper: Mapper, identifier: Any, code: str) -> None:
    error = rejection(mapper, {**RECORD, "identifier": identifier})
    assert (error.code, error.coordinates) == (code, AT)
    assert error.reason.startswith("identifier:")


def test_the_identifier_field_can_be_turned_off(mapper: Mapper) -> None:
    off = Mapper(dataclasses.replace(SETTINGS, identifier_field=""))
    assert off.map({**RECORD, "identifier": "req_1"}, AT, None, NOW).identifier == f"kafka:usage:{NS}:3:42"


# ------------------------------------------------------------------------------------------- customer


@pytest.mark.parametrize("customer", [None, "", "   ", 42, b"cus_1", ["cus_1"]], ids=repr)
def test_a_missing_or_unusable_customer_is_rejected(mapper: Mapper, customer: Any) -> None:
    error = rejection(mapper, {**RECORD, "stripe_customer_id": customer})
    assert (error.code, error.coordinates) == ("missing_customer", AT)
    assert error.reason.startswith("stripe_customer_id:")


def test_an_absent_customer_field_is_missing_customer(mapper: Mapper) -> None:
    assert rejection(mapper, {k: v for k, v in RECORD.items() if k != "stripe_customer_id"}).code == (
        "missing_customer"
    )


@pytest.mark.parametrize("field", ["identifier", "stripe_customer_id", "value", "timestamp", "attributes"])
def test_integers_too_long_to_print_are_rejected_not_crashed_on(mapper: Mapper, field: str) -> None:
    huge = 10**5000  # str() refuses ints past 4300 digits with a ValueError
    value = {"a": huge} if field == "attributes" else huge
    assert isinstance(rejection(mapper, {**RECORD, field: value}), MappingError)


def test_a_record_that_is_not_a_mapping_is_rejected(mapper: Mapper) -> None:
    with pytest.raises(MappingError) as caught:
        mapper.map([1, 2], AT, NOW, NOW)  # type: ignore[arg-type]
    assert caught.value.code == "not_a_record"


# -------------------------------------------------------------------------------------------- payload


def test_attributes_are_flattened_and_cannot_replace_customer_or_value(mapper: Mapper) -> None:
    attributes = {"region": "eu", "stripe_customer_id": "cus_EVIL", "value": "1000000"}
    event = mapper.map({**RECORD, "attributes": attributes}, AT, None, NOW)
    assert event.payload == {"region": "eu", "stripe_customer_id": "cus_NffrFeUfNV2Hib", "value": "5"}


def test_payload_values_are_stringified_canonically(mapper: Mapper) -> None:
    attributes = {"a": True, "b": 10**20, "c": 0.1 + 0.2, "d": Decimal("1.50"), "e": None, "f": "x"}
    event = mapper.map({**RECORD, "attributes": attributes}, AT, None, NOW)
    assert {k: v for k, v in event.payload.items() if k in attributes} == {
        "a": "true",
        "b": "100000000000000000000",
        "c": "0.3",
        "d": "1.5",
        "f": "x",
    }


def test_a_scalar_payload_field_is_copied_under_its_name(mapper: Mapper) -> None:
    event = mapper.map({**RECORD, "attributes": 12.50}, AT, None, NOW)
    assert event.payload["attributes"] == "12.5"


@pytest.mark.parametrize(
    "attributes",
    [{"a": {"nested": "map"}}, {"a": [1]}, {"a": b"bytes"}, {"a": float("nan")}, {1: "x"}],
    ids=repr,
)
def test_unusable_payload_values_are_rejected(mapper: Mapper, attributes: Any) -> None:
    expected = "invalid_payload_field"
    error = rejection(mapper, {**RECORD, "attributes": attributes})
    assert (error.code, error.coordinates) == (expected, AT)
    assert error.reason.startswith("attributes")


def test_dotted_paths_reach_into_nested_records_and_maps(tmp_path: Path) -> None:
    fields = [
        {
            "name": "usage",
            "type": {
                "type": "record",
                "name": "Usage",
                "fields": [
                    {"name": "customer", "type": "string"},
                    {"name": "amount", "type": ["null", "double"], "default": None},
                    {"name": "region", "type": "string"},
                    {
                        "name": "meta",
                        "type": {
                            "type": "record",
                            "name": "Meta",
                            "fields": [
                                {"name": "id", "type": ["null", "string"], "default": None},
                                {"name": "at", "type": "string"},
                            ],
                        },
                    },
                ],
            },
        },
        {"name": "labels", "type": {"type": "map", "values": "string"}},
        {"name": "count", "type": "int"},
    ]
    settings = dataclasses.replace(
        SETTINGS,
        schema_path=write_schema(tmp_path, fields),
        customer_field="usage.customer",
        value_field="usage.amount",
        timestamp_field="usage.meta.at",
        identifier_field="usage.meta.id",
        payload_fields=("labels", "usage.region", "labels.tier", "count"),
        customer_key="customer",
        value_key="amount",
    )
    mapper = Mapper(settings)
    record = {
        "usage": {
            "customer": "cus_1",
            "amount": 2.5,
            "region": "eu",
            "meta": {"id": "evt_9", "at": "2026-11-18T11:06:40.123Z"},
        },
        "labels": {"tier": "gold", "team": "core"},
        "count": 3,
    }
    data = encode(mapper, record)
    event = mapper.map_record(KafkaRecord("usage", 0, 1, None, data, None), NOW)
    assert event == MeterEvent(
        "evt_9",
        "api_requests",
        "2026-11-18T11:06:40.123Z",
        {"tier": "gold", "team": "core", "region": "eu", "count": "3", "customer": "cus_1", "amount": "2.5"},
    )
    # A nested record that is absent on the way makes the field absent, not an error of its own.
    error = rejection(mapper, {**record, "usage": None})
    assert (error.code, error.reason.split(":")[0]) == ("missing_customer", "usage.customer")


# --------------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"customer_field": "customer"}, "customer_field 'customer' is not a field"),
        ({"value_field": "usage.amount"}, "value_field 'usage.amount' is not a field"),
        ({"value_field": "attributes"}, "value_field 'attributes' must be a number"),
        ({"customer_field": "timestamp"}, "customer_field 'timestamp' must be a string"),
        ({"timestamp_field": "when"}, "timestamp_field 'when' is not a field"),
        ({"identifier_field": "timestamp"}, "identifier_field 'timestamp' must be a string"),
        ({"payload_fields": ("attributes", "region")}, "payload_fields 'region' is not a field"),
        ({"event_name": ""}, "event_name must be 1-100 characters"),
        ({"event_name": "e" * 101}, "event_name must be 1-100 characters"),
        ({"value_key": "stripe_customer_id"}, "two different non-empty payload keys"),
    ],
)
def test_configuration_is_checked_against_the_schema(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Mapper(dataclasses.replace(SETTINGS, **changes))


def test_optional_fields_left_at_their_defaults_may_be_absent(tmp_path: Path) -> None:
    fields = [{"name": "stripe_customer_id", "type": "string"}, {"name": "value", "type": "long"}]
    mapper = Mapper(dataclasses.replace(SETTINGS, schema_path=write_schema(tmp_path, fields)))
    event = mapper.map({"stripe_customer_id": "cus_1", "value": 1}, AT, NOW, NOW)
    assert (event.identifier, event.timestamp) == (f"kafka:usage:{NS}:3:42", iso(NOW))


# ------------------------------------------------------------------------------------- decode + map


def test_decode_errors_carry_the_coordinates(mapper: Mapper) -> None:
    with pytest.raises(DecodeError) as caught:
        mapper.map_record(KafkaRecord("usage", 5, 77, None, b"\xff\xff", NOW), NOW)
    assert caught.value.coordinates == Coordinates("usage", 5, 77)
    assert str(caught.value).endswith("at usage[5]@77")


def test_mapping_is_deterministic(mapper: Mapper) -> None:
    record = {**RECORD, "value": 0.1, "attributes": {"a": "b"}}
    first = mapper.map(record, AT, NOW, NOW)
    assert Mapper(SETTINGS).map(record, AT, NOW, NOW + 60_000) == first


def test_confluent_records_map_through_the_registry(request: pytest.FixtureRequest) -> None:
    client = SchemaRegistryClient.new_client({"url": f"mock://{request.node.name}"})
    serialize = AvroSerializer(client, DEFAULT_SCHEMA.read_text())
    data = serialize({**RECORD, "value": "3.10"}, SerializationContext("usage", MessageField.VALUE))
    assert data is not None
    mapper = Mapper(
        dataclasses.replace(SETTINGS, wire_format="confluent"), registry_lookup(client.get_schema)
    )
    event = mapper.map_record(KafkaRecord("usage", 0, 0, None, data, NOW), NOW)
    assert (event.identifier, event.payload["value"]) == (f"kafka:usage:{NS}:0:0", "3.1")


# ------------------------------------------------------------------------------ whole numbers by default

WHOLE_NUMBERS: list[tuple[Any, str | None]] = [
    (12, "12"),
    (12.0, "12"),
    ("12", "12"),
    (1e3, "1000"),
    ("1e3", "1000"),
    (Decimal("12.000000000000"), "12"),
    (-7, "-7"),
    (12.5, None),
    ("0.1", None),
    (Decimal("2.500000000000"), None),
    (0.1 + 0.2, None),
]


@pytest.mark.parametrize(("value", "text"), WHOLE_NUMBERS, ids=[repr(v) for v, _ in WHOLE_NUMBERS])
def test_whole_numbers_by_default_decimals_on_request(value: Any, text: str | None) -> None:
    default = Mapper(TopicSettings(name="usage", event_name="api_requests"))
    decimals = Mapper(TopicSettings(name="usage", event_name="api_requests", decimal_values=True))
    record = {**RECORD, "value": value}
    if text is None:
        refused = rejection(default, record)
        assert refused.code == "value_not_whole"
        assert "TOPIC_USAGE_DECIMAL_VALUES=true" in str(refused)
        assert refused.coordinates == AT
    else:
        assert default.map(record, AT, NOW, NOW).payload["value"] == text
    assert decimals.map(record, AT, NOW, NOW).payload["value"] == format_value(value)


def test_whole_number_rule_holds_on_the_compiled_fast_path() -> None:
    default = Mapper(TopicSettings(name="usage", event_name="api_requests"))
    assert default.projects_fields
    kafka = KafkaRecord("usage", 3, 42, None, encode(default, {**RECORD, "value": "0.1"}), NOW, ())
    with pytest.raises(RecordRejected) as caught:
        default.map_record(kafka, NOW)
    assert caught.value.code == "value_not_whole"
    kafka = KafkaRecord("usage", 3, 43, None, encode(default, {**RECORD, "value": 12.0}), NOW, ())
    assert default.map_record(kafka, NOW).payload["value"] == "12"
