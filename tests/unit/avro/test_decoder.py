"""Decoding record values: raw Avro, Confluent framing, schema evolution, bad bytes, compiled vs fastavro."""

from __future__ import annotations

import contextlib
import io
import json
import math
import struct
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.avro.decoder import AvroSchema, Decoder, load_schema, registry_lookup
from connector.config.settings import DEFAULT_SCHEMA, TopicSettings
from connector.errors import ConfigurationError, DecodeError, RetryableError

DEFAULT = load_schema(DEFAULT_SCHEMA)
RECORD = {
    "identifier": "req_1",
    "stripe_customer_id": "cus_NffrFeUfNV2Hib",
    "value": Decimal("12.500000000000"),
    "timestamp": 1_795_000_000_123,
    "attributes": {"region": "eu-west-1", "plan": "pro"},
}

# Everything the compiled reader inlines: nested and repeated named types, arrays of records,
# maps of unions, enums, fixed, fixed decimals, logical types that stay plain, floats, nulls.
COMPLEX_SCHEMA = {
    "type": "record",
    "name": "Outer",
    "namespace": "test",
    "fields": [
        {"name": "flag", "type": "boolean"},
        {"name": "small", "type": "int"},
        {"name": "ratio", "type": "float"},
        {"name": "blob", "type": "bytes"},
        {"name": "tag", "type": {"type": "fixed", "name": "Tag", "size": 4}},
        {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}},
        {
            "name": "items",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Item",
                    "fields": [
                        {"name": "sku", "type": {"type": "string"}},
                        {"name": "qty", "type": "long"},
                        {
                            "name": "price",
                            "type": {
                                "type": "fixed",
                                "name": "Money",
                                "size": 8,
                                "logicalType": "decimal",
                                "precision": 18,
                                "scale": 4,
                            },
                        },
                    ],
                },
            },
        },
        {"name": "counters", "type": {"type": "map", "values": ["null", "long", "string", "Tag"]}},
        {
            "name": "nested",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Inner",
                    "fields": [
                        {"name": "when", "type": {"type": "long", "logicalType": "timestamp-micros"}},
                        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
                        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
                        {
                            "name": "matrix",
                            "type": {"type": "array", "items": {"type": "array", "items": "double"}},
                        },
                    ],
                },
            ],
        },
        {"name": "again", "type": ["null", "Item"]},
        {"name": "colors", "type": {"type": "map", "values": "Color"}},
        {"name": "nothing", "type": "null"},
    ],
}
COMPLEX = AvroSchema(COMPLEX_SCHEMA)
LINKED_LIST_SCHEMA = {
    "type": "record",
    "name": "Node",
    "fields": [{"name": "value", "type": "long"}, {"name": "next", "type": ["null", "Node"]}],
}
LINKED_LIST = AvroSchema(LINKED_LIST_SCHEMA)  # recursive: read by fastavro
# A recursive schema under the default schema's name: resolves against it through fastavro, and fails.
RECURSIVE_USAGE_TEXT = json.dumps({**LINKED_LIST_SCHEMA, "name": "UsageRecord", "namespace": "kafka_stripe"})


def encode(schema: AvroSchema, datum: Any) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema.parsed, datum)
    return buffer.getvalue()


def fastavro_read(schema: AvroSchema, data: bytes) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(data), schema.parsed)


