"""Meter event timestamps: RFC 3339 parsing, the cached ``YYYY-MM-DDTHH:MM:SS`` of a second, range errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from connector.errors import MappingError
from connector.mapping.values import show

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_SECOND = -62135596800  # 0001-01-01T00:00:00Z: RFC 3339 has four-digit years
_MAX_SECOND = 253402300799  # 9999-12-31T23:59:59Z
# ".mmmZ" of every millisecond: an index instead of formatting on the hot path.
MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))
SECOND_CACHE_SIZE = 4096


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


def second_prefix(cache: dict[int, str], second: int, field: str) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a unix second, remembered in ``cache``: records of one second share it."""
    if not _MIN_SECOND <= second <= _MAX_SECOND:
        raise MappingError(f"{field}: {second} s is outside the years 1-9999", code="invalid_timestamp")
    if len(cache) >= SECOND_CACHE_SIZE:
        cache.clear()  # records come roughly in time order: old seconds are rarely needed again
    t = EPOCH + timedelta(seconds=second)
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    cache[second] = text
    return text


def format_millis(millis: int, cache: dict[int, str], field: str = "timestamp") -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` of unix milliseconds, the seconds' prefix remembered in ``cache``."""
    second, ms = divmod(millis, 1000)
    return second_prefix(cache, second, field) + MILLIS[ms]


def parse_time(value: Any, field: str) -> int:
    """Milliseconds of a timestamp given as an RFC 3339 string or an aware datetime."""
    if type(value) is str:
        try:
            parsed = parse_rfc3339(value)
        except ValueError:
            raise MappingError(
                f"{field}: {show(value)} is not RFC 3339 with an offset", code="invalid_timestamp"
            ) from None
    elif isinstance(value, datetime):
        parsed = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    else:
        raise MappingError(f"{field}: {show(value)} is not a time", code="invalid_timestamp")
    try:
        delta = parsed - EPOCH
    except (OverflowError, ValueError):  # year 1 or 9999 pushed over the edge by its offset
        raise MappingError(
            f"{field}: {show(value)} is outside the years 1-9999", code="invalid_timestamp"
        ) from None
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def out_of_range(
    millis: int, now_ms: int, *, source: str, max_past_seconds: int, max_future_seconds: int
) -> MappingError:
    """The rejection of a timestamp outside Stripe's window around ``now_ms``."""
    if millis < now_ms:
        limit, code = f"{max_past_seconds} s before", "timestamp_too_far_in_past"
    else:
        limit, code = f"{max_future_seconds} s after", "timestamp_in_future"
    return MappingError(f"{source}: {show(millis)} ms is more than {limit} now ({now_ms} ms)", code=code)
