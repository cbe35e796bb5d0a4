"""``check``'s Stripe checks: the key, the meters each topic needs, and the prices that bill them.

Within one ``run_checks`` (inside ``shared_meter_listing()``) these checks share one listing of the
meters per Stripe context: a refused key is then reported once (by the ``stripe`` check), a context the
key cannot act in once (by the ``contexts`` check), and the meter checks say what they skipped because
of it. A check called on its own caches nothing. Each topic's meter is looked up in the context its
events are sent in (``TOPIC_<T>_STRIPE_CONTEXT``; the platform account without one).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from connector.commands.check_result import CheckResult, Status, plural
from connector.commands.prologue import redactor
from connector.config.settings import Settings, TopicSettings
from connector.config.topics import topic_env_key

STRIPE_TIMEOUT_S = 10.0  # per Stripe request (no retries: a preflight reports, it does not insist)

_RUN_CACHE: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "kafka_stripe_check_cache", default=None
)


@contextlib.contextmanager
def shared_meter_listing() -> Iterator[None]:
    """Within this block the checks list the meters once and share the answer (or the error)."""
    token = _RUN_CACHE.set({})
    try:
        yield
    finally:
        _RUN_CACHE.reset(token)


def _stripe_client(settings: Settings, context: str | None = None) -> Any:
    import httpx

    from connector.stripe.v1 import StripeClient

    sender = settings.sender
    timeout = httpx.Timeout(
        min(sender.http_read_timeout_s, STRIPE_TIMEOUT_S),
        connect=min(sender.http_connect_timeout_s, STRIPE_TIMEOUT_S),
    )
    return StripeClient.from_settings(settings.stripe, timeout=timeout, max_retries=0, context=context)


def _cache_key(context: str | None) -> str:
    return "meters" if context is None else f"meters@{context}"


def meters_in(settings: Settings, context: str | None = None) -> list[Any]:
    """Every meter of the account, or of ``context`` (cached for the rest of a ``run_checks``;
    errors too)."""
    cache = _RUN_CACHE.get()
    key = _cache_key(context)
    if cache is not None and key in cache:
        cached = cache[key]
        if isinstance(cached, BaseException):
            raise cached
        return list(cached)
    try:
        with _stripe_client(settings, context) as client:
            meters: list[Any] = client.list_meters()
    except Exception as exc:
        if cache is not None:
            cache[key] = exc
        raise
    if cache is not None:
        cache[key] = meters
    return meters


def static_contexts(settings: Settings) -> dict[str, list[str]]:
    """Each context named by ``TOPIC_<T>_STRIPE_CONTEXT``, with its topics (records' own contexts,
    from a context field, are not known before they arrive)."""
    found: dict[str, list[str]] = {}
    for topic in settings.topics:
        if topic.stripe_context is not None:
            found.setdefault(topic.stripe_context, []).append(topic.name)
    return found


def _context_meters(settings: Settings, context: str | None) -> list[Any] | str:
    """The meters of ``context`` for the meter checks, or why they cannot be had: a context the key
    cannot act in is the ``contexts`` check's failure, said once there."""
    from connector.stripe.v1 import StripeApiError

    try:
        return meters_in(settings, context)
    except StripeApiError:
        return f"not checked: the key cannot act in context {context} (see the contexts check)"


def _meters_for(name: str, settings: Settings) -> list[Any] | CheckResult:
    """The meters a meter-based check works on, or its result when it cannot: skipped within
    ``run_checks`` when the ``stripe`` check already failed, failed when listing the meters fails."""
    from connector.stripe.v1 import StripeApiError

    cache = _RUN_CACHE.get()
    if cache is not None and isinstance(cache.get("meters"), Exception):
        return CheckResult(name, "skipped", "not checked: Stripe could not be asked (see the stripe check)")
    try:
        return meters_in(settings)
    except StripeApiError as exc:
        return CheckResult(name, "failed", redactor(settings)(f"could not list the meters: {exc}"))


