"""No full card number and no cvc anywhere: logs, responses, or any database column."""

import re

import aiohttp
import orjson
import pytest

from tests.payments_helpers import (
    APPROVED_AMEX,
    APPROVED_VISA,
    DECLINES,
    ERROR_CARD,
    card,
    payment_body,
)

# Distinctive cvcs, searched as whole numbers so digits inside timestamps or ids
# cannot match by chance.
CVC = "739"
AMEX_CVC = "7391"
NUMBERS = [APPROVED_VISA, APPROVED_AMEX, ERROR_CARD, *DECLINES]


def leaks(text: str) -> list[str]:
    found = []
    compact = text.replace(" ", "")
    for number in NUMBERS:
        if number in compact:
            found.append(f"card number ...{number[-4:]}")
    for cvc in (CVC, AMEX_CVC):
        if re.search(rf"(?<![0-9A-Za-z]){cvc}(?![0-9A-Za-z])", text):
            found.append(f"cvc {cvc}")
    if re.search(r'"cvc"', text):
        found.append("a cvc field")
    return found


async def test_no_card_number_or_cvc_is_logged_returned_or_stored(
    db, database_url, merchant, serve_process
):
    server = await serve_process(database_url, KASSA_LOG_LEVEL="debug")
    bodies: list[str] = []

    def with_cvc(number: str) -> dict:
        return card(number, cvc=AMEX_CVC if number == APPROVED_AMEX else CVC)

    async with aiohttp.ClientSession(headers=merchant.headers) as session:

        async def call(method: str, path: str, body: object = None) -> dict:
            async with session.request(method, server.url + path, json=body) as response:
                text = await response.text()
                bodies.append(text)
                return orjson.loads(text)

        for number in NUMBERS:
            await call(
                "POST",
                "/v1/payments",
                {
                    "amount": 1000,
                    "currency": "usd",
                    "capture": "automatic",
                    "payment_method": {"type": "card", "card": with_cvc(number)},
                },
            )
        token = await call("POST", "/v1/tokens", {"card": with_cvc(APPROVED_VISA)})
        paid = await call(
            "POST",
            "/v1/payments",
            {
                "amount": 500,
                "currency": "usd",
                "payment_method": {"type": "token", "token": token["id"]},
            },
        )
        await call("POST", f"/v1/payments/{paid['id']}/refunds", {"amount": 100})
        # Bad input that carries a card: the error must not echo it.
        await call(
            "POST",
            "/v1/payments",
            {
                "amount": 1000,
                "currency": "usd",
                "payment_method": {"type": "card", "card": with_cvc("4242 4242 4242 4241")},
            },
        )
        await call(
            "POST",
            "/v1/payments",
            {
                "amount": 1000,
                "currency": "usd",
                "extra": APPROVED_VISA,
                "payment_method": {"type": "card", "card": with_cvc(APPROVED_VISA)},
            },
        )
        await call(
            "POST",
            "/v1/payments",
            {
                "amount": 1000,
                "currency": "usd",
                "payment_method": {"type": "card", "card": card(APPROVED_VISA, cvc="73911")},
            },
        )
        await call("GET", "/v1/payments?limit=100")

    assert server.stop().exit_code == 0
    assert leaks(server.logs()) == []
    for body in bodies:
        assert leaks(body) == [], body

    tables = await db.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
    )
    scanned = 0
    for table in tables:
        name = table["tablename"]
        for row in await db.fetch(f'SELECT t::text AS line FROM "{name}" t'):
            scanned += 1
            assert leaks(row["line"]) == [], f"{name}: {row['line']}"
    assert scanned > len(NUMBERS) * 3  # the scan saw payments, entries, tokens...


# --- echoed client text: a card number anywhere in a request never comes back ------------

# Spelled as a client might paste it; each is Luhn-valid.
PASTED = ("4242424242424242", "4242 4242 4242 4242", "4242-4242-4242-4242", "378282246310005")


def digits_of(text: str) -> str:
    return re.sub(r"[ -]", "", text)


def assert_not_echoed(number: str, response, raw: bytes) -> None:
    wanted = digits_of(number)
    assert wanted not in digits_of(raw.decode()), raw
    for name, value in response.headers.items():
        assert wanted not in digits_of(value), f"{name}: {value}"


async def answer_of(response) -> tuple[int, dict, bytes]:
    raw = await response.read()
    return response.status, orjson.loads(raw), raw


