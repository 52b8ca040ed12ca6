"""What a new user meets running Kassa the first time: start-up checks, a supervisor
killed hard, and the hints printed on the way. ``kassa serve`` runs as a subprocess."""

from __future__ import annotations

import base64
import contextlib
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from gateway.cards import MASTER_KEY_FILE
from tests.conftest import ROOT, kassa_env
from tests.payments_helpers import this_year

START_CHECK_TIMEOUT_S = 20  # a start-up check answers at once; a server keeps running


def serve_until_exit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``kassa serve`` expected to exit by itself; one still running is stopped gracefully
    (SIGTERM, so a started embedded database is stopped too) and reported."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
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
    result = serve_until_exit(kassa_env(None, KASSA_DATA_DIR=str(data_dir), KASSA_MASTER_KEY=key))
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


# --- a supervisor killed with SIGKILL ------------------------------------------------

ORPHANS_GONE_TIMEOUT_S = 10  # workers notice their supervisor's death within about a second


def postmasters(pgdata: Path) -> list[psutil.Process]:
    """PostgreSQL server processes (not their backends) running on ``pgdata``."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "-D" in cmdline and str(pgdata) in cmdline and "postgres" in (cmdline[0] or ""):
            found.append(process)
    return found


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


async def test_sigkill_of_the_supervisor_leaves_no_worker_and_one_database(tmp_path, serve_process):
    data_dir = tmp_path / "data"
    pgdata = (data_dir / "postgres").resolve()
    first = await serve_process(None, workers=2, KASSA_DATA_DIR=str(data_dir))
    children = psutil.Process(first.process.pid).children(recursive=True)
    try:
        first.process.kill()
        first.process.wait(10)
        # The workers die with their supervisor: nothing keeps serving the port...
        assert wait_for(lambda: not port_answers(first.port), ORPHANS_GONE_TIMEOUT_S), (
            "a worker still answers after its supervisor was killed"
        )
        assert wait_for(
            lambda: (
                not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
            ),
            ORPHANS_GONE_TIMEOUT_S,
        )
        # ...so a new server on the same port and data dir is the only one answering, on the
        # database the killed one left running, not a second PostgreSQL.
        second = await serve_process(None, workers=1, port=first.port, KASSA_DATA_DIR=str(data_dir))
        async with (
            aiohttp.ClientSession() as session,
            session.get(second.url + "/readyz") as response,
        ):
            assert response.status == 200
        assert len(postmasters(pgdata)) == 1
        assert [d.name for d in (data_dir / "metrics").iterdir()] == [str(second.process.pid)]
        # The killed holder is forgotten: stopping the new server stops the database.
        assert second.stop().exit_code == 0
        assert wait_for(lambda: not postmasters(pgdata), ORPHANS_GONE_TIMEOUT_S), (
            "the embedded PostgreSQL kept running after the last server stopped"
        )
    finally:
        for process in children + postmasters(pgdata):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


async def test_a_second_serve_on_a_busy_port_is_refused(db, database_url, serve_process):
    first = await serve_process(database_url, workers=2)
    result = serve_until_exit(kassa_env(database_url, KASSA_PORT=str(first.port)))
    assert result.returncode == 1, result.stderr
    assert f"127.0.0.1:{first.port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr


WATCHED_CHILD = """
import os, sys, threading, time
from gateway.server import _watch_supervisor
threading.Thread(target=_watch_supervisor, args=(int(sys.argv[1]),), daemon=True).start()
time.sleep(60)
"""
MIDDLE = f"""
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {WATCHED_CHILD!r}, str(os.getpid())])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_without_prctl_a_worker_still_notices_its_supervisor_die():
    # The portable fallback alone (no PR_SET_PDEATHSIG): macOS and the BSDs rely on it.
    supervisor = subprocess.Popen(
        [sys.executable, "-c", MIDDLE], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    worker = psutil.Process(int(supervisor.stdout.readline()))
    try:
        supervisor.kill()
        supervisor.wait(10)
        assert wait_for(
            lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE,
            ORPHANS_GONE_TIMEOUT_S,
        )
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
        supervisor.stdout.close()


# --- scripts/bootstrap, on a copy of the checkout with a stand-in venv ------------------

# Stands in for .venv/bin/python: records every call, never runs pip or a build (no network,
# and the shared venv is never touched); runs the bootstrap's own Python snippets for real.
FAKE_VENV_PYTHON = """#!/usr/bin/env bash
root=$(dirname "$0")/../..
echo "$*" >>"$root/calls.log"
case "$1" in
    -m) exec test ! -e "$root/pip-fails" ;;
    setup.py) exit 0 ;;
    -c) case "$2" in *core_ext.COMPILED*) echo "core_ext: compiled"; exit 0 ;; esac ;;
esac
exec {python} "$@"
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    for name in ("pyproject.toml", "setup.py", "scripts/bootstrap"):
        (root / name).write_bytes((ROOT / name).read_bytes())
    venv_python = root / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(FAKE_VENV_PYTHON.format(python=sys.executable))
    venv_python.chmod(0o755)
    return root


def bootstrap(root: Path, extras: str = "") -> list[str]:
    """Run the checkout's scripts/bootstrap as scripts/serve does; the pip calls it made."""
    log = root / "calls.log"
    log.unlink(missing_ok=True)
    result = subprocess.run(
        ["bash", "-c", f'source scripts/bootstrap "{extras}"'],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert any(call.startswith("setup.py") for call in calls)  # the core is always checked
    return [call for call in calls if call.startswith("-m pip")]


def test_bootstrap_skips_pip_when_nothing_changed(checkout):
    first = bootstrap(checkout)
    assert any("install" in call and "-e ." in call for call in first), first
    assert bootstrap(checkout) == []  # a second scripts/serve: offline, no setup redone

    with open(checkout / "pyproject.toml", "a") as pyproject:
        pyproject.write("# a dependency changed\n")
    assert any("-e ." in call for call in bootstrap(checkout))
    assert bootstrap(checkout) == []


def test_bootstrap_installs_missing_extras_once(checkout):
    bootstrap(checkout)
    assert any("-e .[test]" in call for call in bootstrap(checkout, "test"))
    assert bootstrap(checkout, "test") == []
    assert bootstrap(checkout) == []  # scripts/serve after scripts/test: test extras kept


def test_a_setup_that_failed_is_redone(checkout):
    bootstrap(checkout)
    pyproject = checkout / "pyproject.toml"
    original = pyproject.read_bytes()
    pyproject.write_bytes(original + b"# a dependency changed\n")
    (checkout / "pip-fails").touch()  # offline, say: the venv is left half updated
    result = subprocess.run(
        ["bash", "-c", 'source scripts/bootstrap ""'],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    (checkout / "pip-fails").unlink()
    pyproject.write_bytes(original)  # back to the files of the last good setup
    assert bootstrap(checkout) != []
    assert bootstrap(checkout) == []


# --- scripts/serve, on a copy of the checkout: setup stubbed, kassa serve recorded -------

FAKE_BOOTSTRAP = 'cd "$(dirname "${BASH_SOURCE[0]}")/.."\n'  # the real one runs pip
# .venv/bin/python and .venv/bin/kassa run this checkout's gateway; `kassa serve` only
# records its arguments, so the script's steps before it run for real, on a real database.
FAKE_VENV_TOOL = """#!/usr/bin/env bash
export PYTHONPATH={root}
{run}
"""
FAKE_KASSA_RUN = """if [ "$1" = serve ]; then echo "kassa $*" >>"$(dirname "$0")/../../serve.log"; exit 0; fi
exec {python} -m gateway "$@"
"""


@pytest.fixture
def serve_checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "serve").write_bytes((ROOT / "scripts" / "serve").read_bytes())
    (root / "scripts" / "bootstrap").write_text(FAKE_BOOTSTRAP)
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    tools = {
        "python": f'exec {sys.executable} "$@"',
        "kassa": FAKE_KASSA_RUN.format(python=sys.executable),
    }
    for name, run in tools.items():
        (bin_dir / name).write_text(FAKE_VENV_TOOL.format(root=ROOT, run=run))
        (bin_dir / name).chmod(0o755)
    return root


def scripts_serve(root: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        ["bash", "scripts/serve", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (root / "serve.log").read_text().splitlines()[-1] == " ".join(["kassa serve", *args])
    return result.stdout + result.stderr


async def test_scripts_serve_prints_a_curl_for_the_port_it_serves(db, database_url, serve_checkout):
    output = scripts_serve(serve_checkout, kassa_env(database_url), "--port", "9000")
    assert "curl -s http://127.0.0.1:9000/v1/payments" in output, output
    # The whole key, in its alphabet (token_urlsafe: \w and "-"; one in 64 starts with "-").
    assert re.search(r"Bearer sk_[A-Za-z0-9_-]{40,}", output), output
    # The example card must not have expired whenever someone runs it.
    assert int(re.search(r'"exp_year": (\d{4})', output)[1]) > this_year(), output

    env = kassa_env(database_url, KASSA_PORT="9100", KASSA_HOST="0.0.0.0")
    output = scripts_serve(serve_checkout, env, "--workers", "2")
    assert "http://127.0.0.1:9100/v1/payments" in output, output


async def test_scripts_serve_says_how_to_get_a_key_once_merchants_exist(
    db, database_url, serve_checkout
):
    first = scripts_serve(serve_checkout, kassa_env(database_url))
    assert "secret_key:" in first
    again = scripts_serve(serve_checkout, kassa_env(database_url))
    assert "secret_key:" not in again
    assert "Demo Shop" in again  # the merchants there are
    assert "kassa merchants create NAME" in again and "kassa keys rotate MERCHANT_ID" in again
    assert await db.fetchval("SELECT count(*) FROM merchants") == 1


NO_MERCHANTS_HINT = "kassa merchants create NAME"


async def test_serve_without_merchants_says_how_to_create_one(db, database_url, serve_process):
    server = await serve_process(database_url, workers=2)
    assert server.stop().exit_code == 0
    assert server.logs().count(NO_MERCHANTS_HINT) == 1, server.logs()

    from gateway.store.merchants import create_merchant

    async with db.acquire() as conn:
        await create_merchant(conn, "Some Shop")
    server = await serve_process(database_url)
    assert server.stop().exit_code == 0
    assert NO_MERCHANTS_HINT not in server.logs()
