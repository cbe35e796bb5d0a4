"""Decoded usage records → Stripe meter events: identifier, event name, timestamp, payload, all checked."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, InvalidOperation
from typing import Any

from connector.avro.decoder import Decoder, SchemaLookup
from connector.config.settings import TopicSettings, topic_env_key
from connector.errors import ConfigurationError, MappingError, RecordRejected
from connector.records import Coordinates, KafkaRecord, MeterEvent

MAX_IDENTIFIER = 100  # Stripe's limit on identifier and event_name
MAX_SIGNIFICANT_DIGITS = 15  # Stripe's limit on a meter event value
# Not a Stripe rule: without it a value like 1e-999999 would render as a million zeros.
MAX_DECIMAL_PLACES = 30
# Topics up to this length keep their name in derived identifiers: "kafka:" + topic + ":" + a
# partition (int32, 10 digits) + ":" + an offset (int64, 19 digits) is then at most 100 chars.
MAX_TOPIC_IN_IDENTIFIER = MAX_IDENTIFIER - len("kafka:") - 1 - 10 - 1 - 19

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_SECOND = -62135596800  # 0001-01-01T00:00:00Z: RFC 3339 has four-digit years
_MAX_SECOND = 253402300799  # 9999-12-31T23:59:59Z
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))
_SECOND_CACHE_SIZE = 4096
_MAX_EXACT = 10**MAX_SIGNIFICANT_DIGITS
_WHITESPACE = " \t\r\n"
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)
_MICROS_TYPES = frozenset({"timestamp-micros", "local-timestamp-micros"})
_NUMERIC_TYPES = frozenset({"int", "long", "float", "double", "string"})
_DEFAULTS = {f.name: f.default for f in fields(TopicSettings)}

# A field accessor is (get, key) with ``get(record, key)`` the field's value or None: (dict.get,
# name) for a top-level field, a C call; (_dig, steps) for a dotted path; (_nothing, None) for an
# unconfigured field. Pairs rather than closures: a closure per field cost ~0.1 µs per record.
Accessor = tuple[Callable[[dict[str, Any], Any], Any], Any]
# What the rules take: (customer, value, timestamp, identifier, then one value per payload field).
_Fields = tuple[Any, ...]
_Rules = Callable[[_Fields, str, int, int, "int | None", int], MeterEvent]
# tuple.__new__ is what MeterEvent(...) calls after a Python-level __new__ of its own.
_new_event: Callable[[tuple[str, str, str, dict[str, str]]], MeterEvent] = functools.partial(
    tuple.__new__, MeterEvent
)


class Mapper:
    """Maps the records of one topic to meter events; a rejection is a ``RecordRejected`` subclass
    carrying the record's coordinates and a reason that names the field."""

    def __init__(self, settings: TopicSettings, schema_lookup: SchemaLookup | None = None) -> None:
        self.settings = settings
        self.decoder = Decoder(settings, schema_lookup)
        self._decode = self.decoder.decode
        self._event_name = settings.event_name
        self._customer_key = settings.customer_key
        self._value_key = settings.value_key
        self._max_past_ms = settings.max_past_seconds * 1000
        self._max_future_ms = settings.max_future_seconds * 1000
        self._seconds: dict[int, str] = {}  # unix second -> "YYYY-MM-DDTHH:MM:SS"
        self._id_prefixes: dict[str, str] = {}  # topic -> "kafka:{topic}:"

        problems: list[str] = []
        if not 0 < len(settings.event_name) <= MAX_IDENTIFIER:
            problems.append(f"event_name must be 1-{MAX_IDENTIFIER} characters, got {settings.event_name!r}")
        if not settings.customer_key or not settings.value_key or settings.customer_key == settings.value_key:
            problems.append("customer_key and value_key must be two different non-empty payload keys")
        schema = self.decoder.schema

        def field(setting: str, path: str, allowed: Callable[[Any], bool], what: str) -> Accessor | None:
            """The accessor for a configured field path after checking it against the schema.
            Optional fields left at their default may be absent from a custom schema."""
            if not path:
                return None  # an empty identifier/timestamp field setting turns the field off
            types = schema.types_at(path)
            if types is None:
                default = _DEFAULTS[setting]
                defaults = default if isinstance(default, tuple) else (default,)
                if setting in ("customer_field", "value_field") or path not in defaults:
                    problems.append(f"{setting} {path!r} is not a field of {schema.name}")
                return None
            if not any(allowed(t) for t in types):
                problems.append(f"{setting} {path!r} must be {what}, the schema says {types}")
            return _accessor(path)

        customer = field("customer_field", settings.customer_field, _is_string, "a string")
        value = field("value_field", settings.value_field, _is_number, "a number or a string")
        identifier = field("identifier_field", settings.identifier_field, _is_string, "a string")
        timestamp = field("timestamp_field", settings.timestamp_field, _is_time, "a long or a string")
        self._identifier = identifier or _NO_FIELD
        self._timestamp = timestamp or _NO_FIELD
        # A timestamp-micros long is divided down to milliseconds; any other integer is taken as ms.
        timestamp_types = schema.types_at(settings.timestamp_field) if timestamp is not None else None
        self._micros = any(_logical(t) in _MICROS_TYPES for t in timestamp_types or ())
        # (payload key for a scalar field, accessor): a scalar is copied under its own field name.
        self._payload_fields: list[tuple[str, Callable[[dict[str, Any], Any], Any], Any]] = []
        payload_paths: list[str] = []
        for path in settings.payload_fields:
            accessor = field("payload_fields", path, lambda t: True, "")
            if accessor is not None:
                self._payload_fields.append((path.rsplit(".", 1)[-1], *accessor))
                payload_paths.append(path)
        if problems or customer is None or value is None:
            raise ConfigurationError([f"topic {settings.name}: {p}" for p in problems])
        self._customer: Accessor = customer
        self._value: Accessor = value

        # The fast path: when every field used is a top-level field of a compiled record schema, the
        # decoder hands over just those fields as a tuple (no record dict to build and take apart).
        # "" names no Avro field, so an unused role reads as None, as its accessor would.
        paths = [
            settings.customer_field,
            settings.value_field,
            settings.timestamp_field if timestamp is not None else "",
            settings.identifier_field if identifier is not None else "",
            *payload_paths,
        ]
        project = None if any("." in p for p in paths) else schema.projection(paths)
        self._read_fields = None if project is None else self.decoder.fields_reader(project)
        # A single payload field that is a map of strings arrives from the compiled decoder as a new
        # dict of text: it becomes the payload itself instead of being checked and copied into one.
        copied_types = schema.types_at(payload_paths[0]) if len(payload_paths) == 1 else None
        adoptable = bool(copied_types) and all(
            _base(t) == "null" or _is_text_map(t) for t in copied_types or ()
        )
        self._apply = self._rules(adopt=False)
        self._apply_projected = self._rules(adopt=adoptable)

    @property
    def projects_fields(self) -> bool:
        """True when this topic's records decode straight into the fields the rules read (every
        field used is a top-level field of a compiled record schema)."""
        return self._read_fields is not None

    def map_record(self, record: KafkaRecord, now_ms: int) -> MeterEvent:
        """Decode and map one consumed record; ``now_ms`` bounds its timestamp."""
        return self.map_value(
            record.value, record.topic, record.partition, record.offset, record.timestamp_ms, now_ms
        )

    def map_value(
        self,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        kafka_timestamp_ms: int | None,
        now_ms: int,
    ) -> MeterEvent:
        """Decode and map the value of the record at ``topic[partition]@offset`` (the pipeline's hot
        path: the pieces of a record, without making one)."""
        try:
            if self._read_fields is not None:
                fields = self._read_fields(value)
                if fields is not None:
                    return self._apply_projected(fields, topic, partition, offset, kafka_timestamp_ms, now_ms)
            return self._apply(
                self._extract(self._decode(value)), topic, partition, offset, kafka_timestamp_ms, now_ms
            )
        except RecordRejected as exc:
            raise exc.at(Coordinates(topic, partition, offset)) from None

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
        identifier, one value per payload field), each None where absent."""
        if type(record) is not dict:
            if not isinstance(record, Mapping):
                raise MappingError(f"record: a {type(record).__name__}, not a record", code="not_a_record")
            record = dict(record)
        customer_get, customer_key = self._customer
        value_get, value_key = self._value
        timestamp_get, timestamp_key = self._timestamp
        identifier_get, identifier_key = self._identifier
        return (
            customer_get(record, customer_key),
            value_get(record, value_key),
            timestamp_get(record, timestamp_key),
            identifier_get(record, identifier_key),
            *(get(record, path) for _name, get, path in self._payload_fields),
        )

    def _rules(self, adopt: bool) -> _Rules:
        """The mapping rules over the extracted values, as a closure over this mapper's settings (the
        hot path reads locals, not attributes). ``adopt``: the one payload field is a new dict of text
        (from the compiled decoder), taken over as the payload."""
        settings = self.settings
        customer_field, value_field = settings.customer_field, settings.value_field
        identifier_field = settings.identifier_field
        event_name = self._event_name
        customer_key, value_key = self._customer_key, self._value_key
        max_past_ms, max_future_ms = self._max_past_ms, self._max_future_ms
        micros = self._micros
        decimal_values = settings.decimal_values
        seconds, second_prefix, parse_time = self._seconds, self._second_prefix, self._parse_time
        out_of_range = self._out_of_range
        id_prefixes = self._id_prefixes
        payload_names = [name for name, _get, _path in self._payload_fields]

        def apply(
            fields: _Fields,
            topic: str,
            partition: int,
            offset: int,
            kafka_timestamp_ms: int | None,
            now_ms: int,
        ) -> MeterEvent:
            customer = fields[0]
            value = fields[1]
            timestamp = fields[2]
            identifier = fields[3]
            if type(customer) is not str or not customer or customer.isspace():
                raise MappingError(
                    f"{customer_field}: no customer id ({_show(customer)})", code="missing_customer"
                )
            if type(value) is int and -_MAX_EXACT < value < _MAX_EXACT:
                value_text = str(value)  # the commonest case, without a call
            elif value is None:
                raise MappingError(f"{value_field}: no value", code="missing_value")
            else:
                value_text = format_value(value, value_field)
                if not decimal_values and "." in value_text:  # canonical: a point means a fraction
                    raise _not_whole(value_field, value, settings.name)

            # The Kafka timestamp stands in for an absent field: it is stored with the record, so a
            # replay maps to the same time.
            if timestamp is None:
                if type(kafka_timestamp_ms) is not int or kafka_timestamp_ms < 0:
                    raise MappingError(
                        f"{settings.timestamp_field or 'timestamp'}: absent, and the Kafka record has none",
                        code="missing_timestamp",
                    )
                millis = kafka_timestamp_ms
            elif type(timestamp) is int:
                millis = timestamp // 1000 if micros else timestamp
            else:
                millis = parse_time(timestamp)
            if not now_ms - max_past_ms <= millis <= now_ms + max_future_ms:
                raise out_of_range(millis, now_ms, from_kafka=timestamp is None)
            second, ms = divmod(millis, 1000)
            prefix = seconds.get(second)
            if prefix is None:
                prefix = second_prefix(second)

            if identifier is None:
                id_prefix = id_prefixes.get(topic)
                if id_prefix is None:
                    id_prefix = id_prefixes[topic] = identifier_prefix(topic)
                identifier = f"{id_prefix}{partition}:{offset}"
                if len(identifier) > MAX_IDENTIFIER:  # only with coordinates Kafka never produces
                    raise MappingError(f"coordinates: {identifier!r} is too long", code="identifier_too_long")
            elif type(identifier) is not str or not identifier:
                raise MappingError(
                    f"{identifier_field}: {_show(identifier)} is not a non-empty string",
                    code="invalid_identifier",
                )
            elif len(identifier) > MAX_IDENTIFIER:
                raise MappingError(
                    f"{identifier_field}: {len(identifier)} characters, at most {MAX_IDENTIFIER}",
                    code="identifier_too_long",
                )

            if adopt:
                payload: dict[str, str] = fields[4] if fields[4] is not None else {}
            else:
                payload = {}
                for name, copied in zip(payload_names, fields[4:], strict=True):
                    if copied is None:
                        continue
                    if type(copied) is not dict:
                        payload[name] = payload_text(copied, name)
                        continue
                    # A map or a record: its entries become payload keys. str.join checks in C that
                    # every key and value is text, as in an Avro map of strings; anything else is
                    # converted.
                    try:
                        "".join(copied)
                        "".join(copied.values())
                    except TypeError:
                        copied = _text_entries(copied, name)
                    payload.update(copied)
            # Assigned last so a copied attribute can never replace the customer or the value.
            payload[customer_key] = customer
            payload[value_key] = value_text
            return _new_event((identifier, event_name, prefix + _MILLIS[ms], payload))

        return apply

    def _out_of_range(self, millis: int, now_ms: int, from_kafka: bool) -> MappingError:
        source = "the Kafka timestamp" if from_kafka else self.settings.timestamp_field
        if millis < now_ms:
            limit, code = f"{self.settings.max_past_seconds} s before", "timestamp_too_far_in_past"
        else:
            limit, code = f"{self.settings.max_future_seconds} s after", "timestamp_in_future"
        return MappingError(f"{source}: {_show(millis)} ms is more than {limit} now ({now_ms} ms)", code=code)

    def _second_prefix(self, second: int) -> str:
        """``YYYY-MM-DDTHH:MM:SS`` of a unix second, cached: records of one second share it."""
        if not _MIN_SECOND <= second <= _MAX_SECOND:
            raise MappingError(
                f"{self.settings.timestamp_field}: {second} s is outside the years 1-9999",
                code="invalid_timestamp",
            )
        if len(self._seconds) >= _SECOND_CACHE_SIZE:
            self._seconds.clear()  # records come roughly in time order: old seconds are rarely needed again
        t = _EPOCH + timedelta(seconds=second)
        text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        self._seconds[second] = text
        return text

    def _parse_time(self, value: Any) -> int:
        """Milliseconds of a timestamp given as an RFC 3339 string or an aware datetime."""
        if type(value) is str:
            try:
                parsed = parse_rfc3339(value)
            except ValueError:
                raise MappingError(
                    f"{self.settings.timestamp_field}: {_show(value)} is not RFC 3339 with an offset",
                    code="invalid_timestamp",
                ) from None
        elif isinstance(value, datetime):
            parsed = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        else:
            raise MappingError(
                f"{self.settings.timestamp_field}: {_show(value)} is not a time", code="invalid_timestamp"
            )
        try:
            delta = parsed - _EPOCH
        except (OverflowError, ValueError):  # year 1 or 9999 pushed over the edge by its offset
            raise MappingError(
                f"{self.settings.timestamp_field}: {_show(value)} is outside the years 1-9999",
                code="invalid_timestamp",
            ) from None
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def identifier_prefix(topic: str) -> str:
    """The part of derived identifiers that names the topic: ``kafka:{topic}:`` for topics of up to
    63 characters, ``kafka~{topic[:24]}~{sha256(topic)[:32]}:`` for longer ones (Kafka allows 249).
    The two forms differ from the sixth character on, and ``~`` never occurs in a topic name."""
    if len(topic) <= MAX_TOPIC_IN_IDENTIFIER:
        return f"kafka:{topic}:"
    digest = hashlib.sha256(topic.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"kafka~{topic[:24]}~{digest}:"


def derived_identifier(coordinates: Coordinates) -> str:
    """The identifier of a record that carries none of its own."""
    return f"{identifier_prefix(coordinates.topic)}{coordinates.partition}:{coordinates.offset}"


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 date-time with ``T`` and ``Z`` or a numeric offset; raises ValueError otherwise.
    ``datetime.fromisoformat`` alone also takes ISO 8601 forms Stripe would not (``20260101``)."""
    if (
        len(text) < 20
        or text[4] != "-"
        or text[7] != "-"
        or text[10] != "T"
        or text[13] != ":"
        or text[16] != ":"
        or not (text[-1] == "Z" or (text[-6] in "+-" and text[-3] == ":"))
        or not text.isascii()
    ):
        raise ValueError("not RFC 3339")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("no offset")
    return parsed


