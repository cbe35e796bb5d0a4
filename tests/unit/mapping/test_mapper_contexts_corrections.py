"""The mapper's context (static, from a field, refused when malformed) and the corrections mapper."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest

from connector.config.settings import DEFAULT_CORRECTION_SCHEMA, DEFAULT_SCHEMA, TopicSettings
from connector.errors import MappingError
from connector.mapping.corrections import CorrectionMapper
from connector.mapping.identifiers import derived_identifier
from connector.mapping.mapper import Mapper
from connector.records import Coordinates

NOW = 1_795_000_000_000
NS = "TopicIdOfUsage00000001"


def encode(schema_path: Path, record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(json.loads(schema_path.read_text())), record)
    return out.getvalue()


@pytest.fixture
def tenant_schema(tmp_path: Path) -> Path:
    document = json.loads(DEFAULT_SCHEMA.read_text())
    document["fields"].append({"name": "tenant", "type": ["null", "string"], "default": None})
    path = tmp_path / "tenant.avsc"
    path.write_text(json.dumps(document))
    return path


def usage(tenant: str | None = None, customer: str = "cus_1") -> dict[str, Any]:
    return {
        "stripe_customer_id": customer,
        "value": 3,
        "timestamp": NOW,
        "identifier": None,
        "tenant": tenant,
    }


def map_usage(settings: TopicSettings, record: dict[str, Any]) -> Any:
    mapper = Mapper(settings)
    mapper.use_namespace(NS)
    return mapper.map_value(encode(settings.schema_path, record), "usage", 0, 5, NOW, NOW)


def test_events_carry_the_topics_context_or_the_records(tenant_schema: Path) -> None:
    static = TopicSettings("usage", "api", schema_path=tenant_schema, stripe_context="acct_default")
    assert map_usage(static, usage()).context == "acct_default"
    by_field = TopicSettings(
        "usage", "api", schema_path=tenant_schema, stripe_context="acct_default", context_field="tenant"
    )
    assert map_usage(by_field, usage("acct_tenant1")).context == "acct_tenant1"
    assert map_usage(by_field, usage(None)).context == "acct_default"  # null: the topic's context
    platform = TopicSettings("usage", "api", schema_path=tenant_schema)
    event = map_usage(platform, usage("acct_ignored"))
    assert event.context is None and "context" not in event.as_json()


def test_a_malformed_context_is_a_rejection_naming_the_field(tenant_schema: Path) -> None:
    settings = TopicSettings("usage", "api", schema_path=tenant_schema, context_field="tenant")
    with pytest.raises(MappingError) as caught:
        map_usage(settings, usage("cus_not_an_account"))
    assert caught.value.code == "invalid_context" and "tenant" in caught.value.reason
    assert caught.value.coordinates == Coordinates("usage", 0, 5)


CORRECTIONS = TopicSettings("fixes", "", schema_path=DEFAULT_CORRECTION_SCHEMA, kind="corrections")


def correction(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "original_identifier": None,
        "original_topic": None,
        "original_partition": None,
        "original_offset": None,
        "event_name": "api",
        "stripe_customer_id": "cus_1",
        "original_value": 10,
        "replacement_value": "4",
        "timestamp": NOW,
        "reason": "double count",
        "attributes": {"region": "eu"},
    }
    return record | fields


def map_correction(record: dict[str, Any], settings: TopicSettings = CORRECTIONS) -> Any:
    mapper = CorrectionMapper(settings)
    mapper.use_namespace("FixesTopicId0000000001")
    namespaces = {"usage": NS}
    value = encode(settings.schema_path, record)
    return mapper.map_value(value, Coordinates("fixes", 1, 9), NOW, namespaces.get)


def test_an_original_named_by_coordinates_gets_the_identifier_it_was_sent_with() -> None:
    found = map_correction(correction(original_topic="usage", original_partition=2, original_offset=77))
    assert found.original == derived_identifier("usage", NS, 2, 77)
    assert found.identifier == derived_identifier("fixes", "FixesTopicId0000000001", 1, 9)
    assert (found.original_value, found.replacement_value) == ("10", "4")
    event = found.event("-6", "stripe_customer_id", "value")
    assert event.payload == {"region": "eu", "stripe_customer_id": "cus_1", "value": "-6"}
    assert event.identifier == found.identifier and event.timestamp.endswith("Z")


def test_an_original_named_by_identifier_and_a_cancel_only_correction() -> None:
    found = map_correction(
        correction(original_identifier="order-17", replacement_value=None, original_value=None)
    )
    assert (found.original, found.replacement_value, found.original_value) == ("order-17", None, None)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({}, "no_original"),
        (
            {"original_topic": "elsewhere", "original_partition": 0, "original_offset": 1},
            "unknown_original_topic",
        ),
        ({"original_identifier": "x", "replacement_value": "1.5"}, "value_not_whole"),
        ({"original_identifier": "x", "event_name": "other"}, "wrong_event_name"),
        ({"original_identifier": "x", "timestamp": NOW + 3_600_000}, "timestamp_in_future"),
    ],
)
def test_corrections_that_cannot_be_applied_are_rejected_with_a_code(
    fields: dict[str, Any], code: str
) -> None:
    settings = TopicSettings("fixes", "api", schema_path=DEFAULT_CORRECTION_SCHEMA, kind="corrections")
    with pytest.raises(MappingError) as caught:
        map_correction(correction(**fields), settings)
    assert caught.value.code == code
    assert caught.value.coordinates == Coordinates("fixes", 1, 9)
