"""Graceful shutdown under load: SIGTERM on ``kassa serve`` loses nothing.

Two gateways (A and B) share one database. Clients authorize against A with
Idempotency-Keys; A's supervisor gets SIGTERM mid-run. A request that cannot reach A,
or loses its connection, is retried with the same key and body against B, as a
merchant's checkout behind a load balancer would. A must drain what it accepted
(answer it, not drop it) and exit 0 within its grace; every key must end as exactly
one payment, with no 5xx anywhere and the books balanced.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from dataclasses import dataclass

import aiohttp
import orjson
import pytest

from tests.conftest import kassa, kassa_env
from tests.payments_helpers import payment_body

# Every authorization is in flight this long, longer than the supervisor takes to pass
# SIGTERM on to its workers: some requests are mid-processor-call when the workers get it.
SANDBOX_LATENCY_MS = 1000
PROCESSOR_TIMEOUT_MS = 3000  # A's (the default); the latency stays well under it
B_RECOVERY_AFTER_S = 5  # > A's processor timeout: B never settles what A still runs
SHUTDOWN_GRACE_S = 10  # A's KASSA_SHUTDOWN_GRACE_S: it must exit within this
SIGNAL_FORWARD_S = 0.3  # the supervisor polls every 0.2 s before forwarding SIGTERM
CLIENTS = 24
LOAD_BEFORE_SIGTERM_S = 1.5
LOAD_AFTER_SIGTERM_S = 1.5  # new keys keep coming: they find A gone and go to B
REQUEST_TIMEOUT_S = 15.0  # past it a request hung: a failure, not a retry
KEY_DEADLINE_S = 30.0  # one key's retries (B settles anything A left unknown)
IN_USE_BACKOFF_S = 0.2
TEST_TIMEOUT_S = 180

# The load sends one test card at a high rate: the card-testing velocity rules would
# rightly decline it, which is not what this test is about (0 turns each off).
NO_ABUSE_LIMITS = {
    "KASSA_RATE_LIMIT_PER_S": "0",
    "KASSA_VELOCITY_MERCHANT_ATTEMPTS_MAX": "0",
    "KASSA_VELOCITY_CARD_ATTEMPTS_MAX": "0",
    "KASSA_VELOCITY_CARD_DECLINES_MAX": "0",
}


@dataclass
class Attempt:
    key: str
    target: str  # "A" or "B"
    sent: float
    received: float
    status: int | None  # None: could not connect, lost the connection, or hung
    code: str | None = None
    hung: bool = False


class Load:
    """Authorizations with keys against A, each retried on B when A cannot answer."""

    def __init__(self, session: aiohttp.ClientSession, a_url: str, b_url: str, secret: str) -> None:
        self.session = session
        self.urls = {"A": a_url, "B": b_url}
        self.secret = secret
        self.attempts: list[Attempt] = []
        self.finals: dict[str, int | None] = {}
        self.keys = (f"shutdown-{n}" for n in itertools.count())

    async def attempt(self, target: str, key: str, raw: bytes) -> Attempt:
        headers = {
            "Authorization": f"Bearer {self.secret}",
            "Idempotency-Key": key,
            "Content-Type": "application/json",
        }
        sent = time.monotonic()
        status, code, hung = None, None, False
        try:
            async with self.session.post(
                self.urls[target] + "/v1/payments",
                data=raw,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            ) as response:
                status, body = response.status, await response.read()
            if status >= 300:
                code = error_code(body)
        except TimeoutError:  # before ClientError: aiohttp's timeouts are both
            hung = True
        except aiohttp.ClientError:
            pass
        attempt = Attempt(key, target, sent, time.monotonic(), status, code, hung)
        self.attempts.append(attempt)
        return attempt

    async def authorize(self, key: str) -> None:
        raw = orjson.dumps(payment_body(reference=key))
        target, deadline = "A", time.monotonic() + KEY_DEADLINE_S
        while time.monotonic() < deadline:
            attempt = await self.attempt(target, key, raw)
            if attempt.hung:
                break  # a failure of its own (asserted below), not something to retry
            if attempt.status is None:
                target = "B"  # A is going away: the same key, the same body, elsewhere
                continue
            if attempt.status == 409 and attempt.code == "idempotency_key_in_use":
                await asyncio.sleep(IN_USE_BACKOFF_S)  # A's attempt is settling
                continue
            self.finals[key] = attempt.status
            return
        self.finals[key] = None

    async def client(self, start_in_s: float, stop_at: float) -> None:
        await asyncio.sleep(start_in_s)
        while time.monotonic() < stop_at:
            await self.authorize(next(self.keys))


def error_code(body: bytes) -> str:
    try:
        return orjson.loads(body)["error"]["code"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return f"not an API error body: {body[:200]!r}"


async def wait_exit(process, timeout_s: float) -> float | None:
    """Seconds until ``process`` exits, or None past ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return None


