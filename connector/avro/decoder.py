"""Record bytes → Python values: raw Avro with the topic's schema, or Confluent wire format via a registry."""

from __future__ import annotations

import contextlib
import functools
import json
import struct
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import fastavro
from fastavro.read import SchemaResolutionError
from fastavro.schema import SchemaParseException

from connector.avro import schema as avro_schema
from connector.avro.codegen import CompiledReader, UnsupportedSchema, compile_reader
from connector.config.settings import TopicSettings
from connector.errors import ConfigurationError, DecodeError, RetryableError

# Returns the writer schema's JSON text for a schema id; for Confluent's client:
# ``registry_lookup(SchemaRegistryClient(conf).get_schema)``.
SchemaLookup = Callable[[int], str]
# (buffer, offset of the Avro body) -> the decoded datum.
Reader = Callable[[bytes, int], Any]

WIRE_FORMATS = ("avro", "confluent")
CONFLUENT_HEADER = 5  # magic byte 0, then the schema id as a 4-byte big-endian integer

# What parsing a schema raises: JSONDecodeError and fastavro's UnknownType are ValueErrors, its
# SchemaParseException is not; malformed JSON shapes give TypeError/KeyError/AttributeError.
SCHEMA_ERRORS = (ValueError, TypeError, KeyError, AttributeError, RecursionError, SchemaParseException)
# What the compiled readers raise on bytes that are not a datum (see avro_codegen.CompiledReader).
_BAD_BYTES = (IndexError, ValueError, struct.error)
# Attributes that do not change how bytes decode when writer and reader are the same schema.
_NOT_DECODING = frozenset({"doc", "aliases", "default", "order", "__fastavro_parsed", "__named_schemas"})


class AvroSchema:
    """One parsed Avro schema and the fastest reader for data written with it."""

    def __init__(self, schema: Any, *, generate_reader: bool = True) -> None:
        """``schema`` is the JSON object; raises one of ``SCHEMA_ERRORS`` when it is not Avro.
        ``generate_reader=False`` skips compiling (writer schemas only ever need fastavro)."""
        # The decoding form: only ``decimal`` survives of the logical types (the declared form, which
        # the field rules of ``avro.fields`` read, is ``avro.schema.Schema``'s). A timestamp stays the
        # integer on the wire (cheap, exact, the mapper formats it) instead of the datetime fastavro
        # would build, and date/time/uuid stay plain as well.
        named: dict[str, Any] = {}
        self.parsed = fastavro.parse_schema(_strip_logical_types(schema), named_schemas=named)
        self.named = named
        self.name = str(self.parsed.get("name", "")) if isinstance(self.parsed, dict) else str(self.parsed)
        self.fingerprint = json.dumps(_decoding_form(self.parsed), sort_keys=True)
        self.compiled: CompiledReader | None
        self.source: str | None  # the generated decoder's text, for debugging
        self.compiled, self.source = None, None
        if generate_reader:
            with contextlib.suppress(UnsupportedSchema):  # recursive or odd: fastavro reads it
                self.compiled, self.source = compile_reader(self.parsed, named)
        self.read: Reader = self.compiled or _fastavro_reader(self.parsed, None)

    def projection(self, fields: Sequence[str]) -> CompiledReader | None:
        """A compiled reader that returns the tuple of these top-level fields (``compile_reader``'s
        ``project``), or None when this schema is not a record or is read by fastavro."""
        if self.compiled is None:
            return None
        try:
            reader, _source = compile_reader(self.parsed, self.named, project=fields)
        except UnsupportedSchema:
            return None
        return reader

    @classmethod
    def from_text(cls, text: str, *, generate_reader: bool = True) -> AvroSchema:
        return cls(json.loads(text), generate_reader=generate_reader)

    def reader_for(self, writer: AvroSchema) -> Reader:
        """A reader of data written with ``writer``, yielding values shaped by this schema."""
        if writer.fingerprint == self.fingerprint:
            return self.read
        return _fastavro_reader(writer.parsed, self.parsed)


