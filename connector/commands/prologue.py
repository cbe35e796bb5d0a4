"""The commands' shared prologue: read the environment once, load the settings or report every problem.

Every subcommand that needs a configuration (run, check, reconcile, dlq) starts here, so they all
refuse an invalid one the same way (every problem listed, exit status 2, never a traceback) and mask
their output with the same ``Redactor`` the logs use: the settings' secrets and anything shaped like a
credential (Stripe keys, session tokens, passwords in URLs).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

from connector.config.environment import load_settings, scrub_environ
from connector.config.secrets import Redactor
from connector.config.settings import Settings
from connector.errors import ConfigurationError

# The exit status of a command that cannot start: an invalid configuration or invalid arguments.
EXIT_INVALID = 2


@dataclass(frozen=True, slots=True)
class Loaded:
    """A command's valid settings and the redactor for everything it prints."""

    settings: Settings
    redact: Redactor


def redactor(settings: Settings) -> Redactor:
    """The redactor for CLI output: the settings' secrets, and credentials of any shape."""
    return Redactor(settings.secrets())


def load(
    command: str,
    *,
    json_problems: bool = False,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> Loaded | None:
    """The settings from the environment (read here, once); None when they are invalid, after every
    problem was printed: on ``err`` as a list, or on ``out`` as JSON with ``json_problems``."""
    values = dict(os.environ if environ is None else environ)
    try:
        settings = load_settings(values)
    except ConfigurationError as error:
        if json_problems:
            problems = [_mask_problem(problem, values) for problem in error.problems]
            document = {"valid": False, "problems": problems}
            print(json.dumps(document, indent=2), file=sys.stdout if out is None else out)
        else:
            report_problems(command, error, values, sys.stderr if err is None else err)
        return None
    return Loaded(settings, redactor(settings))


def report_problems(command: str, error: ConfigurationError, environ: Mapping[str, str], out: TextIO) -> None:
    """The readable list of every configuration problem (never a traceback, never a secret)."""
    count = len(error.problems)
    print(f"kafka-stripe {command}: invalid configuration ({count} problem{'s' * (count != 1)}):", file=out)
    for problem in error.problems:
        print(f"  - {_mask_problem(problem, environ)}", file=out)


def refuse(command: str, reason: str, redact: Redactor, err: TextIO | None = None) -> int:
    """Print why ``command`` cannot go on, masked, and return ``EXIT_INVALID``."""
    print(f"kafka-stripe {command}: {redact(reason)}", file=sys.stderr if err is None else err)
    return EXIT_INVALID


def _mask_problem(problem: str, environ: Mapping[str, str]) -> str:
    # Without valid settings there is no Settings.secrets(): the credential variables' values are
    # masked by name, and whatever is shaped like a credential by the redactor.
    return Redactor()(scrub_environ(problem, environ))
