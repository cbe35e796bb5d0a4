"""Compiles a parsed Avro schema into a plain Python decode function (the raw-Avro fast path)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from decimal import Context, Decimal
from typing import Any

# A compiled reader: (buffer, start offset) -> the decoded datum. It raises IndexError, ValueError
# (UnicodeDecodeError included) or struct.error on bytes that are not one datum of its schema.
CompiledReader = Callable[[bytes, int], Any]

# Unions are dispatched on the index's single varint byte (index i is written as 2*i), which holds
# for up to 64 branches; wider unions are left to fastavro.
_MAX_UNION_BRANCHES = 64
# A block of zero-width items (nulls, empty records) costs no bytes, so garbage could announce
# 2**62 of them and spin for ever; no real writer puts more than this in one block.
MAX_ZERO_WIDTH_ITEMS = 1 << 20

# Integer data (timestamps take six bytes) are read inline up to this many bits, then by a call.
_INLINE_BITS = 42

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


class UnsupportedSchema(Exception):
    """The schema uses something the compiler does not inline (recursion, huge unions)."""


def read_varint(buf: bytes, pos: int, n: int = 0, shift: int = 0) -> tuple[int, int]:
    """The rest of a varint whose bytes so far gave ``n`` (``shift`` bits), read from ``pos``:
    (unsigned value, next position)."""
    while True:
        if shift > 63:
            raise ValueError(f"varint longer than 10 bytes at byte {pos}")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint starting at ``pos``: (value, next position)."""
    n, pos = read_varint(buf, pos)
    return (n >> 1) ^ -(n & 1), pos


def compile_reader(
    schema: Any, named: Mapping[str, Any], project: Sequence[str] | None = None
) -> tuple[CompiledReader, str]:
    """Generate, compile and return a decode function for ``schema`` (as ``fastavro.parse_schema``
    returns it, logical types other than ``decimal`` already removed) and its source text.

    ``named`` maps full names to the definitions of named types, for the references by name.
    ``project``: for a record schema, return the tuple of these top-level fields' values instead of
    the record's dict (None for a name the record lacks): every byte is still read and checked, only
    the dict the mapper would take apart again is not built.
    Raises ``UnsupportedSchema`` when the caller should fall back to fastavro.
    """
    gen = _Generator(named, project)
    if project is not None and not _is_record(gen.resolve(schema)):
        raise UnsupportedSchema("only a record's fields can be projected")
    try:
        gen.read(schema, "datum", 1)
    except (KeyError, TypeError, ValueError) as exc:  # a shape fastavro accepted but we do not know
        raise UnsupportedSchema(f"cannot compile: {exc!r}") from exc
    source = "\n".join(
        [
            "def decode(buf, pos):",
            "    blen = len(buf)",
            *gen.lines,
            "    if pos != blen:",
            "        raise ValueError(f'{blen - pos} trailing bytes after the datum')",
            "    return datum",
            "",
        ]
    )
    namespace: dict[str, Any] = {
        "read_long": read_long,
        "read_varint": read_varint,
        "unpack_float": struct.Struct("<f").unpack_from,
        "unpack_double": struct.Struct("<d").unpack_from,
        "from_bytes": int.from_bytes,
        "Decimal": Decimal,
        "MAX_ZERO_WIDTH_ITEMS": MAX_ZERO_WIDTH_ITEMS,
        **gen.constants,
    }
    exec(compile(source, f"<avro decoder for {_describe(schema)}>", "exec"), namespace)
    reader: CompiledReader = namespace["decode"]
    return reader, source


