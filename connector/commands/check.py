"""``kafka-stripe check``: validate the configuration, schemas, Kafka topics, the Stripe key and meters.

This module is the command, the local checks (configuration, schemas) and the order the checks run in;
the network checks live next to it: ``check_kafka``, ``check_stripe`` (key, meters, billing),
``check_stream`` and ``check_contexts``. Every check returns a ``check_result.CheckResult`` and never
raises.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict

from connector.commands import prologue
from connector.commands.check_contexts import check_contexts
from connector.commands.check_kafka import check_kafka
from connector.commands.check_result import Check, CheckResult, plural
from connector.commands.check_stream import check_stream
from connector.commands.check_stripe import (
    check_billing,
    check_customers,
    check_meters,
    check_stripe,
    shared_meter_listing,
)
from connector.config.secrets import Redactor
from connector.config.settings import Settings, TopicSettings
from connector.config.topics import inspect_schema, topic_env_key


def check_configuration(settings: Settings) -> CheckResult:
    """The settings loaded (``load_settings`` already listed any problem): summarise what was read."""
    topics = ", ".join(settings.topic_names)
    mode = "live" if settings.stripe.livemode else "test"
    registry = "schema registry configured" if settings.schema_registry is not None else "no schema registry"
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
        details += _kind_and_context(topic)
    return CheckResult(
        "configuration",
        "ok",
        f"{plural(len(settings.topics), 'topic')} ({topics}); {mode}-mode Stripe key; {registry}",
        tuple(details),
    )


def _kind_and_context(topic: TopicSettings) -> list[str]:
    """The configuration lines of a corrections topic, and of a topic sent in a context."""
    prefix = f"TOPIC_{topic_env_key(topic.name)}_"
    lines: list[str] = []
    if topic.kind == "corrections":
        names = f"event name {topic.event_name!r} only" if topic.event_name else "any event name"
        lines.append(f"{topic.name}: corrections of usage already sent ({prefix}KIND=corrections), {names}")
    if topic.stripe_context is not None:
        lines.append(f"{topic.name}: sent in context {topic.stripe_context} ({prefix}STRIPE_CONTEXT)")
    if topic.context_field is not None:
        fallback = topic.stripe_context or "the platform account"
        lines.append(
            f"{topic.name}: each record's context from field {topic.context_field!r} "
            f"({prefix}CONTEXT_FIELD), else {fallback}"
        )
    return lines


def check_schemas(settings: Settings) -> CheckResult:
    """Each topic's schema parses and holds its configured fields (a corrections topic: the fixed
    fields of a correction) with usable types."""
    details: list[str] = []
    problems: list[str] = []
    for topic in settings.topics:
        if topic.kind == "corrections":
            found_details, found_problems = _correction_schema(topic)
            details += found_details
            problems += found_problems
            continue
        report = inspect_schema(topic)
        details.append(f"{topic.name}: {report.path} (record {report.record or '?'}, {topic.wire_format})")
        for found in report.fields:
            details.append(f"  {found.role:<10} {found.path:<28} {found.type or found.note}")
        if topic.context_field is not None:  # its type was checked by the settings, which loaded
            details.append(f"  {'context':<10} {topic.context_field:<28} (TOPIC_<T>_CONTEXT_FIELD)")
        problems.extend(report.problems)
    if problems:
        return CheckResult("schemas", "failed", f"{len(problems)} problem(s)", (*details, *problems))
    return CheckResult(
        "schemas",
        "ok",
        f"{plural(len(settings.topics), 'schema')} parsed; every configured field exists with a usable type",
        tuple(details),
    )


def _correction_schema(topic: TopicSettings) -> tuple[list[str], list[str]]:
    """(details, problems) of a corrections topic's schema: the fixed fields (``config.corrections``)
    are checked as the settings check them; a corrections topic has no customer or value field roles."""
    from connector.avro import schema as avro_schema
    from connector.avro.fields import lookup
    from connector.config.corrections import (
        COORDINATE_FIELDS,
        CORRECTION_FIELDS,
        correction_schema_problems,
    )

    where = f"TOPIC_{topic_env_key(topic.name)}_SCHEMA"
    schema = avro_schema.load(topic.schema_path)
    if schema.record_problem is not None:
        return [f"{topic.name}: {topic.schema_path}"], [f"{where}: {schema.record_problem}"]
    details = [f"{topic.name}: {topic.schema_path} (record {schema.name}, {topic.wire_format}; corrections)"]
    for name in [name for name, _role, _required in CORRECTION_FIELDS] + list(COORDINATE_FIELDS):
        found, _why = lookup(schema, name)
        shown = avro_schema.describe(found, schema.named) if found is not None else "absent"
        details.append(f"  {'correction':<10} {name:<28} {shown}")
    return details, correction_schema_problems(schema, where)


# Run in order; each gets the validated settings and returns its own result, so one failing check never
# hides the others. The network checks (NETWORK_CHECKS) are left out by ``--offline``.
CHECKS: list[tuple[str, Check]] = [
    ("configuration", check_configuration),
    ("schemas", check_schemas),
    ("kafka", check_kafka),
    ("stripe", check_stripe),
    ("stream", check_stream),
    ("contexts", check_contexts),
    ("meters", check_meters),
    ("billing", check_billing),
    ("customers", check_customers),
]
NETWORK_CHECKS = frozenset({"kafka", "stripe", "stream", "contexts", "meters", "billing", "customers"})


def run_checks(
    settings: Settings, checks: Sequence[tuple[str, Check]] | None = None, redact: Redactor | None = None
) -> list[CheckResult]:
    """Run ``checks`` (default: ``CHECKS`` as it is at call time) and collect every result."""
    redact = prologue.redactor(settings) if redact is None else redact
    results: list[CheckResult] = []
    with shared_meter_listing():
        for name, check in CHECKS if checks is None else checks:
            try:
                results.append(check(settings))
            except Exception as error:  # a crashing check is a failed check, reported next to the others
                message = redact(f"{type(error).__name__}: {error}")
                results.append(CheckResult(name, "failed", f"the check crashed: {message}"))
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


def _render_results(results: Sequence[CheckResult]) -> str:
    width = max(len(result.name) for result in results)
    lines: list[str] = []
    for result in results:
        lines.append(f"  {result.status:<7} {result.name:<{width}}  {result.summary}")
        lines += [f"          {detail}" for detail in result.details]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's options (``cli`` calls it only when this subcommand is chosen)."""
    parser.add_argument(
        "--json", action="store_true", help="print the configuration and results as JSON (secrets masked)"
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="only validate the configuration and schemas: do not contact Kafka or Stripe",
    )


