"""Fixtures shared by the end-to-end pipeline tests: the emulator as a child process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connector.devtools.emulator import EmulatorProcess


@pytest.fixture
def emulator() -> Iterator[Callable[..., str]]:
    """``emulator(**cli_options) -> url``: an emulator child process, stopped after the test."""
    started: list[EmulatorProcess] = []

    def start(**options: Any) -> str:
        process = EmulatorProcess(**options)
        process.start()
        started.append(process)
        return process.url

    yield start
    for process in started:
        process.stop()
