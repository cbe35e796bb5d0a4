"""In-process tests of prices, plans, products, customers, Accounts v2 and the API's error shapes."""
# Over 400 lines: the tests of one module, catalog.py, together.

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from connector.devtools.emulator import EmulatorConfig, ManualClock, create_app
from connector.devtools.emulator.app import EmulatorApp

pytestmark = pytest.mark.anyio

KEY = "sk_test_emulatorcatalog1"
NOW = 1_717_243_200


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Emu:
    def __init__(self, app: EmulatorApp, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    async def post(self, path: str, data: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
        return await self.client.post(
            path, data=data or {}, headers={"Authorization": f"Bearer {KEY}", **headers}
        )

    async def get(self, path: str, params: Any = None) -> httpx.Response:
        return await self.client.get(path, params=params, headers={"Authorization": f"Bearer {KEY}"})

    async def ok(self, path: str, data: dict[str, Any] | None = None, **headers: str) -> dict[str, Any]:
        response = await self.post(path, data, **headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def meter(self, event_name: str = "api_requests") -> str:
        body = await self.ok(
            "/v1/billing/meters",
            {"display_name": "API", "event_name": event_name, "default_aggregation[formula]": "sum"},
        )
        return str(body["id"])


async def open_emulator(**config: Any) -> tuple[Emu, httpx.AsyncClient]:
    app = create_app(EmulatorConfig(**config), clock=ManualClock(NOW))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emulator")
    return Emu(app, client), client


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    emulator, client = await open_emulator()
    async with client:
        yield emulator


def metered_price(meter_id: str, **extra: str) -> dict[str, str]:
    return {
        "currency": "usd",
        "unit_amount_decimal": "0.25",
        "product_data[name]": "API calls",
        "recurring[interval]": "month",
        "recurring[usage_type]": "metered",
        "recurring[meter]": meter_id,
        **extra,
    }


# -- prices -------------------------------------------------------------------------------------


async def test_metered_price_points_at_its_meter(emu: Emu) -> None:
    meter_id = await emu.meter()
    price = await emu.ok("/v1/prices", metered_price(meter_id))
    assert price["object"] == "price" and price["id"].startswith("price_")
    assert price["type"] == "recurring" and price["active"] is True
    assert price["recurring"] == {
        "interval": "month",
        "interval_count": 1,
        "meter": meter_id,
        "trial_period_days": None,
        "usage_type": "metered",
    }
    assert price["unit_amount"] is None and price["unit_amount_decimal"] == "0.25"
    product = (await emu.get(f"/v1/products/{price['product']}")).json()
    assert product["name"] == "API calls" and product["object"] == "product"
    assert (await emu.get(f"/v1/prices/{price['id']}")).json() == price


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"recurring[meter]": "mtr_missing"}, "recurring[meter]"),
        ({"recurring[usage_type]": "licensed"}, "recurring[meter]"),
        ({"recurring[interval]": "fortnight"}, "recurring[interval]"),
        ({"currency": ""}, "currency"),
        ({"unit_amount": "5"}, None),
        ({"unit_amount_decimal": "-1"}, "unit_amount_decimal"),
        ({"product": "prod_missing"}, "product"),
        ({"recurring[aggregate_usage]": "sum"}, "recurring[aggregate_usage]"),
    ],
)
async def test_price_errors(emu: Emu, change: dict[str, str], param: str | None) -> None:
    meter_id = await emu.meter()
    data = metered_price(meter_id, **change)
    response = await emu.post("/v1/prices", data)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert (await emu.get("/v1/products")).json()["data"] == []  # nothing half-created


async def test_inactive_meter_cannot_be_attached(emu: Emu) -> None:
    meter_id = await emu.meter()
    await emu.post(f"/v1/billing/meters/{meter_id}/deactivate")
    response = await emu.post("/v1/prices", metered_price(meter_id))
    assert response.status_code == 400
    assert "inactive" in response.json()["error"]["message"]
    plan = await emu.post(
        "/v1/plans",
        {
            "currency": "usd",
            "amount": "1",
            "interval": "month",
            "product[name]": "P",
            "usage_type": "metered",
            "meter": meter_id,
        },
    )
    assert plan.status_code == 400 and plan.json()["error"]["param"] == "meter"


