"""The Grafana dashboard and the Prometheus alerts in deploy/ name only metrics the connector exports.

Every PromQL expression (dashboard targets, template variable queries, alert rules) is tokenized: string
literals, label matchers, ranges, grouping label lists, numbers and durations are dropped, and of the
identifiers left, those that are not PromQL functions, aggregations or keywords are metric names. The names
the connector exports come from a real ``Telemetry`` scraped once with every optional part of its snapshot
present and every push method called. Also checked: each alert's runbook link has its heading in the README,
and the dashboard's panel ids are unique.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connector.runtime.metrics import Telemetry
from connector.runtime.snapshot import MeterSnapshot, PartitionSnapshot, SessionSnapshot, Snapshot
from connector.stripe.results import SenderStats

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "deploy" / "grafana" / "kafka-stripe.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
README = REPO / "README.md"

# ------------------------------------------------------------------------------------------ PromQL names

# fmt: off
FUNCTIONS = frozenset(
    {
        "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
        "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
        "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg", "delta",
        "deriv", "end", "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction",
        "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters",
        "double_exponential_smoothing", "hour", "idelta", "increase", "irate", "label_join", "label_replace",
        "last_over_time", "ln", "log10", "log2", "mad_over_time", "max_over_time", "min_over_time", "minute",
        "month", "pi", "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets",
        "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_desc", "sort_by_label", "sort_by_label_desc",
        "sqrt", "start", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh", "time",
        "timestamp", "vector", "year",
    }
)
AGGREGATIONS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
        "quantile", "limitk", "limit_ratio",
    }
)
KEYWORDS = frozenset(
    {
        "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
        "offset", "atan2", "inf", "nan",
    }
)
# fmt: on
GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)"
STRING = r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`'
GRAFANA_VARIABLE = r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]"
TOKEN = re.compile(r"(?P<number>\d[\w.]*)|(?P<name>[A-Za-z_:][\w:]*)(?P<call>\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects; raises ValueError for unbalanced brackets or an unknown function."""
    text = re.sub(STRING, '""', re.sub(GRAFANA_VARIABLE, "x", expr))
    text = re.sub(r"#[^\n]*", " ", text)
    for open_, close in ("()", "{}", "[]"):
        if text.count(open_) != text.count(close):
            raise ValueError(f"unbalanced {open_}{close} in {expr!r}")
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers (their strings are gone already)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(GROUPING, " ", text)  # label lists of by/without/on/ignoring/group_left/group_right
    names = set()
    for token in TOKEN.finditer(text):
        name = token["name"]
        if name is None or name.lower() in KEYWORDS:
            continue
        if token["call"]:
            if name not in FUNCTIONS | AGGREGATIONS:
                raise ValueError(f"unknown function {name!r} in {expr!r}")
        elif name not in AGGREGATIONS:
            names.add(name)
    return names


def test_the_tokenizer_keeps_metric_names_only() -> None:
    expr = """
        sum by (code, job) (rate(kafka_a_total{code=~"async:.*", job="$job", x='b_c{}'}[$__rate_interval]))
        / ignoring (code) group_left sum without(le) (kafka_b offset 5m) > 0.5e3
        and on (job) histogram_quantile(0.99, sum(rate(kafka_c_bucket[1h:1m]))) == bool Inf
        or label_replace(kafka_d, "dst", "$1", "src", "(.*)") unless count(kafka_e) by (topic)  # kafka_f
    """
    assert metric_names(expr) == {"kafka_a_total", "kafka_b", "kafka_c_bucket", "kafka_d", "kafka_e"}
    with pytest.raises(ValueError, match="unknown function 'rat'"):
        metric_names("rat(kafka_a_total[5m])")
    with pytest.raises(ValueError, match="unbalanced"):
        metric_names("sum(rate(kafka_a_total[5m])")


# ------------------------------------------------------------------------------------------ the files


def load_dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return result


def load_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)


