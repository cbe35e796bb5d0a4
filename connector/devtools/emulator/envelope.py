"""The synchronous checks of a ``meter_event_stream`` body: the emulator's throughput-critical loop."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from connector.devtools.emulator.errors import ApiError

MAX_EVENTS_PER_REQUEST = 100
MAX_NAME_LENGTH = 100
EVENT_FIELDS = frozenset(("event_name", "payload", "identifier", "timestamp"))

_loads = orjson.loads
_fromisoformat = datetime.fromisoformat


class _Rejected(Exception):
    """Internal: an event failed a check; ``_event_error`` then works out which."""


def _position(events: list[Any], event: object) -> int:
    """Index of ``event`` in ``events`` by identity (equal events may repeat)."""
    return next((i for i, item in enumerate(events) if item is event), 0)


def check_stream_body(body: bytes, new_identifier: Callable[[], str]) -> tuple[int, dict[int, str] | None]:
    """Check a stream body's envelope; returns its event count and the identifiers generated for
    events without one (by index). Raises the 400 for the first problem.

    Event contents (meter, customer, value, timestamp range) are Stripe's asynchronous checks and are
    not looked at here.
    """
    events = _events(body)
    count = len(events)
    if not 0 < count <= MAX_EVENTS_PER_REQUEST:
        raise ApiError(
            400,
            f"events must contain between 1 and {MAX_EVENTS_PER_REQUEST} events; got {count}.",
            code="parameter_invalid",
        )
    generated: dict[int, str] | None = None
    if _scan(events):
        # Stripe generates identifiers for events without one; they are fixed now, at receipt.
        generated = {i: new_identifier() for i, e in enumerate(events) if e.get("identifier") is None}
    return count, generated


def _events(body: bytes) -> list[Any]:
    """The body's ``events`` array; the 400 for a body that is not ``{"events": [...]}``."""
    try:
        document = _loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "The request body is not valid JSON.", code="invalid_json") from None
    if type(document) is not dict:
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    events = document.get("events")
    if len(document) != 1 or type(events) is not list:
        for key in document:
            if key != "events":
                raise ApiError(400, f"Received unknown parameter: {key}", code="parameter_unknown")
        if events is None:
            raise ApiError(400, "Missing required param: events.", code="parameter_missing")
        raise ApiError(400, "events must be an array.", code="parameter_invalid")
    return events


def _scan(events: list[Any]) -> bool:
    """Check every event's shape; True if any has no identifier. Raises the 400 for the first problem."""
    # This loop bounds the emulator's throughput, hence the inlined checks and the subscripts that
    # fail into the except clause, where ``_event_error`` works out what was wrong.
    fields = EVENT_FIELDS
    fromisoformat = _fromisoformat
    anonymous = False
    event: Any = None
    try:
        for event in events:
            name = event["event_name"]
            payload = event["payload"]
            identifier = event.get("identifier")
            timestamp = event.get("timestamp")
            if (
                type(name) is not str
                or type(payload) is not dict
                or not 0 < len(name) <= MAX_NAME_LENGTH
                or (
                    len(event) > 2 + (identifier is not None) + (timestamp is not None)
                    and not event.keys() <= fields
                )
            ):
                raise _Rejected
            for value in payload.values():
                if type(value) is not str:
                    raise _Rejected
            # RFC 3339's shape (extended date, T, seconds, offset Z or ±hh:mm; no comma) by
            # indexing, then fromisoformat for the calendar; together cheaper than a regex.
            if timestamp is not None and (
                type(timestamp) is not str
                or len(timestamp) < 20
                or timestamp[10] != "T"
                or timestamp[4] != "-"
                or timestamp[7] != "-"
                or timestamp[13] != ":"
                or timestamp[16] != ":"
                or timestamp[19] not in ".Z+-"
                or (timestamp[19] == "." and not timestamp[20].isdigit())
                or (timestamp[-1] != "Z" and (timestamp[-3] != ":" or timestamp[-6] not in "+-"))
                or fromisoformat(timestamp).tzinfo is None
            ):
                raise _Rejected
            if identifier is None:
                anonymous = True
            elif type(identifier) is not str or not 0 < len(identifier) <= MAX_NAME_LENGTH:
                raise _Rejected
    except (_Rejected, KeyError, TypeError, AttributeError, IndexError, ValueError):
        raise _event_error(_position(events, event), event) from None
    return anonymous


def _event_error(index: int, event: object) -> ApiError:
    """The precise 400 for the first problem of ``events[index]`` (the slow path)."""
    where = f"events[{index}]"

    def bad(message: str, code: str = "parameter_invalid") -> ApiError:
        return ApiError(400, message, code=code)

    if not isinstance(event, dict):
        return bad(f"{where} must be an object.")
    for key in event:
        if key not in EVENT_FIELDS:
            return bad(f"Received unknown parameter: {where}.{key}", "parameter_unknown")
    name = event.get("event_name")
    if name is None:
        return bad(f"Missing required param: {where}.event_name.", "parameter_missing")
    if not isinstance(name, str) or not name:
        return bad(f"{where}.event_name must be a non-empty string.")
    if len(name) > MAX_NAME_LENGTH:
        return bad(f"{where}.event_name must be at most {MAX_NAME_LENGTH} characters.")
    payload = event.get("payload")
    if payload is None:
        return bad(f"Missing required param: {where}.payload.", "parameter_missing")
    if not isinstance(payload, dict):
        return bad(f"{where}.payload must be an object whose values are strings.")
    for key, value in payload.items():
        if not isinstance(value, str):
            return bad(f"{where}.payload.{key} must be a string.")
    identifier = event.get("identifier")
    if identifier is not None and (
        not isinstance(identifier, str) or not 0 < len(identifier) <= MAX_NAME_LENGTH
    ):
        return bad(f"{where}.identifier must be a string of 1 to {MAX_NAME_LENGTH} characters.")
    return bad(
        f"{where}.timestamp must be an RFC 3339 date-time with an offset, such as 2024-06-01T12:00:00.000Z."
    )
