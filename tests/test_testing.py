"""The harness that starts `kassa serve` for the tests, the benchmarks and the chaos test."""

import os

import psutil
import pytest

from gateway import testing
from gateway.testing import KassaServer, ServerFailed
from tests.conftest import subprocess_variables


def test_environment_drops_the_callers_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("KASSA_WORKERS", "7")
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone-elses/db")
    env = testing.environment(None, tmp_path, KASSA_LOG_LEVEL="debug")
    assert "KASSA_WORKERS" not in env and "DATABASE_URL" not in env
    assert env["KASSA_DATA_DIR"] == str(tmp_path)
    assert env["KASSA_LOG_LEVEL"] == "debug"
    assert env["PATH"] == os.environ["PATH"]


async def test_a_server_that_cannot_start_says_why(tmp_path, database_url):
    server = KassaServer(tmp_path, database_url, env=subprocess_variables(KASSA_DB_POOL_MAX="lots"))
    server.start()
    try:
        with pytest.raises(ServerFailed, match="exited with 2 during start") as failed:
            await server.wait_ready_async(timeout_s=30)
        assert "KASSA_DB_POOL_MAX='lots'" in str(failed.value)  # the log's tail says why
    finally:
        server.stop()


async def test_lists_its_serving_workers_and_stops_them(db, tmp_path, database_url):
    server = KassaServer(tmp_path, database_url, workers=2, env=subprocess_variables())
    merchant_id, secret = server.create_merchant("Harness Shop")
    assert merchant_id.startswith("mer_") and secret.startswith("sk_")
    server.start()
    try:
        await server.wait_ready_async(all_workers=True)
        workers = server.serving_workers()
        assert len(workers) == 2
        supervisor = psutil.Process(server.process.pid)
        assert set(workers) <= {child.pid for child in supervisor.children()}
    finally:
        exit_code, seconds = server.stop()
    assert exit_code == 0, server.logs()[-2000:]
    assert seconds < testing.STOP_TIMEOUT_S
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        for pid in workers
    )
