"""The payment lifecycle of API.md, end to end over HTTP against the real database."""

import asyncio
import re

import pytest

import core_ext
from gateway import recovery
from gateway.http.appkeys import POOL, SERVICE, SETTINGS
from tests.payments_helpers import (
    APPROVED_AMEX,
    APPROVED_DISPUTE_LATER,
    APPROVED_MASTERCARD,
    APPROVED_VISA,
    DECLINES,
    ERROR_CARD,
    TIMEOUT_CARD,
    authorize,
    card,
    future_expiry,
    get,
    payment_body,
    post,
    this_year,
)

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


async def test_manual_capture_authorizes_and_holds(client, merchant):
    status, payment = await authorize(client, merchant)
    assert status == 201, payment
    assert payment["id"].startswith("pay_")
    assert payment["object"] == "payment"
    assert payment["status"] == "authorized"
    assert (payment["amount"], payment["currency"]) == (1999, "EUR")
    assert payment["amount_capturable"] == 1999
    assert payment["amount_captured"] == payment["amount_refunded"] == 0
    assert payment["card"]["brand"] == "visa"
    assert payment["card"]["last4"] == "4242"
    assert payment["metadata"] == {"cart": "c_77"}
    assert payment["processor"] == "sandbox" and payment["processor_reference"]
    assert RFC3339_UTC.match(payment["created"]) and RFC3339_UTC.match(payment["updated"])
    status, again = await get(client, f"/v1/payments/{payment['id']}", merchant)
    assert status == 200 and again == payment


async def test_automatic_capture_captures_everything(client, merchant):
    status, payment = await authorize(client, merchant, capture="automatic")
    assert status == 201
    assert payment["status"] == "captured"
    assert (payment["amount_capturable"], payment["amount_captured"]) == (0, 1999)


async def test_capture_defaults_to_automatic(client, merchant):
    body = payment_body()
    del body["capture"]
    status, payment, _ = await post(client, "/v1/payments", merchant, body)
    assert (status, payment["capture"], payment["status"]) == (201, "automatic", "captured")


@pytest.mark.parametrize(
    "number,brand",
    [
        (APPROVED_VISA, "visa"),
        (APPROVED_MASTERCARD, "mastercard"),
        (APPROVED_AMEX, "amex"),
        (APPROVED_DISPUTE_LATER, "visa"),
    ],
)
async def test_approved_test_cards(client, merchant, number, brand):
    status, payment = await authorize(client, merchant, number)
    assert status == 201
    assert payment["card"]["brand"] == brand
    assert payment["card"]["last4"] == number[-4:]


@pytest.mark.parametrize("number,decline_code", sorted(DECLINES.items()))
async def test_declined_test_cards(client, merchant, number, decline_code):
    status, body = await authorize(client, merchant, number)
    assert status == 402
    error = body["error"]
    assert (error["type"], error["code"], error["decline_code"]) == (
        "card_error",
        "card_declined",
        decline_code,
    )
    status, payment = await get(client, f"/v1/payments/{error['payment_id']}", merchant)
    assert status == 200
    assert payment["status"] == "declined"
    assert payment["decline_code"] == decline_code
    assert payment["amount_capturable"] == 0


async def test_processor_error_card_fails_the_payment(client, merchant):
    status, body = await authorize(client, merchant, ERROR_CARD)
    assert status == 502
    error = body["error"]
    assert (error["type"], error["code"]) == ("api_error", "processor_error")
    status, payment = await get(client, f"/v1/payments/{error['payment_id']}", merchant)
    assert payment["status"] == "failed"