def run(args: argparse.Namespace) -> int:
    """The subcommand: its exit status (0 fine, 1 a failure it found, 2 it could not run)."""
    loaded = prologue.load("check", json_problems=args.json)
    if loaded is None:
        return prologue.EXIT_INVALID
    settings, redact = loaded.settings, loaded.redact
    checks = CHECKS
    if getattr(args, "offline", False):
        checks = [(name, check) for name, check in CHECKS if name not in NETWORK_CHECKS]
    results = run_checks(settings, checks, redact)
    if args.json:
        document = {
            "valid": True,
            "configuration": settings.redacted(),
            "checks": [asdict(result) for result in results],
        }
        print(redact(json.dumps(document, indent=2, default=str)))
    else:
        print_report(settings, results, redact)
    return 1 if any(result.failed for result in results) else 0


def print_report(settings: Settings, results: Sequence[CheckResult], redact: Redactor) -> None:
    """The configuration laid out, every check's result, and the verdict."""
    failed = sum(1 for result in results if result.failed)
    warned = sum(1 for result in results if result.status == "warning")
    print("Configuration (secrets masked):")
    configuration = render_configuration(settings.redacted())
    print(redact("\n".join("  " + line for line in configuration.splitlines())))
    print()
    print("Checks:")
    print(redact(_render_results(results)))
    print()
    notes = f" ({warned} warning{'s' * (warned != 1)})" if warned else ""
    if failed:
        print(f"{failed} of {len(results)} checks failed{notes}.")
    else:
        print(f"All {len(results)} checks passed{notes}.")
