"""The middleware every request passes, outermost first:

1. ``observability``: request id, RED metrics, idempotency counts, one JSON access line;
2. ``errors``: every failure becomes an API.md error body (Stripe's under /stripe/);
   nothing else reaches a client;
3. ``auth``: /v1 and /stripe/v1 need a merchant's key, and each key is held to its rate
   limit (429).

Also the answer to HTTP that aiohttp cannot parse, which no middleware sees.

The access line carries the request id, merchant id, method, route template, status and
latency: never a path (an id in a URL is fine, a card number pasted into one is not), a
query string, a header value other than the request id, or anything from a body.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable

import asyncpg
import orjson
from aiohttp import hdrs, web, web_protocol

from core_ext.errors import CoreError
from gateway import metrics
from gateway.http.answers import (
    BODY_BYTES_MAX,
    REPLAYED_HEADER,
    ApiError,
    api_error,
    invalid_request,
    untrusted,
)
from gateway.http.appkeys import CALLER, KEYS, LIMITER, MERCHANT_ID, POOL
from gateway.ids import whole
from gateway.store.pipeline import Overloaded
from gateway.stripe.errors import stripe_error

log = logging.getLogger("kassa.http")
access_log = logging.getLogger("kassa.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_CHARS_MAX = 200  # a longer or unprintable client id is replaced, never truncated
REQUEST_ID_BYTES = 16  # a generated id: 32 hex characters
REQUEST_ID = web.RequestKey("request_id", str)
# The Stripe-compatible tree (gateway/stripe/routes.py): its answers carry the request id
# also as Stripe's ``Request-Id`` and its errors in Stripe's shape.
STRIPE_PREFIX = "/stripe/"
STRIPE_REQUEST_ID_HEADER = "Request-Id"
AUTHENTICATED_PREFIXES = ("/v1/", "/stripe/v1/")
IDEMPOTENCY_CODES = frozenset({"idempotency_key_in_use", "idempotency_key_reused"})
# The answers that may be an idempotency refusal: native 409 and 422, and the Stripe
# tree's 400 idempotency_error (a key reused; the SDK raises IdempotencyError from a 400).
IDEMPOTENCY_STATUSES = (400, 409, 422)
STRIPE_IDEMPOTENCY_TYPE = "idempotency_error"
UNMATCHED_ROUTE = "unmatched"

# The database is down, restarting, refusing connections, or too slow: the request did not
# take effect (or its write-ahead record lets recovery settle it), so the client may retry.
# OperatorInterventionError covers admin/crash shutdown, "cannot connect now" while it
# starts, and a statement cancelled by statement_timeout.
DATABASE_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


# --- 1. observability ---------------------------------------------------------------


def request_id_from(header: str | None) -> str:
    """The client's X-Request-Id if it is 1..200 printable ASCII characters and holds no
    card number (an id is echoed whole or not at all), else a new one."""
    if (
        header
        and len(header) <= REQUEST_ID_CHARS_MAX
        and all(" " <= c <= "~" for c in header)
        and whole(header)
    ):
        return header
    while True:
        generated = secrets.token_hex(REQUEST_ID_BYTES)
        if whole(generated):  # never one the log scrubber would mangle
            return generated


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


@web.middleware
async def observability_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
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
        if request.path.startswith(STRIPE_PREFIX):
            exc.headers[STRIPE_REQUEST_ID_HEADER] = request_id
        raise
    finally:
        elapsed = time.perf_counter() - started
        _record(request, response, status, elapsed, request_id)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
        if request.path.startswith(STRIPE_PREFIX):
            response.headers[STRIPE_REQUEST_ID_HEADER] = request_id  # where the SDK reads it
    return response


def _record(
    request: web.Request,
    response: web.StreamResponse | None,
    status: int,
    elapsed: float,
    request_id: str,
) -> None:
    route = route_of(request)
    method = metrics.method_label(request.method)
    metrics.http_request(route, method, status, elapsed)
    if response is not None:
        _count_idempotency(response)
    access_log.info(
        "request",
        extra={
            "kassa": {
                "request_id": request_id,
                "merchant_id": request.get(MERCHANT_ID),
                "method": method,
                "route": route,
                "status": status,
                "latency_s": round(elapsed, 6),
            }
        },
    )


def _count_idempotency(response: web.StreamResponse) -> None:
    if response.headers.get(REPLAYED_HEADER) == "true":
        metrics.IDEMPOTENT_REPLAYS.inc()
        return
    status = response.status
    if status not in IDEMPOTENCY_STATUSES or not isinstance(response, web.Response):
        return
    try:  # only these statuses' small error bodies are ever read
        error = orjson.loads(response.body)["error"]
        code = error.get("code")
        if status == 400 and error["type"] == STRIPE_IDEMPOTENCY_TYPE:
            code = "idempotency_key_reused"  # the Stripe tree's 400 has no code
    except (TypeError, KeyError, AttributeError, orjson.JSONDecodeError):
        return
    if code in IDEMPOTENCY_CODES:
        metrics.IDEMPOTENCY_CONFLICTS.labels(code).inc()


# --- 2. errors and 3. auth -----------------------------------------------------------


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into an API.md error body (under /stripe/, Stripe's); nothing
    else reaches a client."""
    try:
        return await handler(request)
    except Exception as exc:  # every failure is answered (_error_of)
        return _answer(request, _error_of(request, exc))


