"""Every route: the /v1 API of API.md and the operations endpoints. Handlers translate
HTTP to service calls, nothing more."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from datetime import date

import orjson
from aiohttp import web

import core_ext
from gateway import metrics
from gateway.http.answers import (
    JSON,
    KEY_CHARS_MAX,
    KEY_HEADER,
    ApiError,
    api_error,
    invalid_request,
    json_response,
)
from gateway.http.appkeys import (
    BILLING,
    CALLER,
    CHECKOUT,
    MERCHANT_ID,
    POOL,
    SERVICE,
    SETTINGS,
    WEBHOOKS,
)
from gateway.observability import sample_gauges
from gateway.store import database

log = logging.getLogger("kassa.http")

READINESS_QUERY_TIMEOUT_S = 1.0  # a database slower than this is not ready for traffic
READINESS_RETRY_AFTER_S = 5
ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


JSON_CHARSETS = (None, "utf-8")  # RFC 8259: JSON exchanged between systems is UTF-8


def _check_json_media_type(request: web.Request) -> None:
    """A body that is not declared JSON is refused before anything runs (API.md: 415),
    so a form post or a text/plain body cannot be read as a payment by accident. No body
    needs no type: capture and void are often posted bare."""
    if not request.body_exists:
        return
    charset = request.charset
    if request.content_type != JSON or (charset and charset.lower()) not in JSON_CHARSETS:
        raise invalid_request(
            "unsupported_media_type",
            "request bodies must be JSON: send 'Content-Type: application/json'",
            status=415,
        )


async def read_body(request: web.Request) -> bytes:
    """The whole request body, within the body-read timeout (408 past it)."""
    if request.content.is_eof():  # the body came with the headers, as a small one does
        return await request.read()
    timeout_s = request.app[SETTINGS].body_read_timeout_ms / 1000
    try:
        async with asyncio.timeout(timeout_s):  # a client stalling mid-body holds nothing
            return await request.read()
    except TimeoutError:
        raise invalid_request(
            "request_timeout",
            f"the request body did not arrive within {timeout_s:g} s",
            status=408,
        ) from None


async def _json_body(request: web.Request, required: bool = True) -> object:
    _check_json_media_type(request)
    raw = await read_body(request)
    if not raw:  # no bytes is no body; whitespace is not JSON (invalid_json below)
        if required:
            raise invalid_request("invalid_json", "request body must be a JSON object")
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # orjson's own bound (1024)
            raise core_ext.validation.json_too_deep() from None
        raise invalid_request("invalid_json", "request body is not valid JSON") from None
    core_ext.validation.check_json_depth(body)
    if body is None:  # JSON null is a value, not "no body": it is not an object either
        raise invalid_request("parameter_invalid", "request body must be a JSON object")
    return body


def key_from(request: web.Request) -> str | None:
    """The request's Idempotency-Key, or None; a malformed one is a 400."""
    key = request.headers.get(KEY_HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= KEY_CHARS_MAX or not all(" " <= ch <= "~" for ch in key):
        raise invalid_request(
            "parameter_invalid",
            f"{KEY_HEADER} must be 1 to {KEY_CHARS_MAX} printable ASCII characters",
            param=KEY_HEADER,
        )
    return key


async def create_payment(request: web.Request) -> web.Response:
    body = await _json_body(request)
    answer = await request.app[SERVICE].authorize(
        request[MERCHANT_ID], body, key_from(request), request[CALLER].risk
    )
    return answer.response()


async def confirm_payment(request: web.Request) -> web.Response:
    body = await _json_body(request, required=False)
    answer = await request.app[SERVICE].confirm(
        request[MERCHANT_ID],
        request.match_info["id"],
        body,
        key_from(request),
        request[CALLER].risk,
    )
    return answer.response()


async def cancel_payment(request: web.Request) -> web.Response:
    body = await _json_body(request, required=False)
    answer = await request.app[SERVICE].cancel(
        request[MERCHANT_ID], request.match_info["id"], body, key_from(request)
    )
    return answer.response()


async def capture_payment(request: web.Request) -> web.Response:
    body = await _json_body(request, required=False)
    answer = await request.app[SERVICE].capture(
        request[MERCHANT_ID], request.match_info["id"], body, key_from(request)
    )
    return answer.response()


async def void_payment(request: web.Request) -> web.Response:
    body = await _json_body(request, required=False)
    answer = await request.app[SERVICE].void(
        request[MERCHANT_ID], request.match_info["id"], body, key_from(request)
    )
    return answer.response()


async def refund_payment(request: web.Request) -> web.Response:
    body = await _json_body(request, required=False)
    answer = await request.app[SERVICE].refund(
        request[MERCHANT_ID], request.match_info["id"], body, key_from(request)
    )
    return answer.response()


async def get_payment(request: web.Request) -> web.Response:
    return json_response(
        await request.app[SERVICE].get_payment(request[MERCHANT_ID], request.match_info["id"])
    )


async def list_payments(request: web.Request) -> web.Response:
    return json_response(
        await request.app[SERVICE].list_payments(request[MERCHANT_ID], request.query)
    )


async def get_refund(request: web.Request) -> web.Response:
    return json_response(
        await request.app[SERVICE].get_refund(request[MERCHANT_ID], request.match_info["id"])
    )


async def create_token(request: web.Request) -> web.Response:
    body = await _json_body(request)
    answer = await request.app[SERVICE].create_token(request[MERCHANT_ID], body, key_from(request))
    return answer.response()


async def create_webhook_endpoint(request: web.Request) -> web.Response:
    body = await _json_body(request)
    answer = await request.app[WEBHOOKS].create_endpoint(
        request[MERCHANT_ID], body, key_from(request)
    )
    return answer.response()


async def list_webhook_endpoints(request: web.Request) -> web.Response:
    return json_response(
        await request.app[WEBHOOKS].list_endpoints(request[MERCHANT_ID], request.query)
    )


async def get_webhook_endpoint(request: web.Request) -> web.Response:
    return json_response(
        await request.app[WEBHOOKS].get_endpoint(request[MERCHANT_ID], request.match_info["id"])
    )


async def update_webhook_endpoint(request: web.Request) -> web.Response:
    body = await _json_body(request, required=False)
    answer = await request.app[WEBHOOKS].update_endpoint(
        request[MERCHANT_ID], request.match_info["id"], body, key_from(request)
    )
    return answer.response()


async def delete_webhook_endpoint(request: web.Request) -> web.Response:
    return json_response(
        await request.app[WEBHOOKS].delete_endpoint(request[MERCHANT_ID], request.match_info["id"])
    )


def _origin(request: web.Request) -> str:
    """The origin this request came to: checkout URLs use it without KASSA_PUBLIC_URL."""
    return f"{request.scheme}://{request.host}"


async def create_checkout_session(request: web.Request) -> web.Response:
    body = await _json_body(request)
    answer = await request.app[CHECKOUT].create_session(
        request[MERCHANT_ID], body, key_from(request), _origin(request)
    )
    return answer.response()


async def get_checkout_session(request: web.Request) -> web.Response:
    return json_response(
        await request.app[CHECKOUT].get_session(request[MERCHANT_ID], request.match_info["id"])
    )


async def expire_checkout_session(request: web.Request) -> web.Response:
    body = await _json_body(request, required=False)
    answer = await request.app[CHECKOUT].expire_session(
        request[MERCHANT_ID], request.match_info["id"], body, key_from(request)
    )
    return answer.response()


async def create_payment_link(request: web.Request) -> web.Response:
    body = await _json_body(request)
    answer = await request.app[CHECKOUT].create_link(
        request[MERCHANT_ID], body, key_from(request), _origin(request)
    )
    return answer.response()


async def get_payment_link(request: web.Request) -> web.Response:
    return json_response(
        await request.app[CHECKOUT].get_link(request[MERCHANT_ID], request.match_info["id"])
    )


async def update_payment_link(request: web.Request) -> web.Response:
    body = await _json_body(request, required=False)
    answer = await request.app[CHECKOUT].update_link(
        request[MERCHANT_ID], request.match_info["id"], body, key_from(request)
    )
    return answer.response()


def _raw_json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=JSON)


