"""Operational endpoints, authentication, and the error model's edges."""

import asyncio

import orjson
import pytest

from gateway.store import database


async def test_healthz_and_readyz(client):
    response = await client.get("/healthz")
    assert response.status == 200
    response = await client.get("/readyz")
    assert response.status == 200
    body = await response.json()
    assert body["schema_version"] == database.LATEST_VERSION


ERROR_FIELDS = {"type", "code", "message", "param", "decline_code", "payment_id"}


async def assert_not_ready(response, code: str) -> dict:
    """API.md's error shape, and when to ask again."""
    body = await response.json()
    assert response.status == 503, body
    assert set(body) == {"error"} and set(body["error"]) == ERROR_FIELDS, body
    assert (body["error"]["type"], body["error"]["code"]) == ("api_error", code)
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["X-Request-Id"]
    return body["error"]


@pytest.mark.parametrize("ahead,code", [(1, "migrations_pending"), (-1, "schema_too_new")])
async def test_readyz_fails_when_migrations_are_not_current(client, monkeypatch, ahead, code):
    # This Kassa expects a schema one version newer (older) than the database has.
    current = database.LATEST_VERSION
    monkeypatch.setattr(database, "LATEST_VERSION", current + ahead)
    error = await assert_not_ready(await client.get("/readyz"), code)
    assert str(current) in error["message"] and str(current + ahead) in error["message"]


async def test_readyz_fails_when_the_database_is_unreachable(client):
    from gateway.http.appkeys import POOL

    await client.app[POOL].close()  # every connection gone, none can be opened
    await assert_not_ready(await client.get("/readyz"), "database_unavailable")


async def test_openapi_document_is_served(client):
    response = await client.get("/openapi.json")
    assert response.status == 200
    document = orjson.loads(await response.read())
    assert document["openapi"].startswith("3.")
    assert "/v1/payments" in document["paths"]


async def test_v1_requires_a_key(client):
    response = await client.get("/v1/balance")
    assert response.status == 401
    error = (await response.json())["error"]
    assert (error["type"], error["code"]) == ("authentication_error", "api_key_missing")


async def test_wrong_key_is_refused(client, merchant):
    response = await client.get("/v1/balance", headers={"Authorization": "Bearer sk_nope"})
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "api_key_invalid"


async def test_created_key_authenticates(client, merchant):
    response = await client.get("/v1/balance", headers=merchant.headers)
    assert response.status == 200


async def test_unknown_route_is_a_json_404(client, merchant):
    response = await client.get("/v1/nothing-here", headers=merchant.headers)
    assert response.status == 404
    error = (await response.json())["error"]
    assert error["code"] == "resource_missing"


async def test_oversized_body_is_413(client, merchant):
    response = await client.post(
        "/v1/payments",
        data=b"{" + b" " * (70 * 1024) + b"}",
        headers={**merchant.headers, "Content-Type": "application/json"},
    )
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "request_too_large"


async def test_no_answer_names_the_server_software(client, merchant):
    # A Server header naming Python's and aiohttp's versions tells a scanner which known
    # vulnerabilities to try; no answer carries one, errors included.
    answers = [
        await client.get("/healthz"),
        await client.get("/readyz"),
        await client.get("/v1/balance", headers=merchant.headers),
        await client.get("/v1/balance"),  # 401
        await client.get("/nowhere"),  # 404
        await client.delete("/v1/payments", headers=merchant.headers),  # 405
    ]
    for response in answers:
        assert "Server" not in response.headers, (response.url, response.headers["Server"])
    # HTTP aiohttp cannot parse is answered before any route or middleware.
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: k\r\nX-Bad: \x00\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert head.split(b" ")[1] == b"400", answer
    assert b"\r\nserver:" not in head, head
