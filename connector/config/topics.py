"""The topics section (``CONNECTOR_TOPICS`` and ``TOPIC_<T>_*``): names, fields, and the schema check."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path

from connector.avro import schema as avro_schema
from connector.avro.fields import FieldProblem, FieldUse, Role, SchemaReport, accepts, check_fields, lookup
from connector.config.contexts import context_problem
from connector.config.corrections import USAGE_ONLY_SUFFIXES, correction_schema_problems
from connector.config.reader import Reader, show
from connector.config.settings import DEFAULT_CORRECTION_SCHEMA, DEFAULT_SCHEMA, TopicKind, TopicSettings
from connector.stripe.limits import MAX_IDENTIFIER_LENGTH

TOPIC_SUFFIXES = (
    "EVENT_NAME",
    "SCHEMA",
    "FORMAT",
    "CUSTOMER_FIELD",
    "VALUE_FIELD",
    "TIMESTAMP_FIELD",
    "IDENTIFIER_FIELD",
    "PAYLOAD_FIELDS",
    "CUSTOMER_KEY",
    "VALUE_KEY",
    "DLQ_TOPIC",
    "DECIMAL_VALUES",
    "NAMESPACE",
    "KIND",
    "STRIPE_CONTEXT",
    "CONTEXT_FIELD",
    "AGGREGATE",
    "AGGREGATE_GRACE",
    "AGGREGATE_MAX_AGE",
)
# The variable (after ``TOPIC_<T>_``) that configures each field role.
ROLE_VARIABLES: dict[Role, str] = {
    "customer": "CUSTOMER_FIELD",
    "value": "VALUE_FIELD",
    "timestamp": "TIMESTAMP_FIELD",
    "identifier": "IDENTIFIER_FIELD",
    "payload": "PAYLOAD_FIELDS",
}
_FIELD_DEFAULTS: tuple[tuple[Role, str], ...] = (
    ("customer", "stripe_customer_id"),
    ("value", "value"),
    ("timestamp", "timestamp"),
    ("identifier", "identifier"),
)

_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
# A configured identifier namespace: the alphabet and length of a topic id in URL-safe base64.
NAMESPACE = re.compile(r"[A-Za-z0-9_-]{1,22}")
_FIELD_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def topic_env_key(topic: str) -> str:
    """``<T>`` of ``TOPIC_<T>_*``: the topic name upper-cased, every non-alphanumeric character ``_``."""
    return re.sub(r"[^A-Za-z0-9]", "_", topic).upper()


def topic_name_problem(name: str) -> str | None:
    if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
        return f"{show(name)} is not a legal Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"
    return None


def read_topic_names(reader: Reader) -> list[str]:
    value = reader.required("CONNECTOR_TOPICS")
    if value is None:
        return []
    names: list[str] = []
    keys: dict[str, str] = {}
    # Empty entries (a trailing comma) are ignored.
    for name in (n.strip() for n in value.split(",")):
        if not name:
            continue
        problem = topic_name_problem(name)
        if problem:
            reader.problem(f"CONNECTOR_TOPICS: {problem}")
        elif name in names:
            reader.problem(f"CONNECTOR_TOPICS: {name!r} is listed twice")
        elif topic_env_key(name) in keys:
            reader.problem(
                f"CONNECTOR_TOPICS: {keys[topic_env_key(name)]!r} and {name!r} both map to "
                f"TOPIC_{topic_env_key(name)}_*; rename one"
            )
        else:
            names.append(name)
            keys[topic_env_key(name)] = name
    if not names and not any("CONNECTOR_TOPICS" in p for p in reader.problems):
        reader.problem("CONNECTOR_TOPICS lists no topic")
    return names


def _field_path_problem(path: str) -> str | None:
    if not all(_FIELD_SEGMENT.fullmatch(segment) for segment in path.split(".")):
        return f"{show(path)} is not a field name or dotted path (a.b.c)"
    return None


def _read_fields(reader: Reader, prefix: str) -> tuple[dict[Role, str], set[Role]]:
    """The four single-field roles' paths (defaults where unset) and the roles set explicitly."""
    explicit: set[Role] = set()
    fields: dict[Role, str] = {}
    for role, default in _FIELD_DEFAULTS:
        env = prefix + ROLE_VARIABLES[role]
        value = reader.raw(env)
        if value is not None:
            explicit.add(role)
            problem = _field_path_problem(value.strip())
            if problem:
                reader.problem(f"{env}: {problem}")
                value = None
        fields[role] = value.strip() if value is not None else default
    return fields, explicit


