"""The field-path rules: the type at a dotted path, and which types each role accepts (one set of rules
for the settings, the mapper and ``check``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from connector.avro import schema as avro_schema
from connector.avro.fields import (
    FieldUse,
    Role,
    accepts,
    check_fields,
    is_micros,
    is_text_map,
    lookup,
)
from connector.config.environment import load_settings
from connector.config.settings import TopicSettings
from connector.errors import ConfigurationError
from connector.mapping.mapper import Mapper

MILLIS = {"type": "long", "logicalType": "timestamp-millis"}
MICROS = {"type": "long", "logicalType": "timestamp-micros"}
DECIMAL = {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}
REGION = {"type": "enum", "name": "Region", "symbols": ["EU", "US"]}

# (role, Avro type, accepted?)
CASES: list[tuple[Role, Any, bool]] = [
    ("customer", "string", True),
    ("customer", {"type": "string", "logicalType": "uuid"}, True),
    ("customer", ["null", "string"], False),
    ("customer", "long", False),
    ("value", "int", True),
    ("value", "long", True),
    ("value", "float", True),
    ("value", "double", True),
    ("value", "string", True),
    ("value", DECIMAL, True),
    ("value", ["null", "long", "double"], True),
    ("value", "boolean", False),
    ("value", {"type": "int", "logicalType": "date"}, False),
    ("value", {"type": "map", "values": "long"}, False),
    ("timestamp", MILLIS, True),
    ("timestamp", MICROS, True),
    ("timestamp", "string", True),
    ("timestamp", ["null", MILLIS], True),
    ("timestamp", ["null", "string"], True),
    ("timestamp", "long", False),
    ("timestamp", "int", False),
    ("timestamp", ["null", "long"], False),
    ("timestamp", ["string", MILLIS], False),
    ("timestamp", {"type": "long", "logicalType": "local-timestamp-millis"}, False),
    ("identifier", "string", True),
    ("identifier", ["null", "string"], True),
    ("identifier", "long", False),
    ("payload", "string", True),
    ("payload", ["null", "boolean"], True),
    ("payload", REGION, True),
    ("payload", {"type": "map", "values": ["null", "string", "long"]}, True),
    ("payload", {"type": "record", "name": "Dims", "fields": [{"name": "a", "type": ["null", "int"]}]}, True),
    ("payload", {"type": "array", "items": "string"}, False),
    ("payload", {"type": "map", "values": {"type": "array", "items": "string"}}, False),
    ("payload", "bytes", False),
]


def schema_with(tmp_path: Path, probe: Any, name: str = "probe.avsc") -> avro_schema.Schema:
    fields = [
        {"name": "stripe_customer_id", "type": "string"},
        {"name": "value", "type": "long"},
        {"name": "probe", "type": probe},
    ]
    path = tmp_path / name
    path.write_text(json.dumps({"type": "record", "name": "Usage", "namespace": "test", "fields": fields}))
    return avro_schema.load(path)


@pytest.mark.parametrize(
    ("role", "avro_type", "accepted"), CASES, ids=[f"{r}-{json.dumps(t)}" for r, t, _ in CASES]
)
def test_each_role_accepts_its_types(tmp_path: Path, role: Role, avro_type: Any, accepted: bool) -> None:
    schema = schema_with(tmp_path, avro_type)
    found, why = lookup(schema, "probe")
    assert why is None
    assert accepts(role, found, schema.named) is accepted
    reports, problems = check_fields(schema, [FieldUse(role, "probe")])
    assert reports[0].type is not None
    if accepted:
        assert problems == []
    else:
        assert [p.role for p in problems] == [role]
        assert problems[0].message.startswith("'probe' must be ")
        assert "the field 'probe' in probe.avsc is " in problems[0].message


NESTED: list[dict[str, Any]] = [
    {
        "name": "account",
        "type": {"type": "record", "name": "Account", "fields": [{"name": "customer", "type": "string"}]},
    },
    {
        "name": "usage",
        "type": [
            "null",
            {
                "type": "record",
                "name": "Amount",
                "fields": [{"name": "amount", "type": DECIMAL}, {"name": "at", "type": MICROS}],
            },
        ],
    },
    {"name": "previous", "type": ["null", "test.Amount"]},  # a named type referenced by name
    {"name": "tags", "type": ["null", {"type": "map", "values": "string"}]},
    {"name": "counts", "type": {"type": "map", "values": ["null", "long"]}},
]


@pytest.fixture
def nested(tmp_path: Path) -> avro_schema.Schema:
    path = tmp_path / "nested.avsc"
    path.write_text(json.dumps({"type": "record", "name": "Usage", "namespace": "test", "fields": NESTED}))
    return avro_schema.load(path)


def test_dotted_paths_go_through_records_nullable_unions_named_types_and_maps(
    nested: avro_schema.Schema,
) -> None:
    assert lookup(nested, "account.customer") == ("string", None)
    assert accepts("value", lookup(nested, "usage.amount")[0], nested.named)
    assert accepts("value", lookup(nested, "previous.amount")[0], nested.named)
    assert lookup(nested, "tags.anything")[0] == "string"  # a map's values are fields of any name
    timestamp = lookup(nested, "previous.at")[0]
    assert accepts("timestamp", timestamp, nested.named) and is_micros(timestamp, nested.named)


def test_paths_that_lead_nowhere_say_why(nested: avro_schema.Schema) -> None:
    found, why = lookup(nested, "usage.nope")
    assert found is None and why == "record test.Amount has no field 'nope' (its fields: amount, at)"
    found, why = lookup(nested, "usage.amount.x")
    assert (
        found is None
        and why is not None
        and why.startswith("'usage.amount' is bytes (decimal), not a record")
    )
    reports, problems = check_fields(
        nested, [FieldUse("customer", "nope"), FieldUse("timestamp", "when", False)]
    )
    assert [(r.role, r.type, r.note) for r in reports] == [
        ("customer", None, "missing"),
        ("timestamp", None, "absent: the Kafka record's timestamp is used"),
    ]
    assert [p.message for p in problems] == [
        "'nope' is not a field: not in nested.avsc, where record test.Usage has no field 'nope' "
        "(its fields: account, usage, previous, tags, counts)"
    ]


def test_text_maps_are_told_from_maps_of_other_values(nested: avro_schema.Schema) -> None:
    assert is_text_map(lookup(nested, "tags")[0], nested.named)  # nullable map of strings
    assert not is_text_map(lookup(nested, "counts")[0], nested.named)
    assert not is_text_map(lookup(nested, "account")[0], nested.named)


def test_a_plain_long_timestamp_is_refused_by_settings_and_mapper_alike(tmp_path: Path) -> None:
    # The README's rule: a long with timestamp-millis/-micros, or an RFC 3339 string, nullable allowed.
    path = schema_with(tmp_path, "long", "plain.avsc").path
    env = {
        "STRIPE_API_KEY": "sk_test_51AbCdEfGhIjKlMnOpQrStUv",
        "KAFKA_BOOTSTRAP_SERVERS": "localhost:9092",
        "CONNECTOR_TOPICS": "usage",
        "TOPIC_USAGE_EVENT_NAME": "api_requests",
        "TOPIC_USAGE_SCHEMA": str(path),
        "TOPIC_USAGE_TIMESTAMP_FIELD": "probe",
    }
    with pytest.raises(ConfigurationError) as by_settings:
        load_settings(env)
    topic = TopicSettings(name="usage", event_name="api_requests", schema_path=path, timestamp_field="probe")
    with pytest.raises(ConfigurationError) as by_mapper:
        Mapper(topic)
    expected = (
        "'probe' must be a long with logicalType timestamp-millis or timestamp-micros, or an RFC 3339 "
        "string; nullable allowed; the field 'probe' in plain.avsc is long; a plain long has no unit: "
        "add logicalType timestamp-millis or timestamp-micros"
    )
    assert by_settings.value.problems == (f"TOPIC_USAGE_TIMESTAMP_FIELD: {expected}",)
    assert by_mapper.value.problems == (f"topic usage: timestamp_field {expected}",)
