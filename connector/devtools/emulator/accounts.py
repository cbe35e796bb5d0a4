"""Accounts v2 (``v2.core.account``), minimal: an account configured as a customer can be metered."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from connector.devtools.emulator.errors import ApiError
from connector.devtools.emulator.ids import new_id
from connector.devtools.emulator.timestamps import format_rfc3339

CONFIGURATIONS = ("customer", "merchant", "recipient")
# Include-dependent response values: null in a response unless the request's ``include`` names them.
INCLUDABLE = (
    *(f"configuration.{name}" for name in CONFIGURATIONS),
    "defaults",
    "future_requirements",
    "identity",
    "requirements",
)
_STRINGS = ("contact_email", "contact_phone", "display_name")
_OBJECTS = ("defaults", "identity")
# account_token (an account token's id) is accepted and ignored: tokens are not emulated.
_FIELDS = frozenset(
    (*_STRINGS, *_OBJECTS, "account_token", "configuration", "dashboard", "include", "metadata")
)


def _bad(message: str, code: str = "parameter_invalid") -> ApiError:
    return ApiError(400, message, code=code)


@dataclass(slots=True)
class CoreAccount:
    id: str
    created: float
    livemode: bool
    configuration: dict[str, dict[str, Any]]  # configuration name -> the settings given
    strings: dict[str, str | None]
    objects: dict[str, dict[str, Any] | None]
    dashboard: str | None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def is_customer(self) -> bool:
        """Whether meter events may name this account as their customer."""
        return "customer" in self.configuration

    def to_json(self, include: list[str]) -> dict[str, Any]:
        configured = [name for name in CONFIGURATIONS if f"configuration.{name}" in include]
        configuration = None
        if configured:
            configuration = {
                name: self.configuration.get(name) if name in configured else None for name in CONFIGURATIONS
            }
        body: dict[str, Any] = {
            "id": self.id,
            "object": "v2.core.account",
            "applied_configurations": [name for name in CONFIGURATIONS if name in self.configuration],
            "closed": False,
            "configuration": configuration,
            "created": format_rfc3339(self.created),
            "dashboard": self.dashboard,
            "future_requirements": None,  # requirements are not emulated
            "livemode": self.livemode,
            "metadata": dict(self.metadata),
            "requirements": None,
        }
        body.update(self.strings)
        for name, value in self.objects.items():
            body[name] = value if name in include else None
        return body


def create_account(body: dict[str, Any], livemode: bool, now: float) -> tuple[CoreAccount, list[str]]:
    """A new account from a ``POST /v2/core/accounts`` body, and the body's ``include`` list."""
    for key in body:
        if key not in _FIELDS:
            raise _bad(f"Received unknown parameter: {key}", "parameter_unknown")
    strings: dict[str, str | None] = {}
    for key in (*_STRINGS, "account_token"):
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            raise _bad(f"{key} must be a string.")
        strings[key] = value
    del strings["account_token"]
    objects: dict[str, dict[str, Any] | None] = {}
    for key in _OBJECTS:
        value = body.get(key)
        if value is not None and not isinstance(value, dict):
            raise _bad(f"{key} must be an object.")
        objects[key] = value
    dashboard = body.get("dashboard")
    if dashboard is not None and dashboard not in ("express", "full", "none"):
        raise _bad("dashboard must be one of `express`, `full`, `none`.")
    account = CoreAccount(
        id=new_id("acct_", 16),
        created=now,
        livemode=livemode,
        configuration=_configuration(body.get("configuration")),
        strings=strings,
        objects=objects,
        dashboard=dashboard,
        metadata=_metadata(body.get("metadata")),
    )
    return account, check_include(body.get("include"))


def _configuration(value: object) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad("configuration must be an object.")
    for name, settings in value.items():
        if name not in CONFIGURATIONS:
            raise _bad(f"Received unknown parameter: configuration.{name}", "parameter_unknown")
        if not isinstance(settings, dict):
            raise _bad(f"configuration.{name} must be an object.")
    return {name: value[name] for name in CONFIGURATIONS if name in value}


def _metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _bad("metadata must be an object whose values are strings.")
    return dict(value)


def check_include(value: object) -> list[str]:
    """The ``include`` list of a request, each entry one of ``INCLUDABLE``."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("include must be an array.")
    for entry in value:
        if entry not in INCLUDABLE:
            listed = ", ".join(f"`{name}`" for name in INCLUDABLE)
            raise _bad(f"include entries must be one of {listed}; got {entry!r}.")
    return list(value)


@dataclass(frozen=True, slots=True)
class PlatformAccount:
    """The account the emulator's keys belong to (``GET /v1/account``): one per emulator instance,
    shared by its test, live and restricted keys as a Stripe account holds both modes. It survives
    ``POST /_emulator/reset``, which clears data, not the account's identity."""

    id: str
    created: int

    @classmethod
    def new(cls, now: float) -> PlatformAccount:
        return cls(id="acct_1" + new_id("", 15), created=int(now))

    def to_json(self) -> dict[str, Any]:
        """A v1 ``account`` object with the fields a standard account always carries; profile and
        compliance details a real account would have filled in are null or empty."""
        return {
            "id": self.id,
            "object": "account",
            "business_profile": {
                "mcc": None,
                "name": None,
                "product_description": None,
                "support_address": None,
                "support_email": None,
                "support_phone": None,
                "support_url": None,
                "url": None,
            },
            "business_type": None,
            "capabilities": {},
            "charges_enabled": True,
            "controller": {"type": "account"},
            "country": "US",
            "created": self.created,
            "default_currency": "usd",
            "details_submitted": True,
            "email": None,
            "metadata": {},
            "payouts_enabled": True,
            "settings": {"dashboard": {"display_name": None, "timezone": "Etc/UTC"}},
            "type": "standard",
        }
