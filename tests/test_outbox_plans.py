"""The deliverers' statements against a queue the planner misjudges (EXPLAIN ANALYZE on the
test database, no gateway running: its deliverer would claim these rows too).

The queue is analyzed while nearly empty (its rows are deleted as they are delivered), so
the planner believes it holds a row or so. A statement that joined its batch with the
queue was then planned as a walk of the whole backlog once per row of the batch. These
tests plan each deliverer statement against such a queue, as gateway/store/events.py runs
it, and count the rows it handled."""

from __future__ import annotations

import orjson
import pytest

from gateway.recovery import EVENT_RETENTION_S
from gateway.store import events

BACKLOG = 1000  # pending deliveries besides the batch: an endpoint's outage, say
BATCH = 32
PLAN_CACHE_MODES = ["force_custom_plan", "force_generic_plan"]  # asyncpg prepares: both


def queue_rows_handled(plan: dict) -> tuple[int, bool]:
    """The rows an EXPLAIN ANALYZE plan's nodes on webhook_deliveries, and the nodes above
    them, produced or filtered out over all their loops (PostgreSQL shows the filtered
    counts per loop); and whether the plan touches that table at all."""
    counted = [queue_rows_handled(child) for child in plan.get("Plans", [])]
    touches = plan.get("Relation Name") == "webhook_deliveries" or any(t for _, t in counted)
    rows = sum(n for n, _ in counted)
    if touches:
        own = plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)
        rows += (own + plan.get("Rows Removed by Join Filter", 0)) * plan.get("Actual Loops", 0)
    return rows, touches


def rows_handled_on_queue(plan: dict) -> int:
    """``queue_rows_handled`` of an EXPLAIN's plan, which must touch the queue at all."""
    handled, touched = queue_rows_handled(plan["Plan"])
    assert touched, "the plan never reads webhook_deliveries"
    return handled


async def stale_queue_with_backlog(db, merchant, due: bool) -> list[str]:
    """A queue analyzed when one row was left of many pages, then a backlog of BACKLOG
    deliveries (due now, or leased) and a batch of BATCH more; the batch's event ids."""
    await db.execute(
        "INSERT INTO webhook_endpoints (id, merchant_id, url, enabled_events, status, "
        "secret_ciphertext) VALUES ('we_backlog', $1, 'https://shop.example/hook', '{*}', "
        "'enabled', '\\x00')",
        merchant.id,
    )
    await db.execute(
        "INSERT INTO events (id, merchant_id, type, object_id, payload, created_at) "
        "SELECT 'evt_' || i, $1, 'payment.authorized', 'pay_x', '{}', now() "
        "FROM generate_series(1, $2) i",
        merchant.id,
        2 * BACKLOG + BATCH,
    )
    deliveries = (
        "INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at) "
        "SELECT 'evt_' || i, 'we_backlog', now() + make_interval(secs => $3) "
        "FROM generate_series($1::int, $2::int) i"
    )
    await db.execute(deliveries, 1, BACKLOG, 3600.0)
    await db.execute("DELETE FROM webhook_deliveries WHERE event_id <> $1", f"evt_{BACKLOG}")
    await db.execute("VACUUM ANALYZE webhook_deliveries")
    await db.execute(deliveries, BACKLOG + 1, 2 * BACKLOG + BATCH, -60.0 if due else 60.0)
    return [f"evt_{2 * BACKLOG + 1 + i}" for i in range(BATCH)]


async def explain_analyze(conn, plan_cache_mode: str, sql: str, *arguments) -> dict:
    """EXPLAIN ANALYZE ``sql`` as gateway/store/events.py runs it, inside the caller's
    transaction (rolled back or not, as the caller sees fit)."""
    await conn.execute(events.QUEUE_BY_KEY_SQL)
    await conn.execute(f"SET LOCAL plan_cache_mode = {plan_cache_mode}")  # ours, no input
    (plan,) = orjson.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *arguments))
    return plan


