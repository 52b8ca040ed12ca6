"""The deliverer: every gateway process runs one, sending the outbox's deliveries.

Two ways in. A delivery this process just committed is handed over straight after the
commit (``handoff``): its row was written leased to this process, so it is sent with no
claim and no row update before the attempt. Everything else (retries, deliveries
another process wrote and dropped, those of a process that died, manual retries) is
claimed by polling: due rows under ``FOR UPDATE SKIP LOCKED``, their ``next_attempt_at``
pushed forward by a lease and committed. Either way the POST goes out after the commit and
outside any transaction through one pooled client (gateway/webhooks/client.py), and a
crash before the attempt is recorded lets the lease lapse: another pass (this process's
successor or any other) sends the delivery again with the same ``webhook-id``. At least once, never lost; claimed
by state and time, never by an id cursor (ids commit out of order).

Concurrency is bounded overall and per endpoint, for both ways in: a handed delivery waits
in a bounded queue for a slot, and one that cannot start within HANDOFF_WAIT_S is dropped
to the claim path (its lease lapses first, so it is never sent twice at once); a claim
takes only the free slots, of each endpoint only its free ones. Finished attempts are
recorded in batches, one statement each: whatever finished while the previous batch was
being written. The endpoints (URL, status, opened secret) are read through a cache that
lives ENDPOINT_CACHE_S, and at once after this process changed one.

The outcome of an attempt: a 2xx is delivered; 410 disables the endpoint and cancels its
pending deliveries; anything else (another status, a redirect, a timeout, a refused
connection or address) is retried after the schedule's next delay, or a longer
Retry-After, then the delivery is failed. An endpoint failing for longer than
KASSA_WEBHOOK_DISABLE_AFTER_S is disabled.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import asyncpg
import orjson

import core_ext
from gateway import metrics
from gateway.config import Settings
from gateway.store import events
from gateway.stripe import shapes as stripe_shapes
from gateway.webhooks.addresses import AddressRefused
from gateway.webhooks.client import WebhookClient
from gateway.webhooks.secrets import SecretBox

log = logging.getLogger("kassa.webhooks")

webhooks = core_ext.webhooks
USER_AGENT = "Kassa-Webhooks/1.0"
CLAIM_ROWS_MAX = 100  # per claim statement
POLL_INTERVAL_S = 1.0  # how soon deliveries due by time or dropped by others are noticed
LEASE_MARGIN_S = 5.0  # past the timeout: recording the attempt fits in the lease
# A handed delivery may wait this long for a slot; its lease covers the wait, the attempt
# and the record, so it never lapses while the delivery is still ours.
HANDOFF_WAIT_S = 5.0
HANDOFF_QUEUE_MAX = 10_000  # handed deliveries waiting for a slot; past it, claimed later
ENDPOINT_CACHE_S = 1.0  # how stale an endpoint another process changed may be when sent to
DISABLED_ENDPOINT_CACHE_S = 0.1  # and one found not enabled, before its deliveries are canceled
GAUGE_INTERVAL_S = 5.0
RECORD_RETRIES_MAX = 5  # then the attempts are dropped: their leases lapse, they go again
FAILURE_BACKOFF_S = 1.0  # after a database error in a pass
CLOSE_DRAIN_S = 2.0  # at shutdown, how long attempts in flight may finish
# Slots free up one by one; waiting this long after the first lets one claim serve all that
# gathered meanwhile (under load, a statement per delivery was what bound the deliverer),
# at 10 ms of added latency for claimed deliveries.
GATHER_S = 0.01
# Attempts are recorded in batches gathered for this long: the receiver already has the
# event, so only the record waits (the leases keep LEASE_MARGIN_S for it), and fewer,
# larger statements cost the workers and the database less per delivery. Up to a point:
# the record's statements take at most events.RECORD_ROWS_MAX attempts each (its
# retries' filter searches the batch for each row), and the attempt log and the metrics
# lag the receiver by as long as the gather.
RECORD_GATHER_S = 0.1


def lease_s(settings: Settings) -> float:
    """How long a new delivery is leased to the process that wrote it."""
    return settings.webhook_timeout_s + LEASE_MARGIN_S + HANDOFF_WAIT_S


class _Due(NamedTuple):  # tuples: one of each is made per delivery, on the hot path
    """A delivery this process holds the lease of, to send."""

    event_id: str
    endpoint_id: str
    attempts: int  # made before this one
    payload: str
    created_at: datetime  # the event's, for the latency
    start_by: float  # monotonic: past this the lease may lapse mid-attempt; not started


@dataclass(frozen=True)
class _Endpoint:
    url: str
    keys: webhooks.SigningKeys | None  # its opened secret's signing_keys; None unless enabled
    read_at: float  # monotonic
    stripe: bool  # sent Stripe Events (made through /stripe/v1), else Kassa's own


class _Finished(NamedTuple):
    record: events.AttemptRecord
    ok: bool
    gone: bool
    status_class: str
    created_at: datetime  # the event's, for the latency
    answered_at: float  # unix time the attempt ended (the latency's end)


def _fresh(endpoint: _Endpoint | None, now: float) -> bool:
    """Whether a cached endpoint can be sent to (or found not enabled) without a read. One
    cached as not enabled is trusted only for DISABLED_ENDPOINT_CACHE_S: deliveries exist
    only for an endpoint enabled when they were written, so it may have been enabled again
    since, and a delivery canceled on a stale read would be lost."""
    if endpoint is None:
        return False
    ttl_s = ENDPOINT_CACHE_S if endpoint.keys is not None else DISABLED_ENDPOINT_CACHE_S
    return now - endpoint.read_at <= ttl_s


def _body_for(endpoint: _Endpoint | None, payload: str) -> bytes | None:
    """What is POSTed: the stored event, or for a Stripe endpoint the same event as a
    Stripe Event (None for a type Stripe has no name for)."""
    if endpoint is None or not endpoint.stripe:
        return payload.encode()
    try:
        return orjson.dumps(stripe_shapes.event(orjson.loads(payload)))
    except ValueError:
        return None


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
        self._claim_lease_s = self._timeout_s + LEASE_MARGIN_S
        self.lease_s = lease_s(settings)
        self._wakeup = asyncio.Event()
        self._claim_now = True  # claim at the next pass, not only at the next poll
        # Handed deliveries waiting for a slot, by endpoint (oldest first in each; the
        # endpoints in the order they are next served).
        self._handed: dict[str, collections.deque[_Due]] = {}
        self._handed_count = 0
        self._endpoints: dict[str, _Endpoint] = {}
        self._finished: list[_Finished] = []
        self._finished_ready = asyncio.Event()
        self._by_endpoint: dict[str, int] = {}
        self._sending: dict[int, _Due] = {}  # attempts in flight, by a number of their own
        self._sent_count = 0  # numbers them
        self._none_sending = asyncio.Event()  # set whenever no attempt is in flight
        self._none_sending.set()
        self._closing = False  # answers that come after close() are not this process's
        self._loops: list[asyncio.Task[None]] = []
        self._client: WebhookClient | None = None

    def handoff(self, deliveries: Sequence[events.Handoff]) -> None:
        """Deliveries this process just committed, leased to it: send them, no claim."""
        start_by = time.monotonic() + HANDOFF_WAIT_S
        room = max(0, HANDOFF_QUEUE_MAX - self._handed_count)
        for d in deliveries[:room]:
            queue = self._handed.setdefault(d.endpoint_id, collections.deque())
            queue.append(_Due(d.event_id, d.endpoint_id, 0, d.payload, d.created_at, start_by))
        self._handed_count += min(room, len(deliveries))
        if len(deliveries) > room:  # their leases lapse and they are claimed
            metrics.WEBHOOK_HANDOFFS_DROPPED.inc(len(deliveries) - room)
        self._start_handed()

    def wake(self) -> None:
        """Deliveries are due now (a manual retry): claim at once, not at the next poll."""
        self._claim_now = True
        self._wakeup.set()

    def forget_endpoint(self, endpoint_id: str) -> None:
        """This process changed the endpoint: read it again before sending to it."""
        self._endpoints.pop(endpoint_id, None)

    async def start(self) -> None:
        # The SSRF guard sits in the client's resolver: the address checked is the one
        # connected to. Attempts in flight are bounded here, overall and per endpoint.
        self._client = WebhookClient(self._allow_private, USER_AGENT, self._timeout_s)
        self._loops = [
            asyncio.create_task(self._dispatch_forever()),
            asyncio.create_task(self._record_forever()),
            asyncio.create_task(self._sample_forever()),
        ]

    async def close(self) -> None:
        """Stop: attempts in flight get CLOSE_DRAIN_S to finish, and those finished are
        recorded; the deliveries this process holds but did not finish (handed and not
        started, or cut off mid-attempt) are made due at once for the other processes,
        instead of waiting for their leases to lapse."""
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        handed = [d for q in self._handed.values() for d in q]
        self._handed.clear()  # no slot that frees now starts another
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._none_sending.wait(), CLOSE_DRAIN_S)
        self._closing = True
        unfinished = [(d.event_id, d.endpoint_id) for d in self._sending.values()]
        unfinished += [(d.event_id, d.endpoint_id) for d in handed]
        self._sending.clear()
        with contextlib.suppress(Exception):
            async with self._pool.acquire() as conn:
                if self._finished:
                    await self._record_batch(conn, self._finished)
                if unfinished:
                    await events.release(conn, unfinished)
        if self._client is not None:
            await self._client.close()

    # --- dispatching ----------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        next_poll = 0.0
        while True:
            self._wakeup.clear()
            try:
                await self._read_endpoints(set(self._handed))  # those gone stale
                self._start_handed()
                if self._claim_now or time.monotonic() >= next_poll:
                    free = self._concurrency - len(self._sending)
                    if free > 0:
                        rows_max = min(free, CLAIM_ROWS_MAX)
                        self._claim_now = False
                        next_poll = time.monotonic() + POLL_INTERVAL_S
                        # A full claim means more may be due: claim again as slots free.
                        self._claim_now = await self._claim(rows_max) == rows_max
            except asyncio.CancelledError:
                raise
            except Exception:
                metrics.BACKGROUND_FAILURES.inc()
                log.exception("dispatching webhook deliveries failed")
                await asyncio.sleep(FAILURE_BACKOFF_S)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), max(0.0, next_poll - time.monotonic()))
            if self._claim_now:
                await asyncio.sleep(GATHER_S)  # slots and due rows gather: one claim for all

    def _has_slot(self, endpoint_id: str) -> bool:
        return (
            len(self._sending) < self._concurrency
            and self._by_endpoint.get(endpoint_id, 0) < self._per_endpoint
        )

    def _start_handed(self) -> None:
        """Start the handed deliveries that have a slot, oldest first per endpoint, the
        endpoints in turn; drop those that waited too long (the claim path has them once
        their leases lapse). An endpoint not fresh in the cache waits for the loop to read
        it. Called when deliveries are handed and when a slot frees: no loop hop between."""
        now = time.monotonic()
        served = []
        for endpoint_id, queue in self._handed.items():
            if len(self._sending) >= self._concurrency:
                break
            while queue and queue[0].start_by < now:
                queue.popleft()
                self._handed_count -= 1
                metrics.WEBHOOK_HANDOFFS_DROPPED.inc()
            endpoint = self._endpoints.get(endpoint_id)
            if queue and not _fresh(endpoint, now):
                self._wakeup.set()  # the loop reads it, then starts these
                continue
            while queue and self._has_slot(endpoint_id):
                self._start(queue.popleft())
                self._handed_count -= 1
            served.append(endpoint_id)
        for endpoint_id in served:  # to the back of the turn, or gone when empty
            queue = self._handed.pop(endpoint_id)
            if queue:
                self._handed[endpoint_id] = queue

    async def _claim(self, rows_max: int) -> int:
        free_here = {e: self._per_endpoint - n for e, n in self._by_endpoint.items()}
        async with self._pool.acquire() as conn:
            rows = await events.claim(
                conn, rows_max, self._claim_lease_s, free_here, self._per_endpoint
            )
        if not rows:
            return 0
        await self._read_endpoints({row["endpoint_id"] for row in rows})
        start_by = time.monotonic() + LEASE_MARGIN_S
        for row in rows:  # the claim kept each endpoint within its free slots here
            self._start(
                _Due(
                    row["event_id"],
                    row["endpoint_id"],
                    row["attempts"],
                    row["payload"],
                    row["created_at"],
                    start_by,
                )
            )
        return len(rows)

    def _start(self, due: _Due) -> None:
        """Send one delivery: signed and written at once, its answer called back to
        ``_answered`` (no task per attempt: gateway/webhooks/client.py says why)."""
        self._by_endpoint[due.endpoint_id] = self._by_endpoint.get(due.endpoint_id, 0) + 1
        self._sent_count += 1
        number = self._sent_count
        self._sending[number] = due
        self._none_sending.clear()
        started = time.monotonic()
        answered = functools.partial(self._answered, number, due, started)
        loop = asyncio.get_running_loop()
        try:
            endpoint = self._endpoints.get(due.endpoint_id)
            body = _body_for(endpoint, due.payload)
            if endpoint is None or endpoint.keys is None or body is None or self._client is None:
                # Disabled or deleted since the delivery was written or claimed, or an
                # event Stripe has no type for, to a Stripe endpoint: not sent (answered
                # with no status and no error).
                loop.call_soon(answered, None, None, None)
                return
            headers = webhooks.sign(endpoint.keys, due.event_id, int(time.time()), body)
            self._client.send(endpoint.url, headers, body, answered)  # bounded by its timeout
        except Exception as exc:  # a bug: the slot is given back, the lease lapses
            loop.call_soon(answered, None, None, exc)

    async def _read_endpoints(self, endpoint_ids: set[str]) -> None:
        """Make sure the cache holds these endpoints, fresh enough."""
        now = time.monotonic()
        stale = [e for e in endpoint_ids if not _fresh(self._endpoints.get(e), now)]
        if not stale:
            return
        async with self._pool.acquire() as conn:
            rows = await events.endpoints(conn, stale)
        for row in rows:
            enabled = row["status"] == "enabled" and row["secret_ciphertext"] is not None
            keys = None
            if enabled:
                secret = self._box.open(bytes(row["secret_ciphertext"]), row["id"])
                keys = webhooks.signing_keys(secret)
            self._endpoints[row["id"]] = _Endpoint(
                row["url"], keys, now, row["event_format"] == "stripe"
            )

    # --- sending --------------------------------------------------------------------------

    def _answered(
        self,
        number: int,
        due: _Due,
        started: float,
        status: int | None,
        retry_after: str | None,
        exc: BaseException | None,
    ) -> None:
        """An attempt ended (the client's callback; for one not sent, no status and no
        error): its outcome joins the next record, and its slot takes the next delivery."""
        if self._closing or self._sending.pop(number, None) is None:
            return  # after close(): released for the other processes instead
        left = self._by_endpoint.get(due.endpoint_id, 1) - 1
        if left > 0:
            self._by_endpoint[due.endpoint_id] = left
        else:
            self._by_endpoint.pop(due.endpoint_id, None)
        if not self._sending:
            self._none_sending.set()
        finished = self._outcome(due, started, status, retry_after, exc)
        if finished is not None:
            self._finished.append(finished)
            self._finished_ready.set()
        self._start_handed()  # the freed slot: a handed delivery takes it at once,
        if self._claim_now:  # or, with a backlog in the table, the next claim
            self._wakeup.set()

    def _outcome(
        self,
        due: _Due,
        started: float,
        status: int | None,
        retry_after: str | None,
        exc: BaseException | None,
    ) -> _Finished | None:
        """What an attempt comes to; None for an error no attempt should be logged with
        (a bug: the lease lapses and the delivery goes again)."""
        error: str | None = None
        if status is None and exc is None:  # not sent: canceled
            return _Finished(
                events.AttemptRecord(
                    due.event_id, due.endpoint_id, due.attempts, None, None, 0, "canceled", 0.0
                ),
                False,
                False,
                "",
                due.created_at,
                time.time(),
            )
        if isinstance(exc, TimeoutError):
            error = f"timeout: no answer within {self._timeout_s:g} s"
        elif isinstance(exc, AddressRefused):
            error = f"refused_address: {exc}"
        elif isinstance(exc, OSError):  # refused, reset, TLS, not HTTP (client.BadResponse)
            error = f"connection_error: {type(exc).__name__}"
        elif exc is not None:
            metrics.BACKGROUND_FAILURES.inc()
            log.error("webhook attempt failed", exc_info=exc)
            return None
        duration_ms = int((time.monotonic() - started) * 1000)
        attempt = due.attempts + 1
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
                due.event_id,
                due.endpoint_id,
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
            due.created_at,
            time.time(),
        )

    # --- recording ------------------------------------------------------------------------

    async def _record_forever(self) -> None:
        failures = 0
        while True:
            await self._finished_ready.wait()
            await asyncio.sleep(RECORD_GATHER_S)
            self._finished_ready.clear()
            batch, self._finished = self._finished, []
            if not batch:
                continue
            try:
                async with self._pool.acquire() as conn:
                    await self._record_batch(conn, batch)
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

    async def _record_batch(self, conn: events.Conn, batch: list[_Finished]) -> None:
        health: dict[str, tuple[bool, bool]] = {}
        for f in batch:
            if f.record.state == "canceled":
                continue
            ok, gone = health.get(f.record.endpoint_id, (False, False))
            health[f.record.endpoint_id] = (ok or f.ok, gone or f.gone)
        disabled = await events.record(
            conn, [f.record for f in batch], health, self._disable_after_s
        )
        disabled_ids = {row["id"] for row in disabled}
        for row in disabled:
            self.forget_endpoint(row["id"])
            reason = "gone" if row["gone"] else "failing"
            metrics.webhook_endpoint_disabled(reason)
            log.warning("webhook endpoint %s disabled (%s)", row["id"], reason)
        # The metrics of the batch in one go: a histogram observed one value at a time
        # costs a write to the shared memory map per value (gateway/metrics.py).
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        latencies_s: list[float] = []
        delivered_after: list[int] = []
        failed_after: list[int] = []
        for f in batch:
            if f.record.state == "canceled":
                continue  # not sent: no attempt to count
            if f.ok:
                outcome = "delivered"
                latencies_s.append(f.answered_at - f.created_at.timestamp())
                delivered_after.append(f.record.attempt)
            elif f.record.endpoint_id in disabled_ids:
                outcome = "endpoint_disabled"
            elif f.record.state == "failed":
                outcome = "failed"
                failed_after.append(f.record.attempt)
            else:
                outcome = "retrying"
            counts[outcome, f.status_class] += 1
        metrics.webhooks_delivered(latencies_s, delivered_after)
        metrics.webhooks_failed(failed_after)
        for (outcome, status_class), count in counts.items():
            metrics.webhook_attempts(outcome, status_class, count)

    # --- gauges ---------------------------------------------------------------------------

    async def _sample_forever(self) -> None:
        while True:
            if self._client is not None:
                self._client.sweep()  # idle connections to endpoints no longer sent to
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