def check_stripe(settings: Settings) -> CheckResult:
    """The API key works (listing meters succeeds); its mode (test or live) is stated."""
    from connector.stripe.v1 import StripeApiError

    stripe = settings.stripe
    mode = "live" if stripe.livemode else "test"
    key = stripe.api_key.masked()
    try:
        meters = meters_in(settings)
    except StripeApiError as exc:
        return CheckResult("stripe", "failed", redactor(settings)(str(exc)), (f"key {key} ({mode} mode)",))
    stated = {m.livemode for m in meters}
    if stated and stated != {stripe.livemode}:
        return CheckResult(
            "stripe",
            "failed",
            f"the key {key} looks like a {mode}-mode key, but Stripe answered with objects of the other mode",
        )
    what = (
        "test mode: no real customer is billed"
        if not stripe.livemode
        else "LIVE mode: usage is billed to real customers"
    )
    active = sum(1 for m in meters if m.active)
    return CheckResult(
        "stripe",
        "ok",
        f"key {key} accepted by {stripe.api_base}: {what}",
        (f"{len(meters)} meter(s), {active} active; Stripe-Version {stripe.api_version}",),
    )


def check_meters(settings: Settings) -> CheckResult:
    """Each topic's event_name has an active meter, in the topic's context, whose customer and value
    payload keys match."""
    platform = _meters_for("meters", settings)
    if isinstance(platform, CheckResult):
        return platform
    findings = [_topic_meter(settings, topic) for topic in settings.topics]
    details = tuple(detail for _, detail in findings)
    problems = sum(1 for state, _ in findings if state == "problem")
    unchecked = sum(1 for state, _ in findings if state == "unchecked")
    count = sum(1 for state, _ in findings if state in ("ok", "problem"))
    if problems:
        summary = f"{problems} of {count + unchecked} topic(s) have no usable meter"
        return CheckResult("meters", "failed", summary, details)
    if not count:
        summary = "no topic's meter could be checked" if unchecked else "no topic names an event name"
        return CheckResult("meters", "skipped", summary, details)
    summary = f"{plural(count, 'topic')}: each event_name has an active meter with matching payload keys"
    if unchecked:
        summary += f"; {unchecked} not checked (a context the key cannot act in)"
        return CheckResult("meters", "warning", summary, details)
    return CheckResult("meters", "ok", summary, details)


def _topic_meter(settings: Settings, topic: TopicSettings) -> tuple[str, str]:
    """(ok | problem | unchecked | none, the detail line) for one topic's meter in its context."""
    label = topic.name if topic.stripe_context is None else f"{topic.name} (context {topic.stripe_context})"
    if topic.kind == "corrections" and not topic.event_name:
        return "none", (
            f"{label}: a corrections topic without TOPIC_{topic_env_key(topic.name)}_EVENT_NAME corrects "
            "any event name: each correction goes to its original's meter, none to check here"
        )
    meters = _context_meters(settings, topic.stripe_context)
    if isinstance(meters, str):
        return "unchecked", f"{label}: {meters}"
    active_names = sorted({m.event_name for m in meters if m.active})
    problem, detail = _meter_finding(topic, meters, active_names, label)
    if not problem and topic.kind == "corrections":
        detail += _compensation_note(topic, meters)
    return ("problem" if problem else "ok"), detail


def _compensation_note(topic: TopicSettings, meters: Sequence[Any]) -> str:
    meter = next(m for m in meters if m.event_name == topic.event_name and m.active)
    if meter.formula == "sum":
        return "; corrections after Stripe's 24 hours are compensated (sum)"
    return (
        f"; its formula is {meter.formula}: corrections after Stripe's 24 hours cannot be compensated and "
        "are dead-lettered (adjustment_window_passed)"
    )


