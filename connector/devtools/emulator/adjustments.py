"""Meter event adjustments (cancels), v1 and v2: parameters, the ledger's cancel, idempotency keys."""

from __future__ import annotations

from typing import Any

import orjson

from connector.devtools.emulator.envelope import MAX_NAME_LENGTH
from connector.devtools.emulator.errors import ApiError, error_body
from connector.devtools.emulator.handlers import Replayed, Request, Result
from connector.devtools.emulator.idempotency import IdempotencyKeys, check_key
from connector.devtools.emulator.ids import new_id
from connector.devtools.emulator.timestamps import format_rfc3339

V2_ENDPOINT = "POST /v2/billing/meter_event_adjustments"
V1_ENDPOINT = "POST /v1/billing/meter_event_adjustments"


def _fresh_digest(request: Request, keys: IdempotencyKeys, endpoint: str) -> bytes | Result | None:
    """Stripe's idempotency layer, ahead of the endpoint: None without a key; the body's digest when
    the key is fresh (store the answer under it); the stored answer when it is replayed; the 400
    when the key was used with another body or endpoint."""
    key = request.idempotency_key
    if key is None:
        return None
    check_key(key)
    digest = keys.check(key, request.body, request.now, endpoint)
    if digest is not None:
        return digest
    answer = keys.answer(key)
    assert answer is not None, "adjustments store their answers"
    status, body = answer
    return status, Replayed(body)


def _v2_text(body: dict[str, Any], key: str, where: str = "") -> str:
    value = body.get(key)
    name = f"{where}{key}"
    if value is None:
        raise ApiError(400, f"Missing required param: {name}.", code="parameter_missing")
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"{name} must be a non-empty string.", code="parameter_invalid")
    if len(value) > MAX_NAME_LENGTH:
        raise ApiError(400, f"{name} must be at most {MAX_NAME_LENGTH} characters.", code="parameter_invalid")
    return value


def _v2_params(request: Request) -> tuple[str, str]:
    """The event name and identifier of a v2 adjustment body, or its 400."""
    body = request.json(allow_empty=False)
    for key in body:
        if key not in ("event_name", "type", "cancel"):
            raise ApiError(400, f"Received unknown parameter: {key}", code="parameter_unknown")
    event_name = _v2_text(body, "event_name")
    kind = _v2_text(body, "type")
    if kind != "cancel":
        raise ApiError(400, "type must be `cancel`.", code="parameter_invalid")
    cancel = body.get("cancel")
    if not isinstance(cancel, dict):
        raise ApiError(400, "Missing required param: cancel.identifier.", code="parameter_missing")
    for key in cancel:
        if key != "identifier":
            raise ApiError(400, f"Received unknown parameter: cancel.{key}", code="parameter_unknown")
    return event_name, _v2_text(cancel, "identifier", "cancel.")


def create_v2(request: Request) -> Result:
    """``POST /v2/billing/meter_event_adjustments``. Its ``Idempotency-Key`` is kept 30 days with the
    stream's keys of the account and mode; API v2 stores successes only, so a refused cancel (bad
    parameters, unknown, old or canceled event) leaves the key fresh."""
    keys = request.acct.idempotency
    digest = _fresh_digest(request, keys, V2_ENDPOINT)
    if isinstance(digest, tuple):
        return digest
    event_name, identifier = _v2_params(request)
    request.acct.ledger.cancel(event_name, identifier, request.now, "cancel.identifier")
    payload = {
        "id": new_id("mtr_event_adj_"),  # the prefix of Stripe's documented example
        "object": "v2.billing.meter_event_adjustment",
        "cancel": {"identifier": identifier},
        "created": format_rfc3339(request.now),
        "event_name": event_name,
        "livemode": request.acct.livemode,
        "status": "pending",
        "type": "cancel",
    }
    if digest is not None:
        assert request.idempotency_key is not None
        keys.store(request.idempotency_key, digest, request.now, V2_ENDPOINT, (200, orjson.dumps(payload)))
    return 200, payload


def create_v1(request: Request) -> Result:
    """``POST /v1/billing/meter_event_adjustments``. Its ``Idempotency-Key`` is kept 24 hours and, as
    Stripe documents for v1, stores whatever the endpoint answered once it began executing: the 200,
    or the refusal of an unknown, old or canceled event; a parameter error stores nothing."""
    keys = request.acct.v1_idempotency
    digest = _fresh_digest(request, keys, V1_ENDPOINT)
    if isinstance(digest, tuple):
        return digest
    params = request.form()
    event_name = params.text("event_name", required=True, max_length=MAX_NAME_LENGTH)
    params.text("type", required=True, choices=("cancel",))
    cancel = params.nested("cancel", required=True)
    assert cancel is not None and event_name is not None
    identifier = cancel.text("identifier", required=True, max_length=MAX_NAME_LENGTH)
    assert identifier is not None
    params.finish()
    key = request.idempotency_key
    try:
        request.acct.ledger.cancel(event_name, identifier, request.now, "cancel[identifier]")
    except ApiError as error:
        if key is not None and digest is not None:
            keys.store(key, digest, request.now, V1_ENDPOINT, (error.status, error_body(error, v2=False)))
        raise
    payload = {
        "object": "billing.meter_event_adjustment",
        "cancel": {"identifier": identifier},
        "event_name": event_name,
        "livemode": request.acct.livemode,
        "status": "pending",
        "type": "cancel",
    }
    if key is not None and digest is not None:
        keys.store(key, digest, request.now, V1_ENDPOINT, (200, orjson.dumps(payload)))
    return 200, payload
