"""Idempotency-Key semantics of API.md: one key, one effect, in one process or many."""

import asyncio
import os
import re
import signal

import aiohttp
import orjson

from gateway.store.idempotency import sweep_expired
from tests.payments_helpers import ERROR_CARD, authorize, get, payment_body, post

KEYED = "order-1001-attempt"


async def test_replay_returns_the_stored_answer_byte_for_byte(client, merchant, db):
    headers = {**merchant.headers, "Idempotency-Key": KEYED}
    first = await client.post("/v1/payments", json=payment_body(), headers=headers)
    first_body = await first.read()
    assert first.status == 201 and "Idempotent-Replayed" not in first.headers
    # Same request, other key order and whitespace: same fingerprint, a replay.
    reordered = orjson.dumps(
        dict(reversed(list(payment_body().items()))), option=orjson.OPT_INDENT_2
    )
    again = await client.post(
        "/v1/payments", data=reordered, headers={**headers, "Content-Type": "application/json"}
    )
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == first_body
    assert await db.fetchval("SELECT count(*) FROM payments") == 1
    assert await db.fetchval("SELECT count(*) FROM ledger_transactions") == 1


async def test_replay_survives_a_new_process(app_factory, merchant, db):
    first_client = await app_factory()
    status, first = await authorize(first_client, merchant, key=KEYED)
    # A fresh application has an empty in-process table: the database answers.
    second_client = await app_factory()
    status, again = await authorize(second_client, merchant, key=KEYED)
    assert status == 201 and again == first


async def test_same_key_other_body_is_422(client, merchant, db):
    await authorize(client, merchant, key=KEYED)
    status, body = await authorize(client, merchant, key=KEYED, amount=2000)
    assert status == 422
    assert (body["error"]["type"], body["error"]["code"]) == (
        "idempotency_error",
        "idempotency_key_reused",
    )
    assert await db.fetchval("SELECT count(*) FROM payments") == 1


async def test_keys_are_scoped_to_the_merchant(client, merchant, other_merchant, db):
    status_a, a = await authorize(client, merchant, key=KEYED)
    status_b, b = await authorize(client, other_merchant, key=KEYED, amount=5)
    assert (status_a, status_b) == (201, 201) and a["id"] != b["id"]


async def test_validation_errors_are_not_stored(client, merchant, db):
    status, body = await authorize(client, merchant, key=KEYED, amount=0)
    assert (status, body["error"]["param"]) == (400, "amount")
    status, payment = await authorize(client, merchant, key=KEYED)
    assert status == 201, payment
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 1


async def test_declines_and_processor_errors_are_stored(client, merchant, db):
    status, declined = await authorize(client, merchant, "4000000000000002", key="k-decline")
    status2, replay = await authorize(client, merchant, "4000000000000002", key="k-decline")
    assert (status, status2) == (402, 402) and declined == replay
    status, failed = await authorize(client, merchant, ERROR_CARD, key="k-error")
    status2, replay = await authorize(client, merchant, ERROR_CARD, key="k-error")
    assert (status, status2) == (502, 502) and failed == replay
    assert await db.fetchval("SELECT count(*) FROM payments") == 2
    assert (
        await db.fetchval("SELECT count(*) FROM sandbox_operations WHERE operation = 'authorize'")
        == 1
    )


async def test_bad_key_is_rejected(client, merchant):
    status, body = await authorize(client, merchant, key="x" * 256)
    assert (status, body["error"]["param"]) == (400, "Idempotency-Key")


async def test_retried_refund_refunds_once(client, merchant, db):
    _, payment = await authorize(client, merchant, capture="automatic", amount=1000)
    path = f"/v1/payments/{payment['id']}/refunds"
    answers = [
        await post(client, path, merchant, {"amount": 400}, key="refund-1") for _ in range(3)
    ]
    assert [a[0] for a in answers] == [201, 201, 201]
    assert answers[0][1] == answers[1][1] == answers[2][1]
    assert [a[2].headers.get("Idempotent-Replayed") for a in answers] == [None, "true", "true"]
    _, after = await get(client, f"/v1/payments/{payment['id']}", merchant)
    assert after["amount_refunded"] == 400
    assert await db.fetchval("SELECT count(*) FROM refunds") == 1
    assert (
        await db.fetchval("SELECT count(*) FROM sandbox_operations WHERE operation = 'refund'") == 1
    )


async def test_concurrent_capture_with_one_key_captures_once(client, merchant, db):
    _, payment = await authorize(client, merchant, amount=1000)
    path = f"/v1/payments/{payment['id']}/capture"
    answers = await asyncio.gather(
        *[post(client, path, merchant, {"amount": 700}, key="cap-1") for _ in range(10)]
    )
    statuses = {a[0] for a in answers}
    assert statuses <= {200, 409}, statuses
    assert len({orjson.dumps(a[1]) for a in answers if a[0] == 200}) == 1
    assert (
        await db.fetchval("SELECT count(*) FROM ledger_transactions WHERE event = 'capture'") == 1
    )


async def test_sweeper_deletes_expired_keys_in_batches(client, merchant, db):
    for n in range(5):
        await authorize(client, merchant, key=f"old-{n}")
    await authorize(client, merchant, key="fresh")
    await db.execute("""UPDATE idempotency_keys SET created_at = now() - interval '2 days'
                         WHERE key LIKE 'old-%'""")
    assert await sweep_expired(db, retention_s=86_400, batch_rows_max=2) == 2
    assert await sweep_expired(db, retention_s=86_400, batch_rows_max=10) == 3
    assert await sweep_expired(db, retention_s=86_400) == 0
    assert await db.fetchval("SELECT array_agg(key) FROM idempotency_keys") == ["fresh"]