def _meter_finding(
    topic: TopicSettings, meters: Sequence[Any], active_names: Sequence[str], label: str | None = None
) -> tuple[bool, str]:
    """(whether it is a problem, the detail line) for one topic's meter."""
    prefix = f"TOPIC_{topic_env_key(topic.name)}_"
    name = topic.name if label is None else label
    matching = [m for m in meters if m.event_name == topic.event_name]
    active = [m for m in matching if m.active]
    if not active and matching:
        ids = ", ".join(m.id for m in matching)
        return True, (
            f"{name}: the meter for event_name {topic.event_name!r} ({ids}) is inactive: "
            "Stripe refuses its events (archived_meter); reactivate it "
            "(POST /v1/billing/meters/{id}/reactivate)"
        )
    if not active:
        known = ", ".join(repr(n) for n in active_names[:10]) or "none"
        return True, (
            f"{name}: no meter has event_name {topic.event_name!r} ({prefix}EVENT_NAME); "
            f"active meters' event names: {known}. Create one (POST /v1/billing/meters) or fix "
            "the name: until then Stripe drops these events (no_meter)"
        )
    meter = active[0]
    refusal = window_refusal(topic, meter, name) or aggregation_refusal(topic, meter, name)
    if refusal is not None:
        return True, refusal
    wrong: list[str] = []
    if meter.customer_key != topic.customer_key:
        wrong.append(
            f"it reads the customer from payload key {meter.customer_key!r} but the connector writes it "
            f"under {topic.customer_key!r}: set {prefix}CUSTOMER_KEY={meter.customer_key}"
        )
    if meter.value_key != topic.value_key:
        wrong.append(
            f"it reads the value from payload key {meter.value_key!r} but the connector writes it under "
            f"{topic.value_key!r}: set {prefix}VALUE_KEY={meter.value_key}"
        )
    if wrong:
        return True, f"{name}: meter {meter.id} ({topic.event_name!r}): " + "; ".join(wrong)
    return False, (
        f"{name}: meter {meter.id} {meter.display_name!r} (active, {meter.formula}) counts "
        f"{topic.event_name!r}; payload keys {meter.customer_key!r} and {meter.value_key!r} match"
    )


def window_refusal(topic: TopicSettings, meter: Any, name: str | None = None) -> str | None:
    """Why ``topic`` cannot be sent to ``meter``, a pre-aggregated meter (one with an event_time_window);
    None when it can: the topic is pre-aggregated, so the connector sends running window totals."""
    window = meter.event_time_window
    if window is None or topic.aggregate_s:
        return None
    return (
        f"{name or topic.name}: meter {meter.id} ({meter.event_name!r}) has event_time_window={window}: "
        f"Stripe keeps only the most recently received event per customer and {window}, so one event per "
        f"record would bill only the last record of each {window}. Set "
        f"TOPIC_{topic_env_key(topic.name)}_AGGREGATE (e.g. 1m) so the connector sends each customer's "
        f"running total for the {window}, or use a meter without event_time_window"
    )


def aggregation_refusal(topic: TopicSettings, meter: Any, name: str | None = None) -> str | None:
    """Why ``topic``'s records cannot be pre-aggregated for ``meter``; None when they can."""
    if not topic.aggregate_s or meter.formula not in ("count",):
        return None
    return (
        f"{name or topic.name}: meter {meter.id} ({meter.event_name!r}) counts events (formula count), so "
        "one event per aggregate would count aggregates, not records; remove "
        f"TOPIC_{topic_env_key(topic.name)}_AGGREGATE or use a sum meter"
    )


def window_refusals(settings: Settings, meters: Sequence[Any], context: str | None = None) -> list[str]:
    """``window_refusal`` for every topic sent in ``context`` (None: the platform account) whose active
    meter among ``meters`` (that account's) is pre-aggregated: ``run`` refuses them."""
    refusals: list[str] = []
    for topic in settings.topics:
        if topic.stripe_context != context or not topic.event_name:
            continue
        meter = next((m for m in meters if m.event_name == topic.event_name and m.active), None)
        refusal = None
        if meter is not None:
            refusal = window_refusal(topic, meter) or aggregation_refusal(topic, meter)
        if refusal is not None:
            refusals.append(refusal)
    return refusals


def check_billing(settings: Settings) -> CheckResult:
    """An active metered price (or plan) bills each topic's meter, in the topic's context; a warning
    when none does."""
    from connector.stripe.v1 import StripeApiError

    platform = _meters_for("billing", settings)
    if isinstance(platform, CheckResult):
        return platform
    details: list[str] = []
    billed: dict[tuple[str | None, str], bool] = {}  # (context, meter id) -> billed: one lookup each
    unchecked = 0
    try:
        for context, topics in _by_context(settings).items():
            meters = _context_meters(settings, context)
            unchecked += len(topics) if isinstance(meters, str) else 0
            with _stripe_client(settings, context) as client:
                for topic in topics:
                    details.append(_billing_of(client, topic, meters, billed))
    except StripeApiError as exc:
        summary = redactor(settings)(f"could not list prices or plans: {exc}")
        return CheckResult("billing", "failed", summary, tuple(details))
    checked, unbilled = len(billed), sum(1 for ok in billed.values() if not ok)
    if not checked:
        return CheckResult("billing", "skipped", "no topic has an active meter to look up", tuple(details))
    summary = f"every meter ({checked}) is billed by a metered price"
    if unbilled:
        summary = f"{unbilled} of {checked} meter(s) billed by no price or plan"
    if unchecked:
        summary += f"; {unchecked} topic(s) not checked (a context the key cannot act in)"
    status: Status = "warning" if unbilled or unchecked else "ok"
    return CheckResult("billing", status, summary, tuple(details))


