"""The benchmark's webhook receiver (target ``kassa-webhooks``): as little as a receiver can
do, in its own process, on loopback.

Every POST is answered 200 at once, after noting its ``webhook-id`` and when it arrived
(wall clock, to compare with the events' ``created_at`` in the database: the same
machine's clock). ``GET /arrivals`` answers them all as ``[[webhook_id, unix_s], ...]``;
any other GET (``/readyz``) answers 200.

No verification, and no HTTP framework: its CPU shares the machine with the gateway under
test, and a real receiver runs on the shop's machines, so what it spends here is charged
to the webhooks' cost without being theirs. This is HTTP/1.1 as Kassa's deliverer (and
urllib, for the two GETs) speaks it: requests with a ``Content-Length`` or no body, kept
alive. Anything it cannot read closes the connection.

    python -m benchmarks.webhook_receiver --port 8091
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import cast

import orjson

HEADERS_BYTES_MAX = 16 * 1024
BODY_BYTES_MAX = 1024 * 1024


def _header(head: bytes, name: bytes, lowered: bytes | None = None) -> bytes:
    """The value of header ``name`` (lower case) in a header block, b"" if absent;
    ``lowered`` is the block in lower case when ``head`` is not."""
    start = (head if lowered is None else lowered).find(b"\r\n" + name + b":")
    if start < 0:
        return b""
    start += len(name) + 3
    stop = head.find(b"\r\n", start)
    return head[start : stop if stop >= 0 else len(head)].strip()


class ReceiverProtocol(asyncio.Protocol):
    def __init__(self, arrivals: list[tuple[str, float]]) -> None:
        self._arrivals = arrivals
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None and self._answer_one():
            pass

    def _answer_one(self) -> bool:
        """Answer the first complete request in the buffer; False when there is none."""
        if self._transport is None:
            return False
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > HEADERS_BYTES_MAX:
                self._transport.close()
            return False
        # Two headers matter; found in the lowered block, not by splitting it into lines
        # (benchmarks.deliverer: 49-56 us of its CPU a request against 57-60 so).
        head = bytes(self._buffer[:end])
        lowered = head.lower()
        method, _, rest = head.partition(b" ")
        target = rest.partition(b" ")[0]
        length = int(_header(lowered, b"content-length") or 0)
        webhook_id = _header(head, b"webhook-id", lowered).decode("latin-1")
        if length > BODY_BYTES_MAX:
            self._transport.close()
            return False
        total = end + 4 + length
        if len(self._buffer) < total:
            return False
        del self._buffer[:total]
        if method == b"POST":
            self._arrivals.append((webhook_id, time.time()))
            body, kind = b"ok", b"text/plain"
        elif target == b"/arrivals":
            body, kind = orjson.dumps(self._arrivals), b"application/json"
        else:
            body, kind = b"ok", b"text/plain"
        self._transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (kind, len(body), body)
        )
        return True


async def serve(host: str, port: int) -> None:
    arrivals: list[tuple[str, float]] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ReceiverProtocol(arrivals), host, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
