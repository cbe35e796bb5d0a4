"""Typed reading of v1 form parameters with Stripe's errors, and v1 list pagination."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from connector.devtools.emulator.errors import ApiError, invalid, missing_param, unknown_param
from connector.devtools.emulator.forms import FormValue

T = TypeVar("T")

_TRUE = ("true", "True", "1")
_FALSE = ("false", "False", "0")


def _empty(param: str) -> ApiError:
    return ApiError(
        400,
        f"You passed an empty string for '{param}'. We assume empty values are an attempt to unset a "
        f"parameter; however '{param}' cannot be unset. You should remove '{param}' from your request "
        "or supply a non-empty value.",
        param=param,
        code="parameter_invalid_empty",
    )


class Params:
    """A decoded form (or a nested part of one); ``finish()`` rejects every key nobody read."""

    def __init__(self, data: dict[str, FormValue], prefix: str = "") -> None:
        self._data = data
        self._prefix = prefix
        self._used: set[str] = {"expand"} if not prefix else set()
        self._children: list[Params] = []

    def name(self, key: str) -> str:
        return f"{self._prefix}[{key}]" if self._prefix else key

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def raw(self, key: str) -> FormValue | None:
        self._used.add(key)
        return self._data.get(key)

    def text(
        self,
        key: str,
        *,
        required: bool = False,
        max_length: int | None = None,
        choices: Sequence[str] | None = None,
    ) -> str | None:
        value = self.raw(key)
        param = self.name(key)
        if value is None:
            if required:
                raise missing_param(param)
            return None
        if not isinstance(value, str):
            raise invalid(f"Invalid string: {param} must be a string, not a hash or array.", param=param)
        if value == "":
            if required:
                raise _empty(param)
            return None
        if max_length is not None and len(value) > max_length:
            raise invalid(
                f"Invalid string: {param} must be at most {max_length} characters long.",
                param=param,
                code="string_length_exceeds_maximum",
            )
        if choices is not None and value not in choices:
            listed = ", ".join(f"`{c}`" for c in choices)
            raise invalid(f"Invalid {param}: must be one of {listed}", param=param)
        return value

    def integer(
        self,
        key: str,
        *,
        required: bool = False,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int | None:
        text = self.text(key, required=required)
        if text is None:
            return None
        param = self.name(key)
        body = text[1:] if text.startswith("-") else text
        if not body.isdigit():
            raise invalid(f"Invalid integer: {text}", param=param, code="parameter_invalid_integer")
        value = int(text)
        if minimum is not None and value < minimum:
            raise invalid(
                f"This value must be greater than or equal to {minimum}.",
                param=param,
                code="parameter_invalid_integer",
            )
        if maximum is not None and value > maximum:
            raise invalid(
                f"This value must be less than or equal to {maximum}.",
                param=param,
                code="parameter_invalid_integer",
            )
        return value

    def boolean(self, key: str) -> bool | None:
        text = self.text(key)
        if text is None:
            return None
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise invalid(f"Invalid boolean: {text}", param=self.name(key))

    def nested(self, key: str, *, required: bool = False) -> Params | None:
        value = self.raw(key)
        param = self.name(key)
        if value is None or value == "":
            if required:
                raise missing_param(param)
            return None
        if not isinstance(value, dict):
            raise invalid(f"Invalid object: {param} must be a hash.", param=param)
        child = Params(value, param)
        self._children.append(child)
        return child

    def string_map(self, key: str, *, required: bool = False) -> dict[str, str] | None:
        """A hash of string values (``payload``, ``metadata``)."""
        value = self.raw(key)
        param = self.name(key)
        if value is None or value == "":
            if required:
                raise missing_param(param)
            return None if value is None else {}
        if not isinstance(value, dict):
            raise invalid(f"Invalid object: {param} must be a hash.", param=param)
        for inner, item in value.items():
            if not isinstance(item, str):
                raise invalid(
                    f"Invalid string: {param}[{inner}] must be a string.", param=f"{param}[{inner}]"
                )
        return dict(value)

    def finish(self) -> None:
        """Reject the first key that no reader asked for, as Stripe does."""
        for key in self._data:
            if key not in self._used:
                raise unknown_param(self.name(key))
        for child in self._children:
            child.finish()


def paginate(
    items: Sequence[T], ident: Callable[[T], str], params: Params, object_name: str
) -> tuple[list[T], bool]:
    """One page of a newest-first sequence per ``limit`` / ``starting_after`` / ``ending_before``."""
    limit = params.integer("limit", minimum=1, maximum=100) or 10
    after = params.text("starting_after")
    before = params.text("ending_before")
    if after is not None and before is not None:
        raise invalid("You may only specify one of these parameters: ending_before, starting_after.")
    cursor = after if after is not None else before
    if cursor is None:
        return list(items[:limit]), len(items) > limit
    position = next((i for i, item in enumerate(items) if ident(item) == cursor), None)
    if position is None:
        raise invalid(
            f"No such {object_name}: '{cursor}'",
            param="starting_after" if after is not None else "ending_before",
            code="resource_missing",
        )
    if after is not None:
        rest = items[position + 1 :]
        return list(rest[:limit]), len(rest) > limit
    earlier = items[:position]
    return list(earlier[-limit:]), len(earlier) > limit


def list_object(url: str, data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}
