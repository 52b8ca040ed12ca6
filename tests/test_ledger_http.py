"""The books: balanced per currency, in agreement with every payment and the balance view."""

import csv
import io
from collections import defaultdict
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import books, recovery
from gateway.store.merchants import create_merchant
from tests.conftest import Merchant, kassa, kassa_env
from tests.payments_helpers import authorize, get, post

CURRENCIES = ["EUR", "JPY", "KWD"]

operation = st.one_of(
    st.tuples(
        st.just("authorize"),
        st.sampled_from(CURRENCIES),
        st.integers(1, 50_000),
        st.sampled_from(["manual", "automatic"]),
    ),
    st.tuples(st.just("capture"), st.integers(0, 20), st.none() | st.integers(1, 60_000)),
    st.tuples(st.just("void"), st.integers(0, 20)),
    st.tuples(st.just("refund"), st.integers(0, 20), st.none() | st.integers(1, 60_000)),
    st.tuples(st.just("expire"), st.integers(0, 20)),
)


async def check_books(db: asyncpg.Pool, client, merchant: Merchant) -> None:
    async with db.acquire() as conn:
        verification = await books.verify(conn)
    assert verification.ok, verification.problems
    expected = defaultdict(lambda: {"pending": 0, "available": 0})
    for row in await db.fetch("SELECT * FROM payments WHERE merchant_id = $1", merchant.id):
        line = expected[row["currency"]]
        line["pending"] += row["amount_capturable"]
        line["available"] += row["amount_captured"] - row["amount_refunded"]
    status, balance = await get(client, "/v1/balance", merchant)
    assert status == 200
    shown = {
        c["currency"]: {"pending": c["pending"], "available": c["available"]}
        for c in balance["currencies"]
    }
    # A currency whose payments all ended without money (declined, voided) shows zeros or
    # nothing, depending on whether it ever had entries: compare what is non-zero.
    assert nonzero(shown) == nonzero(expected)


def nonzero(lines: dict) -> dict:
    return {k: v for k, v in lines.items() if v["pending"] or v["available"]}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(operation, min_size=1, max_size=12))
async def test_random_walks_keep_the_books_balanced(client, db, steps):
    async with db.acquire() as conn:
        key = await create_merchant(conn, "Walker")
    merchant = Merchant(key.merchant_id, key.secret)
    payments: list[dict] = []
    for step in steps:
        kind = step[0]
        if kind == "authorize":
            _, currency, amount, capture = step
            status, payment = await authorize(
                client, merchant, amount=amount, currency=currency, capture=capture
            )
            assert status == 201, payment
            payments.append(payment)
        elif payments:
            target = payments[step[1] % len(payments)]
            before = (await get(client, f"/v1/payments/{target['id']}", merchant))[1]
            await apply(client, db, merchant, step, before)
        await check_books(db, client, merchant)


async def apply(client, db, merchant, step, before):
    kind, pid = step[0], before["id"]
    if kind == "expire":
        await db.execute(
            "UPDATE payments SET authorized_at = now() - interval '30 days' "
            "WHERE id = $1 AND status = 'authorized'",
            pid,
        )
        await recovery.expire_authorizations(db, ttl_s=7 * 86_400)
        after = (await get(client, f"/v1/payments/{pid}", merchant))[1]
        assert after["status"] == (
            "expired" if before["status"] == "authorized" else before["status"]
        )
        return
    amount = step[2] if len(step) > 2 else None
    body = {} if amount is None else {"amount": amount}
    path = f"/v1/payments/{pid}/{'refunds' if kind == 'refund' else kind}"
    status, answer, _ = await post(client, path, merchant, body)
    after = (await get(client, f"/v1/payments/{pid}", merchant))[1]
    if status >= 400:
        assert answer["error"]["code"] in ("payment_state_invalid", "amount_too_large")
        assert after == before  # a refusal changes nothing
        return
    assert after["amount_captured"] <= after["amount"]
    assert after["amount_refunded"] <= after["amount_captured"]
    if kind == "refund":
        moved = answer["amount"]
        assert after["amount_refunded"] == before["amount_refunded"] + moved
    elif kind == "capture":
        assert after["amount_captured"] == (amount or before["amount_capturable"])
        assert after["amount_capturable"] == 0


