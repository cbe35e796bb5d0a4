"""Field-path rules, once: the type at a dotted path and which types each role accepts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from connector.avro.schema import Schema, deref, describe

Role = Literal["customer", "value", "timestamp", "identifier", "payload"]
ROLES: tuple[Role, ...] = ("customer", "value", "timestamp", "identifier", "payload")

_VALUE_KINDS = frozenset({"int", "long", "float", "double", "decimal", "string"})
_SCALAR_KINDS = _VALUE_KINDS | {"boolean", "enum", "timestamp"}

# What each role must be, as the problem message says it; the README documents the same rules.
WANTED: Mapping[Role, str] = {
    "customer": "a string (not nullable)",
    "value": "a number or a string: int, long, float, double, decimal or string, nullable allowed",
    "timestamp": "a long with logicalType timestamp-millis or timestamp-micros, or an RFC 3339 string; "
    "nullable allowed",
    "identifier": "a string, nullable allowed",
    "payload": "a scalar, or a map or record of scalars (payload values are strings)",
}
_PLAIN_LONG = "; a plain long has no unit: add logicalType timestamp-millis or timestamp-micros"


def branches(schema: Any, named: Mapping[str, Any]) -> tuple[list[Any], bool]:
    """The non-null branches of a type (a lone type is one branch) and whether null is allowed."""
    schema = deref(schema, named)
    options = schema if isinstance(schema, list) else [schema]
    resolved = [deref(option, named) for option in options]
    non_null = [o for o in resolved if o != "null" and not (isinstance(o, dict) and o.get("type") == "null")]
    return non_null, len(non_null) != len(resolved)


def kind(schema: Any, named: Mapping[str, Any]) -> str:
    """A one-word category of a non-union type: primitive name, ``decimal``, ``timestamp``, record, …"""
    schema = deref(schema, named)
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    base = str(schema.get("type"))
    logical = schema.get("logicalType")
    if logical == "decimal" and base in ("bytes", "fixed"):
        return "decimal"
    if logical in ("timestamp-millis", "timestamp-micros") and base == "long":
        return "timestamp"
    if logical and base in ("int", "long"):
        return f"{base}:{logical}"  # date, time-*, local-timestamp-*: not quantities, not instants
    return base


def lookup(schema: Schema, dotted: str) -> tuple[Any, str | None]:
    """The Avro type at a dotted path, or None and why not.

    The path follows records and nullable unions, and a map's values count as fields of any name
    (``attributes.region``), as the mapper reads them.
    """
    current: Any = schema.root
    walked: list[str] = []
    for segment in dotted.split("."):
        found, _ = branches(current, schema.named)
        container = found[0] if len(found) == 1 and isinstance(found[0], dict) else {}
        if container.get("type") == "map":
            current = container.get("values")
        elif container.get("type") == "record":
            match = next((f for f in container.get("fields", ()) if f.get("name") == segment), None)
            if match is None:
                names = ", ".join(f.get("name", "?") for f in container.get("fields", ())) or "none"
                return None, f"record {container.get('name')} has no field {segment!r} (its fields: {names})"
            current = match["type"]
        else:
            here = ".".join(walked)
            what = describe(current, schema.named)
            return None, f"{here!r} is {what}, not a record or map, so it has no {segment!r}"
        walked.append(segment)
    return current, None


def accepts(role: Role, found: Any, named: Mapping[str, Any]) -> bool:
    """Whether a field of type ``found`` can play ``role``."""
    options, nullable = branches(found, named)
    kinds = [kind(b, named) for b in options]
    if role == "customer":
        return kinds == ["string"] and not nullable
    if role == "value":
        return bool(kinds) and set(kinds) <= _VALUE_KINDS
    if role == "timestamp":
        # Nullable is fine: a null timestamp falls back to the Kafka record's, like an absent field.
        return len(kinds) == 1 and kinds[0] in ("timestamp", "string")
    if role == "identifier":
        return kinds == ["string"]
    return _payload_usable(options, named)


def is_micros(found: Any, named: Mapping[str, Any]) -> bool:
    """Whether a timestamp field counts microseconds (its long is divided down to milliseconds)."""
    options, _ = branches(found, named)
    return any(isinstance(b, dict) and b.get("logicalType") == "timestamp-micros" for b in options)


def is_text_map(found: Any, named: Mapping[str, Any]) -> bool:
    """A map (or nullable map) whose values are plain strings, not a union that may hold others."""
    options, _ = branches(found, named)
    for option in options:
        values = option.get("values") if isinstance(option, dict) and option.get("type") == "map" else None
        if not (values == "string" or (isinstance(values, dict) and values.get("type") == "string")):
            return False
    return bool(options)


def _payload_usable(options: list[Any], named: Mapping[str, Any]) -> bool:
    if not options:
        return False
    for option in options:
        category = kind(option, named)
        # A map's entries, or a record's fields, become payload keys: their values must be scalars.
        if category == "map":
            inner = [option.get("values")]
        elif category == "record":
            inner = [f.get("type") for f in option.get("fields", ())]
        elif category in _SCALAR_KINDS:
            continue
        else:
            return False
        for values in inner:
            scalars, _ = branches(values, named)
            if not scalars or not all(kind(v, named) in _SCALAR_KINDS for v in scalars):
                return False
    return True


@dataclass(frozen=True, slots=True)
class FieldUse:
    """A configured field: its role, dotted path, and whether its absence is a problem (a default
    timestamp or identifier field may be absent: the Kafka record stands in)."""

    role: Role
    path: str
    required: bool = True


@dataclass(frozen=True, slots=True)
class FieldReport:
    """One configured field of a topic: its role, path, Avro type (None when absent) and a note."""

    role: str
    path: str
    type: str | None
    note: str = ""


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """Why a configured field cannot be used; ``message`` starts with the path and names no setting,
    so the settings and the mapper put their own setting name in front of the same text."""

    role: Role
    path: str
    message: str


@dataclass(frozen=True, slots=True)
class SchemaReport:
    """What a topic's schema offers for its configured fields, and what is wrong with it."""

    topic: str
    path: Path
    record: str
    fields: tuple[FieldReport, ...]
    problems: tuple[str, ...]


def check_fields(schema: Schema, uses: Iterable[FieldUse]) -> tuple[list[FieldReport], list[FieldProblem]]:
    """Check each configured field against ``schema`` (which must have no ``record_problem``)."""
    reports: list[FieldReport] = []
    problems: list[FieldProblem] = []
    where = schema.path.name
    for use in uses:
        found, why = lookup(schema, use.path)
        if found is None:
            if use.required:
                problems.append(
                    FieldProblem(
                        use.role, use.path, f"{use.path!r} is not a field: not in {where}, where {why}"
                    )
                )
                reports.append(FieldReport(use.role, use.path, None, "missing"))
            else:
                stand_in = (
                    "the Kafka record's timestamp" if use.role == "timestamp" else "topic-partition-offset"
                )
                reports.append(FieldReport(use.role, use.path, None, f"absent: {stand_in} is used"))
            continue
        described = describe(found, schema.named)
        reports.append(FieldReport(use.role, use.path, described))
        if not accepts(use.role, found, schema.named):
            hint = _PLAIN_LONG if use.role == "timestamp" and kind(found, schema.named) == "long" else ""
            found_here = f"the field {use.path!r} in {where} is {described}{hint}"
            message = f"{use.path!r} must be {WANTED[use.role]}; {found_here}"
            problems.append(FieldProblem(use.role, use.path, message))
    return reports, problems