def _is_record(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "record"


def _describe(schema: Any) -> str:
    if isinstance(schema, dict):
        return str(schema.get("name", schema.get("type")))
    return str(schema)


class _Generator:
    """Emits straight-line Python that reads one value per schema node; every read of a length or
    index checks it, so a bad byte ends in IndexError/ValueError, never a wrong value."""

    def __init__(self, named: Mapping[str, Any], project: Sequence[str] | None = None) -> None:
        self.named = named
        self.project = project  # top-level fields to return as a tuple, or None for the whole record
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self._count = 0
        self._expanding: list[str] = []  # records being inlined: a repeat means recursion

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}{self._count}"

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def constant(self, hint: str, value: Any) -> str:
        name = self.fresh(hint.upper())
        self.constants[name] = value
        return name

    def resolve(self, schema: Any) -> Any:
        """Named references become their definitions; ``{"type": "long"}`` becomes ``"long"``."""
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return schema
            if schema not in self.named:
                raise UnsupportedSchema(f"unknown type {schema!r}")
            return self.resolve(self.named[schema])
        if isinstance(schema, dict) and schema.get("type") in _PRIMITIVES and "logicalType" not in schema:
            return schema["type"]
        return schema

    def min_width(self, schema: Any, seen: tuple[str, ...] = ()) -> int:
        """The fewest bytes a value of ``schema`` can take (0 for null and empty records)."""
        schema = self.resolve(schema)
        if isinstance(schema, list):
            return 1
        if isinstance(schema, str):
            return {"null": 0, "float": 4, "double": 8}.get(schema, 1)
        kind = schema["type"]
        if kind == "fixed":
            return int(schema["size"])
        if kind == "record":
            if schema["name"] in seen:
                raise UnsupportedSchema(f"recursive record {schema['name']}")
            return sum(self.min_width(f["type"], (*seen, schema["name"])) for f in schema["fields"])
        return 1  # bytes/string with a logical type, enum, array, map: at least one varint byte

    def read(self, schema: Any, target: str, indent: int) -> None:
        """Emit code that reads one value of ``schema`` at ``pos`` into the variable ``target``."""
        schema = self.resolve(schema)
        if isinstance(schema, list):
            self.read_union(schema, target, indent)
        elif isinstance(schema, str):
            self.read_primitive(schema, target, indent)
        elif schema["type"] == "record":
            self.read_record(schema, target, indent)
        elif schema["type"] == "enum":
            symbols = self.constant("symbols", tuple(schema["symbols"]))
            index = self.fresh("i")
            self.read_long(index, indent)
            self.emit(indent, f"if not 0 <= {index} < {len(schema['symbols'])}:")
            self.emit(indent + 1, f"raise ValueError(f'enum index {{{index}}} out of range')")
            self.emit(indent, f"{target} = {symbols}[{index}]")
        elif schema["type"] == "fixed":
            self.read_span(str(int(schema["size"])), target, indent)
            self.decimal(schema, target, indent)
        elif schema["type"] == "array":
            self.read_blocks(schema["items"], target, indent, is_map=False)
        elif schema["type"] == "map":
            self.read_blocks(schema["values"], target, indent, is_map=True)
        elif schema["type"] in ("bytes", "string"):  # a primitive carrying a logical type
            self.read_primitive(schema["type"], target, indent)
            if schema["type"] == "bytes":
                self.decimal(schema, target, indent)
        else:
            raise UnsupportedSchema(f"type {schema['type']!r}")

    def read_primitive(self, kind: str, target: str, indent: int) -> None:
        if kind == "null":
            self.emit(indent, f"{target} = None")
        elif kind == "boolean":
            self.emit(indent, f"{target} = buf[pos] != 0")
            self.emit(indent, "pos += 1")
        elif kind in ("int", "long"):
            self.read_number(target, indent)
        elif kind in ("float", "double"):
            self.emit(indent, f"{target} = unpack_{kind}(buf, pos)[0]")
            self.emit(indent, f"pos += {4 if kind == 'float' else 8}")
        elif kind == "bytes":
            size = self.fresh("n")
            self.read_long(size, indent)
            self.read_span(size, target, indent)
        else:  # string
            size = self.fresh("n")
            self.read_long(size, indent)
            self.read_span(size, target, indent, decode=True)

    def read_number(self, target: str, indent: int) -> None:
        """An int or long datum, often several bytes long: the first bytes are read inline (flat:
        once a byte without the continuation bit came, the remaining tests fail at once)."""
        self.emit(indent, "b = buf[pos]")
        self.emit(indent, "n = b & 127")
        self.emit(indent, "pos += 1")
        for shift in range(7, _INLINE_BITS, 7):
            self.emit(indent, "if b >= 128:")
            self.emit(indent + 1, "b = buf[pos]")
            self.emit(indent + 1, f"n |= (b & 127) << {shift}")
            self.emit(indent + 1, "pos += 1")
        self.emit(indent, "if b >= 128:")
        self.emit(indent + 1, f"n, pos = read_varint(buf, pos, n, {_INLINE_BITS})")
        self.emit(indent, f"{target} = (n >> 1) ^ -(n & 1)")

    def read_long(self, target: str, indent: int) -> None:
        """A length, count or index: almost always one byte (-64..63), so only longer ones pay
        for a call."""
        self.emit(indent, "b = buf[pos]")
        self.emit(indent, "if b < 128:")
        self.emit(indent + 1, "pos += 1")
        self.emit(indent + 1, f"{target} = (b >> 1) ^ -(b & 1)")
        self.emit(indent, "else:")
        self.emit(indent + 1, f"{target}, pos = read_long(buf, pos)")

    def read_span(self, size: str, target: str, indent: int, decode: bool = False) -> None:
        """``size`` bytes from ``pos``; slicing never fails, so the length is checked first."""
        self.emit(indent, f"end = pos + {size}")
        self.emit(indent, f"if {size} < 0 or end > blen:")
        self.emit(indent + 1, f"raise ValueError(f'length {{{size}}} at byte {{pos}} runs past the end')")
        self.emit(indent, f"{target} = buf[pos:end]{'.decode()' if decode else ''}")
        self.emit(indent, "pos = end")

    def decimal(self, schema: dict[str, Any], target: str, indent: int) -> None:
        """Bytes/fixed with ``logicalType: decimal`` become ``Decimal`` exactly as fastavro makes them."""
        if schema.get("logicalType") != "decimal":
            return
        # fastavro rounds the unscaled integer to the precision, then scales; scaleb rounds to
        # the context's precision as well, with one Decimal fewer.
        context = self.constant("decimal_context", Context(prec=int(schema["precision"])))
        scale = int(schema.get("scale", 0))
        self.emit(
            indent,
            f"{target} = Decimal(from_bytes({target}, 'big', signed=True)).scaleb({-scale}, {context})",
        )

    def read_union(self, branches: list[Any], target: str, indent: int) -> None:
        if not branches or len(branches) > _MAX_UNION_BRANCHES:
            raise UnsupportedSchema(f"union of {len(branches)} branches")
        self.emit(indent, "b = buf[pos]")
        self.emit(indent, "pos += 1")
        for index, branch in enumerate(branches):
            self.emit(indent, f"{'if' if index == 0 else 'elif'} b == {2 * index}:")
            self.read(branch, target, indent + 1)
        self.emit(indent, "else:")
        self.emit(indent + 1, "raise ValueError(f'union branch byte {b} out of range')")

    def read_record(self, schema: dict[str, Any], target: str, indent: int) -> None:
        name = schema["name"]
        if name in self._expanding:
            raise UnsupportedSchema(f"recursive record {name}")
        self._expanding.append(name)
        values = []
        for field in schema["fields"]:
            variable = self.fresh("f")
            # Names reach the source only as repr() literals or in comments; fastavro does not check
            # them, and a line break in a comment would end it.
            label = f"{name}.{field['name']}"
            self.emit(indent, f"# {label if label.isprintable() else repr(label)}")
            self.read(field["type"], variable, indent)
            values.append((field["name"], variable))
        self._expanding.pop()
        if self.project is not None and len(self._expanding) == 0:
            # The outermost record, projected: its fields in the order asked for.
            variables = dict(values)
            items = ", ".join(variables.get(name, "None") for name in self.project)
            self.emit(indent, f"{target} = ({items}{',' if len(self.project) == 1 else ''})")
        else:
            self.emit(indent, f"{target} = {{{', '.join(f'{name!r}: {v}' for name, v in values)}}}")

    def read_blocks(self, items: Any, target: str, indent: int, *, is_map: bool) -> None:
        """Arrays and maps: blocks of ``count`` items until a zero count; a negative count is
        followed by the block's byte size, which a sequential reader does not need."""
        count, item = self.fresh("c"), self.fresh("v")
        self.emit(indent, f"{target} = {{}}" if is_map else f"{target} = []")
        self.read_long(count, indent)
        self.emit(indent, f"while {count}:")
        self.emit(indent + 1, f"if {count} < 0:")
        self.emit(indent + 2, f"{count} = -{count}")
        self.read_long("_", indent + 2)
        if self.min_width(items) == 0:
            self.emit(indent + 1, f"if {count} > MAX_ZERO_WIDTH_ITEMS:")
            self.emit(indent + 2, f"raise ValueError(f'block of {{{count}}} zero-width items')")
        self.emit(indent + 1, f"for _ in range({count}):")
        if is_map:
            key = self.fresh("k")
            self.read_primitive("string", key, indent + 2)
            self.read(items, item, indent + 2)
            self.emit(indent + 2, f"{target}[{key}] = {item}")
        else:
            self.read(items, item, indent + 2)
            self.emit(indent + 2, f"{target}.append({item})")
        self.read_long(count, indent + 1)