async def test_metered_price_needs_a_meter_from_basil_on(emu: Emu) -> None:
    data = metered_price("x")
    del data["recurring[meter]"]
    assert (await emu.post("/v1/prices", data)).status_code == 400
    assert (await emu.post("/v1/prices", data, **{"Stripe-Version": "2025-03-31.basil"})).status_code == 400
    legacy = await emu.post("/v1/prices", data, **{"Stripe-Version": "2024-09-30.acacia"})
    assert legacy.status_code == 200 and legacy.json()["recurring"]["meter"] is None


async def test_list_prices_filters_by_meter_and_active_and_paginates(emu: Emu) -> None:
    first, second = await emu.meter("a"), await emu.meter("b")
    product = (await emu.ok("/v1/products", {"name": "Usage"}))["id"]
    base = {"currency": "usd", "unit_amount": "3", "product": product, "recurring[interval]": "month"}
    p1 = await emu.ok("/v1/prices", {**base, "recurring[usage_type]": "metered", "recurring[meter]": first})
    p2 = await emu.ok("/v1/prices", {**base, "recurring[usage_type]": "metered", "recurring[meter]": first})
    p3 = await emu.ok("/v1/prices", {**base, "recurring[usage_type]": "metered", "recurring[meter]": second})
    one_time = await emu.ok("/v1/prices", {"currency": "eur", "unit_amount": "100", "product": product})
    assert one_time["type"] == "one_time" and one_time["recurring"] is None
    updated = await emu.ok(f"/v1/prices/{p2['id']}", {"active": "false", "nickname": "old"})
    assert updated["active"] is False and updated["nickname"] == "old"

    async def ids(params: dict[str, Any]) -> list[str]:
        response = await emu.get("/v1/prices", params)
        assert response.status_code == 200, response.text
        return [p["id"] for p in response.json()["data"]]

    assert await ids({"recurring[meter]": first}) == [p2["id"], p1["id"]]
    assert await ids({"recurring[meter]": first, "active": "true"}) == [p1["id"]]
    assert await ids({"type": "one_time"}) == [one_time["id"]]
    assert await ids({"recurring[usage_type]": "metered", "active": "true"}) == [p3["id"], p1["id"]]
    page = (await emu.get("/v1/prices", {"limit": 2})).json()
    assert page["has_more"] is True and page["url"] == "/v1/prices"
    assert await ids({"limit": 2, "starting_after": page["data"][1]["id"]}) == [p2["id"], p1["id"]]
    assert (await emu.get("/v1/prices", {"recurring[bogus]": "1"})).status_code == 400


# -- plans --------------------------------------------------------------------------------------


async def test_plans_are_the_older_face_of_recurring_prices(emu: Emu) -> None:
    meter_id = await emu.meter()
    plan = await emu.ok(
        "/v1/plans",
        {
            "currency": "usd",
            "amount": "7",
            "interval": "month",
            "product[name]": "Calls",
            "usage_type": "metered",
            "meter": meter_id,
        },
    )
    assert plan["object"] == "plan" and plan["meter"] == meter_id and plan["usage_type"] == "metered"
    assert plan["amount"] == 7 and plan["amount_decimal"] == "7" and plan["interval_count"] == 1
    as_price = (await emu.get(f"/v1/prices/{plan['id']}")).json()
    assert as_price["recurring"]["meter"] == meter_id and as_price["unit_amount"] == 7
    price = await emu.ok("/v1/prices", metered_price(meter_id))
    plans = (await emu.get("/v1/plans")).json()
    assert [p["id"] for p in plans["data"]] == [price["id"], plan["id"]]
    assert plans["data"][0]["object"] == "plan" and plans["data"][0]["meter"] == meter_id
    assert (await emu.get("/v1/plans", {"meter": meter_id})).status_code == 400  # no meter filter
    inactive = await emu.ok(f"/v1/plans/{plan['id']}", {"active": "false"})
    assert inactive["active"] is False
    assert [p["id"] for p in (await emu.get("/v1/plans", {"active": "true"})).json()["data"]] == [price["id"]]


