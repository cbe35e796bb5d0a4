"""Decoded usage records → Stripe meter events: a topic's ``Mapper`` and its per-record rules."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any, TypeVar

from connector.avro import schema as avro_schema
from connector.avro.decoder import Decoder, SchemaLookup
from connector.avro.fields import FieldUse, Role, check_fields, is_micros, is_text_map, lookup
from connector.config.contexts import context_problem
from connector.config.settings import TopicSettings
from connector.errors import ConfigurationError, FatalError, MappingError, RecordRejected
from connector.mapping.identifiers import MAX_IDENTIFIER, identifier_prefix
from connector.mapping.timestamps import MILLIS, out_of_range, parse_time, second_prefix
from connector.mapping.values import MAX_EXACT, format_value, not_whole, payload_text, show, text_entries
from connector.records import Coordinates, KafkaRecord, MeterEvent

# A field accessor is (get, key) with ``get(record, key)`` the field's value or None: (dict.get,
# name) for a top-level field, a C call; (_dig, steps) for a dotted path; (_nothing, None) for an
# unconfigured field. Pairs rather than closures: a closure per field cost ~0.1 µs per record.
Accessor = tuple[Callable[[dict[str, Any], Any], Any], Any]
# What the rules take: (customer, value, timestamp, identifier, context, then one per payload field).
_Fields = tuple[Any, ...]
_Rules = Callable[[_Fields, str, int, int, "int | None", int], MeterEvent]
# What a pre-aggregated topic needs of a record: customer, value (canonical text), event time (ms), the
# payload without the customer and value.
Parts = tuple[str, str, int, dict[str, str]]
R = TypeVar("R")
_ValueMapper = Callable[[bytes | None, str, int, int, "int | None", int], R]
# tuple.__new__ is what MeterEvent(...) calls after a Python-level __new__ of its own.
_new_event: Callable[[tuple[str, str, str, dict[str, str], str | None]], MeterEvent] = functools.partial(
    tuple.__new__, MeterEvent
)

# The TopicSettings attribute that configures each role, as mapper problems name it.
_SETTING: dict[Role, str] = {
    "customer": "customer_field",
    "value": "value_field",
    "timestamp": "timestamp_field",
    "identifier": "identifier_field",
    "payload": "payload_fields",
}
_DEFAULTS = {f.name: f.default for f in dataclass_fields(TopicSettings)}


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the schema check found: the accessor of each role and how the rules treat its values."""

    customer: Accessor
    value: Accessor
    timestamp: Accessor | None
    identifier: Accessor | None
    context: Accessor | None  # the record field naming the Stripe context (TOPIC_<T>_CONTEXT_FIELD)
    payload: tuple[tuple[str, Callable[[dict[str, Any], Any], Any], Any], ...]  # (payload key, get, key)
    payload_paths: tuple[str, ...]
    micros: bool  # the timestamp long counts microseconds
    adoptable: bool  # the one payload field is a map of strings, taken over as the payload


def _uses(settings: TopicSettings) -> list[FieldUse]:
    """The configured fields; optional ones left at their default may be absent from a custom schema,
    and an empty identifier/timestamp setting turns that field off."""

    def required(role: Role, path: str) -> bool:
        default = _DEFAULTS[_SETTING[role]]
        return role in ("customer", "value") or path not in (
            default if isinstance(default, tuple) else (default,)
        )

    single: list[tuple[Role, str]] = [
        ("customer", settings.customer_field),
        ("value", settings.value_field),
        ("timestamp", settings.timestamp_field),
        ("identifier", settings.identifier_field),
    ]
    uses = [FieldUse(role, path, required(role, path)) for role, path in single if path]
    return uses + [FieldUse("payload", path, required("payload", path)) for path in settings.payload_fields]


