"""The payment state machine (core_ext.*.states), on both builds."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_ext.errors import CoreError, LedgerImbalance
from tests.core.conftest import load

BUILDS = ("compiled", "pure")
PROP = settings(max_examples=200, deadline=None)


@pytest.fixture(params=BUILDS, scope="module")
def states(request):
    return load(request.param, "states")


@pytest.fixture(scope="module")
def both():
    return load("compiled", "states"), load("pure", "states")


ALL = (
    "requires_payment_method",
    "requires_confirmation",
    "processing",
    "authorized",
    "declined",
    "failed",
    "captured",
    "partially_refunded",
    "refunded",
    "voided",
    "expired",
    "canceled",
)
OPS = ("capture", "void", "expire", "refund", "attach_payment_method", "confirm", "cancel")
# The operations' names in the 409's message ("cannot <verb> a payment that is ...").
VERBS = {"attach_payment_method": "attach a payment method to"}

# A consistent (amount, capturable, captured, refunded) for every status.
AMOUNTS = {
    "requires_payment_method": (100, 0, 0, 0),
    "requires_confirmation": (100, 0, 0, 0),
    "processing": (100, 0, 0, 0),
    "authorized": (100, 100, 0, 0),
    "declined": (100, 0, 0, 0),
    "failed": (100, 0, 0, 0),
    "captured": (100, 0, 80, 0),
    "partially_refunded": (100, 0, 80, 30),
    "refunded": (100, 0, 80, 80),
    "voided": (100, 0, 0, 0),
    "expired": (100, 0, 0, 0),
    "canceled": (100, 0, 0, 0),
}


# A move between states that hold no money: every amount stays zero, nothing is moved.
def unmoved(event: str, status: str) -> dict:
    return dict(
        event=event,
        status=status,
        amount_capturable=0,
        amount_captured=0,
        amount_refunded=0,
        amount=0,
        released=0,
    )


# The only legal moves (requested=None: everything) and exactly what they return.
LEGAL = {
    ("authorized", "capture"): dict(
        event="capture",
        status="captured",
        amount_capturable=0,
        amount_captured=100,
        amount_refunded=0,
        amount=100,
        released=0,
    ),
    ("authorized", "void"): dict(
        event="void",
        status="voided",
        amount_capturable=0,
        amount_captured=0,
        amount_refunded=0,
        amount=100,
        released=0,
    ),
    ("authorized", "expire"): dict(
        event="expire",
        status="expired",
        amount_capturable=0,
        amount_captured=0,
        amount_refunded=0,
        amount=100,
        released=0,
    ),
    ("captured", "refund"): dict(
        event="refund",
        status="refunded",
        amount_capturable=0,
        amount_captured=80,
        amount_refunded=80,
        amount=80,
        released=0,
    ),
    ("partially_refunded", "refund"): dict(
        event="refund",
        status="refunded",
        amount_capturable=0,
        amount_captured=80,
        amount_refunded=80,
        amount=50,
        released=0,
    ),
    # Before the processor, and a new attempt after a decline or a failure (API.md).
    ("requires_payment_method", "attach_payment_method"): unmoved(
        "attach", "requires_confirmation"
    ),
    ("requires_payment_method", "cancel"): unmoved("cancel", "canceled"),
    ("requires_payment_method", "expire"): unmoved("expire_unconfirmed", "expired"),
    ("requires_confirmation", "confirm"): unmoved("confirm", "processing"),
    ("requires_confirmation", "cancel"): unmoved("cancel", "canceled"),
    ("requires_confirmation", "expire"): unmoved("expire_unconfirmed", "expired"),
    ("declined", "confirm"): unmoved("confirm", "processing"),
    ("declined", "cancel"): unmoved("cancel", "canceled"),
    ("failed", "confirm"): unmoved("confirm", "processing"),
    ("failed", "cancel"): unmoved("cancel", "canceled"),
}


def call(states, op, status, amounts, requested=None):
    fn = getattr(states, op)
    if op in ("capture", "refund"):
        return fn(status, *amounts, requested)
    return fn(status, *amounts)


def test_status_constants(states):
    for name in ALL:
        assert getattr(states, name.upper()) == name
    assert states.STATUSES == ALL


@pytest.mark.parametrize(
    "outcome, expected",
    [
        (
            "approved",
            dict(
                event="authorize",
                status="authorized",
                amount_capturable=500,
                amount_captured=0,
                amount_refunded=0,
                amount=500,
                released=0,
            ),
        ),
        (
            "declined",
            dict(
                event="decline",
                status="declined",
                amount_capturable=0,
                amount_captured=0,
                amount_refunded=0,
                amount=0,
                released=0,
            ),
        ),
        (
            "failed",
            dict(
                event="fail",
                status="failed",
                amount_capturable=0,
                amount_captured=0,
                amount_refunded=0,
                amount=0,
                released=0,
            ),
        ),
    ],
)
def test_settle_authorization(states, outcome, expected):
    t = states.settle_authorization(outcome, 500)
    assert t.as_dict() == expected
    assert (t.event, t.status, t.amount) == (
        expected["event"],
        expected["status"],
        expected["amount"],
    )


@pytest.mark.parametrize("outcome", ["APPROVED", "approve", "", "timeout"])
def test_settle_authorization_unknown_outcome(states, outcome):
    with pytest.raises(ValueError):
        states.settle_authorization(outcome, 500)


def test_settle_authorization_needs_positive_amount(states):
    with pytest.raises(ValueError):
        states.settle_authorization("approved", 0)


@pytest.mark.parametrize("status", ALL)
@pytest.mark.parametrize("op", OPS)
def test_every_status_and_operation(states, status, op):
    amounts = AMOUNTS[status]
    expected = LEGAL.get((status, op))
    if expected is not None:
        assert call(states, op, status, amounts).as_dict() == expected
        return
    with pytest.raises(CoreError) as info:
        call(states, op, status, amounts)
    assert info.value.as_tuple() == (
        409,
        "invalid_request_error",
        "payment_state_invalid",
        None,
        f"cannot {VERBS.get(op, op)} a payment that is {status}",
    )


def test_legal_table_covers_exactly_the_api_moves():
    assert set(LEGAL) == {
        ("requires_payment_method", "attach_payment_method"),
        ("requires_payment_method", "cancel"),
        ("requires_payment_method", "expire"),
        ("requires_confirmation", "confirm"),
        ("requires_confirmation", "cancel"),
        ("requires_confirmation", "expire"),
        ("declined", "confirm"),
        ("declined", "cancel"),
        ("failed", "confirm"),
        ("failed", "cancel"),
        ("authorized", "capture"),
        ("authorized", "void"),
        ("authorized", "expire"),
        ("captured", "refund"),
        ("partially_refunded", "refund"),
    }


def test_partial_capture_releases_the_remainder(states):
    t = states.capture("authorized", 1000, 1000, 0, 0, 700)
    assert t.as_dict() == dict(
        event="capture",
        status="captured",
        amount_capturable=0,
        amount_captured=700,
        amount_refunded=0,
        amount=700,
        released=300,
    )


def test_capture_exactly_capturable_releases_nothing(states):
    t = states.capture("authorized", 1000, 1000, 0, 0, 1000)
    assert (t.amount, t.released, t.amount_captured) == (1000, 0, 1000)


def test_only_one_capture(states):
    t = states.capture("authorized", 1000, 1000, 0, 0, 400)
    with pytest.raises(CoreError) as info:
        states.capture(
            t.status, 1000, t.amount_capturable, t.amount_captured, t.amount_refunded, 100
        )
    assert info.value.code == "payment_state_invalid"
    assert info.value.message == "cannot capture a payment that is captured"


@pytest.mark.parametrize("requested", [1001, 10**12, 10**30])
def test_capture_over_capturable(states, requested):
    with pytest.raises(CoreError) as info:
        states.capture("authorized", 1000, 1000, 0, 0, requested)
    assert info.value.as_tuple() == (
        400,
        "invalid_request_error",
        "amount_too_large",
        "amount",
        f"amount {requested} exceeds the capturable amount 1000",
    )


@pytest.mark.parametrize(
    "op, status, amounts",
    [
        ("capture", "authorized", (1000, 1000, 0, 0)),
        ("refund", "captured", (1000, 0, 1000, 0)),
        ("refund", "partially_refunded", (1000, 0, 1000, 10)),
    ],
)
@pytest.mark.parametrize("requested", [0, -1, -(10**30)])
def test_non_positive_amount(states, op, status, amounts, requested):
    with pytest.raises(CoreError) as info:
        call(states, op, status, amounts, requested)
    assert info.value.as_tuple()[:4] == (400, "invalid_request_error", "amount_too_small", "amount")


@pytest.mark.parametrize("requested", [True, 1.0, "5"])
def test_requested_must_be_int(states, requested):
    with pytest.raises(TypeError):
        states.capture("authorized", 1000, 1000, 0, 0, requested)


def test_partial_refunds_up_to_captured(states):
    amount, capturable, captured, refunded = 1000, 0, 600, 0
    status = "captured"
    for step, expected_status in [
        (100, "partially_refunded"),
        (200, "partially_refunded"),
        (300, "refunded"),
    ]:
        t = states.refund(status, amount, capturable, captured, refunded, step)
        assert (t.event, t.status, t.amount, t.released) == ("refund", expected_status, step, 0)
        assert t.amount_captured == 600 and t.amount_capturable == 0
        assert t.amount_refunded == refunded + step
        status, refunded = t.status, t.amount_refunded
    assert refunded == 600
    with pytest.raises(CoreError) as info:
        states.refund(status, amount, capturable, captured, refunded, 1)
    assert info.value.as_tuple()[:3] == (409, "invalid_request_error", "payment_state_invalid")
    assert info.value.message == "cannot refund a payment that is refunded"


def test_refund_over_remaining(states):
    with pytest.raises(CoreError) as info:
        states.refund("partially_refunded", 1000, 0, 600, 550, 51)
    assert info.value.as_tuple() == (
        400,
        "invalid_request_error",
        "amount_too_large",
        "amount",
        "amount 51 exceeds the refundable amount 50",
    )
    t = states.refund("partially_refunded", 1000, 0, 600, 550, 50)
    assert t.status == "refunded"


def test_refund_none_refunds_the_rest(states):
    t = states.refund("partially_refunded", 1000, 0, 600, 250, None)
    assert (t.status, t.amount, t.amount_refunded) == ("refunded", 350, 600)


@pytest.mark.parametrize("requested", [-5, 0, 10**30, None])
def test_state_is_checked_before_amount(states, requested):
    for status in ("voided", "expired", "processing", "declined", "requires_confirmation"):
        with pytest.raises(CoreError) as info:
            states.capture(status, 1000, 0, 0, 0, requested)
        assert info.value.code == "payment_state_invalid"
    with pytest.raises(CoreError) as info:
        states.refund("authorized", 1000, 1000, 0, 0, requested)
    assert info.value.code == "payment_state_invalid"


@pytest.mark.parametrize(
    "op, status, amounts",
    [
        ("capture", "authorized", (100, 100, 101, 0)),  # captured > amount
        ("refund", "captured", (100, 0, 50, 60)),  # refunded > captured
        ("void", "authorized", (100, 101, 0, 0)),  # capturable > amount
        ("refund", "captured", (100, 0, 50, -1)),  # negative
        ("expire", "authorized", (100, -1, 0, 0)),  # negative capturable
        ("capture", "voided", (100, 60, 60, 0)),  # capturable + captured > amount
        ("capture", "authorized", (100, 0, 0, 0)),  # authorized with nothing held
        ("void", "authorized", (100, 50, 50, 0)),  # authorized but already captured
        ("refund", "captured", (100, 0, 80, 10)),  # "captured" with refunds
        ("refund", "captured", (100, 0, 0, 0)),  # captured nothing
        ("refund", "partially_refunded", (100, 0, 80, 80)),  # nothing left yet "partially"
        ("refund", "partially_refunded", (100, 0, 80, 0)),  # no refunds yet "partially"
        ("confirm", "declined", (100, 10, 0, 0)),  # a decline holding money
        ("confirm", "requires_confirmation", (0, 0, 0, 0)),  # a payment of nothing
        ("cancel", "failed", (100, 0, 20, 0)),  # a failure that captured
        ("cancel", "requires_payment_method", (100, 5, 0, 0)),  # held before the processor
        ("attach_payment_method", "requires_payment_method", (100, 0, 0, -1)),  # negative
        ("expire", "requires_confirmation", (100, 100, 0, 0)),  # held before the processor
    ],
)
def test_impossible_amounts_raise_ledger_imbalance(states, op, status, amounts):
    with pytest.raises(LedgerImbalance):
        call(states, op, status, amounts, 1)
    assert not issubclass(LedgerImbalance, CoreError)  # never turned into a 4xx


@pytest.mark.parametrize("op", OPS)
def test_unknown_status(states, op):
    with pytest.raises(ValueError):
        call(states, op, "settled", (100, 0, 0, 0), 1)


def test_transition_constructor_and_repr(states):
    t = states.Transition("refund", "partially_refunded", 0, 80, 30, 30, 0)
    assert t.as_dict() == dict(
        event="refund",
        status="partially_refunded",
        amount_capturable=0,
        amount_captured=80,
        amount_refunded=30,
        amount=30,
        released=0,
    )
    assert repr(t).startswith("Transition(event='refund', status='partially_refunded'")


# ---- compiled and pure agree ------------------------------------------------------------


def outcome(fn, *args):
    try:
        return ("ok", fn(*args).as_dict())
    except CoreError as exc:
        return ("CoreError", exc.as_tuple())
    except (LedgerImbalance, ValueError, TypeError) as exc:
        return (type(exc).__name__, str(exc))


small = st.integers(-3, 130)


@PROP
@given(
    op=st.sampled_from(OPS),
    status=st.sampled_from((*ALL, "bogus")),
    amounts=st.tuples(small, small, small, small),
    requested=st.none() | small | st.integers(-(2**70), 2**70),
)
def test_parity_operations(both, op, status, amounts, requested):
    compiled, pure = both
    args = (status, *amounts) + ((requested,) if op in ("capture", "refund") else ())
    assert outcome(getattr(compiled, op), *args) == outcome(getattr(pure, op), *args)


@PROP
@given(
    op=st.sampled_from(OPS),
    status=st.sampled_from(("authorized", "captured", "partially_refunded")),
    amount=st.integers(1, 10**8),
    data=st.data(),
)
def test_parity_on_consistent_states(both, op, status, amount, data):
    # Random states that pass the invariants, so the success paths are compared too.
    compiled, pure = both
    if status == "authorized":
        amounts = (amount, amount, 0, 0)
    else:
        captured = data.draw(st.integers(1, amount))
        refunded = (
            0
            if status == "captured"
            else data.draw(st.integers(1, captured - 1))
            if captured > 1
            else 0
        )
        if status == "partially_refunded" and refunded == 0:
            status = "captured"
        amounts = (amount, 0, captured, refunded)
    requested = data.draw(st.none() | st.integers(-1, amount + 1))
    args = (status, *amounts) + ((requested,) if op in ("capture", "refund") else ())
    assert outcome(getattr(compiled, op), *args) == outcome(getattr(pure, op), *args)


@PROP
@given(
    outcome_=st.sampled_from(("approved", "declined", "failed", "nope")),
    amount=st.integers(-5, 10**8),
)
def test_parity_settle(both, outcome_, amount):
    compiled, pure = both
    assert outcome(compiled.settle_authorization, outcome_, amount) == outcome(
        pure.settle_authorization, outcome_, amount
    )


def test_str_subclass_statuses_accepted(states):
    # e.g. a StrEnum on the gateway side: both builds must treat it as its value.
    class Status(str):
        pass

    t = states.capture(Status("authorized"), 100, 100, 0, 0, 40)
    assert (t.status, t.released) == ("captured", 60)
    with pytest.raises(CoreError) as info:
        states.void(Status("voided"), 100, 0, 0, 0)
    assert info.value.message == "cannot void a payment that is voided"


# ---- the states before the processor, and new attempts ----------------------------------

NO_MONEY = ("requires_payment_method", "requires_confirmation", "declined", "failed")
NO_MONEY_OPS = ("attach_payment_method", "confirm", "cancel", "expire")


@PROP
@given(
    op=st.sampled_from(NO_MONEY_OPS),
    status=st.sampled_from(NO_MONEY),
    amount=st.integers(1, 10**8),
)
def test_moves_without_money_keep_every_amount_zero(both, op, status, amount):
    compiled, pure = both
    got = outcome(getattr(compiled, op), status, amount, 0, 0, 0)
    assert got == outcome(getattr(pure, op), status, amount, 0, 0, 0)
    if (status, op) in LEGAL:
        assert got == ("ok", {**LEGAL[(status, op)]})
    else:
        assert got[0] == "CoreError" and got[1][:3] == (
            409,
            "invalid_request_error",
            "payment_state_invalid",
        )


@pytest.mark.parametrize("build", BUILDS)
@PROP
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from((*OPS, "settle")),
            st.sampled_from(("approved", "declined", "failed")),
            st.none() | st.integers(1, 10**8),
        ),
        max_size=12,
    ),
    amount=st.integers(1, 10**8),
    start=st.sampled_from(("requires_payment_method", "requires_confirmation")),
)
def test_walks_from_before_the_processor(build, steps, amount, start):
    """Any sequence of operations on a payment created without a card: only API.md's moves
    succeed, the amounts stay consistent, and the ledger's postings of every move sum to
    exactly the balances the payment's amounts imply (nothing before the processor)."""
    states, ledger = load(build, "states"), load(build, "ledger")
    status, capturable, captured, refunded = start, 0, 0, 0
    sums: dict[str, int] = {}
    for op, result, requested in steps:
        before = status
        try:
            if op == "settle":
                if status != "processing":
                    continue  # only the processor's answer settles a processing payment
                t = states.settle_authorization(result, amount)
            else:
                t = call(states, op, status, (amount, capturable, captured, refunded), requested)
        except CoreError as exc:
            assert (before, op) not in LEGAL or exc.code != "payment_state_invalid"
            continue
        assert op == "settle" or (before, op) in LEGAL
        status = t.status
        capturable, captured, refunded = t.amount_capturable, t.amount_captured, t.amount_refunded
        assert 0 <= refunded <= captured <= amount and 0 <= capturable <= amount - captured
        entries = ledger.postings(t, "mer_1", "sandbox", "EUR")
        if before in NO_MONEY or status in ("processing", "declined", "failed"):
            assert entries == [] and t.amount == 0 and t.released == 0
        for name, value in entries:
            sums[name] = sums.get(name, 0) + value
    expected = ledger.expected_payment_balances(
        "mer_1", "sandbox", "EUR", capturable, captured, refunded
    )
    assert ledger.balance_differences(expected, sums) == {}
