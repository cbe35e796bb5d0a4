"""``reconcile``'s report: the tally lined up with Stripe's meter event summaries, as text or JSON."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from connector.commands.reconcile_corrections import CorrectionTally
from connector.commands.reconcile_range import WINDOW_SECONDS, iso
from connector.commands.reconcile_tally import Tally

# Stripe aggregates meter events asynchronously: windows ending less than this long ago may still move.
RECENT_S = 15 * 60


@dataclass(frozen=True, slots=True)
class Row:
    """One customer and window: what Kafka says Stripe should hold, and what Stripe holds."""

    customer: str
    window_start: int
    window_end: int
    kafka: Decimal
    stripe: float | None  # None: Stripe could not answer for this customer
    note: str = ""

    @property
    def difference(self) -> Decimal | None:
        if self.stripe is None:
            return None
        return Decimal(repr(self.stripe)) - self.kafka

    @property
    def differs(self) -> bool:
        if self.stripe is None:
            return True
        return not math.isclose(float(self.kafka), self.stripe, rel_tol=1e-12, abs_tol=1e-9)


@dataclass
class Report:
    """A reconciliation: what was read and compared, every customer window, and the warnings."""

    topic: str
    event_name: str
    meter_id: str
    formula: str
    start: int
    end: int
    window: str | None
    tally: Tally
    rows: list[Row]
    partitions: int
    warnings: list[str]
    context: str | None = None  # the Stripe context reconciled; None: the platform account
    corrections: CorrectionTally | None = None  # None: no corrections topic can touch these events

    @property
    def where(self) -> str:
        return "the platform account" if self.context is None else f"context {self.context}"

    @property
    def differences(self) -> list[Row]:
        return [row for row in self.rows if row.differs]


def compare(
    client: Any,
    meter_id: str,
    expected: Mapping[tuple[str, int], Decimal],
    customers: Sequence[str],
    start: int,
    end: int,
    window: str | None,
) -> list[Row]:
    """Fetch Stripe's summaries for ``customers`` and line them up with ``expected``."""
    from connector.stripe.v1 import StripeApiError

    size = WINDOW_SECONDS[window] if window else end - start
    rows: list[Row] = []
    for customer in customers:
        mine = {w: v for (c, w), v in expected.items() if c == customer}
        theirs: dict[int, float] | None
        try:
            summaries = client.meter_event_summaries(meter_id, customer, start, end, window)
        except StripeApiError as exc:
            if exc.status != 400:  # the key, the meter or the network: nothing per customer about it
                raise
            theirs, note = None, f"Stripe: {exc.detail}"  # e.g. "No such customer: 'cus_…'"
            windows = sorted(mine) or [start]
        else:
            theirs = {s.start_time: s.aggregated_value for s in summaries if start <= s.start_time < end}
            note = ""
            windows = sorted(set(mine) | set(theirs))
        for window_start in windows:
            stripe_value = None if theirs is None else theirs.get(window_start, 0.0)
            rows.append(
                Row(
                    customer,
                    window_start,
                    window_start + size,
                    mine.get(window_start, Decimal(0)),
                    stripe_value,
                    note,
                )
            )
    return rows


