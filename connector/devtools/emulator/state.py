"""The emulator's whole in-memory state: accounts (test and live), sessions, faults and stats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connector.devtools.emulator.accounts import PlatformAccount
from connector.devtools.emulator.catalog import ACCOUNT_ID, CUSTOMER_ID, Catalog
from connector.devtools.emulator.clock import Clock, EmulatedClock, system_clock
from connector.devtools.emulator.config import EmulatorConfig, is_secret_key
from connector.devtools.emulator.errors import ApiError, mask_secret
from connector.devtools.emulator.faults import Faults
from connector.devtools.emulator.idempotency import IdempotencyKeys, KeyHold
from connector.devtools.emulator.ids import new_id
from connector.devtools.emulator.ledger import EventStatus, MeterLedger
from connector.devtools.emulator.stats import Stats
from connector.devtools.emulator.timestamps import format_rfc3339

_NO_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization header, "
    "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
)


class Account:
    """One mode's data: Stripe keeps test-mode and live-mode objects apart, and so does the emulator."""

    def __init__(self, livemode: bool, stats: Stats, config: EmulatorConfig) -> None:
        self.livemode = livemode
        self.catalog = Catalog(livemode)
        self.ledger = MeterLedger(livemode, stats, self.customer_known, decimal_values=config.decimal_values)
        self.idempotency = IdempotencyKeys()  # keys are the account's, whichever session sent them
        self._strict_customers = config.require_known_customers

    def customer_known(self, customer_id: str) -> bool:
        """Whether a meter event's customer resolves: a customer (``cus_…``) or an Accounts v2 account
        configured as a customer (``acct_…``); see ``EmulatorConfig.require_known_customers``."""
        catalog = self.catalog
        if customer_id in catalog.customers:
            return True
        account = catalog.accounts.get(customer_id)
        if account is not None:
            return account.is_customer
        return not self._strict_customers and (
            CUSTOMER_ID.match(customer_id) is not None or ACCOUNT_ID.match(customer_id) is not None
        )


@dataclass(slots=True)
class Session:
    id: str
    token: str
    created: float
    expires_at: float
    livemode: bool
    ledger: MeterLedger
    keys: IdempotencyKeys

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "v2.billing.meter_event_session",
            "authentication_token": self.token,
            "created": format_rfc3339(self.created),
            "expires_at": format_rfc3339(self.expires_at),
            "livemode": self.livemode,
        }