async def list_events(request: web.Request) -> web.Response:
    return _raw_json(await request.app[WEBHOOKS].list_events(request[MERCHANT_ID], request.query))


async def get_event(request: web.Request) -> web.Response:
    return _raw_json(
        await request.app[WEBHOOKS].get_event(request[MERCHANT_ID], request.match_info["id"])
    )


async def list_event_deliveries(request: web.Request) -> web.Response:
    return json_response(
        await request.app[WEBHOOKS].list_attempts(
            request[MERCHANT_ID], request.match_info["id"], request.query
        )
    )


async def retry_event(request: web.Request) -> web.Response:
    body = await _json_body(request, required=False)
    answer = await request.app[WEBHOOKS].retry_event(
        request[MERCHANT_ID], request.match_info["id"], body, key_from(request)
    )
    return answer.response()


# --- customers, saved cards and recurring billing -----------------------------------------


async def create_customer(request: web.Request) -> web.Response:
    body = await _json_body(request, required=False)
    answer = await request.app[BILLING].create_customer(
        request[MERCHANT_ID], body, key_from(request)
    )
    return answer.response()


async def list_customers(request: web.Request) -> web.Response:
    return json_response(
        await request.app[BILLING].list_customers(request[MERCHANT_ID], request.query)
    )


async def get_customer(request: web.Request) -> web.Response:
    return json_response(
        await request.app[BILLING].get_customer(request[MERCHANT_ID], request.match_info["id"])
    )


