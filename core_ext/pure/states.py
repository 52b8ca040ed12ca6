"""The payment state machine: the only moves API.md allows, as pure functions.

Before the processor: requires_payment_method -> requires_confirmation (attach) ->
processing (confirm); both may be canceled or expire, and a declined or failed payment
may be confirmed again (another attempt) or canceled. None of those moves money: their
Transitions move 0 and the ledger posts nothing for them.

Each operation takes a payment's current status and amounts and returns a
``Transition`` (the new status and amounts, plus the money the event moves, for
the ledger), or raises ``CoreError`` for a client mistake.  ``LedgerImbalance``
means the amounts handed in (or about to be handed out) are impossible: that is
a bug or corrupted data, never something a client can cause.

Precedence of checks: stored invariants, then the state, then the amount, so
"capture -5 on a voided payment" answers 409 payment_state_invalid.
"""

import cython

from core_ext.errors import CoreError, LedgerImbalance

REQUIRES_PAYMENT_METHOD = "requires_payment_method"
REQUIRES_CONFIRMATION = "requires_confirmation"
PROCESSING = "processing"
AUTHORIZED = "authorized"
DECLINED = "declined"
FAILED = "failed"
CAPTURED = "captured"
PARTIALLY_REFUNDED = "partially_refunded"
REFUNDED = "refunded"
VOIDED = "voided"
EXPIRED = "expired"
CANCELED = "canceled"

STATUSES = (
    REQUIRES_PAYMENT_METHOD,
    REQUIRES_CONFIRMATION,
    PROCESSING,
    AUTHORIZED,
    DECLINED,
    FAILED,
    CAPTURED,
    PARTIALLY_REFUNDED,
    REFUNDED,
    VOIDED,
    EXPIRED,
    CANCELED,
)
# The states before the processor, and the ones a new attempt may start from.
PRE_PROCESSOR = (REQUIRES_PAYMENT_METHOD, REQUIRES_CONFIRMATION)
RETRYABLE = (DECLINED, FAILED)
CANCELABLE = (REQUIRES_PAYMENT_METHOD, REQUIRES_CONFIRMATION, DECLINED, FAILED)

# The events of the moves that move no money (the ledger posts nothing for them).
ATTACH = "attach"
CONFIRM = "confirm"
CANCEL = "cancel"
EXPIRE_UNCONFIRMED = "expire_unconfirmed"

APPROVED = "approved"
OUTCOMES = (APPROVED, DECLINED, FAILED)


@cython.cclass
class Transition:
    """The result of one legal move: new status and amounts, and the money moved."""

    # Fields (typed, read-only from Python) are declared in compiled/states.pxd.

    def __init__(
        self,
        event: str,
        status: str,
        amount_capturable: cython.longlong,
        amount_captured: cython.longlong,
        amount_refunded: cython.longlong,
        amount: cython.longlong,
        released: cython.longlong,
    ):
        self.event = event
        self.status = status
        self.amount_capturable = amount_capturable
        self.amount_captured = amount_captured
        self.amount_refunded = amount_refunded
        self.amount = amount
        self.released = released

    def as_dict(self) -> dict:
        return {
            "event": self.event,
            "status": self.status,
            "amount_capturable": self.amount_capturable,
            "amount_captured": self.amount_captured,
            "amount_refunded": self.amount_refunded,
            "amount": self.amount,
            "released": self.released,
        }

    def __repr__(self):
        return "Transition(%s)" % ", ".join([f"{k}={v!r}" for k, v in self.as_dict().items()])


def _check_invariants(total, capturable, captured, refunded):
    # Explicit, not `assert`: asserts vanish under -O and money bugs must not.
    if not (0 <= refunded <= captured <= total):
        raise LedgerImbalance(
            f"amounts out of order: refunded={refunded} captured={captured} amount={total}"
        )
    if not (0 <= capturable <= total - captured):
        raise LedgerImbalance(
            f"capturable={capturable} out of range for amount={total} captured={captured}"
        )
    return 0


