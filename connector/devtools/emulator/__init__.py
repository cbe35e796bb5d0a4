"""A local Stripe for meter events: ASGI app, in-memory state and fault controls, in-process or served."""

from connector.devtools.emulator.app import DroppedConnection, EmulatorApp, create_app
from connector.devtools.emulator.clock import ManualClock
from connector.devtools.emulator.config import EmulatorConfig
from connector.devtools.emulator.server import EmulatorProcess
from connector.devtools.emulator.state import EmulatorState
from connector.devtools.emulator.tenant import Account, Tenant

__all__ = [
    "Account",
    "DroppedConnection",
    "EmulatorApp",
    "EmulatorConfig",
    "EmulatorProcess",
    "EmulatorState",
    "ManualClock",
    "Tenant",
    "create_app",
]