def _plan(settings: TopicSettings, schema: avro_schema.Schema) -> _Plan:
    """Check the topic's fields against the schema (``avro.fields``' rules, as the settings do) and
    plan their accessors; raise ``ConfigurationError`` naming every problem."""
    problems: list[str] = []
    if not 0 < len(settings.event_name) <= MAX_IDENTIFIER:
        problems.append(f"event_name must be 1-{MAX_IDENTIFIER} characters, got {settings.event_name!r}")
    if not settings.customer_key or not settings.value_key or settings.customer_key == settings.value_key:
        problems.append("customer_key and value_key must be two different non-empty payload keys")
    reports, found_problems = check_fields(schema, _uses(settings))
    problems += [f"{_SETTING[p.role]} {p.message}" for p in found_problems]
    if problems:
        raise ConfigurationError([f"topic {settings.name}: {p}" for p in problems])
    present = {(r.role, r.path) for r in reports if r.type is not None}

    def accessor(role: Role, path: str) -> Accessor | None:
        return _accessor(path) if (role, path) in present else None

    customer, value = accessor("customer", settings.customer_field), accessor("value", settings.value_field)
    assert customer is not None and value is not None  # required: a missing one is a problem above
    payload_paths = [path for path in settings.payload_fields if ("payload", path) in present]
    timestamp = accessor("timestamp", settings.timestamp_field)
    timestamp_type = lookup(schema, settings.timestamp_field)[0] if timestamp is not None else None
    only = lookup(schema, payload_paths[0])[0] if len(payload_paths) == 1 else None
    return _Plan(
        customer=customer,
        value=value,
        timestamp=timestamp,
        # A pre-aggregated topic sums records whatever their own identifiers: they are not read.
        identifier=None if settings.aggregate_s else accessor("identifier", settings.identifier_field),
        context=_accessor(settings.context_field) if settings.context_field else None,
        payload=tuple((path.rsplit(".", 1)[-1], *_accessor(path)) for path in payload_paths),
        payload_paths=tuple(payload_paths),
        # A timestamp-micros long is divided down to milliseconds; a timestamp-millis one is taken as is.
        micros=timestamp_type is not None and is_micros(timestamp_type, schema.named),
        adoptable=only is not None and is_text_map(only, schema.named),
    )