def same(a: Any, b: Any) -> bool:
    """Equal values of equal types: floats bit for bit (NaN too), decimals digit for digit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def topic(wire_format: str = "avro", schema_path: Path = DEFAULT_SCHEMA) -> TopicSettings:
    return TopicSettings(
        name="usage", event_name="api_requests", schema_path=schema_path, wire_format=wire_format
    )


def write_schema(tmp_path: Path, schema: dict[str, Any]) -> Path:
    path = tmp_path / f"{schema['name']}.avsc"
    path.write_text(json.dumps(schema))
    return path


# ------------------------------------------------------------------------------------------ raw Avro


def test_raw_avro_decodes_with_the_compiled_reader() -> None:
    decoder = Decoder(topic())
    assert DEFAULT.compiled is not None and DEFAULT.source is not None
    assert decoder.decode(encode(DEFAULT, RECORD)) == RECORD


@pytest.mark.parametrize(
    "value",
    [0, -1, 2**63 - 1, -(2**63), 0.1, float("-inf"), Decimal("-0.000000000001"), "12.5", ""],
    ids=repr,
)
def test_every_value_branch(value: Any) -> None:
    record = {**RECORD, "value": value, "identifier": None, "attributes": None}
    decoded = Decoder(topic()).decode(encode(DEFAULT, record))
    assert same(decoded, fastavro_read(DEFAULT, encode(DEFAULT, record)))
    assert decoded["value"] == value


def test_logical_types_other_than_decimal_stay_plain() -> None:
    # Timestamps stay the integer on the wire (the mapper formats them); fastavro agrees because
    # the decoder hands it the same schema without those logical types.
    datum = {
        "flag": True,
        "small": -5,
        "ratio": 0.5,
        "blob": b"\x00\xff",
        "tag": b"abcd",
        "color": "GREEN",
        "items": [{"sku": "a", "qty": 3, "price": Decimal("1.2500")}],
        "counters": {"x": None, "y": 7, "z": "t", "w": b"wxyz"},
        "nested": {"when": 1_795_000_000_123_456, "day": 20_000, "id": "d6a1…", "matrix": [[1.0], []]},
        "again": None,
        "colors": {"sky": "BLUE"},
        "nothing": None,
    }
    assert COMPLEX.compiled is not None
    decoded = COMPLEX.read(encode(COMPLEX, datum), 0)
    assert decoded["nested"]["when"] == 1_795_000_000_123_456
    assert decoded["nested"]["day"] == 20_000
    assert decoded["items"][0]["price"] == Decimal("1.2500")
    assert same(decoded, datum)


def test_recursive_schemas_fall_back_to_fastavro() -> None:
    assert LINKED_LIST.compiled is None
    data = encode(LINKED_LIST, {"value": 1, "next": {"value": 2, "next": None}})
    assert LINKED_LIST.read(data, 0) == {"value": 1, "next": {"value": 2, "next": None}}
    with pytest.raises(DecodeError) as caught:
        LINKED_LIST.read(data + b"\x00", 0)
    assert caught.value.code == "undecodable"


def _valid() -> bytes:
    return encode(DEFAULT, RECORD)


BAD_BYTES: list[tuple[str, Callable[[], bytes]]] = [
    ("empty", lambda: b""),
    ("truncated in a string", lambda: _valid()[:10]),
    ("truncated before the map's end", lambda: _valid()[:-1]),
    ("one trailing byte", lambda: _valid() + b"\x00"),
    ("invalid UTF-8 in a string", lambda: b"\x02\x04\xff\xfe" + _valid()[7:]),
    ("union index 2 of 2", lambda: b"\x04" + _valid()[1:]),
    ("negative union index", lambda: b"\x01" + _valid()[1:]),
    ("negative string length", lambda: b"\x00\x03abc"),
    ("huge string length", lambda: b"\x00\xfe\xff\xff\xff\xff\xff\xff\xff\x7f"),
    ("varint longer than ten bytes", lambda: b"\x00\x00\x00" + b"\xff" * 12),
    ("garbage", lambda: b"\x93\x11\xe2garbage\x00\x17"),
]


@pytest.mark.parametrize("make", [m for _, m in BAD_BYTES], ids=[n for n, _ in BAD_BYTES])
@pytest.mark.parametrize("schema", [DEFAULT, LINKED_LIST], ids=["compiled", "fastavro"])
def test_bad_bytes_are_undecodable(schema: AvroSchema, make: Callable[[], bytes], tmp_path: Path) -> None:
    path = DEFAULT_SCHEMA if schema is DEFAULT else write_schema(tmp_path, LINKED_LIST_SCHEMA)
    with pytest.raises(DecodeError) as caught:
        Decoder(topic(schema_path=path)).decode(make())
    assert caught.value.code == "undecodable"
    assert caught.value.reason.startswith("record value:")


@pytest.mark.parametrize("kind", ["string", "bytes"])
def test_negative_lengths_are_refused_before_slicing(kind: str) -> None:
    # A slice with a negative end is silently empty and would move the read position backwards.
    schema = AvroSchema({"type": "record", "name": "R", "fields": [{"name": "x", "type": kind}]})
    assert schema.compiled is not None
    with pytest.raises(ValueError, match="length -2 at byte 1"):
        schema.compiled(b"\x03abcdef", 0)


def test_a_tombstone_is_a_decode_error() -> None:
    with pytest.raises(DecodeError) as caught:
        Decoder(topic()).decode(None)
    assert caught.value.code == "tombstone"


def test_a_block_of_a_million_nulls_is_refused_not_looped_over() -> None:
    schema = AvroSchema({"type": "array", "items": "null"})
    assert schema.compiled is not None
    assert schema.read(b"\x06\x00", 0) == [None, None, None]
    with pytest.raises(ValueError, match="zero-width"):
        schema.compiled(b"\xfe\xff\xff\xff\x0f\x00", 0)


def test_decimals_wider_than_their_precision_round_as_in_fastavro() -> None:
    schema = AvroSchema({"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2})
    wide = (123_456_789).to_bytes(4, "big", signed=True)
    data = bytes([len(wide) * 2]) + wide
    assert same(schema.read(data, 0), fastavro_read(schema, data))


def test_invalid_decimal_logical_types_are_plain_bytes() -> None:
    schema = AvroSchema({"type": "bytes", "logicalType": "decimal", "scale": 2})  # no precision
    assert schema.read(b"\x04\x01\x02", 0) == b"\x01\x02"


# ------------------------------------------------------------------------------------- configuration


def test_unknown_wire_format_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="wire format"):
        Decoder(topic("protobuf"))


def test_confluent_format_needs_a_lookup() -> None:
    with pytest.raises(ConfigurationError, match="schema registry"):
        Decoder(topic("confluent"))


def test_unreadable_or_invalid_schema_files_are_configuration_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.avsc").write_text('{"type": "record", "name": "R", "fields": [{"name": "x"}]}')
    (tmp_path / "broken.avsc").write_text("{not json")
    for path in (tmp_path / "missing.avsc", tmp_path / "bad.avsc", tmp_path / "broken.avsc"):
        with pytest.raises(ConfigurationError, match="Avro schema"):
            Decoder(topic(schema_path=path))


def test_each_schema_file_is_parsed_once() -> None:
    assert Decoder(topic()).schema is Decoder(topic()).schema is DEFAULT


# ----------------------------------------------------------------------------------- Confluent framing


def frame(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + body


class Registry:
    """A schema lookup over a dict that counts its calls."""

    def __init__(self, schemas: dict[int, str]) -> None:
        self.schemas = schemas
        self.calls: list[int] = []

    def __call__(self, schema_id: int) -> str:
        self.calls.append(schema_id)
        return self.schemas[schema_id]


def test_confluent_frames_decode_and_the_schema_is_fetched_once_per_id() -> None:
    registry = Registry({7: DEFAULT_SCHEMA.read_text()})
    decoder = Decoder(topic("confluent"), registry)
    for _ in range(3):
        assert decoder.decode(frame(7, encode(DEFAULT, RECORD))) == RECORD
    assert registry.calls == [7]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "truncated_header"),
        (b"\x00\x00\x00\x07", "truncated_header"),
        (b"\x01\x00\x00\x00\x07" + b"\x00", "bad_magic_byte"),
        (frame(8, b"\x00"), "unknown_schema_id"),
        (frame(7, b"\x00\x00"), "undecodable"),
        (frame(7, _valid() + b"\x01"), "undecodable"),
    ],
)
def test_confluent_framing_errors(data: bytes, code: str) -> None:
    decoder = Decoder(topic("confluent"), Registry({7: DEFAULT_SCHEMA.read_text()}))
    with pytest.raises(DecodeError) as caught:
        decoder.decode(data)
    assert caught.value.code == code


def test_a_registry_outage_is_retryable_and_not_cached() -> None:
    failures = [RetryableError("registry down")]

    def lookup(schema_id: int) -> str:
        if failures:
            raise failures.pop()
        return DEFAULT_SCHEMA.read_text()

    decoder = Decoder(topic("confluent"), lookup)
    with pytest.raises(RetryableError):
        decoder.decode(frame(3, _valid()))
    assert decoder.decode(frame(3, _valid())) == RECORD


@pytest.mark.parametrize("text", ['syntax = "proto3";', '{"type": "record"}', "null", '{"type": []}'])
def test_a_writer_schema_that_is_not_avro_is_incompatible_and_asked_for_once(text: str) -> None:
    registry = Registry({5: text})
    decoder = Decoder(topic("confluent"), registry)
    for _ in range(2):
        with pytest.raises(DecodeError) as caught:
            decoder.decode(frame(5, b"\x00"))
        assert caught.value.code == "incompatible_schema"
    assert registry.calls == [5]


class FakeRegistryError(Exception):
    def __init__(self, status: int | None) -> None:
        super().__init__("http://user:secret@registry failed")
        self.http_status_code = status


@pytest.mark.parametrize(("status", "retryable"), [(404, False), (401, False), (429, True), (503, True)])
def test_registry_lookup_classifies_failures(status: int, retryable: bool) -> None:
    def get_schema(schema_id: int) -> Any:
        raise FakeRegistryError(status)

    lookup = registry_lookup(get_schema)
    if retryable:
        with pytest.raises(RetryableError) as caught:
            lookup(1)
        assert "secret" not in str(caught.value)
    else:
        with pytest.raises(FakeRegistryError):
            lookup(1)


def test_registry_lookup_treats_network_errors_as_retryable() -> None:
    def get_schema(schema_id: int) -> Any:
        raise ConnectionError("refused")

    with pytest.raises(RetryableError):
        registry_lookup(get_schema)(1)


# ------------------------------------------------ Confluent's own serializer and mock registry


def serializer_for(
    client: SchemaRegistryClient, schema: dict[str, Any] | str
) -> Callable[[dict[str, Any]], bytes]:
    text = schema if isinstance(schema, str) else json.dumps(schema)
    serialize = AvroSerializer(client, text, conf={"auto.register.schemas": True})
    context = SerializationContext("usage", MessageField.VALUE)

    def produce(record: dict[str, Any]) -> bytes:
        data = serialize(record, context)
        assert data is not None
        return data

    return produce


@pytest.fixture
def mock_registry(request: pytest.FixtureRequest) -> SchemaRegistryClient:
    # SchemaRegistryClient(...) itself always speaks HTTP; new_client() gives the mock for mock:// URLs.
    return SchemaRegistryClient.new_client({"url": f"mock://{request.node.name}"})


def test_confluent_avro_serializer_bytes_decode(mock_registry: SchemaRegistryClient) -> None:
    produce = serializer_for(mock_registry, DEFAULT_SCHEMA.read_text())
    decoder = Decoder(topic("confluent"), registry_lookup(mock_registry.get_schema))
    records = [
        RECORD,
        {**RECORD, "identifier": None, "value": 42, "attributes": None},
        {**RECORD, "value": 0.25, "attributes": {}},
        {**RECORD, "value": " 7.5 "},
    ]
    for record in records:
        assert same(decoder.decode(produce(record)), record)
    assert DEFAULT.reader_for(AvroSchema.from_text(mock_registry.get_schema(1).schema_str)) is DEFAULT.read


def test_unknown_ids_in_the_mock_registry_are_unknown_schema_ids(mock_registry: SchemaRegistryClient) -> None:
    decoder = Decoder(topic("confluent"), registry_lookup(mock_registry.get_schema))
    with pytest.raises(DecodeError) as caught:
        decoder.decode(frame(12345, _valid()))
    assert caught.value.code == "unknown_schema_id"


def _evolved(fields: list[dict[str, Any]], name: str = "UsageRecord") -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "kafka_stripe", "fields": fields}


DEFAULT_FIELDS: list[dict[str, Any]] = json.loads(DEFAULT_SCHEMA.read_text())["fields"]
OLD_FIELDS = [f for f in DEFAULT_FIELDS if f["name"] in ("stripe_customer_id", "value", "timestamp")]


def test_old_writer_new_reader_fills_added_fields_with_defaults(mock_registry: SchemaRegistryClient) -> None:
    produce = serializer_for(mock_registry, _evolved(OLD_FIELDS))
    decoder = Decoder(topic("confluent"), registry_lookup(mock_registry.get_schema))
    old = {"stripe_customer_id": "cus_1", "value": 3, "timestamp": 1_795_000_000_000}
    assert decoder.decode(produce(old)) == {**old, "identifier": None, "attributes": None}


def test_new_writer_old_reader_skips_fields_it_does_not_know(
    mock_registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    newer = [*DEFAULT_FIELDS, {"name": "source", "type": "string", "default": ""}]
    produce = serializer_for(mock_registry, _evolved(newer))
    old_reader = write_schema(tmp_path, _evolved(OLD_FIELDS))
    decoder = Decoder(topic("confluent", old_reader), registry_lookup(mock_registry.get_schema))
    assert decoder.decode(produce({**RECORD, "source": "billing-v2"})) == {
        "stripe_customer_id": RECORD["stripe_customer_id"],
        "value": RECORD["value"],
        "timestamp": RECORD["timestamp"],
    }


def test_promotions_int_to_long_float_to_double_string_to_bytes(
    mock_registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    writer = _evolved(
        [
            {"name": "count", "type": "int"},
            {"name": "ratio", "type": "float"},
            {"name": "label", "type": "string"},
            {"name": "wide", "type": "long"},
        ],
        "Promoted",
    )
    reader = _evolved(
        [
            {"name": "count", "type": "long"},
            {"name": "ratio", "type": "double"},
            {"name": "label", "type": "bytes"},
            {"name": "wide", "type": ["null", "double"]},
        ],
        "Promoted",
    )
    produce = serializer_for(mock_registry, writer)
    decoder = Decoder(
        topic("confluent", write_schema(tmp_path, reader)), registry_lookup(mock_registry.get_schema)
    )
    assert decoder.decode(produce({"count": 5, "ratio": 0.5, "label": "x", "wide": 3})) == {
        "count": 5,
        "ratio": 0.5,
        "label": b"x",
        "wide": 3.0,
    }


def test_a_writer_missing_a_required_field_is_incompatible(mock_registry: SchemaRegistryClient) -> None:
    writer = _evolved([f for f in DEFAULT_FIELDS if f["name"] != "stripe_customer_id"])
    produce = serializer_for(mock_registry, writer)
    decoder = Decoder(topic("confluent"), registry_lookup(mock_registry.get_schema))
    with pytest.raises(DecodeError) as caught:
        decoder.decode(produce({k: v for k, v in RECORD.items() if k != "stripe_customer_id"}))
    assert caught.value.code == "incompatible_schema"


# ------------------------------------------------------------------- properties: differential, fuzz

TEXT = st.text(max_size=20)
LONGS = st.integers(-(2**63), 2**63 - 1)
INTS = st.integers(-(2**31), 2**31 - 1)
DOUBLES = st.floats(allow_nan=True, allow_infinity=True)
DEFAULT_DECIMALS = st.integers(-(10**38) + 1, 10**38 - 1).map(lambda u: Decimal(f"{u}E-12"))

DEFAULT_RECORDS = st.fixed_dictionaries(
    {
        "identifier": st.none() | TEXT,
        "stripe_customer_id": TEXT,
        "value": st.one_of(LONGS, DOUBLES, DEFAULT_DECIMALS, TEXT),
        "timestamp": LONGS,
        "attributes": st.none() | st.dictionaries(TEXT, TEXT, max_size=4),
    }
)
ITEMS = st.fixed_dictionaries(
    {
        "sku": TEXT,
        "qty": LONGS,
        "price": st.integers(-(10**18) + 1, 10**18 - 1).map(lambda u: Decimal(f"{u}E-4")),
    }
)
COMPLEX_RECORDS = st.fixed_dictionaries(
    {
        "flag": st.booleans(),
        "small": INTS,
        "ratio": st.floats(width=32),
        "blob": st.binary(max_size=20),
        "tag": st.binary(min_size=4, max_size=4),
        "color": st.sampled_from(["RED", "GREEN", "BLUE"]),
        "items": st.lists(ITEMS, max_size=3),
        "counters": st.dictionaries(
            TEXT, st.one_of(st.none(), LONGS, TEXT, st.binary(min_size=4, max_size=4)), max_size=3
        ),
        "nested": st.none()
        | st.fixed_dictionaries(
            {
                "when": LONGS,
                "day": INTS,
                "id": TEXT,
                "matrix": st.lists(st.lists(DOUBLES, max_size=3), max_size=3),
            }
        ),
        "again": st.none() | ITEMS,
        "colors": st.dictionaries(TEXT, st.sampled_from(["RED", "GREEN", "BLUE"]), max_size=3),
        "nothing": st.none(),
    }
)


@settings(max_examples=300, deadline=None)
@given(DEFAULT_RECORDS)
def test_compiled_reader_agrees_with_fastavro_on_the_default_schema(record: dict[str, Any]) -> None:
    data = encode(DEFAULT, record)
    assert DEFAULT.compiled is not None
    assert same(DEFAULT.compiled(data, 0), fastavro_read(DEFAULT, data))


@settings(max_examples=200, deadline=None)
@given(COMPLEX_RECORDS)
def test_compiled_reader_agrees_with_fastavro_on_a_nested_schema(record: dict[str, Any]) -> None:
    data = encode(COMPLEX, record)
    assert COMPLEX.compiled is not None
    decoded = COMPLEX.compiled(data, 0)
    assert same(decoded, fastavro_read(COMPLEX, data))
    assert math.isnan(record["ratio"]) or decoded["ratio"] == record["ratio"]


def mutated(records: st.SearchStrategy[dict[str, Any]], schema: AvroSchema) -> st.SearchStrategy[bytes]:
    """Valid encodings with one byte replaced by zero to three others: bytes close to valid."""
    return st.tuples(
        records.map(lambda r: encode(schema, r)), st.integers(0, 200), st.binary(max_size=3)
    ).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :])


@pytest.fixture(scope="module")
def complex_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("schemas")
    return {
        "complex": write_schema(folder, COMPLEX_SCHEMA),
        "linked": write_schema(folder, LINKED_LIST_SCHEMA),
    }


def only_decode_errors(decoder: Decoder, data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decoder.decode(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80) | mutated(DEFAULT_RECORDS, DEFAULT))
def test_raw_avro_bytes_only_ever_raise_decode_errors(data: bytes) -> None:
    only_decode_errors(Decoder(topic()), data)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=60) | mutated(COMPLEX_RECORDS, COMPLEX))
def test_nested_schema_bytes_only_ever_raise_decode_errors(
    complex_files: dict[str, Path], data: bytes
) -> None:
    only_decode_errors(Decoder(topic(schema_path=complex_files["complex"])), data)  # compiled
    only_decode_errors(Decoder(topic(schema_path=complex_files["linked"])), data)  # fastavro


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80) | mutated(DEFAULT_RECORDS, DEFAULT))
def test_confluent_bytes_only_ever_raise_decode_errors(body: bytes) -> None:
    # Id 0 is the reader schema itself (compiled), id 1 resolves through fastavro (an extra
    # field), id 2 cannot resolve at all, id 3 is unknown.
    extra = _evolved([*DEFAULT_FIELDS, {"name": "source", "type": ["null", "string"], "default": None}])
    registry = Registry({0: DEFAULT_SCHEMA.read_text(), 1: json.dumps(extra), 2: RECURSIVE_USAGE_TEXT})
    decoder = Decoder(topic("confluent"), registry)
    for schema_id in range(4):
        only_decode_errors(decoder, frame(schema_id, body))
    only_decode_errors(decoder, body)