def _read_payload_fields(reader: Reader, prefix: str) -> tuple[str, ...] | None:
    """``TOPIC_<T>_PAYLOAD_FIELDS``, or None when unset (the default is decided once the schema is known)."""
    env = prefix + "PAYLOAD_FIELDS"
    reader.known.add(env)
    value = reader.environ.get(env)
    if value is None:
        return None
    # The one variable where an empty value means something: "copy no extra fields".
    paths = tuple(part.strip() for part in value.split(",") if part.strip())
    for path in paths:
        problem = _field_path_problem(path)
        if problem:
            reader.problem(f"{env}: {problem}")
    paths = tuple(p for p in paths if not _field_path_problem(p))
    if len(set(paths)) != len(paths):
        reader.problem(f"{env} lists a field twice")
    return paths


def _read_schema(
    reader: Reader, prefix: str, default: Path = DEFAULT_SCHEMA
) -> tuple[Path, avro_schema.Schema]:
    value = reader.raw(prefix + "SCHEMA")
    path = Path(value.strip()).expanduser().resolve() if value else default
    schema = avro_schema.load(path)
    problem = schema.record_problem
    if problem is not None:
        where = f"{prefix}SCHEMA" if value else f"{prefix}SCHEMA (default)"
        reader.problem(f"{where}: {problem}")
    return path, schema


def _read_context(reader: Reader, prefix: str) -> tuple[str | None, str | None]:
    """``TOPIC_<T>_STRIPE_CONTEXT`` and ``TOPIC_<T>_CONTEXT_FIELD`` (None where unset)."""
    context = reader.raw(prefix + "STRIPE_CONTEXT")
    if context is not None:
        context = context.strip() or None
        problem = None if context is None else context_problem(context)
        if problem:
            reader.problem(f"{prefix}STRIPE_CONTEXT: {problem}")
    field = reader.raw(prefix + "CONTEXT_FIELD")
    if field is not None:
        field = field.strip() or None
        problem = None if field is None else _field_path_problem(field)
        if problem:
            reader.problem(f"{prefix}CONTEXT_FIELD: {problem}")
    return context, field


def _context_field_problem(schema: avro_schema.Schema, path: str) -> str | None:
    found, why = lookup(schema, path)
    if found is None:
        return f"{path!r} is not a field: not in {schema.path.name}, where {why}"
    if not accepts("identifier", found, schema.named):
        return (
            f"{path!r} must be a string, nullable allowed (null: the topic's STRIPE_CONTEXT or the platform)"
        )
    return None


def _read_corrections(
    reader: Reader, name: str, prefix: str, *, registry: bool, max_past: int, max_future: int
) -> TopicSettings:
    """A corrections topic: fixed fields (``config.corrections``), an optional event name restriction."""
    for suffix in (*USAGE_ONLY_SUFFIXES, "AGGREGATE"):
        if reader.raw(prefix + suffix) is not None:
            reader.problem(
                f"{prefix}{suffix} does not apply to a corrections topic: its records have the fixed "
                "fields of schemas/usage_correction.avsc"
            )
    schema_path, schema = _read_schema(reader, prefix, DEFAULT_CORRECTION_SCHEMA)
    wire_format = _read_format(reader, prefix, registry)
    context, context_field = _read_context(reader, prefix)
    dlq_topic = _read_dlq_topic(reader, prefix, name)
    namespace = _read_namespace(reader, prefix)
    if schema.record_problem is None:
        for found in correction_schema_problems(schema, f"{prefix}SCHEMA"):
            reader.problem(found)
        if context_field and (why := _context_field_problem(schema, context_field)):
            reader.problem(f"{prefix}CONTEXT_FIELD: {why}")
    customer_key = reader.text(prefix + "CUSTOMER_KEY", "stripe_customer_id")
    value_key = reader.text(prefix + "VALUE_KEY", "value")
    return TopicSettings(
        name=name,
        event_name=(reader.raw(prefix + "EVENT_NAME") or "").strip(),
        schema_path=schema_path,
        wire_format=wire_format,
        payload_fields=(),
        customer_key=customer_key,
        value_key=value_key,
        dlq_topic=dlq_topic,
        max_past_seconds=max_past,
        max_future_seconds=max_future,
        decimal_values=reader.flag(prefix + "DECIMAL_VALUES", False),
        namespace=namespace,
        kind="corrections",
        stripe_context=context,
        context_field=context_field,
    )


