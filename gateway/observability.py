"""Instrumentation of our resources without their modules knowing: the database pool's
acquire, a sampler for event-loop lag and in-process gauges, and the periodic checks
behind the stuck-payment and ledger gauges (run by gateway.recovery's loop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
import asyncpg.pool
from aiohttp import web

from gateway import metrics
from gateway.http.appkeys import POOL, SERVICE
from gateway.store import ledger, payments

log = logging.getLogger("kassa.observability")

SAMPLE_INTERVAL_S = 0.5  # loop lag resolution and staleness of sampled gauges


class _TimedPool(asyncpg.pool.Pool):
    """asyncpg.Pool whose every acquire (``acquire``, ``fetch``, ``execute``...) is timed.

    asyncpg has no acquire hook and its Pool has ``__slots__``, so an existing pool is
    switched to this layout-identical subclass; all public paths go through ``_acquire``.
    """

    __slots__ = ()

    async def _acquire(self, timeout: float | None) -> Any:
        started = time.perf_counter()
        try:
            return await super()._acquire(timeout)  # type: ignore[misc]  # private
        finally:
            metrics.DB_POOL_ACQUIRE.observe(time.perf_counter() - started)


def instrument_pool(pool: asyncpg.Pool) -> asyncpg.Pool:
    """Measure ``pool``'s acquire latency. If a future asyncpg renames ``Pool._acquire``,
    acquire latency is simply not measured (logged once), and nothing else changes."""
    if type(pool) is asyncpg.pool.Pool and hasattr(asyncpg.pool.Pool, "_acquire"):
        pool.__class__ = _TimedPool
    else:
        log.warning("cannot instrument %s: pool acquire latency is not measured", type(pool))
    return pool


def sample_gauges(app: web.Application) -> None:
    pool = app.get(POOL)
    if pool is not None:
        size, idle = pool.get_size(), pool.get_idle_size()
        metrics.DB_POOL_CONNECTIONS.labels("in_use").set(size - idle)
        metrics.DB_POOL_CONNECTIONS.labels("idle").set(idle)
        metrics.DB_POOL_MAX.set(pool.get_max_size())
    service = app.get(SERVICE)
    depth = getattr(service, "pipeline_depth", None)
    if isinstance(depth, int):
        metrics.pipeline_depth(depth)


async def sample_forever(app: web.Application) -> None:
    """Every SAMPLE_INTERVAL_S: the loop's lag (how late this sleep woke) and the gauges."""
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + SAMPLE_INTERVAL_S
        await asyncio.sleep(SAMPLE_INTERVAL_S)
        metrics.LOOP_LAG.observe(max(0.0, loop.time() - expected))
        try:
            sample_gauges(app)
        except Exception:  # a sampling bug must not stop the sampler
            log.exception("sampling gauges failed")


# --- background checks (called by gateway.recovery's loop) -------------------------------


async def refresh_stuck_payments(pool: asyncpg.Pool, older_than_s: int) -> int:
    """COUNT (on the partial index of 'processing' payments) into the stuck gauge."""
    stuck = await payments.count_stuck(pool, older_than_s)
    metrics.PAYMENTS_STUCK.set(stuck)
    return stuck


async def check_ledger(pool: asyncpg.Pool) -> bool | None:
    """The per-transaction and per-currency balance checks of ``books.verify``.

    Sets ``kassa_ledger_verify_ok`` and its timestamp. Returns None (gauges untouched)
    when another worker is running the check right now.
    """
    from gateway.books import verify_balances

    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        if not await ledger.try_check_lock(conn):
            return None
        problems = await verify_balances(conn)
    for problem in problems[:10]:
        log.error("ledger check: %s", problem)
    metrics.ledger_verified(not problems)
    return not problems
