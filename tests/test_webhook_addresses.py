"""The webhook SSRF guard (gateway/webhooks/addresses.py): which addresses a delivery may
reach, the URL check at create/update, and the guard inside the deliverer's own client
(gateway/webhooks/client.py) connecting to a real server on loopback.

There is no internet DNS here: names are "localhost" (resolved by the system, locally),
numeric forms the system resolver answers itself, and ``StaticResolver``, a resolver
that answers fixed records the way a DNS server would (for rebinding-style answers).
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.webhooks.addresses import (
    AddressRefused,
    GuardedResolver,
    check_url,
    is_public,
    refusal,
)
from gateway.webhooks.client import WebhookClient

PROP = settings(max_examples=200, deadline=None)


class StaticResolver(AbstractResolver):
    """Answers each name with fixed addresses (or a lookup failure), like a DNS server."""

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.records:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.records[host]
        ]

    async def close(self) -> None:
        self.closed = True


# ---- addresses ----------------------------------------------------------------------------

REFUSED = [
    ("127.0.0.1", "a loopback address"),
    ("127.255.0.9", "a loopback address"),
    ("10.0.0.1", "a private address"),
    ("172.16.5.4", "a private address"),
    ("192.168.1.1", "a private address"),
    ("169.254.169.254", "a link-local address"),  # the cloud metadata service
    ("100.64.0.1", "a shared (carrier-grade NAT) address"),
    ("100.127.255.254", "a shared (carrier-grade NAT) address"),
    ("0.0.0.0", "an unspecified address"),
    ("224.0.0.1", "a multicast address"),
    ("240.0.0.1", "a reserved address"),
    ("255.255.255.255", "a reserved address"),
    ("192.0.2.10", "a private address"),  # documentation (TEST-NET-1)
    ("198.18.0.1", "a private address"),  # benchmarking
    ("::1", "a loopback address"),
    ("::", "an unspecified address"),
    ("fe80::1", "a link-local address"),
    ("fc00::1", "a private address"),  # unique local
    ("fd12:3456::1", "a private address"),
    ("fec0::1", "a private address"),  # site-local (deprecated, still routed by some)
    ("ff02::1", "a multicast address"),
    ("2001:db8::1", "a private address"),  # documentation
    # IPv4 in IPv6 forms: the embedded IPv4 address decides.
    ("::ffff:127.0.0.1", "a loopback address"),
    ("::ffff:169.254.169.254", "a link-local address"),
    ("::ffff:10.0.0.1", "a private address"),
    ("::ffff:100.64.0.1", "a shared (carrier-grade NAT) address"),
    ("64:ff9b::a9fe:a9fe", "a link-local address"),  # NAT64 of 169.254.169.254
    ("64:ff9b::7f00:1", "a loopback address"),  # NAT64 of 127.0.0.1
    ("2002:7f00:1::1", "a loopback address"),  # 6to4 of 127.0.0.1
    ("2002:a9fe:a9fe::1", "a link-local address"),  # 6to4 of 169.254.169.254
    ("2002:0a00:0001::1", "a private address"),  # 6to4 of 10.0.0.1
    # Teredo with server 65.54.227.120 and client 192.168.0.1 (obfuscated: bits flipped).
    ("2001:0:4136:e378:8000:63bf:3f57:fffe", "a private address"),
]
PUBLIC = [
    "93.184.216.34",
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",  # mapped public
    "64:ff9b::808:808",  # DNS64's answer for 8.8.8.8 on an IPv6-only network
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize("text,reason", REFUSED)
def test_non_public_addresses_are_refused_with_their_reason(text, reason):
    address = ipaddress.ip_address(text)
    assert not is_public(address)
    assert refusal(address) == reason


@pytest.mark.parametrize("text", PUBLIC)
def test_public_addresses_are_accepted(text):
    assert is_public(ipaddress.ip_address(text))
    assert refusal(ipaddress.ip_address(text)) is None


NON_PUBLIC_V4 = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8"]
NON_PUBLIC_V4 += ["169.254.0.0/16", "100.64.0.0/10", "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4"]


@PROP
@given(st.sampled_from(NON_PUBLIC_V4).flatmap(lambda net: st.ip_addresses(network=net)))
def test_every_address_of_a_non_public_range_is_refused_in_every_form(address):
    forms = [
        address,
        ipaddress.IPv6Address(f"::ffff:{address}"),  # IPv4-mapped
        ipaddress.IPv6Address((0x0064FF9B << 96) | int(address)),  # NAT64
        ipaddress.IPv6Address((0x2002 << 112) | (int(address) << 80) | 1),  # 6to4
    ]
    for form in forms:
        assert not is_public(form), form
        assert refusal(form) == refusal(address), form


@PROP
@given(st.ip_addresses(v=4))
def test_mapped_and_nat64_forms_decide_like_their_ipv4_address(address):
    assert is_public(ipaddress.IPv6Address(f"::ffff:{address}")) == is_public(address)
    assert is_public(ipaddress.IPv6Address((0x0064FF9B << 96) | int(address))) == is_public(address)
    if is_public(address):
        assert address.is_global  # never more permissive than the IANA registry


# ---- GuardedResolver ----------------------------------------------------------------------


async def test_localhost_resolves_locally_and_is_refused():
    resolver = GuardedResolver(False)
    try:
        with pytest.raises(AddressRefused, match=r"^localhost resolves to a loopback address"):
            await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
    finally:
        await resolver.close()
    allowed = GuardedResolver(True)
    try:
        answers = await allowed.resolve("localhost", 80, socket.AF_UNSPEC)
    finally:
        await allowed.close()
    assert {ipaddress.ip_address(a["host"]).is_loopback for a in answers} == {True}


async def test_a_public_literal_is_answered_without_dns():
    resolver = GuardedResolver(False, StaticResolver({}))  # any lookup would fail
    answers = await resolver.resolve("93.184.216.34", 443)
    assert [(a["host"], a["port"], a["family"]) for a in answers] == [
        ("93.184.216.34", 443, socket.AF_INET)
    ]
    answers = await resolver.resolve("2606:4700:4700::1111", 443)
    assert answers[0]["family"] == socket.AF_INET6


async def test_a_private_literal_is_refused_by_the_resolver():
    resolver = GuardedResolver(False, StaticResolver({}))
    with pytest.raises(AddressRefused, match=r"^169\.254\.169\.254 is a link-local address$"):
        await resolver.resolve("169.254.169.254", 80)
    assert (await GuardedResolver(True).resolve("127.0.0.1", 80))[0]["host"] == "127.0.0.1"


async def test_only_the_public_answers_of_a_name_are_kept():
    # A name answering a public and a private address (DNS rebinding tries this): aiohttp
    # is only ever given the public one to connect to.
    dns = StaticResolver(
        {
            "mixed.example": ["10.0.0.5", "93.184.216.34", "::1"],
            "internal.example": ["10.1.2.3", "fd00::1"],
        }
    )
    resolver = GuardedResolver(False, dns)
    assert [a["host"] for a in await resolver.resolve("mixed.example", 443)] == ["93.184.216.34"]
    with pytest.raises(
        AddressRefused, match=r"^internal\.example resolves to a private address \(10\.1\.2\.3\)$"
    ):
        await resolver.resolve("internal.example", 443)
    everything = await GuardedResolver(True, dns).resolve("internal.example", 443)
    assert [a["host"] for a in everything] == ["10.1.2.3", "fd00::1"]
    await resolver.close()
    assert dns.closed


def test_address_refused_is_an_os_error_that_reads_as_its_reason():
    # aiohttp turns an OSError from a resolver or socket into a ClientConnectorError, which
    # the deliverer already handles as a failed connection.
    refused = AddressRefused("localhost resolves to a loopback address (127.0.0.1)")
    assert isinstance(refused, OSError)
    assert str(refused) == "localhost resolves to a loopback address (127.0.0.1)"


# ---- a real connection to a real server on loopback ---------------------------------------


@pytest.fixture
async def loopback_server():
    """A real HTTP server on 127.0.0.1 that counts the requests it got."""
    hits: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port, hits
    finally:
        await runner.cleanup()


async def fetch(allow_private: bool, url: str) -> int:
    """One POST through the deliverer's own client (gateway/webhooks/client.py)."""
    client = WebhookClient(allow_private, "Kassa-Webhooks-test", timeout_s=5.0)
    try:
        status, _ = await client.post(url, {}, b"{}")
        return status
    finally:
        await client.close()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::ffff:127.0.0.1]"])
