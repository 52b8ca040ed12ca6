"""The deliverer: every gateway process runs one, sending the outbox's due deliveries.

A pass claims due deliveries (``FOR UPDATE SKIP LOCKED``; the claim pushes
``next_attempt_at`` forward by a lease and commits), then POSTs each outside any
transaction with one shared aiohttp session. A crash after the claim lets the lease lapse
and another pass (this process's successor or any other) sends the delivery again, with
the same ``webhook-id``: at least once, never lost. Deliveries are claimed by state and
time, never by an id cursor (ids commit out of order).

Concurrency is bounded overall (a pass claims at most the free slots, so a claimed
delivery is sent at once and its lease only has to cover one attempt) and per endpoint
(the claim takes of each endpoint only the slots it has free in this process).
Finished attempts are recorded in batches: whatever finished while the previous batch was
being written.

The outcome of an attempt: a 2xx is delivered; 410 disables the endpoint and cancels its
pending deliveries; anything else (another status, a redirect, a timeout, a refused
connection or address) is retried after the schedule's next delay, or a longer
Retry-After, then the delivery is failed. An endpoint failing for longer than
KASSA_WEBHOOK_DISABLE_AFTER_S is disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime

import aiohttp
import asyncpg

import core_ext
from gateway import metrics
from gateway.config import Settings
from gateway.store import events
from gateway.webhooks.addresses import AddressRefused, guarded_connector
from gateway.webhooks.secrets import SecretBox

log = logging.getLogger("kassa.webhooks")

webhooks = core_ext.webhooks
USER_AGENT = "Kassa-Webhooks/1.0"
CLAIM_ROWS_MAX = 100  # per claim statement
POLL_INTERVAL_S = 1.0  # how soon deliveries committed by other processes are noticed
LEASE_MARGIN_S = 5.0  # past the timeout: recording the attempt fits in the lease
RESPONSE_BYTES_MAX = 64 * 1024  # what is read of an answer (its body is never used)
GAUGE_INTERVAL_S = 5.0
RECORD_RETRIES_MAX = 5  # then the attempts are dropped: their leases lapse, they go again
FAILURE_BACKOFF_S = 1.0  # after a database error in a pass
# Slots free up and attempts finish one by one; waiting this long after the first lets one
# claim, and one recording transaction, serve all that gathered meanwhile (under load, a
# statement per delivery was what bound the deliverer), at 10 ms of added latency.
GATHER_S = 0.01


@dataclass(frozen=True)
class _Finished:
    record: events.AttemptRecord
    ok: bool
    gone: bool
    status_class: str
    created_at: datetime  # the event's, for the latency


class Deliverer:
    def __init__(self, pool: asyncpg.Pool, box: SecretBox, settings: Settings) -> None:
        self._pool = pool
        self._box = box
        self._schedule: tuple[int, ...] = settings.webhook_retry_schedule_s
        self._timeout_s = float(settings.webhook_timeout_s)
        self._concurrency = settings.webhook_concurrency
        self._per_endpoint = settings.webhook_endpoint_concurrency
        self._disable_after_s = float(settings.webhook_disable_after_s)
        self._allow_private = settings.webhook_allow_private
        self._lease_s = self._timeout_s + LEASE_MARGIN_S
        self._wakeup = asyncio.Event()
        self._finished: list[_Finished] = []
        self._finished_ready = asyncio.Event()
        self._by_endpoint: dict[str, int] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def wake(self) -> None:
        """Deliveries were committed in this process: claim now, not at the next poll."""
        self._wakeup.set()

    async def start(self) -> None:
        # The SSRF guard sits in the connection: the address checked is the one connected.
        connector = guarded_connector(
            self._allow_private, limit=self._concurrency, limit_per_host=self._per_endpoint
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            trust_env=False,  # no proxy from the environment sees our deliveries
            headers={"User-Agent": USER_AGENT},
            auto_decompress=False,
        )
        self._loops = [
            asyncio.create_task(self._claim_forever()),
            asyncio.create_task(self._record_forever()),
            asyncio.create_task(self._sample_forever()),
        ]

    async def close(self) -> None:
        """Stop: attempts in flight are abandoned (their leases lapse and they go out
        again), attempts finished are recorded first."""
        for task in [*self._loops, *self._sending]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._sending, return_exceptions=True)
        if self._finished:
            with contextlib.suppress(Exception):
                await self._record(self._finished)
        if self._session is not None:
            await self._session.close()

    # --- claiming -------------------------------------------------------------------------

    async def _claim_forever(self) -> None:
        while True:
            self._wakeup.clear()
            free = self._concurrency - len(self._sending)
            claimed = 0
            if free > 0:
                try:
                    claimed = await self._claim(min(free, CLAIM_ROWS_MAX))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    metrics.BACKGROUND_FAILURES.inc()
                    log.exception("claiming webhook deliveries failed")
                    await asyncio.sleep(FAILURE_BACKOFF_S)
                    continue
            if claimed and claimed == min(free, CLAIM_ROWS_MAX):
                continue  # more may be due: claim again (a full slot table waits below)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), POLL_INTERVAL_S)
                await asyncio.sleep(GATHER_S)

    async def _claim(self, rows_max: int) -> int:
        free_here = {e: self._per_endpoint - n for e, n in self._by_endpoint.items()}
        async with self._pool.acquire() as conn:
            rows = await events.claim(conn, rows_max, self._lease_s, free_here, self._per_endpoint)
        for row in rows:  # the claim kept each endpoint within its free slots here
            endpoint_id = row["endpoint_id"]
            self._by_endpoint[endpoint_id] = self._by_endpoint.get(endpoint_id, 0) + 1
            task = asyncio.create_task(self._deliver(row))
            self._sending.add(task)
            task.add_done_callback(self._sent)
        return len(rows)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._wakeup.set()  # a slot is free

    # --- sending --------------------------------------------------------------------------

    async def _deliver(self, row: asyncpg.Record) -> None:
        endpoint_id = row["endpoint_id"]
        try:
            finished = await self._attempt(row)
        finally:
            left = self._by_endpoint.get(endpoint_id, 1) - 1
            if left > 0:
                self._by_endpoint[endpoint_id] = left
            else:
                self._by_endpoint.pop(endpoint_id, None)
        self._finished.append(finished)
        self._finished_ready.set()

    async def _attempt(self, row: asyncpg.Record) -> _Finished:
        status: int | None = None
        error: str | None = None
        retry_after: str | None = None
        started = time.monotonic()
        if row["endpoint_status"] != "enabled" or row["secret_ciphertext"] is None:
            # Disabled or deleted between the claim's snapshot and its commit: not sent.
            return _Finished(
                events.AttemptRecord(
                    row["id"],
                    row["event_id"],
                    row["endpoint_id"],
                    row["attempts"],
                    None,
                    None,
                    0,
                    "canceled",
                    0.0,
                ),
                False,
                False,
                "",
                row["created_at"],
            )
        try:
            status, retry_after = await self._post(row)
        except TimeoutError:
            error = f"timeout: no answer within {self._timeout_s:g} s"
        except AddressRefused as exc:
            error = f"refused_address: {exc}"
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressRefused):
                error = f"refused_address: {exc.os_error}"
            else:
                error = f"connection_error: {type(exc).__name__}"
        except (aiohttp.ClientError, OSError) as exc:
            error = f"connection_error: {type(exc).__name__}"
        duration_ms = int((time.monotonic() - started) * 1000)
        attempt = row["attempts"] + 1
        ok = status is not None and 200 <= status < 300
        gone = status == 410
        delay: float | None = 0.0
        if ok:
            state = "delivered"
        elif gone:
            state = "failed"
        else:
            delay = webhooks.next_attempt_delay_s(
                self._schedule, attempt, webhooks.parse_retry_after(retry_after, time.time())
            )
            state = "failed" if delay is None else "pending"
        return _Finished(
            events.AttemptRecord(
                row["id"],
                row["event_id"],
                row["endpoint_id"],
                attempt,
                status,
                error,
                duration_ms,
                state,
                delay or 0.0,
            ),
            ok,
            gone,
            webhooks.status_class(status, error),
            row["created_at"],
        )

    async def _post(self, row: asyncpg.Record) -> tuple[int, str | None]:
        if self._session is None:
            raise RuntimeError("the deliverer was not started")
        secret = self._box.open(bytes(row["secret_ciphertext"]), row["endpoint_id"])
        body = str(row["payload"]).encode()
        headers = webhooks.signature_headers(secret, row["event_id"], int(time.time()), body)
        headers["Content-Type"] = "application/json"
        async with self._session.post(
            row["url"], data=body, headers=headers, allow_redirects=False
        ) as response:
            await response.content.read(RESPONSE_BYTES_MAX)  # bounded; never parsed
            return response.status, response.headers.get("Retry-After")

    # --- recording ------------------------------------------------------------------------

    async def _record_forever(self) -> None:
        failures = 0
        while True:
            await self._finished_ready.wait()
            await asyncio.sleep(GATHER_S)
            self._finished_ready.clear()
            batch, self._finished = self._finished, []
            if not batch:
                continue
            try:
                await self._record(batch)
                failures = 0
            except asyncio.CancelledError:
                self._finished = batch + self._finished  # close() records them
                raise
            except Exception:
                failures += 1
                metrics.BACKGROUND_FAILURES.inc()
                log.exception("recording %d webhook attempts failed", len(batch))
                if failures < RECORD_RETRIES_MAX:
                    self._finished = batch + self._finished
                    self._finished_ready.set()
                await asyncio.sleep(FAILURE_BACKOFF_S)

    async def _record(self, batch: list[_Finished]) -> None:
        health: dict[str, tuple[bool, bool]] = {}
        for f in batch:
            if f.record.state == "canceled":
                continue
            ok, gone = health.get(f.record.endpoint_id, (False, False))
            health[f.record.endpoint_id] = (ok or f.ok, gone or f.gone)
        async with self._pool.acquire() as conn, conn.transaction():
            disabled = await events.record(
                conn, [f.record for f in batch], health, self._disable_after_s
            )
        disabled_ids = {row["id"] for row in disabled}
        for row in disabled:
            reason = "gone" if row["gone"] else "failing"
            metrics.webhook_endpoint_disabled(reason)
            log.warning("webhook endpoint %s disabled (%s)", row["id"], reason)
        now = time.time()
        for f in batch:
            if f.record.state == "canceled":
                continue  # not sent: no attempt to count
            if f.ok:
                outcome = "delivered"
                metrics.webhook_delivered(now - f.created_at.timestamp(), f.record.attempt)
            elif f.record.endpoint_id in disabled_ids:
                outcome = "endpoint_disabled"
            elif f.record.state == "failed":
                outcome = "failed"
                metrics.webhook_failed(f.record.attempt)
            else:
                outcome = "retrying"
            metrics.webhook_attempt(outcome, f.status_class)

    # --- gauges ---------------------------------------------------------------------------

    async def _sample_forever(self) -> None:
        while True:
            try:
                row = await events.gauges(self._pool)
                metrics.set_webhook_backlog(
                    float(row["oldest_due_s"]),
                    {"enabled": row["enabled"], "disabled": row["disabled"]},
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("sampling the webhook gauges failed", exc_info=True)
            await asyncio.sleep(GAUGE_INTERVAL_S)
