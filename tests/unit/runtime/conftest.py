"""Fixtures of the runtime tests: a fake clock and pipeline, and a telemetry served on a free port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connector.runtime.metrics import Telemetry
from tests.unit.runtime.support import WALL, Clock, FakePipeline


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pipeline() -> FakePipeline:
    return FakePipeline()


@pytest.fixture
def telemetry(pipeline: FakePipeline, clock: Clock) -> Iterator[Telemetry]:
    with Telemetry(pipeline, port=0, host="127.0.0.1", clock=clock, wall_clock=lambda: WALL) as served:
        yield served
