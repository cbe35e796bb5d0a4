"""One Stripe account as the emulator keeps it (the platform or a connected account): data, stats, faults."""

from __future__ import annotations

from connector.devtools.emulator.accounts import PlatformAccount
from connector.devtools.emulator.catalog import ACCOUNT_ID, CUSTOMER_ID, Catalog
from connector.devtools.emulator.clock import Clock
from connector.devtools.emulator.config import EmulatorConfig
from connector.devtools.emulator.faults import Faults
from connector.devtools.emulator.idempotency import V1_KEY_WINDOW, IdempotencyKeys
from connector.devtools.emulator.ledger import MeterLedger
from connector.devtools.emulator.stats import Stats


class Account:
    """One mode's data of one Stripe account: Stripe keeps test-mode and live-mode objects apart, and
    so does the emulator. ``context`` is the account's context path, None for the platform."""

    def __init__(
        self, livemode: bool, stats: Stats, config: EmulatorConfig, context: str | None = None
    ) -> None:
        self.livemode = livemode
        self.context = context
        self.catalog = Catalog(livemode)
        self.ledger = MeterLedger(
            livemode, stats, self.customer_known, decimal_values=config.decimal_values, context=context
        )
        # Keys are the account's, whichever session sent them; v1 keeps its own, for 24 hours.
        self.idempotency = IdempotencyKeys()
        self.v1_idempotency = IdempotencyKeys(window=V1_KEY_WINDOW)
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


class Tenant:
    """A Stripe account: its data in both modes, and its own counters and faults (rate limits and the
    sandbox budget are per account in Stripe). ``context`` is None for the platform, else the path
    that reaches the connected account; ``identity`` is what ``GET /v1/account`` shows in it."""

    def __init__(
        self, identity: PlatformAccount, context: str | None, config: EmulatorConfig, real_clock: Clock
    ) -> None:
        self.identity = identity
        self.context = context
        self.stats = Stats()
        # Rate limits measure how fast a client really sends: advancing the clock refills nothing.
        self.faults = Faults(config, real_clock)
        self.modes = {
            False: Account(False, self.stats, config, context),
            True: Account(True, self.stats, config, context),
        }

    def account(self, livemode: bool) -> Account:
        return self.modes[livemode]

    @property
    def pending_events(self) -> int:
        return self.modes[False].ledger.pending_events + self.modes[True].ledger.pending_events

    def check_mode_limit(self, livemode: bool, *, stream: bool) -> None:
        """``--sandbox-limits``: the 429 when this account's bucket for the mode and endpoint (the
        stream or v1 meter events) is empty; nothing when the limits are off or a rate limit is set."""
        faults = self.faults
        limits = faults.mode_limits
        if limits is not None:
            reason = limits.take(livemode, stream)
            if reason is not None:
                self.stats.faults_injected["sandbox_limited"] += 1
                raise faults.rate_limited(reason)