def load_schema(path: Path) -> AvroSchema:
    """The schema in ``path``, parsed and compiled once per file (``avro.schema.load``'s model)."""
    model = avro_schema.load(path)
    if model.error is not None:
        raise ConfigurationError([f"Avro schema {model.error}"])
    return _compiled(model)


@functools.lru_cache(maxsize=256)
def _compiled(model: avro_schema.Schema) -> AvroSchema:
    try:
        return AvroSchema(model.document)
    except SCHEMA_ERRORS as exc:
        raise ConfigurationError([f"Avro schema {model.path}: {exc}"]) from exc


class Decoder:
    """Decodes the record values of one topic; raises ``DecodeError`` and nothing else on bad bytes."""

    def __init__(self, settings: TopicSettings, schema_lookup: SchemaLookup | None = None) -> None:
        if settings.wire_format not in WIRE_FORMATS:
            raise ConfigurationError(
                [f"topic {settings.name}: wire format {settings.wire_format!r} is not one of {WIRE_FORMATS}"]
            )
        if settings.wire_format == "confluent" and schema_lookup is None:
            raise ConfigurationError(
                [f"topic {settings.name}: the confluent wire format needs a schema registry"]
            )
        self.topic = settings.name
        self.schema = load_schema(settings.schema_path)
        self.confluent = settings.wire_format == "confluent"
        self._lookup = schema_lookup
        self._readers: dict[int, Reader] = {}  # schema id -> reader into the topic's schema

    def decode(self, data: bytes | None) -> Any:
        """The record value as this topic's schema shapes it (a dict for a record schema)."""
        if data is None:
            raise _tombstone()
        if self.confluent:
            read, start = self._confluent_reader(data), CONFLUENT_HEADER
        else:
            read, start = self.schema.read, 0
        try:
            return read(data, start)
        except _BAD_BYTES as exc:
            raise self._undecodable(exc) from exc

    def fields_reader(self, project: CompiledReader) -> Callable[[bytes | None], tuple[Any, ...] | None]:
        """A function reading a value's top-level fields with ``project`` (a ``projection`` of this
        topic's schema), raising what ``decode`` raises; it returns None for a Confluent value written
        with another schema, which only ``decode`` reads."""

        def read_fields(data: bytes | None) -> tuple[Any, ...] | None:
            if data is None:
                raise _tombstone()
            if self.confluent:
                if self._confluent_reader(data) is not self.schema.read:
                    return None
                start = CONFLUENT_HEADER
            else:
                start = 0
            try:
                fields: tuple[Any, ...] = project(data, start)
            except _BAD_BYTES as exc:
                raise self._undecodable(exc) from exc
            return fields

        return read_fields

    def _undecodable(self, exc: Exception) -> DecodeError:
        return DecodeError(f"record value: not a {self.schema.name} in Avro ({exc})", code="undecodable")

    def _confluent_reader(self, data: bytes) -> Reader:
        if len(data) < CONFLUENT_HEADER:
            raise DecodeError(
                f"record value: {len(data)} bytes, shorter than the 5-byte Confluent header",
                code="truncated_header",
            )
        if data[0] != 0:
            raise DecodeError(f"record value: magic byte {data[0]}, expected 0", code="bad_magic_byte")
        schema_id = int.from_bytes(data[1:CONFLUENT_HEADER], "big")
        reader = self._readers.get(schema_id)
        if reader is None:
            reader = self._readers[schema_id] = self._fetch(schema_id)
        return reader

    def _fetch(self, schema_id: int) -> Reader:
        assert self._lookup is not None
        try:
            text = self._lookup(schema_id)
        except RetryableError:
            raise  # the registry is unreachable: not this record's fault, try again later
        except Exception as exc:  # the lookup is the caller's code; whatever it raises means "no such id"
            raise DecodeError(
                f"record value: schema id {schema_id} unknown to the registry ({type(exc).__name__})",
                code="unknown_schema_id",
            ) from exc
        try:
            # A writer equal to the topic's schema reuses its compiled reader; any other is read by
            # fastavro, so registry text never becomes generated code.
            writer = AvroSchema.from_text(text, generate_reader=False)
        except Exception as exc:  # registry text is outside input: whatever fails, the id is unusable
            # Cached like a good schema: the text behind an id never changes. Unknown ids are not
            # cached, so garbage ids cannot fill memory.
            return _refusing(f"record value: schema id {schema_id} is not a usable Avro schema ({exc})")
        return self.schema.reader_for(writer)


