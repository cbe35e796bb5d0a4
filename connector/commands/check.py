"""``kafka-stripe check``: validate the configuration, schemas, Kafka topics, the Stripe key and meters."""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, TextIO
from urllib.parse import urlsplit

from connector.config.settings import Settings, inspect_schema, load_settings, scrub_environ, topic_env_key
from connector.errors import ConfigurationError

# "warning": the check passed but something deserves attention (e.g. a meter that no price bills);
# it does not fail the command.
Status = Literal["ok", "failed", "skipped", "warning"]

if TYPE_CHECKING:
    from connector.stripe.http import HttpResponse, TransportError

KAFKA_TIMEOUT_S = 10.0  # how long the broker may take to answer the metadata request
STRIPE_TIMEOUT_S = 10.0  # per Stripe request (no retries: a preflight reports, it does not insist)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one named check: a one-line summary and optional detail lines."""

    name: str
    status: Status
    summary: str
    details: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return self.status == "failed"


Check = Callable[[Settings], CheckResult]


def check_configuration(settings: Settings) -> CheckResult:
    """The settings loaded (``load_settings`` already listed any problem): summarise what was read."""
    topics = ", ".join(settings.topic_names)
    mode = "live" if settings.stripe.livemode else "test"
    registry = "schema registry configured" if settings.schema_registry is not None else "no schema registry"
    count = len(settings.topics)
    sender = settings.sender
    details = [f"rate limit {sender.rate_limit_rps:g} requests/s ({sender.rate_limit_source})"]
    for topic in settings.topics:
        variable = f"TOPIC_{topic_env_key(topic.name)}_DECIMAL_VALUES"
        values = (
            f"decimal values allowed ({variable}=true: the Stripe account must have decimals enabled)"
            if topic.decimal_values
            else f"whole numbers only, others dead-lettered as value_not_whole ({variable}=false)"
        )
        details.append(f"{topic.name}: {values}")
    return CheckResult(
        "configuration",
        "ok",
        f"{count} topic{'s' * (count != 1)} ({topics}); {mode}-mode Stripe key; {registry}",
        tuple(details),
    )


def check_schemas(settings: Settings) -> CheckResult:
    """Each topic's schema parses and holds its configured fields with usable types."""
    details: list[str] = []
    problems: list[str] = []
    for topic in settings.topics:
        report = inspect_schema(topic)
        details.append(f"{topic.name}: {report.path} (record {report.record or '?'}, {topic.wire_format})")
        for found in report.fields:
            details.append(f"  {found.role:<10} {found.path:<28} {found.type or found.note}")
        problems.extend(report.problems)
    if problems:
        return CheckResult("schemas", "failed", f"{len(problems)} problem(s)", (*details, *problems))
    count = len(settings.topics)
    return CheckResult(
        "schemas",
        "ok",
        f"{count} schema{'s' * (count != 1)} parsed; every configured field exists with a usable type",
        tuple(details),
    )


# ------------------------------------------------------------------------------------ network checks

# Within one ``run_checks``, the Stripe checks share one listing of the meters: a refused key is then
# reported once (by the ``stripe`` check) and the meter checks say they were skipped because of it.
# Outside ``run_checks`` (a check called on its own) nothing is cached.
_RUN_CACHE: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "kafka_stripe_check_cache", default=None
)