class Mapper:
    """Maps the records of one topic to meter events; a rejection is a ``RecordRejected`` subclass
    carrying the record's coordinates and a reason that names the field."""

    def __init__(self, settings: TopicSettings, schema_lookup: SchemaLookup | None = None) -> None:
        self.settings = settings
        self.decoder = Decoder(settings, schema_lookup)
        self._decode = self.decoder.decode
        self._seconds: dict[int, str] = {}  # unix second -> "YYYY-MM-DDTHH:MM:SS"
        self._id_prefixes: dict[str, str] = {}  # topic -> "kafka:{topic}:{namespace}:"
        self._namespace: str | None = None  # the topic's id, or its configured namespace
        plan = _plan(settings, avro_schema.load(settings.schema_path))  # the model the decoder read
        self._plan = plan
        self._customer, self._value = plan.customer, plan.value
        self._timestamp = plan.timestamp or _NO_FIELD
        self._identifier = plan.identifier or _NO_FIELD
        self._context = plan.context or _NO_FIELD
        self._context_of = context_reader(settings)
        self._payload_fields = plan.payload

        # The fast path: when every field used is a top-level field of a compiled record schema, the
        # decoder hands over just those fields as a tuple (no record dict to build and take apart).
        # "" names no Avro field, so an unused role reads as None, as its accessor would.
        paths = [
            settings.customer_field,
            settings.value_field,
            settings.timestamp_field if plan.timestamp is not None else "",
            settings.identifier_field if plan.identifier is not None else "",
            settings.context_field or "",
            *plan.payload_paths,
        ]
        project = None if any("." in p for p in paths) else self.decoder.schema.projection(paths)
        self._read_fields = None if project is None else self.decoder.fields_reader(project)
        # A single payload field that is a map of strings arrives from the compiled decoder as a new
        # dict of text: it becomes the payload itself instead of being checked and copied into one.
        self._apply: _Rules = _rules(self, adopt=False)
        self._apply_projected: _Rules = _rules(self, adopt=plan.adoptable)
        # Pre-aggregated topics: the same rules, stopped before the identifier and the event are made.
        self._parts = _rules(self, adopt=False, parts=True)
        self._parts_projected = _rules(self, adopt=plan.adoptable, parts=True)
        # map_value(value, topic, partition, offset, kafka_timestamp_ms, now_ms): decode and map the value
        # of the record at topic[partition]@offset, the pipeline's hot path (the pieces of a record,
        # without making one). map_parts: the same checks for a pre-aggregated topic, giving ``Parts``.
        self.map_value: _ValueMapper[MeterEvent] = _value_mapper(self, self._apply, self._apply_projected)
        self.map_parts: _ValueMapper[Parts] = _value_mapper(self, self._parts, self._parts_projected)

    @property
    def projects_fields(self) -> bool:
        """True when this topic's records decode straight into the fields the rules read (every
        field used is a top-level field of a compiled record schema)."""
        return self._read_fields is not None

    def use_namespace(self, namespace: str) -> None:
        """Derive identifiers with ``namespace`` (the topic's id, or its configured namespace) from now
        on: called before any record is mapped, and again if the topic is re-created."""
        if self._namespace != namespace:
            self._namespace = namespace
            self._id_prefixes.clear()

    @property
    def namespace(self) -> str | None:
        """The namespace derived identifiers are made with now (None before ``use_namespace``)."""
        return self._namespace

    def _identifier_prefix(self, topic: str) -> str:
        if self._namespace is None:  # a caller that skipped use_namespace: refuse rather than guess
            raise FatalError(f"no identifier namespace known for topic {topic!r}")
        return identifier_prefix(topic, self._namespace)

    def map_record(self, record: KafkaRecord, now_ms: int) -> MeterEvent:
        """Decode and map one consumed record; ``now_ms`` bounds its timestamp."""
        return self.map_value(
            record.value, record.topic, record.partition, record.offset, record.timestamp_ms, now_ms
        )

    def map(
        self, record: Mapping[str, Any], coordinates: Coordinates, kafka_timestamp_ms: int | None, now_ms: int
    ) -> MeterEvent:
        """Map one decoded record found at ``coordinates``; ``kafka_timestamp_ms`` stands in for an
        absent timestamp field, ``now_ms`` bounds the timestamp."""
        topic, partition, offset = coordinates
        try:
            return self._apply(self._extract(record), topic, partition, offset, kafka_timestamp_ms, now_ms)
        except RecordRejected as exc:
            raise exc.at(coordinates) from None

    def _extract(self, record: Any) -> _Fields:
        """The values the rules need, out of a decoded record: (customer, value, timestamp,
        identifier, context, one value per payload field), each None where absent."""
        if type(record) is not dict:
            if not isinstance(record, Mapping):
                raise MappingError(f"record: a {type(record).__name__}, not a record", code="not_a_record")
            record = dict(record)
        customer_get, customer_key = self._customer
        value_get, value_key = self._value
        timestamp_get, timestamp_key = self._timestamp
        identifier_get, identifier_key = self._identifier
        context_get, context_key = self._context
        return (
            customer_get(record, customer_key),
            value_get(record, value_key),
            timestamp_get(record, timestamp_key),
            identifier_get(record, identifier_key),
            context_get(record, context_key),
            *(get(record, path) for _name, get, path in self._payload_fields),
        )

    def _too_far(self, millis: int, now_ms: int, from_kafka: bool) -> MappingError:
        """The rejection of a timestamp outside the topic's window (rare: not worth inlining)."""
        return out_of_range(
            millis,
            now_ms,
            source="the Kafka timestamp" if from_kafka else self.settings.timestamp_field,
            max_past_seconds=self.settings.max_past_seconds,
            max_future_seconds=self.settings.max_future_seconds,
        )


