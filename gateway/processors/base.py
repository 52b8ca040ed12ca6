"""The connector protocol: what Kassa asks of a processor, and what it answers.

A connector authorizes, captures, voids, refunds and answers status lookups (what
recovery asks after a lost answer): ``status`` for an authorization, ``operation_status``
for a capture, void or refund, found by our reference for it (the payment id for a
capture or void, the refund id for a refund), as the operation was sent. ``ProcessorError`` means the processor answered
with an error and the operation did not happen; a timeout means the outcome is unknown.
A payment confirmed again after a decline or a failure is authorized again under a new
reference per attempt (``attempt_reference``), so each attempt is its own at the processor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

APPROVED = "approved"
DECLINED = "declined"
ERROR = "error"
NOT_FOUND = "not_found"


@dataclass(frozen=True)
class Outcome:
    result: str  # APPROVED | DECLINED | ERROR | NOT_FOUND
    decline_code: str | None = None
    reference: str | None = None  # the processor's id for the operation


class ProcessorError(Exception):
    """The processor answered with an error: the operation did not happen."""


class Connector(Protocol):
    name: str

    # ``reference``: our id for this attempt, which the processor deduplicates and status
    # lookups name; None is the payment id (a payment's first attempt).
    async def authorize(
        self, payment_id: str, number: str, amount: int, currency: str, reference: str | None = None
    ) -> Outcome: ...
    async def capture(self, payment_id: str, amount: int) -> Outcome: ...
    async def void(self, payment_id: str, amount: int) -> Outcome: ...
    async def refund(self, payment_id: str, refund_id: str, amount: int) -> Outcome: ...
    async def status(self, payment_id: str, reference: str | None = None) -> Outcome: ...
    async def operation_status(
        self, payment_id: str, operation: str, reference: str
    ) -> Outcome: ...


def attempt_reference(payment_id: str, attempt: int) -> str | None:
    """Our reference for a payment's ``attempt``-th authorization (1-based): None (the
    payment id) for the first, ``pay_..._N`` after; never another payment's id."""
    return None if attempt == 1 else f"{payment_id}_{attempt}"