async def test_the_deliverers_client_refuses_names_and_literals(loopback_server, host):
    port, hits = loopback_server
    with pytest.raises(AddressRefused) as info:
        await fetch(False, f"http://{host}:{port}/hook")
    assert "loopback" in str(info.value)
    assert hits == []  # nothing reached the server


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_the_deliverers_client_allowing_private_reaches_the_server(loopback_server, host):
    port, hits = loopback_server
    assert await fetch(True, f"http://{host}:{port}/hook") == 200
    assert hits == ["/hook"]


# ---- check_url ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url,reason",
    [
        ("ftp://example.com/hook", "url must be an http or https URL"),
        ("javascript:alert(1)", "url must be an http or https URL"),
        ("example.com/hook", "url must be an http or https URL"),
        ("https://user:secret@example.com/hook", "url must not contain a user name or password"),
        ("https://user@example.com/hook", "url must not contain a user name or password"),
        ("https://:secret@example.com/hook", "url must not contain a user name or password"),
        ("https://@example.com/hook", "url must not contain a user name or password"),
        ("https:///hook", "url must have a host"),
        ("https:", "url must have a host"),
        ("https://example.com/" + "a" * 2048, "url must be at most 2048 characters"),
        ("https://example.com:99999/", "url is not a valid URL"),
        ("https://[::1/", "url is not a valid URL"),
        ("https://exa mple.com/", "url's host exa mple.com is not a valid host name"),
        ("https://%31%32%37.0.0.1/", "url's host %31%32%37.0.0.1 is not a valid host name"),
        ("http://localhost:8080/hook", "url's host localhost is a loopback name"),
        ("http://LOCALHOST./hook", "url's host localhost. is a loopback name"),
        ("http://shop.localhost/hook", "url's host shop.localhost is a loopback name"),
        ("http://127.0.0.1/hook", "url's host 127.0.0.1 is a loopback address"),
        ("http://10.0.0.1/hook", "url's host 10.0.0.1 is a private address"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "url's host 169.254.169.254 is a link-local address",
        ),
        ("http://100.64.1.1/", "url's host 100.64.1.1 is a shared (carrier-grade NAT) address"),
        ("http://[::1]:8080/hook", "url's host ::1 is a loopback address"),
        ("http://[::ffff:10.0.0.1]/", "url's host ::ffff:a00:1 is a private address"),
        ("http://[fe80::1]/", "url's host fe80::1 is a link-local address"),
        # Legacy numeric forms: the system resolver turns them into 127.0.0.1 (no DNS).
        ("http://127.1/hook", "url's host 127.1 resolves to a loopback address (127.0.0.1)"),
        ("http://2130706433/", "url's host 2130706433 resolves to a loopback address (127.0.0.1)"),
    ],
)
async def test_check_url_names_the_reason(url, reason):
    assert await check_url(url, allow_private=False) == reason


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.216.34/hooks/kassa",
        "http://93.184.216.34:8080/",
        "HTTPS://93.184.216.34/",
        "https://[2606:4700:4700::1111]/hook",
        "https://93.184.216.34/" + "a" * (2048 - len("https://93.184.216.34/")),  # exactly 2048
    ],
)
async def test_check_url_accepts_a_public_literal(url):
    assert await check_url(url, allow_private=False) is None


async def test_check_url_resolves_names_through_the_given_resolver():
    dns = StaticResolver({"shop.example": ["93.184.216.34"], "intranet.example": ["10.1.2.3"]})
    assert await check_url("https://shop.example/hook", False, dns) is None
    assert (
        await check_url("https://intranet.example/hook", False, dns)
        == "url's host intranet.example resolves to a private address (10.1.2.3)"
    )
    assert (
        await check_url("https://nowhere.example/hook", False, dns)
        == "url's host nowhere.example could not be resolved"
    )
    assert not dns.closed  # the caller's resolver stays the caller's


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/hook", "http://localhost/hook", "http://[::1]/", "http://10.0.0.1/"]
)
async def test_allow_private_accepts_private_hosts(url):
    assert await check_url(url, allow_private=True) is None


async def test_allow_private_still_checks_the_url_itself():
    assert await check_url("ftp://localhost/", True) == "url must be an http or https URL"
    assert await check_url("http://a:b@localhost/", True) == (
        "url must not contain a user name or password"
    )


async def test_a_refusal_never_echoes_a_password():
    reason = await check_url("https://user:hunter2@example.com:99999/", False)
    assert reason is not None and "hunter2" not in reason
