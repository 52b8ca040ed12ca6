"""Payments that exist before the card (API.md "Payments"), black-box against a real
`kassa serve --workers 2`: requires_payment_method and requires_confirmation, confirm,
cancel, a declined or failed payment confirmed again with another card, and expiry.
The processor's own books (sandbox_operations) and the ledger are read from the database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from gateway.testing import KassaServer
from tests.conftest import kassa, kassa_env, running_server
from tests.payments_helpers import (
    APPROVED_MASTERCARD,
    APPROVED_VISA,
    DECLINES,
    ERROR_CARD,
    TIMEOUT_CARD,
    card,
    get,
    payment_body,
    post,
)

DECLINED_CARD = "4000000000000002"
SANDBOX_LATENCY_MS = 150  # long enough for two racing confirms to overlap


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KassaServer]:
    with running_server(
        database_url,
        tmp_path_factory.mktemp("payment-states"),
        KASSA_SANDBOX_LATENCY_MS=str(SANDBOX_LATENCY_MS),
    ) as served:
        yield served


@pytest.fixture
async def api(server: KassaServer, db) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=server.url) as session:
        yield session


def method(number: str = APPROVED_VISA) -> dict:
    return {"type": "card", "card": card(number)}


def without_method(**changes: object) -> dict:
    body = payment_body(**changes)
    del body["payment_method"]
    return body


async def create(api, merchant, body: dict, key: str | None = None) -> dict:
    status, payment, _ = await post(api, "/v1/payments", merchant, body, key)
    assert status == 201, payment
    return payment


async def confirm(api, merchant, payment_id: str, body: dict | None = None, key=None):
    status, answer, response = await post(
        api, f"/v1/payments/{payment_id}/confirm", merchant, body, key
    )
    return status, answer, response


async def cancel(api, merchant, payment_id: str, key: str | None = None):
    status, answer, response = await post(
        api, f"/v1/payments/{payment_id}/cancel", merchant, None, key
    )
    return status, answer, response


async def processor_authorizations(db, payment_id: str) -> list[str]:
    rows = await db.fetch(
        """SELECT reference FROM sandbox_operations
            WHERE operation = 'authorize' AND payment_id = $1 ORDER BY id""",
        payment_id,
    )
    return [row["reference"] for row in rows]


async def ledger_rows(db, payment_id: str) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM ledger_transactions WHERE payment_id = $1", payment_id
    )


async def event_types(api, merchant, payment_id: str) -> list[str]:
    status, listed = await get(api, "/v1/events?limit=100", merchant)
    assert status == 200, listed
    found = [e for e in listed["data"] if e["data"]["object"]["id"] == payment_id]
    return [e["type"] for e in reversed(found)]  # oldest first


def attempt(outcome: str, number: str, decline_code: str | None = None) -> dict:
    brand = "mastercard" if number.startswith("5") else "visa"
    return {
        "outcome": outcome,
        "decline_code": decline_code,
        "card": {"brand": brand, "last4": number[-4:]},
    }


def assert_books_verify(database_url: str) -> None:
    verified = kassa("ledger", "verify", env=kassa_env(database_url))
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def test_created_without_a_method_waits_then_confirm_authorizes(
    api, merchant, db, database_url
):
    payment = await create(api, merchant, without_method())
    assert payment["status"] == "requires_payment_method"
    assert payment["card"] is None and payment["attempts"] == []
    assert (payment["amount_capturable"], payment["processor_reference"]) == (0, None)
    status, read = await get(api, f"/v1/payments/{payment['id']}", merchant)
    assert (status, read) == (200, payment)
    assert await processor_authorizations(db, payment["id"]) == []
    assert await ledger_rows(db, payment["id"]) == 0

    status, confirmed, _ = await confirm(api, merchant, payment["id"], {"payment_method": method()})
    assert status == 201, confirmed
    assert confirmed["status"] == "authorized" and confirmed["amount_capturable"] == 1999
    assert confirmed["card"]["last4"] == "4242"
    assert confirmed["attempts"] == [attempt("authorized", APPROVED_VISA)]
    assert await processor_authorizations(db, payment["id"]) == [payment["id"]]
    assert await ledger_rows(db, payment["id"]) == 1
    assert await event_types(api, merchant, payment["id"]) == ["payment.authorized"]
    # The confirmed payment is the one read back, and it captures as any other.
    status, read = await get(api, f"/v1/payments/{payment['id']}", merchant)
    assert read == confirmed
    status, captured, _ = await post(api, f"/v1/payments/{payment['id']}/capture", merchant)
    assert (status, captured["status"]) == (200, "captured")
    assert_books_verify(database_url)


async def test_confirm_false_keeps_the_card_until_confirm(api, merchant, db, database_url):
    payment = await create(api, merchant, payment_body(confirm=False, capture="automatic"))
    assert payment["status"] == "requires_confirmation"
    assert payment["card"]["last4"] == "4242" and payment["attempts"] == []
    assert await processor_authorizations(db, payment["id"]) == []
    assert await ledger_rows(db, payment["id"]) == 0
    # The number is kept only encrypted, as a token's is.
    stored = await db.fetchrow(
        "SELECT t.number_ciphertext FROM payments p JOIN tokens t ON t.id = p.token_id"
        " WHERE p.id = $1",
        payment["id"],
    )
    assert stored is not None and APPROVED_VISA.encode() not in bytes(stored[0])

    status, confirmed, _ = await confirm(api, merchant, payment["id"])
    assert status == 201, confirmed
    assert confirmed["status"] == "captured" and confirmed["amount_captured"] == 1999
    assert confirmed["attempts"] == [attempt("authorized", APPROVED_VISA)]
    assert await processor_authorizations(db, payment["id"]) == [payment["id"]]
    # Both written by one statement, with one timestamp: their order is not defined.
    assert sorted(await event_types(api, merchant, payment["id"])) == [
        "payment.authorized",
        "payment.captured",
    ]
    assert_books_verify(database_url)


async def test_a_declined_payment_confirmed_again_with_another_card_keeps_both_attempts(
    api, merchant, db, database_url
):
    status, declined, _ = await post(
        api, "/v1/payments", merchant, payment_body(DECLINED_CARD, capture="manual")
    )
    assert status == 402 and declined["error"]["decline_code"] == "generic_decline"
    payment_id = declined["error"]["payment_id"]

    status, confirmed, _ = await confirm(
        api, merchant, payment_id, {"payment_method": method(APPROVED_MASTERCARD)}
    )
    assert status == 201, confirmed
    assert confirmed["status"] == "authorized" and confirmed["card"]["brand"] == "mastercard"
    assert confirmed["decline_code"] is None
    assert confirmed["attempts"] == [
        attempt("declined", DECLINED_CARD, "generic_decline"),
        attempt("authorized", APPROVED_MASTERCARD),
    ]
    # Each attempt is its own at the processor, and only the approved one posts.
    assert await processor_authorizations(db, payment_id) == [payment_id, f"{payment_id}_2"]
    assert await ledger_rows(db, payment_id) == 1
    assert await event_types(api, merchant, payment_id) == [
        "payment.declined",
        "payment.authorized",
    ]
    status, read = await get(api, f"/v1/payments/{payment_id}", merchant)
    assert read["attempts"] == confirmed["attempts"]
    assert_books_verify(database_url)


async def test_declined_again_then_approved_keeps_every_attempt(api, merchant, db):
    numbers = list(DECLINES)[:3]
    status, declined, _ = await post(api, "/v1/payments", merchant, payment_body(numbers[0]))
    payment_id = declined["error"]["payment_id"]
    for number in numbers[1:]:
        status, again, _ = await confirm(
            api, merchant, payment_id, {"payment_method": method(number)}
        )
        assert status == 402 and again["error"]["decline_code"] == DECLINES[number]
        assert again["error"]["payment_id"] == payment_id
    status, confirmed, _ = await confirm(api, merchant, payment_id, {"payment_method": method()})
    assert status == 201
    assert [a["outcome"] for a in confirmed["attempts"]] == ["declined"] * 3 + ["authorized"]
    assert [a["decline_code"] for a in confirmed["attempts"]] == [DECLINES[n] for n in numbers] + [
        None
    ]
    assert len(set(await processor_authorizations(db, payment_id))) == 4


async def test_a_failed_payment_confirmed_again_is_authorized(api, merchant, db):
    status, failed, _ = await post(api, "/v1/payments", merchant, payment_body(ERROR_CARD))
    assert status == 502 and failed["error"]["code"] == "processor_error"
    payment_id = failed["error"]["payment_id"]
    status, read = await get(api, f"/v1/payments/{payment_id}", merchant)
    assert read["status"] == "failed" and read["attempts"] == [attempt("failed", ERROR_CARD)]
    status, confirmed, _ = await confirm(api, merchant, payment_id, {"payment_method": method()})
    assert status == 201, confirmed
    assert confirmed["attempts"] == [
        attempt("failed", ERROR_CARD),
        attempt("authorized", APPROVED_VISA),
    ]
    assert await event_types(api, merchant, payment_id) == ["payment.failed", "payment.authorized"]


async def test_confirm_again_needs_a_payment_method(api, merchant):
    status, declined, _ = await post(api, "/v1/payments", merchant, payment_body(DECLINED_CARD))
    payment_id = declined["error"]["payment_id"]
    for target in (payment_id, (await create(api, merchant, without_method()))["id"]):
        status, answer, _ = await confirm(api, merchant, target, key=f"k-{target}")
        assert status == 400, answer
        assert (answer["error"]["code"], answer["error"]["param"]) == (
            "parameter_missing",
            "payment_method",
        )


async def test_cancel_from_each_allowed_state(api, merchant, db, database_url):
    unconfirmed = await create(api, merchant, without_method())
    waiting = await create(api, merchant, payment_body(confirm=False))
    status, declined, _ = await post(api, "/v1/payments", merchant, payment_body(DECLINED_CARD))
    status, failed, _ = await post(api, "/v1/payments", merchant, payment_body(ERROR_CARD))
    cases = [
        (unconfirmed["id"], []),
        (waiting["id"], []),
        (declined["error"]["payment_id"], [attempt("declined", DECLINED_CARD, "generic_decline")]),
        (failed["error"]["payment_id"], [attempt("failed", ERROR_CARD)]),
    ]
    for payment_id, attempts in cases:
        before = await processor_authorizations(db, payment_id)
        status, canceled, _ = await cancel(api, merchant, payment_id)
        assert status == 200, canceled
        assert canceled["status"] == "canceled" and canceled["attempts"] == attempts
        assert canceled["amount_capturable"] == canceled["amount_captured"] == 0
        assert await processor_authorizations(db, payment_id) == before  # no processor call
        assert await ledger_rows(db, payment_id) == 0
        assert (await event_types(api, merchant, payment_id))[-1] == "payment.canceled"
        status, listed = await get(api, "/v1/events?type=payment.canceled", merchant)
        event = next(e for e in listed["data"] if e["data"]["object"]["id"] == payment_id)
        assert event["data"]["object"] == canceled
        # Canceled is final: no confirm, no second cancel.
        status, answer, _ = await confirm(api, merchant, payment_id, {"payment_method": method()})
        assert (status, answer["error"]["code"]) == (409, "payment_state_invalid"), answer
        status, answer, _ = await cancel(api, merchant, payment_id)
        assert (status, answer["error"]["code"]) == (409, "payment_state_invalid")
    status, listed = await get(api, "/v1/payments?status=canceled", merchant)
    assert {p["id"] for p in listed["data"]} == {payment_id for payment_id, _ in cases}
    assert_books_verify(database_url)


async def test_cancel_after_the_processor_approved_is_refused(api, merchant, db):
    status, authorized, _ = await post(api, "/v1/payments", merchant, payment_body())
    status, captured, _ = await post(
        api, "/v1/payments", merchant, payment_body(capture="automatic")
    )
    for payment in (authorized, captured):
        status, answer, _ = await cancel(api, merchant, payment["id"], key=f"c-{payment['id']}")
        assert status == 409, answer
        assert answer["error"]["code"] == "payment_state_invalid"
        assert answer["error"]["message"] == f"cannot cancel a payment that is {payment['status']}"
        # Judged after the key was claimed: stored, like a capture's 409.
        status, again, response = await cancel(
            api, merchant, payment["id"], key=f"c-{payment['id']}"
        )
        assert (status, again) == (409, answer)
        assert response.headers.get("Idempotent-Replayed") == "true"
        status, read = await get(api, f"/v1/payments/{payment['id']}", merchant)
        assert read["status"] == payment["status"]
    status, answer, _ = await confirm(api, merchant, authorized["id"], {"payment_method": method()})
    assert (status, answer["error"]["code"]) == (409, "payment_state_invalid")
    assert answer["error"]["message"] == "cannot confirm a payment that is authorized"


async def test_confirm_and_cancel_replay_with_their_keys(api, merchant, db):
    payment = await create(api, merchant, without_method(), key="create-1")
    status, replayed_create, response = await post(
        api, "/v1/payments", merchant, without_method(), "create-1"
    )
    assert (status, replayed_create) == (201, payment)
    assert response.headers.get("Idempotent-Replayed") == "true"

    body = {"payment_method": method()}
    status, first, response = await confirm(api, merchant, payment["id"], body, key="confirm-1")
    assert status == 201 and "Idempotent-Replayed" not in response.headers
    for _ in range(2):  # on either worker
        status, again, response = await confirm(api, merchant, payment["id"], body, key="confirm-1")
        assert (status, again) == (201, first)
        assert response.headers.get("Idempotent-Replayed") == "true"
    assert await processor_authorizations(db, payment["id"]) == [payment["id"]]
    assert await ledger_rows(db, payment["id"]) == 1
    status, reused, _ = await confirm(
        api, merchant, payment["id"], {"payment_method": method(APPROVED_MASTERCARD)}, "confirm-1"
    )
    assert (status, reused["error"]["code"]) == (422, "idempotency_key_reused")

    other = await create(api, merchant, without_method())
    status, canceled, _ = await cancel(api, merchant, other["id"], key="cancel-1")
    assert status == 200
    status, again, response = await cancel(api, merchant, other["id"], key="cancel-1")
    assert (status, again) == (200, canceled)
    assert response.headers.get("Idempotent-Replayed") == "true"
    assert await event_types(api, merchant, other["id"]) == ["payment.canceled"]


async def test_a_declined_confirm_replays_its_decline(api, merchant, db):
    payment = await create(api, merchant, without_method())
    body = {"payment_method": method(DECLINED_CARD)}
    status, declined, _ = await confirm(api, merchant, payment["id"], body, key="d-1")
    assert status == 402 and declined["error"]["payment_id"] == payment["id"]
    status, again, response = await confirm(api, merchant, payment["id"], body, key="d-1")
    assert (status, again) == (402, declined)
    assert response.headers.get("Idempotent-Replayed") == "true"
    assert await processor_authorizations(db, payment["id"]) == [payment["id"]]


async def test_racing_confirms_authorize_once(api, merchant, db):
    for round_ in range(3):
        payment = await create(api, merchant, payment_body(confirm=False))
        answers = await asyncio.gather(
            *(
                confirm(
                    api,
                    merchant,
                    payment["id"],
                    {"payment_method": method(number)},
                    key=f"race-{round_}-{i}",
                )
                for i, number in enumerate((APPROVED_VISA, APPROVED_MASTERCARD))
            )
        )
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [201, 409], answers
        loser = next(answer for status, answer, _ in answers if status == 409)
        assert loser["error"]["code"] == "payment_state_invalid"
        assert await processor_authorizations(db, payment["id"]) == [payment["id"]]
        assert await ledger_rows(db, payment["id"]) == 1
        _, read = await get(api, f"/v1/payments/{payment['id']}", merchant)
        assert read["status"] == "authorized" and len(read["attempts"]) == 1


async def test_another_merchants_payment_is_missing(api, merchant, other_merchant, db):
    payment = await create(api, merchant, without_method())
    for path in ("confirm", "cancel"):
        status, answer, _ = await post(
            api,
            f"/v1/payments/{payment['id']}/{path}",
            other_merchant,
            {"payment_method": method()} if path == "confirm" else None,
        )
        assert (status, answer["error"]["code"]) == (404, "resource_missing"), answer
    status, read = await get(api, f"/v1/payments/{payment['id']}", merchant)
    assert read["status"] == "requires_payment_method"
    assert await processor_authorizations(db, payment["id"]) == []


async def test_list_filters_on_the_new_statuses(api, merchant):
    unconfirmed = await create(api, merchant, without_method())
    waiting = await create(api, merchant, payment_body(confirm=False))
    for status_filter, expected in (
        ("requires_payment_method", unconfirmed),
        ("requires_confirmation", waiting),
    ):
        status, listed = await get(api, f"/v1/payments?status={status_filter}", merchant)
        assert status == 200 and [p["id"] for p in listed["data"]] == [expected["id"]]


async def test_the_one_step_create_is_unchanged(api, merchant, db):
    status, payment, _ = await post(api, "/v1/payments", merchant, payment_body())
    assert status == 201 and payment["status"] == "authorized"
    assert payment["attempts"] == [attempt("authorized", APPROVED_VISA)]
    row = await db.fetchrow(
        "SELECT token_id, earlier_attempts FROM payments WHERE id = $1", payment["id"]
    )
    assert tuple(row) == (None, None)  # no kept card, no attempt rows


async def test_waiting_payments_expire(serve_process, database_url, merchant, db):
    served = await serve_process(
        database_url,
        workers=2,
        KASSA_UNCONFIRMED_PAYMENT_TTL_S="2",
        KASSA_RECOVERY_INTERVAL_S="1",
    )
    async with aiohttp.ClientSession(base_url=served.url) as api:
        unconfirmed = await create(api, merchant, without_method())
        waiting = await create(api, merchant, payment_body(confirm=False))
        status, authorized, _ = await post(api, "/v1/payments", merchant, payment_body())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, listed = await get(api, "/v1/payments?status=expired", merchant)
            if len(listed["data"]) == 2:
                break
            await asyncio.sleep(0.3)
        assert {p["id"] for p in listed["data"]} == {unconfirmed["id"], waiting["id"]}
        for payment in (unconfirmed, waiting):
            status, read = await get(api, f"/v1/payments/{payment['id']}", merchant)
            assert read["status"] == "expired" and read["attempts"] == []
            assert await event_types(api, merchant, payment["id"]) == ["payment.expired"]
            assert await ledger_rows(db, payment["id"]) == 0
            status, answer, _ = await confirm(
                api, merchant, payment["id"], {"payment_method": method()}
            )
            assert (status, answer["error"]["code"]) == (409, "payment_state_invalid")
        status, read = await get(api, f"/v1/payments/{authorized['id']}", merchant)
        assert read["status"] == "authorized"  # its own expiry is the authorization's
    assert_books_verify(database_url)


async def test_a_confirm_whose_answer_is_lost_is_settled_by_recovery(
    serve_process, database_url, merchant, db
):
    """The second attempt's processor answer never arrives: recovery asks about that
    attempt (not the first, declined one), settles it, and completes the confirm's key."""
    served = await serve_process(
        database_url,
        workers=2,
        KASSA_PROCESSOR_TIMEOUT_MS="300",
        KASSA_RECOVERY_AFTER_S="1",
        KASSA_RECOVERY_INTERVAL_S="1",
    )
    async with aiohttp.ClientSession(base_url=served.url) as api:
        status, declined, _ = await post(api, "/v1/payments", merchant, payment_body(DECLINED_CARD))
        payment_id = declined["error"]["payment_id"]
        body = {"payment_method": method(TIMEOUT_CARD)}
        status, timed_out, _ = await confirm(api, merchant, payment_id, body, key="lost-1")
        assert (status, timed_out["error"]["code"]) == (504, "processor_timeout"), timed_out
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, answer, response = await confirm(api, merchant, payment_id, body, key="lost-1")
            if status != 409:
                break
            assert answer["error"]["code"] == "idempotency_key_in_use"
            await asyncio.sleep(0.3)
        assert status == 201, answer
        assert response.headers.get("Idempotent-Replayed") == "true"
        assert answer["status"] == "authorized"
        assert [a["outcome"] for a in answer["attempts"]] == ["declined", "authorized"]
        assert await processor_authorizations(db, payment_id) == [payment_id, f"{payment_id}_2"]
        assert await event_types(api, merchant, payment_id) == [
            "payment.declined",
            "payment.authorized",
        ]
    assert_books_verify(database_url)