def _number(value: Decimal | float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def render(report: Report, now: float, show_all: bool = False) -> str:
    """The report as text: what was read, then the differing windows (every window with ``show_all``)."""
    tally = report.tally
    window = f"by {report.window}" if report.window else "one total per customer"
    lines = [
        f"Reconciling topic {report.topic} (event_name {report.event_name!r}) with meter {report.meter_id} "
        f"(formula {report.formula}) in {report.where}",
        f"  range   {iso(report.start)} - {iso(report.end)} (end excluded), {window}",
        f"  Kafka   {tally.read:,} records read from {report.partitions} partition(s); "
        f"{tally.in_range:,} events in range; {tally.duplicates:,} duplicate identifier(s) counted once",
    ]
    if tally.rejected:
        lines.append(
            f"          {sum(tally.rejected.values()):,} record(s) rejected by the mapping, skipped: "
            f"{_codes(tally.rejected)}"
        )
    if tally.other_context:
        lines.append(f"          {tally.other_context:,} record(s) sent in other contexts, skipped")
    if report.corrections is not None:
        lines += _correction_lines(report.corrections)
    customers = len({row.customer for row in report.rows})
    lines.append(f"  Stripe  summaries for {customers} customer(s), {len(report.rows)} customer window(s)")
    lines += [f"  warning: {warning}" for warning in report.warnings]
    shown = report.rows if show_all else report.differences
    if shown:
        width = max(len(row.customer) for row in shown)
        width = max(width, len("customer"))
        lines.append("")
        heads = ("kafka", "stripe", "difference")
        lines.append(
            f"  {'customer':<{width}}  {'window start':<20}  " + "  ".join(f"{h:>18}" for h in heads)
        )
        for row in shown:
            flag = "" if row.differs else "  (same)"
            if row.differs and row.window_end > now - RECENT_S:
                flag = "  (recent: Stripe may still be aggregating)"
            if row.note:
                flag += f"  {row.note}"
            lines.append(
                f"  {row.customer:<{width}}  {iso(row.window_start):<20}  {_number(row.kafka):>18}  "
                f"{_number(row.stripe):>18}  {_number(row.difference):>18}{flag}"
            )
    lines.append("")
    count = len(report.differences)
    if count:
        lines.append(
            f"{count} of {len(report.rows)} customer window(s) differ (difference = stripe - kafka)."
        )
        if report.end > now - RECENT_S:
            lines.append(
                "The range reaches into the last 15 minutes: Stripe aggregates meter events asynchronously, "
                "so recent windows can lag for a few minutes; run again before acting on them."
            )
    else:
        lines.append(f"No differences: {len(report.rows)} customer window(s) match.")
    return "\n".join(lines)


def _codes(counts: Counter[str]) -> str:
    return ", ".join(f"{code} {count}" for code, count in counts.most_common())


def _correction_lines(found: CorrectionTally) -> list[str]:
    """The corrections section of the text report."""
    lines = [f"  Fixes   {found.read:,} correction record(s) read from {', '.join(found.topics)}"]
    if not found.reconciled:
        lines.append(
            f"          not applied: corrections are reconciled for sum and count meters only, this meter's "
            f"formula is {found.formula} ({found.not_applied:,} correction(s) of it read)"
        )
    else:
        lines.append(
            f"          {found.applied:,} applied ({found.cancelled:,} original(s) cancelled, "
            f"{found.replaced:,} replacement(s) added); {found.unmatched:,} unmatched (original not "
            f"among the events in range: not applied); {found.out_of_range:,} outside the range"
        )
    if found.duplicates:
        lines.append(f"          {found.duplicates:,} duplicate correction(s) counted once")
    if found.rejected:
        lines.append(
            f"          {sum(found.rejected.values()):,} rejected by the mapping (dead-lettered by the "
            f"connector), skipped: {_codes(found.rejected)}"
        )
    if found.elsewhere:
        lines.append(f"          {found.elsewhere:,} for other event names or contexts, skipped")
    lines += [f"          unmatched: {sample}" for sample in found.samples]
    if found.inconsistent:
        lines.append(
            f"          {found.inconsistent:,} correction(s) do not describe their original (applied as a "
            "cancel; a compensation after 24 hours lands where the correction says instead):"
        )
        lines += [f"            {sample}" for sample in found.mismatches]
    return lines


def _corrections_json(found: CorrectionTally | None) -> dict[str, Any] | None:
    if found is None:
        return None
    return {
        "topics": list(found.topics),
        "reconciled": found.reconciled,
        "records_read": found.read,
        "applied": found.applied,
        "cancelled": found.cancelled,
        "replaced": found.replaced,
        "unmatched": found.unmatched,
        "out_of_range": found.out_of_range,
        "not_applied": found.not_applied,
        "duplicates": found.duplicates,
        "rejected": dict(found.rejected),
        "elsewhere": found.elsewhere,
        "inconsistent": found.inconsistent,
        "unmatched_samples": found.samples,
        "inconsistent_samples": found.mismatches,
    }


def as_json(report: Report) -> dict[str, Any]:
    """The report as a JSON document (``--json``); numbers as exact decimal strings."""
    tally = report.tally
    return {
        "topic": report.topic,
        "event_name": report.event_name,
        "meter": report.meter_id,
        "formula": report.formula,
        "start": iso(report.start),
        "end": iso(report.end),
        "window": report.window,
        "context": report.context,
        "kafka": {
            "records_read": tally.read,
            "events_in_range": tally.in_range,
            "duplicates": tally.duplicates,
            "rejected": dict(tally.rejected),
            "other_contexts": tally.other_context,
        },
        "corrections": _corrections_json(report.corrections),
        "warnings": report.warnings,
        "differences": len(report.differences),
        "rows": [
            {
                "customer": row.customer,
                "window_start": iso(row.window_start),
                "window_end": iso(row.window_end),
                "kafka": _number(row.kafka),
                "stripe": _number(row.stripe),
                "difference": _number(row.difference),
                "differs": row.differs,
                "note": row.note,
            }
            for row in report.rows
        ],
    }