async def test_timeout_card_is_settled_by_recovery_without_a_second_authorization(
    app_factory, merchant, db
):
    client = await app_factory(processor_timeout_ms=200)
    status, body = await authorize(client, merchant, TIMEOUT_CARD, key="slow-1")
    assert status == 504
    error = body["error"]
    assert (error["type"], error["code"]) == ("api_error", "processor_timeout")
    payment_id = error["payment_id"]
    status, payment = await get(client, f"/v1/payments/{payment_id}", merchant)
    assert payment["status"] == "processing"
    # While the outcome is unknown, a retry with the key is told to wait.
    status, body = await authorize(client, merchant, TIMEOUT_CARD, key="slow-1")
    assert (status, body["error"]["code"]) == (409, "idempotency_key_in_use")

    app = client.app
    settings = app[SETTINGS].replace(recovery_after_s=0)
    service = app[SERVICE]
    result = await recovery.run_once(app[POOL], service, service._connector, settings)
    assert result.recovered == 1

    status, payment = await get(client, f"/v1/payments/{payment_id}", merchant)
    assert payment["status"] == "authorized"
    # The retry now gets the settled answer, and the processor authorized exactly once.
    status, replay = await authorize(client, merchant, TIMEOUT_CARD, key="slow-1")
    assert status == 201 and replay["id"] == payment_id and replay["status"] == "authorized"
    assert (
        await db.fetchval(
            "SELECT count(*) FROM sandbox_operations WHERE payment_id = $1 AND operation = 'authorize'",
            payment_id,
        )
        == 1
    )
    assert await db.fetchval("SELECT count(*) FROM payments") == 1


async def test_recovery_fails_a_payment_the_processor_never_saw(app_factory, merchant, db):
    client = await app_factory()
    status, payment = await authorize(client, merchant)
    assert status == 201, payment
    # Simulate a crash between the write-ahead and the processor call.
    await db.execute(
        """INSERT INTO payments (id, merchant_id, status, amount, currency,
        capture_method, card_brand, card_last4, card_exp_month, card_exp_year, card_fingerprint,
        processor) VALUES ('pay_crashed', $1, 'processing', 500, 'EUR', 'manual', 'visa', '4242',
        $2, $3, 'f', 'sandbox')""",
        merchant.id,
        *future_expiry(),
    )
    app = client.app
    settings = app[SETTINGS].replace(recovery_after_s=10)
    # Past the recovery delay but not yet twice it: a processor call may still be running
    # somewhere, so "not found" is not final yet.
    await db.execute(
        "UPDATE payments SET updated_at = now() - interval '15 s' WHERE id = 'pay_crashed'"
    )
    result = await recovery.run_once(app[POOL], app[SERVICE], app[SERVICE]._connector, settings)
    assert result.recovered == 0
    assert (await get(client, "/v1/payments/pay_crashed", merchant))[1]["status"] == "processing"
    await db.execute(
        "UPDATE payments SET updated_at = now() - interval '25 s' WHERE id = 'pay_crashed'"
    )
    result = await recovery.run_once(app[POOL], app[SERVICE], app[SERVICE]._connector, settings)
    assert result.recovered == 1
    status, crashed = await get(client, "/v1/payments/pay_crashed", merchant)
    assert status == 200
    assert crashed["status"] == "failed"


async def test_partial_capture_releases_the_remainder(client, merchant):
    _, payment = await authorize(client, merchant, amount=10_000)
    status, captured, _ = await post(
        client, f"/v1/payments/{payment['id']}/capture", merchant, {"amount": 6_000}
    )
    assert status == 200, captured
    assert captured["status"] == "captured"
    assert (captured["amount_captured"], captured["amount_capturable"]) == (6_000, 0)
    # Only one capture: the released remainder cannot be captured later.
    status, body, _ = await post(client, f"/v1/payments/{payment['id']}/capture", merchant, {})
    assert (status, body["error"]["code"]) == (409, "payment_state_invalid")


async def test_capture_more_than_authorized_is_refused(client, merchant):
    _, payment = await authorize(client, merchant, amount=1_000)
    status, body, _ = await post(
        client, f"/v1/payments/{payment['id']}/capture", merchant, {"amount": 1_001}
    )
    assert status == 400
    assert (body["error"]["code"], body["error"]["param"]) == ("amount_too_large", "amount")
    status, unchanged = await get(client, f"/v1/payments/{payment['id']}", merchant)
    assert unchanged["status"] == "authorized" and unchanged["amount_capturable"] == 1_000


async def test_void_releases_the_hold_and_is_final(client, merchant):
    _, payment = await authorize(client, merchant)
    status, voided, _ = await post(client, f"/v1/payments/{payment['id']}/void", merchant)
    assert status == 200
    assert (voided["status"], voided["amount_capturable"]) == ("voided", 0)
    for action in ("capture", "void"):
        status, body, _ = await post(client, f"/v1/payments/{payment['id']}/{action}", merchant)
        assert (status, body["error"]["code"]) == (409, "payment_state_invalid")


