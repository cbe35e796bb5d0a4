"""``kafka-stripe check``: validate the configuration and schemas, and print a readable report."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, TextIO

from connector.errors import ConfigurationError
from connector.settings import Settings, inspect_schema, load_settings, scrub_environ

Status = Literal["ok", "failed", "skipped"]


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
    return CheckResult(
        "configuration",
        "ok",
        f"{count} topic{'s' * (count != 1)} ({topics}); {mode}-mode Stripe key; {registry}",
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


# Run in order. Later checks (Kafka reachability, Stripe key and meters) are appended here; each gets the
# validated settings and returns its own result, so one failing check never hides the others.
CHECKS: list[tuple[str, Check]] = [
    ("configuration", check_configuration),
    ("schemas", check_schemas),
]


def run_checks(settings: Settings, checks: Sequence[tuple[str, Check]] | None = None) -> list[CheckResult]:
    """Run ``checks`` (default: ``CHECKS`` as it is at call time) and collect every result."""
    results: list[CheckResult] = []
    for name, check in CHECKS if checks is None else checks:
        try:
            results.append(check(settings))
        except Exception as error:  # a crashing check is a failed check, reported next to the others
            message = settings.scrub(f"{type(error).__name__}: {error}")
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
    results = run_checks(settings)
    failed = [result for result in results if result.failed]
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
        if failed:
            print(f"{len(failed)} of {len(results)} checks failed.")
        else:
            print(f"All {len(results)} checks passed.")
    return 1 if failed else 0
