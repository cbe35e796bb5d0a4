"""Route handlers of Stripe's endpoints other than the stream and adjustments: parameters in, objects out."""
# Over 400 lines: one small handler per emulated Stripe endpoint, side by side.

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from connector.devtools.emulator.accounts import check_include, create_account
from connector.devtools.emulator.catalog import (
    INTERVALS,
    USAGE_TYPES,
    Customer,
    Price,
    ProductDraft,
    Recurring,
    normalise_amount,
)
from connector.devtools.emulator.envelope import MAX_NAME_LENGTH
from connector.devtools.emulator.errors import ApiError, invalid, no_such
from connector.devtools.emulator.forms import FormError, decode
from connector.devtools.emulator.meter import FORMULAS, WINDOW_SECONDS, Meter
from connector.devtools.emulator.params import Params, list_object, paginate
from connector.devtools.emulator.state import Account, EmulatorState, Tenant
from connector.devtools.emulator.timestamps import is_rfc3339, parse_rfc3339

# Every handler is synchronous: it runs between two awaits of the ASGI app, so each request's
# read-modify-write of the state is atomic on the event loop.
Result = tuple[int, Any]


@dataclass(frozen=True, slots=True)
class Replayed:
    """A handler's answer replayed for its ``Idempotency-Key``: the stored body, sent as it was."""

    body: bytes


