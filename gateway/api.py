"""The /v1 routes of API.md. Handlers translate HTTP to service calls, nothing more."""

from __future__ import annotations

import asyncio
import re
from datetime import date

import orjson
from aiohttp import web

import core_ext
from gateway.appkeys import CALLER, MERCHANT_ID, POOL, SERVICE, SETTINGS
from gateway.errors import invalid_request
from gateway.idempotency import key_from

ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


async def _json_body(request: web.Request, required: bool = True) -> object:
    timeout_s = request.app[SETTINGS].body_read_timeout_ms / 1000
    try:
        async with asyncio.timeout(timeout_s):  # a client that stalls mid-body holds nothing
            raw = await request.read()
    except TimeoutError:
        raise invalid_request("request_timeout", f"the request body did not arrive within "
                              f"{timeout_s:g} s", status=408) from None
    if not raw.strip():
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


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


async def create_payment(request: web.Request) -> web.Response:
    body = await _json_body(request)
    answer = await request.app[SERVICE].authorize(request[MERCHANT_ID], body, key_from(request),
                                                  request[CALLER].risk)
    return answer.response()


async def capture_payment(request: web.Request) -> web.Response:
    body = await _json_body(request, required=False)
    answer = await request.app[SERVICE].capture(
        request[MERCHANT_ID], request.match_info["id"], body, key_from(request))
    return answer.response()


async def void_payment(request: web.Request) -> web.Response:
    body = await _json_body(request, required=False)
    answer = await request.app[SERVICE].void(
        request[MERCHANT_ID], request.match_info["id"], body, key_from(request))
    return answer.response()


async def refund_payment(request: web.Request) -> web.Response:
    body = await _json_body(request, required=False)
    answer = await request.app[SERVICE].refund(
        request[MERCHANT_ID], request.match_info["id"], body, key_from(request))
    return answer.response()


async def get_payment(request: web.Request) -> web.Response:
    return _json(await request.app[SERVICE].get_payment(
        request[MERCHANT_ID], request.match_info["id"]))


async def list_payments(request: web.Request) -> web.Response:
    return _json(await request.app[SERVICE].list_payments(request[MERCHANT_ID], request.query))


async def get_refund(request: web.Request) -> web.Response:
    return _json(await request.app[SERVICE].get_refund(
        request[MERCHANT_ID], request.match_info["id"]))


async def create_token(request: web.Request) -> web.Response:
    body = await _json_body(request)
    answer = await request.app[SERVICE].create_token(request[MERCHANT_ID], body, key_from(request))
    return answer.response()


async def get_balance(request: web.Request) -> web.Response:
    return _json(await request.app[SERVICE].balance(request[MERCHANT_ID]))


async def get_settlement_report(request: web.Request) -> web.Response:
    from gateway.books import settlement, settlement_csv

    unknown = sorted(set(request.query) - {"date", "format"})
    if unknown:
        raise invalid_request("parameter_unknown", f"unknown parameter: {unknown[0]}", unknown[0])
    text = request.query.get("date", "")
    try:
        if not ISO_DAY.fullmatch(text):  # fromisoformat also takes 20240101 and 2024-W01-1
            raise ValueError(text)
        day = date.fromisoformat(text)
    except ValueError:
        raise invalid_request("parameter_invalid", "date must be a day as YYYY-MM-DD",
                              "date") from None
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise invalid_request("parameter_invalid", "format must be json or csv", "format")
    timeout_s = request.app[SETTINGS].db_acquire_timeout_ms / 1000
    async with request.app[POOL].acquire(timeout=timeout_s) as conn:
        lines = await settlement(conn, day, request[MERCHANT_ID])
    if fmt == "csv":
        return web.Response(text=settlement_csv(lines), content_type="text/csv")
    return _json({"object": "settlement_report", "date": day.isoformat(), "lines": lines})


def setup(app: web.Application) -> None:
    """Register every /v1 route on ``app``."""
    router = app.router
    router.add_post("/v1/payments", create_payment)
    router.add_get("/v1/payments", list_payments)
    router.add_get("/v1/payments/{id}", get_payment)
    router.add_post("/v1/payments/{id}/capture", capture_payment)
    router.add_post("/v1/payments/{id}/void", void_payment)
    router.add_post("/v1/payments/{id}/refunds", refund_payment)
    router.add_get("/v1/refunds/{id}", get_refund)
    router.add_post("/v1/tokens", create_token)
    router.add_get("/v1/balance", get_balance)
    router.add_get("/v1/reports/settlement", get_settlement_report)
