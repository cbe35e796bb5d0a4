"""Stripe's bracket form encoding (``a[b][0]=c``) decoded into nested dicts and lists."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

FormValue = Any  # str | dict[str, FormValue] | list[FormValue]


class FormError(ValueError):
    """A key that cannot be decoded, such as ``a[b`` or ``a=1&a[b]=2``; ``param`` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _split_key(key: str) -> list[str]:
    """``a[b][]`` -> ``["a", "b", ""]``; a malformed bracket raises ``FormError``."""
    head, sep, rest = key.partition("[")
    if not head:
        raise FormError(f"Invalid parameter name: {key}", key)
    parts = [head]
    while sep:
        inner, closed, rest = rest.partition("]")
        if not closed or "[" in inner:
            raise FormError(f"Invalid parameter name: {key}", key)
        parts.append(inner)
        if not rest:
            break
        if not rest.startswith("["):
            raise FormError(f"Invalid parameter name: {key}", key)
        rest = rest[1:]
    return parts


def decode(raw: bytes | str) -> dict[str, FormValue]:
    """Decode a form body or query string: ``a[b]`` nests, ``a[]`` appends, a repeated key keeps the last."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    root: dict[str, FormValue] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        parts = _split_key(key)
        node: dict[str, FormValue] = root
        for index, part in enumerate(parts[:-1]):
            child = node.get(part)
            following = parts[index + 1]
            if child is None:
                child = [] if following == "" else {}
                node[part] = child
            if following == "":
                if not isinstance(child, list) or index + 1 != len(parts) - 1:
                    raise FormError(f"Invalid array parameter: {key}", key)
                child.append(value)
                break
            if not isinstance(child, dict):
                raise FormError(f"Conflicting values for parameter: {key}", key)
            node = child
        else:
            last = parts[-1]
            if isinstance(node.get(last), dict | list):
                raise FormError(f"Conflicting values for parameter: {key}", key)
            node[last] = value
    return root


def as_list(value: FormValue) -> list[FormValue]:
    """A list parameter sent as ``a[]=x`` or ``a[0]=x`` (a dict of indices), in index order."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and all(k.isdigit() for k in value):
        return [value[k] for k in sorted(value, key=int)]
    return [value]
