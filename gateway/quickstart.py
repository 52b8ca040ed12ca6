"""``scripts/serve``'s step before ``kassa serve``: a merchant to try the gateway with, and
how to call it: ``python -m gateway.quickstart [kassa serve flags]``.

The flags and the environment are read by ``kassa serve``'s own parser and settings, so
the curl printed names the host and port that will actually be served. An empty database
gets a first merchant, whose secret key is shown once; later runs list the merchants and
say how to get a key, since a key is never shown again.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from gateway import cli
from gateway.config import Settings

DEMO_MERCHANT = "Demo Shop"
EXPIRY_YEARS_AHEAD = 4  # the example card expires this many years from now: never in the past

FIRST_PAYMENT = """\
Authorize a first payment (in another terminal, once the gateway is up):

  curl -s {url}/v1/payments \\
    -H 'Authorization: Bearer {key}' \\
    -H 'Idempotency-Key: first-payment' \\
    -H 'Content-Type: application/json' \\
    -d '{{"amount": 1999, "currency": "eur", "capture": "manual",
         "payment_method": {{"type": "card", "card": {{"number": "4242424242424242",
           "exp_month": 12, "exp_year": {exp_year}, "cvc": "123"}}}}}}'
"""

GET_A_KEY = """\
Secret keys are shown only when made, so none is printed now. To get one, create a
merchant, or issue a new key for one of those above (its current keys then stop working):

  {kassa} merchants create NAME
  {kassa} keys rotate MERCHANT_ID
"""


def _kassa_command() -> str:
    """How to run ``kassa`` from here: this environment's script (scripts/serve's
    .venv/bin/kassa, not on PATH), else the name."""
    script = Path(sys.executable).parent / "kassa"
    if not script.exists():
        return "kassa"
    relative = os.path.relpath(script)
    return relative if not relative.startswith("..") else str(script)


async def _welcome(conn: asyncpg.Connection, settings: Settings) -> int:
    from gateway.store.merchants import create_merchant, list_merchants

    merchants = await list_merchants(conn)
    if not merchants:
        key = await create_merchant(conn, DEMO_MERCHANT)
        print("Created a first merchant. Its secret key is shown only now:\n")
        print(f"merchant_id: {key.merchant_id}\nsecret_key:  {key.secret}\n")
        print(_first_payment(settings, key.secret))
        return 0
    print("Merchants in this database:\n")
    for row in merchants:
        print(f"  {row['id']}  {row['name']}  ({row['active_keys']} active key(s))")
    print()
    print(GET_A_KEY.format(kassa=_kassa_command()))
    print(_first_payment(settings, "<secret key>"))
    return 0


def _first_payment(settings: Settings, key: str) -> str:
    exp_year = datetime.now(UTC).year + EXPIRY_YEARS_AHEAD
    return FIRST_PAYMENT.format(url=settings.local_url, key=key, exp_year=exp_year)


def main(argv: Sequence[str] | None = None) -> int:
    args = cli._parser().parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return cli.run(
        args,
        lambda settings: asyncio.run(
            cli._with_connection(settings, lambda conn: _welcome(conn, settings))
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
