"""``reconcile``'s time range: instants given on the command line, Stripe's alignment rules, RFC 3339."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from connector.errors import ConnectorError

WINDOW_SECONDS = {"hour": 3600, "day": 86_400}


class ReconcileError(ConnectorError):
    """Reconciliation cannot be done (bad arguments, no meter, Kafka or Stripe unreachable): exit 2."""


def parse_instant(text: str, option: str) -> int:
    """An instant given on the command line, as unix seconds.

    Accepts ISO 8601 with a ``Z`` or an offset (``2026-11-01T00:00Z``, ``2026-11-01T00:00:00+01:00``), a
    bare date (``2026-11-01``, midnight UTC) or unix seconds. A date-time without a zone is refused: it
    is ambiguous, and Stripe's windows are UTC.
    """
    value = text.strip()
    if value.isdigit():
        return int(value)
    try:
        if len(value) == 10:
            moment = datetime.fromisoformat(value).replace(tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(value)
    except ValueError:
        raise ReconcileError(
            f"{option} {text!r} is not a date-time: use ISO 8601 with a zone, e.g. 2026-11-01T00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise ReconcileError(f"{option} {text!r} has no time zone: add Z (UTC) or an offset such as +01:00")
    return math.floor(moment.timestamp())


def validate_range(start: int, end: int, window: str | None) -> list[str]:
    """Problems with [start, end): Stripe wants it aligned to the minute, or the hour/day of the window."""
    problems: list[str] = []
    step, unit = (WINDOW_SECONDS[window], f"the {window}") if window else (60, "the minute")
    if window == "day":
        unit = "a day (00:00 UTC)"
    why = f" (required with --window {window})" if window else " (Stripe summarises whole minutes)"
    for option, value in (("--start", start), ("--end", end)):
        if value % step:
            down = value - value % step
            problems.append(
                f"{option} {iso(value)} is not aligned to {unit}{why}: use {iso(down)} or {iso(down + step)}"
            )
    if end <= start:
        problems.append(f"--end {iso(end)} must be after --start {iso(start)}")
    return problems


def iso(seconds: int) -> str:
    """``2026-11-01T00:00:00Z``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_millis(timestamp: str) -> int:
    """Unix milliseconds of a meter event's RFC 3339 timestamp, in exact integer arithmetic."""
    delta = datetime.fromisoformat(timestamp) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
