"""Every core test runs against both builds; parity tests get both at once."""

import pytest

import core_ext


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
