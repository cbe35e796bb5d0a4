"""The thread that asks Stripe about its live state for the pipeline: customer lookups at a bounded rate,
and the meters every ``CONNECTOR_METER_REFRESH_S`` or at once when asked.

The consumer thread never waits for Stripe here: it hands over customer ids (``look_up``) and a refresh
wish (``refresh_meters``, also safe from other threads), and collects answers with ``answers``. Lookups
run a few at a time (Stripe takes ~50 ms per read) and are paced so that they fit the account's read
limit; a queue bounded by ``MAX_QUEUED_LOOKUPS`` answers "unknown" at once when it is full rather than
growing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from connector.config.settings import Settings
from connector.stripe.directory import StripeDirectory
from connector.stripe.v1 import Meter, StripeApiError, StripeClient

log = logging.getLogger("kafka_stripe.validation")

LOOKUP_THREADS = 4  # concurrent customer reads: 4 at ~50 ms each is ~80/s before the rate cap
MAX_QUEUED_LOOKUPS = 100_000
TICK_S = 0.05  # how often the thread looks for work when idle


class CustomerAnswer(NamedTuple):
    customer: str
    found: bool | None  # None: the lookup failed


class MetersAnswer(NamedTuple):
    meters: Sequence[Meter] | None  # None: the read failed


Answer = CustomerAnswer | MetersAnswer


class StripeWatch:
    """Background reads of customers and meters; see the module docstring."""

    def __init__(
        self,
        directory: StripeDirectory,
        *,
        lookups_per_s: float,
        meter_refresh_s: float,
        preload: int = 0,
        on_lookup: Callable[[str], None] = lambda result: None,
        on_refresh: Callable[[str], None] = lambda result: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._directory = directory
        self._interval = 1.0 / lookups_per_s
        self._refresh_s = meter_refresh_s
        self._preload = preload
        self._on_lookup = on_lookup
        self._on_refresh = on_refresh
        self._clock = clock
        self._requests: queue.Queue[str] = queue.Queue(MAX_QUEUED_LOOKUPS)
        self._answers: queue.SimpleQueue[Answer] = queue.SimpleQueue()
        self._refresh = threading.Event()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="kafka-stripe-lookup")
        self._thread = threading.Thread(target=self._main, name="kafka-stripe-watch", daemon=True)
        self._next_refresh = 0.0

    # -- consumer thread -------------------------------------------------------------------------

    def read_meters(self) -> Sequence[Meter] | None:
        """The meters now, on the caller's thread (start-up); None when Stripe cannot be read."""
        try:
            meters = self._directory.meters()
        except StripeApiError as exc:
            log.warning("cannot read the meters: %s", exc)
            self._on_refresh("error")
            return None
        self._on_refresh("ok")
        return meters

    def customers_problem(self) -> str | None:
        """Why the key cannot verify customers, or None (a failed read is not a missing permission)."""
        try:
            return self._directory.customers_problem()
        except StripeApiError as exc:
            log.warning("cannot check that the key may read customers: %s", exc)
            return None

    def start(self, *, customers: bool) -> None:
        """Start the thread; ``customers``: list the first customers into the cache meanwhile."""
        self._next_refresh = self._clock() + self._refresh_s
        if customers and self._preload:
            self._pool.submit(self._list_customers)
        self._thread.start()

    def look_up(self, customers: Sequence[str]) -> None:
        for customer in customers:
            try:
                self._requests.put_nowait(customer)
            except queue.Full:
                self._answers.put(CustomerAnswer(customer, None))

    def refresh_meters(self) -> None:
        """Read the meters again soon (thread-safe: the error-report reader calls it)."""
        self._refresh.set()

    def answers(self) -> list[Answer]:
        found: list[Answer] = []
        while True:
            try:
                found.append(self._answers.get_nowait())
            except queue.Empty:
                return found

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._directory.close()

    # -- its own thread --------------------------------------------------------------------------

    def _main(self) -> None:
        next_lookup = 0.0
        while not self._stop.is_set():
            now = self._clock()
            if self._refresh.is_set() or now >= self._next_refresh:
                self._refresh.clear()
                self._next_refresh = now + self._refresh_s
                self._pool.submit(self._read_meters)
            if now < next_lookup:
                self._stop.wait(next_lookup - now)
                continue
            try:
                customer = self._requests.get(timeout=TICK_S)
            except queue.Empty:
                continue
            next_lookup = self._clock() + self._interval
            self._pool.submit(self._look_up, customer)

    def _read_meters(self) -> None:
        self._answers.put(MetersAnswer(self.read_meters()))

    def _list_customers(self) -> None:
        # Known customers only: an id missing from the list may be beyond the preload, so absence
        # proves nothing and is left to the lookups.
        listed = 0
        try:
            for customer in self._directory.customers(self._preload):
                self._answers.put(CustomerAnswer(customer, True))
                listed += 1
        except StripeApiError as exc:
            log.warning("cannot list customers (%s); looking them up one by one", exc)
        log.info("%d customers listed from Stripe into the cache", listed)

    def _look_up(self, customer: str) -> None:
        try:
            found: bool | None = self._directory.customer_exists(customer)
        except StripeApiError as exc:
            log.warning("cannot look up customer %s: %s (its events go unchecked for now)", customer, exc)
            found = None
        except Exception:  # a bug must not leave the customer's events waiting for ever
            log.exception("customer lookup failed unexpectedly")
            found = None
        self._on_lookup("error" if found is None else "found" if found else "not_found")
        self._answers.put(CustomerAnswer(customer, found))


def watch_for(
    settings: Settings, on_lookup: Callable[[str], None], on_refresh: Callable[[str], None]
) -> StripeWatch:
    """The watch ``kafka-stripe run`` uses: the v1 client with the sender's timeouts."""
    client = StripeClient.from_settings(settings.stripe, settings.sender)
    validation = settings.validation
    return StripeWatch(
        StripeDirectory(client),
        lookups_per_s=validation.customer_lookups_rps,
        preload=validation.customer_preload,
        meter_refresh_s=validation.meter_refresh_s,
        on_lookup=on_lookup,
        on_refresh=on_refresh,
    )
