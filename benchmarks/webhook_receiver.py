"""The benchmark's webhook receiver (target ``kassa-webhooks``): as little as a receiver can
do, in its own process, on loopback.

Every POST is answered 200 at once, after noting its ``webhook-id`` and when it arrived
(wall clock, to compare with the events' ``created_at`` in the database: the same
machine's clock). ``GET /arrivals`` answers them all as ``[[webhook_id, unix_s], ...]``;
``GET /readyz`` says it listens. No verification: its CPU shares the machine with the
gateway under test, so it spends as little as it can.

    python -m benchmarks.webhook_receiver --port 8091
"""

from __future__ import annotations

import argparse
import time

import orjson
from aiohttp import web

ARRIVALS: web.AppKey[list[tuple[str, float]]] = web.AppKey("arrivals", list)


async def receive(request: web.Request) -> web.Response:
    await request.read()
    request.app[ARRIVALS].append((request.headers.get("webhook-id", ""), time.time()))
    return web.Response(text="ok")


async def arrivals(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(request.app[ARRIVALS]), content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.install()
    app = web.Application(client_max_size=1024**2)
    app[ARRIVALS] = []
    app.router.add_get("/arrivals", arrivals)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/{path:.*}", receive)
    web.run_app(
        app, host=args.host, port=args.port, print=None, access_log=None, shutdown_timeout=1
    )


if __name__ == "__main__":
    main()