async def test_void_of_captured_payment_is_illegal(client, merchant):
    _, payment = await authorize(client, merchant, capture="automatic")
    status, body, _ = await post(client, f"/v1/payments/{payment['id']}/void", merchant)
    assert status == 409
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "payment_state_invalid"


async def test_refunds_partial_then_full(client, merchant):
    _, payment = await authorize(client, merchant, amount=5_000, capture="automatic")
    pid = payment["id"]
    status, refund, _ = await post(
        client,
        f"/v1/payments/{pid}/refunds",
        merchant,
        {"amount": 2_000, "reason": "requested_by_customer"},
    )
    assert status == 201, refund
    assert refund["id"].startswith("re_") and refund["object"] == "refund"
    assert (refund["payment_id"], refund["amount"], refund["currency"]) == (pid, 2_000, "EUR")
    assert (refund["status"], refund["reason"]) == ("succeeded", "requested_by_customer")
    status, read = await get(client, f"/v1/refunds/{refund['id']}", merchant)
    assert status == 200 and read == refund
    _, partially = await get(client, f"/v1/payments/{pid}", merchant)
    assert (partially["status"], partially["amount_refunded"]) == ("partially_refunded", 2_000)

    status, body, _ = await post(client, f"/v1/payments/{pid}/refunds", merchant, {"amount": 3_001})
    assert (status, body["error"]["code"]) == (400, "amount_too_large")
    status, rest, _ = await post(client, f"/v1/payments/{pid}/refunds", merchant, {})
    assert (status, rest["amount"]) == (201, 3_000)
    _, refunded = await get(client, f"/v1/payments/{pid}", merchant)
    assert (refunded["status"], refunded["amount_refunded"]) == ("refunded", 5_000)
    status, body, _ = await post(client, f"/v1/payments/{pid}/refunds", merchant, {"amount": 1})
    assert (status, body["error"]["code"]) == (409, "payment_state_invalid")


async def test_refund_of_uncaptured_payment_is_illegal(client, merchant):
    _, payment = await authorize(client, merchant)
    status, body, _ = await post(client, f"/v1/payments/{payment['id']}/refunds", merchant, {})
    assert (status, body["error"]["code"]) == (409, "payment_state_invalid")


async def test_racing_refunds_with_different_keys_are_serialized(client, merchant):
    _, payment = await authorize(client, merchant, amount=100, capture="automatic")
    path = f"/v1/payments/{payment['id']}/refunds"
    results = await asyncio.gather(
        post(client, path, merchant, {"amount": 60}, key="race-a"),
        post(client, path, merchant, {"amount": 60}, key="race-b"),
    )
    statuses = sorted((status, body.get("error", {}).get("code")) for status, body, _ in results)
    assert statuses == [(201, None), (400, "amount_too_large")]
    _, final = await get(client, f"/v1/payments/{payment['id']}", merchant)
    assert final["amount_refunded"] == 60


async def test_expiry_of_uncaptured_authorizations(app_factory, merchant, db):
    client = await app_factory()
    _, payment = await authorize(client, merchant)
    await db.execute(
        "UPDATE payments SET authorized_at = now() - interval '8 days' WHERE id = $1", payment["id"]
    )
    app = client.app
    result = await recovery.run_once(
        app[POOL], app[SERVICE], app[SERVICE]._connector, app[SETTINGS]
    )
    assert result.expired == 1
    _, expired = await get(client, f"/v1/payments/{payment['id']}", merchant)
    assert (expired["status"], expired["amount_capturable"]) == ("expired", 0)
    status, body, _ = await post(client, f"/v1/payments/{payment['id']}/capture", merchant)
    assert (status, body["error"]["code"]) == (409, "payment_state_invalid")


async def test_tokens_pay_without_the_card_number(client, merchant, db):
    status, token, _ = await post(
        client, "/v1/tokens", merchant, {"card": card(APPROVED_MASTERCARD)}
    )
    assert status == 201, token
    assert token["id"].startswith("tok_") and token["object"] == "token"
    assert token["card"]["brand"] == "mastercard" and token["card"]["last4"] == "4444"
    assert "number" not in token["card"] and "cvc" not in token["card"]
    body = payment_body()
    body["payment_method"] = {"type": "token", "token": token["id"]}
    status, payment, _ = await post(client, "/v1/payments", merchant, body)
    assert status == 201, payment
    assert payment["card"]["last4"] == "4444"
    assert payment["card"]["fingerprint"] == token["card"]["fingerprint"]
    stored = await db.fetchval("SELECT number_ciphertext FROM tokens WHERE id = $1", token["id"])
    assert APPROVED_MASTERCARD.encode() not in bytes(stored)


