"""Fault injection and the stream's rate limiter: runtime settings a test or benchmark can change."""

from __future__ import annotations

import math
import random
from typing import Any

from connector.devtools.emulator.clock import Clock
from connector.devtools.emulator.config import EmulatorConfig, check_settings
from connector.devtools.emulator.errors import ApiError

_NUMBERS = (
    "latency_ms",
    "error_rate",
    "rate_limited_rate",
    "drop_rate",
    "retry_after",
    "rate_limit_rps",
    "session_ttl",
)
_FLAGS = ("outage", "compress", "expire_tokens")
_ACCEPTED = frozenset((*_NUMBERS, *_FLAGS, "should_retry"))

# Stripe's documented limits on the meter event endpoints (``--sandbox-limits``): in test mode both
# count toward the basic limit of the account; in live mode each endpoint has its own.
SANDBOX_RPS = 25.0
LIVE_STREAM_RPS = 10_000.0
LIVE_V1_EVENTS_RPS = 1_000.0


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


class ModeLimits:
    """Token buckets for ``--sandbox-limits``, by mode and endpoint (stream or v1 meter events)."""

    def __init__(self, clock: Clock) -> None:
        basic = TokenBucket(SANDBOX_RPS, clock)  # one bucket: both endpoints share the basic limit
        self._stream = {False: basic, True: TokenBucket(LIVE_STREAM_RPS, clock)}
        self._v1_events = {False: basic, True: TokenBucket(LIVE_V1_EVENTS_RPS, clock)}

    def take(self, livemode: bool, stream: bool) -> str | None:
        """None when the request may pass, else its ``Stripe-Rate-Limited-Reason``."""
        bucket = (self._stream if stream else self._v1_events)[livemode]
        if bucket.take():
            return None
        return "endpoint-rate" if livemode else "global-rate"


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
        self.compress = config.compress
        self.should_retry = config.should_retry
        self.bucket: TokenBucket | None = None
        self._mode_limits = ModeLimits(clock) if config.sandbox_limits else None
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
        # An explicit rate_limit_rps replaces Stripe's own limits.
        self.mode_limits = self._mode_limits if self.bucket is None else None

    def update(self, values: dict[str, Any]) -> bool:
        """Apply a ``POST /_emulator/faults`` body; returns whether ``expire_tokens`` was requested.

        Raises ``ValueError`` listing every problem, and then changes nothing.
        """
        problems = [f"unknown setting: {name}" for name in values if name not in _ACCEPTED]
        problems += check_settings({k: v for k, v in values.items() if k in _NUMBERS})
        for flag in _FLAGS:
            if flag in values and not isinstance(values[flag], bool):
                problems.append(f"{flag} must be true or false")
        if "should_retry" in values and not isinstance(values["should_retry"], bool | None):
            problems.append("should_retry must be true, false or null")
        if problems:
            raise ValueError("; ".join(problems))
        for name in _NUMBERS:
            if name in values:
                value = values[name]
                setattr(self, name, None if value is None else float(value))
        for name in ("outage", "compress", "should_retry"):
            if name in values:
                setattr(self, name, values[name])
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
            "compress": self.compress,
            "should_retry": self.should_retry,
        }

    # -- the error responses the faults inject ----------------------------------------------------

    def _headers(self) -> dict[str, str]:
        should_retry = self.should_retry
        return {} if should_retry is None else {"Stripe-Should-Retry": "true" if should_retry else "false"}

    def unavailable(self) -> ApiError:
        return ApiError(
            503,
            "The meter event stream is temporarily unavailable (emulated outage).",
            type="api_error",
            code="service_unavailable",
            headers=self._headers(),
        )

    def internal_error(self) -> ApiError:
        return ApiError(
            500,
            "An unknown error occurred (emulated).",
            type="api_error",
            code="internal_error",
            headers=self._headers(),
        )

    def rate_limited(self, reason: str) -> ApiError:
        headers = self._headers()
        headers["Stripe-Rate-Limited-Reason"] = reason
        if self.retry_after is not None:
            # HTTP's Retry-After holds whole seconds.
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return ApiError(
            429,
            "Request rate limit exceeded. You can learn more about rate limits here "
            "https://docs.stripe.com/rate-limits.",
            type="rate_limit",
            code="rate_limit",
            headers=headers,
        )
