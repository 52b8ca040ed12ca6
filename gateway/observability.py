"""Request observability: the outermost middleware (request id, RED metrics, idempotency
counts, one JSON access line), ``GET /metrics``, and the instrumentation that wraps our
resources without their modules knowing: the processor connector, the database pool's
acquire, and a sampler for event-loop lag and in-process gauges.

The access line carries the request id, merchant id, method, route template, status and
latency: never a path (an id in a URL is fine, a card number pasted into one is not), a
query string, a header value other than the request id, or anything from a body.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import asyncpg.pool
import orjson
from aiohttp import web

from gateway import metrics
from gateway.appkeys import MERCHANT_ID, POOL, SERVICE, SETTINGS
from gateway.connectors import APPROVED, DECLINED, ProcessorError
from gateway.errors import ApiError

access_log = logging.getLogger("kassa.access")
log = logging.getLogger("kassa.observability")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_CHARS_MAX = 200  # a longer or unprintable client id is replaced, never truncated
REQUEST_ID = web.RequestKey("request_id", str)
REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENCY_CODES = frozenset({"idempotency_key_in_use", "idempotency_key_reused"})
UNMATCHED_ROUTE = "unmatched"
SAMPLE_INTERVAL_S = 0.5  # loop lag resolution and staleness of sampled gauges
TIMEOUT_SLACK = 0.99  # a call cancelled this close to its deadline was cut by the timeout


def request_id_from(header: str | None) -> str:
    """The client's X-Request-Id if it is 1..200 printable ASCII characters, else a new one."""
    if header and len(header) <= REQUEST_ID_CHARS_MAX and all(" " <= c <= "~" for c in header):
        return header
    return secrets.token_hex(16)


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    status = 500  # an exception that escapes every inner middleware is the server's fault
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
    except web.HTTPException as exc:  # aiohttp's own exceptions are responses too
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    finally:
        elapsed = time.perf_counter() - started
        _record(request, response, status, elapsed, request_id)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


def _record(request: web.Request, response: web.StreamResponse | None, status: int,
            elapsed: float, request_id: str) -> None:
    route = route_of(request)
    method = metrics.method_label(request.method)
    metrics.HTTP_REQUESTS.labels(route, method, metrics.status_class(status)).inc()
    metrics.HTTP_REQUEST_DURATION.labels(route, method).observe(elapsed)
    if response is not None:
        _count_idempotency(response)
    access_log.info("request", extra={"kassa": {
        "request_id": request_id,
        "merchant_id": request.get(MERCHANT_ID),
        "method": method,
        "route": route,
        "status": status,
        "latency_s": round(elapsed, 6),
    }})


def _count_idempotency(response: web.StreamResponse) -> None:
    if response.headers.get(REPLAYED_HEADER) == "true":
        metrics.IDEMPOTENT_REPLAYS.inc()
        return
    if response.status not in (409, 422) or not isinstance(response, web.Response):
        return
    try:  # only these two statuses' small error bodies are ever read
        code = orjson.loads(response.body)["error"]["code"]
    except (TypeError, KeyError, orjson.JSONDecodeError):
        return
    if code in IDEMPOTENCY_CODES:
        metrics.IDEMPOTENCY_CONFLICTS.labels(code).inc()


async def metrics_endpoint(request: web.Request) -> web.Response:
    token = request.app[SETTINGS].metrics_token
    if token:  # its own credential, never a merchant's key; compared in constant time
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 token.encode()):
            raise ApiError(401, "authentication_error", "metrics_token_invalid",
                           "/metrics needs 'Authorization: Bearer <KASSA_METRICS_TOKEN>'")
    sample_gauges(request.app)
    body, content_type = metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


# --- resources ---------------------------------------------------------------------------