def _default_payload(schema: avro_schema.Schema) -> tuple[str, ...]:
    """Copy ``attributes`` when the schema has it; a schema without it simply has no extras."""
    usable = schema.record_problem is None
    return ("attributes",) if not usable or lookup(schema, "attributes")[0] is not None else ()


def _read_dlq_topic(reader: Reader, prefix: str, name: str) -> str:
    dlq_topic = reader.text(prefix + "DLQ_TOPIC", f"{name}.dlq")
    problem = topic_name_problem(dlq_topic)
    if problem:
        reader.problem(f"{prefix}DLQ_TOPIC: {problem}")
    return dlq_topic


_DURATION = re.compile(r"(\d+)\s*(s|m|h)?")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> int | None:
    """Seconds of ``30s``, ``1m``, ``15m``, ``1h`` or a plain number of seconds; None if malformed."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        return None
    return int(match.group(1)) * _UNIT_S[match.group(2) or "s"]


def _read_kind(reader: Reader, prefix: str) -> TopicKind:
    kind = reader.choice(prefix + "KIND", "usage", ("usage", "corrections"))
    return "corrections" if kind == "corrections" else "usage"


def _read_format(reader: Reader, prefix: str, registry: bool) -> str:
    wire_format = reader.choice(prefix + "FORMAT", "confluent" if registry else "avro", ("avro", "confluent"))
    if wire_format == "confluent" and not registry:
        reader.problem(f"{prefix}FORMAT is confluent, which needs SCHEMA_REGISTRY_URL")
    return wire_format


def _read_aggregation(
    reader: Reader, prefix: str, context_field: str | None
) -> tuple[int | None, float, float]:
    """``TOPIC_<T>_AGGREGATE`` (the window), its grace and its maximum age."""
    value = reader.raw(prefix + "AGGREGATE")
    grace = reader.number(prefix + "AGGREGATE_GRACE", 10.0, minimum=0.0, inclusive=True)
    if value is None or not value.strip():
        for suffix in ("AGGREGATE_GRACE", "AGGREGATE_MAX_AGE"):
            if reader.raw(prefix + suffix) is not None:
                reader.problem(f"{prefix}{suffix} is set but {prefix}AGGREGATE is not")
        return None, grace, 0.0
    window = parse_duration(value)
    if window is None or not 1 <= window <= 86_400 or 86_400 % window:
        reader.problem(
            f"{prefix}AGGREGATE must be a window that divides a day, like 30s, 1m, 15m or 1h, not {value!r}"
        )
        window = 60
    if context_field:
        reader.problem(
            f"{prefix}AGGREGATE and {prefix}CONTEXT_FIELD: records of one aggregate must share one Stripe "
            "context; set TOPIC_<T>_STRIPE_CONTEXT, or split the tenants into topics"
        )
    max_age = reader.number(prefix + "AGGREGATE_MAX_AGE", window + grace, minimum=0.0)
    return window, grace, max_age


def _read_namespace(reader: Reader, prefix: str) -> str | None:
    namespace = reader.raw(prefix + "NAMESPACE")
    if namespace is not None:
        namespace = namespace.strip()
        if not NAMESPACE.fullmatch(namespace):
            reader.problem(f"{prefix}NAMESPACE must be 1-22 letters, digits, '-' or '_', not {namespace!r}")
    return namespace


def read_topic(reader: Reader, name: str, *, registry: bool, max_past: int, max_future: int) -> TopicSettings:
    """One topic's ``TOPIC_<T>_*`` variables, checked against its schema."""
    prefix = f"TOPIC_{topic_env_key(name)}_"
    if _read_kind(reader, prefix) == "corrections":
        return _read_corrections(
            reader, name, prefix, registry=registry, max_past=max_past, max_future=max_future
        )
    event_name = reader.required(prefix + "EVENT_NAME") or ""
    if len(event_name) > MAX_IDENTIFIER_LENGTH:
        limit = MAX_IDENTIFIER_LENGTH
        reader.problem(f"{prefix}EVENT_NAME is {len(event_name)} characters; Stripe allows at most {limit}")
    schema_path, schema = _read_schema(reader, prefix)
    wire_format = _read_format(reader, prefix, registry)
    fields, explicit = _read_fields(reader, prefix)
    payload = _read_payload_fields(reader, prefix)
    customer_key = reader.text(prefix + "CUSTOMER_KEY", "stripe_customer_id")
    value_key = reader.text(prefix + "VALUE_KEY", "value")
    if customer_key == value_key:
        reader.problem(f"{prefix}CUSTOMER_KEY and {prefix}VALUE_KEY are both {customer_key!r}")
    decimal_values = reader.flag(prefix + "DECIMAL_VALUES", False)
    namespace = _read_namespace(reader, prefix)
    context, context_field = _read_context(reader, prefix)
    aggregate_s, aggregate_grace_s, aggregate_max_age_s = _read_aggregation(reader, prefix, context_field)
    dlq_topic = _read_dlq_topic(reader, prefix, name)
    if payload is None:
        payload = _default_payload(schema)
    topic = TopicSettings(
        name=name,
        event_name=event_name,
        schema_path=schema_path,
        wire_format=wire_format,
        customer_field=fields["customer"],
        value_field=fields["value"],
        timestamp_field=fields["timestamp"],
        identifier_field=fields["identifier"],
        payload_fields=payload,
        customer_key=customer_key,
        value_key=value_key,
        dlq_topic=dlq_topic,
        max_past_seconds=max_past,
        max_future_seconds=max_future,
        decimal_values=decimal_values,
        namespace=namespace,
        stripe_context=context,
        context_field=context_field,
        aggregate_s=aggregate_s,
        aggregate_grace_s=aggregate_grace_s,
        aggregate_max_age_s=aggregate_max_age_s or 70.0,
    )
    if schema.record_problem is None:
        for found in schema_report(schema, topic, explicit=explicit).problems:
            reader.problem(found)
        if context_field and (why := _context_field_problem(schema, context_field)):
            reader.problem(f"{prefix}CONTEXT_FIELD: {why}")
    return topic