async def test_plan_with_existing_product_and_custom_id(emu: Emu) -> None:
    product = (await emu.ok("/v1/products", {"name": "Seats", "id": "prod_seats"}))["id"]
    plan = await emu.ok(
        "/v1/plans",
        {"id": "gold", "currency": "usd", "amount": "1000", "interval": "year", "product": product},
    )
    assert plan["id"] == "gold" and plan["product"] == "prod_seats" and plan["usage_type"] == "licensed"
    assert (
        await emu.post(
            "/v1/plans",
            {"id": "gold", "currency": "usd", "amount": "1", "interval": "year", "product": product},
        )
    ).status_code == 400
    one_time = await emu.ok("/v1/prices", {"currency": "usd", "unit_amount": "5", "product": product})
    assert (await emu.get(f"/v1/plans/{one_time['id']}")).status_code == 404


# -- products and customers ---------------------------------------------------------------------


async def test_products_list_and_retrieve(emu: Emu) -> None:
    a = await emu.ok("/v1/products", {"name": "A"})
    b = await emu.ok("/v1/products", {"name": "B", "active": "false", "metadata[team]": "billing"})
    assert b["metadata"] == {"team": "billing"}
    listed = (await emu.get("/v1/products", {"active": "true"})).json()
    assert [p["id"] for p in listed["data"]] == [a["id"]]
    assert (await emu.get("/v1/products/prod_nope")).status_code == 404
    assert (await emu.post("/v1/products", {})).json()["error"]["param"] == "name"


async def test_customers_registry_in_strict_mode() -> None:
    emulator, client = await open_emulator(require_known_customers=True)
    async with client:
        meter_id = await emulator.meter()
        customer = await emulator.ok("/v1/customers", {"name": "Ada", "email": "ada@example.com"})
        assert customer["object"] == "customer" and customer["id"].startswith("cus_")
        assert (await emulator.get(f"/v1/customers/{customer['id']}")).json() == customer
        session = await emulator.ok("/v2/billing/meter_event_session")
        events = [
            {
                "event_name": "api_requests",
                "identifier": "k",
                "payload": {"stripe_customer_id": customer["id"], "value": "2"},
            },
            {
                "event_name": "api_requests",
                "identifier": "u",
                "payload": {"stripe_customer_id": "cus_Unknown1", "value": "2"},
            },
        ]
        response = await client.post(
            "/v2/billing/meter_event_stream",
            content=orjson.dumps({"events": events}),
            headers={"Authorization": f"Bearer {session['authentication_token']}"},
        )
        assert response.status_code == 200
        state = emulator.app.state
        known, unknown = state.event_status("k"), state.event_status("u")
        assert known is not None and known.status == "valid"
        assert unknown is not None and unknown.error_code == "meter_event_customer_not_found"
        summary = await emulator.get(
            f"/v1/billing/meters/{meter_id}/event_summaries",
            {"customer": "cus_Unknown1", "start_time": NOW - 60, "end_time": NOW + 60},
        )
        assert summary.status_code == 400 and summary.json()["error"]["code"] == "resource_missing"


async def test_retrieve_unknown_customer_is_stripes_404() -> None:
    emulator, client = await open_emulator(require_known_customers=True)
    async with client:
        response = await emulator.get("/v1/customers/cus_Missing1")
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["message"] == "No such customer: 'cus_Missing1'"
        assert error["code"] == "resource_missing" and error["param"] == "id"
        assert (await emulator.get("/v2/core/accounts/acct_Missing1")).status_code == 404


async def test_lenient_customers_exist_as_far_as_lookups_go(emu: Emu) -> None:
    # Without --require-known-customers meter events for any well-formed id count, so a lookup before
    # sending must find it too; malformed ids stay unknown.
    found = await emu.get("/v1/customers/cus_Anybody1")
    assert found.status_code == 200 and found.json()["id"] == "cus_Anybody1"
    account = await emu.get("/v2/core/accounts/acct_Anybody1")
    assert account.status_code == 200 and account.json()["id"] == "acct_Anybody1"
    assert (await emu.get("/v1/customers/not-a-customer")).status_code == 404


