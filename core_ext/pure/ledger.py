"""Double-entry postings for payment events (TigerBeetle's two-phase model).

Authorization is a pending transfer (processor pending <- merchant pending),
capture posts part of it to receivable/available and releases the rest,
void/expiry releases it all, a refund reverses posted money.

Entries are ``(account, amount)`` with signed integer minor units: positive is
a debit, negative a credit.  Every transaction sums to zero and has no zero
entries; anything else raises ``LedgerImbalance`` (never swallowed).
All entries of one transaction share one currency (it is in the account name).
"""

import cython

from core_ext.errors import LedgerImbalance

# Relative on purpose: each build reads its own Transition (compiled/ledger.pxd cimports
# the compiled one, so its fields are C struct reads there).
from .states import Transition

MERCHANT = "merchant"
PROCESSOR = "processor"
PENDING = "pending"
AVAILABLE = "available"
RECEIVABLE = "receivable"

_BUCKETS = {MERCHANT: (PENDING, AVAILABLE), PROCESSOR: (PENDING, RECEIVABLE)}


def _check_part(name: str, value):
    # ':' separates the parts of an account name; allowing it would let two
    # different (owner, currency) pairs spell the same account.
    if not isinstance(value, str) or not value or ":" in value:
        raise ValueError(f"{name} must be a non-empty string without ':', got {value!r}")
    return 0


def account(kind: object, owner: object, currency: object, bucket: object) -> str:
    """``merchant:{id}:{currency}:pending|available`` or ``processor:{name}:{currency}:pending|receivable``."""
    buckets = _BUCKETS.get(kind)
    if buckets is None or bucket not in buckets:
        raise ValueError(f"no {bucket!r} account for kind {kind!r}")
    _check_part("owner", owner)
    _check_part("currency", currency)
    return _name(kind, owner, currency, bucket)


def _name(kind: str, owner: str, currency: str, bucket: str) -> str:
    # The one place an account name is spelled; the parts were checked by the caller.
    return f"{kind}:{owner}:{currency}:{bucket}"


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def account_pattern(kind: object, owner: object = None, bucket: object = None) -> str:
    """A SQL LIKE pattern (backslash escapes) matching accounts of ``kind``: of one owner
    and one bucket, or any (None), in any currency. E.g. one merchant's accounts for its
    balance, or every merchant's available accounts for settlement."""
    if kind not in _BUCKETS or (bucket is not None and bucket not in _BUCKETS[kind]):
        raise ValueError(f"no {bucket!r} account for kind {kind!r}")
    if owner is not None:
        _check_part("owner", owner)
    return _name(
        kind, "%" if owner is None else _like_escaped(owner), "%", "%" if bucket is None else bucket
    )


def check_balanced(entries: list) -> None:
    """Raise LedgerImbalance unless the entries sum to zero with no zero entry."""
    _check_balanced(entries)


@cython.locals(total=cython.longlong, value=cython.longlong, i=cython.Py_ssize_t)
def _check_balanced(entries: list):
    total = 0
    for i in range(len(entries)):
        entry = entries[i]
        amount = entry[1]
        # Same rejection in both builds (the compiled one could not hold a float).
        if isinstance(amount, bool) or not isinstance(amount, int) or not isinstance(entry[0], str):
            raise TypeError(f"ledger entry must be (str, int), got {entry!r}")
        value = amount
        if value == 0:
            raise LedgerImbalance(f"zero-amount ledger entry for {entry[0]}")
        total += value
    if total != 0:
        raise LedgerImbalance(f"ledger transaction does not balance: sum {total} in {entries!r}")
    return 0


@cython.locals(t=Transition)
def postings(transition: object, merchant_id: object, processor: object, currency: object) -> list:
    """The balanced entries one state Transition must post (empty when no money moved).

    A Transition of this build is read field by field as a C struct; anything else with
    ``event``, ``amount`` and ``released`` (the other build's Transition) is duck-typed.
    """
    if isinstance(transition, Transition):
        t = cython.cast(Transition, transition)
        return _postings(t.event, t.amount, t.released, merchant_id, processor, currency)
    return _postings(
        transition.event, transition.amount, transition.released, merchant_id, processor, currency
    )


def _postings(event: str, moved, released, merchant_id, processor, currency):
    _check_part("merchant_id", merchant_id)
    _check_part("processor", processor)
    _check_part("currency", currency)
    # Checked: each is a non-empty str from here on (the casts are free when compiled).
    return _entries(
        event,
        moved,
        released,
        cython.cast(str, merchant_id),
        cython.cast(str, processor),
        cython.cast(str, currency),
    )


