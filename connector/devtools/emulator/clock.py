"""Time sources: the emulator reads unix seconds from an injectable clock so tests can move time."""

from __future__ import annotations

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