# The mapping rules over the extracted values, as one closure over a topic's settings: the hot path
# reads locals, not attributes, and calls out only for rare cases (errors, a new second or topic,
# text values, payloads that are copied). ``adopt``: the one payload field is a new dict of text
# (from the compiled decoder), taken over as the payload. ``parts``: return the ``Parts`` of a
# pre-aggregated record instead of an event (no identifier, no timestamp text).
def _rules(mapper: Mapper, adopt: bool, parts: bool = False) -> Callable[..., Any]:
    """The closure that maps one record's extracted fields (see the comment above)."""
    settings, plan, seconds, context_of = mapper.settings, mapper._plan, mapper._seconds, mapper._context_of
    id_prefixes, too_far, prefix_for = mapper._id_prefixes, mapper._too_far, mapper._identifier_prefix
    customer_field, value_field, timestamp_field, identifier_field = _field_names(settings)
    event_name, customer_key, value_key, static_context = _event_settings(settings)
    decimal_values, micros, copy_payload = settings.decimal_values, plan.micros, _payload_copier(plan)
    max_past_ms, max_future_ms = settings.max_past_seconds * 1000, settings.max_future_seconds * 1000

    def apply(
        fields: _Fields, topic: str, partition: int, offset: int, kafka_ms: int | None, now_ms: int
    ) -> Any:  # a MeterEvent, or the Parts of a pre-aggregated record
        customer, value = fields[0], fields[1]  # two names: no tuple is built
        timestamp, identifier = fields[2], fields[3]
        if type(customer) is not str or not customer or customer.isspace():
            raise _no_customer(customer_field, customer)
        if type(value) is int and -MAX_EXACT < value < MAX_EXACT:
            value_text = str(value)  # the commonest case, without a call
        elif value is None:
            raise MappingError(f"{value_field}: no value", code="missing_value")
        else:
            value_text = format_value(value, value_field)
            if not decimal_values and "." in value_text:  # canonical: a point means a fraction
                raise not_whole(value_field, value, settings.name)
        # An absent field takes the Kafka timestamp: stored with the record, a replay maps to the same time.
        if timestamp is None:
            if type(kafka_ms) is not int or kafka_ms < 0:
                raise _no_timestamp(timestamp_field)
            millis = kafka_ms
        elif type(timestamp) is int:
            millis = timestamp // 1000 if micros else timestamp
        else:
            millis = parse_time(timestamp, timestamp_field)
        if not now_ms - max_past_ms <= millis <= now_ms + max_future_ms:
            raise too_far(millis, now_ms, timestamp is None)
        payload: dict[str, str] = (fields[5] or {}) if adopt else copy_payload(fields)
        if parts:  # a pre-aggregated record: no identifier, no timestamp text
            if payload:  # as in an event: a copied entry never stands for the customer or the value
                payload.pop(customer_key, None)
                payload.pop(value_key, None)
            return customer, value_text, millis, payload
        second, ms = divmod(millis, 1000)
        prefix = seconds.get(second) or second_prefix(seconds, second, timestamp_field)
        if identifier is None:
            id_prefix = id_prefixes.get(topic)
            if id_prefix is None:
                id_prefix = id_prefixes[topic] = prefix_for(topic)
            identifier = f"{id_prefix}{partition}:{offset}"
            if len(identifier) > MAX_IDENTIFIER:  # only with coordinates Kafka never produces
                raise MappingError(f"coordinates: {identifier!r} is too long", code="identifier_too_long")
        elif type(identifier) is not str or not identifier or len(identifier) > MAX_IDENTIFIER:
            raise _bad_identifier(identifier_field, identifier)
        # Assigned last so a copied attribute can never replace the customer or the value.
        payload[customer_key] = customer
        payload[value_key] = value_text
        context = static_context if fields[4] is None else context_of(fields[4])
        return _new_event((identifier, event_name, prefix + MILLIS[ms], payload, context))

    return apply


def _event_settings(settings: TopicSettings) -> tuple[str, str, str, str | None]:
    """The event name, the payload's customer and value keys, and the topic's Stripe context."""
    return settings.event_name, settings.customer_key, settings.value_key, settings.stripe_context