async def update_customer(request: web.Request) -> web.Response:
    body = await _json_body(request, required=False)
    answer = await request.app[BILLING].update_customer(
        request[MERCHANT_ID], request.match_info["id"], body, key_from(request)
    )
    return answer.response()


async def delete_customer(request: web.Request) -> web.Response:
    return json_response(
        await request.app[BILLING].delete_customer(request[MERCHANT_ID], request.match_info["id"])
    )


async def attach_payment_method(request: web.Request) -> web.Response:
    body = await _json_body(request)
    answer = await request.app[BILLING].attach_payment_method(
        request[MERCHANT_ID], request.match_info["id"], body, key_from(request)
    )
    return answer.response()


async def list_payment_methods(request: web.Request) -> web.Response:
    return json_response(
        await request.app[BILLING].list_payment_methods(
            request[MERCHANT_ID], request.match_info["id"], request.query
        )
    )


async def detach_payment_method(request: web.Request) -> web.Response:
    return json_response(
        await request.app[BILLING].detach_payment_method(
            request[MERCHANT_ID], request.match_info["id"], request.match_info["token"]
        )
    )


async def create_price(request: web.Request) -> web.Response:
    body = await _json_body(request)
    answer = await request.app[BILLING].create_price(request[MERCHANT_ID], body, key_from(request))
    return answer.response()


async def get_price(request: web.Request) -> web.Response:
    return json_response(
        await request.app[BILLING].get_price(request[MERCHANT_ID], request.match_info["id"])
    )


async def create_subscription(request: web.Request) -> web.Response:
    body = await _json_body(request)
    answer = await request.app[BILLING].create_subscription(
        request[MERCHANT_ID], body, key_from(request)
    )
    return answer.response()


async def list_subscriptions(request: web.Request) -> web.Response:
    return json_response(
        await request.app[BILLING].list_subscriptions(request[MERCHANT_ID], request.query)
    )


async def get_subscription(request: web.Request) -> web.Response:
    return json_response(
        await request.app[BILLING].get_subscription(request[MERCHANT_ID], request.match_info["id"])
    )


