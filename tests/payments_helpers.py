"""Request builders shared by the HTTP tests."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

APPROVED_VISA = "4242424242424242"
APPROVED_MASTERCARD = "5555555555554444"
APPROVED_AMEX = "378282246310005"
# Stripe's "disputed after capture" card: approved (there are no disputes yet).
APPROVED_DISPUTE_LATER = "4000000000000259"
DECLINES = {
    "4000000000000002": "generic_decline",
    "4000000000009995": "insufficient_funds",
    "4000000000009987": "lost_card",
    "4000000000000069": "expired_card",
    "4000000000000127": "incorrect_cvc",
}
ERROR_CARD = "4000000000000119"
TIMEOUT_CARD = "4000009990000005"  # Kassa's own range: Stripe has no timeout card
EXPIRY_YEARS_AHEAD = 4  # a test card's expiry: years after today (the core allows up to 50)


def future_expiry(years: int = EXPIRY_YEARS_AHEAD) -> tuple[int, int]:
    """(month, year) of an expiry ``years`` after today: valid whenever the suite runs."""
    return 12, datetime.now(UTC).year + years


def this_year() -> int:
    """The year the gateway validates expiries against (it uses UTC too)."""
    return datetime.now(UTC).year


def card(number: str = APPROVED_VISA, **changes: object) -> dict:
    cvc = "1234" if number.startswith(("34", "37")) else "123"
    month, year = future_expiry()
    return {"number": number, "exp_month": month, "exp_year": year, "cvc": cvc, **changes}


def payment_body(number: str = APPROVED_VISA, **changes: object) -> dict:
    body = {
        "amount": 1999,
        "currency": "eur",
        "capture": "manual",
        "payment_method": {"type": "card", "card": card(number)},
        "reference": "order-1001",
        "description": "2 items",
        "metadata": {"cart": "c_77"},
    }
    body.update(copy.deepcopy(changes))
    return body


async def post(client, path: str, merchant, body: object = None, key: str | None = None):
    headers = dict(merchant.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    response = await client.post(path, json=body, headers=headers)
    return response.status, await response.json(), response


async def get(client, path: str, merchant):
    response = await client.get(path, headers=merchant.headers)
    return response.status, await response.json()


async def authorize(
    client, merchant, number: str = APPROVED_VISA, key: str | None = None, **changes: object
) -> tuple[int, dict]:
    status, body, _ = await post(
        client, "/v1/payments", merchant, payment_body(number, **changes), key
    )
    return status, body