@dataclass(slots=True)
class Request:
    state: EmulatorState
    tenant: Tenant  # the Stripe account the request acts in (the platform without a context)
    account: Account | None  # that account's data in the key's mode; None on emulator controls
    method: str
    path: str
    args: tuple[str, ...]
    query: bytes
    body: bytes
    api_version: str | None
    now: float
    request_id: bytes  # the Request-Id header this request's response carries
    idempotency_key: bytes | None  # the Idempotency-Key header it was sent with

    @property
    def acct(self) -> Account:
        assert self.account is not None, "route declared without authentication"
        return self.account

    def form(self) -> Params:
        """v1 parameters: the query string for GET, the form body otherwise."""
        raw = self.query if self.method == "GET" else self.body
        try:
            return Params(decode(raw))
        except FormError as error:
            raise invalid(str(error), param=error.param) from None

    def json(self, *, allow_empty: bool) -> dict[str, Any]:
        """v2 parameters: a JSON object body."""
        if not self.body.strip():
            if allow_empty:
                return {}
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
        try:
            document = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            raise ApiError(400, "The request body is not valid JSON.", code="invalid_json") from None
        if not isinstance(document, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
        return document


Handler = Callable[[Request], Result]


# -- v2: sessions, adjustments, events ----------------------------------------------------------


def create_session(request: Request) -> Result:
    body = request.json(allow_empty=True)
    for key in body:
        raise ApiError(400, f"Received unknown parameter: {key}", code="parameter_unknown")
    return 200, request.state.create_session(request.tenant, request.acct).to_json()


_TYPES_KEY = re.compile(r"types(?:\[\d*\])?\Z")
_CREATED_KEY = re.compile(r"created\[(gt|gte|lt|lte)\]\Z")
V2_EVENTS_PAGE_SIZE = 20


def list_events_v2(request: Request) -> Result:
    request.state.process_pending()
    pairs = parse_qsl(request.query.decode("utf-8", errors="replace"), keep_blank_values=True)
    limit = V2_EVENTS_PAGE_SIZE
    page: str | None = None
    object_id: str | None = None
    types: list[str] = []
    bounds: dict[str, float] = {}
    kept: list[tuple[str, str]] = []
    for key, value in pairs:
        if key == "page":
            page = value or None
            continue
        kept.append((key, value))
        if key == "limit":
            if not value.isdigit() or not 1 <= int(value) <= 100:
                raise ApiError(400, "limit must be an integer between 1 and 100.", code="parameter_invalid")
            limit = int(value)
        elif key == "object_id":
            object_id = value or None
        elif _TYPES_KEY.match(key):
            types.append(value)
        elif (match := _CREATED_KEY.match(key)) is not None:
            if not is_rfc3339(value):
                raise ApiError(400, f"{key} must be an RFC 3339 timestamp.", code="parameter_invalid")
            bounds[match.group(1)] = parse_rfc3339(value)
        else:
            raise ApiError(400, f"Received unknown parameter: {key}", code="parameter_unknown")

    def created(moment: float) -> bool:
        return (
            ("gt" not in bounds or moment > bounds["gt"])
            and ("gte" not in bounds or moment >= bounds["gte"])
            and ("lt" not in bounds or moment < bounds["lt"])
            and ("lte" not in bounds or moment <= bounds["lte"])
        )

    events = request.acct.ledger.list_thin_events(
        object_id=object_id, types=types or None, created=created if bounds else None
    )
    start = 0
    if page is not None:
        position = next((i for i, e in enumerate(events) if e.id == page), None)
        if position is None:
            raise ApiError(400, f"Invalid page token: {page}", code="parameter_invalid")
        start = position + 1
    chunk = events[start : start + limit]
    next_url = None
    if start + limit < len(events) and chunk:
        next_url = "/v2/core/events?" + urlencode([*kept, ("page", chunk[-1].id)])
    return 200, {
        "data": [e.to_json() for e in chunk],
        "next_page_url": next_url,
        "previous_page_url": None,
    }


def retrieve_event_v2(request: Request) -> Result:
    request.state.process_pending()
    return 200, request.acct.ledger.thin_event(request.args[0]).to_json()


# -- v1: meters ---------------------------------------------------------------------------------


def create_meter(request: Request) -> Result:
    params = request.form()
    display_name = params.text("display_name", required=True, max_length=250)
    event_name = params.text("event_name", required=True, max_length=MAX_NAME_LENGTH)
    aggregation = params.nested("default_aggregation", required=True)
    assert aggregation is not None
    formula = aggregation.text("formula", required=True, choices=FORMULAS)
    customer_key = "stripe_customer_id"
    mapping = params.nested("customer_mapping")
    if mapping is not None:
        customer_key = mapping.text("event_payload_key", required=True, max_length=MAX_NAME_LENGTH) or ""
        mapping.text("type", required=True, choices=("by_id",))
    value_key = "value"
    settings = params.nested("value_settings")
    if settings is not None:
        value_key = settings.text("event_payload_key", required=True, max_length=MAX_NAME_LENGTH) or ""
    window = params.text("event_time_window", choices=tuple(WINDOW_SECONDS))
    params.finish()
    assert display_name is not None and event_name is not None and formula is not None
    meter = request.acct.ledger.create_meter(
        display_name=display_name,
        event_name=event_name,
        formula=formula,
        customer_key=customer_key,
        value_key=value_key,
        event_time_window=window,
        now=request.now,
    )
    return 200, meter.to_json()


def list_meters(request: Request) -> Result:
    params = request.form()
    status = params.text("status", choices=("active", "inactive"))
    meters = request.acct.ledger.list_meters(status)
    page, more = paginate(meters, lambda m: m.id, params, "billing.meter")
    params.finish()
    return 200, list_object("/v1/billing/meters", [m.to_json() for m in page], more)


def retrieve_meter(request: Request) -> Result:
    request.form().finish()
    return 200, request.acct.ledger.meter(request.args[0]).to_json()


def update_meter(request: Request) -> Result:
    params = request.form()
    display_name = params.text("display_name", max_length=250)
    params.finish()
    return 200, request.acct.ledger.update_meter(request.args[0], display_name, request.now).to_json()


def deactivate_meter(request: Request) -> Result:
    request.form().finish()
    return 200, request.acct.ledger.deactivate_meter(request.args[0], request.now).to_json()


def reactivate_meter(request: Request) -> Result:
    request.form().finish()
    return 200, request.acct.ledger.reactivate_meter(request.args[0], request.now).to_json()


def _aligned(params: Params, key: str, step: int, unit: str) -> int:
    value = params.integer(key, required=True, minimum=0)
    assert value is not None
    if value % step:
        raise invalid(f"{key} must be aligned to {unit} ({value} is not a multiple of {step}).", param=key)
    return value


def meter_event_summaries(request: Request) -> Result:
    params = request.form()
    ledger = request.acct.ledger
    meter = ledger.meter(request.args[0])
    customer = params.text("customer", required=True)
    window = params.text("value_grouping_window", choices=tuple(WINDOW_SECONDS))
    step, unit = {None: (60, "the minute"), "hour": (3600, "the hour"), "day": (86_400, "00:00 UTC")}[window]
    start = _aligned(params, "start_time", step, unit)
    end = _aligned(params, "end_time", step, unit)
    if start >= end:
        raise invalid("start_time must be before end_time.", param="start_time")
    assert customer is not None
    request.state.process_pending()
    if not request.acct.customer_known(customer):
        raise no_such("customer", customer, param="customer", status=400)
    summaries = ledger.summaries(meter, customer, start, end, window)
    page, more = paginate(summaries, lambda s: str(s["id"]), params, "billing.meter_event_summary")
    params.finish()
    return 200, list_object(f"/v1/billing/meters/{meter.id}/event_summaries", page, more)


# -- v1: meter events and adjustments -----------------------------------------------------------


def create_meter_event(request: Request) -> Result:
    request.tenant.check_mode_limit(request.acct.livemode, stream=False)
    params = request.form()
    event_name = params.text("event_name", required=True, max_length=MAX_NAME_LENGTH)
    payload = params.string_map("payload", required=True)
    identifier = params.text("identifier", max_length=MAX_NAME_LENGTH)
    timestamp = params.integer("timestamp", minimum=0)
    params.finish()
    assert event_name is not None and payload is not None
    account = request.acct
    identifier = account.ledger.ingest_one(
        event_name,
        payload,
        identifier,
        None if timestamp is None else float(timestamp),
        request.now,
        request.request_id,
        request.idempotency_key,
    )
    return 200, {
        "object": "billing.meter_event",
        "created": int(request.now),
        "event_name": event_name,
        "identifier": identifier,
        "livemode": account.livemode,
        "payload": payload,
        "timestamp": int(request.now) if timestamp is None else timestamp,
    }


# -- v1: products, prices, plans, customers -----------------------------------------------------


def create_product(request: Request) -> Result:
    params = request.form()
    draft = _product_draft(params)
    params.finish()
    return 200, request.acct.catalog.create_product(draft, request.now).to_json()


def _product_draft(params: Params) -> ProductDraft:
    name = params.text("name", required=True)
    assert name is not None
    active = params.boolean("active")
    return ProductDraft(
        name=name,
        active=True if active is None else active,
        description=params.text("description"),
        metadata=params.string_map("metadata") or {},
        id=params.text("id"),
    )


def retrieve_product(request: Request) -> Result:
    request.form().finish()
    return 200, request.acct.catalog.product(request.args[0]).to_json()


def list_products(request: Request) -> Result:
    params = request.form()
    products = request.acct.catalog.list_products(params.boolean("active"))
    page, more = paginate(products, lambda p: p.id, params, "product")
    params.finish()
    return 200, list_object("/v1/products", [p.to_json() for p in page], more)


def _meter_status(request: Request) -> Callable[[str], str | None]:
    ledger = request.acct.ledger

    def status(meter_id: str) -> str | None:
        meter: Meter | None = ledger.meters.get(meter_id)
        return None if meter is None else meter.status

    return status


def _amount(params: Params, integer_key: str, decimal_key: str) -> str:
    whole = params.integer(integer_key, minimum=0)
    fraction = params.text(decimal_key)
    if whole is not None and fraction is not None:
        raise invalid(f"You may only specify one of these parameters: {integer_key}, {decimal_key}.")
    if whole is not None:
        return str(whole)
    if fraction is not None:
        return normalise_amount(fraction, decimal_key)
    raise invalid(
        f"Missing required param: {integer_key}. Pass {integer_key} or {decimal_key}.",
        param=integer_key,
        code="parameter_missing",
    )


def create_price(request: Request) -> Result:
    params = request.form()
    catalog = request.acct.catalog
    currency = params.text("currency", required=True)
    assert currency is not None
    amount = _amount(params, "unit_amount", "unit_amount_decimal")
    billing_scheme = params.text("billing_scheme", choices=("per_unit",))
    del billing_scheme  # tiered prices are not emulated
    product_id = params.text("product")
    product_data = params.nested("product_data")
    if (product_id is None) == (product_data is None):
        raise invalid("You must specify exactly one of `product` or `product_data`.", param="product")
    product: str | ProductDraft = (
        _product_draft(product_data) if product_data is not None else product_id or ""
    )
    recurring: Recurring | None = None
    recurring_params = params.nested("recurring")
    if recurring_params is not None:
        recurring = Recurring(
            interval=recurring_params.text("interval", required=True, choices=INTERVALS) or "",
            interval_count=recurring_params.integer("interval_count", minimum=1, maximum=365) or 1,
            usage_type=recurring_params.text("usage_type", choices=USAGE_TYPES) or "licensed",
            meter=recurring_params.text("meter"),
        )
    active = params.boolean("active")
    nickname = params.text("nickname")
    lookup_key = params.text("lookup_key", max_length=200)
    metadata = params.string_map("metadata") or {}
    params.finish()
    _check_currency(currency)
    price = catalog.create_price(
        currency=currency,
        unit_amount_decimal=amount,
        product=product,
        product_param="product" if product_data is None else "product_data",
        recurring=recurring,
        active=True if active is None else active,
        nickname=nickname,
        lookup_key=lookup_key,
        metadata=metadata,
        price_id=None,
        api_version=request.api_version,
        meter_status=_meter_status(request),
        meter_param="recurring[meter]",
        now=request.now,
    )
    return 200, price.price_json()


def _check_currency(currency: str) -> None:
    if not re.fullmatch(r"[A-Za-z]{3}", currency):
        raise invalid(f"Invalid currency: {currency}", param="currency")


def retrieve_price(request: Request) -> Result:
    request.form().finish()
    return 200, request.acct.catalog.price(request.args[0]).price_json()


def _update(params: Params, price: Price) -> None:
    active = params.boolean("active")
    if active is not None:
        price.active = active
    if "nickname" in params:
        price.nickname = params.text("nickname")
    metadata = params.string_map("metadata")
    if metadata is not None:
        price.metadata = {**price.metadata, **metadata}


def update_price(request: Request) -> Result:
    params = request.form()
    price = request.acct.catalog.price(request.args[0])
    _update(params, price)
    if "lookup_key" in params:
        price.lookup_key = params.text("lookup_key", max_length=200)
    params.finish()
    return 200, price.price_json()


def list_prices(request: Request) -> Result:
    params = request.form()
    active = params.boolean("active")
    currency = params.text("currency")
    product = params.text("product")
    kind = params.text("type", choices=("one_time", "recurring"))
    interval = meter = usage_type = None
    recurring = params.nested("recurring")
    if recurring is not None:
        interval = recurring.text("interval", choices=INTERVALS)
        meter = recurring.text("meter")
        usage_type = recurring.text("usage_type", choices=USAGE_TYPES)

    def keep(price: Price) -> bool:
        r = price.recurring
        return (
            (active is None or price.active == active)
            and (currency is None or price.currency == currency.lower())
            and (product is None or price.product == product)
            and (kind is None or (kind == "recurring") == (r is not None))
            and (recurring is None or r is not None)
            and (interval is None or (r is not None and r.interval == interval))
            and (meter is None or (r is not None and r.meter == meter))
            and (usage_type is None or (r is not None and r.usage_type == usage_type))
        )

    prices = request.acct.catalog.list_prices(keep)
    page, more = paginate(prices, lambda p: p.id, params, "price")
    params.finish()
    return 200, list_object("/v1/prices", [p.price_json() for p in page], more)


def create_plan(request: Request) -> Result:
    params = request.form()
    currency = params.text("currency", required=True)
    interval = params.text("interval", required=True, choices=INTERVALS)
    assert currency is not None and interval is not None
    amount = _amount(params, "amount", "amount_decimal")
    params.text("billing_scheme", choices=("per_unit",))
    product_value = params.raw("product")
    if product_value is None:
        raise invalid("Missing required param: product.", param="product", code="parameter_missing")
    product: str | ProductDraft
    if isinstance(product_value, dict):
        product_params = params.nested("product")
        assert product_params is not None
        product = _product_draft(product_params)
    elif isinstance(product_value, str) and product_value:
        product = product_value
    else:
        raise invalid("product must be a product id or a hash with a name.", param="product")
    recurring = Recurring(
        interval=interval,
        interval_count=params.integer("interval_count", minimum=1, maximum=365) or 1,
        usage_type=params.text("usage_type", choices=USAGE_TYPES) or "licensed",
        meter=params.text("meter"),
    )
    active = params.boolean("active")
    nickname = params.text("nickname")
    metadata = params.string_map("metadata") or {}
    plan_id = params.text("id")
    params.finish()
    _check_currency(currency)
    price = request.acct.catalog.create_price(
        currency=currency,
        unit_amount_decimal=amount,
        product=product,
        product_param="product",
        recurring=recurring,
        active=True if active is None else active,
        nickname=nickname,
        lookup_key=None,
        metadata=metadata,
        price_id=plan_id,
        api_version=request.api_version,
        meter_status=_meter_status(request),
        meter_param="meter",
        now=request.now,
    )
    return 200, price.plan_json()


def retrieve_plan(request: Request) -> Result:
    request.form().finish()
    return 200, request.acct.catalog.plan(request.args[0]).plan_json()


def update_plan(request: Request) -> Result:
    params = request.form()
    plan = request.acct.catalog.plan(request.args[0])
    _update(params, plan)
    params.finish()
    return 200, plan.plan_json()


def list_plans(request: Request) -> Result:
    params = request.form()
    active = params.boolean("active")
    product = params.text("product")
    plans = request.acct.catalog.list_prices(
        lambda p: (
            p.recurring is not None
            and (active is None or p.active == active)
            and (product is None or p.product == product)
        )
    )
    page, more = paginate(plans, lambda p: p.id, params, "plan")
    params.finish()
    return 200, list_object("/v1/plans", [p.plan_json() for p in page], more)


def create_customer(request: Request) -> Result:
    params = request.form()
    name = params.text("name")
    email = params.text("email")
    description = params.text("description")
    metadata = params.string_map("metadata") or {}
    params.finish()
    # Queued events were received before this customer existed: judge them without it.
    request.state.process_pending()
    customer = request.acct.catalog.create_customer(
        name=name, email=email, description=description, metadata=metadata, now=request.now
    )
    return 200, customer.to_json()


def retrieve_customer(request: Request) -> Result:
    """A created customer; without ``--require-known-customers`` also any well-formed ``cus_`` id, as
    meter events for such ids count (the two answers must agree, or a client that checks customers
    before sending would hold events the emulator would have counted)."""
    request.form().finish()
    customer_id = request.args[0]
    catalog = request.acct.catalog
    if customer_id not in catalog.customers and request.acct.customer_known(customer_id):
        return 200, Customer(customer_id, None, None, None, {}, 0, catalog.livemode).to_json()
    return 200, catalog.customer(customer_id).to_json()


def list_customers(request: Request) -> Result:
    """``GET /v1/customers``: the created customers, newest first (lenient ids are not listed)."""
    params = request.form()
    page, more = paginate(request.acct.catalog.list_customers(), lambda c: c.id, params, "customer")
    params.finish()
    return 200, list_object("/v1/customers", [c.to_json() for c in page], more)


# -- v1: the account of the key --------------------------------------------------------------------


def retrieve_current_account(request: Request) -> Result:
    """``GET /v1/account``: the account the request acts in (the emulator's platform account, whichever
    mode or kind of key opened it, or the connected account its context names)."""
    request.form().finish()
    return 200, request.tenant.identity.to_json()


# -- v2: accounts (configured as customers) ------------------------------------------------------

_INCLUDE_KEY = re.compile(r"include(?:\[\d*\])?\Z")


def create_account_v2(request: Request) -> Result:
    body = request.json(allow_empty=True)
    account, include = create_account(body, request.acct.livemode, request.now)
    # Queued events were received before this account existed: judge them without it.
    request.state.process_pending()
    request.acct.catalog.add_account(account)
    return 200, account.to_json(include)


def retrieve_account_v2(request: Request) -> Result:
    include: list[str] = []
    for key, value in parse_qsl(request.query.decode("utf-8", errors="replace"), keep_blank_values=True):
        if not _INCLUDE_KEY.match(key):
            raise ApiError(400, f"Received unknown parameter: {key}", code="parameter_unknown")
        include.append(value)
    account_id = request.args[0]
    catalog = request.acct.catalog
    if account_id not in catalog.accounts and request.acct.customer_known(account_id):
        # Lenient mode: meter events for any well-formed acct_ id count, so such an account exists.
        check_include(include)
        return 200, {
            "id": account_id,
            "object": "v2.core.account",
            "configuration": {"customer": {}},
            "livemode": catalog.livemode,
        }
    return 200, catalog.account(account_id).to_json(check_include(include))