def _by_context(settings: Settings) -> dict[str | None, list[TopicSettings]]:
    """The topics that name an event name, by the context their events are sent in."""
    grouped: dict[str | None, list[TopicSettings]] = {}
    for topic in settings.topics:
        if topic.event_name:
            grouped.setdefault(topic.stripe_context, []).append(topic)
    return grouped


def _billing_of(
    client: Any, topic: TopicSettings, meters: list[Any] | str, billed: dict[tuple[str | None, str], bool]
) -> str:
    """The detail line of one topic's billing; records in ``billed`` whether its meter is billed."""
    context = topic.stripe_context
    label = topic.name if context is None else f"{topic.name} (context {context})"
    if isinstance(meters, str):
        return f"{label}: {meters}"
    meter = next((m for m in meters if m.event_name == topic.event_name and m.active), None)
    if meter is None:
        return f"{label}: not checked, no active meter (see the meters check)"
    if (context, meter.id) in billed:
        return f"{label}: meter {meter.id}, as above"
    billed_by = _billed_by(client, meter.id)
    billed[(context, meter.id)] = bool(billed_by)
    if billed_by:
        return f"{label}: meter {meter.id} is billed by {', '.join(billed_by[:5])}"
    return (
        f"{label}: no active price or plan bills meter {meter.id}: usage is recorded but "
        f"not billed; attach it to a price (POST /v1/prices with recurring[usage_type]=metered, "
        f"recurring[meter]={meter.id})"
    )


def _billed_by(client: Any, meter_id: str) -> list[str]:
    """Active prices billing the meter, else active plans (older accounts and API versions)."""
    from connector.stripe.v1 import StripeApiError

    try:
        prices = client.prices_for_meter(meter_id)
    except StripeApiError as exc:
        if exc.status != 400:  # 400: this API version knows no recurring[meter] filter: ask the plans
            raise
        prices = []
    if prices:
        return [f"price {p.get('id')} ({_amount(p)})" for p in prices]
    return [f"plan {p.get('id')} ({_amount(p)})" for p in client.plans_for_meter(meter_id)]


def _amount(item: Mapping[str, Any]) -> str:
    amount = item.get("unit_amount_decimal") or item.get("amount_decimal") or item.get("unit_amount")
    currency = str(item.get("currency") or "").upper()
    return f"{amount} {currency} per unit".strip() if amount is not None else currency or "no amount"


def check_customers(settings: Settings) -> CheckResult:
    """The key may read customers, as verifying them before sending needs (CONNECTOR_VERIFY_CUSTOMERS)."""
    from connector.stripe.directory import StripeDirectory
    from connector.stripe.v1 import StripeApiError

    validation = settings.validation
    if not validation.verify_customers:
        return CheckResult(
            "customers",
            "skipped",
            "CONNECTOR_VERIFY_CUSTOMERS=false: customers are not checked before sending",
        )
    cache = _RUN_CACHE.get()
    if cache is not None and isinstance(cache.get("meters"), Exception):
        return CheckResult(
            "customers", "skipped", "not checked: Stripe could not be asked (see the stripe check)"
        )
    try:
        with _stripe_client(settings) as client:
            problem = StripeDirectory(client).customers_problem()
    except StripeApiError as exc:
        return CheckResult("customers", "failed", redactor(settings)(f"could not list customers: {exc}"))
    if problem is not None:
        return CheckResult("customers", "failed", redactor(settings)(problem))
    return CheckResult(
        "customers",
        "ok",
        "the key may read customers: events of a customer Stripe does not know wait up to "
        f"{validation.unknown_customer_wait_s:g} s (CONNECTOR_UNKNOWN_CUSTOMER_WAIT_S), then go to the "
        "dead-letter topic as customer_not_found",
    )
