"""Double-entry postings (core_ext.*.ledger) together with the state machine, on both builds."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_ext.errors import CoreError, LedgerImbalance
from tests.core.conftest import load

BUILDS = ("compiled", "pure")
PROP = settings(max_examples=200, deadline=None)
M, P, CUR = "mer_1", "sandbox", "EUR"
MP, MA = "merchant:mer_1:EUR:pending", "merchant:mer_1:EUR:available"
PP, PR = "processor:sandbox:EUR:pending", "processor:sandbox:EUR:receivable"


@pytest.fixture(params=BUILDS, scope="module")
def build(request):
    return load(request.param, "states"), load(request.param, "ledger")


@pytest.fixture(scope="module")
def ledger(build):
    return build[1]


@pytest.fixture(scope="module")
def states(build):
    return build[0]


@pytest.fixture(scope="module")
def both():
    return {k: (load(k, "states"), load(k, "ledger")) for k in BUILDS}


def test_account_names(ledger):
    assert ledger.account("merchant", "mer_1", "EUR", "pending") == MP
    assert ledger.account("merchant", "mer_1", "EUR", "available") == MA
    assert ledger.account("processor", "sandbox", "EUR", "pending") == PP
    assert ledger.account("processor", "sandbox", "EUR", "receivable") == PR


@pytest.mark.parametrize(
    "args",
    [
        ("merchant", "mer_1", "EUR", "receivable"),
        ("processor", "sandbox", "EUR", "available"),
        ("bank", "x", "EUR", "pending"),
        ("merchant", "mer:1", "EUR", "pending"),
        ("merchant", "mer_1", "EU:R", "pending"),
        ("merchant", "", "EUR", "pending"),
        ("merchant", "mer_1", "", "pending"),
    ],
)
def test_account_rejects_ambiguous_or_unknown(ledger, args):
    with pytest.raises(ValueError):
        ledger.account(*args)


def test_postings_for_each_event(states, ledger):
    auth = states.settle_authorization("approved", 1000)
    assert ledger.postings(auth, M, P, CUR) == [(PP, 1000), (MP, -1000)]
    cap = states.capture("authorized", 1000, 1000, 0, 0, 700)
    assert ledger.postings(cap, M, P, CUR) == [(MP, 1000), (PP, -1000), (PR, 700), (MA, -700)]
    full = states.capture("authorized", 1000, 1000, 0, 0, None)
    assert ledger.postings(full, M, P, CUR) == [(MP, 1000), (PP, -1000), (PR, 1000), (MA, -1000)]
    for op in ("void", "expire"):
        t = getattr(states, op)("authorized", 1000, 1000, 0, 0)
        assert ledger.postings(t, M, P, CUR) == [(MP, 1000), (PP, -1000)]
    ref = states.refund("captured", 1000, 0, 700, 0, 200)
    assert ledger.postings(ref, M, P, CUR) == [(MA, 200), (PR, -200)]
    for outcome in ("declined", "failed"):
        assert ledger.postings(states.settle_authorization(outcome, 1000), M, P, CUR) == []


@pytest.mark.parametrize(
    "fields",
    [
        ("authorize", "authorized", 0, 0, 0, 0, 0),  # zero money
        ("authorize", "authorized", 5, 0, 0, -5, 0),  # negative money
        ("decline", "declined", 0, 0, 0, 5, 0),  # a decline moving money
        ("void", "voided", 0, 0, 0, 5, 3),  # release outside a capture
        ("capture", "captured", 0, 5, 0, 5, -1),  # negative release
        ("refund", "refunded", 0, 5, 5, 0, 0),  # empty refund
    ],
)
def test_forged_transitions_raise_ledger_imbalance(states, ledger, fields):
    with pytest.raises(LedgerImbalance):
        ledger.postings(states.Transition(*fields), M, P, CUR)


def test_unknown_event(states, ledger):
    with pytest.raises(ValueError):
        ledger.postings(states.Transition("chargeback", "captured", 0, 5, 0, 5, 0), M, P, CUR)


def test_postings_rejects_bad_account_parts(states, ledger):
    t = states.settle_authorization("approved", 10)
    with pytest.raises(ValueError):
        ledger.postings(t, "mer:1", P, CUR)


def test_check_balanced(ledger):
    ledger.check_balanced([])
    ledger.check_balanced([(PP, 5), (MP, -3), (MA, -2)])
    with pytest.raises(LedgerImbalance):
        ledger.check_balanced([(PP, 5), (MP, -4)])
    with pytest.raises(LedgerImbalance):
        ledger.check_balanced([(PP, 5), (MP, -5), (MA, 0)])
    with pytest.raises(TypeError):
        ledger.check_balanced([(PP, 5.0), (MP, -5.0)])
    with pytest.raises(TypeError):
        ledger.check_balanced([(PP, True), (MP, -1)])


def test_expected_payment_balances(ledger):
    assert ledger.expected_payment_balances(M, P, CUR, 300, 700, 200) == {
        MP: -300,
        MA: -500,
        PP: 300,
        PR: 500,
    }
    with pytest.raises(LedgerImbalance):
        ledger.expected_payment_balances(M, P, CUR, 0, 100, 101)
    with pytest.raises(LedgerImbalance):
        ledger.expected_payment_balances(M, P, CUR, -1, 0, 0)


def test_balance_differences(ledger):
    expected = {MP: 0, MA: -5, PP: 0, PR: 5}
    assert ledger.balance_differences(expected, {MA: -5, PR: 5}) == {}
    assert ledger.balance_differences(expected, {MA: -5, PR: 4, "x": 1}) == {
        PR: (5, 4),
        "x": (0, 1),
    }


def test_balance_view(ledger):
    sums = {
        "merchant:mer_1:USD:pending": -100,
        "merchant:mer_1:EUR:available": -250,
        "merchant:mer_1:EUR:pending": -40,
        "merchant:mer_1:JPY:available": -7,
        "processor:sandbox:EUR:pending": 40,
    }
    assert ledger.balance_view(sums) == [
        {"currency": "EUR", "pending": 40, "available": 250},
        {"currency": "JPY", "pending": 0, "available": 7},
        {"currency": "USD", "pending": 100, "available": 0},
    ]
    assert ledger.balance_view({}) == []
    with pytest.raises(ValueError):
        ledger.balance_view({MP: -1, "merchant:mer_2:EUR:pending": -1})
    with pytest.raises(ValueError):
        ledger.balance_view({"merchant:mer_1:EUR:receivable": 1})
    with pytest.raises(ValueError):
        ledger.balance_view({"nonsense": 1})


def test_entry_columns(ledger):
    txns = [[(PP, 10), (MP, -10)], [], [(MA, 3), (PR, -3)]]
    assert ledger.entry_columns(txns) == ([0, 0, 2, 2], [PP, MP, MA, PR], [10, -10, 3, -3])
    assert ledger.entry_columns([]) == ([], [], [])
    with pytest.raises(LedgerImbalance):
        ledger.entry_columns([[(PP, 10), (MP, -10)], [(PP, 1)]])


# ---- random operation sequences: states and ledger stay in step -------------------------

LEGAL_FROM = {
    "capture": {"authorized"},
    "void": {"authorized"},
    "expire": {"authorized"},
    "refund": {"captured", "partially_refunded"},
}
EVENT = {"capture": "capture", "void": "void", "expire": "expire", "refund": "refund"}

operations = st.lists(
    st.tuples(st.sampled_from(sorted(LEGAL_FROM)), st.none() | st.integers(-2, 110)),
    max_size=12,
)


def run_sequence(states, ledger, outcome, amount, ops, on_step=None):
    """Apply ops, checking every invariant after each step; returns the transitions."""
    sums = Counter()
    t = states.settle_authorization(outcome, amount)
    done = [t]

    def post(t):
        entries = ledger.postings(t, M, P, CUR)
        ledger.check_balanced(entries)
        assert sum(a for _, a in entries) == 0 and all(a != 0 for _, a in entries)
        for name, a in entries:
            sums[name] += a
        expected = ledger.expected_payment_balances(
            M, P, CUR, t.amount_capturable, t.amount_captured, t.amount_refunded
        )
        assert ledger.balance_differences(expected, sums) == {}
        assert sum(sums.values()) == 0
        assert 0 <= t.amount_refunded <= t.amount_captured <= amount
        assert 0 <= t.amount_capturable <= amount - t.amount_captured
        view = ledger.balance_view(sums)
        if view:
            assert view == [
                {
                    "currency": CUR,
                    "pending": t.amount_capturable,
                    "available": t.amount_captured - t.amount_refunded,
                }
            ]

    post(t)
    for op, requested in ops:
        before = t
        extra = (requested,) if op in ("capture", "refund") else ()
        limit = (
            before.amount_capturable
            if op != "refund"
            else (before.amount_captured - before.amount_refunded)
        )
        try:
            t = getattr(states, op)(
                before.status,
                amount,
                before.amount_capturable,
                before.amount_captured,
                before.amount_refunded,
                *extra,
            )
        except CoreError as exc:
            if before.status not in LEGAL_FROM[op]:
                assert (exc.code, exc.status) == ("payment_state_invalid", 409)
            elif requested is not None and requested < 1:
                assert (exc.code, exc.status, exc.param) == ("amount_too_small", 400, "amount")
            else:
                assert (exc.code, exc.status, exc.param) == ("amount_too_large", 400, "amount")
                assert requested > limit
            t = before
            continue
        assert before.status in LEGAL_FROM[op]
        assert t.event == EVENT[op]
        assert t.amount == (limit if not extra or requested is None else requested)
        if op == "capture":
            assert t.amount + t.released == before.amount_capturable
        post(t)
        done.append(t)
    return done


@PROP
@given(
    outcome=st.sampled_from(("approved", "declined", "failed")),
    amount=st.integers(1, 100),
    ops=operations,
)
def test_random_sequences_keep_ledger_in_step(build, outcome, amount, ops):
    states, ledger = build
    run_sequence(states, ledger, outcome, amount, ops)


@PROP
@given(amount=st.integers(1, 100), refunds=st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_refunds_never_exceed_capture(build, amount, refunds):
    states, ledger = build
    ops = [("capture", None)] + [("refund", r) for r in refunds]
    done = run_sequence(states, ledger, "approved", amount, ops)
    assert sum(t.amount for t in done if t.event == "refund") <= amount


# ---- compiled and pure agree ------------------------------------------------------------


@PROP
@given(
    outcome=st.sampled_from(("approved", "declined", "failed")),
    amount=st.integers(1, 10**8),
    ops=operations,
    merchant=st.text(st.characters(blacklist_characters=":"), min_size=1, max_size=12),
    currency=st.sampled_from(("EUR", "JPY", "KWD")),
)
def test_parity_postings(both, outcome, amount, ops, merchant, currency):
    pure_states, pure_ledger = both["pure"]
    compiled_states, compiled_ledger = both["compiled"]
    pure_run = run_sequence(pure_states, pure_ledger, outcome, amount, ops)
    compiled_run = run_sequence(compiled_states, compiled_ledger, outcome, amount, ops)
    assert [t.as_dict() for t in pure_run] == [t.as_dict() for t in compiled_run]
    pure_posts = [pure_ledger.postings(t, merchant, P, currency) for t in pure_run]
    # The compiled ledger also accepts the other build's Transition (duck-typed).
    assert pure_posts == [compiled_ledger.postings(t, merchant, P, currency) for t in compiled_run]
    assert pure_posts == [compiled_ledger.postings(t, merchant, P, currency) for t in pure_run]
    assert pure_ledger.entry_columns(pure_posts) == compiled_ledger.entry_columns(pure_posts)
    last = pure_run[-1]
    args = (
        merchant,
        P,
        currency,
        last.amount_capturable,
        last.amount_captured,
        last.amount_refunded,
    )
    assert pure_ledger.expected_payment_balances(
        *args
    ) == compiled_ledger.expected_payment_balances(*args)


def test_account_pattern_spells_accounts_as_account_does(core):
    lg = core.ledger
    assert lg.account_pattern(lg.MERCHANT, "mer_a%b") == r"merchant:mer\_a\%b:%:%"
    assert lg.account_pattern(lg.MERCHANT, None, lg.AVAILABLE) == "merchant:%:%:available"
    # The pattern's fixed parts are exactly account()'s.
    name = lg.account(lg.MERCHANT, "mer_x", "EUR", lg.AVAILABLE)
    assert name.startswith(lg.account_pattern(lg.MERCHANT, "mer_x").replace("\\", "")[:-4])
    with pytest.raises(ValueError):
        lg.account_pattern(lg.PROCESSOR, None, lg.AVAILABLE)
    with pytest.raises(ValueError):
        lg.account_pattern(lg.MERCHANT, "a:b")
