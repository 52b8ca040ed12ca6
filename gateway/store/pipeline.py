"""Group commit: many requests' writes in one PostgreSQL transaction.

A per-request transaction caps the gateway at the database's commit (fsync)
rate. A ``Batcher`` gathers items for at most ``wait_ms`` or ``rows_max`` items,
hands them to a set-based ``write`` function inside one transaction, and
resolves each caller's future only after the commit is durable
(synchronous_commit stays on). If the batch fails as a whole, its items are
retried one per transaction, so a bad row fails its own request and never its
neighbours. Past ``inflight_max`` waiting items the batcher refuses new ones
(the gateway answers 503 with Retry-After) instead of queueing without bound.

With group commit off, every item is written alone in its own transaction by
the same ``write`` function: the honest "batching off" baseline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg

log = logging.getLogger("kassa.pipeline")

Item = TypeVar("Item")
# write(conn, items) -> one result per item, in order; a result that is an
# Exception instance fails that item alone (its future raises it).
Write = Callable[[asyncpg.Connection, Sequence[Item]], Awaitable[list[Any]]]

BATCHES_IN_FLIGHT_MAX = 1  # the next batch is what queued during this commit: one fsync for all


class Overloaded(Exception):
    """The pipeline is full: shed this request."""


@dataclass(frozen=True)
class BatchSettings:
    enabled: bool
    rows_max: int
    wait_s: float
    inflight_max: int
    acquire_timeout_s: float


# Observers for metrics; gateway.metrics replaces them when it is loaded.
def _observe_batch(name: str, rows: int, seconds: float) -> None:
    pass


def _observe_shed(name: str) -> None:
    pass


def set_observers(batch: Callable[[str, int, float], None], shed: Callable[[str], None]) -> None:
    global _observe_batch, _observe_shed
    _observe_batch, _observe_shed = batch, shed


class Batcher(Generic[Item]):
    def __init__(
        self,
        name: str,
        pool: asyncpg.Pool,
        write: Write,
        settings: BatchSettings,
        *,
        transactional: bool = True,
    ):
        """``transactional=False`` for a ``write`` whose one modifying statement is atomic
        by itself: no BEGIN and COMMIT round trips around it."""
        self.name = name
        self._pool = pool
        self._write = write
        self._settings = settings
        self._transactional = transactional
        self._queue: list[tuple[Item, asyncio.Future]] = []
        self._wakeup = asyncio.Event()
        self._inflight = 0
        self._batches = asyncio.Semaphore(BATCHES_IN_FLIGHT_MAX)
        self._flusher: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    @property
    def depth(self) -> int:
        """Items accepted and not yet answered."""
        return self._inflight

    async def submit(self, item: Item, sheddable: bool = True) -> Any:
        """Write ``item`` and return its result once durable. ``sheddable=False`` for
        writes that must not be refused (an outcome the processor already gave)."""
        if sheddable and self._inflight >= self._settings.inflight_max:
            _observe_shed(self.name)
            raise Overloaded(self.name)
        self._inflight += 1
        try:
            if not self._settings.enabled:
                return (await self._run([item]))[0].result()
            future = asyncio.get_running_loop().create_future()
            self._queue.append((item, future))
            if self._flusher is None:
                self._flusher = asyncio.create_task(self._flush_forever())
            self._wakeup.set()
            # No shield needed: a caller that goes away cancels only its own future; the
            # batch's task, which commits its neighbours too, is not the caller's, and it
            # skips a future that is already done.
            return await future
        finally:
            self._inflight -= 1

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
        for _, future in self._queue:
            if not future.done():
                future.set_exception(Overloaded(f"{self.name} closed"))

    async def _flush_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            # Take a batch slot first: while every slot is committing, arrivals pile up
            # and the next batch grows by itself (no added latency at light load).
            await self._batches.acquire()
            if len(self._queue) < self._settings.rows_max and self._settings.wait_s > 0:
                await asyncio.sleep(self._settings.wait_s)  # the wait bound, at most once
            batch = self._queue[: self._settings.rows_max]
            del self._queue[: len(batch)]
            if not self._queue:
                self._wakeup.clear()
            if not batch:
                self._batches.release()
                continue
            task = asyncio.create_task(self._commit(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _commit(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        try:
            outcomes = await self._run([item for item, _ in batch])
            for (_, future), outcome in zip(batch, outcomes):
                if future.done():
                    continue
                if outcome.ok:
                    future.set_result(outcome.value)
                else:
                    future.set_exception(outcome.error)
        except BaseException as exc:  # never leave a caller waiting forever
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        exc if isinstance(exc, Exception) else Overloaded(f"{self.name} stopped")
                    )
            if not isinstance(exc, Exception):
                raise
        finally:
            self._batches.release()

    async def _run(self, items: list[Item]) -> list[_Outcome]:
        """Write items in one transaction; if that fails, each alone."""
        started = time.monotonic()
        try:
            results = await self._transaction(items)
        except Exception as exc:
            if len(items) == 1:
                return [_Outcome(error=exc)]
            log.warning(
                "%s batch of %d failed (%s: %s); writing its items one by one",
                self.name,
                len(items),
                type(exc).__name__,
                exc,
            )
            return [(await self._run([item]))[0] for item in items]
        _observe_batch(self.name, len(items), time.monotonic() - started)
        return [
            _Outcome(error=r) if isinstance(r, Exception) else _Outcome(value=r) for r in results
        ]

    async def _transaction(self, items: list[Item]) -> list[Any]:
        async with self._pool.acquire(timeout=self._settings.acquire_timeout_s) as conn:
            if self._transactional:
                async with conn.transaction():
                    results = await self._write(conn, items)
            else:
                results = await self._write(conn, items)
        if len(results) != len(items):
            raise RuntimeError(f"{self.name}: {len(results)} results for {len(items)} items")
        return results


class _Outcome:
    __slots__ = ("value", "error")

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error

    @property
    def ok(self) -> bool:
        return self.error is None

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value