async def cancel_subscription(request: web.Request) -> web.Response:
    body = await _json_body(request, required=False)
    answer = await request.app[BILLING].cancel_subscription(
        request[MERCHANT_ID], request.match_info["id"], body, key_from(request)
    )
    return answer.response()


async def list_invoices(request: web.Request) -> web.Response:
    return json_response(
        await request.app[BILLING].list_invoices(request[MERCHANT_ID], request.query)
    )


async def get_invoice(request: web.Request) -> web.Response:
    return json_response(
        await request.app[BILLING].get_invoice(request[MERCHANT_ID], request.match_info["id"])
    )


async def create_test_clock(request: web.Request) -> web.Response:
    body = await _json_body(request)
    answer = await request.app[BILLING].create_test_clock(
        request[MERCHANT_ID], body, key_from(request)
    )
    return answer.response()


async def get_test_clock(request: web.Request) -> web.Response:
    return json_response(
        await request.app[BILLING].get_test_clock(request[MERCHANT_ID], request.match_info["id"])
    )


async def advance_test_clock(request: web.Request) -> web.Response:
    body = await _json_body(request)
    answer = await request.app[BILLING].advance_test_clock(
        request[MERCHANT_ID], request.match_info["id"], body, key_from(request)
    )
    return answer.response()


async def get_balance(request: web.Request) -> web.Response:
    return json_response(await request.app[SERVICE].balance(request[MERCHANT_ID]))


async def get_settlement_report(request: web.Request) -> web.Response:
    from gateway.books import settlement, settlement_csv  # the reports' code, on first use

    unknown = sorted(set(request.query) - {"date", "format"})
    if unknown:
        raise invalid_request("parameter_unknown", f"unknown parameter: {unknown[0]}", unknown[0])
    text = request.query.get("date", "")
    try:
        if not ISO_DAY.fullmatch(text):  # fromisoformat also takes 20240101 and 2024-W01-1
            raise ValueError(text)
        day = date.fromisoformat(text)
    except ValueError:
        raise invalid_request(
            "parameter_invalid", "date must be a day as YYYY-MM-DD", "date"
        ) from None
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise invalid_request("parameter_invalid", "format must be json or csv", "format")
    timeout_s = request.app[SETTINGS].db_acquire_timeout_ms / 1000
    async with request.app[POOL].acquire(timeout=timeout_s) as conn:
        lines = await settlement(conn, day, request[MERCHANT_ID])
    if fmt == "csv":
        return web.Response(text=settlement_csv(lines), content_type="text/csv")
    return json_response({"object": "settlement_report", "date": day.isoformat(), "lines": lines})


# --- operations ----------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        async with request.app[POOL].acquire(timeout=READINESS_QUERY_TIMEOUT_S) as conn:
            version = await conn.fetchval(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                timeout=READINESS_QUERY_TIMEOUT_S,
            )
    except Exception as exc:
        log.warning("readiness check failed: %s: %s", type(exc).__name__, exc)
        return _not_ready("database_unavailable", "the database is unreachable")
    expected = database.LATEST_VERSION
    if version < expected:
        return _not_ready(
            "migrations_pending",
            f"the database schema is at version "
            f"{version}; this Kassa needs {expected}: run 'kassa migrate'",
        )
    if version > expected:
        return _not_ready(
            "schema_too_new",
            f"the database schema is at version {version}, "
            f"newer than this Kassa's {expected}: deploy the newer Kassa",
        )
    return json_response({"status": "ready", "schema_version": version, "core": core_ext.BUILD})


def _not_ready(code: str, message: str) -> web.Response:
    """Not ready is an error like any other (API.md's shape), and says when to ask again."""
    return api_error(
        503, code, message, headers={"Retry-After": str(READINESS_RETRY_AFTER_S)}
    ).response()


async def openapi_document(request: web.Request) -> web.Response:
    from gateway.http.openapi import DOCUMENT_BYTES

    return web.Response(body=DOCUMENT_BYTES, content_type="application/json")