class _LogLines(logging.Handler):
    """Collects librdkafka's log lines (why a connection failed) instead of printing them on stderr."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # "FAIL [rdkafka#producer-1] [thrd:host:9092/bootstrap]: host:9092/bootstrap: Connect to ... failed:
        # Connection refused (after 0ms in state CONNECT)" -> "host:9092/bootstrap: Connect ... refused"
        text = record.getMessage()
        text = re.sub(r"^\S+ \[[^\]]*\] \[thrd:[^\]]*\]: ", "", text)
        self.lines.append(re.sub(r" \(after \d+ms in state \w+\)$", "", text))


def check_kafka(settings: Settings) -> CheckResult:
    """The brokers answer a metadata request, every consumed topic exists, dead-letter topics too."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    handler = _LogLines()
    logger = logging.Logger("kafka_stripe.check.kafka")  # unregistered: never reaches the root logger
    logger.addHandler(handler)
    bootstrap = settings.kafka.bootstrap_servers
    config: dict[str, Any] = {**settings.producer_config(), "logger": logger}
    admin: Any = None
    try:
        admin = AdminClient(config)
        metadata = admin.list_topics(timeout=KAFKA_TIMEOUT_S)
    except KafkaException as exc:
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.poll(0.2)  # serve the log lines that say why
        error = exc.args[0] if exc.args else exc
        text = error.str() if hasattr(error, "str") else str(error)
        why = _distinct_tail(handler.lines, 3)
        return CheckResult(
            "kafka",
            "failed",
            settings.scrub(f"no metadata from {bootstrap} (waited up to {KAFKA_TIMEOUT_S:g} s): {text}"),
            tuple(settings.scrub(line) for line in why),
        )
    brokers = len(metadata.brokers)
    details: list[str] = []
    problems: list[str] = []
    warnings: list[str] = []
    for topic in settings.topics:
        found = metadata.topics.get(topic.name)
        if found is None:
            problems.append(
                f"topic {topic.name!r} does not exist on {bootstrap} (CONNECTOR_TOPICS); create it, "
                "or fix the name"
            )
            continue
        if found.error is not None:
            problems.append(f"topic {topic.name!r}: {found.error.str()}")
            continue
        details.append(f"{topic.name}: {len(found.partitions)} partition(s)")
        if settings.pipeline.on_invalid == "fail":  # CONNECTOR_ON_INVALID=fail: no dead-letter topic
            continue
        dlq = metadata.topics.get(topic.dlq_topic)
        if dlq is None or dlq.error is not None:
            warnings.append(
                f"dead-letter topic {topic.dlq_topic!r} of {topic.name!r} does not exist "
                f"(TOPIC_{topic_env_key(topic.name)}_DLQ_TOPIC): the first rejected record creates it if "
                "the brokers auto-create topics, otherwise the connector stops there; create it now"
            )
        else:
            details.append(f"{topic.dlq_topic}: {len(dlq.partitions)} partition(s) (dead letters)")
    where = f"{bootstrap} answered ({brokers} broker{'s' * (brokers != 1)})"
    if problems:
        return CheckResult(
            "kafka", "failed", f"{where}; {len(problems)} topic problem(s)", (*problems, *warnings, *details)
        )
    count = len(settings.topics)
    summary = f"{where}; {count} topic{'s' * (count != 1)} found"
    if warnings:
        return CheckResult("kafka", "warning", summary, (*warnings, *details))
    return CheckResult("kafka", "ok", summary, tuple(details))


def _distinct_tail(lines: Sequence[str], count: int) -> list[str]:
    tail: list[str] = []
    for line in reversed(lines):
        if line not in tail:
            tail.append(line)
        if len(tail) == count:
            break
    return tail[::-1]


def _stripe_client(settings: Settings) -> Any:
    import httpx

    from connector.stripe.v1 import StripeClient

    sender = settings.sender
    timeout = httpx.Timeout(
        min(sender.http_read_timeout_s, STRIPE_TIMEOUT_S),
        connect=min(sender.http_connect_timeout_s, STRIPE_TIMEOUT_S),
    )
    return StripeClient.from_settings(settings.stripe, timeout=timeout, max_retries=0)


def _meters(settings: Settings) -> list[Any]:
    """Every meter of the account (cached for the rest of a ``run_checks``; errors too)."""
    cache = _RUN_CACHE.get()
    if cache is not None and "meters" in cache:
        cached = cache["meters"]
        if isinstance(cached, BaseException):
            raise cached
        return list(cached)
    try:
        with _stripe_client(settings) as client:
            meters: list[Any] = client.list_meters()
    except Exception as exc:
        if cache is not None:
            cache["meters"] = exc
        raise
    if cache is not None:
        cache["meters"] = meters
    return meters


def _meters_for(name: str, settings: Settings) -> list[Any] | CheckResult:
    """The meters a meter-based check works on, or its result when it cannot: skipped within
    ``run_checks`` when the ``stripe`` check already failed, failed when listing the meters fails."""
    from connector.stripe.v1 import StripeApiError

    cache = _RUN_CACHE.get()
    if cache is not None and isinstance(cache.get("meters"), Exception):
        return CheckResult(name, "skipped", "not checked: Stripe could not be asked (see the stripe check)")
    try:
        return _meters(settings)
    except StripeApiError as exc:
        return CheckResult(name, "failed", settings.scrub(f"could not list the meters: {exc}"))