async def stream_customers(emulator: Emu, client: httpx.AsyncClient, *customers: str) -> None:
    """One stream request with one event per customer, identified by the customer id."""
    session = await emulator.ok("/v2/billing/meter_event_session")
    events = [
        {"event_name": "api_requests", "identifier": c, "payload": {"stripe_customer_id": c, "value": "2"}}
        for c in customers
    ]
    response = await client.post(
        "/v2/billing/meter_event_stream",
        content=orjson.dumps({"events": events}),
        headers={"Authorization": f"Bearer {session['authentication_token']}"},
    )
    assert response.status_code == 200


def error_code(emulator: Emu, identifier: str) -> str | None:
    status = emulator.app.state.event_status(identifier)
    assert status is not None
    return status.error_code


async def test_customer_ids_and_account_ids_are_both_customers(emu: Emu) -> None:
    await emu.meter()
    await stream_customers(
        emu, emu.client, "cus_Any1", "acct_1Nv0FGQ9RKHgCVdK", "acct-1", "account_1", "cus_"
    )
    assert error_code(emu, "cus_Any1") is None
    assert error_code(emu, "acct_1Nv0FGQ9RKHgCVdK") is None
    for shapeless in ("acct-1", "account_1", "cus_"):
        assert error_code(emu, shapeless) == "meter_event_customer_not_found"


async def create_account(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/v2/core/accounts", json=body, headers={"Authorization": f"Bearer {KEY}"})


async def test_known_customers_include_accounts_configured_as_customers() -> None:
    emulator, client = await open_emulator(require_known_customers=True)
    async with client:
        meter_id = await emulator.meter()
        customer = (await create_account(client, {"configuration": {"customer": {}}})).json()
        merchant = (await create_account(client, {"configuration": {"merchant": {}}})).json()
        await stream_customers(emulator, client, customer["id"], merchant["id"], "acct_Unknown1")
        assert error_code(emulator, customer["id"]) is None
        assert error_code(emulator, merchant["id"]) == "meter_event_customer_not_found"
        assert error_code(emulator, "acct_Unknown1") == "meter_event_customer_not_found"
        summary = await emulator.get(
            f"/v1/billing/meters/{meter_id}/event_summaries",
            {"customer": customer["id"], "start_time": NOW - 60, "end_time": NOW + 60},
        )
        assert summary.json()["data"][0]["aggregated_value"] == 2.0


async def test_account_object_shape_and_include(emu: Emu) -> None:
    response = await create_account(
        emu.client,
        {
            "display_name": "Jenny Rosen",
            "contact_email": "jenny@example.com",
            "identity": {"country": "us"},
            "configuration": {"customer": {"capabilities": {"automatic_indirect_tax": {"requested": True}}}},
            "metadata": {"crm": "42"},
        },
    )
    assert response.status_code == 200, response.text
    account = response.json()
    assert account["id"].startswith("acct_") and account["object"] == "v2.core.account"
    assert account["created"] == "2024-06-01T12:00:00.000Z" and account["livemode"] is False
    assert account["applied_configurations"] == ["customer"] and account["closed"] is False
    assert account["display_name"] == "Jenny Rosen" and account["contact_email"] == "jenny@example.com"
    assert account["metadata"] == {"crm": "42"}
    # Include-dependent values are null unless asked for.
    assert account["configuration"] is None and account["identity"] is None
    included = await emu.get(
        f"/v2/core/accounts/{account['id']}",
        {"include[0]": "configuration.customer", "include[1]": "identity"},
    )
    body = included.json()
    assert body["configuration"] == {
        "customer": {"capabilities": {"automatic_indirect_tax": {"requested": True}}},
        "merchant": None,
        "recipient": None,
    }
    assert body["identity"] == {"country": "us"}
    plain = (await emu.get(f"/v2/core/accounts/{account['id']}")).json()
    assert plain == account


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"colour": "red"}, "parameter_unknown"),
        ({"configuration": {"buyer": {}}}, "parameter_unknown"),
        ({"configuration": {"customer": "yes"}}, "parameter_invalid"),
        ({"configuration": []}, "parameter_invalid"),
        ({"include": ["everything"]}, "parameter_invalid"),
        ({"dashboard": "fancy"}, "parameter_invalid"),
        ({"display_name": 5}, "parameter_invalid"),
        ({"metadata": {"n": 1}}, "parameter_invalid"),
    ],
)
async def test_account_create_errors(emu: Emu, body: dict[str, Any], code: str) -> None:
    response = await create_account(emu.client, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"type", "code", "message", "doc_url"} and error["code"] == code


