"""No full card number and no cvc anywhere: logs, responses, or any database column."""

import re

import aiohttp
import orjson

from tests.payments_helpers import APPROVED_AMEX, APPROVED_VISA, DECLINES, ERROR_CARD, card

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
        db, database_url, merchant, serve_process):
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
            await call("POST", "/v1/payments", {
                "amount": 1000, "currency": "usd", "capture": "automatic",
                "payment_method": {"type": "card", "card": with_cvc(number)}})
        token = await call("POST", "/v1/tokens", {"card": with_cvc(APPROVED_VISA)})
        paid = await call("POST", "/v1/payments", {
            "amount": 500, "currency": "usd",
            "payment_method": {"type": "token", "token": token["id"]}})
        await call("POST", f"/v1/payments/{paid['id']}/refunds", {"amount": 100})
        # Bad input that carries a card: the error must not echo it.
        await call("POST", "/v1/payments", {
            "amount": 1000, "currency": "usd",
            "payment_method": {"type": "card", "card": with_cvc("4242 4242 4242 4241")}})
        await call("POST", "/v1/payments", {
            "amount": 1000, "currency": "usd", "extra": APPROVED_VISA,
            "payment_method": {"type": "card", "card": with_cvc(APPROVED_VISA)}})
        await call("POST", "/v1/payments", {
            "amount": 1000, "currency": "usd",
            "payment_method": {"type": "card", "card": card(APPROVED_VISA, cvc="73911")}})
        await call("GET", "/v1/payments?limit=100")

    assert server.stop().exit_code == 0
    assert leaks(server.logs()) == []
    for body in bodies:
        assert leaks(body) == [], body

    tables = await db.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
    scanned = 0
    for table in tables:
        name = table["tablename"]
        for row in await db.fetch(f'SELECT t::text AS line FROM "{name}" t'):
            scanned += 1
            assert leaks(row["line"]) == [], f"{name}: {row['line']}"
    assert scanned > len(NUMBERS) * 3  # the scan saw payments, entries, tokens...
