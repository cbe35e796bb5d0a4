"""Response compression: whether a request's ``Accept-Encoding`` takes gzip, and the gzip itself."""

from __future__ import annotations

import gzip

CONTENT_ENCODING = (b"content-encoding", b"gzip")
VARY = (b"vary", b"Accept-Encoding")

_cache: dict[bytes, bool] = {}
_CACHE_LIMIT = 256  # clients send the same few header values over and over


def compress(body: bytes) -> bytes:
    """Gzip ``body`` with a zero modification time, so equal bodies compress to equal bytes."""
    return gzip.compress(body, compresslevel=6, mtime=0)


def accepts_gzip(header: bytes | None) -> bool:
    """Whether an ``Accept-Encoding`` value (RFC 9110 section 12.5.3) accepts gzip.

    ``gzip`` (or its alias ``x-gzip``) with a non-zero ``q`` says yes and ``q=0`` says no; when gzip
    is not named, ``*`` decides. No header, ``identity`` alone, or a malformed weight says no.
    """
    if not header:
        return False
    known = _cache.get(header)
    if known is None:
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        known = _cache[header] = _parse(header.decode("latin-1"))
    return known


def _parse(header: str) -> bool:
    named: float | None = None
    star: float | None = None
    for item in header.split(","):
        coding, *params = item.split(";")
        coding = coding.strip().lower()
        weight = _weight(params)
        if coding in ("gzip", "x-gzip"):
            named = weight if named is None else max(named, weight)
        elif coding == "*":
            star = weight
    if named is not None:
        return named > 0
    return star is not None and star > 0


def _weight(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                weight = float(value.strip())
            except ValueError:
                return 0.0
            return weight if 0.0 <= weight <= 1.0 else 0.0
    return 1.0
