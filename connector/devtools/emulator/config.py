"""``EmulatorConfig``: the emulator's startup settings, shared by the CLI, ``create_app`` and tests."""

from __future__ import annotations

from dataclasses import dataclass

from connector.devtools.emulator.contexts import ContextTree

DEFAULT_SESSION_TTL = 900.0  # Stripe's meter event session tokens live 15 minutes.


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Startup settings; the fault fields are also the values ``POST /_emulator/reset`` returns to."""

    session_ttl: float = DEFAULT_SESSION_TTL
    latency_ms: float = 0.0
    error_rate: float = 0.0
    rate_limited_rate: float = 0.0
    drop_rate: float = 0.0
    retry_after: float | None = None
    rate_limit_rps: float = 0.0
    outage: bool = False
    # When set, only this secret key is accepted; otherwise any sk_/rk_ test or live key is.
    api_key: str | None = None
    # When true, a customer id is known only once created with POST /v1/customers (``cus_…``) or
    # POST /v2/core/accounts with a customer configuration (``acct_…``); otherwise any id shaped
    # like ``cus_<letters and digits>`` or ``acct_<letters and digits>`` is.
    require_known_customers: bool = False
    # Seed for the fault-injection random draws, for reproducible fault sequences.
    seed: int | None = None
    # Gzip every API response whose request accepts gzip (also a runtime fault field).
    compress: bool = False
    # When not None, injected stream errors (500, 503, 429) carry ``Stripe-Should-Retry`` with this
    # value (also a runtime fault field).
    should_retry: bool | None = None
    # Stripe accepts whole-number meter values unless decimals were enabled for the account; when
    # false, a value with a decimal point fails validation with ``meter_event_invalid_value``.
    decimal_values: bool = False
    # Stripe's own limits on the meter event endpoints when no rate_limit_rps is set: 25 requests/s
    # per test-mode account (the basic limit), 10,000/s on the live stream, 1,000/s on live v1 events.
    sandbox_limits: bool = False
    # Connected accounts that exist from the start (``acct_…``, or a path ``acct_a/acct_b`` for an
    # account of a connected account); more come with POST /_emulator/contexts, and resets keep them.
    contexts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = check_settings(
            {
                "session_ttl": self.session_ttl,
                "latency_ms": self.latency_ms,
                "error_rate": self.error_rate,
                "rate_limited_rate": self.rate_limited_rate,
                "drop_rate": self.drop_rate,
                "retry_after": self.retry_after,
                "rate_limit_rps": self.rate_limit_rps,
            }
        )
        if self.should_retry is not None and not isinstance(self.should_retry, bool):
            problems.append("should_retry must be true, false or null")
        if self.api_key is not None and not is_secret_key(self.api_key):
            problems.append("api_key must start with sk_test_, sk_live_, rk_test_ or rk_live_")
        problems += check_contexts(self.contexts)
        if problems:
            raise ValueError("; ".join(problems))


def check_contexts(values: object) -> list[str]:
    """Problems with a list of contexts to create: malformed values, or values contradicting each other."""
    if not isinstance(values, tuple | list) or not all(isinstance(value, str) for value in values):
        return ["contexts must be a list of strings"]
    tree = ContextTree(platform_id="")
    problems: list[str] = []
    for value in values:
        try:
            tree.add(value)
        except ValueError as error:
            problems.append(str(error))
    return problems


_FRACTIONS = ("error_rate", "rate_limited_rate", "drop_rate")
_NON_NEGATIVE = ("latency_ms", "rate_limit_rps")


def check_settings(values: dict[str, object]) -> list[str]:
    """Range problems in fault/setting values (absent keys are not checked); empty when all are fine."""
    problems: list[str] = []
    for name, value in values.items():
        if name == "retry_after" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{name} must be a number")
        elif name in _FRACTIONS and not 0.0 <= value <= 1.0:
            problems.append(f"{name} must be between 0 and 1")
        elif name in _NON_NEGATIVE and value < 0:
            problems.append(f"{name} must be >= 0")
        elif name in ("session_ttl", "retry_after") and value <= 0:
            problems.append(f"{name} must be > 0")
    return problems


SECRET_KEY_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_")


def is_secret_key(key: str) -> bool:
    return key.startswith(SECRET_KEY_PREFIXES) and len(key) > len("sk_test_")