def variable_queries(dashboard: dict[str, Any]) -> Iterator[str]:
    """The PromQL inside the query variables' ``label_values(selector, label)`` / ``query_result(expr)``."""
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        found = re.fullmatch(r"\s*(?:label_values\((.+),\s*\w+\)|query_result\((.+)\))\s*", query)
        if found:
            yield found[1] or found[2]


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every expression in both files."""
    dashboard = load_dashboard()
    found = [
        (f"panel {panel['id']} {panel['title']!r}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]
    found += [("template variable", query) for query in variable_queries(dashboard)]
    found += [(f"alert {rule['alert']}", rule["expr"]) for rule in load_rules()]
    return found


# ------------------------------------------------------------------------------------------ exported


def full_snapshot() -> Snapshot:
    """A snapshot carrying every optional part, so that every pulled gauge is scraped."""
    return Snapshot(
        partitions=(PartitionSnapshot("usage", 0, committed=100, end=150),),
        sender=SenderStats(**dict.fromkeys(SenderStats._fields, 2)),
        session=SessionSnapshot("bmes_1", expires_at=1_900.0, created_at=990.0),
        buffered=50,
        meters=(MeterSnapshot("usage", "api_requests"), MeterSnapshot("clicks", "clicks", "no active meter")),
        customers_waiting=3,
        contexts={"platform": SenderStats(**dict.fromkeys(SenderStats._fields, 2))},
        open_aggregates=7,
        late_records=1,
    )


PUSHES: dict[str, Callable[[Telemetry], object]] = {
    "consumed": lambda t: t.consumed(10),
    "batch_done": lambda t: t.batch_done(10, 9, 1, record_times_ms=(1_000_000,)),
    "batch_failed": lambda t: t.batch_failed(),
    "observe_send": lambda t: t.observe_send(0.05),
    "skipped": lambda t: t.skipped(3),
    "dead_lettered": lambda t: t.dead_lettered("stripe_async:archived_meter"),
    "async_errors": lambda t: t.async_errors("archived_meter", 2),
    "async_samples": lambda t: t.async_samples("unmapped"),
    "customer_lookup": lambda t: t.customer_lookup("found"),
    "correction": lambda t: t.correction("replaced"),
    "segment_closed": lambda t: t.segment_closed("window", 500, 5),
    "meter_refresh": lambda t: t.meter_refresh("ok"),
    "paused": lambda t: t.paused(1),
}
# Public methods of Telemetry that push no metric of their own.
NOT_PUSHES = frozenset({"resumed", "observe", "health", "start", "stop"})


def exported_names() -> set[str]:
    """Sample names of one scrape of a real Telemetry: ``_total``, ``_bucket``, ``_sum``, ``_count``..."""
    snapshot = full_snapshot()
    unset = [field for field in Snapshot._fields if getattr(snapshot, field) in (None, ())]
    assert not unset, f"the test's snapshot leaves out {unset}: their gauges would not be scraped"
    methods = {name for name, v in vars(Telemetry).items() if inspect.isfunction(v) and name[0] != "_"}
    uncalled = methods - PUSHES.keys() - NOT_PUSHES
    assert not uncalled, f"Telemetry methods this test does not call (add them to PUSHES): {sorted(uncalled)}"

    telemetry = Telemetry(lambda: snapshot, port=None, clock=lambda: 1_000.0, wall_clock=lambda: 1_000.5)
    for push in PUSHES.values():
        push(telemetry)
    families = list(text_string_to_metric_families(generate_latest(telemetry.registry).decode()))
    empty = [family.name for family in families if not family.samples]
    assert not empty, f"metric families without a sample in the test's scrape: {empty}"
    return {sample.name for family in families for sample in family.samples}


def test_every_metric_the_dashboard_and_alerts_name_is_exported() -> None:
    exported = exported_names()
    assert {"kafka_stripe_meter_active", "kafka_stripe_retries_total"} <= exported  # the scrape is complete
    found = expressions()
    assert len(found) > 20, "too few expressions found: is the dashboard or the rules file empty?"
    missing = []
    for where, expr in found:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        missing += [f"{where}: {name}" for name in sorted(names - exported)]
    assert not missing, "names the connector does not export:\n" + "\n".join(missing)


# ------------------------------------------------------------------------------------------ structure


def readme_anchors() -> set[str]:
    """GitHub's anchors of the README's headings (outside fenced code)."""
    anchors, fenced = set(), False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading[1].strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_alert_links_its_runbook_heading_in_the_readme() -> None:
    anchors = readme_anchors()
    assert "alerts-and-runbook" in anchors
    rules = load_rules()
    assert rules
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert "for" in rule, name
        url = urlsplit(rule["annotations"]["runbook_url"])
        assert url.path.endswith("/README.md"), f"{name}: {url.geturl()}"
        assert url.fragment == name.lower(), f"{name}: the anchor should be its own heading"
        assert url.fragment in anchors, f"{name}: README.md has no heading for #{url.fragment}"
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "an alert name is used twice"


def test_the_dashboard_has_unique_panel_ids_and_one_datasource_variable() -> None:
    dashboard = load_dashboard()
    ids = [panel["id"] for panel in panels(dashboard)]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"panel ids used more than once: {duplicates}"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    assert {"job", "instance"} <= variables.keys()
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", f"panel {panel['id']}"
            assert 'job=~"$job"' in target["expr"], f"panel {panel['id']} ignores the job variable"