@cython.locals(ok=cython.bint)
def _check_source(status, capturable, captured, refunded):
    # A legal source state must also have the amounts that status implies;
    # otherwise the move would post zero or negative money.
    if status == AUTHORIZED:
        ok = capturable > 0 and captured == 0 and refunded == 0
    elif status == CAPTURED:
        ok = capturable == 0 and captured > 0 and refunded == 0
    elif status == PARTIALLY_REFUNDED:
        ok = capturable == 0 and 0 < refunded < captured
    else:  # a state that holds no money: pre-processor, declined, failed
        ok = capturable == 0 and captured == 0 and refunded == 0
    if not ok:
        raise LedgerImbalance(
            f"a {status} payment cannot have capturable={capturable} "
            f"captured={captured} refunded={refunded}"
        )
    return 0


def _illegal(operation: str, status):
    if status not in STATUSES:
        return ValueError(f"unknown payment status {status!r}")
    return CoreError(
        "payment_state_invalid",
        f"cannot {operation} a payment that is {status}",
        status=409,
    )


def _requested(requested, limit, what: str):
    """The amount a capture or refund moves: None means everything left."""
    if requested is None:
        return limit
    # bool is an int subclass; both builds reject it (and floats) the same way.
    if isinstance(requested, bool) or not isinstance(requested, int):
        raise TypeError(f"amount must be an int or None, not {type(requested).__name__}")
    # Compare as Python ints first so a huge value is a 400, not an OverflowError.
    if requested < 1:
        raise CoreError("amount_too_small", "amount must be at least 1", param="amount")
    if requested > limit:
        raise CoreError(
            "amount_too_large",
            f"amount {requested} exceeds the {what} amount {limit}",
            param="amount",
        )
    return requested


@cython.locals(t=Transition)
def _make(event: str, status: str, total, capturable, captured, refunded, moved, released):
    _check_invariants(total, capturable, captured, refunded)
    t = Transition.__new__(Transition)  # skips __init__'s argument parsing
    t.event = event
    t.status = status
    t.amount_capturable = capturable
    t.amount_captured = captured
    t.amount_refunded = refunded
    t.amount = moved
    t.released = released
    return t