async def test_unknown_account_is_a_v2_404() -> None:
    emulator, client = await open_emulator(require_known_customers=True)
    async with client:
        response = await emulator.get("/v2/core/accounts/acct_Missing1")
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["code"] == "resource_missing" and "acct_Missing1" in error["message"]
        assert set(error) == {"type", "code", "message", "doc_url"}


# -- error shapes and routing -------------------------------------------------------------------


async def test_unknown_routes_are_404_in_the_right_shape(emu: Emu) -> None:
    v1 = await emu.get("/v1/charges")
    assert v1.status_code == 404
    assert set(v1.json()["error"]) == {"type", "code", "message", "param", "doc_url"}
    assert "Unrecognized request URL" in v1.json()["error"]["message"]
    v2 = await emu.get("/v2/core/nothing")
    assert v2.status_code == 404
    assert set(v2.json()["error"]) == {"type", "code", "message", "doc_url"} and v2.json()["error"]["code"]
    wrong_method = await emu.client.get("/v2/billing/meter_event_stream")
    assert wrong_method.status_code == 404
    elsewhere = await emu.client.get("/favicon.ico")
    assert elsewhere.status_code == 404


async def test_v1_errors_carry_every_key_and_responses_carry_a_request_id(emu: Emu) -> None:
    response = await emu.post("/v1/billing/meters", {"display_name": "x"})
    error = response.json()["error"]
    assert error["code"] == "parameter_missing" and error["param"] == "event_name"
    assert error["doc_url"] == "https://docs.stripe.com/error-codes/parameter-missing"
    assert response.headers["request-id"].startswith("req_")
    malformed = await emu.client.post(
        "/v1/products",
        content=b"name[=x",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert malformed.status_code == 400


async def test_health(emu: Emu) -> None:
    assert (await emu.client.get("/_emulator/health")).json() == {"status": "ok"}


async def test_customers_are_listed_newest_first_in_pages() -> None:
    emulator, client = await open_emulator(require_known_customers=True)
    async with client:
        made = [(await emulator.ok("/v1/customers", {"name": f"n{i}"}))["id"] for i in range(5)]
        first = (await emulator.get("/v1/customers", {"limit": 3})).json()
        assert first["object"] == "list" and first["has_more"] is True and len(first["data"]) == 3
        rest = (
            await emulator.get("/v1/customers", {"limit": 3, "starting_after": first["data"][-1]["id"]})
        ).json()
        listed = [c["id"] for c in first["data"] + rest["data"]]
        assert sorted(listed) == sorted(made) and rest["has_more"] is False


async def test_a_customer_with_a_chosen_id_resolves_from_then_on() -> None:
    emulator, client = await open_emulator(require_known_customers=True)
    async with client:
        assert (await emulator.get("/v1/customers/cus_Chosen1")).status_code == 404
        added = await client.post("/_emulator/customers", json={"id": "cus_Chosen1"})
        assert added.status_code == 200 and added.json()["id"] == "cus_Chosen1"
        found = await emulator.get("/v1/customers/cus_Chosen1")
        assert found.status_code == 200 and found.json()["object"] == "customer"
        refused = await client.post("/_emulator/customers", json={"id": "bob"})
        assert refused.status_code == 400


async def test_many_customers_with_chosen_ids_at_once() -> None:
    emulator, client = await open_emulator(require_known_customers=True)
    async with client:
        added = await client.post("/_emulator/customers", json={"ids": ["cus_Many1", "cus_Many2"]})
        assert added.status_code == 200 and added.json() == {"created": 2}
        assert (await emulator.get("/v1/customers/cus_Many2")).status_code == 200
        both = await client.post("/_emulator/customers", json={"id": "cus_X1", "ids": ["cus_X2"]})
        assert both.status_code == 400
