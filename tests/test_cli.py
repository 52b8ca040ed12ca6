"""The `kassa` command, run as a user runs it: in a subprocess, against a real database."""

import re
import signal

import aiohttp
import pytest

from gateway.store import database
from tests.conftest import kassa, kassa_env

KEY_LINE = re.compile(r"^secret_key:\s+(sk_\S+)$", re.M)
MERCHANT_LINE = re.compile(r"^merchant_id:\s+(mer_\w+)$", re.M)


def create_merchant(env, name="Cli Shop"):
    result = kassa("merchants", "create", name, env=env)
    assert result.returncode == 0, result.stderr
    return MERCHANT_LINE.search(result.stdout)[1], KEY_LINE.search(result.stdout)[1]


async def balance_status(url, secret):
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/v1/balance", headers={"Authorization": f"Bearer {secret}"}) as response,
    ):
        return response.status


async def test_migrate_reports_the_schema_version(db, database_url):
    result = kassa("migrate", env=kassa_env(database_url))
    assert result.returncode == 0, result.stderr
    assert f"schema at version {database.LATEST_VERSION}" in result.stdout


async def test_merchant_create_stores_only_a_hash(db, database_url):
    merchant_id, secret = create_merchant(kassa_env(database_url))
    rows = await db.fetch(
        "SELECT key_hash, key_hint FROM api_keys WHERE merchant_id = $1", merchant_id
    )
    assert len(rows) == 1
    assert secret.encode() not in bytes(rows[0]["key_hash"])
    assert rows[0]["key_hint"] == secret[-4:]
    listed = kassa("merchants", "list", env=kassa_env(database_url))
    assert merchant_id in listed.stdout and "Cli Shop" in listed.stdout
    assert secret not in listed.stdout


async def test_bad_configuration_is_one_clear_line(database_url):
    result = kassa("migrate", env=kassa_env(database_url, KASSA_DB_POOL_MAX="lots"))
    assert result.returncode == 2
    assert "KASSA_DB_POOL_MAX='lots': must be an integer from 1 to 100" in result.stderr
    assert "Traceback" not in result.stderr


async def test_rotate_unknown_merchant_fails_cleanly(db, database_url):
    result = kassa("keys", "rotate", "mer_missing", env=kassa_env(database_url))
    assert result.returncode == 1
    assert "no such merchant: mer_missing" in result.stderr


async def test_serve_on_database_url_and_rotate_keys(db, database_url, serve_process):
    env = kassa_env(database_url)
    merchant_id, old_secret = create_merchant(env)
    server = await serve_process(database_url, workers=2)
    assert await balance_status(server.url, old_secret) == 200

    rotated = kassa("keys", "rotate", merchant_id, env=env)
    assert rotated.returncode == 0, rotated.stderr
    new_secret = KEY_LINE.search(rotated.stdout)[1]
    assert new_secret != old_secret
    assert await balance_status(server.url, new_secret) == 200
    # The old key is revoked; a worker may have it cached for up to AUTH_CACHE_TTL_S.
    import asyncio

    from gateway.merchants import AUTH_CACHE_TTL_S

    await asyncio.sleep(AUTH_CACHE_TTL_S + 0.5)
    assert await balance_status(server.url, old_secret) == 401


async def test_serve_on_embedded_database_survives_restart(tmp_path, serve_process):
    data_dir = str(tmp_path / "embedded")
    env = kassa_env(None, KASSA_DATA_DIR=data_dir)
    server = await serve_process(None, KASSA_DATA_DIR=data_dir)
    _, secret = create_merchant(env, "Embedded Shop")
    assert await balance_status(server.url, secret) == 200
    assert server.stop().exit_code == 0
    # Data lives in the data directory: the same key works after a restart.
    server = await serve_process(None, KASSA_DATA_DIR=data_dir)
    assert await balance_status(server.url, secret) == 200
    assert server.stop().exit_code == 0


async def test_sigterm_stops_gracefully(db, database_url, serve_process):
    server = await serve_process(database_url, workers=2)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    assert "kassa: stopped" in server.logs()
    assert "Traceback" not in server.logs()


@pytest.mark.parametrize("port", ["0", "70000"])
def test_serve_rejects_bad_port(port, database_url):
    result = kassa("serve", "--port", port, env=kassa_env(database_url))
    assert result.returncode == 2
    assert f"--port='{port}'" in result.stderr
