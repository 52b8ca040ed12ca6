"""What a new user meets running Kassa the first time: start-up checks, a supervisor
killed hard, and the hints printed on the way. ``kassa serve`` runs as a subprocess."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys

import pytest

from gateway.cards import MASTER_KEY_FILE
from tests.conftest import ROOT, kassa_env

START_CHECK_TIMEOUT_S = 20  # a start-up check answers at once; a server keeps running


def serve_until_exit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``kassa serve`` expected to exit by itself; one still running is stopped gracefully
    (SIGTERM, so a started embedded database is stopped too) and reported."""
    process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", *args], env=env,
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        stdout, stderr = process.communicate(timeout=START_CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(f"kassa serve kept running; its stderr:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


BAD_MASTER_KEYS = {
    "too short": "c2hvcnQ",
    "not base64": "not base64 at all!",
    "wrong length": base64.b64encode(bytes(16)).decode(),
}


@pytest.mark.parametrize("key", BAD_MASTER_KEYS.values(), ids=BAD_MASTER_KEYS.keys())
def test_a_bad_master_key_stops_serve_before_anything_starts(tmp_path, key):
    data_dir = tmp_path / "data"
    result = serve_until_exit(kassa_env(None, KASSA_DATA_DIR=str(data_dir),
                                        KASSA_MASTER_KEY=key))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "KASSA_MASTER_KEY" in lines[0], result.stderr
    assert key not in result.stderr
    assert "serving" not in result.stderr and "Traceback" not in result.stderr
    assert not (data_dir / "postgres").exists()  # no embedded database was started


def test_a_corrupt_generated_master_key_file_is_named(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / MASTER_KEY_FILE).write_text("truncated")
    result = serve_until_exit(kassa_env(None, KASSA_DATA_DIR=str(data_dir), KASSA_MASTER_KEY=""))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(data_dir / MASTER_KEY_FILE) in lines[0], result.stderr
    assert "truncated" not in result.stderr
    assert not (data_dir / "postgres").exists()