def _tombstone() -> DecodeError:
    return DecodeError("record value: null (a tombstone), not a usage record", code="tombstone")


def registry_lookup(get_schema: Callable[[int], Any]) -> SchemaLookup:
    """Adapt ``SchemaRegistryClient.get_schema`` to a ``SchemaLookup``: a 4xx answer (unknown id)
    propagates and rejects the record; anything else (network, 5xx, 408, 429) is retryable."""

    def lookup(schema_id: int) -> str:
        try:
            return str(get_schema(schema_id).schema_str)
        except Exception as exc:
            status = getattr(exc, "http_status_code", None)
            if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
                raise
            # The type and status only: a client's message may quote its URL and credentials.
            raise RetryableError(
                f"schema registry lookup of id {schema_id} failed: {type(exc).__name__} (status {status})"
            ) from exc

    return lookup


def _refusing(reason: str) -> Reader:
    """A reader for a schema id whose writer schema cannot be used: every record is rejected."""

    def read(data: bytes, start: int) -> Any:
        raise DecodeError(reason, code="incompatible_schema")

    return read


def _fastavro_reader(writer: Any, reader: Any) -> Reader:
    """The general path: fastavro, with schema resolution when ``reader`` is given."""

    def read(data: bytes, start: int) -> Any:
        stream = BytesIO(data)
        stream.seek(start)
        try:
            datum = fastavro.schemaless_reader(stream, writer, reader)
        except SchemaResolutionError as exc:
            raise DecodeError(
                f"record value: the writer schema does not resolve ({exc})", code="incompatible_schema"
            ) from exc
        # fastavro documents no error set (EOFError, IndexError, UnicodeDecodeError, ... all occur)
        except Exception as exc:
            raise DecodeError(f"record value: not Avro of its schema ({exc!r})", code="undecodable") from exc
        if stream.tell() != len(data):
            raise DecodeError(
                f"record value: {len(data) - stream.tell()} trailing bytes after the datum",
                code="undecodable",
            )
        return datum

    return read


def _valid_decimal(schema: dict[str, Any]) -> bool:
    precision, scale = schema.get("precision"), schema.get("scale", 0)
    return (
        schema.get("type") in ("bytes", "fixed")
        and type(precision) is int
        and type(scale) is int
        and precision > 0
        and 0 <= scale <= precision
    )


def _strip_logical_types(schema: Any) -> Any:
    """A copy of ``schema`` whose only logical types are valid decimals (Avro says to ignore
    invalid logical types, so an invalid decimal is plain bytes as well)."""
    if isinstance(schema, list):
        return [_strip_logical_types(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "logicalType" and not (value == "decimal" and _valid_decimal(schema)):
            continue
        if key in ("type", "items", "values"):
            value = _strip_logical_types(value)
        elif key == "fields" and isinstance(value, list):
            value = [_strip_logical_types(f) for f in value]
        out[key] = value  # "default" values are data, not schemas: copied untouched
    return out


def _decoding_form(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_decoding_form(s) for s in schema]
    if isinstance(schema, dict):
        return {k: _decoding_form(v) for k, v in schema.items() if k not in _NOT_DECODING}
    return schema