async def test_schema_refuses_unbalanced_and_changed_entries(client, merchant, db):
    await authorize(client, merchant)
    txn = await db.fetchval("SELECT id FROM ledger_transactions")
    with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
        await db.execute(
            "INSERT INTO ledger_entries (transaction_id, account, currency, amount) "
            "VALUES ($1, 'merchant:x:EUR:pending', 'EUR', 5)",
            txn,
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("UPDATE ledger_entries SET amount = amount + 1")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("DELETE FROM ledger_transactions")


async def test_schema_refuses_rows_whose_parents_are_missing_or_another_merchants(
    client, merchant, db
):
    """The references the foreign keys used to check, checked per statement (0006)."""
    _, payment = await authorize(client, merchant)
    other = await db.fetchval(
        "INSERT INTO merchants (id, name) VALUES ('mer_other', 'o') RETURNING id"
    )
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="merchant mer_nobody"):
        await db.execute(
            "INSERT INTO idempotency_keys (merchant_id, key, fingerprint, state) "
            "VALUES ('mer_nobody', 'k', $1, 'in_flight')",
            bytes(32),
        )
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="payments names merchant"):
        await db.execute(
            "INSERT INTO payments (id, merchant_id, status, amount, currency, capture_method,"
            " card_brand, card_last4, card_exp_month, card_exp_year, card_fingerprint,"
            " processor, metadata)"
            " SELECT 'pay_orphan', 'mer_nobody', 'processing', amount, currency, capture_method,"
            " card_brand, card_last4, card_exp_month, card_exp_year, card_fingerprint,"
            " processor, metadata FROM payments WHERE id = $1",
            payment["id"],
        )
    # A ledger transaction for a payment of another merchant, or for no payment at all.
    for merchant_id, payment_id in ((other, payment["id"]), (merchant.id, "pay_nothing")):
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="does not exist"):
            await db.execute(
                "INSERT INTO ledger_transactions (merchant_id, payment_id, event, currency) "
                "VALUES ($1, $2, 'authorize', 'EUR')",
                merchant_id,
                payment_id,
            )
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="transaction 999999"):
        await db.execute(
            "INSERT INTO ledger_entries (transaction_id, account, currency, amount) "
            "VALUES (999999, 'a', 'EUR', 5), (999999, 'b', 'EUR', -5)"
        )
    for table in ("merchants", "payments", "refunds"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="never deleted"):
            await db.execute(f"DELETE FROM {table}")
    assert await db.fetchval("SELECT count(*) FROM payments") == 1


async def test_verify_names_a_corrupted_entry(client, merchant, db, database_url):
    _, payment = await authorize(client, merchant, capture="automatic", amount=700)
    ok = kassa("ledger", "verify", env=kassa_env(database_url))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("ledger ok: 2 transactions, 6 entries, 1 payments agree")

    txn = await db.fetchval("SELECT id FROM ledger_transactions WHERE event = 'capture'")
    async with db.acquire() as conn:
        # Only a superuser bypassing triggers can do this: the corruption a verify must catch.
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            "INSERT INTO ledger_entries (transaction_id, account, currency, amount)"
            " VALUES ($1, $2, 'EUR', -1)",
            txn,
            f"merchant:{merchant.id}:EUR:available",
        )
        await conn.execute("RESET session_replication_role")
    broken = kassa("ledger", "verify", env=kassa_env(database_url))
    assert broken.returncode == 1
    assert f"transaction {txn} does not balance: entries sum to -1" in broken.stdout
    assert "currency EUR does not sum to zero: -1" in broken.stdout
    assert f"payment {payment['id']}: account merchant:{merchant.id}:EUR:available" in broken.stdout
    assert "ledger BROKEN" in broken.stderr


async def test_zero_and_three_decimal_currencies_post_exactly(client, merchant, db):
    await authorize(client, merchant, amount=1234, currency="jpy", capture="automatic")
    await authorize(client, merchant, amount=5005, currency="kwd")
    status, balance = await get(client, "/v1/balance", merchant)
    assert status == 200
    assert balance == {
        "object": "balance",
        "currencies": [
            {"currency": "JPY", "pending": 0, "available": 1234},
            {"currency": "KWD", "pending": 5005, "available": 0},
        ],
    }


async def test_settlement_report_matches_the_ledger(
    client, merchant, other_merchant, db, database_url
):
    _, a = await authorize(client, merchant, amount=1000, capture="automatic")
    _, b = await authorize(client, merchant, amount=500)
    await post(client, f"/v1/payments/{b['id']}/capture", merchant, {"amount": 300})
    await post(client, f"/v1/payments/{a['id']}/refunds", merchant, {"amount": 250})
    await authorize(client, merchant, amount=77, currency="jpy", capture="automatic")
    await authorize(client, other_merchant, amount=9, capture="automatic")
    today = datetime.now(UTC).date().isoformat()

    status, report = await get(client, f"/v1/reports/settlement?date={today}", merchant)
    assert status == 200
    assert report["lines"] == [
        {
            "date": today,
            "merchant_id": merchant.id,
            "currency": "EUR",
            "captured_amount": 1300,
            "captured_count": 2,
            "refunded_amount": 250,
            "refunded_count": 1,
            "net_amount": 1050,
        },
        {
            "date": today,
            "merchant_id": merchant.id,
            "currency": "JPY",
            "captured_amount": 77,
            "captured_count": 1,
            "refunded_amount": 0,
            "refunded_count": 0,
            "net_amount": 77,
        },
    ]
    # The available balance in the ledger is exactly the report's net (all activity is today).
    _, balance = await get(client, "/v1/balance", merchant)
    assert {c["currency"]: c["available"] for c in balance["currencies"]} == {
        "EUR": 1050,
        "JPY": 77,
    }
    env = kassa_env(database_url)
    result = kassa("report", "settlement", "--date", today, env=env)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {(r["merchant_id"], r["currency"], r["net_amount"]) for r in rows} == {
        (merchant.id, "EUR", "1050"),
        (merchant.id, "JPY", "77"),
        (other_merchant.id, "EUR", "9"),
    }
    result = kassa(
        "report",
        "settlement",
        "--date",
        today,
        "--merchant",
        other_merchant.id,
        "--format",
        "json",
        env=env,
    )
    assert [line["net_amount"] for line in orjson.loads(result.stdout)["lines"]] == [9]
    status, body = await get(client, "/v1/reports/settlement?date=yesterday", merchant)
    assert (status, body["error"]["param"]) == (400, "date")
    status, empty = await get(client, "/v1/reports/settlement?date=2001-01-01", merchant)
    assert empty["lines"] == []
