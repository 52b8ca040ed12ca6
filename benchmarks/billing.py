"""Renewal throughput: N subscriptions on one test clock advanced by one month.

    python -m benchmarks.billing                      # 10,000 subscriptions, 2 workers
    python -m benchmarks.billing --subscriptions 2000 # smaller
    python -m benchmarks.billing --subscriptions 1000 --months 12   # a year of renewals

One run, one machine, one fresh embedded PostgreSQL, one `kassa serve`:
  1. authorizations/s: wrk's closed loop (benchmarks/closedloop.py, -c64) of
     POST /v1/payments for --auth-seconds, the API's authorization path;
  2. N customers, each with its own saved card and a monthly subscription on one test
     clock, written straight into the database (the setup is not what is measured: over
     HTTP it would be 4N requests and the first period's N charges);
  3. the clock advanced by one month through the API; renewals/s = the renewals run (one
     invoice and one off-session, automatically captured payment each) over the seconds
     from the advance to the clock's status ready.
The ratio renewals/s : authorizations/s is the headline (issue 17's target: >= 0.5, a
renewal being an authorization, a capture and an invoice). Then every invoice is checked
paid by its own captured payment and `kassa ledger verify` must pass.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson

import core_ext
from benchmarks import closedloop
from benchmarks.scenarios import Target
from benchmarks.targets import ABUSE_LIMITS_NEVER_HIT, READY_TIMEOUT_S, STOP_TIMEOUT_S
from gateway import testing
from gateway.cards import CardVault, load_master_key
from gateway.ids import new_id
from gateway.store.database import EmbeddedPostgres

CLOCK_START = datetime(2027, 1, 31, 10, 0, tzinfo=UTC)  # month ends clamp on renewal
ADVANCE_PAST_BOUNDARY_S = 7200  # the clock stops this long after the last renewal due
CARD_NUMBER = "4242424242424242"
AMOUNT = 1500
READY_POLL_S = 0.05
ADVANCE_TIMEOUT_S = 600.0
AUTH_WARMUP_S = 1.0
SETUP_ROWS_PER_STATEMENT = 2000


def http(url: str, secret: str, method: str, path: str, body: object = None) -> dict:
    request = urllib.request.Request(
        url + path,
        data=None if body is None else orjson.dumps(body),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        parsed: dict = orjson.loads(answer.read())
        return parsed


def boundary(index: int) -> datetime:
    """Boundary ``index`` of the monthly periods from CLOCK_START, as the core computes it."""
    seconds = core_ext.billing.period_end(int(CLOCK_START.timestamp()), index, "month", 1)
    return datetime.fromtimestamp(seconds, UTC)


async def insert_subscriptions(
    dsn: str, merchant_id: str, clock_id: str, price_id: str, count: int, vault: CardVault
) -> None:
    """``count`` customers, each with its own token saved as its default card and an
    active monthly subscription in its first period, due at that period's end."""
    fingerprint = vault.fingerprint(merchant_id, CARD_NUMBER)
    conn = await asyncpg.connect(dsn)
    try:
        for first in range(0, count, SETUP_ROWS_PER_STATEMENT):
            n = min(SETUP_ROWS_PER_STATEMENT, count - first)
            tokens = [new_id("tok") for _ in range(n)]
            customers = [new_id("cus") for _ in range(n)]
            subscriptions = [new_id("sub") for _ in range(n)]
            async with conn.transaction():
                await conn.execute(
                    """INSERT INTO tokens (id, merchant_id, brand, last4, exp_month, exp_year,
                                           fingerprint, number_ciphertext)
                       SELECT id, $2, 'visa', '4242', 12, $5, $3, ct
                         FROM unnest($1::text[], $4::bytea[]) AS t (id, ct)""",
                    tokens,
                    merchant_id,
                    fingerprint,
                    [vault.encrypt_number(CARD_NUMBER, t) for t in tokens],
                    datetime.now(UTC).year + 4,
                )
                await conn.execute(
                    """INSERT INTO customers (id, merchant_id, email, test_clock_id)
                       SELECT id, $2, id || '@example.com', $3 FROM unnest($1::text[]) AS c (id)""",
                    customers,
                    merchant_id,
                    clock_id,
                )
                await conn.execute(
                    """INSERT INTO customer_payment_methods (customer_id, token_id, is_default)
                       SELECT c, t, true FROM unnest($1::text[], $2::text[]) AS p (c, t)""",
                    customers,
                    tokens,
                )
                await conn.execute(
                    """INSERT INTO subscriptions (id, merchant_id, customer_id, price_id, status,
                           billing_anchor, current_period_index, current_period_start,
                           current_period_end, test_clock_id, next_action_at)
                       SELECT s, $3, c, $4, 'active', $5, 0, $5, $6, $7, $6
                         FROM unnest($1::text[], $2::text[]) AS x (s, c)""",
                    subscriptions,
                    customers,
                    merchant_id,
                    price_id,
                    CLOCK_START,
                    boundary(1),
                    clock_id,
                )
    finally:
        await conn.close()