class EmulatorState:
    """Everything the emulator knows; ``reset()`` returns it to the startup configuration in place.

    ``clock`` is the emulated clock (``clock`` given plus what ``POST /_emulator/clock`` advanced);
    ``real_clock`` the clock given, which rate limits read. ``platform`` is the account every key
    opens; it keeps its id across resets.
    """

    def __init__(self, config: EmulatorConfig, clock: Clock = system_clock) -> None:
        self.config = config
        self.real_clock = clock
        self.clock = EmulatedClock(clock)
        self.platform = PlatformAccount.new(clock())
        self.reset()

    def reset(self) -> None:
        self.clock.reset()
        self.stats = Stats()
        # Rate limits measure how fast a client really sends: advancing the clock refills nothing.
        self.faults = Faults(self.config, self.real_clock)
        self.accounts = {
            False: Account(False, self.stats, self.config),
            True: Account(True, self.stats, self.config),
        }
        self.sessions: dict[str, Session] = {}

    def account(self, livemode: bool = False) -> Account:
        return self.accounts[livemode]

    # -- authentication -------------------------------------------------------------------------

    def authenticate_key(self, key: str | None) -> Account:
        """The account a secret key opens, or a 401; session tokens are refused here."""
        if not key:
            raise ApiError(401, _NO_KEY, code="missing_api_key")
        if key in self.sessions:
            raise ApiError(
                401,
                "This endpoint requires a secret API key; a meter event session token was provided.",
                code="invalid_api_key",
            )
        expected = self.config.api_key
        if (expected is not None and key != expected) or not is_secret_key(key):
            raise ApiError(401, f"Invalid API Key provided: {mask_secret(key)}", code="invalid_api_key")
        return self.accounts[key.startswith(("sk_live_", "rk_live_"))]

    def stream_session(self, token: str | None, now: float) -> Session:
        """The live session a stream request's bearer token names, or the matching 401."""
        session = self.sessions.get(token) if token else None
        if session is not None:
            if now < session.expires_at:
                return session
            raise ApiError(
                401,
                "The meter event session has expired. Create a new session and retry with its "
                "authentication_token.",
                type="temporary_session_expired",
                code="billing_meter_event_session_expired",
            )
        if not token:
            raise ApiError(
                401,
                "You did not provide a meter event session token. Create a meter event session and "
                "send its authentication_token as 'Authorization: Bearer TOKEN'.",
                code="invalid_session_token",
            )
        if is_secret_key(token):
            message = (
                "The meter event stream requires a meter event session's authentication_token, "
                f"not a secret API key ({mask_secret(token)})."
            )
        else:
            message = f"Invalid meter event session token provided: {mask_secret(token)}"
        raise ApiError(401, message, code="invalid_session_token")

    def hold_key(self, token: str | None, key: bytes | None) -> KeyHold | None:
        """Claim a stream request's key while it executes, in the account its token opens; None
        without a key or a known token (the request then fails authentication anyway)."""
        session = self.sessions.get(token) if token and key is not None else None
        if session is None or key is None:
            return None
        return session.keys.hold(key)

    def check_mode_limit(self, livemode: bool, *, stream: bool) -> None:
        """``--sandbox-limits``: the 429 when the mode's bucket for this endpoint (the stream or v1
        meter events) is empty; nothing when the limits are off or an explicit rate limit is set."""
        faults = self.faults
        limits = faults.mode_limits
        if limits is not None:
            reason = limits.take(livemode, stream)
            if reason is not None:
                self.stats.faults_injected["sandbox_limited"] += 1
                raise faults.rate_limited(reason)

    # -- sessions -------------------------------------------------------------------------------

    def create_session(self, account: Account) -> Session:
        now = self.clock()
        session = Session(
            id=new_id("bmes_"),
            token=new_id("mes_tok_", 40),
            created=now,
            expires_at=now + self.faults.session_ttl,
            livemode=account.livemode,
            ledger=account.ledger,
            keys=account.idempotency,
        )
        self.sessions[session.token] = session
        self.stats.sessions_created += 1
        return session

    def expire_tokens(self) -> int:
        """Make every current session token expired now; returns how many were live."""
        now = self.clock()
        live = 0
        for session in self.sessions.values():
            if session.expires_at > now:
                session.expires_at = now
                live += 1
        return live

    # -- asynchronous validation ----------------------------------------------------------------

    @property
    def pending_events(self) -> int:
        return sum(account.ledger.pending_events for account in self.accounts.values())

    def process_pending(self, limit: int | None = None) -> int:
        """Validate queued events of both modes (at most about ``limit``); returns how many."""
        now = self.clock()
        handled = 0
        for account in self.accounts.values():
            remaining = None if limit is None else max(limit - handled, 0)
            if remaining != 0:
                handled += account.ledger.process(now, remaining)
        return handled

    def event_status(self, identifier: str, livemode: bool = False) -> EventStatus | None:
        """What became of a meter event (after validating the queue), for tests."""
        self.process_pending()
        return self.accounts[livemode].ledger.event_status(identifier)

    def stats_json(self, process: bool = True) -> dict[str, Any]:
        """The counters; ``process=False`` skips validating the queue (``events_pending`` says how
        much is waiting), for a quick look right after a large burst."""
        if process:
            self.process_pending()
        return self.stats.as_dict(self.pending_events)