def check_stripe(settings: Settings) -> CheckResult:
    """The API key works (listing meters succeeds); its mode (test or live) is stated."""
    from connector.stripe.v1 import StripeApiError

    stripe = settings.stripe
    mode = "live" if stripe.livemode else "test"
    key = stripe.api_key.masked()
    try:
        meters = _meters(settings)
    except StripeApiError as exc:
        return CheckResult("stripe", "failed", settings.scrub(str(exc)), (f"key {key} ({mode} mode)",))
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
    """Each topic's event_name has an active meter whose customer and value payload keys match."""
    meters = _meters_for("meters", settings)
    if isinstance(meters, CheckResult):
        return meters
    details: list[str] = []
    problems = 0
    active_names = sorted({m.event_name for m in meters if m.active})
    for topic in settings.topics:
        prefix = f"TOPIC_{topic_env_key(topic.name)}_"
        matching = [m for m in meters if m.event_name == topic.event_name]
        active = [m for m in matching if m.active]
        if not active:
            problems += 1
            if matching:
                ids = ", ".join(m.id for m in matching)
                details.append(
                    f"{topic.name}: the meter for event_name {topic.event_name!r} ({ids}) is inactive: "
                    "Stripe refuses its events (archived_meter); reactivate it "
                    "(POST /v1/billing/meters/{id}/reactivate)"
                )
            else:
                known = ", ".join(repr(n) for n in active_names[:10]) or "none"
                details.append(
                    f"{topic.name}: no meter has event_name {topic.event_name!r} ({prefix}EVENT_NAME); "
                    f"active meters' event names: {known}. Create one (POST /v1/billing/meters) or fix "
                    "the name: until then Stripe drops these events (no_meter)"
                )
            continue
        meter = active[0]
        refusal = window_refusal(topic.name, meter)
        if refusal is not None:
            problems += 1
            details.append(refusal)
            continue
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
            problems += 1
            details.append(f"{topic.name}: meter {meter.id} ({topic.event_name!r}): " + "; ".join(wrong))
        else:
            details.append(
                f"{topic.name}: meter {meter.id} {meter.display_name!r} (active, {meter.formula}) counts "
                f"{topic.event_name!r}; payload keys {meter.customer_key!r} and {meter.value_key!r} match"
            )
    count = len(settings.topics)
    if problems:
        return CheckResult(
            "meters", "failed", f"{problems} of {count} topic(s) have no usable meter", tuple(details)
        )
    return CheckResult(
        "meters",
        "ok",
        f"{count} topic{'s' * (count != 1)}: each event_name has an active meter with matching payload keys",
        tuple(details),
    )


def window_refusal(topic: str, meter: Any) -> str | None:
    """Why ``topic`` cannot be sent to ``meter``, a pre-aggregated meter; None when it can."""
    window = meter.event_time_window
    if window is None:
        return None
    return (
        f"{topic}: meter {meter.id} ({meter.event_name!r}) has event_time_window={window}: Stripe keeps only "
        f"the most recently received event per customer and {window}, so one event per record would bill "
        f"only the last record of each {window}; kafka-stripe does not send window totals yet. Use a meter "
        "without event_time_window for this topic"
    )


def window_refusals(settings: Settings, meters: Sequence[Any]) -> list[str]:
    """``window_refusal`` for every topic whose active meter is pre-aggregated (``run`` refuses them)."""
    refusals: list[str] = []
    for topic in settings.topics:
        meter = next((m for m in meters if m.event_name == topic.event_name and m.active), None)
        refusal = None if meter is None else window_refusal(topic.name, meter)
        if refusal is not None:
            refusals.append(refusal)
    return refusals


def check_stream(settings: Settings) -> CheckResult:
    """The key may create a meter event session, and the meter-events host answers its token.

    An empty stream request (no events: nothing can be recorded) proves the host is reachable and
    knows the token; Stripe's answer to it (400 for no events) is documented nowhere, so any answer
    but a refused token or no answer at all passes.
    """
    import asyncio

    from connector.errors import FatalError
    from connector.stripe.session import SessionUnavailable

    stripe = settings.stripe
    try:
        probe = asyncio.run(_probe_stream(settings))
    except (FatalError, SessionUnavailable) as exc:
        return CheckResult("stream", "failed", settings.scrub(str(exc)))
    host = urlsplit(stripe.meter_events_base).netloc
    mode = "live" if probe.livemode else "test"
    summary = (
        f"meter event session {probe.session_id} created ({mode} mode); "
        f"tokens live {probe.lifetime_s:.0f} s; {host} {probe.stream_answer}"
    )
    if probe.stream_failed:
        return CheckResult("stream", "failed", settings.scrub(summary))
    return CheckResult("stream", "ok", settings.scrub(summary))


