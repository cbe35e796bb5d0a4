"""Products, prices (which are also plans) and customers of one mode: what says a meter is billed."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from connector.devtools.emulator.accounts import CoreAccount
from connector.devtools.emulator.errors import ApiError, invalid, no_such
from connector.devtools.emulator.ids import new_id

CUSTOMER_ID = re.compile(r"cus_[A-Za-z0-9]+\Z")
ACCOUNT_ID = re.compile(r"acct_[A-Za-z0-9]+\Z")  # an Accounts v2 account configured as a customer
INTERVALS = ("day", "week", "month", "year")
USAGE_TYPES = ("licensed", "metered")
# Since 2025-03-31.basil a metered price must name a meter; older versions allowed legacy usage records.
METER_REQUIRED_FROM = "2025-03-31"


@dataclass(slots=True)
class Product:
    id: str
    name: str
    active: bool
    description: str | None
    metadata: dict[str, str]
    created: int
    livemode: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "product",
            "active": self.active,
            "created": self.created,
            "default_price": None,
            "description": self.description,
            "images": [],
            "livemode": self.livemode,
            "marketing_features": [],
            "metadata": self.metadata,
            "name": self.name,
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": None,
            "type": "service",
            "unit_label": None,
            "updated": self.created,
            "url": None,
        }


@dataclass(frozen=True, slots=True)
class ProductDraft:
    """A product to create along with a price or plan (``product_data`` / ``product[name]``)."""

    name: str
    active: bool = True
    description: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    id: str | None = None


@dataclass(slots=True)
class Recurring:
    interval: str
    interval_count: int
    usage_type: str
    meter: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "interval": self.interval,
            "interval_count": self.interval_count,
            "meter": self.meter,
            "trial_period_days": None,
            "usage_type": self.usage_type,
        }


@dataclass(slots=True)
class Price:
    """A price; a recurring one is also visible through the Plans API under the same id."""

    id: str
    product: str
    currency: str
    unit_amount_decimal: str
    recurring: Recurring | None
    active: bool
    nickname: str | None
    lookup_key: str | None
    metadata: dict[str, str]
    created: int
    livemode: bool

    @property
    def unit_amount(self) -> int | None:
        amount = Decimal(self.unit_amount_decimal)
        return int(amount) if amount == amount.to_integral_value() else None

    def price_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "price",
            "active": self.active,
            "billing_scheme": "per_unit",
            "created": self.created,
            "currency": self.currency,
            "custom_unit_amount": None,
            "livemode": self.livemode,
            "lookup_key": self.lookup_key,
            "metadata": self.metadata,
            "nickname": self.nickname,
            "product": self.product,
            "recurring": None if self.recurring is None else self.recurring.to_json(),
            "tax_behavior": "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "one_time" if self.recurring is None else "recurring",
            "unit_amount": self.unit_amount,
            "unit_amount_decimal": self.unit_amount_decimal,
        }

    def plan_json(self) -> dict[str, Any]:
        recurring = self.recurring
        assert recurring is not None
        return {
            "id": self.id,
            "object": "plan",
            "active": self.active,
            "amount": self.unit_amount,
            "amount_decimal": self.unit_amount_decimal,
            "billing_scheme": "per_unit",
            "created": self.created,
            "currency": self.currency,
            "interval": recurring.interval,
            "interval_count": recurring.interval_count,
            "livemode": self.livemode,
            "metadata": self.metadata,
            "meter": recurring.meter,
            "nickname": self.nickname,
            "product": self.product,
            "tiers_mode": None,
            "transform_usage": None,
            "trial_period_days": None,
            "usage_type": recurring.usage_type,
        }


@dataclass(slots=True)
class Customer:
    id: str
    name: str | None
    email: str | None
    description: str | None
    metadata: dict[str, str]
    created: int
    livemode: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "customer",
            "created": self.created,
            "description": self.description,
            "email": self.email,
            "livemode": self.livemode,
            "metadata": self.metadata,
            "name": self.name,
        }


def normalise_amount(text: str, param: str) -> str:
    """A non-negative decimal amount in minor units with at most 12 decimal places, normalised."""
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise invalid(f"Invalid decimal: {text}", param=param) from None
    if not amount.is_finite() or amount < 0:
        raise invalid(f"Invalid decimal: {text}", param=param)
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -12:
        raise invalid(f"{param} must have at most 12 decimal places.", param=param)
    if amount == amount.to_integral_value():
        return str(int(amount))
    return format(amount.normalize(), "f")


@dataclass
class Catalog:
    livemode: bool
    products: dict[str, Product] = field(default_factory=dict)
    prices: dict[str, Price] = field(default_factory=dict)
    customers: dict[str, Customer] = field(default_factory=dict)
    accounts: dict[str, CoreAccount] = field(default_factory=dict)

    # -- products -------------------------------------------------------------------------------

    def create_product(self, draft: ProductDraft, now: float, *, param: str = "id") -> Product:
        self._check_product_id(draft, param)
        product = Product(
            id=draft.id or new_id("prod_", 14),
            name=draft.name,
            active=draft.active,
            description=draft.description,
            metadata=dict(draft.metadata),
            created=int(now),
            livemode=self.livemode,
        )
        self.products[product.id] = product
        return product

    def _check_product_id(self, draft: ProductDraft, param: str) -> None:
        if draft.id is not None and draft.id in self.products:
            raise invalid(f"Product already exists: {draft.id}", param=param, code="resource_already_exists")

    def product(self, product_id: str, *, param: str = "id", status: int = 404) -> Product:
        product = self.products.get(product_id)
        if product is None:
            raise no_such("product", product_id, param=param, status=status)
        return product

    def list_products(self, active: bool | None) -> list[Product]:
        return [p for p in reversed(self.products.values()) if active is None or p.active == active]

    # -- prices and plans -----------------------------------------------------------------------

    def create_price(
        self,
        *,
        currency: str,
        unit_amount_decimal: str,
        product: str | ProductDraft,
        product_param: str,
        recurring: Recurring | None,
        active: bool,
        nickname: str | None,
        lookup_key: str | None,
        metadata: dict[str, str],
        price_id: str | None,
        api_version: str | None,
        meter_status: Callable[[str], str | None],
        meter_param: str,
        now: float,
    ) -> Price:
        """Create a price (or plan) after every check passed, with its new product if one is drafted.

        ``meter_status`` maps a meter id to its status, or None when no such meter exists.
        """
        if isinstance(product, str):
            self.product(product, param=product_param, status=400)
        else:
            self._check_product_id(product, f"{product_param}[id]")
        if recurring is not None:
            _check_meter(recurring, api_version, meter_status, meter_param)
        if price_id is not None and price_id in self.prices:
            raise invalid(f"Plan already exists: {price_id}", param="id", code="resource_already_exists")
        if lookup_key is not None and any(p.lookup_key == lookup_key for p in self.prices.values()):
            raise invalid(f"A price (`{lookup_key}`) already uses that lookup key.", param="lookup_key")
        if not isinstance(product, str):
            product = self.create_product(product, now).id
        price = Price(
            id=price_id or new_id("price_"),
            product=product,
            currency=currency.lower(),
            unit_amount_decimal=unit_amount_decimal,
            recurring=recurring,
            active=active,
            nickname=nickname,
            lookup_key=lookup_key,
            metadata=metadata,
            created=int(now),
            livemode=self.livemode,
        )
        self.prices[price.id] = price
        return price

    def price(self, price_id: str) -> Price:
        price = self.prices.get(price_id)
        if price is None:
            raise no_such("price", price_id)
        return price

    def plan(self, plan_id: str) -> Price:
        price = self.prices.get(plan_id)
        if price is None or price.recurring is None:
            raise no_such("plan", plan_id)
        return price

    def list_prices(self, keep: Callable[[Price], bool]) -> list[Price]:
        return [p for p in reversed(self.prices.values()) if keep(p)]

    # -- customers ------------------------------------------------------------------------------

    def create_customer(
        self,
        *,
        name: str | None,
        email: str | None,
        description: str | None,
        metadata: dict[str, str],
        now: float,
        customer_id: str | None = None,
    ) -> Customer:
        """A customer (``customer_id``: a chosen id, for tests); events naming it resolve from now on."""
        customer = Customer(
            id=customer_id or new_id("cus_", 14),
            name=name,
            email=email,
            description=description,
            metadata=metadata,
            created=int(now),
            livemode=self.livemode,
        )
        self.customers[customer.id] = customer
        return customer

    def list_customers(self) -> list[Customer]:
        """Newest first, as Stripe lists them."""
        return sorted(self.customers.values(), key=lambda c: c.created, reverse=True)

    def customer(self, customer_id: str) -> Customer:
        customer = self.customers.get(customer_id)
        if customer is None:
            raise no_such("customer", customer_id)
        return customer

    # -- Accounts v2 ----------------------------------------------------------------------------

    def add_account(self, account: CoreAccount) -> None:
        """Keep a new account; one configured as a customer resolves in meter events from now on."""
        self.accounts[account.id] = account

    def account(self, account_id: str) -> CoreAccount:
        account = self.accounts.get(account_id)
        if account is None:
            raise ApiError(404, f"No such account: '{account_id}'", code="resource_missing")
        return account


def _check_meter(
    recurring: Recurring,
    api_version: str | None,
    meter_status: Callable[[str], str | None],
    param: str,
) -> None:
    if recurring.meter is None:
        # No Stripe-Version header means the account's default, which the emulator takes as current.
        if recurring.usage_type == "metered" and (api_version or "9999") >= METER_REQUIRED_FROM:
            raise invalid("A metered price must be backed by a meter; pass the meter's id.", param=param)
        return
    if recurring.usage_type != "metered":
        raise invalid(f"{param} can only be set when usage_type is `metered`.", param=param)
    status = meter_status(recurring.meter)
    if status is None:
        raise ApiError(
            400, f"No such billing meter: '{recurring.meter}'", param=param, code="resource_missing"
        )
    if status != "active":
        raise invalid(
            f"The meter {recurring.meter} is inactive; an inactive meter cannot be attached to a price.",
            param=param,
        )