@pytest.mark.parametrize("outcome", ["delivered", "pending", "failed"])
@pytest.mark.parametrize("plan_cache_mode", PLAN_CACHE_MODES)
async def test_recording_a_batch_reads_its_rows_not_the_backlog(
    db, merchant, outcome, plan_cache_mode
):
    """Each attempt's row is found by its key (the join the record once was handled
    34,089 rows here)."""
    batch = [
        events.AttemptRecord(
            event_id,
            "we_backlog",
            1,
            200 if outcome == "delivered" else 500,
            None,
            3,
            outcome,
            60.0,
        )
        for event_id in await stale_queue_with_backlog(db, merchant, due=False)
    ]
    health = {"we_backlog": (outcome == "delivered", False)}
    async with db.acquire() as conn, conn.transaction():
        plan = await explain_analyze(
            conn,
            plan_cache_mode,
            events.RECORD_SQL,
            *events.record_arguments(batch, health, 3600.0),
        )
        states = await conn.fetch(
            "SELECT state, count(*) FROM webhook_deliveries WHERE event_id = ANY ($1) "
            "GROUP BY state",
            [r.event_id for r in batch],
        )
        attempts = await conn.fetchval("SELECT count(*) FROM webhook_attempts")
    handled = rows_handled_on_queue(plan)
    # The batch's rows, and at worst each against each (a retry's row joined with its
    # attempt): never the backlog, which a join walked once per attempt (BATCH x BACKLOG).
    assert handled <= BATCH * BATCH + 10 * BATCH, (handled, orjson.dumps(plan).decode())
    # And it did record them: the delivered rows go, the others take their new state.
    expected = {} if outcome == "delivered" else {outcome: BATCH}
    assert {row["state"]: row["count"] for row in states} == expected
    assert attempts == BATCH


@pytest.mark.parametrize("plan_cache_mode", PLAN_CACHE_MODES)
async def test_claiming_locks_its_rows_by_key_not_by_walking_the_backlog(
    db, merchant, plan_cache_mode
):
    """An outage's backlog comes due: a claim reads a bounded window of the due index,
    then locks and leases its rows by key (the joins it once made handled 504,421 rows
    here)."""
    await stale_queue_with_backlog(db, merchant, due=True)
    async with db.acquire() as conn, conn.transaction():
        plan = await explain_analyze(
            conn,
            plan_cache_mode,
            events.CLAIM_SQL,
            100,
            30.0,
            [],
            [],
            100,
            events.CLAIM_SCAN_ROWS,
        )
        leased = await conn.fetchval(
            "SELECT count(*) FROM webhook_deliveries "
            "WHERE next_attempt_at BETWEEN now() + '20 s' AND now() + '40 s'"  # the 30 s lease
        )
    handled = rows_handled_on_queue(plan)
    # The window of the due index (CLAIM_SCAN_ROWS) is read, ranked and sorted a few times
    # over; one walk of the backlog per claimed row would be 100 x BACKLOG.
    assert handled < 10 * events.CLAIM_SCAN_ROWS, (handled, orjson.dumps(plan).decode())
    assert plan["Plan"]["Actual Rows"] == 100
    assert leased == 100


@pytest.mark.parametrize("plan_cache_mode", PLAN_CACHE_MODES)
async def test_releasing_a_stopped_deliverers_rows_finds_them_by_key(db, merchant, plan_cache_mode):
    """A graceful stop makes its unsent deliveries due at once, by key (its join once
    handled 2,098 rows here)."""
    batch = await stale_queue_with_backlog(db, merchant, due=False)
    async with db.acquire() as conn, conn.transaction():
        plan = await explain_analyze(
            conn, plan_cache_mode, events.RELEASE_SQL, batch, ["we_backlog"] * BATCH
        )
        due_now = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE event_id = ANY ($1)) AS batch, "
            "count(*) FILTER (WHERE NOT event_id = ANY ($1)) AS others "
            "FROM webhook_deliveries WHERE next_attempt_at <= now()",
            batch,
        )
    handled = rows_handled_on_queue(plan)
    assert handled <= 10 * BATCH, (handled, orjson.dumps(plan).decode())  # by key alone
    assert (due_now["batch"], due_now["others"]) == (BATCH, 0)


