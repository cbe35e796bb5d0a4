"""Idempotency keys of stream requests: which records a request carried, recoverable from the key alone.

Stripe's asynchronous error reports name the request that carried a failing event (its ``Request-Id``
and ``Idempotency-Key``), never the event. So every stream request carries a key from which the
connector can find that request's records again::

    ks1:{digest}:{namespace}:{partition}:{first}+{span};{namespace}:{partition}:{first}+{span}...

* ``digest``: 16 hex characters of the SHA-256 of the request body. The same body always gets the same
  key (a resend after a timeout, a replay that happens to rebuild the same request), and a different
  body never does (a bisected half, a resend of fewer events): Stripe keeps v2 keys for 30 days and
  refuses a key reused with another body.
* one range per partition the request touches, in first-seen order: the partition's namespace (its
  topic id or configured namespace, as in the events' identifiers), the partition, the lowest offset
  and how far the highest is above it. The request's records of that partition lie in that range; the
  range may also hold records that went in other requests.

Namespaces never contain ``:`` or ``;`` (URL-safe base64), so the key splits cleanly. A key longer than
Stripe's 255 characters keeps the ranges that fit and ends with ``;+`` (``truncated``): records of the
ranges left out cannot be found from it (the batcher caps partitions per request so that this is rare).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import NamedTuple

MAX_KEY_LENGTH = 255  # Stripe's limit on an Idempotency-Key
VERSION = "ks1"
_TRUNCATED = ";+"


class Origin(NamedTuple):
    """Where an event's record came from: its topic's namespace, partition and offset."""

    namespace: str
    partition: int
    offset: int


class KeyRange(NamedTuple):
    """The offsets of one partition a request's records lie within (both ends included)."""

    namespace: str
    partition: int
    first: int
    last: int


class RequestKey(NamedTuple):
    """A request key taken apart."""

    digest: str
    ranges: tuple[KeyRange, ...]
    truncated: bool


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


def ranges_of(origins: Iterable[Origin]) -> list[KeyRange]:
    """One range per (namespace, partition), in the order the partitions first appear."""
    bounds: dict[tuple[str, int], list[int]] = {}
    for namespace, partition, offset in origins:
        found = bounds.get((namespace, partition))
        if found is None:
            bounds[(namespace, partition)] = [offset, offset]
        elif offset < found[0]:
            found[0] = offset
        elif offset > found[1]:
            found[1] = offset
    return [KeyRange(ns, p, lo, hi) for (ns, p), (lo, hi) in bounds.items()]


def request_key(origins: Iterable[Origin], body: bytes) -> str:
    """The Idempotency-Key of a stream request carrying the events of ``origins`` as ``body``."""
    key = f"{VERSION}:{body_digest(body)}:"
    parts: list[str] = []
    room = MAX_KEY_LENGTH - len(key) - len(_TRUNCATED)
    ranges = ranges_of(origins)
    for r in ranges:
        part = f"{r.namespace}:{r.partition}:{r.first}+{r.last - r.first}"
        needed = len(part) + (1 if parts else 0)
        if needed > room:
            return key + ";".join(parts) + _TRUNCATED
        parts.append(part)
        room -= needed
    return key + ";".join(parts)


def parse_request_key(key: str) -> RequestKey | None:
    """The parts of a key ``request_key`` made, or None for any other key."""
    head, sep, rest = key.partition(":")
    digest, sep2, listed = rest.partition(":")
    if head != VERSION or not sep or not sep2 or len(digest) != 16:
        return None
    truncated = listed.endswith(_TRUNCATED)
    if truncated:
        listed = listed[: -len(_TRUNCATED)]
    ranges: list[KeyRange] = []
    for part in listed.split(";") if listed else ():
        fields = part.split(":")
        if len(fields) != 3:
            return None
        namespace, partition, span = fields
        first, plus, extent = span.partition("+")
        if not (namespace and partition.isdigit() and first.isdigit() and plus and extent.isdigit()):
            return None
        ranges.append(KeyRange(namespace, int(partition), int(first), int(first) + int(extent)))
    return RequestKey(digest, tuple(ranges), truncated)
