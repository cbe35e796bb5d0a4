"""The ``kafka-stripe`` command line: subcommand dispatch and wiring only."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from connector import __version__

# Subcommand name -> (module, help). Each module exposes ``add_arguments(parser)`` and
# ``run(args) -> int``; only the chosen module is imported, so ``kafka-stripe emulator`` does not
# pay for Kafka imports and a broken optional dependency only breaks its own subcommand.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "emulator": (
        "connector.devtools.emulator.server",
        "run the local Stripe emulator (HTTP server)",
    ),
    "broker": (
        "connector.devtools.broker",
        "run an embedded Kafka-compatible broker (Tansu) for local use",
    ),
    "check": (
        "connector.commands.check",
        "preflight: configuration, schemas, topics, Stripe key, meters, billing",
    ),
    "run": (
        "connector.commands.run",
        "run the connector: consume the configured topics into Stripe meter events",
    ),
    "demo": (
        "connector.devtools.demo",
        "run the connector end to end on an embedded Kafka and the Stripe emulator",
    ),
    "reconcile": (
        "connector.commands.reconcile",
        "compare a topic's usage in a time range with Stripe's summaries",
    ),
    "ledger": (
        "connector.commands.ledger",
        "the delivery ledger: `ledger show` prints its marks, `ledger rewind` moves one back on purpose",
    ),
    "dlq": (
        "connector.commands.dlq",
        "dead-letter topic tools: `dlq replay` sends fixed records to Stripe again",
    ),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; only the selected subcommand's module is imported to add its options."""
    parser = argparse.ArgumentParser(
        prog="kafka-stripe",
        description="Stream usage records from Kafka topics into Stripe meter events.",
    )
    parser.add_argument("--version", action="version", version=f"kafka-stripe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        if name == selected:
            importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: parse, import the chosen subcommand's module, return its exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in arguments if not a.startswith("-")), None)
    parser = build_parser(selected)
    args = parser.parse_args(arguments)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    result: int = module.run(args)
    return result
