"""``check``'s contexts check: the key may act in every Stripe context the topics name statically."""

from __future__ import annotations

from typing import Any

from connector.commands.check_result import CheckResult, plural
from connector.commands.check_stripe import STRIPE_TIMEOUT_S, meters_in, static_contexts
from connector.commands.prologue import redactor
from connector.config.settings import Settings
from connector.config.topics import topic_env_key


def check_contexts(settings: Settings) -> CheckResult:
    """In each context of ``TOPIC_<T>_STRIPE_CONTEXT`` the key lists the meters (as ``check`` and
    ``reconcile`` read them) and creates a meter event session (as ``run`` sends): Stripe refusing
    either is a failure naming the context and Stripe's message. Contexts taken from record fields
    cannot be known before the records arrive: they are named, not checked."""
    from connector.stripe.v1 import StripeApiError

    contexts = static_contexts(settings)
    notes = _field_notes(settings)
    if not contexts:
        if not notes:
            return CheckResult(
                "contexts",
                "skipped",
                "every topic sends in the platform account (no TOPIC_<T>_STRIPE_CONTEXT or CONTEXT_FIELD)",
            )
        return CheckResult(
            "contexts", "skipped", "no context is configured statically; records name their own", notes
        )
    if isinstance(_platform_meters(settings), BaseException):
        return CheckResult(
            "contexts", "skipped", "not checked: Stripe could not be asked (see the stripe check)"
        )
    redact = redactor(settings)
    key = settings.stripe.api_key.masked()
    details: list[str] = []
    refused = 0
    for context, topics in contexts.items():
        where = f"context {context} (topic{'s' * (len(topics) != 1)} {', '.join(topics)})"
        try:
            meters = meters_in(settings, context)
            session = _session_in(settings, context)
        except StripeApiError as exc:
            refused += 1
            details.append(redact(f"{where}: the key {key} cannot act in it: {_stripe_says(exc)}"))
            continue
        if session is not None:
            refused += 1
            details.append(redact(f"{where}: the key {key} cannot send meter events in it: {session}"))
            continue
        active = sum(1 for m in meters if m.active)
        details.append(
            f"{where}: the key acts in it: {len(meters)} meter(s), {active} active; "
            "meter event session created"
        )
    details += notes
    if refused:
        summary = f"{refused} of {plural(len(contexts), 'context')} refused the key {key}"
        return CheckResult("contexts", "failed", redact(summary), tuple(details))
    summary = f"the key acts in {plural(len(contexts), 'context')}: {', '.join(contexts)}"
    return CheckResult("contexts", "ok", summary, tuple(details))


def _field_notes(settings: Settings) -> tuple[str, ...]:
    """What is said of topics whose records name their own context."""
    notes: list[str] = []
    for topic in settings.topics:
        if topic.context_field is None:
            continue
        fallback = (
            f"records without one go to {topic.stripe_context}, checked above"
            if topic.stripe_context is not None
            else "records without one go to the platform account"
        )
        notes.append(
            f"{topic.name}: each record names its context in {topic.context_field!r} "
            f"(TOPIC_{topic_env_key(topic.name)}_CONTEXT_FIELD): records' own contexts are not known in "
            f"advance and are not checked; {fallback}"
        )
    return tuple(notes)


def _platform_meters(settings: Settings) -> list[Any] | BaseException:
    """The platform's listing (shared within ``run_checks``), or why there is none."""
    try:
        return meters_in(settings)
    except Exception as exc:  # refused key, Stripe unreachable: the stripe check says which
        return exc


def _stripe_says(exc: Any) -> str:
    """Stripe's status and own words when it answered; the whole sentence when it did not."""
    if exc.status is None:
        return str(exc)
    return f"Stripe answered {exc.status}: {exc.detail}"


def _session_in(settings: Settings, context: str) -> str | None:
    """Create a meter event session in ``context`` (as ``run`` does); None when Stripe did, else why not."""
    import asyncio

    from connector.errors import ConnectorError
    from connector.stripe.http import AiohttpClient, Timeouts
    from connector.stripe.session import SessionManager

    async def create() -> None:
        timeouts = Timeouts(connect_s=STRIPE_TIMEOUT_S, read_s=STRIPE_TIMEOUT_S, total_s=STRIPE_TIMEOUT_S)
        http = AiohttpClient(timeouts=timeouts, max_connections=1)
        stripe = settings.stripe
        sessions = SessionManager(
            http=http,
            api_key=stripe.api_key,
            api_base=stripe.api_base,
            api_version=stripe.api_version,
            context=context,
        )
        try:
            await sessions.current()
        finally:
            await sessions.aclose()
            await http.aclose()

    try:
        asyncio.run(create())
    except ConnectorError as exc:  # ContextRefused, SessionUnavailable, FatalError (a refused key)
        return getattr(exc, "reason", None) or str(exc)
    return None
