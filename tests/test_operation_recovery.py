"""Captures, voids and refunds whose processor answer is lost: write-ahead, 504, recovery.

The sandbox's timeout card times out on every operation after recording it as done
("the answer never reaches us"); a sandbox slower than our processor timeout is one
the call never reached.
"""

from gateway import books, recovery
from gateway.http.appkeys import POOL, SERVICE, SETTINGS
from tests.payments_helpers import TIMEOUT_CARD, authorize, get, post


async def recover(client, recovery_after_s: int = 0) -> recovery.PassResult:
    app = client.app
    settings = app[SETTINGS].replace(recovery_after_s=recovery_after_s)
    service = app[SERVICE]
    return await recovery.run_once(app[POOL], service, service._connector, settings)


async def timeout_card_payment(client, merchant, amount: int = 1999) -> str:
    """An authorized payment of the timeout card (its authorization settled by recovery)."""
    status, body = await authorize(client, merchant, TIMEOUT_CARD, amount=amount)
    assert status == 504, body
    assert (await recover(client)).recovered == 1
    payment_id = body["error"]["payment_id"]
    assert (await get(client, f"/v1/payments/{payment_id}", merchant))[1]["status"] == "authorized"
    return payment_id


async def sandbox_count(db, operation: str, payment_id: str) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM sandbox_operations WHERE operation = $1 AND payment_id = $2",
        operation,
        payment_id,
    )


async def assert_books_balanced(db) -> None:
    async with db.acquire() as conn:
        verification = await books.verify(conn)
    assert verification.ok, verification.problems


def assert_timed_out(status: int, body: dict, payment_id: str) -> None:
    assert status == 504, body
    error = body["error"]
    assert (error["type"], error["code"], error["payment_id"]) == (
        "api_error",
        "processor_timeout",
        payment_id,
    )


async def assert_being_settled(client, merchant, payment_id: str) -> None:
    """Every other change of the payment is refused while an outcome is unknown."""
    for path, body in (("capture", {}), ("void", None), ("refunds", {"amount": 1})):
        status, answer, _ = await post(
            client, f"/v1/payments/{payment_id}/{path}", merchant, body, key=f"other-{path}"
        )
        assert (status, answer["error"]["code"]) == (409, "payment_state_invalid"), answer
        assert "settled" in answer["error"]["message"]


async def test_capture_that_times_out_is_settled_by_recovery(app_factory, merchant, db):
    client = await app_factory(processor_timeout_ms=200)
    payment_id = await timeout_card_payment(client, merchant)
    path = f"/v1/payments/{payment_id}/capture"
    status, body, _ = await post(client, path, merchant, {"amount": 1500}, key="cap-slow")
    assert_timed_out(status, body, payment_id)
    # The outcome is unknown: a retry is told to wait, nothing else may change the payment.
    status, body, _ = await post(client, path, merchant, {"amount": 1500}, key="cap-slow")
    assert (status, body["error"]["code"]) == (409, "idempotency_key_in_use")
    await assert_being_settled(client, merchant, payment_id)
    _, payment = await get(client, f"/v1/payments/{payment_id}", merchant)
    assert (payment["status"], payment["amount_capturable"]) == ("authorized", 1999)

    result = await recover(client)
    assert result.operations == 1

    _, payment = await get(client, f"/v1/payments/{payment_id}", merchant)
    assert (payment["status"], payment["amount_captured"]) == ("captured", 1500)
    await assert_books_balanced(db)
    status, replay, response = await post(client, path, merchant, {"amount": 1500}, key="cap-slow")
    assert status == 200 and response.headers.get("Idempotent-Replayed") == "true"
    assert replay["status"] == "captured" and replay["amount_captured"] == 1500
    assert await sandbox_count(db, "capture", payment_id) == 1
    assert (
        await db.fetchval(
            "SELECT count(*) FROM ledger_transactions WHERE payment_id = $1 AND event = 'capture'",
            payment_id,
        )
        == 1
    )


async def test_void_that_times_out_is_settled_by_recovery(app_factory, merchant, db):
    client = await app_factory(processor_timeout_ms=200)
    payment_id = await timeout_card_payment(client, merchant)
    path = f"/v1/payments/{payment_id}/void"
    status, body, _ = await post(client, path, merchant, key="void-slow")
    assert_timed_out(status, body, payment_id)
    status, body, _ = await post(client, path, merchant, key="void-slow")
    assert (status, body["error"]["code"]) == (409, "idempotency_key_in_use")
    await assert_being_settled(client, merchant, payment_id)

    assert (await recover(client)).operations == 1

    _, payment = await get(client, f"/v1/payments/{payment_id}", merchant)
    assert (payment["status"], payment["amount_capturable"]) == ("voided", 0)
    await assert_books_balanced(db)
    status, replay, response = await post(client, path, merchant, key="void-slow")
    assert status == 200 and response.headers.get("Idempotent-Replayed") == "true"
    assert replay["status"] == "voided"
    assert await sandbox_count(db, "void", payment_id) == 1