async def check(dsn: str, merchant_id: str, count: int, months: int) -> dict:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            """SELECT count(*) AS invoices,
                      count(*) FILTER (WHERE i.status = 'paid' AND p.status = 'captured'
                                         AND p.off_session) AS paid_captured,
                      count(DISTINCT i.payment_id) AS payments,
                      (SELECT count(*) FROM subscriptions
                        WHERE merchant_id = $1 AND current_period_end = $2) AS renewed
                 FROM invoices i LEFT JOIN payments p ON p.id = i.payment_id
                WHERE i.merchant_id = $1""",
            merchant_id,
            boundary(months + 1),
        )
    finally:
        await conn.close()
    figures = dict(row)
    renewals = count * months
    if not figures["invoices"] == figures["paid_captured"] == figures["payments"] == renewals:
        raise RuntimeError(f"not one paid invoice and captured payment each: {figures}")
    if figures["renewed"] != count:
        raise RuntimeError(f"not every subscription moved {months} periods on: {figures}")
    return figures


def run(args: argparse.Namespace, workdir: Path) -> dict:
    embedded = EmbeddedPostgres(workdir / "pg")
    dsn = embedded.start()
    server = testing.KassaServer(
        workdir,
        dsn,
        workers=args.workers,
        data_dir=workdir / "data",
        log_path=workdir / "kassa.log",
        env={
            "KASSA_GROUP_COMMIT": "1",
            "KASSA_DB_POOL_MAX": "16",
            "KASSA_MASTER_KEY": testing.TEST_MASTER_KEY,
            **ABUSE_LIMITS_NEVER_HIT,
        },
    )
    try:
        merchant_id, secret = server.create_merchant("billing-bench")
        server.start()
        server.wait_ready(READY_TIMEOUT_S)
        target = Target("kassa", server.url, secret)
        print(
            f"authorizations: wrk -c{closedloop.CONNECTIONS} for {args.auth_seconds:g} s",
            flush=True,
        )
        wrk = closedloop.measure(target, args.auth_seconds, AUTH_WARMUP_S)
        print(f"  {wrk.rps:.0f} authorizations/s", flush=True)

        clock = http(
            server.url, secret, "POST", "/v1/test_clocks", {"frozen_time": "2027-01-31T10:00:00Z"}
        )
        price = http(
            server.url,
            secret,
            "POST",
            "/v1/prices",
            {"amount": AMOUNT, "currency": "eur", "recurring": {"interval": "month"}},
        )
        vault = CardVault(load_master_key(testing.TEST_MASTER_KEY, workdir))
        started = time.monotonic()
        asyncio.run(
            insert_subscriptions(
                dsn, merchant_id, clock["id"], price["id"], args.subscriptions, vault
            )
        )
        print(
            f"setup: {args.subscriptions} subscriptions on {clock['id']} in "
            f"{time.monotonic() - started:.1f} s",
            flush=True,
        )

        advanced_to = (boundary(args.months) + timedelta(seconds=ADVANCE_PAST_BOUNDARY_S)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        started = time.monotonic()
        http(
            server.url,
            secret,
            "POST",
            f"/v1/test_clocks/{clock['id']}/advance",
            {"frozen_time": advanced_to},
        )
        while True:
            status = http(server.url, secret, "GET", f"/v1/test_clocks/{clock['id']}")["status"]
            if status == "ready":
                break
            if time.monotonic() - started > ADVANCE_TIMEOUT_S:
                raise RuntimeError(f"the clock was not ready within {ADVANCE_TIMEOUT_S:g} s")
            time.sleep(READY_POLL_S)
        advance_s = time.monotonic() - started
        figures = asyncio.run(check(dsn, merchant_id, args.subscriptions, args.months))
        verified = server.cli("ledger", "verify")
        if verified.returncode != 0:
            raise RuntimeError(f"kassa ledger verify failed:\n{verified.stdout}{verified.stderr}")
    finally:
        server.stop(STOP_TIMEOUT_S)
        embedded.stop()
    renewals_s = args.subscriptions * args.months / advance_s
    return {
        "subscriptions": args.subscriptions,
        "months": args.months,
        "workers": args.workers,
        "authorizations_per_s": round(wrk.rps, 1),
        "advance_s": round(advance_s, 2),
        "renewals_per_s": round(renewals_s, 1),
        "ratio": round(renewals_s / wrk.rps, 2),
        **figures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.billing", description=__doc__)
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--months", type=int, default=1, help="how far the clock advances")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--auth-seconds", type=float, default=5.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="kassa-billing-bench-"))
    try:
        result = run(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"billing: {result['subscriptions']} x {result['months']} renewals in {result['advance_s']:.2f} s = "
        f"{result['renewals_per_s']:.0f} renewals/s; authorizations {result['authorizations_per_s']:.0f}/s; "
        f"ratio {result['ratio']:.2f} (target >= 0.5)",
        flush=True,
    )
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