@pytest.mark.parametrize("number", PASTED)
async def test_card_number_as_an_unknown_field_name_is_not_echoed(client, merchant, number):
    for body, param_prefix in (
        ({"amount": 1000, "currency": "usd", number: 1}, ""),
        (
            {
                "amount": 1000,
                "currency": "usd",
                "payment_method": {"type": "card", "card": {**card(APPROVED_VISA), number: "x"}},
            },
            "payment_method.card.",
        ),
    ):
        response = await client.post("/v1/payments", json=body, headers=merchant.headers)
        status, answer, raw = await answer_of(response)
        error = answer["error"]
        assert (status, error["type"], error["code"]) == (
            400,
            "invalid_request_error",
            "parameter_unknown",
        ), answer
        assert error["param"].startswith(param_prefix) and "[redacted]" in error["param"]
        assert_not_echoed(number, response, raw)


async def test_card_number_as_a_query_key_is_not_echoed(client, merchant):
    for path in ("/v1/payments", "/v1/reports/settlement"):
        response = await client.get(
            f"{path}?4242424242424242=1&date=2026-01-01", headers=merchant.headers
        )
        status, answer, raw = await answer_of(response)
        assert (status, answer["error"]["code"]) == (400, "parameter_unknown"), answer
        assert_not_echoed(APPROVED_VISA, response, raw)


@pytest.mark.parametrize(
    "method,path,status,code",
    [
        ("GET", "/v1/payments/4242424242424242", 404, "resource_missing"),
        ("GET", "/v1/x.4242424242424242", 404, "resource_missing"),
        ("GET", "/v1/refunds/re_4242424242424242", 404, "resource_missing"),
        ("POST", "/v1/payments/4242424242424242", 405, "method_not_allowed"),
        ("POST", "/v1/payments/pay_4242424242424242/void", 404, "resource_missing"),
    ],
)
async def test_card_number_in_the_path_is_not_echoed(client, merchant, method, path, status, code):
    response = await client.request(method, path, headers=merchant.headers)
    got, answer, raw = await answer_of(response)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert_not_echoed(APPROVED_VISA, response, raw)


async def test_card_number_in_headers_is_not_echoed(client, merchant):
    # An invalid Idempotency-Key (too long) that carries a card number.
    key = "k" + APPROVED_VISA * 17
    response = await client.post(
        "/v1/payments", json=payment_body(), headers={**merchant.headers, "Idempotency-Key": key}
    )
    status, answer, raw = await answer_of(response)
    assert (status, answer["error"]["code"], answer["error"]["param"]) == (
        400,
        "parameter_invalid",
        "Idempotency-Key",
    )
    assert_not_echoed(APPROVED_VISA, response, raw)

    # A client request id is echoed only when it carries no card number: else a new one.
    for request_id in (f"order-{APPROVED_VISA}", "4242 4242 4242 4242", f"a.{APPROVED_AMEX}"):
        response = await client.get(
            "/v1/balance", headers={**merchant.headers, "X-Request-Id": request_id}
        )
        assert response.status == 200
        generated = response.headers["X-Request-Id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated), generated
        assert_not_echoed(request_id, response, await response.read())
        response = await client.post(
            "/v1/payments",
            json={"nope": 1},
            headers={**merchant.headers, "X-Request-Id": request_id},
        )
        assert response.status == 400
        assert_not_echoed(request_id, response, await response.read())
    # A card number in a header's name is never echoed either.
    response = await client.get(
        "/v1/balance", headers={**merchant.headers, f"X-{APPROVED_VISA}": "1"}
    )
    assert response.status == 200
    assert_not_echoed(APPROVED_VISA, response, await response.read())


def test_the_scrubber_leaves_our_own_ids_whole():
    """Ids and request ids the gateway issues are never mangled by the scrubber in a log
    line or an answer (hex ids can hold a Luhn-valid run of digits by chance)."""
    from gateway.http.middleware import request_id_from
    from gateway.ids import keyed_id, new_id
    from gateway.logs import scrub

    ids = [new_id("pay") for _ in range(20_000)]
    ids += [keyed_id("re", "mer_1", f"key-{n}") for n in range(20_000)]
    ids += [request_id_from(None) for _ in range(20_000)]
    assert [i for i in ids if scrub(i) != i] == []