@dataclass(frozen=True, slots=True)
class _StreamProbe:
    session_id: str
    livemode: bool
    lifetime_s: float
    stream_answer: str
    stream_failed: bool


async def _probe_stream(settings: Settings) -> _StreamProbe:
    import time

    from connector.stripe.http import AiohttpClient, Timeouts, TransportError
    from connector.stripe.sender import STREAM_PATH
    from connector.stripe.session import SessionManager

    timeouts = Timeouts(connect_s=STRIPE_TIMEOUT_S, read_s=STRIPE_TIMEOUT_S, total_s=STRIPE_TIMEOUT_S)
    http = AiohttpClient(timeouts=timeouts, max_connections=2)
    sessions = SessionManager.from_settings(settings.stripe, settings.sender, http=http)
    try:
        started = time.monotonic()
        session = await sessions.current()
        url = settings.stripe.meter_events_base.rstrip("/") + STREAM_PATH
        try:
            answer: HttpResponse | TransportError = await http.post(url, b'{"events":[]}', session.headers)
        except TransportError as exc:
            answer = exc
    finally:
        await sessions.aclose()
        await http.aclose()
    return _StreamProbe(session.id, session.livemode, session.expires_at - started, *_stream_answer(answer))


def _stream_answer(answer: HttpResponse | TransportError) -> tuple[str, bool]:
    """What the meter-events host's answer to an empty request says, and whether that fails the check."""
    from connector.stripe.http import Action, TransportError, classify

    if isinstance(answer, TransportError):
        return f"did not answer an empty stream request ({answer}): check STRIPE_METER_EVENTS_BASE", True
    outcome = classify(answer, now=0.0)
    where = f"HTTP {answer.status} {outcome.code or ''}".rstrip()
    if outcome.action in (Action.INVALID_TOKEN, Action.RENEW_SESSION):
        return (
            f"refused the session's token ({where}): STRIPE_METER_EVENTS_BASE and STRIPE_API_BASE must "
            "belong to the same Stripe",
            True,
        )
    if outcome.action is Action.FATAL:
        return f"does not serve the meter event stream ({where}): check STRIPE_METER_EVENTS_BASE", True
    if outcome.action in (Action.RETRY, Action.DEFER):
        return f"is throttling or failing ({where}: {outcome.message}); try again", True
    return f"accepted the token ({where} to an empty request; nothing recorded)", False


