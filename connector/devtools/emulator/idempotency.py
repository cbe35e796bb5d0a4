"""Idempotency keys: stored answers per account, mode and API version, replays, misuse errors."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from connector.devtools.emulator.errors import ApiError

KEY_WINDOW = 30 * 86_400.0  # Stripe keeps API v2 idempotency keys for 30 days
V1_KEY_WINDOW = 86_400.0  # and v1 keys for (at least) 24 hours
STREAM_ENDPOINT = "POST /v2/billing/meter_event_stream"
MAX_KEY_LENGTH = 255  # Stripe: "Idempotency keys are up to 255 characters long"
# Bounds memory (a few hundred bytes per key plus the key): beyond it the oldest keys are forgotten
# first, as if they had expired. A million keys is hours of a benchmark's stream.
MAX_KEYS = 1_000_000

_sha256 = hashlib.sha256

# The answer stored for a key: its status and body bytes; None stands for the stream's ``200 {}``, so
# a stream key costs no more than before.
Answer = tuple[int, bytes] | None


def check_key(key: bytes) -> None:
    """The 400 for a key Stripe would not take: empty or longer than 255 characters."""
    if not 0 < len(key) <= MAX_KEY_LENGTH:
        # Stripe documents the limit, not the error; the message is the one its API has been seen
        # to send, the code is the emulator's choice (v2 errors always carry one).
        raise ApiError(
            400,
            f"Idempotent key length is {len(key)}, which is outside accepted lengths. Idempotent Keys "
            f"must be 1-{MAX_KEY_LENGTH} characters long.",
            code="parameter_invalid",
        )


def key_in_use(key: bytes) -> ApiError:
    """Stripe's 409 for a key whose first request is still executing (its error code
    ``idempotency_key_in_use``); nothing is stored, so the client may retry it."""
    return ApiError(
        409,
        "There is currently another in-progress request using this Idempotent Key (that probably means "
        f"you submitted twice, and the other request is still going through): {key.decode('latin-1')}. "
        "Please try again later.",
        code="idempotency_key_in_use",
    )


def key_reused(key: bytes) -> ApiError:
    """Stripe's refusal of a key sent again with other parameters: 400, type ``idempotency_error``."""
    return ApiError(
        400,
        "Keys for idempotent requests can only be used with the same parameters they were first used "
        f"with. Try using a key other than '{key.decode('latin-1')}' if you meant to execute a "
        "different request.",
        type="idempotency_error",
        # Stripe documents no code for it; the v2 envelope needs one, so it repeats the type.
        code="idempotency_error",
    )


def key_used_elsewhere(key: bytes, first: str, now: str) -> ApiError:
    """Stripe's refusal of a key first used on another endpoint (400, ``idempotency_error``)."""
    return ApiError(
        400,
        f"Keys for idempotent requests can only be used for the same endpoint they were first used for "
        f"('{first}' vs '{now}'). Try using a key other than '{key.decode('latin-1')}' if you meant to "
        "execute a different request.",
        type="idempotency_error",
        code="idempotency_error",
    )


class KeyHold:
    """A key claimed by a request that is still executing; ``owner`` is false when another request
    held it first (this one then gets the 409)."""

    __slots__ = ("_keys", "key", "owner")

    def __init__(self, keys: IdempotencyKeys, key: bytes, owner: bool) -> None:
        self._keys = keys
        self.key = key
        self.owner = owner

    def release(self) -> None:
        if self.owner:
            self.owner = False
            self._keys.in_flight.discard(self.key)


class IdempotencyKeys:
    """The keys of one account, mode and API version: each stored request's key with the time it was
    stored, the SHA-256 of its body, its endpoint and its answer, oldest first; and the keys of
    requests still executing.

    A request refused before it ran (authentication, rate limits, envelope or parameter errors,
    injected faults) stores nothing, so its key stays fresh: Stripe saves results only once an
    endpoint began executing. Which executed answers are kept is the caller's choice: API v2 keeps
    successes only (it retries failed work rather than replaying the failure), v1 errors too.
    Expired keys are dropped lazily, on lookup and on each store.
    """

    __slots__ = ("_stored", "capacity", "in_flight", "window")

    def __init__(self, window: float = KEY_WINDOW, capacity: int = MAX_KEYS) -> None:
        self.window = window
        self.capacity = capacity
        self._stored: OrderedDict[bytes, tuple[float, bytes, str, Answer]] = OrderedDict()
        self.in_flight: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._stored)

    def hold(self, key: bytes) -> KeyHold:
        """Claim ``key`` for a request about to execute (only an injected latency makes one wait)."""
        in_flight = self.in_flight
        if key in in_flight:
            return KeyHold(self, key, owner=False)
        in_flight.add(key)
        return KeyHold(self, key, owner=True)

    def check(self, key: bytes, body: bytes, now: float, endpoint: str = STREAM_ENDPOINT) -> bytes | None:
        """The body's digest when ``key`` is fresh (run the request, then ``store``); None when the
        same body was stored under it for ``endpoint`` (replay ``answer(key)``); the 400 when another
        body or another endpoint was."""
        digest = _sha256(body).digest()
        entry = self._stored.get(key)
        if entry is None:
            return digest
        stored_at, stored_digest, first_endpoint, _ = entry
        if now - stored_at >= self.window:
            del self._stored[key]  # forgotten: a key reused after its window is a new request
            return digest
        if first_endpoint != endpoint:
            raise key_used_elsewhere(key, first_endpoint, endpoint)
        if stored_digest != digest:
            raise key_reused(key)
        return None

    def answer(self, key: bytes) -> Answer:
        """The answer stored for ``key`` (after ``check`` said to replay it)."""
        return self._stored[key][3]

    def store(
        self, key: bytes, digest: bytes, now: float, endpoint: str = STREAM_ENDPOINT, answer: Answer = None
    ) -> None:
        """Remember an executed request's key; drops what expired and what exceeds the capacity."""
        stored = self._stored
        stored.pop(key, None)  # a re-stored key moves to the end, keeping the order by time
        stored[key] = (now, digest, endpoint, answer)
        oldest_kept = now - self.window
        while stored:
            stored_at = next(iter(stored.values()))[0]
            if stored_at > oldest_kept and len(stored) <= self.capacity:
                return
            stored.popitem(last=False)
