"""Typed getters over environment variables that collect problems and remember what was read."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

_INTEGER = re.compile(r"[+-]?[0-9]+")

# Variables in our own namespaces that are not settings of this module. KAFKA_TEST_BROKER picks the test
# suite's broker (tests/support); it is never a librdkafka property.
IGNORED = frozenset({"KAFKA_TEST_BROKER"})


def show(value: str) -> str:
    """A non-secret value quoted for a problem message, cut short."""
    return repr(value if len(value) <= 60 else value[:57] + "...")


class Reader:
    """Reads variables, remembers which names are known, and collects problems instead of raising."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []
        self.known: set[str] = set()

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def raw(self, name: str) -> str | None:
        """The value, or None when unset or blank (compose files often pass ``VAR=`` for unset)."""
        self.known.add(name)
        value = self.environ.get(name)
        if value is None or not value.strip():
            return None
        return value

    def text(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None else value.strip()

    def required(self, name: str, *, alternative: str = "", aliases: tuple[str, ...] = ()) -> str | None:
        value = self.raw(name)
        if value is None:
            self.problem(f"{name} is required{alternative}{self.near_misses(name, aliases)}")
            return None
        return value.strip()

    def near_misses(self, name: str, aliases: tuple[str, ...] = ()) -> str:
        """Set variables that look like ``name`` (or are other tools' names for it): likely mistakes."""
        similar = difflib.get_close_matches(name, [n for n in self.environ if n != name], n=3, cutoff=0.8)
        similar += [alias for alias in aliases if alias in self.environ and alias not in similar]
        return f" ({', '.join(similar)} is set: a typo?)" if similar else ""

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        if not _INTEGER.fullmatch(value.strip()):
            self.problem(f"{name} must be an integer {bounds}, not {show(value)}")
            return default
        number = int(value)
        if number < minimum or (maximum is not None and number > maximum):
            self.problem(f"{name} must be an integer {bounds}, not {number}")
            return default
        return number

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float = 0.0,
        maximum: float | None = None,
        inclusive: bool = False,
    ) -> float:
        """A finite float above ``minimum`` (or equal to it, ``inclusive``; at most ``maximum``)."""
        value = self.raw(name)
        if value is None:
            return default
        low = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        bounds = low + (f" and <= {maximum:g}" if maximum is not None else "")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            self.problem(f"{name} must be a number {bounds}, not {show(value)}")
            return default
        too_low = number < minimum if inclusive else number <= minimum
        if too_low or (maximum is not None and number > maximum):
            self.problem(f"{name} must be a number {bounds}, not {value.strip()}")
            return default
        return number

    def flag(self, name: str, default: bool) -> bool:
        """``true``/``false`` (also ``1``/``0``, ``yes``/``no``), any case."""
        value = self.raw(name)
        if value is None:
            return default
        normalised = value.strip().lower()
        if normalised in ("true", "1", "yes"):
            return True
        if normalised in ("false", "0", "no"):
            return False
        self.problem(f"{name} must be true or false, not {show(value)}")
        return default

    def choice(self, name: str, default: str, choices: tuple[str, ...], *, upper: bool = False) -> str:
        value = self.raw(name)
        if value is None:
            return default
        normalised = value.strip().upper() if upper else value.strip().lower()
        if normalised not in choices:
            self.problem(f"{name} must be one of {', '.join(choices)}, not {show(value)}")
            return default
        return normalised

    def url(self, name: str, default: str) -> str:
        value = self.text(name, default)
        problem = url_problem(value)
        if problem:
            self.problem(f"{name} {problem}")
            return default
        return value.rstrip("/")

    def unknown(self, prefix: str, *, strict: bool = True) -> None:
        """Report variables under ``prefix`` that nothing read: almost always typos."""
        known = sorted(n for n in self.known if n.startswith(prefix))
        for name in sorted(n for n in self.environ if n.startswith(prefix)):
            if name in self.known or name in IGNORED:
                continue
            similar = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
            if strict:
                hint = f"; did you mean {similar[0]}?" if similar else ""
                self.problem(f"{name} is not a known setting{hint}")
            elif similar:
                # Other tools share this prefix (STRIPE_WEBHOOK_SECRET, ...): only near-misses are flagged.
                self.problem(f"{name} is not a known setting; did you mean {similar[0]}?")


def url_problem(value: str) -> str | None:
    """Why ``value`` is not a usable http(s) base URL, without echoing credentials."""
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        return "is not a valid URL"
    if "@" in parts.netloc:
        # Credentials in a URL would end up in every log line that shows it.
        return "must not contain credentials (user:password@)"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// URL, not {show(value)}"
    if parts.query or parts.fragment:
        return f"must be a base URL without query or fragment, not {show(value)}"
    return None
