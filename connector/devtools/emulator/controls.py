"""The emulator's own routes (``/_emulator/*``): faults, stats, clock, reset, customers and contexts."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from connector.devtools.emulator.catalog import CUSTOMER_ID
from connector.devtools.emulator.clock import check_advance
from connector.devtools.emulator.errors import ApiError
from connector.devtools.emulator.handlers import Request, Result
from connector.devtools.emulator.state import Tenant

# Every control but reset, clock and health acts on one account: the platform unless a ``context``
# (a connected account's id or path) names another, in the JSON body or the query string.
CONTEXT = "context"


def _bad(message: str) -> ApiError:
    return ApiError(400, message, code="parameter_invalid")


def _query(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    found = dict(parse_qsl(request.query.decode("utf-8", errors="replace"), keep_blank_values=True))
    unknown = sorted(set(found) - set(allowed))
    if unknown:
        raise _bad(f"unknown query parameter: {', '.join(unknown)}")
    return found


def _body_tenant(request: Request, body: dict[str, Any]) -> Tenant:
    """The account a control's body names with ``context`` (popped from it), else the platform."""
    context = body.pop(CONTEXT, None)
    if context is not None and not isinstance(context, str):
        raise _bad("context must be a connected account's id or path")
    return request.state.tenant(context)


def get_faults(request: Request) -> Result:
    """``GET /_emulator/faults[?context=…]``: the fault settings of one account."""
    query = _query(request, (CONTEXT,))
    return 200, request.state.tenant(query.get(CONTEXT)).faults.as_dict()


def set_faults(request: Request) -> Result:
    """``POST /_emulator/faults``: change one account's faults; the others keep theirs."""
    body = request.json(allow_empty=True)
    tenant = _body_tenant(request, body)
    try:
        expire = tenant.faults.update(body)
    except ValueError as error:
        raise _bad(str(error)) from None
    if expire:
        request.state.expire_tokens(tenant)
    return 200, tenant.faults.as_dict()


def get_stats(request: Request) -> Result:
    """``GET /_emulator/stats[?context=…][&process=false]``: one account's counters."""
    query = _query(request, (CONTEXT, "process"))
    fresh = query.get("process") != "false"
    return 200, request.state.stats_json(process=fresh, context=query.get(CONTEXT))


def get_clock(request: Request) -> Result:
    return 200, request.state.clock.as_dict()


def advance_clock(request: Request) -> Result:
    """``POST /_emulator/clock`` with ``{"advance_s": N}``: move the emulated clock N seconds on."""
    body = request.json(allow_empty=True)
    problems = [f"unknown setting: {name}" for name in body if name != "advance_s"]
    if "advance_s" not in body:
        problems.append("advance_s is required")
    else:
        problems += check_advance(body["advance_s"], request.state.clock.offset)
    if problems:
        raise _bad("; ".join(problems))
    request.state.clock.advance(body["advance_s"])
    return 200, request.state.clock.as_dict()


def reset(request: Request) -> Result:
    """``POST /_emulator/reset``: every account emptied (connected accounts stay), startup faults."""
    request.state.reset()
    return 200, {"reset": True}


def health(request: Request) -> Result:
    return 200, {"status": "ok"}


def add_customer(request: Request) -> Result:
    """``POST /_emulator/customers`` with ``{"id": "cus_…"}`` or ``{"ids": [...]}`` (and ``"livemode":
    true`` for the live account, ``"context"`` for a connected account): customers with chosen ids
    (tests of a customer created after its first usage; benchmarks whose customers must exist)."""
    body = request.json(allow_empty=False)
    tenant = _body_tenant(request, body)
    ids = body.get("ids", [body.get("id")]) if "ids" in body or "id" in body else None
    livemode = body.get("livemode", False)
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, str) and CUSTOMER_ID.match(i) is not None for i in ids)
        or not isinstance(livemode, bool)
        or len(set(body) & {"id", "ids"}) != 1
        or not set(body) <= {"id", "ids", "livemode"}
    ):
        raise _bad('expected {"id": "cus_…"} or {"ids": [...]}')
    request.state.process_pending()  # events received before they existed are judged without them
    catalog = tenant.account(livemode).catalog
    made = [
        catalog.create_customer(
            name=None, email=None, description=None, metadata={}, now=request.now, customer_id=customer_id
        )
        for customer_id in ids
    ]
    return 200, made[0].to_json() if "id" in body else {"created": len(made)}


def list_contexts(request: Request) -> Result:
    """``GET /_emulator/contexts``: the platform's id and every connected account's path."""
    _query(request, ())
    return 200, {"platform": request.state.platform.id, "contexts": request.state.contexts.paths()}


def add_contexts(request: Request) -> Result:
    """``POST /_emulator/contexts`` with ``{"id": "acct_…"}`` or ``{"ids": [...]}``: connected accounts
    a platform key may then act in (a path ``acct_a/acct_b`` creates b under a, and a if missing).
    Creating an existing one again changes nothing."""
    body = request.json(allow_empty=False)
    ids = body.get("ids", [body.get("id")]) if "ids" in body or "id" in body else None
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, str) for i in ids)
        or len(set(body) & {"id", "ids"}) != 1
        or not set(body) <= {"id", "ids"}
    ):
        raise _bad('expected {"id": "acct_…"} or {"ids": [...]}')
    try:
        created = request.state.add_contexts(ids)
    except ValueError as error:
        raise _bad(str(error)) from None
    return 200, {"created": created, "contexts": request.state.contexts.paths()}