async def metrics_endpoint(request: web.Request) -> web.Response:
    token = request.app[SETTINGS].metrics_token
    if token:  # its own credential, never a merchant's key; compared in constant time
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise ApiError(
                401,
                "authentication_error",
                "metrics_token_invalid",
                "/metrics needs 'Authorization: Bearer <KASSA_METRICS_TOKEN>'",
            )
    sample_gauges(request.app)
    body, content_type = metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def setup(app: web.Application) -> None:
    """Register every route on ``app``."""
    router = app.router
    router.add_get("/healthz", healthz)
    router.add_get("/readyz", readyz)
    router.add_get("/openapi.json", openapi_document)
    router.add_get("/metrics", metrics_endpoint)
    router.add_post("/v1/payments", create_payment)
    router.add_get("/v1/payments", list_payments)
    router.add_get("/v1/payments/{id}", get_payment)
    router.add_post("/v1/payments/{id}/confirm", confirm_payment)
    router.add_post("/v1/payments/{id}/cancel", cancel_payment)
    router.add_post("/v1/payments/{id}/capture", capture_payment)
    router.add_post("/v1/payments/{id}/void", void_payment)
    router.add_post("/v1/payments/{id}/refunds", refund_payment)
    router.add_get("/v1/refunds/{id}", get_refund)
    router.add_post("/v1/tokens", create_token)
    router.add_get("/v1/balance", get_balance)
    router.add_post("/v1/webhook_endpoints", create_webhook_endpoint)
    router.add_get("/v1/webhook_endpoints", list_webhook_endpoints)
    router.add_get("/v1/webhook_endpoints/{id}", get_webhook_endpoint)
    router.add_post("/v1/webhook_endpoints/{id}", update_webhook_endpoint)
    router.add_delete("/v1/webhook_endpoints/{id}", delete_webhook_endpoint)
    router.add_get("/v1/events", list_events)
    router.add_get("/v1/events/{id}", get_event)
    router.add_get("/v1/events/{id}/deliveries", list_event_deliveries)
    router.add_post("/v1/events/{id}/retry", retry_event)
    router.add_get("/v1/reports/settlement", get_settlement_report)
    router.add_post("/v1/checkout/sessions", create_checkout_session)
    router.add_get("/v1/checkout/sessions/{id}", get_checkout_session)
    router.add_post("/v1/checkout/sessions/{id}/expire", expire_checkout_session)
    router.add_post("/v1/payment_links", create_payment_link)
    router.add_get("/v1/payment_links/{id}", get_payment_link)
    router.add_post("/v1/payment_links/{id}", update_payment_link)
    router.add_post("/v1/customers", create_customer)
    router.add_get("/v1/customers", list_customers)
    router.add_get("/v1/customers/{id}", get_customer)
    router.add_post("/v1/customers/{id}", update_customer)
    router.add_delete("/v1/customers/{id}", delete_customer)
    router.add_post("/v1/customers/{id}/payment_methods", attach_payment_method)
    router.add_get("/v1/customers/{id}/payment_methods", list_payment_methods)
    router.add_delete("/v1/customers/{id}/payment_methods/{token}", detach_payment_method)
    router.add_post("/v1/prices", create_price)
    router.add_get("/v1/prices/{id}", get_price)
    router.add_post("/v1/subscriptions", create_subscription)
    router.add_get("/v1/subscriptions", list_subscriptions)
    router.add_get("/v1/subscriptions/{id}", get_subscription)
    router.add_post("/v1/subscriptions/{id}/cancel", cancel_subscription)
    router.add_get("/v1/invoices", list_invoices)
    router.add_get("/v1/invoices/{id}", get_invoice)
    router.add_post("/v1/test_clocks", create_test_clock)
    router.add_get("/v1/test_clocks/{id}", get_test_clock)
    router.add_post("/v1/test_clocks/{id}/advance", advance_test_clock)
