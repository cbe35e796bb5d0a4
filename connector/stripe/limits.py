"""Stripe's limits and defaults, each declared once: hosts, API version, request limits, key shapes."""

from __future__ import annotations

import datetime as dt

DEFAULT_API_BASE = "https://api.stripe.com"
DEFAULT_METER_EVENTS_BASE = "https://meter-events.stripe.com"
DEFAULT_API_VERSION = "2024-09-30.acacia"
# The v2 meter event endpoints exist from this API version on.
MIN_API_VERSION_DATE = dt.date(2024, 9, 30)

STREAM_PATH = "/v2/billing/meter_event_stream"
SESSION_PATH = "/v2/billing/meter_event_session"
ADJUSTMENTS_PATH = "/v2/billing/meter_event_adjustments"
IDEMPOTENCY_KEY = "Idempotency-Key"  # the header Stripe deduplicates POSTs by
CANCEL_WINDOW_SECONDS = 24 * 3600  # an event can be cancelled within 24 hours of Stripe receiving it
MAX_EVENTS_PER_REQUEST = 100  # meter_event_stream takes 1 to 100 events per request
MAX_LIST_PAGE = 100  # the largest page a v1 list returns (``limit``)
MAX_IDENTIFIER_LENGTH = 100  # an event's identifier, and a meter's event_name
MAX_SIGNIFICANT_DIGITS = 15  # a meter event value
MAX_PAST_SECONDS = 35 * 24 * 3600  # events may be up to 35 days old
MAX_FUTURE_SECONDS = 5 * 60  # ... and at most 5 minutes ahead
SESSION_TTL_SECONDS = 15 * 60  # a meter event session token lives 15 minutes

# The stream allows 10,000 requests/s in live mode; in test mode and sandboxes it counts toward the
# basic limit of about 25 requests/s across the account.
LIVE_RATE_LIMIT_RPS = 10_000.0
TEST_RATE_LIMIT_RPS = 25.0

SECRET_KEY_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_")


def is_live_key(key: str) -> bool:
    """Whether a secret or restricted key belongs to live mode (its prefix says so)."""
    return key.startswith(("sk_live_", "rk_live_"))


def key_mode(key: str) -> str:
    """``"live"`` or ``"test"``: the mode a key's requests run in (Stripe keeps the two apart)."""
    return "live" if is_live_key(key) else "test"


def key_prefix(key: str) -> str:
    """The non-secret prefix of a key (``sk_live_``), empty for anything that is not a key."""
    return next((p for p in SECRET_KEY_PREFIXES if key.startswith(p)), "")
