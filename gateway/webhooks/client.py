"""The deliveries' HTTP client: one POST, one status, over kept-alive connections.

A delivery needs little of HTTP: send a small signed POST, read the status line and
``Retry-After``, drop the body. aiohttp's client session did that at about 100 us of a
worker's CPU per delivery (``python -m benchmarks.anatomy --webhooks``: two thirds of
what a delivery cost the workers), for cookies, redirects, tracing, proxies, multidicts
and stream readers a delivery never uses. This client is an ``asyncio.Protocol`` per
connection with httptools' parser (llhttp, the parser uvicorn uses) and a pool of idle
connections per origin, which is all a delivery asks for:

- HTTP/1.1 with keep-alive; a connection the receiver closed while idle is noticed when
  reused (no answer at all) and the POST is sent once more on a fresh one. A receiver
  may so see an attempt twice, which at-least-once delivery allows (same ``webhook-id``).
- No redirect is ever followed (a 3xx is just a status), no proxy from the environment is
  used, no cookie is kept, the answer's body is read up to ``RESPONSE_BYTES_MAX`` and
  discarded: a larger answer closes the connection.
- The SSRF guard is the resolver's (``GuardedResolver``): the address connected to is one
  it returned, so there is no window for DNS to change in between.
- A whole attempt (connect, send, answer) is bounded by the client's ``timeout_s``. A
  connection waiting for its answer is cut off by one watchdog timer that looks at every
  such connection each ``TIMEOUT_TICK_S``, instead of a timer armed and cancelled per
  request: under load that was a tenth of what a delivery cost the deliverer. The
  caller bounds the attempts in flight (overall and per endpoint), so the pool needs no
  bound of its own beyond ``IDLE_PER_ORIGIN_MAX`` idle connections kept per origin.
- ``send`` answers through a callback, run by the loop once the answer is in: no task,
  future or coroutine per POST over a kept-alive connection (the deliverer's hot path;
  a task and a future cost a delivery about 13 us on the benchmark machine, a callback
  1 us). A new connection is opened by a task, which is rare. ``post`` is the same
  exchange as a coroutine, for callers that would rather await it.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import httptools
from yarl import URL

from gateway.webhooks.addresses import GuardedResolver

RESPONSE_BYTES_MAX = 64 * 1024  # of an answer's body, read and dropped; past it, closed
IDLE_PER_ORIGIN_MAX = 32  # idle connections kept per origin (a deliverer's per-endpoint bound)
# An idle connection older than this is closed rather than reused: receivers close theirs
# after a few seconds (Node.js after 5), and reusing one they are closing costs a retry.
IDLE_REUSE_S = 4.0
DEFAULT_PORTS = {"http": 80, "https": 443}
TIMEOUT_TICK_S = 0.05  # how late past its deadline an answer awaited may be cut off


class BadResponse(OSError):
    """The receiver's answer was not HTTP, or the connection ended before one."""


# What ``send`` calls back with: the status and Retry-After, or (None, None, the error:
# AddressRefused, an OSError (BadResponse included), TimeoutError past ``timeout_s``).
Answered = Callable[[int | None, str | None, BaseException | None], None]


@dataclass(frozen=True)
class _Target:
    """What a URL comes to on the wire, parsed once per URL."""

    origin: tuple[str, str, int]  # scheme, host, port: the pool's key
    host: str  # to resolve (an IP literal without its brackets)
    head: bytes  # the request line and the headers every POST to it carries


def _target(url: str, user_agent: str) -> _Target:
    parsed = URL(url)
    scheme, host = parsed.scheme, parsed.raw_host or ""
    port = parsed.explicit_port or DEFAULT_PORTS[scheme]
    path = parsed.raw_path_qs or "/"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {parsed.raw_authority}\r\n"
        f"User-Agent: {user_agent}\r\nContent-Type: application/json\r\n"
    ).encode("ascii")
    return _Target((scheme, host, port), host.strip("[]"), head)


class _Exchange(NamedTuple):
    """A request on its way, for the client to finish: on its connection while it waits."""

    target: _Target
    request: bytes
    deadline: float  # monotonic: when it is cut off
    answered: Answered
    reused: bool  # sent on a kept-alive connection (which the receiver may have closed)