def format_value(value: Any, field: str = "value") -> str:
    """A meter event value as a canonical decimal string: no exponent, no trailing zeros after the
    point, no ``-0``, no float artefacts, at most 15 significant digits; raises ``MappingError``."""
    kind = type(value)
    if kind is int:
        if -_MAX_EXACT < value < _MAX_EXACT:
            return str(value)
        raise _too_many_digits(field, value)
    if kind is float:
        return _format_double(value, field)
    if kind is Decimal:
        return _format_decimal(value, field, value)
    if kind is str:
        return _format_string(value, field)
    if isinstance(value, bool):
        raise MappingError(f"{field}: a boolean ({value}) is not a number", code="invalid_value")
    # Subclasses (IntEnum, str enums, ...) are formatted as their base type.
    if isinstance(value, int):
        return format_value(int(value), field)
    if isinstance(value, float):
        return _format_double(float(value), field)
    if isinstance(value, Decimal):
        return _format_decimal(value, field, value)
    if isinstance(value, str):
        return _format_string(str(value), field)
    raise MappingError(f"{field}: a {kind.__name__} is not a number", code="invalid_value")


def _format_double(value: float, field: str) -> str:
    # 15 significant digits is all a double holds reliably: 0.1 + 0.2 prints as 0.3. The "g"
    # format already drops trailing zeros; it switches to an exponent outside 1e-5..1e15.
    text = f"{value:.15g}"
    if "e" in text or "n" in text:  # exponent form, or nan/inf
        if value != value or value in (float("inf"), float("-inf")):
            raise MappingError(f"{field}: {value} is not a finite number", code="invalid_value")
        return _format_decimal(Decimal(text), field, value)
    return "0" if text == "-0" else text


def _format_string(value: str, field: str) -> str:
    # Surrounding ASCII whitespace is tolerated ("12.5\n" from a CSV export); the rest must be a
    # decimal number, exponent allowed. Decimal() alone would also take "1_000", "NaN" and "٣".
    text = value.strip(_WHITESPACE)
    if text.isdigit() and text.isascii():
        text = text.lstrip("0") or "0"
        if len(text) > MAX_SIGNIFICANT_DIGITS:
            raise _too_many_digits(field, value)
        return text
    # Decimal() parses the rest; on ASCII without "_" it takes no more than decimal numbers, in any
    # exponent form, and the non-finite words (NaN, Infinity) that _format_decimal refuses.
    if not text.isascii() or "_" in text:
        raise MappingError(f"{field}: {_show(value)} is not a number", code="invalid_value")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise MappingError(f"{field}: {_show(value)} is not a number", code="invalid_value") from None
    return _format_decimal(number, field, value)


def _format_decimal(value: Decimal, field: str, original: Any) -> str:
    if not value.is_finite():
        raise MappingError(f"{field}: {_show(original)} is not a finite number", code="invalid_value")
    text = str(value)
    if "E" not in text:  # plain notation: -12.500, 0.0012, 17
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        significant = text.lstrip("-0.")  # leading zeros do not count, inner and trailing ones do
        if len(significant) - ("." in significant) > MAX_SIGNIFICANT_DIGITS:
            raise _too_many_digits(field, original)
        return "0" if text == "-0" else text
    # str() chose an exponent: the number ends in zeros (1E+3) or is below 1e-6. Check the size
    # of the plain rendering before making it; integer zeros count as Stripe counts them.
    # normalize() drops trailing zeros; its context is wide enough never to round.
    if not value:
        return "0"
    value = value.normalize(_EXACT)
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    if len(digits) + max(exponent, 0) > MAX_SIGNIFICANT_DIGITS:
        raise _too_many_digits(field, original)
    if -exponent > MAX_DECIMAL_PLACES:
        raise MappingError(
            f"{field}: {_show(original)} needs more than {MAX_DECIMAL_PLACES} decimal places",
            code="value_too_many_digits",
        )
    return format(value, "f")


def _not_whole(field: str, value: Any, topic: str) -> MappingError:
    # Stripe counts whole numbers only unless the account has decimals enabled; sent anyway, the event
    # would be dropped after Stripe's 200 (meter_event_invalid_value).
    return MappingError(
        f"{field}: {_show(value)} is not a whole number; Stripe accepts decimal values only on accounts "
        f"that have them enabled (then set TOPIC_{topic_env_key(topic)}_DECIMAL_VALUES=true)",
        code="value_not_whole",
    )


def _too_many_digits(field: str, value: Any) -> MappingError:
    return MappingError(
        f"{field}: {_show(value)} has more than {MAX_SIGNIFICANT_DIGITS} significant digits",
        code="value_too_many_digits",
    )


def payload_text(value: Any, field: str) -> str:
    """A copied payload value as a string: text as is, booleans as JSON writes them, integers in
    full, other numbers by the value rules; anything else (bytes, lists, nested maps) is rejected."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    try:
        if isinstance(value, int):
            return str(int(value))  # ValueError past Python's 4300-digit conversion limit
        if isinstance(value, float | Decimal):
            return format_value(value, field)
    except (MappingError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, MappingError) else f"{field}: {exc}"
        raise MappingError(reason, code="invalid_payload_field") from None
    raise MappingError(
        f"{field}: a {type(value).__name__} is not a text, number or boolean", code="invalid_payload_field"
    )


def _text_entries(entries: dict[Any, Any], field: str) -> dict[str, str]:
    """The entries of a map or record copied into the payload, values as text, nulls left out."""
    texts = {}
    for key, value in entries.items():
        if type(key) is not str:
            raise MappingError(
                f"{field}: payload key {_show(key)} is not a string", code="invalid_payload_field"
            )
        if value is not None:
            texts[key] = payload_text(value, f"{field}.{key}")
    return texts


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


def _show(value: Any) -> str:
    """A value quoted for an error message, cut short."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4300-digit conversion limit
        return f"<{type(value).__name__} too large to show>"
    return text if len(text) <= 60 else text[:57] + "..."


def _base(schema: Any) -> str:
    return schema if isinstance(schema, str) else str(schema.get("type"))


def _logical(schema: Any) -> str | None:
    return schema.get("logicalType") if isinstance(schema, dict) else None


def _is_text_map(schema: Any) -> bool:
    """A map whose values are plain strings (not a union, which may hold other types)."""
    if not isinstance(schema, dict) or schema.get("type") != "map":
        return False
    values = schema.get("values")
    return values == "string" or (isinstance(values, dict) and values.get("type") == "string")


def _is_string(schema: Any) -> bool:
    return _base(schema) == "string"


def _is_number(schema: Any) -> bool:
    return _base(schema) in _NUMERIC_TYPES or _logical(schema) == "decimal"


def _is_time(schema: Any) -> bool:
    return _base(schema) in ("int", "long", "string")
