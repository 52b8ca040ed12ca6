"""``promtool`` for the metrics and deploy tests: found on PATH, or installed from Debian's
``prometheus`` package when running as root with apt-get; otherwise the test FAILS (a
check that cannot run must not pass silently as a skip).

The ``promtool`` fixture is registered for every test module by ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

APT_TIMEOUT_S = 600
INSTALL_HINT = (
    "install Prometheus's promtool (Debian/Ubuntu: apt-get install prometheus; "
    "or a release tarball from https://prometheus.io/download/) and put it on PATH"
)


def _install_with_apt() -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
    )
    for step in steps:
        try:
            done = subprocess.run(
                step, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            return f"`{' '.join(step)}` timed out after {APT_TIMEOUT_S}s"
        if done.returncode != 0:
            return f"`{' '.join(step)}` failed ({done.returncode}): {done.stderr[-2000:]}"
    return ""


@pytest.fixture(scope="session")
def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    problem = "promtool is not on PATH"
    if os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get"):
        problem = _install_with_apt() or "apt-get installed prometheus but promtool is not on PATH"
        found = shutil.which("promtool")
        if found:
            return found
    pytest.fail(f"{problem}; these checks need it: {INSTALL_HINT}", pytrace=False)


def run(
    promtool_path: str, *args: str, stdin: str | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool_path, *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd
    )
