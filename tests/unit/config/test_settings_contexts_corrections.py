"""Settings for contexts and corrections topics: defaults, every problem listed, the correction schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connector.config.environment import load_settings
from connector.config.settings import DEFAULT_CORRECTION_SCHEMA
from tests.unit.config.test_settings import API_KEY, DEFAULT_FIELDS, problems_of, write_schema


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    fields = [*DEFAULT_FIELDS, {"name": "tenant", "type": ["null", "string"], "default": None}]
    return {
        "STRIPE_API_KEY": API_KEY,
        "KAFKA_BOOTSTRAP_SERVERS": "localhost:9092",
        "CONNECTOR_TOPICS": "usage,fixes",
        "TOPIC_USAGE_EVENT_NAME": "api_requests",
        "TOPIC_USAGE_SCHEMA": str(write_schema(tmp_path, fields)),
        "TOPIC_FIXES_KIND": "corrections",
    }


def test_a_corrections_topic_needs_no_event_name_and_reads_the_correction_schema(env: dict[str, str]) -> None:
    settings = load_settings(env)
    usage, fixes = settings.topics
    assert (usage.kind, fixes.kind) == ("usage", "corrections")
    assert fixes.schema_path == DEFAULT_CORRECTION_SCHEMA and fixes.event_name == ""
    assert fixes.dlq_topic == "fixes.dlq" and usage.on_platform and fixes.on_platform


def test_contexts_static_and_from_a_field(env: dict[str, str]) -> None:
    env |= {"TOPIC_USAGE_STRIPE_CONTEXT": "acct_1Abc/acct_2Def", "TOPIC_USAGE_CONTEXT_FIELD": "tenant"}
    usage = load_settings(env).topics[0]
    assert (usage.stripe_context, usage.context_field, usage.on_platform) == (
        "acct_1Abc/acct_2Def",
        "tenant",
        False,
    )


def test_every_context_and_corrections_problem_is_listed(env: dict[str, str], tmp_path: Path) -> None:
    broken = write_schema(tmp_path, [{"name": "event_name", "type": "int"}], name="broken.avsc")
    env |= {
        "TOPIC_USAGE_STRIPE_CONTEXT": "cus_123",
        "TOPIC_USAGE_CONTEXT_FIELD": "missing_field",
        "TOPIC_FIXES_CUSTOMER_FIELD": "who",
        "TOPIC_FIXES_SCHEMA": str(broken),
        "TOPIC_FIXES_KIND": "corrections",
    }
    found = "\n".join(problems_of(env))
    assert "TOPIC_USAGE_STRIPE_CONTEXT: 'cus_123' is not a Stripe context" in found
    assert "TOPIC_USAGE_CONTEXT_FIELD: 'missing_field' is not a field" in found
    assert "TOPIC_FIXES_CUSTOMER_FIELD does not apply to a corrections topic" in found
    assert "'event_name' must be a string (not nullable)" in found
    assert "'original_partition' is not a field" in found
    env["TOPIC_FIXES_KIND"] = "refunds"
    assert "TOPIC_FIXES_KIND must be one of usage, corrections" in "\n".join(problems_of(env))


def test_a_context_field_must_be_a_string(env: dict[str, str], tmp_path: Path) -> None:
    fields = [*DEFAULT_FIELDS, {"name": "tenant", "type": "long"}]
    env |= {
        "TOPIC_USAGE_SCHEMA": str(write_schema(tmp_path, fields, "long.avsc")),
        "TOPIC_USAGE_CONTEXT_FIELD": "tenant",
    }
    assert any("'tenant' must be a string" in p for p in problems_of(env))


def test_the_bundled_correction_schema_has_every_field_the_mapper_reads() -> None:
    names = {f["name"] for f in json.loads(DEFAULT_CORRECTION_SCHEMA.read_text())["fields"]}
    from connector.config.corrections import COORDINATE_FIELDS, CORRECTION_FIELDS

    assert {name for name, _role, _required in CORRECTION_FIELDS} | set(COORDINATE_FIELDS) <= names


def test_aggregation_settings_and_their_problems(env: dict[str, str]) -> None:
    env |= {"TOPIC_USAGE_AGGREGATE": "15m", "TOPIC_USAGE_AGGREGATE_GRACE": "5"}
    usage = load_settings(env).topics[0]
    assert (usage.aggregate_s, usage.aggregate_grace_s, usage.aggregate_max_age_s) == (900, 5.0, 905.0)
    env["TOPIC_USAGE_AGGREGATE_GRACE"] = "0"  # records in event-time order need no grace
    assert load_settings(env).topics[0].aggregate_grace_s == 0.0
    env["TOPIC_USAGE_AGGREGATE_GRACE"] = "-1"
    assert any("AGGREGATE_GRACE must be a number >= 0, not -1" in p for p in problems_of(env))
    env["TOPIC_USAGE_AGGREGATE_GRACE"] = "5"
    env |= {
        "TOPIC_USAGE_AGGREGATE": "7m",
        "TOPIC_USAGE_CONTEXT_FIELD": "tenant",
        "TOPIC_FIXES_AGGREGATE": "1m",
    }
    found = "\n".join(problems_of(env))
    assert "TOPIC_USAGE_AGGREGATE must be a window that divides a day" in found
    assert "TOPIC_USAGE_AGGREGATE and TOPIC_USAGE_CONTEXT_FIELD" in found
    assert "TOPIC_FIXES_AGGREGATE does not apply to a corrections topic" in found
    del env["TOPIC_USAGE_AGGREGATE"]
    assert any("AGGREGATE_GRACE is set but TOPIC_USAGE_AGGREGATE is not" in p for p in problems_of(env))