@pytest.mark.timeout(TEST_TIMEOUT_S)
async def test_sigterm_under_load_drains_and_loses_nothing(
    db, database_url, merchant, serve_process
):
    a = await serve_process(
        database_url,
        workers=2,
        KASSA_SANDBOX_LATENCY_MS=str(SANDBOX_LATENCY_MS),
        KASSA_PROCESSOR_TIMEOUT_MS=str(PROCESSOR_TIMEOUT_MS),
        KASSA_SHUTDOWN_GRACE_S=str(SHUTDOWN_GRACE_S),
        **NO_ABUSE_LIMITS,
    )
    # B settles soon whatever A might leave 'processing' (it must not; if it did, the
    # clients' 409s would end, as 5xx or as payments the books would show).
    b = await serve_process(
        database_url,
        KASSA_RECOVERY_AFTER_S=str(B_RECOVERY_AFTER_S),
        KASSA_RECOVERY_INTERVAL_S="1",
        **NO_ABUSE_LIMITS,
    )
    # A new connection per request: none is sent on a kept-alive connection A has closed.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        load = Load(session, a.url, b.url, merchant.secret)
        started = time.monotonic()
        stop_at = started + LOAD_BEFORE_SIGTERM_S + LOAD_AFTER_SIGTERM_S
        # Staggered over one request's latency, so at SIGTERM the requests in flight are
        # at every stage, many with more than the signal's forwarding delay still to go.
        stagger_s = SANDBOX_LATENCY_MS / 1000 / CLIENTS
        clients = [asyncio.create_task(load.client(n * stagger_s, stop_at)) for n in range(CLIENTS)]
        await asyncio.sleep(LOAD_BEFORE_SIGTERM_S)
        sigterm_at = time.monotonic()
        a.process.send_signal(signal.SIGTERM)
        exit_s = await wait_exit(a.process, SHUTDOWN_GRACE_S)
        await asyncio.gather(*clients)

    assert exit_s is not None, f"A still running {SHUTDOWN_GRACE_S} s after SIGTERM"
    assert a.process.returncode == 0, a.logs()[-3000:]
    logs = a.logs()
    assert "Traceback" not in logs, logs[-3000:]
    assert "did not stop in time" not in logs

    # Answered by A after its workers had SIGTERM: drained, not dropped.
    in_flight = [
        t
        for t in load.attempts
        if t.target == "A" and t.sent < sigterm_at and t.received > sigterm_at + SIGNAL_FORWARD_S
    ]
    drained = [t for t in in_flight if t.status is not None]
    dropped = [t for t in in_flight if t.status is None]
    assert drained, f"A answered nothing after SIGTERM ({len(dropped)} dropped)"
    assert any(t.target == "B" for t in load.attempts), "no request was ever retried on B"
    assert not [t for t in load.attempts if t.hung], "requests hung"
    server_errors = [
        (t.target, t.status, t.code)
        for t in load.attempts
        if t.status is not None and t.status >= 500
    ]
    assert not server_errors, server_errors
    assert set(load.finals.values()) == {201}, [k for k, s in load.finals.items() if s != 201]

    keys = list(load.finals)
    counts = dict(
        await db.fetch(
            """SELECT idempotency_key, count(*) FROM payments
            WHERE merchant_id = $1 AND idempotency_key = any($2::text[]) GROUP BY 1""",
            merchant.id,
            keys,
        )
    )
    assert counts == dict.fromkeys(keys, 1), "a key with no payment, or with two"
    assert await db.fetchval(
        """SELECT count(*) FROM sandbox_operations s JOIN payments p ON p.id = s.payment_id
            WHERE s.operation = 'authorize' AND p.idempotency_key = any($1::text[])""",
        keys,
    ) == len(keys)
    assert await db.fetchval("SELECT count(*) FROM payments WHERE status = 'processing'") == 0
    verified = kassa("ledger", "verify", env=kassa_env(database_url))
    assert verified.returncode == 0, verified.stdout + verified.stderr
