"""Time sources: the emulator reads unix seconds from an injectable clock so tests can move time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

Clock = Callable[[], float]

system_clock: Clock = time.time


class ManualClock:
    """A clock that only moves when told to; call it like ``time.time``."""

    def __init__(self, start: float = 1_717_243_200.0) -> None:  # 2024-06-01T12:00:00Z
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, now: float) -> None:
        self.now = float(now)


MAX_OFFSET = 100 * 365.25 * 86_400.0  # the emulated clock runs at most a century ahead


class EmulatedClock:
    """The emulator's clock: a base clock (``time.time`` or a ``ManualClock``) plus an offset that
    ``POST /_emulator/clock`` grows and ``POST /_emulator/reset`` sets back to 0.

    What reads it: receipt times (so identifier deduplication, cancels' 24-hour reach and the
    timestamp window), session tokens' creation and expiry, event defaults, ``created``/``updated``
    of objects and thin events. Rate-limit buckets and the idle detection of the background validator
    read real time instead: they measure how fast a client actually sends.
    """

    __slots__ = ("base", "offset")

    def __init__(self, base: Clock) -> None:
        self.base = base
        self.offset = 0.0

    def __call__(self) -> float:
        return self.base() + self.offset

    def advance(self, seconds: float) -> None:
        """Move the clock forward; raises ``ValueError`` listing every problem with ``seconds``."""
        problems = check_advance(seconds, self.offset)
        if problems:
            raise ValueError("; ".join(problems))
        self.offset += float(seconds)

    def reset(self) -> None:
        self.offset = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"now": self(), "offset_s": self.offset}


def check_advance(seconds: object, offset: float = 0.0) -> list[str]:
    """Problems with an ``advance_s`` value; empty when it is a positive number within range."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return ["advance_s must be a number"]
    if not math.isfinite(seconds):
        return ["advance_s must be finite"]
    if seconds <= 0:
        return ["advance_s must be > 0"]
    if offset + seconds > MAX_OFFSET:
        return [f"advance_s would move the clock more than {MAX_OFFSET:.0f} seconds (100 years) ahead"]
    return []
