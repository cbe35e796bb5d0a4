"""``kafka-stripe run``: load the settings and hand them to the pipeline's run loop."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys

from connector.commands import prologue
from connector.config.secrets import Redactor
from connector.config.settings import Settings

# The process entry around the run loop (signals, workers); imported only once the settings are valid.
PIPELINE_MODULE = "connector.runtime.process"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: everything is configured through the environment (see the README)."""


def run(args: argparse.Namespace) -> int:
    """The subcommand: its exit status (0 fine, 1 a failure it found, 2 it could not run)."""
    loaded = prologue.load("run")
    if loaded is None:
        return prologue.EXIT_INVALID
    settings = loaded.settings
    announce(settings)
    namespace = ledger_namespace(settings, loaded.redact)
    if namespace is None:
        return prologue.EXIT_INVALID
    settings = dataclasses.replace(
        settings, pipeline=dataclasses.replace(settings.pipeline, ledger_namespace=namespace)
    )
    refusals = preflight(settings, loaded.redact)
    if refusals:
        print("kafka-stripe run: refusing to start:", file=sys.stderr)
        for refusal in refusals:
            print(f"  - {refusal}", file=sys.stderr)
        return prologue.EXIT_INVALID
    # Imported here: the pipeline's imports (the Kafka client, the sender's event loop) are paid only
    # by a configuration that is valid and allowed to start.
    process = importlib.import_module(PIPELINE_MODULE)
    status: int = process.run(settings)
    return status


def ledger_namespace(settings: Settings, redact: Redactor) -> str | None:
    """The delivery ledger's namespace: ``CONNECTOR_LEDGER_NAMESPACE``, else the Stripe account and mode
    (``acct_….test``), looked up once with the key, so a rotated key of the same account keeps its marks.
    None (after saying why) when it can be neither."""
    from connector.commands.check_stripe import STRIPE_TIMEOUT_S
    from connector.stripe.limits import key_mode
    from connector.stripe.v1 import StripeApiError, StripeClient

    configured = settings.pipeline.ledger_namespace
    if configured:
        return configured
    try:
        with StripeClient.from_settings(settings.stripe, timeout=STRIPE_TIMEOUT_S, max_retries=2) as client:
            account = str(client.get("/v1/account").get("id") or "")
    except StripeApiError as exc:
        account, why = "", redact(str(exc))
    else:
        why = "Stripe's answer has no account id"
    if not account:
        print(
            f"kafka-stripe run: cannot look up the Stripe account for the delivery ledger ({why}); "
            "set CONNECTOR_LEDGER_NAMESPACE (the same value for every deployment billing this account)",
            file=sys.stderr,
        )
        return None
    namespace = f"{account}.{key_mode(settings.stripe.api_key.reveal())}"
    print(f"kafka-stripe run: delivery ledger namespace {namespace}", file=sys.stderr)
    return namespace


def preflight(settings: Settings, redact: Redactor | None = None) -> list[str]:
    """Why the connector must not start against this Stripe account (see ``check_stripe.window_refusals``).

    Meters that cannot be read (a restricted key without read access, Stripe unreachable) are a
    warning, not a refusal: ``kafka-stripe check`` is the place to insist on reading them.
    """
    from connector.commands.check_stripe import STRIPE_TIMEOUT_S, window_refusals
    from connector.stripe.v1 import StripeApiError, StripeClient

    redact = prologue.redactor(settings) if redact is None else redact
    refusals: list[str] = []
    # The platform's meters, and each configured context's: a topic is sent in its own account.
    for context in dict.fromkeys([None, *(t.stripe_context for t in settings.topics if t.stripe_context)]):
        try:
            with StripeClient.from_settings(
                settings.stripe, timeout=STRIPE_TIMEOUT_S, max_retries=1, context=context
            ) as client:
                meters = client.list_meters(status="active")
        except StripeApiError as exc:
            why = redact(str(exc))
            where = "" if context is None else f" in context {context}"
            print(
                f"kafka-stripe run: warning: could not read the meters{where} to check them ({why})",
                file=sys.stderr,
            )
            continue
        refusals += window_refusals(settings, meters, context)
    return refusals


def announce(settings: Settings) -> None:
    """Print the effective configuration, secrets masked, before starting (stderr, the log stream)."""
    redacted = settings.redacted()
    if settings.telemetry.log_format == "json":
        print(json.dumps({"message": "starting", "configuration": redacted}, default=str), file=sys.stderr)
    else:
        # One line, so log shippers keep it as one event; `kafka-stripe check` shows it laid out.
        compact = json.dumps(redacted, default=str, separators=(",", ":"))
        print(f"kafka-stripe run: starting with configuration (secrets masked): {compact}", file=sys.stderr)
    sender = settings.sender
    line = f"rate limit {sender.rate_limit_rps:g} requests/s to Stripe ({sender.rate_limit_source})"
    if settings.telemetry.log_format == "json":
        print(json.dumps({"message": line}), file=sys.stderr)
    else:
        print(f"kafka-stripe run: {line}", file=sys.stderr)
