"""Corrections topics' records → ``Correction``: which usage to correct, and with what."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from connector.avro.decoder import Decoder, SchemaLookup
from connector.config.settings import TopicSettings
from connector.errors import FatalError, MappingError, RecordRejected
from connector.mapping.identifiers import MAX_IDENTIFIER, derived_identifier
from connector.mapping.mapper import context_reader
from connector.mapping.timestamps import format_millis, out_of_range, parse_time
from connector.mapping.values import format_value, not_whole, show, text_entries
from connector.records import Coordinates, MeterEvent


class Correction(NamedTuple):
    """One correction, checked: the original event to cancel and what to send in its place."""

    original: str  # the identifier of the meter event to correct
    event_name: str
    customer: str
    original_value: str | None  # needed only to compensate after Stripe's 24-hour window
    replacement_value: str | None  # None: cancel only
    timestamp: str  # the original's event time, RFC 3339 (the replacement and compensation carry it)
    timestamp_ms: int
    reason: str
    attributes: Mapping[str, str]
    context: str | None
    identifier: str  # derived from the correction record: the replacement's or compensation's identifier

    def event(self, value: str, customer_key: str, value_key: str) -> MeterEvent:
        """The event sent for this correction with ``value`` (the replacement or the difference)."""
        payload = dict(self.attributes)
        payload[customer_key] = self.customer
        payload[value_key] = value
        return MeterEvent(self.identifier, self.event_name, self.timestamp, payload, self.context)


# The namespace of a usage topic's derived identifiers, None for a topic the connector does not consume.
NamespaceOf = Callable[[str], "str | None"]


class CorrectionMapper:
    """Maps the records of one corrections topic; duck-types ``Mapper``'s namespace interface."""

    def __init__(self, settings: TopicSettings, schema_lookup: SchemaLookup | None = None) -> None:
        self.settings = settings
        self.decoder = Decoder(settings, schema_lookup)
        self._namespace: str | None = None
        self._context_of = context_reader(settings)

    def use_namespace(self, namespace: str) -> None:
        self._namespace = namespace

    @property
    def namespace(self) -> str | None:
        return self._namespace

    def map_value(
        self, value: bytes | None, coordinates: Coordinates, now_ms: int, namespace_of: NamespaceOf
    ) -> Correction:
        """Decode and check the correction at ``coordinates``; ``namespace_of`` resolves originals
        named by their coordinates."""
        try:
            record = self.decoder.decode(value)
            if not isinstance(record, dict):
                raise MappingError("record: not a record", code="not_a_record")
            return self._correction(record, coordinates, now_ms, namespace_of)
        except RecordRejected as exc:
            raise exc.at(coordinates) from None

    def _correction(
        self, record: dict[str, Any], at: Coordinates, now_ms: int, namespace_of: NamespaceOf
    ) -> Correction:
        settings = self.settings
        event_name = _text(record, "event_name")
        if settings.event_name and event_name != settings.event_name:
            raise MappingError(
                f"event_name: {event_name!r}, but this topic corrects {settings.event_name!r} only",
                code="wrong_event_name",
            )
        raw = record.get("timestamp")
        # The decoder hands timestamp-millis over as the long itself (as the usage mapper reads it).
        millis = raw if type(raw) is int else parse_time(raw, "timestamp")
        past, future = settings.max_past_seconds * 1000, settings.max_future_seconds * 1000
        if not now_ms - past <= millis <= now_ms + future:
            raise out_of_range(
                millis,
                now_ms,
                source="timestamp",
                max_past_seconds=settings.max_past_seconds,
                max_future_seconds=settings.max_future_seconds,
            )
        if self._namespace is None:
            raise FatalError(f"no identifier namespace known for topic {at.topic!r}")
        context = record.get(settings.context_field) if settings.context_field else None
        return Correction(
            original=_original(record, namespace_of),
            event_name=event_name,
            customer=_text(record, "stripe_customer_id"),
            original_value=self._value(record, "original_value"),
            replacement_value=self._value(record, "replacement_value"),
            timestamp=format_millis(millis, {}),
            timestamp_ms=millis,
            reason=str(record.get("reason") or ""),
            attributes=text_entries(dict(record.get("attributes") or {}), "attributes"),
            context=settings.stripe_context if context is None else self._context_of(context),
            identifier=derived_identifier(at.topic, self._namespace, at.partition, at.offset),
        )

    def _value(self, record: dict[str, Any], field: str) -> str | None:
        value = record.get(field)
        if value is None:
            return None
        text = format_value(value, field)
        if not self.settings.decimal_values and "." in text:
            raise not_whole(field, value, self.settings.name)
        return text


def _text(record: dict[str, Any], field: str) -> str:
    value = record.get(field)
    if type(value) is not str or not value.strip():
        raise MappingError(f"{field}: {show(value)} is not a non-empty string", code=f"missing_{field}")
    return value


def _original(record: dict[str, Any], namespace_of: NamespaceOf) -> str:
    """The identifier of the event to correct: given, or derived from the original's coordinates."""
    identifier = record.get("original_identifier")
    if identifier is not None:
        if type(identifier) is not str or not 0 < len(identifier) <= MAX_IDENTIFIER:
            raise MappingError(
                f"original_identifier: {show(identifier)} is not 1-{MAX_IDENTIFIER} characters",
                code="invalid_identifier",
            )
        return identifier
    topic, partition, offset = (record.get(f"original_{k}") for k in ("topic", "partition", "offset"))
    if topic is None or partition is None or offset is None:
        raise MappingError(
            "no original: set original_identifier, or original_topic, original_partition and original_offset",
            code="no_original",
        )
    namespace = namespace_of(str(topic))
    if namespace is None:
        raise MappingError(
            f"original_topic: {show(topic)} is not a usage topic of this connector, so its identifiers "
            "cannot be derived; name the original by original_identifier",
            code="unknown_original_topic",
        )
    if int(partition) < 0 or int(offset) < 0:
        raise MappingError("original_partition/original_offset: negative", code="invalid_coordinates")
    return derived_identifier(str(topic), namespace, int(partition), int(offset))
