"""The tests' event loop: uvloop as in production, and no error it reports goes unnoticed.

A background task that raises (and is never awaited), a callback that raises, an
unclosed transport: asyncio reports these to the loop's exception handler, which by
default only logs them, so the test that caused them would pass. Here every report is
collected and fails the test it happened in, at teardown (asyncpg's test base does the
same). Reports that come after the last test (session fixtures closing) fail the run.

Registered for every test module by ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

try:
    import uvloop
except ImportError:  # uvloop is a hard dependency on POSIX; this is Windows only
    uvloop = None

_reported: list[dict[str, Any]] = []


def _collect(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    _reported.append(context)
    loop.default_exception_handler(context)  # still logged, with its traceback


def new_loop() -> asyncio.AbstractEventLoop:
    loop = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()
    loop.set_exception_handler(_collect)
    return loop


class _Policy(uvloop.EventLoopPolicy if uvloop is not None else asyncio.DefaultEventLoopPolicy):  # type: ignore[misc]
    """Every loop pytest-asyncio makes is a collecting uvloop one. A policy, not
    pytest-asyncio's loop-factory hook: the hook parametrizes the session's loop runner,
    and a synchronous test between two asynchronous ones then tears the session loop
    (and every session fixture on it, the database pool) down mid-run."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return new_loop()


def pytest_configure(config: pytest.Config) -> None:
    asyncio.set_event_loop_policy(_Policy())


def _describe(contexts: list[dict[str, Any]]) -> str:
    lines = []
    for context in contexts:
        exception = context.get("exception")
        lines.append(
            f"- {context.get('message', 'error')}"
            + (f": {type(exception).__name__}: {exception}" if exception else "")
        )
        for key in ("task", "future", "handle"):
            if key in context:
                lines.append(f"  {key}: {context[key]!r:.300}")
    return "\n".join(lines)


@pytest.fixture(autouse=True)
def _fail_on_loop_errors() -> Iterator[None]:
    # Autouse fixtures are set up first and torn down last, so this sees what the test's
    # other fixtures do while closing (a client, an app) too.
    yield
    if _reported:
        contexts = _reported[:]
        _reported.clear()
        pytest.fail(
            "the event loop reported errors during this test:\n" + _describe(contexts),
            pytrace=False,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _reported:
        session.config.get_terminal_writer().line(
            "the event loop reported errors after the last test:\n" + _describe(_reported), red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