async def test_refund_that_times_out_refunds_once(app_factory, merchant, db):
    client = await app_factory(processor_timeout_ms=200)
    payment_id = await timeout_card_payment(client, merchant, amount=100)
    status, body, _ = await post(
        client, f"/v1/payments/{payment_id}/capture", merchant, {}, key="cap"
    )
    assert_timed_out(status, body, payment_id)
    assert (await recover(client)).operations == 1

    path = f"/v1/payments/{payment_id}/refunds"
    status, body, _ = await post(client, path, merchant, {"amount": 60}, key="refund-slow")
    assert_timed_out(status, body, payment_id)
    status, body, _ = await post(client, path, merchant, {"amount": 60}, key="refund-slow")
    assert (status, body["error"]["code"]) == (409, "idempotency_key_in_use")
    await assert_being_settled(client, merchant, payment_id)
    assert await db.fetchval("SELECT count(*) FROM refunds") == 0

    assert (await recover(client)).operations == 1

    _, payment = await get(client, f"/v1/payments/{payment_id}", merchant)
    assert (payment["status"], payment["amount_refunded"]) == ("partially_refunded", 60)
    await assert_books_balanced(db)
    status, replay, response = await post(client, path, merchant, {"amount": 60}, key="refund-slow")
    assert status == 201 and response.headers.get("Idempotent-Replayed") == "true"
    assert (replay["object"], replay["amount"], replay["payment_id"]) == ("refund", 60, payment_id)
    assert await db.fetchval("SELECT array_agg(id) FROM refunds") == [replay["id"]]
    assert (await get(client, f"/v1/refunds/{replay['id']}", merchant))[0] == 200
    assert await sandbox_count(db, "refund", payment_id) == 1
    # Settled: the payment takes changes again, within what is left to refund.
    status, body, _ = await post(client, path, merchant, {"amount": 60}, key="refund-2")
    assert (status, body["error"]["code"]) == (400, "amount_too_large")


async def test_capture_the_processor_never_saw_fails_and_changes_nothing(app_factory, merchant, db):
    client = await app_factory()
    # A second gateway whose processor answers slower than it waits: its call never lands.
    slow = await app_factory(sandbox_latency_ms=2000, processor_timeout_ms=200)
    _, payment = await authorize(client, merchant)
    payment_id = payment["id"]
    path = f"/v1/payments/{payment_id}/capture"
    status, body, _ = await post(slow, path, merchant, {"amount": 500}, key="cap-lost")
    assert_timed_out(status, body, payment_id)
    await assert_being_settled(client, merchant, payment_id)

    # Past the recovery delay but not yet twice it: the call may still be on its way.
    await db.execute("UPDATE payment_operations SET updated_at = now() - interval '15 s'")
    assert (await recover(client, recovery_after_s=10)).operations == 0
    await db.execute("UPDATE payment_operations SET updated_at = now() - interval '25 s'")
    assert (await recover(client, recovery_after_s=10)).operations == 1

    assert await db.fetchval("SELECT state FROM payment_operations") == "failed"
    _, after = await get(client, f"/v1/payments/{payment_id}", merchant)
    assert after == payment
    await assert_books_balanced(db)
    assert await sandbox_count(db, "capture", payment_id) == 0
    status, replay, response = await post(client, path, merchant, {"amount": 500}, key="cap-lost")
    assert status == 502 and response.headers.get("Idempotent-Replayed") == "true"
    assert (replay["error"]["type"], replay["error"]["code"]) == ("api_error", "processor_error")
    # Nothing happened, so the payment can still be captured (with a new key).
    status, captured, _ = await post(client, path, merchant, {"amount": 500}, key="cap-again")
    assert (status, captured["amount_captured"]) == (200, 500)


async def test_automatic_capture_that_times_out_is_settled_by_recovery(app_factory, merchant, db):
    client = await app_factory(processor_timeout_ms=200)
    status, body = await authorize(
        client, merchant, TIMEOUT_CARD, capture="automatic", key="auto-slow"
    )
    assert status == 504, body
    payment_id = body["error"]["payment_id"]
    # Recovery settles the authorization; its automatic capture times out too (the sandbox
    # did capture), so the payment is recorded authorized with that capture pending.
    app = client.app
    assert (
        await recovery.recover_processing(
            app[POOL],
            app[SERVICE],
            app[SERVICE]._connector,
            older_than_s=0,
            processor_timeout_s=0.2,
        )
        == 1
    )
    _, payment = await get(client, f"/v1/payments/{payment_id}", merchant)
    assert payment["status"] == "authorized"
    await assert_being_settled(client, merchant, payment_id)
    result = await recover(client)
    assert result.operations == 1
    _, payment = await get(client, f"/v1/payments/{payment_id}", merchant)
    assert (payment["status"], payment["amount_captured"]) == ("captured", 1999)
    await assert_books_balanced(db)
    assert await sandbox_count(db, "capture", payment_id) == 1


async def test_expiry_leaves_a_payment_whose_capture_is_pending(app_factory, merchant, db):
    client = await app_factory(processor_timeout_ms=200)
    payment_id = await timeout_card_payment(client, merchant)
    status, body, _ = await post(client, f"/v1/payments/{payment_id}/capture", merchant, {})
    assert_timed_out(status, body, payment_id)
    await db.execute("UPDATE payments SET authorized_at = now() - interval '8 days'")
    # The processor may have captured it: releasing the hold now would contradict it.
    assert await recovery.expire_authorizations(db, ttl_s=7 * 86_400) == 0
    assert (await recover(client)).operations == 1
    _, payment = await get(client, f"/v1/payments/{payment_id}", merchant)
    assert (payment["status"], payment["amount_captured"]) == ("captured", 1999)
    await assert_books_balanced(db)
