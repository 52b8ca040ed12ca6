"""Every core test runs against both builds; parity tests get both at once."""

import importlib

import pytest

import core_ext


def load(kind: str, name: str):
    """One module of one build; the compiled one must really be an extension."""
    module = importlib.import_module(f"core_ext.{kind}.{name}")
    if kind == "compiled":
        assert module.__file__.endswith((".so", ".pyd")), "run setup.py build_ext --inplace"
    return module


@pytest.fixture(scope="session")
def compiled():
    return core_ext.implementation("compiled")


@pytest.fixture(scope="session")
def pure():
    return core_ext.implementation("pure")


@pytest.fixture(params=["compiled", "pure"], scope="session")
def core(request):
    """One build of the core; tests using it run once per build."""
    return core_ext.implementation(request.param)
