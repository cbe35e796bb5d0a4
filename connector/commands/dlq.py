"""``kafka-stripe dlq replay``: send dead-lettered records through mapping and sending again.

After the cause of a rejection is fixed (a meter created, a schema or a customer corrected), each record of
a dead-letter topic is rebuilt as the record it was: the original topic, partition and offset come from
the ``__connect.errors.*`` headers the connector wrote, so a derived identifier (``kafka:{topic}:{p}:{o}``)
is the same as the first attempt's and Stripe deduplicates a record that was in fact delivered (within
its 24-hour identifier window). The record is mapped with the *original* topic's settings and sent with
the connector's ``MeterEventSender``.

Progress is kept in a consumer group of its own (``kafka-stripe-dlq-replay`` by default; never the
connector's), committed after each batch, so a second replay only looks at dead letters that arrived
since. ``--dry-run`` maps and reports without sending or committing. The pass itself is
``dlq_replay.Replay``; dead letters and outcomes are ``dlq_letters``'.
"""

from __future__ import annotations

import argparse
import sys

from connector.commands import prologue
from connector.commands.dlq_replay import DEFAULT_GROUP, Replay
from connector.config.settings import Settings
from connector.errors import ConnectorError

USAGE = "usage: kafka-stripe dlq replay --topic TOPIC.dlq [--dry-run] [--from-beginning | --group G]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="dlq_command", metavar="ACTION")
    replay = commands.add_parser(
        "replay",
        help="map and send the records of a dead-letter topic again, after their cause was fixed",
        description="Map and send the records of a dead-letter topic again, with the original topic's "
        "settings and identifiers; progress is committed to a consumer group of the replay's own.",
    )
    replay.add_argument("--topic", required=True, help="the dead-letter topic, e.g. usage.dlq")
    replay.add_argument(
        "--dry-run", action="store_true", help="show what would be sent and what still fails; send nothing"
    )
    start = replay.add_mutually_exclusive_group()
    start.add_argument(
        "--from-beginning",
        action="store_true",
        help=f"read the whole topic, ignoring what the group ({DEFAULT_GROUP}) committed",
    )
    start.add_argument(
        "--group",
        default=DEFAULT_GROUP,
        help=f"consumer group keeping the replay's progress (default {DEFAULT_GROUP})",
    )
    replay.add_argument("--quiet", action="store_true", help="print only failures, warnings and the totals")


def run(args: argparse.Namespace) -> int:
    """The subcommand: its exit status (0 fine, 1 a failure it found, 2 it could not run)."""
    if getattr(args, "dlq_command", None) != "replay":
        print(USAGE, file=sys.stderr)
        return prologue.EXIT_INVALID
    loaded = prologue.load("dlq replay")
    if loaded is None:
        return prologue.EXIT_INVALID
    settings, redact = loaded.settings, loaded.redact
    refusal = refusal_of(args, settings)
    if refusal is not None:
        return prologue.refuse("dlq replay", refusal, redact)
    replay = Replay(
        settings,
        args.topic,
        group=args.group,
        from_beginning=args.from_beginning,
        dry_run=args.dry_run,
        quiet=args.quiet,
    )
    try:
        return replay.run()
    except ConnectorError as exc:  # ReplayError, a dead-letter topic Kafka cannot read
        return prologue.refuse("dlq replay", str(exc), redact)


def refusal_of(args: argparse.Namespace, settings: Settings) -> str | None:
    """Why these arguments cannot replay anything: a consumed topic, or the connector's own group."""
    if args.topic in settings.topic_names:
        return (
            f"{args.topic!r} is a consumed topic, not a dead-letter topic "
            f"(dead-letter topics: {', '.join(t.dlq_topic for t in settings.topics)})"
        )
    if args.group == settings.kafka.group_id:
        return f"--group {args.group} is the connector's own group (KAFKA_GROUP_ID); use another one"
    return None
