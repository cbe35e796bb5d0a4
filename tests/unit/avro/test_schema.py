"""The schema model: one parse per file (shared by settings, decoder and mapper), errors as values."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from connector.avro import schema as avro_schema
from connector.avro.decoder import load_schema
from connector.config.settings import DEFAULT_SCHEMA, TopicSettings
from connector.mapping.mapper import Mapper

RECORD: dict[str, Any] = {
    "type": "record",
    "name": "Usage",
    "namespace": "test",
    "fields": [
        {"name": "stripe_customer_id", "type": "string"},
        {"name": "value", "type": "long"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}


def write(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


def test_a_file_is_parsed_once_and_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "usage.avsc", RECORD)
    parses: list[Path] = []
    real_parse = avro_schema.parse

    def counting(at: Path) -> avro_schema.Schema:
        parses.append(at)
        return real_parse(at)

    monkeypatch.setattr(avro_schema, "parse", counting)
    first = avro_schema.load(path)
    # The same file by another spelling of its path is the same model.
    assert avro_schema.load(tmp_path / "." / "usage.avsc") is first
    settings = TopicSettings(name="usage", event_name="e", schema_path=path, timestamp_field="at")
    mapper = Mapper(settings)
    assert mapper.decoder.schema is load_schema(path)
    assert len(parses) == 1


def test_a_changed_file_is_parsed_again(tmp_path: Path) -> None:
    path = write(tmp_path / "usage.avsc", RECORD)
    first = avro_schema.load(path)
    write(path, {**RECORD, "name": "Renamed", "fields": RECORD["fields"][:2]})
    os.utime(path, ns=(1, 1))  # a different modification time, whatever the clock's resolution
    second = avro_schema.load(path)
    assert second is not first and second.name == "test.Renamed"


def test_the_model_keeps_logical_types_and_names() -> None:
    schema = avro_schema.load(DEFAULT_SCHEMA)
    assert schema.error is None and schema.record_problem is None
    assert schema.name == schema.root["name"]
    assert "logicalType" in json.dumps(schema.declared)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "is not JSON"),
        ('{"type": "record", "name": "X", "fields": [{"name": "a", "type": "Nope"}]}', "UnknownType: Nope"),
        ("42", "not a valid Avro schema"),
    ],
)
def test_errors_are_values_not_exceptions(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "broken.avsc"
    path.write_text(text)
    schema = avro_schema.load(path)
    assert schema.error is not None and fragment in schema.error
    assert schema.record_problem == schema.error


def test_a_missing_file_is_an_error_and_not_cached(tmp_path: Path) -> None:
    path = tmp_path / "later.avsc"
    assert avro_schema.load(path).error == f"{path}: no such file"
    write(path, RECORD)
    assert avro_schema.load(path).error is None


def test_a_schema_that_is_not_a_record_parses_but_cannot_describe_usage(tmp_path: Path) -> None:
    path = write(tmp_path / "enum.avsc", {"type": "enum", "name": "E", "symbols": ["A"]})
    schema = avro_schema.load(path)
    assert schema.error is None
    assert schema.record_problem == f"{path}: the top-level type must be a record, not enum E"


@pytest.mark.parametrize(
    ("avro_type", "text"),
    [
        ("string", "string"),
        (["null", "string"], "null | string"),
        ({"type": "long", "logicalType": "timestamp-millis"}, "long (timestamp-millis)"),
        ({"type": "map", "values": "string"}, "map<string>"),
        ({"type": "array", "items": "long"}, "array<long>"),
        ({"type": "enum", "name": "Region", "symbols": ["EU"]}, "enum Region"),
    ],
)
def test_describe(avro_type: Any, text: str) -> None:
    assert avro_schema.describe(avro_type, {}) == text
