"""A real webhook receiver (aiohttp on 127.0.0.1) and the three verifiers, for the tests of
events and webhooks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
import standardwebhooks
import stripe
import svix.webhooks
from aiohttp import web

Action = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Arrival:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.monotonic()
    peer_port: int

    @property
    def event(self) -> dict:
        return orjson.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


def status(code: int, **headers: str) -> Action:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, text="x", headers=headers)

    return answer


def hang(seconds: float, then: int = 200) -> Action:
    async def answer(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(status=then)

    return answer


class Receiver:
    """Records every request; answers each path by its plan (a list of actions, first
    first), 200 once the plan is used up."""

    def __init__(self) -> None:
        self.arrivals: list[Arrival] = []
        self.plans: dict[str, list[Action]] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.arrivals.append(
            Arrival(
                request.path,
                {k.lower(): v for k, v in request.headers.items()},
                body,
                time.monotonic(),
                peer[1] if peer else 0,
            )
        )
        plan = self.plans.get(request.path)
        if plan:
            return await plan.pop(0)(request)
        return web.Response(status=200, text="ok")

    def at(self, path: str) -> list[Arrival]:
        return [a for a in self.arrivals if a.path == path]

    async def wait(
        self, path: str, count: int, timeout_s: float = 15.0, what: str = ""
    ) -> list[Arrival]:
        """At least ``count`` arrivals at ``path``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            arrived = self.at(path)
            if len(arrived) >= count:
                return arrived
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"{len(self.at(path))} of {count} deliveries at {path} within {timeout_s} s {what}"
        )


def verify_all(secret: str, arrival: Arrival) -> dict:
    """Verify with the three packages' own verifiers; the event."""
    standardwebhooks.Webhook(secret).verify(arrival.body, dict(arrival.headers))
    svix.webhooks.Webhook(secret).verify(arrival.body, dict(arrival.headers))
    event = stripe.Webhook.construct_event(
        arrival.body.decode(), arrival.headers["stripe-signature"], secret
    )
    assert event["id"] == arrival.webhook_id
    assert arrival.headers["content-type"] == "application/json"
    return arrival.event


def none_verifies(secret: str, arrival: Arrival) -> None:
    """A tampered body fails every verifier."""
    tampered = arrival.body.replace(b'"amount":', b'"amount":1', 1)
    assert tampered != arrival.body
    failures = 0
    for verify in (
        lambda: standardwebhooks.Webhook(secret).verify(tampered, dict(arrival.headers)),
        lambda: svix.webhooks.Webhook(secret).verify(tampered, dict(arrival.headers)),
        lambda: stripe.Webhook.construct_event(
            tampered.decode(), arrival.headers["stripe-signature"], secret
        ),
    ):
        try:
            verify()
        except Exception:
            failures += 1
    assert failures == 3
