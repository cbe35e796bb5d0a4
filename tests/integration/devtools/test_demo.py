"""``kafka-stripe demo`` end to end: each customer's usage reaches Stripe, each malformed record the DLQ."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from connector.config.settings import ENV_PREFIXES
from connector.devtools.demo import DEFAULT_CUSTOMERS

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.slow


def test_demo_bills_every_customer_and_dead_letters_the_malformed() -> None:
    # The demo brings its own broker and emulator; a broker chosen for the test session must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    result = subprocess.run(
        [sys.executable, "-m", "connector", "demo", "--records", "3000", "--seed", "7"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = result.stdout
    assert result.returncode == 0, f"exit {result.returncode}\n{output}\n{result.stderr}"
    assert "Traceback" not in output + result.stderr

    customer_rows = [line.split() for line in output.splitlines() if line.strip().startswith("cus_")]
    assert len(customer_rows) == DEFAULT_CUSTOMERS, output
    for row in customer_rows:
        # ... records, produced total, Stripe summary, match
        assert row[-1] == "yes", output
        assert row[-2] == row[-3], output
    total = next(line for line in output.splitlines() if line.strip().startswith("all customers"))
    assert total.split()[-1] == "yes", output

    dead_letters = re.search(r"dead-lettered (\d+) records in \S+, (\d+) malformed produced\s+(\S+)", output)
    assert dead_letters is not None, output
    dead, malformed, verdict = dead_letters.groups()
    assert int(malformed) > 0
    assert dead == malformed and verdict == "yes", output
    assert output.rstrip().splitlines()[-1].startswith("OK:"), output