def field_uses(topic: TopicSettings, explicit: Iterable[Role]) -> list[FieldUse]:
    """The topic's configured fields. A missing customer or value field is a problem; a missing
    timestamp or identifier field only when it was set explicitly (at its default name the Kafka
    record's timestamp and coordinates stand in); a configured payload field always."""
    explicit = set(explicit)
    roles: list[tuple[Role, str]] = [
        ("customer", topic.customer_field),
        ("value", topic.value_field),
        ("timestamp", topic.timestamp_field),
        ("identifier", topic.identifier_field),
    ]
    uses = [FieldUse(role, path, role in ("customer", "value") or role in explicit) for role, path in roles]
    return uses + [FieldUse("payload", path) for path in topic.payload_fields]


def render_problem(topic: TopicSettings, problem: FieldProblem) -> str:
    """A field problem under the variable that configures the field."""
    return f"TOPIC_{topic_env_key(topic.name)}_{ROLE_VARIABLES[problem.role]}: {problem.message}"


def schema_report(
    schema: avro_schema.Schema, topic: TopicSettings, *, explicit: Iterable[Role]
) -> SchemaReport:
    """Check that the topic's fields exist in ``schema`` with usable types (``avro.fields``' rules)."""
    reports, problems = check_fields(schema, field_uses(topic, explicit))
    rendered = tuple(render_problem(topic, problem) for problem in problems)
    return SchemaReport(topic.name, schema.path, schema.name, tuple(reports), rendered)


def inspect_schema(topic: TopicSettings) -> SchemaReport:
    """Load the topic's schema and check its configured fields (the ``check`` command's view)."""
    schema = avro_schema.load(topic.schema_path)
    problem = schema.record_problem
    if problem is not None:
        message = f"TOPIC_{topic_env_key(topic.name)}_SCHEMA: {problem}"
        return SchemaReport(topic.name, topic.schema_path, "", (), (message,))
    return schema_report(schema, topic, explicit=())


def unknown_topic_variables(reader: Reader, names: list[str]) -> None:
    """Report ``TOPIC_*`` variables nothing read: another topic's key, or a typo."""
    keys = {topic_env_key(name): name for name in names}
    known = sorted(n for n in reader.known if n.startswith("TOPIC_"))
    for name in sorted(n for n in reader.environ if n.startswith("TOPIC_") and n not in reader.known):
        suffix = next((s for s in TOPIC_SUFFIXES if name.endswith("_" + s)), None)
        middle = name[len("TOPIC_") : -len(suffix) - 1] if suffix else ""
        if suffix and middle and middle not in keys:
            if names:  # without valid topics, that problem is already reported on CONNECTOR_TOPICS
                listed = ", ".join(f"{topic} → TOPIC_{key}_*" for key, topic in keys.items())
                reader.problem(f"{name} belongs to no topic in CONNECTOR_TOPICS ({listed})")
            continue
        similar = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        hint = (
            f"; did you mean {similar[0]}?"
            if similar
            else f" (TOPIC_<T>_ + one of {', '.join(TOPIC_SUFFIXES)})"
        )
        reader.problem(f"{name} is not a known setting{hint}")
