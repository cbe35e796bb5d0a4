"""``benchmarks/e2e.py --quick`` runs to the end and every contender gets every record through.

Only counts are checked, never timings: the figures of a 20,000-record run on a shared machine mean
nothing. The script brings its own embedded broker and emulator, whatever broker the suite uses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]


def test_quick_run_delivers_every_record_for_every_contender(tmp_path: Path) -> None:
    report = tmp_path / "e2e.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.e2e", "--quick", "--json", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    output = done.stdout[-6000:] + done.stderr[-4000:]
    assert done.returncode == 0, output
    assert "every record delivered for every contender: yes" in done.stdout, output

    figures = json.loads(report.read_text())
    records, docs_records = figures["records"], figures["docs_records"]
    rows = figures["rows"]
    assert figures["all_ok"] is True
    contenders = {(row["scenario"].split()[0].rstrip(","), row["contender"]) for row in rows}
    assert contenders == {
        (kind, name)
        for kind in ("backlog", "steady")
        for name in ("ceiling", "docs", "kafka-stripe", "workers", "aggregated")
        if not (kind == "steady" and name in ("ceiling", "aggregated"))
    }, contenders
    for row in rows:
        where = f"{row['scenario']} / {row['contender']}: {row['problem']}"
        assert row["ok"], where
        assert row["exit_code"] == 0, where
        if row["scenario"].startswith("steady"):
            assert row["late"] == 0 and row["accepted"] == row["expected"] > 0, where
            assert row["p50_ms"] is not None and row["p99_ms"] is not None, where
        elif row["contender"] == "ceiling":
            assert row["committed"] == records, where
            assert row["accepted"] is None, where
        elif row["contender"] == "docs":
            # It stops after its share; Stripe has exactly what it committed, nothing twice.
            assert row["committed"] >= docs_records, where
            assert row["accepted"] == row["committed"], where
            assert row["duplicates"] == 0, where
        elif row["contender"] == "aggregated":
            # Fewer events than records, every record committed, a sample of totals checked (``ok``).
            assert row["committed"] == records > row["accepted"] > 0, where
            assert row["requests"] is not None and 0 < row["requests"] < records / 100, where
        else:
            assert row["committed"] == row["accepted"] == records, where
        if not row["scenario"].startswith("steady"):
            assert row["rate"] > 0 and row["cpu_us"] >= 0 and row["peak_rss"] > 0, where


PIPELINE = [sys.executable, "-m", "benchmarks.pipeline"]


@pytest.mark.parametrize("latency", ["-1", "0"])
def test_pipeline_benchmark_delivers_its_records(latency: str) -> None:
    # The script exits non-zero unless every record was delivered; the figures themselves are not checked.
    done = subprocess.run(
        [*PIPELINE, "--records", "3000", "--repeat", "2", "--latency-ms", latency],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = [line for line in done.stdout.splitlines() if line.startswith("  run ")]
    assert len(runs) == 2 and all("records/s" in line and "sender thread" in line for line in runs), (
        done.stdout
    )
