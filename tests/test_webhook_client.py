"""The deliveries' HTTP client (gateway/webhooks/client.py) against real servers on
loopback: raw asyncio servers that answer byte for byte what a test scripts, so the
cases a receiver's framework would smooth over (a connection closed while idle, an
answer delimited by the close, an interim 100, a huge or a non-HTTP answer, TLS with an
untrusted certificate) are seen as a receiver really sends them."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.webhooks.client import RESPONSE_BYTES_MAX, BadResponse, WebhookClient

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class RawServer:
    """Answers each request it reads with ``answer(n)`` (n counts requests across
    connections), then closes the connection if ``close_after`` says so."""

    answer: Callable[[int], bytes] = lambda n: OK
    close_after: Callable[[int], bool] = lambda n: False
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                n = len(self.requests)
                writer.write(self.answer(n))
                await writer.drain()
                if self.close_after(n):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    server = RawServer()
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listening.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listening.close()


@pytest.fixture
async def client() -> AsyncIterator[WebhookClient]:
    client = WebhookClient(True, "Kassa-Webhooks/1.0", timeout_s=5.0)
    try:
        yield client
    finally:
        await client.close()


async def test_a_post_carries_the_body_and_headers_and_reuses_its_connection(raw, client):
    url = f"http://127.0.0.1:{raw.port}/hooks/kassa?shop=7"
    headers = {"webhook-id": "evt_1", "webhook-signature": "v1,abc"}
    for _ in range(3):
        assert await client.post(url, headers, b'{"id":"evt_1"}') == (200, None)
    assert raw.connections == 1  # kept alive
    head, body = raw.requests[0].split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /hooks/kassa?shop=7 HTTP/1.1"
    assert set(lines[1:]) == {
        f"Host: 127.0.0.1:{raw.port}".encode(),
        b"User-Agent: Kassa-Webhooks/1.0",
        b"Content-Type: application/json",
        b"webhook-id: evt_1",
        b"webhook-signature: v1,abc",
        b"Content-Length: 14",
    }
    assert body == b'{"id":"evt_1"}'


async def test_send_calls_back_once_from_the_loop_with_the_answer_or_the_error(raw, client):
    """The deliverer's way in: no coroutine, one callback per POST, never from inside
    ``send`` itself (the callback may send again at once)."""
    calls: list[tuple] = []
    done = asyncio.Event()

    def answered(status, retry_after, exc) -> None:
        calls.append((status, retry_after, exc))
        done.set()

    url = f"http://127.0.0.1:{raw.port}/"
    for _ in range(2):  # a new connection, then the kept-alive one
        done.clear()
        before = len(calls)
        client.send(url, {"webhook-id": "evt_1"}, b"{}", answered)
        assert len(calls) == before  # not called from within send
        await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0.05)  # and never a second time
    assert calls == [(200, None, None), (200, None, None)]
    assert raw.connections == 1

    listening = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    listening.close()
    await listening.wait_closed()
    calls.clear()
    done.clear()
    client.send(f"http://127.0.0.1:{port}/", {}, b"{}", answered)
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0.05)
    assert len(calls) == 1
    status, retry_after, exc = calls[0]
    assert (status, retry_after) == (None, None) and isinstance(exc, ConnectionRefusedError)


async def test_retry_after_and_a_redirect_are_answers_not_followed(raw, client):
    raw.answer = lambda n: (
        b"HTTP/1.1 503 Busy\r\nretry-after: 120\r\nContent-Length: 0\r\n\r\n"
        if n == 1
        else b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n"
    )
    url = f"http://127.0.0.1:{raw.port}/"
    assert await client.post(url, {}, b"{}") == (503, "120")
    assert await client.post(url, {}, b"{}") == (302, None)
    assert len(raw.requests) == 2


async def test_a_connection_the_receiver_closed_while_idle_is_replaced_once(raw, client):
    raw.close_after = lambda n: True  # the receiver closes after every answer
    url = f"http://127.0.0.1:{raw.port}/"
    for _ in range(3):
        assert await client.post(url, {}, b"{}") == (200, None)
    assert len(raw.requests) == 3 and raw.connections == 3


async def test_a_connection_closed_before_its_answer_is_an_error(raw, client):
    raw.answer = lambda n: b""  # reads the request, then closes without a word
    raw.close_after = lambda n: True
    with pytest.raises(BadResponse, match="closed the connection unanswered"):
        await client.post(f"http://127.0.0.1:{raw.port}/", {}, b"{}")
    assert len(raw.requests) == 1  # a fresh connection: not sent twice


async def test_an_answer_delimited_by_the_close_and_an_interim_100(raw, client):
    raw.answer = lambda n: (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 204 No Content\r\n\r\n"
        if n == 1
        else b"HTTP/1.1 202 Accepted\r\n\r\nbody until the close"
    )
    raw.close_after = lambda n: n > 1
    url = f"http://127.0.0.1:{raw.port}/"
    assert await client.post(url, {}, b"{}") == (204, None)
    assert await client.post(url, {}, b"{}") == (202, None)


async def test_a_chunked_answer_is_read_to_its_end_and_its_connection_reused(raw, client):
    raw.answer = lambda n: (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    url = f"http://127.0.0.1:{raw.port}/"
    assert await client.post(url, {}, b"{}") == (200, "7")
    assert await client.post(url, {}, b"{}") == (200, "7")
    assert raw.connections == 1  # the whole chunked body was consumed: the connection reused


async def test_a_huge_answer_is_cut_off_and_its_connection_not_reused(raw, client):
    huge = RESPONSE_BYTES_MAX * 4
    raw.answer = lambda n: (
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % huge + b"x" * huge if n == 1 else OK
    )
    url = f"http://127.0.0.1:{raw.port}/"
    assert await client.post(url, {}, b"{}") == (200, None)
    assert await client.post(url, {}, b"{}") == (200, None)
    assert raw.connections == 2


async def test_an_answer_that_is_not_http_is_an_error(raw, client):
    raw.answer = lambda n: b"SSH-2.0-OpenSSH_9.2\r\n"
    with pytest.raises(BadResponse, match="not an HTTP answer"):
        await client.post(f"http://127.0.0.1:{raw.port}/", {}, b"{}")


def hang_until_set(raw: RawServer) -> asyncio.Event:
    """The server starts each answer and never finishes it, until the event is set."""
    answered = asyncio.Event()
    raw.answer = lambda n: OK if answered.is_set() else b"HTTP/1.1 200 OK\r\n"
    return answered


async def test_a_timeout_leaves_no_connection_to_reuse(raw):
    answered = hang_until_set(raw)
    url = f"http://127.0.0.1:{raw.port}/"
    client = WebhookClient(True, "Kassa-Webhooks/1.0", timeout_s=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no answer within 0\.3 s"):
            await client.post(url, {}, b"{}")
        waited = time.monotonic() - started
        assert 0.3 <= waited < 0.3 + 0.2  # cut off by the client's own bound, in time
        answered.set()
        assert await client.post(url, {}, b"{}") == (200, None)
        assert raw.connections == 2  # the cut-off connection was closed, not reused
    finally:
        await client.close()


async def test_a_post_canceled_by_its_caller_leaves_no_connection_to_reuse(raw, client):
    answered = hang_until_set(raw)
    url = f"http://127.0.0.1:{raw.port}/"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await client.post(url, {}, b"{}")
    answered.set()
    assert await client.post(url, {}, b"{}") == (200, None)
    assert raw.connections == 2


async def test_a_sweep_closes_the_idle_connections_too_old_to_reuse(raw, client, monkeypatch):
    from gateway.webhooks import client as module

    url = f"http://127.0.0.1:{raw.port}/"
    await asyncio.gather(*(client.post(url, {}, b"{}") for _ in range(3)))
    assert (raw.connections, client.idle_connections) == (3, 3)
    client.sweep()
    assert client.idle_connections == 3  # fresh: kept for reuse
    monkeypatch.setattr(module, "IDLE_REUSE_S", 0.0)
    client.sweep()
    assert client.idle_connections == 0
    await asyncio.sleep(0.05)
    assert await client.post(url, {}, b"{}") == (200, None)
    assert raw.connections == 4  # a new one: the swept ones were closed


async def test_a_refused_connection_is_an_os_error(client):
    listening = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    listening.close()
    await listening.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await client.post(f"http://127.0.0.1:{port}/", {}, b"{}")


def self_signed(host: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


async def test_https_verifies_the_receivers_certificate(raw, client, tmp_path):
    certificate, key = self_signed("localhost")
    (tmp_path / "cert.pem").write_bytes(certificate)
    (tmp_path / "key.pem").write_bytes(key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    listening = await asyncio.start_server(raw.handle, "127.0.0.1", 0, ssl=context)
    port = listening.sockets[0].getsockname()[1]
    try:
        # Not signed by a trusted authority: refused before anything is sent.
        with pytest.raises(ssl.SSLCertVerificationError):
            await client.post(f"https://localhost:{port}/", {}, b"{}")
        assert raw.requests == []
        # Trusted, the same server is reached over TLS, and the connection kept alive.
        client._tls_context().load_verify_locations(tmp_path / "cert.pem")
        for _ in range(2):
            assert await client.post(f"https://localhost:{port}/", {}, b"{}") == (200, None)
        assert len(raw.requests) == 2
    finally:
        listening.close()
