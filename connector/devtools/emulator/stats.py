"""Counters behind ``GET /_emulator/stats``: one set per account (the platform and each connected one)."""

from __future__ import annotations

from typing import Any


class Stats:
    """Plain integer counters; the hot path bumps attributes directly (no locks: one event loop)."""

    def __init__(self) -> None:
        self.requests_by_status: dict[int, int] = {}
        self.stream_requests_by_status: dict[int, int] = {}
        self.stream_requests_dropped = 0
        self.events_received = 0
        self.events_accepted = 0
        self.duplicates_ignored = 0
        self.events_valid = 0
        self.events_invalid = 0
        self.events_canceled = 0
        self.sessions_created = 0
        self.responses_compressed = 0
        self.idempotent_replays = 0  # answers replayed for their Idempotency-Key (stream, adjustments)
        self.faults_injected: dict[str, int] = {
            "latency": 0,
            "error": 0,
            "rate_limited": 0,
            "throttled": 0,
            "dropped": 0,
            "outage": 0,
            "sandbox_limited": 0,
        }

    def as_dict(self, events_pending: int) -> dict[str, Any]:
        return {
            "requests": sum(self.requests_by_status.values()),
            "requests_by_status": {str(k): v for k, v in sorted(self.requests_by_status.items())},
            "stream_requests": sum(self.stream_requests_by_status.values()) + self.stream_requests_dropped,
            "stream_requests_by_status": {
                str(k): v for k, v in sorted(self.stream_requests_by_status.items())
            },
            "stream_requests_dropped": self.stream_requests_dropped,
            "events_received": self.events_received,
            "events_accepted": self.events_accepted,
            "duplicates_ignored": self.duplicates_ignored,
            "events_valid": self.events_valid,
            "events_invalid": self.events_invalid,
            "events_canceled": self.events_canceled,
            "events_pending": events_pending,
            "sessions_created": self.sessions_created,
            "responses_compressed": self.responses_compressed,
            "idempotent_replays": self.idempotent_replays,
            "faults_injected": dict(self.faults_injected),
        }
