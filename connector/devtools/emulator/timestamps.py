"""Timestamps: RFC 3339 as Stripe's v2 API writes and reads them (``2024-06-01T12:15:00.000Z``), HTTP Date."""

from __future__ import annotations

import email.utils
import time
from datetime import datetime

_fromisoformat = datetime.fromisoformat


def is_rfc3339(text: str) -> bool:
    """An RFC 3339 date-time denoting a real instant: extended date, ``T``, seconds, optional
    fraction after a dot, and ``Z`` or ``±hh:mm`` (upper-case letters, as Stripe writes them).

    ``envelope.check_stream_body`` inlines the same test for speed.
    """
    if (
        len(text) < 20
        or text[10] != "T"
        or text[4] != "-"
        or text[7] != "-"
        or text[13] != ":"
        or text[16] != ":"
        or text[19] not in ".Z+-"
        or (text[19] == "." and not text[20:21].isdigit())
        or (text[-1] != "Z" and (text[-3] != ":" or text[-6] not in "+-"))
    ):
        return False
    try:
        return _fromisoformat(text).tzinfo is not None
    except ValueError:
        return False


def parse_rfc3339(text: str) -> float:
    """Unix seconds of an RFC 3339 string already accepted by ``is_rfc3339``."""
    return _fromisoformat(text).timestamp()


def format_rfc3339(seconds: float) -> str:
    """Unix seconds -> ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (milliseconds, UTC), Stripe's v2 timestamp form."""
    millis = round(seconds * 1000)
    whole, fraction = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{fraction:03d}Z"


_http_date_cache: list[tuple[int, bytes]] = [(-1, b"")]


def http_date(seconds: float) -> bytes:
    """Unix seconds -> an HTTP ``Date`` value (RFC 9110 IMF-fixdate, ``Sat, 01 Jun 2024 12:00:00 GMT``).

    Cached for the current second: every response carries one.
    """
    whole = int(seconds // 1)
    cached_at, value = _http_date_cache[0]
    if cached_at != whole:
        value = email.utils.formatdate(whole, usegmt=True).encode("ascii")
        _http_date_cache[0] = (whole, value)
    return value