@pytest.mark.parametrize("plan_cache_mode", PLAN_CACHE_MODES)
async def test_pruning_events_past_retention_finds_their_deliveries_by_key(
    db, merchant, plan_cache_mode
):
    """The sweep deletes events past retention with what is left of their deliveries, by
    key (its semi-join once handled 33,593 rows here)."""
    batch = await stale_queue_with_backlog(db, merchant, due=False)
    await db.execute(
        "UPDATE events SET created_at = now() - make_interval(secs => $2) WHERE id = ANY ($1)",
        batch,
        EVENT_RETENTION_S + 600.0,
    )
    async with db.acquire() as conn, conn.transaction():
        plan = await explain_analyze(
            conn, plan_cache_mode, events.PRUNE_EVENTS_SQL, EVENT_RETENTION_S, 1000
        )
        left = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE event_id = ANY ($1)) AS batch, count(*) AS all "
            "FROM webhook_deliveries",
            batch,
        )
    handled = rows_handled_on_queue(plan)
    assert handled <= 10 * BATCH, (handled, orjson.dumps(plan).decode())  # by key alone
    assert (left["batch"], left["all"]) == (0, BACKLOG + 1)


async def test_the_queue_statements_leave_the_pooled_session_as_it_was(db, merchant):
    """They forbid sequential scans for their own transaction only (SET LOCAL): the pool
    never resets a session, so a setting that outlived them would reach every request."""
    batch = await stale_queue_with_backlog(db, merchant, due=False)
    async with db.acquire() as conn:
        await events.release(conn, [(event_id, "we_backlog") for event_id in batch])
        assert await conn.fetchval("SHOW enable_seqscan") == "on"
        assert not conn.is_in_transaction()
        assert len(await events.claim(conn, 10, 30.0, {}, 10)) == 10
        assert await conn.fetchval("SHOW enable_seqscan") == "on"
        delivered = [
            events.AttemptRecord(event_id, "we_backlog", 1, 200, None, 3, "delivered", 0.0)
            for event_id in batch
        ]
        await events.record(conn, delivered, {"we_backlog": (True, False)}, 3600.0)
        assert await conn.fetchval("SHOW enable_seqscan") == "on"
        assert await conn.fetchval("SHOW plan_cache_mode") == "auto"
        assert not conn.is_in_transaction()


async def test_a_batch_larger_than_a_statement_is_recorded_whole(db, merchant):
    """A deliverer catching up on a backlog may finish more attempts in one gather than a
    record statement takes (RECORD_ROWS_MAX): all are recorded, in one transaction, and
    the endpoint's health once."""
    count = 2 * events.RECORD_ROWS_MAX + 7
    await db.execute(
        "INSERT INTO webhook_endpoints (id, merchant_id, url, enabled_events, status, "
        "secret_ciphertext, failing_since) VALUES ('we_many', $1, 'https://shop.example/hook', "
        "'{*}', 'enabled', '\\x00', now() - interval '1 hour')",
        merchant.id,
    )
    await db.execute(
        "INSERT INTO events (id, merchant_id, type, object_id, payload, created_at) "
        "SELECT 'evt_many' || i, $1, 'payment.authorized', 'pay_x', '{}', now() "
        "FROM generate_series(1, $2) i",
        merchant.id,
        count,
    )
    await db.execute(
        "INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at) "
        "SELECT 'evt_many' || i, 'we_many', now() + interval '1 minute' "
        "FROM generate_series(1, $1) i",
        count,
    )
    # Every third attempt failed (a retry in a minute); the others delivered.
    batch = [
        events.AttemptRecord(
            f"evt_many{i}",
            "we_many",
            1,
            500 if i % 3 == 0 else 200,
            None,
            3,
            "pending" if i % 3 == 0 else "delivered",
            60.0,
        )
        for i in range(1, count + 1)
    ]
    async with db.acquire() as conn:
        disabled = await events.record(conn, batch, {"we_many": (True, False)}, 3600.0)
    assert disabled == []
    retries = count // 3
    states = await db.fetch(
        "SELECT state, attempts, count(*) FROM webhook_deliveries WHERE endpoint_id = 'we_many' "
        "GROUP BY state, attempts"
    )
    assert [tuple(row) for row in states] == [("pending", 1, retries)]
    assert await db.fetchval("SELECT count(*) FROM webhook_attempts") == count
    # A success in the batch: the endpoint is no longer failing.
    assert (
        await db.fetchval("SELECT failing_since FROM webhook_endpoints WHERE id = 'we_many'")
        is None
    )
