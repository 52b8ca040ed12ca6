"""The aiohttp application: typed app keys, resources in cleanup_ctx, thin handlers."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import orjson
from aiohttp import web, web_protocol

import core_ext
from core_ext.errors import CoreError
from gateway import api, database, metrics, observability, recovery
from gateway.appkeys import CALLER, KEYS, LIMITER, MERCHANT_ID, POOL, SERVICE, SETTINGS
from gateway.cards import CardVault, load_master_key
from gateway.config import Settings
from gateway.connectors import SandboxConnector
from gateway.errors import ApiError, api_error, invalid_request, untrusted
from gateway.idempotency import IdempotencyStore
from gateway.merchants import KeyCache, LimitDefaults
from gateway.payments import PaymentService, batch_settings
from gateway.pipeline import Overloaded

log = logging.getLogger("kassa.http")

BODY_BYTES_MAX = 64 * 1024  # API.md: larger request bodies answer 413

# The database is down, restarting, refusing connections, or too slow: the request did not
# take effect (or its write-ahead record lets recovery settle it), so the client may retry.
# OperatorInterventionError covers admin/crash shutdown, "cannot connect now" while it
# starts, and a statement cancelled by statement_timeout.
DATABASE_UNAVAILABLE = (
    asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError,
    asyncpg.TooManyConnectionsError, asyncpg.InterfaceError, OSError, TimeoutError,
)

SANDBOX_POOL_CONNECTIONS_MAX = 4  # the sandbox processor's own books, apart from ours
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CoreNotCompiledError(RuntimeError):
    pass


def require_compiled_core(settings: Settings) -> None:
    """Production traffic is never served on the pure-Python core by accident."""
    if not core_ext.COMPILED and not settings.allow_pure_core:
        raise CoreNotCompiledError(
            f"refusing to serve: {core_ext.BUILD}. Reinstall with a C compiler "
            "(pip install .), or set KASSA_ALLOW_PURE_CORE=1 for development."
        )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into an API.md error body; nothing else reaches a client."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except CoreError as exc:
        return ApiError.from_core(exc).response()
    except Overloaded:
        return api_error(
            503, "gateway_overloaded", "the gateway is at capacity; retry with the same "
            "Idempotency-Key", headers={"Retry-After": "1"},
        ).response()
    except web.HTTPRequestEntityTooLarge:
        return invalid_request(
            "request_too_large", f"request body exceeds {BODY_BYTES_MAX} bytes", status=413
        ).response()
    except web.HTTPNotFound:
        return invalid_request(
            "resource_missing",
            f"unrecognized request URL ({request.method} {untrusted(request.path)})",
            status=404,
        ).response()
    except web.HTTPMethodNotAllowed as exc:
        error = invalid_request(
            "method_not_allowed",
            f"{request.method} is not allowed on {untrusted(request.path)}",
            status=405)
        error.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))  # RFC 9110 15.5.6
        return error.response()
    except web.HTTPException as exc:
        return invalid_request("request_invalid", exc.reason, status=exc.status).response()
    except DATABASE_UNAVAILABLE as exc:
        log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
        return api_error(
            503, "database_unavailable", "the database is unavailable; retry with the same "
            "Idempotency-Key", headers={"Retry-After": "1"},
        ).response()
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path,
                      extra={"kassa": {"request_id": request.get(observability.REQUEST_ID)}})
        return api_error(500, "internal_error", "an internal error occurred").response()


def _protocol_error_as_api_error(self: web_protocol.RequestHandler, request: web.BaseRequest,
                                 status: int = 500, exc: BaseException | None = None,
                                 message: str | None = None) -> web.StreamResponse:
    """aiohttp answers a request it cannot parse (bad header bytes, a header over 8 KiB,
    a bad Content-Length) itself, before any middleware, in plain text that quotes the
    offending bytes. Answer API.md's JSON error instead, so no client bytes (a card number,
    say) are echoed back and every error has one shape."""
    if request.writer.output_size > 0:  # as aiohttp: an answer already began, none can follow
        raise ConnectionError("response already started; cannot send an error answer")
    if status >= 500:
        self.log_exception("error handling request", exc_info=exc)
        error = api_error(500, "internal_error", "an internal error occurred")
    else:
        # A client's malformed bytes are not our error: one line, no traceback to flood logs.
        log.info("malformed HTTP request answered %d: %s", status, type(exc).__name__)
        error = invalid_request("request_invalid", "the HTTP request is malformed and "
                                "could not be parsed", status=status)
    response = error.response()
    response.force_close()  # as aiohttp does: the connection's framing cannot be trusted
    return response


def install_protocol_error_answers() -> None:
    """Idempotent; aiohttp builds its RequestHandler itself, so the method is replaced."""
    web_protocol.RequestHandler.handle_error = _protocol_error_as_api_error  # type: ignore


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """/v1 needs a merchant's key, and each key is held to its rate limit (429)."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    secret = _bearer(request)
    if secret is None:
        raise ApiError(401, "authentication_error", "api_key_missing",
                       "no API key provided: use 'Authorization: Bearer <secret key>'")
    caller = await request.app[KEYS].authenticate(request.app[POOL], secret)
    if caller is None:
        raise ApiError(401, "authentication_error", "api_key_invalid",
                       "invalid or revoked API key")
    wait_s = request.app[LIMITER].take(caller.key_id, caller.rate_limit_per_s,
                                       caller.rate_limit_burst, time.monotonic())
    if wait_s > 0:
        metrics.RATE_LIMITED.inc()
        retry_after_s = max(1, math.ceil(wait_s))
        raise ApiError(429, "rate_limit_error", "rate_limited",
                       f"too many requests with this API key; retry in {retry_after_s} s",
                       headers={"Retry-After": str(retry_after_s)})
    request[MERCHANT_ID] = caller.merchant_id
    request[CALLER] = caller
    return await handler(request)


def json_response(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        async with request.app[POOL].acquire(timeout=1.0) as conn:
            version = await conn.fetchval(
                "SELECT coalesce(max(version), 0) FROM schema_migrations", timeout=1.0
            )
    except Exception as exc:
        log.warning("readiness check failed: %s: %s", type(exc).__name__, exc)
        return json_response({"status": "unavailable", "reason": "database unreachable"}, 503)
    if version != database.LATEST_VERSION:
        return json_response(
            {"status": "unavailable", "reason": "migrations not current",
             "schema_version": version, "expected": database.LATEST_VERSION}, 503,
        )
    return json_response({"status": "ready", "schema_version": version, "core": core_ext.BUILD})


async def openapi_document(request: web.Request) -> web.Response:
    from gateway.openapi import DOCUMENT_BYTES

    return web.Response(body=DOCUMENT_BYTES, content_type="application/json")


def _services_ctx(dsn: str) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        vault = CardVault(load_master_key(settings.master_key, settings.data_dir))
        pool = await database.create_pool(settings, dsn)
        # The sandbox stands for another company's system: its own connections, so a
        # processor call made while we hold a connection can never starve our pool.
        # Its books need not wait for our disk: they simulate another company's system,
        # and an asynchronous commit survives any crash of Kassa (only PostgreSQL's own
        # crash could lose the last few ms, which recovery then reads as "never sent").
        sandbox_pool = await database.create_pool(
            settings.replace(db_pool_min=1, db_pool_max=SANDBOX_POOL_CONNECTIONS_MAX), dsn,
            application_name="kassa-sandbox", synchronous_commit=False)
        connector = observability.InstrumentedConnector(
            SandboxConnector(sandbox_pool, settings.sandbox_latency_ms,
                             batch_settings(settings)), settings.processor_timeout_ms / 1000)
        observability.instrument_pool(pool)
        idempotency = IdempotencyStore(settings.idempotency_cache_entries,
                                       settings.idempotency_retention_s)
        app[POOL] = pool
        app[SERVICE] = PaymentService(pool, connector, vault, idempotency, settings)
        background = asyncio.create_task(
            recovery.run_forever(pool, app[SERVICE], connector, settings))
        sampler = asyncio.create_task(observability.sample_forever(app))
        yield
        background.cancel()
        sampler.cancel()
        await asyncio.gather(background, sampler, return_exceptions=True)
        await app[SERVICE].close()
        await connector.close()
        await pool.close()
        await sandbox_pool.close()

    return ctx


def create_app(settings: Settings, dsn: str) -> web.Application:
    require_compiled_core(settings)
    metrics.install()
    install_protocol_error_answers()
    app = web.Application(
        client_max_size=BODY_BYTES_MAX,
        middlewares=[observability.middleware, error_middleware, auth_middleware],
    )
    app[SETTINGS] = settings
    app[KEYS] = KeyCache(LimitDefaults.from_settings(settings),
                         settings.db_acquire_timeout_ms / 1000)
    app[LIMITER] = core_ext.risk.RateLimiter()
    app.cleanup_ctx.append(_services_ctx(dsn))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi_document)
    app.router.add_get("/metrics", observability.metrics_endpoint)
    api.setup(app)
    return app
