"""A local Stripe for meter events: ASGI app, in-memory state and fault controls, in-process or served."""

from connector.emulator.app import DroppedConnection, EmulatorApp, create_app
from connector.emulator.clock import ManualClock
from connector.emulator.config import EmulatorConfig
from connector.emulator.server import EmulatorProcess
from connector.emulator.state import Account, EmulatorState

__all__ = [
    "Account",
    "DroppedConnection",
    "EmulatorApp",
    "EmulatorConfig",
    "EmulatorProcess",
    "EmulatorState",
    "ManualClock",
    "create_app",
]
