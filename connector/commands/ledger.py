"""``kafka-stripe ledger show|rewind``: read the delivery ledger's marks, or move one back on purpose.

A mark says which offset of a partition every record below is done (delivered or dead-lettered); the
connector skips records below it whatever group reads them. ``rewind`` writes a lower mark so that the
next run sends those records again: if Stripe no longer remembers their identifiers (24 hours), they are
billed again, which is why it insists on ``--yes``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from connector.commands import prologue
from connector.config.secrets import Redactor
from connector.config.settings import Settings
from connector.errors import ConnectorError
from connector.kafka.delivery_ledger import LedgerKey, LedgerMark, LedgerWriter, read_ledger

TIMEOUT_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="ledger_command", metavar="ACTION")
    show = actions.add_parser("show", help="print the delivery ledger's marks")
    show.add_argument("--topic", help="only this topic's marks")
    show.add_argument("--json", action="store_true", help="print JSON")
    rewind = actions.add_parser("rewind", help="move a mark back: the next run sends those records again")
    rewind.add_argument("--topic", required=True)
    rewind.add_argument("--partition", required=True, type=int)
    rewind.add_argument("--to", required=True, type=int, dest="offset", help="the new, lower mark")
    rewind.add_argument("--event-name", help="the meter event name, when several share the partition")
    rewind.add_argument("--namespace", help="the ledger namespace, when several share the partition")
    rewind.add_argument("--yes", action="store_true", help="confirm: the rewound records may be billed again")


def run(args: argparse.Namespace) -> int:
    loaded = prologue.load("ledger")
    if loaded is None:
        return prologue.EXIT_INVALID
    if args.ledger_command not in ("show", "rewind"):
        return prologue.refuse("ledger", "usage: kafka-stripe ledger show|rewind …", loaded.redact)
    try:
        marks = _read(loaded.settings)
    except ConnectorError as exc:
        return prologue.refuse("ledger", str(exc), loaded.redact)
    if args.ledger_command == "show":
        return _show(marks, args.topic, args.json)
    return _rewind(loaded.settings, marks, args, loaded.redact)


def _read(settings: Settings) -> dict[LedgerKey, LedgerMark]:
    from confluent_kafka import Consumer

    config = dict(settings.consumer_config())
    return read_ledger(Consumer, config, settings.pipeline.ledger_topic, timeout_s=TIMEOUT_S)


def _current_id(settings: Settings, topic: str) -> str | None:
    """The topic's identifier namespace now (configured, or its topic id); None when the cluster does not
    say (then every mark under the topic's name is a candidate)."""
    from connector.kafka.topics import current_namespace

    configured = next((t.namespace for t in settings.topics if t.name == topic), None)
    try:
        return current_namespace(dict(settings.producer_config()), topic, configured)
    except Exception:  # no id from the cluster (or no answer): fall back to the name alone
        return None


def _show(marks: dict[LedgerKey, LedgerMark], topic: str | None, as_json: bool) -> int:
    rows = sorted(
        ((k, m) for k, m in marks.items() if topic is None or m.topic == topic),
        key=lambda row: (row[1].topic, row[0].partition, row[0].namespace, row[0].event_name),
    )
    if as_json:
        print(json.dumps([{**k._asdict(), **m._asdict()} for k, m in rows], indent=2))
        return 0
    if not rows:
        print("no marks" + (f" for topic {topic!r}" if topic else ""))
        return 0
    print(f"{'topic':<30} {'partition':>9} {'mark':>12}  {'event name':<20} {'topic id':<22}  namespace")
    for key, mark in rows:
        print(
            f"{mark.topic:<30} {key.partition:>9} {mark.mark:>12}  {key.event_name:<20} {key.topic_id:<22}  "
            f"{key.namespace}"
        )
    return 0


def _rewind(settings: Settings, marks: dict[LedgerKey, LedgerMark], args: Any, redact: Redactor) -> int:
    # The topic as it is now: marks of an earlier topic of the same name (re-created since) are left alone.
    topic_id = _current_id(settings, args.topic)
    matching = [
        (k, m)
        for k, m in marks.items()
        if m.topic == args.topic
        and (topic_id is None or k.topic_id == topic_id)
        and k.partition == args.partition
        and (args.event_name is None or k.event_name == args.event_name)
        and (args.namespace is None or k.namespace == args.namespace)
    ]
    where = f"{args.topic}[{args.partition}]"
    if not matching:
        return prologue.refuse("ledger", f"no mark for {where} in the ledger", redact)
    if len(matching) > 1:
        options = ", ".join(f"--namespace {k.namespace} --event-name {k.event_name}" for k, _ in matching)
        return prologue.refuse("ledger", f"several marks for {where}: choose one with {options}", redact)
    (key, mark), = matching
    if not 0 <= args.offset < mark.mark:
        below = f"--to must be below the current mark of {where} ({mark.mark})"
        return prologue.refuse("ledger", below, redact)
    warning = (
        f"rewinding {where} from {mark.mark} to {args.offset}: the next run sends offsets {args.offset}–"
        f"{mark.mark - 1} again, and Stripe bills them again if it no longer remembers their identifiers "
        "(24 hours)"
    )
    if not args.yes:
        return prologue.refuse("ledger", warning + "; add --yes to do it", redact)
    from confluent_kafka import Producer

    writer = LedgerWriter(Producer(dict(settings.producer_config())), settings.pipeline.ledger_topic)
    writer.write(key, args.offset, mark.topic, rewind=True)
    if writer.flush(TIMEOUT_S) or writer.failures():
        return prologue.refuse("ledger", f"the ledger write for {where} was not acknowledged", redact)
    print(warning + ": done", file=sys.stderr)
    return 0
