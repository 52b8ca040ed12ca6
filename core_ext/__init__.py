"""Kassa's compiled core: pure computation on the hot path, never I/O.

Every module exists twice, from one source:
  ``core_ext.pure.<name>``      Cython pure-Python mode, runs anywhere;
  ``core_ext.compiled.<name>``  the same source compiled by ``setup.py``.

``import core_ext`` picks the compiled build. ``KASSA_CORE=pure`` forces the
pure one (development only: ``gateway`` refuses to serve on it unless
``KASSA_ALLOW_PURE_CORE=1``). ``core_ext.BUILD`` says which one is loaded.
"""

from __future__ import annotations

import importlib
import os
from types import SimpleNamespace
from typing import TYPE_CHECKING

MODULES = (
    "validation",
    "states",
    "ledger",
    "idempotency",
    "risk",
    "table",
    "webhooks",
    "forms",
    "billing",
)


class CoreNotCompiled(ImportError):
    """The compiled core could not be imported."""


def implementation(kind: str) -> SimpleNamespace:
    """Import one build of every core module: ``kind`` is "compiled" or "pure"."""
    if kind not in ("compiled", "pure"):
        raise ValueError(f"unknown core build {kind!r}")
    modules = {}
    for name in MODULES:
        module = importlib.import_module(f"core_ext.{kind}.{name}")
        if kind == "compiled" and not (module.__file__ or "").endswith((".so", ".pyd")):
            raise CoreNotCompiled(f"core_ext.compiled.{name} is not an extension module")
        modules[name] = module
    return SimpleNamespace(kind=kind, **modules)


def _load() -> tuple[SimpleNamespace, str | None]:
    if os.environ.get("KASSA_CORE", "compiled") == "pure":
        return implementation("pure"), "KASSA_CORE=pure"
    try:
        return implementation("compiled"), None
    except ImportError as exc:
        return implementation("pure"), f"compiled core not importable: {exc}"


_impl, LOAD_ERROR = _load()
COMPILED: bool = _impl.kind == "compiled"
if TYPE_CHECKING:
    # The compiled modules have no stubs: type checkers read the one source both builds
    # are made from.
    from core_ext.pure import (
        billing,
        forms,
        idempotency,
        ledger,
        risk,
        states,
        table,
        validation,
        webhooks,
    )
else:
    validation = _impl.validation
    states = _impl.states
    ledger = _impl.ledger
    idempotency = _impl.idempotency
    risk = _impl.risk
    table = _impl.table
    webhooks = _impl.webhooks
    forms = _impl.forms
    billing = _impl.billing

BUILD = (
    f"core_ext: compiled ({', '.join(MODULES)})"
    if COMPILED
    else f"core_ext: pure Python ({LOAD_ERROR})"
)