def check_billing(settings: Settings) -> CheckResult:
    """An active metered price (or plan) bills each topic's meter; a warning when none does."""
    from connector.stripe.v1 import StripeApiError

    meters = _meters_for("billing", settings)
    if isinstance(meters, CheckResult):
        return meters
    details: list[str] = []
    unbilled = 0
    checked = 0
    with _stripe_client(settings) as client:
        for topic in settings.topics:
            meter = next((m for m in meters if m.event_name == topic.event_name and m.active), None)
            if meter is None:
                details.append(f"{topic.name}: not checked, no active meter (see the meters check)")
                continue
            checked += 1
            try:
                billed_by = _billed_by(client, meter.id)
            except StripeApiError as exc:
                return CheckResult(
                    "billing",
                    "failed",
                    settings.scrub(f"could not list prices or plans: {exc}"),
                    tuple(details),
                )
            if billed_by:
                details.append(f"{topic.name}: meter {meter.id} is billed by {', '.join(billed_by[:5])}")
            else:
                unbilled += 1
                details.append(
                    f"{topic.name}: no active price or plan bills meter {meter.id}: usage is recorded but "
                    f"not billed; attach it to a price (POST /v1/prices with recurring[usage_type]=metered, "
                    f"recurring[meter]={meter.id})"
                )
    if not checked:
        return CheckResult("billing", "skipped", "no topic has an active meter to look up", tuple(details))
    if unbilled:
        return CheckResult(
            "billing",
            "warning",
            f"{unbilled} of {checked} meter(s) billed by no price or plan",
            tuple(details),
        )
    return CheckResult(
        "billing", "ok", f"every meter ({checked}) is billed by a metered price", tuple(details)
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


# Run in order; each gets the validated settings and returns its own result, so one failing check never
# hides the others. The network checks (NETWORK_CHECKS) are left out by ``--offline``.
CHECKS: list[tuple[str, Check]] = [
    ("configuration", check_configuration),
    ("schemas", check_schemas),
    ("kafka", check_kafka),
    ("stripe", check_stripe),
    ("stream", check_stream),
    ("meters", check_meters),
    ("billing", check_billing),
]
NETWORK_CHECKS = frozenset({"kafka", "stripe", "stream", "meters", "billing"})


def run_checks(settings: Settings, checks: Sequence[tuple[str, Check]] | None = None) -> list[CheckResult]:
    """Run ``checks`` (default: ``CHECKS`` as it is at call time) and collect every result."""
    results: list[CheckResult] = []
    token = _RUN_CACHE.set({})
    try:
        for name, check in CHECKS if checks is None else checks:
            try:
                results.append(check(settings))
            except Exception as error:  # a crashing check is a failed check, reported next to the others
                message = settings.scrub(f"{type(error).__name__}: {error}")
                results.append(CheckResult(name, "failed", f"the check crashed: {message}"))
    finally:
        _RUN_CACHE.reset(token)
    return results


# ----------------------------------------------------------------------------------------- rendering


def render_configuration(redacted: Mapping[str, object]) -> str:
    """``Settings.redacted()`` as aligned ``section`` / ``  key  value`` lines."""
    sections: list[tuple[str, Mapping[str, object] | None]] = []
    for section, content in redacted.items():
        if section == "topics" and isinstance(content, Mapping):
            sections += [(f"topic {name}", values) for name, values in content.items()]
        else:
            sections.append((section, content if isinstance(content, Mapping) else None))
    width = max((len(str(key)) for _, content in sections if content for key in content), default=0)
    lines: list[str] = []
    for title, content in sections:
        if content is None:
            lines.append(f"{title}: (not configured)")
            continue
        lines.append(title)
        lines += [f"  {key:<{width}}  {_display(value)}" for key, value in content.items()]
    return "\n".join(lines)


def _display(value: object) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "(none)"
    return str(value)


def report_problems(command: str, error: ConfigurationError, environ: Mapping[str, str], out: TextIO) -> None:
    """The readable list of every configuration problem (never a traceback, never a secret)."""
    count = len(error.problems)
    print(f"kafka-stripe {command}: invalid configuration ({count} problem{'s' * (count != 1)}):", file=out)
    for problem in error.problems:
        print(f"  - {scrub_environ(problem, environ)}", file=out)


def _render_results(results: Sequence[CheckResult]) -> str:
    width = max(len(result.name) for result in results)
    lines: list[str] = []
    for result in results:
        lines.append(f"  {result.status:<7} {result.name:<{width}}  {result.summary}")
        lines += [f"          {detail}" for detail in result.details]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the configuration and results as JSON (secrets masked)"
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="only validate the configuration and schemas: do not contact Kafka or Stripe",
    )


def run(args: argparse.Namespace) -> int:
    # The edge of the program: the only place, with ``run``, where the environment is read.
    environ = dict(os.environ)
    try:
        settings = load_settings(environ)
    except ConfigurationError as error:
        if args.json:
            problems = [scrub_environ(problem, environ) for problem in error.problems]
            print(json.dumps({"valid": False, "problems": problems}, indent=2))
        else:
            report_problems("check", error, environ, sys.stderr)
        return 2
    checks = CHECKS
    if getattr(args, "offline", False):
        checks = [(name, check) for name, check in CHECKS if name not in NETWORK_CHECKS]
    results = run_checks(settings, checks)
    failed = [result for result in results if result.failed]
    warned = sum(1 for result in results if result.status == "warning")
    if args.json:
        document = {
            "valid": True,
            "configuration": settings.redacted(),
            "checks": [asdict(result) for result in results],
        }
        print(settings.scrub(json.dumps(document, indent=2, default=str)))
    else:
        print("Configuration (secrets masked):")
        print("\n".join("  " + line for line in render_configuration(settings.redacted()).splitlines()))
        print()
        print("Checks:")
        print(settings.scrub(_render_results(results)))
        print()
        notes = f" ({warned} warning{'s' * (warned != 1)})" if warned else ""
        if failed:
            print(f"{len(failed)} of {len(results)} checks failed{notes}.")
        else:
            print(f"All {len(results)} checks passed{notes}.")
    return 1 if failed else 0
