"""Abuse and bad input over HTTP: rate limits, the card-testing guard, request limits,
authentication and object-level authorization, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import date

import orjson
import pytest

from gateway import merchants as merchants_module
from gateway.store.merchants import rotate_key, set_limits
from tests.conftest import Merchant
from tests.payments_helpers import (
    APPROVED_AMEX,
    APPROVED_MASTERCARD,
    APPROVED_VISA,
    DECLINES,
    authorize,
    card,
    get,
    payment_body,
    post,
)
from tests.test_metrics import scrape, value

GENERIC_DECLINE_CARD = next(n for n, code in DECLINES.items() if code == "generic_decline")


def assert_error_shape(body: dict, status_type: str, code: str) -> None:
    error = body["error"]
    assert set(error) == {"type", "code", "message", "param", "decline_code", "payment_id"}
    assert (error["type"], error["code"]) == (status_type, code)
    assert "Traceback" not in error["message"]


# ---- per-key rate limit --------------------------------------------------------------------


async def test_a_key_over_its_rate_gets_429_with_retry_after_and_nothing_runs(
    client, merchant, other_merchant, db
):
    async with db.acquire() as conn:
        await set_limits(conn, merchant.id, {"rate_limit_per_s": 1, "rate_limit_burst": 2})
    before = value(await scrape(client), "kassa_rate_limited_total")
    first = [await authorize(client, merchant, key=f"k{i}") for i in range(2)]
    assert [status for status, _ in first] == [201, 201]
    status, body, response = await post(
        client, "/v1/payments", merchant, payment_body(), key="k-limited"
    )
    assert status == 429
    assert_error_shape(body, "rate_limit_error", "rate_limited")
    assert int(response.headers["Retry-After"]) >= 1
    # Refused before anything ran: no payment, no claimed key; and it is counted.
    assert await db.fetchval("SELECT count(*) FROM payments") == 2
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'k-limited'") == 0
    assert value(await scrape(client), "kassa_rate_limited_total") == before + 1
    # Reads count too: the limit is per key, not per route.
    assert (await get(client, "/v1/balance", merchant))[0] == 429
    # Another merchant's key has its own bucket.
    assert (await authorize(client, other_merchant))[0] == 201
    # After Retry-After the same key (and Idempotency-Key) runs, and it is not a replay.
    await asyncio.sleep(int(response.headers["Retry-After"]))
    status, body, response = await post(
        client, "/v1/payments", merchant, payment_body(), key="k-limited"
    )
    assert status == 201, body
    assert "Idempotent-Replayed" not in response.headers


async def test_the_gateway_default_applies_to_merchants_without_their_own(
    app_factory, merchant, db
):
    client = await app_factory(rate_limit_per_s=1, rate_limit_burst=1)
    assert (await get(client, "/v1/balance", merchant))[0] == 200
    assert (await get(client, "/v1/balance", merchant))[0] == 429
    async with db.acquire() as conn:  # a merchant's own limit overrides it; 0 is unlimited
        await set_limits(conn, merchant.id, {"rate_limit_per_s": 0})
    client = await app_factory(rate_limit_per_s=1, rate_limit_burst=1)
    statuses = [(await get(client, "/v1/balance", merchant))[0] for _ in range(20)]
    assert statuses == [200] * 20


# ---- card-testing guard --------------------------------------------------------------------


async def sandbox_calls(db, payment_id: str) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM sandbox_operations WHERE payment_id = $1", payment_id
    )


async def test_card_velocity_declines_without_asking_the_processor(app_factory, merchant, db):
    client = await app_factory(velocity_card_attempts_max=3)
    before = value(await scrape(client), "kassa_risk_declines_total", rule="card_attempts")
    for i in range(3):
        assert (await authorize(client, merchant, key=f"ok-{i}"))[0] == 201
    status, body = await authorize(client, merchant, key="tester")
    assert status == 402
    assert_error_shape(body, "card_error", "card_declined")
    assert body["error"]["decline_code"] == "card_velocity_exceeded"
    payment_id = body["error"]["payment_id"]
    stored = (await get(client, f"/v1/payments/{payment_id}", merchant))[1]
    assert (stored["status"], stored["decline_code"]) == ("declined", "card_velocity_exceeded")
    assert await sandbox_calls(db, payment_id) == 0
    assert (
        value(await scrape(client), "kassa_risk_declines_total", rule="card_attempts") == before + 1
    )
    # A retry with the same key replays the stored decline: it is not a new attempt.
    status, again, response = await post(
        client, "/v1/payments", merchant, payment_body(), key="tester"
    )
    assert (status, response.headers.get("Idempotent-Replayed")) == (402, "true")
    assert again == body
    # Another card of the same shopper is not this card.
    assert (await authorize(client, merchant, number=APPROVED_MASTERCARD))[0] == 201
    # The books stay balanced: a declined payment moves no money.
    assert (
        await db.fetchval(
            "SELECT count(*) FROM ledger_transactions WHERE payment_id = $1", payment_id
        )
        == 0
    )


async def test_repeated_declines_block_the_card(app_factory, merchant, db):
    client = await app_factory(velocity_card_declines_max=2)
    for _ in range(2):
        status, body = await authorize(client, merchant, number=GENERIC_DECLINE_CARD)
        assert body["error"]["decline_code"] == "generic_decline"
    status, body = await authorize(client, merchant, number=GENERIC_DECLINE_CARD)
    assert (status, body["error"]["decline_code"]) == (402, "card_velocity_exceeded")
    assert await sandbox_calls(db, body["error"]["payment_id"]) == 0
    assert (await authorize(client, merchant))[0] == 201  # good cards still pass


async def test_merchant_velocity_is_configurable_per_merchant(
    app_factory, merchant, other_merchant, db
):
    async with db.acquire() as conn:
        await set_limits(conn, merchant.id, {"velocity_merchant_attempts_max": 2})
    client = await app_factory()
    numbers = [APPROVED_VISA, APPROVED_MASTERCARD, APPROVED_AMEX]
    statuses = [(await authorize(client, merchant, number=n))[0] for n in numbers]
    assert statuses == [201, 201, 402]
    assert (await authorize(client, other_merchant))[0] == 201  # the default (off) for others


# ---- request limits -------------------------------------------------------------------------


def nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "depth,code", [(16, "parameter_invalid"), (17, "json_too_deep"), (5000, "json_too_deep")]
)
async def test_json_depth_is_limited(client, merchant, db, depth, code):
    body = {**payment_body(), "metadata": nested(depth - 1)}
    raw = (
        orjson.dumps(body)
        if depth < 500
        else (b'{"metadata":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}")
    )
    response = await client.post(
        "/v1/payments", data=raw, headers={**merchant.headers, "Content-Type": "application/json"}
    )
    answer = await response.json()
    assert response.status == 400
    if code == "parameter_invalid":  # 16 levels pass the limit; validation refuses the shape
        assert answer["error"]["param"] == "metadata.a"
    else:
        assert_error_shape(answer, "invalid_request_error", code)
    assert await db.fetchval("SELECT count(*) FROM payments") == 0


async def test_a_stalled_body_times_out_with_408(app_factory, merchant, db):
    client = await app_factory(body_read_timeout_ms=300)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /v1/payments HTTP/1.1\r\nHost: kassa\r\n"
        + f"Authorization: Bearer {merchant.secret}\r\n".encode()
        + b'Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{"amount":'
    )
    await writer.drain()
    started = time.monotonic()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    elapsed = time.monotonic() - started
    assert head.startswith(b"HTTP/1.1 408"), head
    assert 0.2 < elapsed < 5
    writer.close()
    assert await db.fetchval("SELECT count(*) FROM payments") == 0


async def test_oversized_ids_and_pages_are_precise_4xx(client, merchant):
    status, body = await get(client, "/v1/payments/pay_" + "a" * 5000, merchant)
    assert (status, body["error"]["code"]) == (404, "resource_missing")
    status, body = await get(client, "/v1/payments?limit=101", merchant)
    assert (status, body["error"]["param"]) == (400, "limit")
    status, body, _ = await post(
        client, "/v1/payments", merchant, payment_body(metadata={f"k{i}": "v" for i in range(21)})
    )
    assert (status, body["error"]["param"]) == (400, "metadata")
    status, body, _ = await post(
        client, "/v1/payments", merchant, payment_body(reference="r" * 256)
    )
    assert (status, body["error"]["param"]) == (400, "reference")
    status, body, _ = await post(client, "/v1/payments", merchant, payment_body(), key="k" * 256)
    assert (status, body["error"]["param"]) == (400, "Idempotency-Key")


# ---- authentication ---------------------------------------------------------------------------


async def test_unknown_altered_and_revoked_keys_get_401(client, merchant, db, monkeypatch):
    altered = merchant.secret[:-1] + ("A" if merchant.secret[-1] != "A" else "B")
    for secret in (altered, "sk_" + "0" * 43, merchant.secret + "x", "", "Bearer"):
        response = await client.get("/v1/balance", headers={"Authorization": f"Bearer {secret}"})
        assert response.status == 401, secret
        assert (await response.json())["error"]["type"] == "authentication_error"
    assert (await get(client, "/v1/balance", merchant))[0] == 200
    async with db.acquire() as conn:
        new = await rotate_key(conn, merchant.id, grace_s=0)
    monkeypatch.setattr(merchants_module, "AUTH_CACHE_TTL_S", 0.0)  # no 5 s cache grace
    status, body = await get(client, "/v1/balance", merchant)
    assert (status, body["error"]["code"]) == (401, "api_key_invalid")
    assert (await get(client, "/v1/balance", Merchant(merchant.id, new.secret)))[0] == 200


async def test_metrics_need_their_own_token_when_one_is_set(app_factory, merchant):
    client = await app_factory(metrics_token="metrics-secret-1")
    for headers in ({}, merchant.headers, {"Authorization": "Bearer metrics-secret-2"}):
        response = await client.get("/metrics", headers=headers)
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "metrics_token_invalid"
    response = await client.get("/metrics", headers={"Authorization": "Bearer metrics-secret-1"})
    assert response.status == 200
    assert "kassa_http_requests_total" in await response.text()


# ---- object-level authorization on every route ---------------------------------------------


async def test_every_v1_route_keeps_merchants_apart(app_factory, merchant, other_merchant):
    # Loopback webhook URLs allowed: the endpoint below points at a closed port.
    client = await app_factory(webhook_allow_private="1")
    _, endpoint, _ = await post(
        client,
        "/v1/webhook_endpoints",
        merchant,
        {"url": "http://127.0.0.1:9/hook", "enabled_events": ["*"]},
    )
    _, payment = await authorize(client, merchant, capture="automatic", amount=1_000)
    _, refund, _ = await post(
        client, f"/v1/payments/{payment['id']}/refunds", merchant, {"amount": 100}
    )
    _, token, _ = await post(client, "/v1/tokens", merchant, {"card": card()})
    _, session, _ = await post(
        client, "/v1/checkout/sessions", merchant, {"amount": 700, "currency": "EUR"}
    )
    _, link, _ = await post(
        client, "/v1/payment_links", merchant, {"amount": 700, "currency": "EUR"}
    )
    cs, plink = session["id"], link["id"]
    pid, today = payment["id"], date.today().isoformat()
    events = (await get(client, "/v1/events", merchant))[1]["data"]
    assert events, "the payment wrote events"
    eid, we = events[0]["id"], endpoint["id"]

    async def delete(path: str, who) -> tuple[int, dict]:
        response = await client.delete(path, headers=who.headers)
        return response.status, await response.json()

    token_body = {**payment_body(), "payment_method": {"type": "token", "token": token["id"]}}
    # Billing objects: a clock, a customer on it with a saved card, a price, a
    # subscription and its first invoice.
    clock = (
        await post(client, "/v1/test_clocks", merchant, {"frozen_time": "2027-01-31T10:00:00Z"})
    )[1]
    cus = (await post(client, "/v1/customers", merchant, {"test_clock": clock["id"]}))[1]["id"]
    saved_token = (await post(client, "/v1/tokens", merchant, {"card": card()}))[1]["id"]
    status, _, _ = await post(
        client, f"/v1/customers/{cus}/payment_methods", merchant, {"token": saved_token}
    )
    assert status == 200
    price = (
        await post(
            client,
            "/v1/prices",
            merchant,
            {"amount": 500, "currency": "eur", "recurring": {"interval": "month"}},
        )
    )[1]["id"]
    sub = (await post(client, "/v1/subscriptions", merchant, {"customer": cus, "price": price}))[1][
        "id"
    ]
    invoice = (await get(client, f"/v1/invoices?subscription={sub}", merchant))[1]["data"][0]["id"]
    off_session_body = {
        "amount": 100,
        "currency": "eur",
        "customer": cus,
        "payment_method": {"type": "token", "token": saved_token},
        "off_session": True,
    }
    # Per route template: what the other merchant does, and what it must get.
    refused = {  # another merchant's id: 404, exactly as for an unknown one
        ("GET", "/v1/payments/{id}"): lambda: get(client, f"/v1/payments/{pid}", other_merchant),
        ("POST", "/v1/payments/{id}/capture"): lambda: post(
            client, f"/v1/payments/{pid}/capture", other_merchant
        ),
        ("POST", "/v1/payments/{id}/void"): lambda: post(
            client, f"/v1/payments/{pid}/void", other_merchant
        ),
        ("POST", "/v1/payments/{id}/confirm"): lambda: post(
            client,
            f"/v1/payments/{pid}/confirm",
            other_merchant,
            {"payment_method": payment_body()["payment_method"]},
        ),
        ("POST", "/v1/payments/{id}/cancel"): lambda: post(
            client, f"/v1/payments/{pid}/cancel", other_merchant
        ),
        ("POST", "/v1/payments/{id}/refunds"): lambda: post(
            client, f"/v1/payments/{pid}/refunds", other_merchant, {"amount": 1}
        ),
        ("GET", "/v1/refunds/{id}"): lambda: get(
            client, f"/v1/refunds/{refund['id']}", other_merchant
        ),
        ("POST", "/v1/payments"): lambda: post(client, "/v1/payments", other_merchant, token_body),
        ("GET", "/v1/webhook_endpoints/{id}"): lambda: get(
            client, f"/v1/webhook_endpoints/{we}", other_merchant
        ),
        ("POST", "/v1/webhook_endpoints/{id}"): lambda: post(
            client, f"/v1/webhook_endpoints/{we}", other_merchant, {"status": "disabled"}
        ),
        ("DELETE", "/v1/webhook_endpoints/{id}"): lambda: delete(
            f"/v1/webhook_endpoints/{we}", other_merchant
        ),
        ("GET", "/v1/events/{id}"): lambda: get(client, f"/v1/events/{eid}", other_merchant),
        ("GET", "/v1/events/{id}/deliveries"): lambda: get(
            client, f"/v1/events/{eid}/deliveries", other_merchant
        ),
        ("POST", "/v1/events/{id}/retry"): lambda: post(
            client, f"/v1/events/{eid}/retry", other_merchant
        ),
        ("GET", "/v1/checkout/sessions/{id}"): lambda: get(
            client, f"/v1/checkout/sessions/{cs}", other_merchant
        ),
        ("POST", "/v1/checkout/sessions/{id}/expire"): lambda: post(
            client, f"/v1/checkout/sessions/{cs}/expire", other_merchant
        ),
        ("GET", "/v1/payment_links/{id}"): lambda: get(
            client, f"/v1/payment_links/{plink}", other_merchant
        ),
        ("POST", "/v1/payment_links/{id}"): lambda: post(
            client, f"/v1/payment_links/{plink}", other_merchant, {"active": False}
        ),
        ("POST", "/v1/customers"): lambda: post(
            client, "/v1/customers", other_merchant, {"test_clock": clock["id"]}
        ),
        ("GET", "/v1/customers/{id}"): lambda: get(client, f"/v1/customers/{cus}", other_merchant),
        ("POST", "/v1/customers/{id}"): lambda: post(
            client, f"/v1/customers/{cus}", other_merchant, {"name": "Mallory"}
        ),
        ("DELETE", "/v1/customers/{id}"): lambda: delete(f"/v1/customers/{cus}", other_merchant),
        ("POST", "/v1/customers/{id}/payment_methods"): lambda: post(
            client, f"/v1/customers/{cus}/payment_methods", other_merchant, {"token": token["id"]}
        ),
        ("GET", "/v1/customers/{id}/payment_methods"): lambda: get(
            client, f"/v1/customers/{cus}/payment_methods", other_merchant
        ),
        ("DELETE", "/v1/customers/{id}/payment_methods/{token}"): lambda: delete(
            f"/v1/customers/{cus}/payment_methods/{saved_token}", other_merchant
        ),
        ("GET", "/v1/prices/{id}"): lambda: get(client, f"/v1/prices/{price}", other_merchant),
        ("POST", "/v1/subscriptions"): lambda: post(
            client, "/v1/subscriptions", other_merchant, {"customer": cus, "price": price}
        ),
        ("GET", "/v1/subscriptions/{id}"): lambda: get(
            client, f"/v1/subscriptions/{sub}", other_merchant
        ),
        ("POST", "/v1/subscriptions/{id}/cancel"): lambda: post(
            client, f"/v1/subscriptions/{sub}/cancel", other_merchant, {}
        ),
        ("GET", "/v1/invoices/{id}"): lambda: get(
            client, f"/v1/invoices/{invoice}", other_merchant
        ),
        ("GET", "/v1/test_clocks/{id}"): lambda: get(
            client, f"/v1/test_clocks/{clock['id']}", other_merchant
        ),
        ("POST", "/v1/test_clocks/{id}/advance"): lambda: post(
            client,
            f"/v1/test_clocks/{clock['id']}/advance",
            other_merchant,
            {"frozen_time": "2027-03-01T00:00:00Z"},
        ),
    }
    # A saved customer of the first merchant cannot be charged by the other one either.
    status, body, _ = await post(client, "/v1/payments", other_merchant, off_session_body)
    assert (status, body["error"]["code"]) == (404, "resource_missing"), body
    for check in refused.values():
        status, body = (await check())[:2]
        assert (status, body["error"]["code"]) == (404, "resource_missing"), body
    empty = {  # their own view: none of the first merchant's objects
        ("GET", "/v1/payments"): ("/v1/payments?limit=100", lambda b: b["data"] == []),
        ("GET", "/v1/balance"): ("/v1/balance", lambda b: b["currencies"] == []),
        ("GET", "/v1/reports/settlement"): (
            f"/v1/reports/settlement?date={today}",
            lambda b: b["lines"] == [],
        ),
        ("GET", "/v1/webhook_endpoints"): ("/v1/webhook_endpoints", lambda b: b["data"] == []),
        ("GET", "/v1/events"): ("/v1/events?limit=100", lambda b: b["data"] == []),
        ("GET", "/v1/customers"): ("/v1/customers?limit=100", lambda b: b["data"] == []),
        ("GET", "/v1/subscriptions"): ("/v1/subscriptions?limit=100", lambda b: b["data"] == []),
        ("GET", "/v1/invoices"): (f"/v1/invoices?subscription={sub}", lambda b: b["data"] == []),
    }
    for path, is_empty in empty.values():
        status, body = await get(client, path, other_merchant)
        assert status == 200 and is_empty(body), (path, body)
    # Tokens are created, never read back: a POST makes the other merchant's own token.
    status, own = (await post(client, "/v1/tokens", other_merchant, {"card": card()}))[:2]
    assert status == 201 and own["id"] != token["id"]
    # Every /v1 route of the application has a check above: a new route needs one too.
    routes = {
        (r.method, r.resource.canonical)
        for r in client.app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith("/v1/") and r.method != "HEAD"
    }
    # Creating an endpoint makes the other merchant's own, as a token does.
    status, own_endpoint = (
        await post(
            client,
            "/v1/webhook_endpoints",
            other_merchant,
            {"url": "http://127.0.0.1:9/other", "enabled_events": ["*"]},
        )
    )[:2]
    assert status == 201 and own_endpoint["id"] != we
    # Sessions and links are created, never listed: a POST makes the other merchant's own.
    for path in ("/v1/checkout/sessions", "/v1/payment_links"):
        status, created = (
            await post(client, path, other_merchant, {"amount": 5, "currency": "EUR"})
        )[:2]
        assert status == 201 and created["id"] not in (cs, plink)
    # A price and a test clock are the other merchant's own, as a token is.
    status, own_price = (
        await post(
            client,
            "/v1/prices",
            other_merchant,
            {"amount": 500, "currency": "eur", "recurring": {"interval": "month"}},
        )
    )[:2]
    assert status == 201 and own_price["id"] != price
    status, own_clock = (
        await post(
            client, "/v1/test_clocks", other_merchant, {"frozen_time": "2027-01-31T10:00:00Z"}
        )
    )[:2]
    assert status == 201 and own_clock["id"] != clock["id"]
    assert routes == set(refused) | set(empty) | {
        ("POST", "/v1/tokens"),
        ("POST", "/v1/webhook_endpoints"),
        ("POST", "/v1/checkout/sessions"),
        ("POST", "/v1/payment_links"),
        ("POST", "/v1/prices"),
        ("POST", "/v1/test_clocks"),
    }
    _, unchanged = await get(client, f"/v1/payments/{pid}", merchant)
    assert unchanged["amount_refunded"] == 100
    _, still = await get(client, f"/v1/webhook_endpoints/{we}", merchant)
    assert still["status"] == "enabled"  # the other merchant's disable and delete did nothing
    _, open_still = await get(client, f"/v1/checkout/sessions/{cs}", merchant)
    _, active_still = await get(client, f"/v1/payment_links/{plink}", merchant)
    assert (open_still["status"], active_still["active"]) == ("open", True)
    _, kept = await get(client, f"/v1/subscriptions/{sub}", merchant)
    assert kept["status"] != "canceled"  # nor its cancel
    status, _ = await get(client, f"/v1/customers/{cus}", merchant)
    assert status == 200  # nor its delete


# ---- text the database cannot hold, and echoes -------------------------------------------


@pytest.mark.parametrize(
    "changes,param",
    [
        ({"reference": "order\x00"}, "reference"),
        ({"description": "\x00"}, "description"),
        ({"metadata": {"cart": "c\x00"}}, "metadata.cart"),
        ({"metadata": {"c\x00rt": "c"}}, "metadata"),
        ({"customer": {"email": "a\x00@example.com"}}, "customer.email"),
        (
            {"payment_method": {"type": "card", "card": card(holder_name="Ada\x00")}},
            "payment_method.card.holder_name",
        ),
        ({"payment_method": {"type": "token", "token": "tok_\x00"}}, "payment_method.token"),
    ],
)
async def test_nul_characters_are_a_400_not_a_database_error(client, merchant, db, changes, param):
    status, body, _ = await post(client, "/v1/payments", merchant, payment_body(**changes))
    assert (status, body["error"]["code"], body["error"]["param"]) == (
        400,
        "parameter_invalid",
        param,
    )
    assert await db.fetchval("SELECT count(*) FROM payments") == 0


async def test_odd_ids_are_404s_that_never_echo_a_card_number(client, merchant):
    for path in (
        "/v1/payments/pay_%00x",
        "/v1/payments/4242424242424242",
        "/v1/refunds/re_%C3%A9",
        "/v1/payments?starting_after=pay_%00",
    ):
        status, body = await get(client, path, merchant)
        assert status in (400, 404), (path, body)
        assert "4242424242424242" not in orjson.dumps(body).decode()
    response = await client.get("/v1/4242424242424242", headers=merchant.headers)
    assert response.status == 404
    assert "4242424242424242" not in await response.text()


async def test_405_names_the_allowed_methods(client, merchant):
    response = await client.delete("/v1/payments", headers=merchant.headers)
    assert response.status == 405
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}
    assert (await response.json())["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /v1/balance HTTP/1.1\r\nHost: k\r\nX-Card: 4242424242424242\x00\r\n\r\n",
        b"POST /v1/payments HTTP/1.1\r\nHost: k\r\nContent-Length: -4242424242424242\r\n\r\n",
        b"GET /v1/balance HTTP/1.1\r\nHost: k\r\nX-Long: 4242424242424242"
        + b"a" * 9000
        + b"\r\n\r\n",
        b"4242424242424242 / HTTP/1.1\r\n\r\n",
    ],
)
async def test_unparseable_http_gets_the_json_error_shape_and_no_echo(client, raw):
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(raw)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)  # the connection is closed after it
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400", answer
    assert b"application/json" in head
    assert_error_shape(orjson.loads(body), "invalid_request_error", "request_invalid")
    assert b"4242424242424242" not in answer
    # Like every answer, it carries a request id to quote to support (a new one: the
    # client's headers could not be read).
    assert re.search(rb"\r\nX-Request-Id: [0-9a-f]{32}\r\n", head), head


async def test_an_unknown_key_is_remembered_for_the_cache_ttl(client, merchant, db, monkeypatch):
    from gateway.store.merchants import hash_key

    secret = "sk_not_yet_issued_0123456789abcdef"
    stranger = Merchant(merchant.id, secret)
    assert (await get(client, "/v1/balance", stranger))[0] == 401
    # Issued after the miss: within the TTL the miss is answered from memory (no query per
    # request for a client looping on a bad key)...
    await db.execute(
        "INSERT INTO api_keys (id, merchant_id, key_hash, key_hint) "
        "VALUES ('key_late', $1, $2, 'cdef')",
        merchant.id,
        hash_key(secret),
    )
    assert (await get(client, "/v1/balance", stranger))[0] == 401
    # ...and once the TTL is over the database decides again.
    monkeypatch.setattr(merchants_module, "AUTH_CACHE_TTL_S", 0.0)
    assert (await get(client, "/v1/balance", stranger))[0] == 200