# --- many processes ---------------------------------------------------------------------


async def test_200_concurrent_requests_with_one_key_across_two_workers(
    db, database_url, merchant, serve_process
):
    server = await serve_process(database_url, workers=2, KASSA_SANDBOX_LATENCY_MS="100")
    body = orjson.dumps(payment_body())
    headers = {**merchant.headers, "Idempotency-Key": "storm-1", "Content-Type": "application/json"}
    # force_close: a new connection per request, so the kernel spreads them over both workers.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one():
            async with session.post(
                server.url + "/v1/payments", data=body, headers=headers
            ) as response:
                return response.status, await response.read()

        answers = await asyncio.gather(*[one() for _ in range(200)])
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {201, 409}, set(statuses)
    created = {raw for status, raw in answers if status == 201}
    assert len(created) == 1, "every 201 must carry the same body"
    payment = orjson.loads(created.pop())
    assert await db.fetchval("SELECT count(*) FROM payments") == 1
    assert (
        await db.fetchval("SELECT count(*) FROM sandbox_operations WHERE operation = 'authorize'")
        == 1
    )
    assert await db.fetchval("SELECT count(*) FROM ledger_transactions") == 1
    assert await db.fetchval("SELECT payment_id FROM ledger_transactions") == payment["id"]
    # Both workers took part (each logs its pid when it starts serving).
    assert len(set(re.findall(r"worker \d \(pid (\d+)\)", server.logs()))) == 2


async def test_other_body_answers_422_on_every_worker_while_the_first_is_in_flight(
    db, database_url, merchant, serve_process
):
    """API.md: a different body outranks in-flight, on every process. The first request is
    held at the processor; the same key with another body answers 422 whichever worker
    the kernel hands it to (the one executing the key included), the same body 409."""
    server = await serve_process(database_url, workers=2, KASSA_SANDBOX_LATENCY_MS="2000")
    headers = {
        **merchant.headers,
        "Idempotency-Key": "precedence-1",
        "Content-Type": "application/json",
    }
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(body: dict) -> tuple[int, dict]:
            async with session.post(
                server.url + "/v1/payments", data=orjson.dumps(body), headers=headers
            ) as response:
                return response.status, await response.json()

        first = asyncio.ensure_future(send(payment_body()))
        while not await db.fetchval("SELECT count(*) FROM payments"):
            await asyncio.sleep(0.02)  # the first one's claim and intent are durable
        other = await asyncio.gather(*[send(payment_body(amount=2000)) for _ in range(16)])
        same = await asyncio.gather(*[send(payment_body()) for _ in range(16)])
        assert not first.done(), "the first request must still be in flight"
        status, _ = await first
    assert status == 201
    assert [(s, b["error"]["code"]) for s, b in other] == [(422, "idempotency_key_reused")] * 16
    assert [(s, b["error"]["code"]) for s, b in same] == [(409, "idempotency_key_in_use")] * 16
    # Both workers answered (each logs its pid when it starts serving), so the worker
    # executing the key (its in-process table) and the other (the database) agree.
    assert len(set(re.findall(r"worker \d \(pid (\d+)\)", server.logs()))) == 2
    assert await db.fetchval("SELECT count(*) FROM payments") == 1


async def test_worker_killed_mid_request_then_retry_elsewhere_makes_one_payment(
    db, database_url, merchant, serve_process
):
    slow = await serve_process(database_url, KASSA_SANDBOX_LATENCY_MS="3000")
    other = await serve_process(
        database_url,
        KASSA_RECOVERY_AFTER_S="1",
        KASSA_RECOVERY_INTERVAL_S="1",
        KASSA_PROCESSOR_TIMEOUT_MS="500",
    )
    worker_pid = int(re.search(r"worker 0 \(pid (\d+)\)", slow.logs())[1])
    body = orjson.dumps(payment_body())
    headers = {
        **merchant.headers,
        "Idempotency-Key": "killed-1",
        "Content-Type": "application/json",
    }
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(
            session.post(slow.url + "/v1/payments", data=body, headers=headers)
        )
        # Wait until the write-ahead record is durable, then kill the worker mid-call.
        for _ in range(100):
            if await db.fetchval("SELECT count(*) FROM payments WHERE status = 'processing'"):
                break
            await asyncio.sleep(0.05)
        os.kill(worker_pid, signal.SIGKILL)
        try:
            await request
            raise AssertionError("the killed worker answered")
        except aiohttp.ClientError:
            pass

        async def retry():
            async with session.post(
                other.url + "/v1/payments", data=body, headers=headers
            ) as response:
                return response.status, await response.read()

        status, _ = await retry()
        assert status == 409  # outcome unknown until recovery settles it
        for _ in range(100):
            status, answer = await retry()
            if status != 409:
                break
            await asyncio.sleep(0.1)
    assert status in (201, 502), answer  # settled: authorized, or failed if never sent
    assert (await retry_status(other, body, headers)) == status
    assert await db.fetchval("SELECT count(*) FROM payments") == 1
    assert (
        await db.fetchval("SELECT count(*) FROM sandbox_operations WHERE operation = 'authorize'")
        <= 1
    )


async def retry_status(server, body, headers):
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.url + "/v1/payments", data=body, headers=headers) as response,
    ):
        assert response.headers.get("Idempotent-Replayed") == "true"
        return response.status
