"""What the pipeline asks Stripe before sending: does a customer exist, which meters are there, may the key
read customers (a thin shell over the v1 client, whose GETs retry as the outcome table says)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from urllib.parse import quote

from connector.stripe.v1 import Meter, StripeClient, StripeNotFound, StripePermissionError

ACCOUNT_PREFIX = "acct_"  # an account configured as a customer (Accounts v2) rather than a cus_ customer
CUSTOMERS_PERMISSION = "Customers: Read"
ACCOUNTS_PERMISSION = "Accounts: Read (Accounts v2)"


class StripeDirectory:
    """Reads of Stripe's live state; every method may raise ``StripeApiError`` (after the client's
    retries), which callers treat as "unknown", never as "missing"."""

    def __init__(self, client: StripeClient) -> None:
        self.client = client

    def customer_exists(self, customer: str) -> bool:
        """Whether Stripe knows ``customer`` (a ``cus_…`` customer or an ``acct_…`` account); a deleted
        customer counts as unknown, as Stripe drops its events too."""
        path = (
            f"/v2/core/accounts/{quote(customer, safe='')}"
            if customer.startswith(ACCOUNT_PREFIX)
            else f"/v1/customers/{quote(customer, safe='')}"
        )
        try:
            found = self.client.get(path)
        except StripeNotFound:
            return False
        return not found.get("deleted", False)

    def customers(self, limit: int) -> Iterator[str]:
        """The ids of up to ``limit`` customers, newest first (100 per request)."""
        return itertools.islice((str(c["id"]) for c in self.client.list_all("/v1/customers")), limit)

    def meters(self) -> list[Meter]:
        """Every meter of the account, active and inactive."""
        return self.client.list_meters()

    def customers_problem(self) -> str | None:
        """Why the key cannot verify customers (a missing permission, named), or None when it can."""
        try:
            self.client.get("/v1/customers", {"limit": 1})
        except StripePermissionError as exc:
            return (
                f"the API key may not read customers ({exc.detail}); grant the restricted key "
                f"'{CUSTOMERS_PERMISSION}' (and '{ACCOUNTS_PERMISSION}' for acct_ customers), or set "
                "CONNECTOR_VERIFY_CUSTOMERS=false"
            )
        return None

    def close(self) -> None:
        self.client.close()
