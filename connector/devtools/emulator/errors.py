"""The emulator's API error: Stripe's status, type, code, message and param, and their v1/v2 envelopes."""

from __future__ import annotations

from collections.abc import Mapping

import orjson

DOC_URL = "https://docs.stripe.com/error-codes/"


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
    """Stripe's masking of keys in messages: the key's prefix, a star for every hidden character and
    the last four characters (``sk_test_********************DgAU``), as quoted from Stripe's answers."""
    for prefix in ("sk_test_", "sk_live_", "rk_test_", "rk_live_", "pk_test_", "pk_live_"):
        if secret.startswith(prefix):
            return prefix + _stars(secret[len(prefix) :], 8)
    return _stars(secret, 12)


def _stars(tail: str, shown_above: int) -> str:
    """``tail`` with every character but the last four starred; all starred when it is short."""
    if len(tail) > shown_above:
        return "*" * (len(tail) - 4) + tail[-4:]
    return "*" * len(tail)


def error_body(error: ApiError, v2: bool) -> bytes:
    """Stripe's error envelope: v2 always has a code and no param; v1 always has every key."""
    code = error.code
    if v2:
        code = code or "invalid_request"
        return orjson.dumps(
            {
                "error": {
                    "type": error.type,
                    "code": code,
                    "message": error.message,
                    "doc_url": DOC_URL + code.replace("_", "-"),
                }
            }
        )
    return orjson.dumps(
        {
            "error": {
                "type": error.type,
                "code": code,
                "message": error.message,
                "param": error.param,
                "doc_url": None if code is None else DOC_URL + code.replace("_", "-"),
            }
        }
    )
