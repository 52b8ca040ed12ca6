"""Reading the books: ledger verification and settlement reports.

``verify`` re-derives everything from the entries and names each culprit;
the settlement report is computed from the ledger, never from payment rows,
so it matches the ledger to the cent by construction.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone

import asyncpg

import core_ext
from gateway.store import ledger
from gateway.store import payments as payment_rows


@dataclass
class Verification:
    transactions: int = 0
    entries: int = 0
    payments: int = 0
    currencies: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return (
                f"ledger ok: {self.transactions} transactions, {self.entries} entries, "
                f"{self.payments} payments agree; every currency sums to zero "
                f"({', '.join(self.currencies) or 'none'})"
            )
        return f"ledger BROKEN: {len(self.problems)} problem(s)"


async def verify(conn: asyncpg.Connection) -> Verification:
    """Check every invariant of the books; read in one snapshot."""
    result = Verification()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        result.transactions, result.entries = await ledger.counts(conn)
        result.problems += await verify_balances(conn, result.currencies)
        await _verify_payments(conn, result)
    return result


async def verify_balances(
    conn: asyncpg.Connection, currencies: list[str] | None = None
) -> list[str]:
    """Every transaction and every currency sums to zero; the problems found.

    Cheap enough for the gateway's periodic check (two aggregates, no per-payment
    work); run it inside a snapshot transaction for a consistent answer."""
    problems: list[str] = []
    currencies = [] if currencies is None else currencies
    for row in await ledger.transaction_imbalances(conn):
        if row["total"]:
            problems.append(
                f"transaction {row['transaction_id']} does not balance: "
                f"entries sum to {row['total']:+d}"
            )
        if row["wrong_currency"]:
            problems.append(f"transaction {row['transaction_id']} has entries in another currency")
    for row in await ledger.currency_totals(conn):
        currencies.append(row["currency"])
        if row["total"]:
            problems.append(f"currency {row['currency']} does not sum to zero: {row['total']:+d}")
    return problems


async def _verify_payments(conn: asyncpg.Connection, result: Verification) -> None:
    sums = await ledger.account_sums_by_payment(conn)
    payments = await payment_rows.amounts_of_all(conn)
    result.payments = len(payments)
    for payment in payments:
        expected = core_ext.ledger.expected_payment_balances(
            payment["merchant_id"],
            payment["processor"],
            payment["currency"],
            payment["amount_capturable"],
            payment["amount_captured"],
            payment["amount_refunded"],
        )
        actual = sums.pop(payment["id"], {})
        differences = core_ext.ledger.balance_differences(expected, actual)
        for account, (want, have) in differences.items():
            result.problems.append(
                f"payment {payment['id']}: account {account} holds {have:+d}, "
                f"its amounts say {want:+d}"
            )
    for payment_id in sorted(sums):
        result.problems.append(f"ledger entries for unknown payment {payment_id}")


# --- settlement -------------------------------------------------------------------

SETTLEMENT_COLUMNS = (
    "date",
    "merchant_id",
    "currency",
    "captured_amount",
    "captured_count",
    "refunded_amount",
    "refunded_count",
    "net_amount",
)


async def settlement(
    conn: asyncpg.Connection | asyncpg.Pool, day: date, merchant_id: str | None = None
) -> list[dict]:
    """Per merchant and currency: what was captured and refunded on ``day`` (UTC)."""
    start = datetime.combine(day, time(0), tzinfo=timezone.utc)
    rows = await ledger.settlement_rows(conn, start, merchant_id)
    report: dict[tuple[str, str], dict] = {}
    for row in rows:
        line = report.setdefault(
            (row["merchant_id"], row["currency"]),
            {
                "date": day.isoformat(),
                "merchant_id": row["merchant_id"],
                "currency": row["currency"],
                "captured_amount": 0,
                "captured_count": 0,
                "refunded_amount": 0,
                "refunded_count": 0,
                "net_amount": 0,
            },
        )
        if row["event"] == "capture":
            line["captured_amount"] += row["credited"]
            line["captured_count"] += row["n"]
        else:  # a refund debits the merchant's available balance
            line["refunded_amount"] -= row["credited"]
            line["refunded_count"] += row["n"]
        line["net_amount"] = line["captured_amount"] - line["refunded_amount"]
    return [report[k] for k in sorted(report)]


def settlement_csv(lines: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=SETTLEMENT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    return out.getvalue()
