"""The stream's synchronous intake: injected faults, authentication, rate limits, idempotency keys, ledger."""

from __future__ import annotations

from connector.devtools.emulator.errors import ApiError
from connector.devtools.emulator.idempotency import KeyHold, check_key, key_in_use
from connector.devtools.emulator.state import EmulatorState, Tenant


def stream_fault(tenant: Tenant) -> ApiError | None:
    """The injected error this stream request draws from its account's faults, if any (outage, error
    rate, rate limits)."""
    faults = tenant.faults
    injected = tenant.stats.faults_injected
    draw = faults.random.random
    if faults.outage:
        injected["outage"] += 1
        return faults.unavailable()
    if faults.error_rate and draw() < faults.error_rate:
        injected["error"] += 1
        return faults.internal_error()
    if faults.rate_limited_rate and draw() < faults.rate_limited_rate:
        injected["rate_limited"] += 1
        return faults.rate_limited("global-rate")
    if faults.bucket is not None and not faults.bucket.take():
        injected["throttled"] += 1
        return faults.rate_limited("endpoint-rate")
    return None


def stream_intake(
    state: EmulatorState,
    tenant: Tenant,
    token: str | None,
    key: bytes | None,
    body: bytes,
    request_id: bytes,
    held: KeyHold | None,
    contexts: tuple[str | None, str | None] = (None, None),
) -> bool:
    """Take one stream request in, or raise the ApiError refusing it; True when the answer stored for
    its ``Idempotency-Key`` is replayed instead (nothing is counted, validated or reported again).
    ``tenant`` is the account the token speaks for (``EmulatorState.stream_tenant``); ``contexts``
    the request's ``Stripe-Context`` and ``Stripe-Account`` headers.

    Stripe's rate limiters and authentication run before its idempotency layer, so their errors are
    decided first and never stored; neither is an envelope error, as a key is stored only once its
    request was taken in.
    """
    faults = tenant.faults
    if faults.stream_faulty:
        fault = stream_fault(tenant)
        if fault is not None:
            raise fault
    now = state.clock()
    session = state.stream_session(token, now)
    if contexts != (None, None):
        assert token is not None
        state.check_stream_context(session, token, *contexts)
    if faults.mode_limits is not None:
        tenant.check_mode_limit(session.livemode, stream=True)
    if key is None:
        session.ledger.ingest_stream(body, now, request_id, None)
        return False
    check_key(key)
    if held is not None and not held.owner:
        raise key_in_use(key)
    digest = session.keys.check(key, body, now)
    if digest is None:
        return True
    session.ledger.ingest_stream(body, now, request_id, key)
    session.keys.store(key, digest, now)
    return False
