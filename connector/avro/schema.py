"""The Avro schema model: one ``.avsc`` file read and parsed once (logical types kept), cached by path."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Schemas a process uses are few; the bound only matters to test suites that write thousands of files.
_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True, eq=False)
class Schema:
    """A parsed ``.avsc`` file (fastavro's form, logical types kept) with its named types, or why it
    could not be read. Compared and hashed by identity: one object per file and version."""

    path: Path
    document: Any = None  # the JSON as written: the decoder derives its decoding form from it
    declared: Any = None  # fastavro.parse_schema(document): named types registered, logical types kept
    named: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def root(self) -> Any:
        """The top-level type, named references resolved."""
        return deref(self.declared, self.named)

    @property
    def name(self) -> str:
        """The full name of the top-level named type (``test.Usage``), empty for an unnamed one."""
        root = self.root
        return str(root.get("name", "")) if isinstance(root, dict) else ""

    @property
    def record_problem(self) -> str | None:
        """Why the file cannot describe usage records (unreadable, or not a record at the top)."""
        if self.error is not None:
            return self.error
        root = self.root
        if isinstance(root, dict) and root.get("type") == "record":
            return None
        return f"{self.path}: the top-level type must be a record, not {describe(root, self.named)}"


def deref(schema: Any, named: Mapping[str, Any]) -> Any:
    """``schema`` with named references resolved and ``{"type": {...}}`` wrappers removed."""
    while isinstance(schema, str) and schema in named:
        schema = named[schema]
    while isinstance(schema, dict) and isinstance(schema.get("type"), dict | list):
        # {"type": {"type": "string"}} is the same type as {"type": "string"}
        schema = schema["type"]
    return schema


def describe(schema: Any, named: Mapping[str, Any]) -> str:
    """A short human form of an Avro type: ``long (timestamp-millis)``, ``null | string``, ``map<string>``."""
    schema = deref(schema, named)
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return " | ".join(describe(branch, named) for branch in schema)
    if not isinstance(schema, dict):
        return repr(schema)
    base = schema.get("type")
    if base in ("record", "enum", "fixed", "error"):
        return f"{base} {schema.get('name')}"
    if base == "map":
        return f"map<{describe(schema.get('values'), named)}>"
    if base == "array":
        return f"array<{describe(schema.get('items'), named)}>"
    logical = schema.get("logicalType")
    return f"{base} ({logical})" if logical else str(base)


def parse(path: Path) -> Schema:
    """Read and parse ``path`` now, uncached; errors are returned in ``Schema.error``, never raised."""
    import fastavro

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Schema(path, error=f"{path}: no such file")
    except IsADirectoryError:
        return Schema(path, error=f"{path} is a directory, not an .avsc file")
    except OSError as error:
        return Schema(path, error=f"{path}: cannot read: {error.strerror or error}")
    except UnicodeDecodeError:
        return Schema(path, error=f"{path} is not UTF-8 text")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        return Schema(
            path, error=f"{path} is not JSON: {error.msg} at line {error.lineno} column {error.colno}"
        )
    except RecursionError:
        return Schema(path, error=f"{path} is nested too deeply")
    named: dict[str, Any] = {}
    try:
        declared = fastavro.parse_schema(document, named_schemas=named)
    except Exception as error:  # fastavro raises assorted types for malformed input
        return Schema(path, error=f"{path} is not a valid Avro schema: {type(error).__name__}: {error}")
    return Schema(path, document=document, declared=declared, named=named)


_cache: OrderedDict[Path, tuple[tuple[int, int] | None, Schema]] = OrderedDict()
_lock = threading.Lock()


def load(path: Path) -> Schema:
    """The schema in ``path``, parsed once per file: settings, decoder, mapper and ``check`` share it.

    Keyed by the resolved path; a file whose size or modification time changed is parsed again.
    """
    resolved = Path(path).expanduser().resolve()
    try:
        stat = resolved.stat()
        version: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        version = None
    with _lock:
        cached = _cache.get(resolved)
        if cached is not None and cached[0] == version and version is not None:
            _cache.move_to_end(resolved)
            return cached[1]
    schema = parse(Path(path))
    with _lock:
        if version is not None:
            _cache[resolved] = (version, schema)
            _cache.move_to_end(resolved)
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    return schema
