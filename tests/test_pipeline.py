"""Group commit: one transaction for many requests, a bad row fails alone, overload sheds."""

import asyncio

import asyncpg
import pytest

from gateway.store import pipeline
from gateway.store.pipeline import Batcher, BatchSettings, Overloaded
from tests.payments_helpers import authorize

SETTINGS = BatchSettings(
    enabled=True, rows_max=64, wait_s=0.005, inflight_max=1000, acquire_timeout_s=2.0
)


@pytest.fixture
async def scratch(db):
    await db.execute("DROP TABLE IF EXISTS pipeline_scratch")
    await db.execute("CREATE TABLE pipeline_scratch (n integer PRIMARY KEY CHECK (n >= 0))")
    yield db
    await db.execute("DROP TABLE pipeline_scratch")


def recording_write(batches):
    async def write(conn, items):
        batches.append(len(items))
        await conn.execute("INSERT INTO pipeline_scratch SELECT * FROM unnest($1::int[])", items)
        return [f"ok {n}" for n in items]

    return write


async def test_concurrent_items_share_a_transaction(scratch):
    batches = []
    batcher = Batcher("test", scratch, recording_write(batches), SETTINGS)
    results = await asyncio.gather(*[batcher.submit(n) for n in range(50)])
    await batcher.close()
    assert results == [f"ok {n}" for n in range(50)]
    assert sum(batches) == 50 and len(batches) < 10, batches
    assert await scratch.fetchval("SELECT count(*) FROM pipeline_scratch") == 50


async def test_a_bad_row_fails_alone(scratch):
    batches = []
    batcher = Batcher("test", scratch, recording_write(batches), SETTINGS)
    results = await asyncio.gather(
        *[batcher.submit(n) for n in (1, 2, -3, 4)], return_exceptions=True
    )
    await batcher.close()
    assert results[:2] == ["ok 1", "ok 2"] and results[3] == "ok 4"
    assert isinstance(results[2], asyncpg.CheckViolationError)
    assert await scratch.fetchval("SELECT array_agg(n ORDER BY n) FROM pipeline_scratch") == [
        1,
        2,
        4,
    ]
    assert batches[0] == 4  # tried together first, then one by one


async def test_batching_off_writes_each_item_alone(scratch):
    batches = []
    off = BatchSettings(
        enabled=False, rows_max=64, wait_s=0.005, inflight_max=1000, acquire_timeout_s=2.0
    )
    batcher = Batcher("test", scratch, recording_write(batches), off)
    await asyncio.gather(*[batcher.submit(n) for n in range(10)])
    assert batches == [1] * 10


async def test_full_pipeline_sheds_instead_of_queueing(scratch):
    shed = []
    pipeline.set_observers(lambda *a: None, shed.append)
    try:
        tight = BatchSettings(
            enabled=True, rows_max=64, wait_s=0.05, inflight_max=3, acquire_timeout_s=2.0
        )
        batcher = Batcher("tight", scratch, recording_write([]), tight)
        results = await asyncio.gather(
            *[batcher.submit(n) for n in range(10)], return_exceptions=True
        )
        await batcher.close()
    finally:
        pipeline.set_observers(lambda *a: None, lambda *a: None)
    assert results[:3] == ["ok 0", "ok 1", "ok 2"]
    assert all(isinstance(r, Overloaded) for r in results[3:])
    assert shed == ["tight"] * 7
    assert await scratch.fetchval("SELECT count(*) FROM pipeline_scratch") == 3


async def test_http_overload_is_a_503_with_retry_after(app_factory, merchant, db):
    client = await app_factory(pipeline_inflight_max=2, commit_wait_ms=50)
    answers = await asyncio.gather(*[authorize(client, merchant, key=f"k{n}") for n in range(12)])
    created = [body for status, body in answers if status == 201]
    shed = [body for status, body in answers if status == 503]
    assert len(created) + len(shed) == 12 and created and shed
    for body in shed:
        assert (body["error"]["type"], body["error"]["code"]) == ("api_error", "gateway_overloaded")
    assert await db.fetchval("SELECT count(*) FROM payments") == len(created)
    # Shed requests claimed nothing: retrying their keys now succeeds.
    status, _ = await authorize(client, merchant, key="k11")
    assert status == 201


async def test_one_batch_mixes_new_keys_replays_and_duplicates(client, merchant, db):
    status, first = await authorize(client, merchant, key="seen")
    assert status == 201
    bodies = await asyncio.gather(
        *[authorize(client, merchant, key=f"new-{n}") for n in range(10)],
        authorize(client, merchant, key="seen"),
        authorize(client, merchant, key="twice"),
        authorize(client, merchant, key="twice"),
        authorize(client, merchant, key="seen", amount=5),
    )
    statuses = [status for status, _ in bodies]
    assert statuses[:10] == [201] * 10
    assert bodies[10] == (201, first)
    assert sorted(statuses[11:13]) in ([201, 409], [201, 201])  # 2nd in flight or replayed
    assert statuses[13] == 422
    assert await db.fetchval("SELECT count(*) FROM payments") == 12


async def test_a_caller_that_goes_away_does_not_fail_its_batch(scratch):
    """A request cancelled while its batch commits (its client left, a timeout) loses
    only its own answer: its neighbours get theirs and the batch is written whole."""
    started = asyncio.Event()

    async def slow_write(conn, items):
        started.set()
        await asyncio.sleep(0.2)  # still committing when the caller is cancelled
        await conn.execute("INSERT INTO pipeline_scratch SELECT * FROM unnest($1::int[])", items)
        return [f"ok {n}" for n in items]

    batcher = Batcher("test", scratch, slow_write, SETTINGS)
    callers = [asyncio.create_task(batcher.submit(n)) for n in range(3)]
    await started.wait()
    callers[1].cancel()
    results = await asyncio.gather(*callers, return_exceptions=True)
    await batcher.close()
    assert results[0] == "ok 0" and results[2] == "ok 2"
    assert isinstance(results[1], asyncio.CancelledError)
    assert await scratch.fetchval("SELECT count(*) FROM pipeline_scratch") == 3
    assert batcher.depth == 0
