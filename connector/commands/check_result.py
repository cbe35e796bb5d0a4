"""What every ``check`` returns: a named result with a status, a one-line summary and detail lines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from connector.config.settings import Settings

# "warning": the check passed but something deserves attention (e.g. a meter that no price bills);
# it does not fail the command.
Status = Literal["ok", "failed", "skipped", "warning"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one named check: a one-line summary and optional detail lines."""

    name: str
    status: Status
    summary: str
    details: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return self.status == "failed"


Check = Callable[[Settings], CheckResult]


def plural(count: int, noun: str) -> str:
    """``1 topic``, ``2 topics``."""
    return f"{count} {noun}{'s' * (count != 1)}"
