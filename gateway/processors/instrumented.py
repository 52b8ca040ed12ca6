"""A processor connector wrapped in metrics: every call timed, outcomes and failures counted,
without the connector knowing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from gateway import metrics
from gateway.processors.base import APPROVED, DECLINED, ProcessorError

TIMEOUT_SLACK = 0.99  # a call cancelled this close to its deadline was cut by the timeout


class InstrumentedConnector:
    """A processor connector that times every call and counts outcomes and failures.

    The request path bounds each call with ``asyncio.wait_for``; a call cancelled at
    (about) that deadline is counted as a timeout, any other cancellation (shutdown) is not
    an error of the processor's.
    """

    def __init__(self, inner: Any, timeout_s: float) -> None:
        self._inner = inner
        self._timeout_s = timeout_s
        self.name: str = inner.name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)

    async def _call(self, operation: str, call: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            outcome = await call
        except ProcessorError:
            self._failed(operation, started, "error")
            raise
        except asyncio.CancelledError:
            if time.perf_counter() - started >= self._timeout_s * TIMEOUT_SLACK:
                self._failed(operation, started, "timeout")
            raise
        except Exception:
            self._failed(operation, started, "error")
            raise
        metrics.PROCESSOR_DURATION.labels(self.name, operation).observe(
            time.perf_counter() - started
        )
        return outcome

    def _failed(self, operation: str, started: float, kind: str) -> None:
        metrics.PROCESSOR_DURATION.labels(self.name, operation).observe(
            time.perf_counter() - started
        )
        metrics.PROCESSOR_ERRORS.labels(self.name, operation, kind).inc()
        if operation == "authorize":
            metrics.authorization(self.name, kind)

    async def authorize(
        self, payment_id: str, number: str, amount: int, currency: str, reference: str | None = None
    ) -> Any:
        outcome = await self._call(
            "authorize",
            self._inner.authorize(payment_id, number, amount, currency)
            if reference is None
            else self._inner.authorize(payment_id, number, amount, currency, reference),
        )
        if outcome.result == APPROVED:
            metrics.authorization(self.name, "approved")
            metrics.amount_authorized(currency, amount)
        elif outcome.result == DECLINED:
            metrics.authorization(self.name, "declined", outcome.decline_code)
        return outcome

    async def capture(self, payment_id: str, amount: int) -> Any:
        outcome = await self._call("capture", self._inner.capture(payment_id, amount))
        metrics.CAPTURES.labels(self.name).inc()
        return outcome

    async def void(self, payment_id: str, amount: int) -> Any:
        outcome = await self._call("void", self._inner.void(payment_id, amount))
        metrics.VOIDS.labels(self.name).inc()
        return outcome

    async def refund(self, payment_id: str, refund_id: str, amount: int) -> Any:
        outcome = await self._call("refund", self._inner.refund(payment_id, refund_id, amount))
        metrics.REFUNDS.labels(self.name).inc()
        return outcome

    async def status(self, payment_id: str, reference: str | None = None) -> Any:
        return await self._call("status", self._inner.status(payment_id, reference))

    async def operation_status(self, payment_id: str, operation: str, reference: str) -> Any:
        return await self._call(
            "status", self._inner.operation_status(payment_id, operation, reference)
        )
