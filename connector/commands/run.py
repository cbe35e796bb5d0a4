"""``kafka-stripe run``: load the settings and hand them to the pipeline's run loop."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from connector.commands.check import report_problems
from connector.config.settings import Settings, load_settings
from connector.errors import ConfigurationError

PIPELINE_MODULE = "connector.pipeline.loop"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: everything is configured through the environment (see the README)."""


def run(args: argparse.Namespace) -> int:
    # The edge of the program: the only place, with ``check``, where the environment is read.
    environ = dict(os.environ)
    try:
        settings = load_settings(environ)
    except ConfigurationError as error:
        report_problems("run", error, environ, sys.stderr)
        return 2
    announce(settings)
    refusals = preflight(settings)
    if refusals:
        print("kafka-stripe run: refusing to start:", file=sys.stderr)
        for refusal in refusals:
            print(f"  - {refusal}", file=sys.stderr)
        return 2
    try:
        pipeline = importlib.import_module(PIPELINE_MODULE)
    except ModuleNotFoundError as error:
        if error.name != PIPELINE_MODULE:
            raise  # the pipeline exists but one of its own imports is missing: show the real cause
        print(
            f"kafka-stripe run: the configuration is valid, but this build has no pipeline "
            f"({PIPELINE_MODULE} is not installed yet); nothing to run",
            file=sys.stderr,
        )
        return 1
    status: int = pipeline.run(settings)
    return status


def preflight(settings: Settings) -> list[str]:
    """Why the connector must not start against this Stripe account (see ``check.window_refusals``).

    Meters that cannot be read (a restricted key without read access, Stripe unreachable) are a
    warning, not a refusal: ``kafka-stripe check`` is the place to insist on reading them.
    """
    from connector.commands.check import STRIPE_TIMEOUT_S, window_refusals
    from connector.stripe.v1 import StripeApiError, StripeClient

    try:
        with StripeClient.from_settings(settings.stripe, timeout=STRIPE_TIMEOUT_S, max_retries=1) as client:
            meters = client.list_meters(status="active")
    except StripeApiError as exc:
        why = settings.scrub(str(exc))
        print(f"kafka-stripe run: warning: could not read the meters to check them ({why})", file=sys.stderr)
        return []
    return window_refusals(settings, meters)


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