async def test_fingerprint_is_per_card_and_per_merchant(client, merchant, other_merchant):
    _, first = await authorize(client, merchant)
    _, second = await authorize(
        client,
        merchant,
        payment_method={
            "type": "card",
            "card": card(APPROVED_VISA, exp_year=future_expiry()[1] + 1),
        },
    )
    _, other_card = await authorize(client, merchant, APPROVED_MASTERCARD)
    _, elsewhere = await authorize(client, other_merchant)
    assert first["card"]["fingerprint"] == second["card"]["fingerprint"]
    assert first["card"]["fingerprint"] != other_card["card"]["fingerprint"]
    assert first["card"]["fingerprint"] != elsewhere["card"]["fingerprint"]


async def test_list_is_newest_first_with_cursor_and_status(client, merchant, other_merchant):
    ids = []
    for amount in (100, 200, 300):
        _, payment = await authorize(client, merchant, amount=amount)
        ids.append(payment["id"])
    await authorize(client, other_merchant)
    status, declined = await authorize(client, merchant, "4000000000000002")
    assert (status, declined["error"]["decline_code"]) == (402, "generic_decline")
    status, page = await get(client, "/v1/payments?limit=2&status=authorized", merchant)
    assert status == 200 and page["object"] == "list"
    assert [p["id"] for p in page["data"]] == [ids[2], ids[1]]
    assert page["has_more"] is True
    status, rest = await get(
        client, f"/v1/payments?limit=2&status=authorized&starting_after={ids[1]}", merchant
    )
    assert [p["id"] for p in rest["data"]] == [ids[0]] and rest["has_more"] is False
    status, everything = await get(client, "/v1/payments", merchant)
    assert len(everything["data"]) == 4
    status, body = await get(client, "/v1/payments?limit=101", merchant)
    assert (status, body["error"]["param"]) == (400, "limit")


async def test_merchants_cannot_see_or_touch_each_others_objects(client, merchant, other_merchant):
    _, payment = await authorize(client, merchant, capture="automatic", amount=1_000)
    _, refund, _ = await post(
        client, f"/v1/payments/{payment['id']}/refunds", merchant, {"amount": 100}
    )
    _, token, _ = await post(client, "/v1/tokens", merchant, {"card": card()})
    pid = payment["id"]
    checks = [
        await get(client, f"/v1/payments/{pid}", other_merchant),
        await get(client, f"/v1/refunds/{refund['id']}", other_merchant),
        (await post(client, f"/v1/payments/{pid}/capture", other_merchant))[:2],
        (await post(client, f"/v1/payments/{pid}/void", other_merchant))[:2],
        (await post(client, f"/v1/payments/{pid}/refunds", other_merchant, {"amount": 1}))[:2],
        await get(client, f"/v1/payments?starting_after={pid}", other_merchant),
    ]
    body = payment_body()
    body["payment_method"] = {"type": "token", "token": token["id"]}
    checks.append((await post(client, "/v1/payments", other_merchant, body))[:2])
    for status, error in checks:
        assert status == 404, error
        assert error["error"]["code"] == "resource_missing"
    _, listed = await get(client, "/v1/payments", other_merchant)
    assert listed["data"] == []
    _, unchanged = await get(client, f"/v1/payments/{pid}", merchant)
    assert unchanged["amount_refunded"] == 100


