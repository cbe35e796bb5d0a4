"""Fault injection and the stream's rate limiter: runtime settings a test or benchmark can change."""

from __future__ import annotations

import random
from typing import Any

from connector.emulator.clock import Clock
from connector.emulator.config import EmulatorConfig, check_settings

_NUMBERS = (
    "latency_ms",
    "error_rate",
    "rate_limited_rate",
    "drop_rate",
    "retry_after",
    "rate_limit_rps",
    "session_ttl",
)
_ACCEPTED = frozenset((*_NUMBERS, "outage", "expire_tokens"))


class TokenBucket:
    """Requests-per-second limiter: ``rate`` tokens a second, bursts up to one second's worth."""

    def __init__(self, rate: float, clock: Clock) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.tokens = self.capacity
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        elapsed = now - self._last
        self._last = now
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Faults:
    """Current fault settings; ``stream_faulty`` is false when the stream hot path can skip them all."""

    def __init__(self, config: EmulatorConfig, clock: Clock) -> None:
        self._clock = clock
        self.random = random.Random(config.seed)
        self.latency_ms = config.latency_ms
        self.error_rate = config.error_rate
        self.rate_limited_rate = config.rate_limited_rate
        self.drop_rate = config.drop_rate
        self.retry_after = config.retry_after
        self.outage = config.outage
        self.session_ttl = config.session_ttl
        self.rate_limit_rps = config.rate_limit_rps
        self.bucket: TokenBucket | None = None
        self._refresh()

    def _refresh(self) -> None:
        rps = self.rate_limit_rps
        if self.bucket is None or self.bucket.rate != rps:
            self.bucket = TokenBucket(rps, self._clock) if rps > 0 else None
        self.stream_faulty = bool(
            self.error_rate
            or self.rate_limited_rate
            or self.drop_rate
            or self.outage
            or self.bucket is not None
        )

    def update(self, values: dict[str, Any]) -> bool:
        """Apply a ``POST /_emulator/faults`` body; returns whether ``expire_tokens`` was requested.

        Raises ``ValueError`` listing every problem, and then changes nothing.
        """
        problems = [f"unknown setting: {name}" for name in values if name not in _ACCEPTED]
        problems += check_settings({k: v for k, v in values.items() if k in _NUMBERS})
        for flag in ("outage", "expire_tokens"):
            if flag in values and not isinstance(values[flag], bool):
                problems.append(f"{flag} must be true or false")
        if problems:
            raise ValueError("; ".join(problems))
        for name in _NUMBERS:
            if name in values:
                value = values[name]
                setattr(self, name, None if value is None else float(value))
        if "outage" in values:
            self.outage = bool(values["outage"])
        self._refresh()
        return bool(values.get("expire_tokens", False))

    def as_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "error_rate": self.error_rate,
            "rate_limited_rate": self.rate_limited_rate,
            "retry_after": self.retry_after,
            "drop_rate": self.drop_rate,
            "outage": self.outage,
            "session_ttl": self.session_ttl,
            "rate_limit_rps": self.rate_limit_rps,
        }