@cython.locals(hold=cython.longlong)
def _entries(event: str, moved, released, merchant_id: str, processor: str, currency: str):
    if (
        event == "decline"
        or event == "fail"
        or event == "attach"
        or event == "confirm"
        or event == "cancel"
        or event == "expire_unconfirmed"
    ):
        # Moves of a payment that holds no money (before the processor, or after it said
        # no): nothing to post, and a Transition claiming otherwise is a bug.
        if moved != 0 or released != 0:
            raise LedgerImbalance(f"{event} cannot move money ({moved}, released {released})")
        return []
    # Direct formatting: the parts were checked once above.
    m_pending = _name(MERCHANT, merchant_id, currency, PENDING)
    p_pending = _name(PROCESSOR, processor, currency, PENDING)
    if moved <= 0 or released < 0 or (released != 0 and event != "capture"):
        raise LedgerImbalance(f"{event} with amount={moved} released={released}")
    if event == "authorize":
        entries = [(p_pending, moved), (m_pending, -moved)]
    elif event == "capture":
        hold = moved + released  # the whole hold ends; `moved` of it is posted
        entries = [
            (m_pending, hold),
            (p_pending, -hold),
            (_name(PROCESSOR, processor, currency, RECEIVABLE), moved),
            (_name(MERCHANT, merchant_id, currency, AVAILABLE), -moved),
        ]
    elif event == "void" or event == "expire":
        entries = [(m_pending, moved), (p_pending, -moved)]
    elif event == "refund":
        entries = [
            (_name(MERCHANT, merchant_id, currency, AVAILABLE), moved),
            (_name(PROCESSOR, processor, currency, RECEIVABLE), -moved),
        ]
    else:
        raise ValueError(f"unknown ledger event {event!r}")
    _check_balanced(entries)
    return entries


def expected_payment_balances(
    merchant_id: object,
    processor: object,
    currency: object,
    amount_capturable: cython.longlong,
    amount_captured: cython.longlong,
    amount_refunded: cython.longlong,
) -> dict:
    """Per-account sums a payment's entries must have; an account with no entries sums to 0."""
    settled: cython.longlong
    if amount_capturable < 0 or not (0 <= amount_refunded <= amount_captured):
        raise LedgerImbalance(
            f"impossible amounts capturable={amount_capturable} "
            f"captured={amount_captured} refunded={amount_refunded}"
        )
    settled = amount_captured - amount_refunded
    return {
        account(MERCHANT, merchant_id, currency, PENDING): -amount_capturable,
        account(MERCHANT, merchant_id, currency, AVAILABLE): -settled,
        account(PROCESSOR, processor, currency, PENDING): amount_capturable,
        account(PROCESSOR, processor, currency, RECEIVABLE): settled,
    }


def balance_differences(expected: object, actual: object) -> dict:
    """``{account: (expected, actual)}`` where they differ; a missing account counts as 0."""
    out = {}
    for name in sorted(set(expected) | set(actual)):
        want = expected.get(name, 0)
        got = actual.get(name, 0)
        if want != got:
            out[name] = (want, got)
    return out


def balance_view(account_sums: object) -> list:
    """``[{"currency", "pending", "available"}]`` by currency from one merchant's account sums.

    Processor accounts are ignored; accounts of two merchants raise ValueError
    (mixing them would show one merchant another's money).
    """
    merchant = None
    by_currency = {}
    for name, total in account_sums.items():
        parts = name.split(":")
        if len(parts) != 4:
            raise ValueError(f"not a ledger account name: {name!r}")
        kind, owner, currency, bucket = parts
        if kind != MERCHANT:
            continue
        if merchant is None:
            merchant = owner
        elif owner != merchant:
            raise ValueError(f"accounts of two merchants: {merchant!r} and {owner!r}")
        if bucket not in (PENDING, AVAILABLE):
            raise ValueError(f"unknown merchant bucket in {name!r}")
        row = by_currency.get(currency)
        if row is None:
            row = by_currency[currency] = {"currency": currency, PENDING: 0, AVAILABLE: 0}
        row[bucket] = -total  # merchant accounts are credit-normal
    return [by_currency[c] for c in sorted(by_currency)]


@cython.locals(i=cython.Py_ssize_t)
def entry_columns(postings_per_txn: list) -> tuple:
    """Flatten many transactions' entries into (txn_index, account, amount) columns.

    Shaped for ``INSERT ... SELECT FROM unnest($1::int[], $2::text[], $3::bigint[])``;
    each transaction is checked for balance here, the last stop before the database.
    """
    txn_index = []
    accounts = []
    amounts = []
    for i in range(len(postings_per_txn)):
        entries = postings_per_txn[i]
        _check_balanced(entries)
        for name, amount in entries:
            txn_index.append(i)
            accounts.append(name)
            amounts.append(amount)
    return txn_index, accounts, amounts