@pytest.mark.parametrize(
    "body,code,param",
    [
        ({"amount": 19.99, "currency": "eur"}, "parameter_invalid", "amount"),
        ({"amount": 0}, "amount_too_small", "amount"),
        ({"amount": 100_000_000}, "amount_too_large", "amount"),
        ({"currency": "xyz"}, "parameter_invalid", "currency"),
        ({"surprise": 1}, "parameter_unknown", "surprise"),
        (
            {"payment_method": {"type": "card", "card": card("4242424242424241")}},
            "invalid_number",
            "payment_method.card.number",
        ),
        (
            {"payment_method": {"type": "card", "card": card(exp_year=this_year() - 1)}},
            "invalid_expiry_year",
            "payment_method.card.exp_year",
        ),
        (
            {
                "payment_method": {
                    "type": "card",
                    "card": card(
                        exp_year=this_year() + core_ext.validation.EXPIRY_YEARS_AHEAD_MAX + 1
                    ),
                }
            },
            "invalid_expiry_year",
            "payment_method.card.exp_year",
        ),
        (
            {"payment_method": {"type": "card", "card": card(APPROVED_AMEX, cvc="123")}},
            "invalid_cvc",
            "payment_method.card.cvc",
        ),
    ],
)
async def test_bad_input_is_a_precise_400_that_changes_nothing(
    client, merchant, db, body, code, param
):
    status, error, _ = await post(client, "/v1/payments", merchant, payment_body(**body))
    assert status == 400, error
    assert error["error"]["type"] == "invalid_request_error"
    assert (error["error"]["code"], error["error"]["param"]) == (code, param)
    assert await db.fetchval("SELECT count(*) FROM payments") == 0


async def test_malformed_json_is_invalid_json(client, merchant):
    response = await client.post(
        "/v1/payments",
        data=b'{"amount": ',
        headers={**merchant.headers, "Content-Type": "application/json"},
    )
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_json"


async def test_zero_and_three_decimal_currencies(client, merchant):
    status, jpy = await authorize(client, merchant, amount=500, currency="jpy", capture="automatic")
    assert (status, jpy["currency"], jpy["amount_captured"]) == (201, "JPY", 500)
    status, kwd = await authorize(client, merchant, amount=1_250, currency="KWD")
    assert (status, kwd["currency"], kwd["amount"]) == (201, "KWD", 1_250)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        None,
        "application/json; charset=latin-1",
    ],
)
async def test_a_body_that_is_not_json_is_415_and_runs_nothing(client, merchant, db, content_type):
    import orjson

    status, held = await authorize(client, merchant)
    assert status == 201
    raw = orjson.dumps(payment_body())
    headers = {**merchant.headers, "Idempotency-Key": "plain-1"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    for path, body in (
        ("/v1/payments", raw),
        ("/v1/tokens", orjson.dumps({"card": card()})),
        (f"/v1/payments/{held['id']}/capture", b"{}"),
        (f"/v1/payments/{held['id']}/refunds", b'{"amount": 1}'),
    ):
        response = await client.post(path, data=body, headers=headers)
        error = (await response.json())["error"]
        assert (response.status, error["type"], error["code"]) == (
            415,
            "invalid_request_error",
            "unsupported_media_type",
        ), (path, error)
    assert await db.fetchval("SELECT count(*) FROM payments") == 1
    assert await db.fetchval("SELECT count(*) FROM tokens") == 0
    status, payment = await get(client, f"/v1/payments/{held['id']}", merchant)
    assert (status, payment["status"]) == (200, "authorized")
    # The same key with a JSON body then runs: nothing was stored under it.
    headers["Content-Type"] = "application/json; charset=utf-8"
    response = await client.post("/v1/payments", data=raw, headers=headers)
    assert response.status == 201


async def test_capture_and_void_need_no_body_and_no_content_type(client, merchant):
    # With no Content-Type at all, and with the octet-stream aiohttp's client adds.
    for skipped in (("Content-Type",), ()):
        for operation, status_after in (("capture", "captured"), ("void", "voided")):
            _, held = await authorize(client, merchant)
            response = await client.post(
                f"/v1/payments/{held['id']}/{operation}",
                headers=merchant.headers,
                skip_auto_headers=skipped,
            )
            assert ("Content-Type" in response.request_info.headers) is not bool(skipped)
            assert (response.status, (await response.json())["status"]) == (200, status_after)


async def test_a_blank_body_is_not_an_empty_one(client, merchant):
    # No bytes is no body (capture everything); bytes that are not JSON are invalid_json,
    # even when they are only whitespace.
    _, held = await authorize(client, merchant)
    response = await client.post(
        f"/v1/payments/{held['id']}/capture",
        data=b"\n",
        headers={**merchant.headers, "Content-Type": "application/json"},
    )
    assert (response.status, (await response.json())["error"]["code"]) == (400, "invalid_json")
    status, payment = await get(client, f"/v1/payments/{held['id']}", merchant)
    assert (status, payment["status"]) == (200, "authorized")
