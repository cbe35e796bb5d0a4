"""The fields of a corrections topic's records, declared once for the settings check and the mapper."""

from __future__ import annotations

from collections.abc import Iterable

from connector.avro import schema as avro_schema
from connector.avro.fields import FieldUse, Role, branches, check_fields, kind, lookup

# (field, role whose type rule it follows, required in the schema). The names are fixed: a corrections
# topic's schema may differ from schemas/usage_correction.avsc, but must have these fields.
CORRECTION_FIELDS: tuple[tuple[str, Role, bool], ...] = (
    ("original_identifier", "identifier", True),
    ("original_topic", "identifier", True),
    ("event_name", "customer", True),
    ("stripe_customer_id", "customer", True),
    ("original_value", "value", True),
    ("replacement_value", "value", True),
    ("timestamp", "timestamp", True),
    ("reason", "identifier", True),
    ("attributes", "payload", False),
)
# Whole-number coordinates, checked apart: no role takes integers only.
COORDINATE_FIELDS = ("original_partition", "original_offset")
# Usage-topic variables that mean nothing for a corrections topic (its fields are fixed).
USAGE_ONLY_SUFFIXES = (
    "CUSTOMER_FIELD",
    "VALUE_FIELD",
    "TIMESTAMP_FIELD",
    "IDENTIFIER_FIELD",
    "PAYLOAD_FIELDS",
)


def correction_schema_problems(schema: avro_schema.Schema, where: str) -> list[str]:
    """What keeps ``schema`` from carrying corrections (it must have no ``record_problem``)."""
    uses = [FieldUse(role, name, required) for name, role, required in CORRECTION_FIELDS]
    _reports, found = check_fields(schema, uses)
    problems = [f"{where}: {p.message}" for p in found]
    problems += _coordinate_problems(schema, where, COORDINATE_FIELDS)
    return problems


def _coordinate_problems(schema: avro_schema.Schema, where: str, names: Iterable[str]) -> list[str]:
    problems = []
    for name in names:
        found, why = lookup(schema, name)
        if found is None:
            problems.append(f"{where}: {name!r} is not a field: {why}")
            continue
        options, _nullable = branches(found, schema.named)
        if not options or any(kind(o, schema.named) not in ("int", "long") for o in options):
            problems.append(f"{where}: {name!r} must be an int or long, nullable allowed")
    return problems
