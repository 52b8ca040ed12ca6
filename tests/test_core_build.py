"""The compiled core is the one loaded, and the gateway refuses to serve without it."""

import os
import subprocess
import sys

import pytest

import core_ext
from gateway.http.app import CoreNotCompiledError, require_compiled_core
from tests.conftest import ROOT, settings_for


def test_compiled_core_is_loaded():
    assert core_ext.COMPILED, core_ext.BUILD
    for name in core_ext.MODULES:
        module = getattr(core_ext, name)
        assert module.__name__ == f"core_ext.compiled.{name}"
        assert module.__file__.endswith(".so"), module.__file__


def test_import_reports_the_build():
    out = subprocess.run(
        [sys.executable, "-c", "import core_ext; print(core_ext.BUILD)"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        env={**os.environ, "KASSA_CORE": "compiled"},
    ).stdout
    assert out.startswith("core_ext: compiled")


def test_pure_build_is_refused_without_the_development_switch():
    out = subprocess.run(
        [sys.executable, "-c", "import core_ext; print(core_ext.COMPILED, core_ext.BUILD)"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        env={**os.environ, "KASSA_CORE": "pure"},
    ).stdout
    assert out.startswith("False core_ext: pure Python")


def test_gateway_refuses_pure_core_unless_allowed(monkeypatch):
    monkeypatch.setattr(core_ext, "COMPILED", False)
    with pytest.raises(CoreNotCompiledError, match="KASSA_ALLOW_PURE_CORE"):
        require_compiled_core(settings_for("postgresql://x", allow_pure_core="0"))
    require_compiled_core(settings_for("postgresql://x", allow_pure_core="1"))
