"""Exceptions shared by both builds of the core (plain Python on purpose).

Both ``core_ext.pure.*`` and ``core_ext.compiled.*`` raise these same classes,
so ``gateway`` catches one type whichever build is loaded.
"""

from __future__ import annotations


class CoreError(Exception):
    """A precise, client-facing rejection: it becomes an API.md error body."""

    def __init__(
        self,
        code: str,
        message: str,
        param: str | None = None,
        status: int = 400,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.status = status
        self.type = type

    def as_tuple(self) -> tuple[int, str, str, str | None, str]:
        return (self.status, self.type, self.code, self.param, self.message)

    def __repr__(self) -> str:
        return f"CoreError({self.code!r}, {self.message!r}, param={self.param!r}, status={self.status})"


class LedgerImbalance(Exception):
    """A money invariant was broken. Never caught on the request path: it must fail loudly."""