def _field_names(settings: TopicSettings) -> tuple[str, str, str, str]:
    """The customer, value, timestamp and identifier field names as rejections quote them."""
    timestamp = settings.timestamp_field or "timestamp"
    return settings.customer_field, settings.value_field, timestamp, settings.identifier_field


def _payload_copier(plan: _Plan) -> Callable[[_Fields], dict[str, str]]:
    """The payload of a record whose payload fields are not adopted: each copied field's entries (a map
    or record) or value (a scalar, under its own name), nulls left out."""
    names = [name for name, _get, _key in plan.payload]

    def copy_payload(fields: _Fields) -> dict[str, str]:
        payload: dict[str, str] = {}
        for name, copied in zip(names, fields[5:], strict=True):
            if copied is None:
                continue
            if type(copied) is not dict:
                payload[name] = payload_text(copied, name)
                continue
            # A map or a record: its entries become payload keys. str.join checks in C that every key
            # and value is text, as in an Avro map of strings; anything else is converted.
            try:
                "".join(copied)
                "".join(copied.values())
            except TypeError:
                copied = text_entries(copied, name)
            payload.update(copied)
        return payload

    return copy_payload


def _value_mapper(mapper: Mapper, apply: Callable[..., R], projected: Callable[..., R]) -> _ValueMapper[R]:
    """Decode a record's value and apply ``apply`` to its fields (``projected`` to the fields the compiled
    decoder hands over when every field used is a top-level one); rejections carry the coordinates."""
    read_fields, decode, extract = mapper._read_fields, mapper._decode, mapper._extract

    def map_value(
        value: bytes | None, topic: str, partition: int, offset: int, kafka_ms: int | None, now_ms: int
    ) -> R:
        try:
            if read_fields is not None:
                fields = read_fields(value)
                if fields is not None:
                    return projected(fields, topic, partition, offset, kafka_ms, now_ms)
            return apply(extract(decode(value)), topic, partition, offset, kafka_ms, now_ms)
        except RecordRejected as exc:
            raise exc.at(Coordinates(topic, partition, offset)) from None

    return map_value


def context_reader(settings: TopicSettings) -> Callable[[Any], str]:
    """Checks a context read from a record field; valid ones are remembered (few tenants, many records)."""
    seen: dict[str, str] = {}
    field = settings.context_field or "context"

    def context_of(value: Any) -> str:
        known = seen.get(value) if type(value) is str else None
        if known is not None:
            return known
        problem = context_problem(value) if type(value) is str else f"{show(value)} is not a string"
        if problem is not None:
            raise MappingError(f"{field}: {problem}", code="invalid_context")
        if len(seen) < _MAX_REMEMBERED_CONTEXTS:
            seen[value] = value
        return str(value)

    return context_of


_MAX_REMEMBERED_CONTEXTS = 100_000


def _no_customer(field: str, customer: Any) -> MappingError:
    return MappingError(f"{field}: no customer id ({show(customer)})", code="missing_customer")


def _no_timestamp(field: str) -> MappingError:
    return MappingError(f"{field}: absent, and the Kafka record has none", code="missing_timestamp")


def _bad_identifier(field: str, identifier: Any) -> MappingError:
    if type(identifier) is str and identifier:
        return MappingError(
            f"{field}: {len(identifier)} characters, at most {MAX_IDENTIFIER}", code="identifier_too_long"
        )
    return MappingError(f"{field}: {show(identifier)} is not a non-empty string", code="invalid_identifier")


def _accessor(path: str) -> Accessor:
    steps = tuple(path.split("."))
    return (dict.get, path) if len(steps) == 1 else (_dig, steps)


def _dig(record: dict[str, Any], steps: tuple[str, ...]) -> Any:
    """The value at a dotted path; anything missing or not a record on the way gives None."""
    value: Any = record
    for step in steps:
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


def _nothing(record: dict[str, Any], key: Any) -> None:
    return None


_NO_FIELD: Accessor = (_nothing, None)
