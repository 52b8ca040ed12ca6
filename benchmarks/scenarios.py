"""What one scheduled operation does, per scenario.

Each scenario is ``async run(session, target, state, index, rng) -> (ok, kind)``.
Latency is recorded per operation (a checkout's authorize and capture together).
Expected answers count as success: a 402 in the decline mix, a replay or a 409
in the retry storm.
"""

from __future__ import annotations

import collections
import os
import random
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import orjson

APPROVED = "4242424242424242"
DECLINED = "4000000000000002"
DECLINE_SHARE = 0.10
RETRY_SHARE = 0.20
RECENT_KEYS_MAX = 1000
EXP_YEAR = datetime.now(UTC).year + 4  # a card expiry that is valid whenever this runs


def payment_body(number: str = APPROVED, capture: str = "manual") -> bytes:
    return orjson.dumps(
        {
            "amount": 1999,
            "currency": "eur",
            "capture": capture,
            "payment_method": {
                "type": "card",
                "card": {"number": number, "exp_month": 12, "exp_year": EXP_YEAR, "cvc": "123"},
            },
            "reference": "bench",
            "metadata": {"cart": "c_77"},
        }
    )


BODIES = {
    ("approved", "manual"): payment_body(),
    ("approved", "automatic"): payment_body(capture="automatic"),
    ("declined", "manual"): payment_body(DECLINED),
}


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    secret_key: str | None = None

    def headers(self, idempotency_key: str | None = None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.secret_key:
            headers["Authorization"] = f"Bearer {self.secret_key}"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    def new_state(self) -> dict:
        return {"prefix": os.urandom(6).hex(), "recent": collections.deque(maxlen=RECENT_KEYS_MAX)}


async def _post(
    session: aiohttp.ClientSession, target: Target, path: str, body: bytes, key: str | None = None
) -> tuple[int, bytes]:
    async with session.post(target.url + path, data=body, headers=target.headers(key)) as r:
        return r.status, await r.read()


def _key(state: dict, index: int) -> str:
    return f"bench-{state['prefix']}-{index}"


async def authorize(session, target, state, index, rng: random.Random):
    status, _ = await _post(
        session, target, "/v1/payments", BODIES["approved", "manual"], _key(state, index)
    )
    return status == 201, f"status {status}"


async def checkout(session, target, state, index, rng):
    status, raw = await _post(
        session, target, "/v1/payments", BODIES["approved", "manual"], _key(state, index)
    )
    if status != 201:
        return False, f"authorize {status}"
    payment_id = orjson.loads(raw)["id"]
    status, _ = await _post(
        session,
        target,
        f"/v1/payments/{payment_id}/capture",
        b"{}",
        _key(state, index) + "-capture",
    )
    return status == 200, f"capture {status}"


async def retry_storm(session, target, state, index, rng):
    recent = state["recent"]
    if recent and rng.random() < RETRY_SHARE:
        key = recent[rng.randrange(len(recent))]  # a client retrying an earlier request
    else:
        key = _key(state, index)
        recent.append(key)
    status, _ = await _post(session, target, "/v1/payments", BODIES["approved", "manual"], key)
    return status in (201, 409), f"status {status}"


async def decline_mix(session, target, state, index, rng):
    declined = rng.random() < DECLINE_SHARE
    body = BODIES["declined" if declined else "approved", "manual"]
    status, _ = await _post(session, target, "/v1/payments", body, _key(state, index))
    return status == (402 if declined else 201), f"status {status}"


async def refunds(session, target, state, index, rng):
    status, raw = await _post(
        session, target, "/v1/payments", BODIES["approved", "automatic"], _key(state, index)
    )
    if status != 201:
        return False, f"authorize {status}"
    payment_id = orjson.loads(raw)["id"]
    status, _ = await _post(
        session,
        target,
        f"/v1/payments/{payment_id}/refunds",
        b'{"amount": 500}',
        _key(state, index) + "-refund",
    )
    return status == 201, f"refund {status}"


SCENARIOS = {
    "authorize": authorize,
    "checkout": checkout,
    "retry_storm": retry_storm,
    "decline_mix": decline_mix,
    "refunds": refunds,
}
