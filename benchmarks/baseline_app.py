"""The framework ceiling: the least an aiohttp gateway could do per request.

POST /v1/payments: read the body, parse it with orjson, answer a tiny JSON 201.
Same server stack as Kassa (aiohttp on uvloop, N worker processes sharing the
port with SO_REUSEPORT), nothing else: no validation, no database.

    python -m benchmarks.baseline_app --port 8090 --workers 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import threading

import orjson
from aiohttp import web


async def create_payment(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    return web.Response(
        status=201,
        content_type="application/json",
        body=orjson.dumps({"id": "pay_baseline", "amount": body["amount"]}),
    )


async def readyz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def serve_one(host: str, port: int) -> None:
    import uvloop

    from gateway.server import bind_socket

    uvloop.install()
    app = web.Application()
    app.router.add_post("/v1/payments", create_payment)
    app.router.add_get("/readyz", readyz)
    web.run_app(app, sock=bind_socket(host, port), print=None, access_log=None, shutdown_timeout=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=serve_one, args=(args.host, args.port)) for _ in range(args.workers)
    ]
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    for worker in workers:
        worker.start()
    while not stopping.wait(0.5):
        pass
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.join(5)
        if worker.is_alive():  # never leave a worker holding the port after the run
            worker.kill()
            worker.join()


if __name__ == "__main__":
    main()