def _answer(request: web.Request, error: ApiError) -> web.Response:
    if request.path.startswith(STRIPE_PREFIX):
        return stripe_error(error).response()
    return error.response()


def _error_of(request: web.Request, exc: Exception) -> ApiError:
    """The API.md error for a failure that escaped a handler."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, CoreError):
        return ApiError.from_core(exc)
    if isinstance(exc, Overloaded):
        return api_error(
            503,
            "gateway_overloaded",
            "the gateway is at capacity; retry with the same Idempotency-Key",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return invalid_request(
            "request_too_large", f"request body exceeds {BODY_BYTES_MAX} bytes", status=413
        )
    if isinstance(exc, web.HTTPNotFound):
        return invalid_request(
            "resource_missing",
            f"unrecognized request URL ({request.method} {untrusted(request.path)})",
            status=404,
        )
    if isinstance(exc, web.HTTPMethodNotAllowed):
        error = invalid_request(
            "method_not_allowed",
            f"{request.method} is not allowed on {untrusted(request.path)}",
            status=405,
        )
        error.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))  # RFC 9110 15.5.6
        return error
    if isinstance(exc, web.HTTPException):
        return invalid_request("request_invalid", exc.reason, status=exc.status)
    if isinstance(exc, DATABASE_UNAVAILABLE):
        log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
        return api_error(
            503,
            "database_unavailable",
            "the database is unavailable; retry with the same Idempotency-Key",
            headers={"Retry-After": "1"},
        )
    log.exception(
        "unhandled error on %s %s",
        request.method,
        request.path,
        exc_info=exc,
        extra={"kassa": {"request_id": request.get(REQUEST_ID)}},
    )
    return api_error(500, "internal_error", "an internal error occurred")


def _protocol_error_as_api_error(
    self: web_protocol.RequestHandler,
    request: web.BaseRequest,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
) -> web.StreamResponse:
    """aiohttp answers a request it cannot parse (bad header bytes, a header over 8 KiB,
    a bad Content-Length) itself, before any middleware, in plain text that quotes the
    offending bytes. Answer API.md's JSON error instead, so no client bytes (a card number,
    say) are echoed back and every error has one shape."""
    if request.writer.output_size > 0:  # as aiohttp: an answer already began, none can follow
        raise ConnectionError("response already started; cannot send an error answer")
    # Every answer carries a request id; the client's could not be read, so a new one.
    request_id = request_id_from(None)
    if status >= 500:
        self.log_exception("error handling request", exc_info=exc)
        error = api_error(500, "internal_error", "an internal error occurred")
    else:
        # A client's malformed bytes are not our error: one line, no traceback to flood logs.
        log.info(
            "malformed HTTP request answered %d: %s",
            status,
            type(exc).__name__,
            extra={"kassa": {"request_id": request_id}},
        )
        error = invalid_request(
            "request_invalid",
            "the HTTP request is malformed and could not be parsed",
            status=status,
        )
    response = _AnonymousResponse(
        status=error.status,
        body=error.body(),
        content_type="application/json",
        headers=error.headers,
    )
    response.headers[REQUEST_ID_HEADER] = request_id
    response.force_close()  # as aiohttp does: the connection's framing cannot be trusted
    return response


async def drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp's default Server header names its and Python's versions, which tells a
    scanner which known vulnerabilities to try: no answer carries one (on_response_prepare
    runs after aiohttp adds it, before the headers are written)."""
    response.headers.popall(hdrs.SERVER, None)


class _AnonymousResponse(web.Response):
    """An answer to unparseable HTTP: no route matched, so on_response_prepare does not run
    for it; drop the Server header here instead (tests/test_ops.py checks both paths)."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall(hdrs.SERVER, None)


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
    """/v1 and /stripe/v1 need a merchant's key, and each key is held to its rate limit
    (429). The Stripe SDKs send the key as ``Authorization: Bearer``, as Kassa's own do."""
    if not request.path.startswith(AUTHENTICATED_PREFIXES):
        return await handler(request)
    secret = _bearer(request)
    if secret is None:
        raise ApiError(
            401,
            "authentication_error",
            "api_key_missing",
            "no API key provided: use 'Authorization: Bearer <secret key>'",
        )
    caller = await request.app[KEYS].authenticate(request.app[POOL], secret)
    if caller is None:
        raise ApiError(401, "authentication_error", "api_key_invalid", "invalid or revoked API key")
    wait_s = request.app[LIMITER].take(
        caller.key_id, caller.rate_limit_per_s, caller.rate_limit_burst, time.monotonic()
    )
    if wait_s > 0:
        metrics.RATE_LIMITED.inc()
        retry_after_s = max(1, math.ceil(wait_s))
        raise ApiError(
            429,
            "rate_limit_error",
            "rate_limited",
            f"too many requests with this API key; retry in {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)},
        )
    request[MERCHANT_ID] = caller.merchant_id
    request[CALLER] = caller
    return await handler(request)
