"""The emulator's API error: one exception carrying Stripe's status, type, code, message and param."""

from __future__ import annotations

from collections.abc import Mapping


class ApiError(Exception):
    """An error response; the app renders it in the v1 or v2 shape depending on the route."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers: Mapping[str, str] = headers or {}


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 ``invalid_request_error``."""
    return ApiError(400, message, param=param, code=code)


def missing_param(param: str) -> ApiError:
    return ApiError(400, f"Missing required param: {param}.", param=param, code="parameter_missing")


def unknown_param(param: str) -> ApiError:
    return ApiError(400, f"Received unknown parameter: {param}", param=param, code="parameter_unknown")


def no_such(object_name: str, object_id: str, *, param: str = "id", status: int = 404) -> ApiError:
    return ApiError(status, f"No such {object_name}: '{object_id}'", param=param, code="resource_missing")


def mask_secret(secret: str) -> str:
    """Stripe's masking of keys in messages: the key's prefix, four stars and the last four characters."""
    for prefix in ("sk_test_", "sk_live_", "rk_test_", "rk_live_", "pk_test_", "pk_live_"):
        if secret.startswith(prefix):
            tail = secret[len(prefix) :]
            return prefix + "****" + (tail[-4:] if len(tail) > 8 else "")
    return "****" + (secret[-4:] if len(secret) > 12 else "")