# How a connection reports the end of its exchange to the client: (connection, status,
# Retry-After, error); exactly once per request sent.
_Finished = Callable[["_Connection", int, "str | None", "BaseException | None"], None]


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to a receiver; one request on it at a time."""

    def __init__(self, finished: _Finished) -> None:
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.exchange: _Exchange | None = None  # the request awaiting its answer
        self.open = False
        self._finished = finished
        self._parser = httptools.HttpResponseParser(self)
        self._waiting = False  # a request was sent and is not finished
        self._status = 0
        self._retry_after: str | None = None
        self._body_bytes = 0
        self._answered_bytes = False  # any byte of an answer arrived on this request

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.open = True

    def data_received(self, data: bytes) -> None:
        self._answered_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(BadResponse("the receiver switched protocols"))
        except httptools.HttpParserError as exc:
            self.fail(BadResponse(f"not an HTTP answer: {exc}"))

    def eof_received(self) -> bool:
        return False  # close: half-open connections are never reused

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self._waiting:
            return
        if self._status:  # the answer's body ran until the close: the status is known
            self._end(self._status, self._retry_after, None)
        else:
            self._end(0, None, BadResponse("the receiver closed the connection unanswered"))

    # httptools' callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self._retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > RESPONSE_BYTES_MAX:
            self._finish(keep=False)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:  # an interim answer (100 Continue): the real one follows
            self._status, self._retry_after = 0, None
            return
        self._finish(keep=self._parser.should_keep_alive())

    # the client's side
    def send(self, exchange: _Exchange) -> None:
        """Write the exchange's request; its end is reported to the client's callback."""
        self.exchange = exchange
        self._status, self._retry_after, self._body_bytes = 0, None, 0
        self._answered_bytes = False
        self._waiting = True
        if self.transport is None or not self.open:
            self._end(0, None, BadResponse("the connection is closed"))
            return
        self.transport.write(exchange.request)

    def reusable(self, now: float) -> bool:
        """Open, and idle for less than IDLE_REUSE_S (monotonic ``now``)."""
        return self.open and now - self.idle_since < IDLE_REUSE_S

    @property
    def answered_bytes(self) -> bool:
        return self._answered_bytes

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()

    def _finish(self, keep: bool) -> None:
        if not keep:
            self.close()
        if self._waiting:
            self._end(self._status, self._retry_after, None)

    def fail(self, exc: BaseException) -> None:
        self.close()
        if self._waiting:
            self._end(0, None, exc)

    def _end(self, status: int, retry_after: str | None, exc: BaseException | None) -> None:
        self._waiting = False
        self._finished(self, status, retry_after, exc)


class WebhookClient:
    """POSTs to receivers; one per deliverer, closed with it."""

    def __init__(self, allow_private: bool, user_agent: str, timeout_s: float) -> None:
        self._resolver = GuardedResolver(allow_private)
        self._user_agent = user_agent
        self._timeout_s = timeout_s
        self._waiting: set[_Connection] = set()  # a request sent, its answer awaited
        self._connecting: dict[asyncio.Task[_Connection], _Exchange] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._targets: dict[str, _Target] = {}
        self._idle: dict[tuple[str, str, int], collections.deque[_Connection]] = {}
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    def send(self, url: str, headers: dict[str, str], body: bytes, answered: Answered) -> None:
        """POST ``body`` with ``headers`` (and Host, User-Agent, Content-Type and
        Content-Length) to ``url``; ``answered`` is called back by the loop, once, with
        (status, Retry-After, None) or (None, None, the error), within the client's
        ``timeout_s`` in all. Never raises for the exchange itself."""
        deadline = time.monotonic() + self._timeout_s
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) > 10_000:  # endpoints come and go: never grows unbounded
                self._targets.clear()
            target = self._targets[url] = _target(url, self._user_agent)
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = b"".join(
            (target.head, f"{lines}Content-Length: {len(body)}\r\n\r\n".encode("latin-1"), body)
        )
        connection = self._reuse(target.origin)
        if connection is None:
            self._connect_then_send(_Exchange(target, request, deadline, answered, False))
        else:
            self._send_on(connection, _Exchange(target, request, deadline, answered, True))

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> tuple[int, str | None]:
        """``send`` as a coroutine: (status, Retry-After); raises AddressRefused, OSError
        (BadResponse included), TimeoutError past the client's ``timeout_s`` in all. A
        caller that cancels it leaves no connection behind to reuse."""
        answer: asyncio.Future[tuple[int, str | None]] = asyncio.get_running_loop().create_future()

        def answered(
            status: int | None, retry_after: str | None, exc: BaseException | None
        ) -> None:
            if answer.done():
                return
            if exc is not None:
                answer.set_exception(exc)
            else:
                answer.set_result((status or 0, retry_after))

        self.send(url, headers, body, answered)
        try:
            return await answer
        except asyncio.CancelledError:
            self._abandon(answered)
            raise

    def sweep(self) -> None:
        """Close the idle connections too old to reuse and forget origins with none left:
        called now and then, so endpoints no longer sent to hold no sockets."""
        now = time.monotonic()
        for origin, idle in list(self._idle.items()):
            fresh = [c for c in idle if c.reusable(now)]
            for connection in idle:
                if connection not in fresh:
                    connection.close()
            if fresh:
                self._idle[origin] = collections.deque(fresh)
            else:
                del self._idle[origin]

    @property
    def idle_connections(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    async def close(self) -> None:
        """Close every connection; requests still waiting are answered with an error."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for task in list(self._connecting):
            task.cancel()
        for connection in list(self._waiting):
            connection.fail(BadResponse("the client closed"))
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        await self._resolver.close()

    def _reuse(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely closed
            if connection.reusable(now):
                return connection
            connection.close()
        return None

    def _send_on(self, connection: _Connection, exchange: _Exchange) -> None:
        self._waiting.add(connection)
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(TIMEOUT_TICK_S, self._cut_off)
        connection.send(exchange)

    def _finished(
        self,
        connection: _Connection,
        status: int,
        retry_after: str | None,
        exc: BaseException | None,
    ) -> None:
        """A connection's exchange ended (called from inside its protocol's callbacks, so
        the caller's ``answered`` is left to the loop: it may send again at once)."""
        self._waiting.discard(connection)
        exchange, connection.exchange = connection.exchange, None
        if exchange is None:
            return
        loop = asyncio.get_running_loop()
        if exc is not None:
            connection.close()  # failed, timed out or abandoned mid-request: never reused
            if (
                exchange.reused
                and isinstance(exc, BadResponse)
                and not connection.answered_bytes
                and not self._closed
            ):
                # Closed by the receiver while idle, before our request reached it: once
                # more on a new connection (at least once allows the rare double).
                self._connect_then_send(exchange._replace(reused=False))
                return
            loop.call_soon(exchange.answered, None, None, exc)
            return
        if connection.open:
            connection.idle_since = time.monotonic()
            idle = self._idle.setdefault(exchange.target.origin, collections.deque())
            if len(idle) < IDLE_PER_ORIGIN_MAX and not self._closed:
                idle.append(connection)
            else:
                connection.close()
        loop.call_soon(exchange.answered, status, retry_after, None)

    def _abandon(self, answered: Answered) -> None:
        """The caller of ``post`` gave up: drop its exchange, and its connection."""
        for connection in list(self._waiting):
            if connection.exchange is not None and connection.exchange.answered is answered:
                connection.fail(asyncio.CancelledError())
        for task, exchange in list(self._connecting.items()):
            if exchange.answered is answered:
                task.cancel()

    def _cut_off(self) -> None:
        """The watchdog: fail the requests past their deadline; again while any wait."""
        now = time.monotonic()
        late = [c for c in self._waiting if c.exchange is not None and c.exchange.deadline <= now]
        for connection in late:
            connection.fail(TimeoutError(f"no answer within {self._timeout_s:g} s"))
        self._watchdog = None
        if self._waiting:
            self._watchdog = asyncio.get_running_loop().call_later(TIMEOUT_TICK_S, self._cut_off)

    def _connect_then_send(self, exchange: _Exchange) -> None:
        """Open a connection (a task: rare, connections are kept alive), then send on it."""
        task = asyncio.ensure_future(self._connect_within(exchange))
        self._connecting[task] = exchange
        task.add_done_callback(self._connected)

    async def _connect_within(self, exchange: _Exchange) -> _Connection:
        async with asyncio.timeout(max(0.0, exchange.deadline - time.monotonic())):
            return await self._connect(exchange.target)

    def _connected(self, task: asyncio.Task[_Connection]) -> None:
        exchange = self._connecting.pop(task)
        if task.cancelled():
            exchange.answered(None, None, BadResponse("the client closed"))
            return
        exc = task.exception()
        if exc is not None:
            exchange.answered(None, None, exc)
        elif self._closed:
            task.result().close()
            exchange.answered(None, None, BadResponse("the client closed"))
        else:
            self._send_on(task.result(), exchange)

    async def _connect(self, target: _Target) -> _Connection:
        scheme, host, port = target.origin
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if scheme == "https" else None
        # Only addresses the guard let through; the first that answers.
        addresses = await self._resolver.resolve(target.host, port, socket.AF_UNSPEC)
        failure: OSError | None = None
        for address in addresses:
            connection = _Connection(self._finished)
            try:
                await loop.create_connection(
                    lambda connection=connection: connection,
                    host=address["host"],
                    port=address["port"],
                    family=address["family"],
                    ssl=tls,
                    server_hostname=target.host if tls else None,
                )
            except OSError as exc:
                failure = exc
                continue
            return connection
        raise failure or BadResponse(f"{host} has no address")

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls
