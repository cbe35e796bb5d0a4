"""The demo's terminal output: status lines, the live progress line, tables."""

from __future__ import annotations

import math
import time
from decimal import Decimal
from typing import IO

TTY_REFRESH_S = 0.2
LINE_REFRESH_S = 2.0


def n(number: int) -> str:
    return f"{number:,}"


def amount(value: Decimal) -> str:
    # Normalised so 12.500 and 12.5 print alike; "f" keeps it out of exponent notation.
    return f"{value.normalize():,f}" if value else "0"


class Display:
    """Status lines, and a live progress line: redrawn in place on a terminal, periodic otherwise."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last_draw = -math.inf
        self._live = False

    def line(self, text: str = "") -> None:
        self.clear()
        print(text, file=self.stream, flush=True)

    def step(self, label: str, text: str) -> None:
        self.line(f"  {label:<10} {text}")

    def progress(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < (TTY_REFRESH_S if self.tty else LINE_REFRESH_S):
            return
        self._last_draw = now
        if self.tty:
            self.stream.write("\r\x1b[2K  " + text)
            self.stream.flush()
            self._live = True
        else:
            print("  " + text, file=self.stream, flush=True)

    def clear(self) -> None:
        """End the live line so the next output starts on a fresh one."""
        if self._live:
            self.stream.write("\n")
            self.stream.flush()
            self._live = False


def pack(items: list[str], width: int) -> list[str]:
    """Comma-separated items on lines of about ``width``, never breaking an item."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 2 + len(item) <= width:
            lines[-1] += ", " + item
        else:
            if lines:
                lines[-1] += ","
            lines.append(item)
    return lines


def render_table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def fmt(row: list[str]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  " + "   ".join(cells).rstrip()

    return [fmt(headers), "  " + "   ".join("-" * w for w in widths), *(fmt(row) for row in rows)]