class InstrumentedConnector:
    """A processor connector that times every call and counts outcomes and failures.

    The request path bounds each call with ``asyncio.wait_for``; a call cancelled at
    (about) that deadline is counted as a timeout, any other cancellation (shutdown) is not
    an error of the processor's.
    """

    def __init__(self, inner: Any, timeout_s: float) -> None:
        self._inner = inner
        self._timeout_s = timeout_s
        self.name: str = inner.name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)

    async def _call(self, operation: str, call: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            outcome = await call
        except ProcessorError:
            self._failed(operation, started, "error")
            raise
        except asyncio.CancelledError:
            if time.perf_counter() - started >= self._timeout_s * TIMEOUT_SLACK:
                self._failed(operation, started, "timeout")
            raise
        except Exception:
            self._failed(operation, started, "error")
            raise
        metrics.PROCESSOR_DURATION.labels(self.name, operation).observe(
            time.perf_counter() - started)
        return outcome

    def _failed(self, operation: str, started: float, kind: str) -> None:
        metrics.PROCESSOR_DURATION.labels(self.name, operation).observe(
            time.perf_counter() - started)
        metrics.PROCESSOR_ERRORS.labels(self.name, operation, kind).inc()
        if operation == "authorize":
            metrics.authorization(self.name, kind)

    async def authorize(self, payment_id: str, number: str, amount: int, currency: str) -> Any:
        outcome = await self._call(
            "authorize", self._inner.authorize(payment_id, number, amount, currency))
        if outcome.result == APPROVED:
            metrics.authorization(self.name, "approved")
            metrics.amount_authorized(currency, amount)
        elif outcome.result == DECLINED:
            metrics.authorization(self.name, "declined", outcome.decline_code)
        return outcome

    async def capture(self, payment_id: str, amount: int) -> Any:
        outcome = await self._call("capture", self._inner.capture(payment_id, amount))
        metrics.CAPTURES.labels(self.name).inc()
        return outcome

    async def void(self, payment_id: str, amount: int) -> Any:
        outcome = await self._call("void", self._inner.void(payment_id, amount))
        metrics.VOIDS.labels(self.name).inc()
        return outcome

    async def refund(self, payment_id: str, refund_id: str, amount: int) -> Any:
        outcome = await self._call("refund", self._inner.refund(payment_id, refund_id, amount))
        metrics.REFUNDS.labels(self.name).inc()
        return outcome

    async def status(self, payment_id: str) -> Any:
        return await self._call("status", self._inner.status(payment_id))


class _TimedPool(asyncpg.pool.Pool):
    """asyncpg.Pool whose every acquire (``acquire``, ``fetch``, ``execute``...) is timed.

    asyncpg has no acquire hook and its Pool has ``__slots__``, so an existing pool is
    switched to this layout-identical subclass; all public paths go through ``_acquire``.
    """

    __slots__ = ()

    async def _acquire(self, timeout: float | None) -> Any:
        started = time.perf_counter()
        try:
            return await super()._acquire(timeout)
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

STUCK_PROCESSING_SQL = """
SELECT count(*) FROM payments
 WHERE status = 'processing' AND updated_at < now() - make_interval(secs => $1)
"""
LEDGER_CHECK_LOCK_ID = 0x6B61737362  # one worker at a time runs the periodic ledger check


async def refresh_stuck_payments(pool: asyncpg.Pool, older_than_s: int) -> int:
    """COUNT (on the partial index of 'processing' payments) into the stuck gauge."""
    stuck = await pool.fetchval(STUCK_PROCESSING_SQL, float(older_than_s))
    metrics.PAYMENTS_STUCK.set(stuck)
    return stuck


async def check_ledger(pool: asyncpg.Pool) -> bool | None:
    """The per-transaction and per-currency balance checks of ``books.verify``.

    Sets ``kassa_ledger_verify_ok`` and its timestamp. Returns None (gauges untouched)
    when another worker is running the check right now.
    """
    from gateway.books import verify_balances

    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                        readonly=True):
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", LEDGER_CHECK_LOCK_ID):
            return None
        problems = await verify_balances(conn)
    for problem in problems[:10]:
        log.error("ledger check: %s", problem)
    metrics.ledger_verified(not problems)
    return not problems
