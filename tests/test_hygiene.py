"""The test base itself: tests run on uvloop, and a background task's error fails a test."""

from __future__ import annotations

import asyncio
import os
import textwrap

import pytest
import uvloop

from tests.conftest import ROOT


async def test_tests_run_on_uvloop_as_production_does(client):
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    response = await client.get("/healthz")  # the in-process server shares that loop
    assert response.status == 200


GENERATED = textwrap.dedent("""
    import asyncio

    async def test_background_task_raises():
        async def fail():
            raise RuntimeError("lost in the background")

        asyncio.get_running_loop().create_task(fail())
        await asyncio.sleep(0.05)  # the task runs, raises, is dropped: never awaited

    async def test_background_task_awaited():
        task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        await task

    def test_sync_is_unaffected():
        pass
""")


def test_a_background_task_that_raised_fails_its_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
):
    pytester.makepyfile(test_generated=GENERATED)
    pytester.makeini("""
        [pytest]
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = session
        asyncio_default_test_loop_scope = session
    """)
    env_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", env_path)
    result = pytester.runpytest_subprocess("-p", "tests.loop_errors", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_background_task_raises*",
            "*the event loop reported errors during this test:*",
            "*Task exception was never retrieved: RuntimeError: lost in the background*",
        ]
    )