def settle_authorization(outcome: object, amount: cython.longlong) -> Transition:
    """processing -> authorized (approved) | declined | failed."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown authorization outcome {outcome!r}")
    if amount < 1:
        raise ValueError(f"authorization amount must be at least 1, got {amount}")
    if outcome == APPROVED:
        return _make("authorize", AUTHORIZED, amount, amount, 0, 0, amount, 0)
    if outcome == DECLINED:
        return _make("decline", DECLINED, amount, 0, 0, 0, 0, 0)
    return _make("fail", FAILED, amount, 0, 0, 0, 0, 0)


def capture(
    status: object,
    amount: cython.longlong,
    amount_capturable: cython.longlong,
    amount_captured: cython.longlong,
    amount_refunded: cython.longlong,
    requested: object = None,
) -> Transition:
    """authorized -> captured; one capture only, the uncaptured remainder is released."""
    c: cython.longlong
    _check_invariants(amount, amount_capturable, amount_captured, amount_refunded)
    if status != AUTHORIZED:
        raise _illegal("capture", status)
    _check_source(status, amount_capturable, amount_captured, amount_refunded)
    c = _requested(requested, amount_capturable, "capturable")
    return _make("capture", CAPTURED, amount, 0, c, 0, c, amount_capturable - c)


def _release(event: str, new_status: str, status, amount, capturable, captured, refunded):
    # void and expire are the same move: the whole hold goes back.
    _check_invariants(amount, capturable, captured, refunded)
    if status != AUTHORIZED:
        raise _illegal(event, status)
    _check_source(status, capturable, captured, refunded)
    return _make(event, new_status, amount, 0, 0, 0, capturable, 0)


def void(
    status: object,
    amount: cython.longlong,
    amount_capturable: cython.longlong,
    amount_captured: cython.longlong,
    amount_refunded: cython.longlong,
) -> Transition:
    """authorized -> voided, releasing everything capturable."""
    return _release(
        "void", VOIDED, status, amount, amount_capturable, amount_captured, amount_refunded
    )


def expire(
    status: object,
    amount: cython.longlong,
    amount_capturable: cython.longlong,
    amount_captured: cython.longlong,
    amount_refunded: cython.longlong,
) -> Transition:
    """authorized -> expired (not captured in time), releasing everything capturable;
    requires_payment_method | requires_confirmation -> expired (never confirmed), moving
    nothing."""
    if status in PRE_PROCESSOR:
        _check_invariants(amount, amount_capturable, amount_captured, amount_refunded)
        return _unmoved(
            EXPIRE_UNCONFIRMED,
            EXPIRED,
            "expire",
            status,
            amount,
            amount_capturable,
            amount_captured,
            amount_refunded,
        )
    return _release(
        "expire", EXPIRED, status, amount, amount_capturable, amount_captured, amount_refunded
    )


def _unmoved(
    event: str, new_status: str, operation: str, status, amount, capturable, captured, refunded
):
    # A move between states that hold no money: the amounts stay zero, nothing is posted.
    # The caller checked the invariants first (their errors outrank the state's).
    _check_source(status, capturable, captured, refunded)
    if amount < 1:
        raise LedgerImbalance(f"a payment of amount {amount} cannot {operation}")
    return _make(event, new_status, amount, 0, 0, 0, 0, 0)


def attach_payment_method(
    status: object,
    amount: cython.longlong,
    amount_capturable: cython.longlong,
    amount_captured: cython.longlong,
    amount_refunded: cython.longlong,
) -> Transition:
    """requires_payment_method -> requires_confirmation (a payment method is set)."""
    _check_invariants(amount, amount_capturable, amount_captured, amount_refunded)
    if status != REQUIRES_PAYMENT_METHOD:
        raise _illegal("attach a payment method to", status)
    return _unmoved(
        ATTACH,
        REQUIRES_CONFIRMATION,
        "attach",
        status,
        amount,
        amount_capturable,
        amount_captured,
        amount_refunded,
    )


def confirm(
    status: object,
    amount: cython.longlong,
    amount_capturable: cython.longlong,
    amount_captured: cython.longlong,
    amount_refunded: cython.longlong,
) -> Transition:
    """requires_confirmation | declined | failed -> processing: a new processor attempt
    starts (its outcome then settles as settle_authorization says)."""
    _check_invariants(amount, amount_capturable, amount_captured, amount_refunded)
    if status != REQUIRES_CONFIRMATION and status != DECLINED and status != FAILED:
        raise _illegal("confirm", status)
    return _unmoved(
        CONFIRM,
        PROCESSING,
        "confirm",
        status,
        amount,
        amount_capturable,
        amount_captured,
        amount_refunded,
    )


def cancel(
    status: object,
    amount: cython.longlong,
    amount_capturable: cython.longlong,
    amount_captured: cython.longlong,
    amount_refunded: cython.longlong,
) -> Transition:
    """requires_payment_method | requires_confirmation | declined | failed -> canceled."""
    _check_invariants(amount, amount_capturable, amount_captured, amount_refunded)
    if status not in CANCELABLE:
        raise _illegal("cancel", status)
    return _unmoved(
        CANCEL,
        CANCELED,
        "cancel",
        status,
        amount,
        amount_capturable,
        amount_captured,
        amount_refunded,
    )


def refund(
    status: object,
    amount: cython.longlong,
    amount_capturable: cython.longlong,
    amount_captured: cython.longlong,
    amount_refunded: cython.longlong,
    requested: object = None,
) -> Transition:
    """captured | partially_refunded -> partially_refunded | refunded."""
    f: cython.longlong
    new_refunded: cython.longlong
    _check_invariants(amount, amount_capturable, amount_captured, amount_refunded)
    if status != CAPTURED and status != PARTIALLY_REFUNDED:
        raise _illegal("refund", status)
    _check_source(status, amount_capturable, amount_captured, amount_refunded)
    f = _requested(requested, amount_captured - amount_refunded, "refundable")
    new_refunded = amount_refunded + f
    return _make(
        "refund",
        REFUNDED if new_refunded == amount_captured else PARTIALLY_REFUNDED,
        amount,
        0,
        amount_captured,
        new_refunded,
        f,
        0,
    )
