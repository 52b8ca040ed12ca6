"""The SSRF guard: webhook deliveries reach public addresses only.

A merchant chooses the URL Kassa POSTs to, so without a guard a webhook endpoint is a way
to make the gateway send requests into its own network: the cloud metadata service
(169.254.169.254), the database, an admin port on loopback. Unless
``KASSA_WEBHOOK_ALLOW_PRIVATE=1`` (development and tests), every address that is not
globally reachable is refused, twice:

- ``check_url`` when an endpoint is created or updated, so the merchant hears why at once
  (``400 parameter_invalid``, param ``url``);
- on every connection a delivery makes, because DNS can change after the check (or answer
  differently on purpose: DNS rebinding). The address checked must be the address
  connected to: the deliverer's client (gateway/webhooks/client.py) connects only to
  what ``GuardedResolver`` returned, and the resolver checks IP literals
  (``http://127.0.0.1/``) as well as what DNS answered for a name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import urllib.parse

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

URL_CHARS_MAX = 2048
RESOLVE_TIMEOUT_S = 5.0  # check_url answers an API request: a slow DNS must not hang it
SCHEMES = ("http", "https")

# Prefixes that embed an IPv4 address a packet may end up at (RFC 6052 NAT64, RFC 3056
# 6to4): the embedded address decides. IPv4-mapped and Teredo have ipaddress properties.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT
# A DNS name as it appears on the wire (yarl has IDNA-encoded it): letters, digits, "-"
# and "_" in dot-separated labels of at most 63 characters.
_HOST_NAME = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*\.?")


class AddressRefused(OSError):
    """A webhook URL's host is, or resolves to, an address webhooks may not reach.

    An OSError, so aiohttp reports it as a failed connection (``ClientConnectorError``,
    whose message quotes ``strerror``: set here to the reason).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(None, reason)

    def __str__(self) -> str:
        return str(self.strerror)


def refusal(address: Address) -> str | None:
    """Why a delivery may not reach ``address`` ("a loopback address", ...), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        # IPv4-mapped and NAT64 addresses are IPv4 addresses in IPv6 clothes (DNS64 answers
        # NAT64 ones for every IPv4-only site): the IPv4 address alone decides. 6to4 and
        # Teredo addresses route through their embedded IPv4 address: it must pass too.
        if address.ipv4_mapped is not None:
            return refusal(address.ipv4_mapped)
        if address in _NAT64:
            return refusal(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        for embedded in _tunnelled_ipv4(address):
            why = refusal(embedded)
            if why is not None:
                return why
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local):
        return "a private address"
    if not address.is_global:
        return "not a globally reachable address"
    return None


def is_public(address: Address) -> bool:
    """Whether a webhook delivery may connect to ``address``."""
    return refusal(address) is None


def _tunnelled_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:
        return address.teredo  # (server, client)
    return ()


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, answering only addresses a delivery may reach.

    ``resolve`` drops the refused addresses of a name and raises ``AddressRefused`` when
    none is left; aiohttp then connects only to what it returned, so there is no window
    between the check and the connection for DNS to change in.
    """

    def __init__(self, allow_private: bool, inner: AbstractResolver | None = None) -> None:
        self.allow_private = allow_private
        self._inner = inner  # the default one is made in resolve(): it needs a running loop

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        literal = _literal(host)
        if literal is not None:
            self._check(host, literal, "is")
            address_family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            numeric = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
            return [
                ResolveResult(
                    hostname=host,
                    host=str(literal),
                    port=port,
                    family=address_family,
                    proto=0,
                    flags=numeric,
                )
            ]
        if self._inner is None:
            self._inner = DefaultResolver()
        results = await self._inner.resolve(host, port, family)
        if self.allow_private:
            return results
        kept = []
        first_refusal = ""
        for result in results:
            address = _literal(result["host"])
            why = "no IP address" if address is None else refusal(address)
            if why is None:
                kept.append(result)
            elif not first_refusal:
                first_refusal = why if address is None else f"{why} ({address})"
        if not kept:
            raise AddressRefused(f"{host} resolves to {first_refusal or 'no address'}")
        return kept

    def _check(self, host: str, address: Address, verb: str) -> None:
        if self.allow_private:
            return
        why = refusal(address)
        if why is not None:
            raise AddressRefused(f"{host} {verb} {why}")

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def _localhost_name(host: str) -> bool:
    # RFC 6761: "localhost" and every name under it are loopback, whatever DNS says.
    name = host.rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


async def check_url(
    url: str, allow_private: bool, resolver: AbstractResolver | None = None
) -> str | None:
    """Why ``url`` may not be a webhook endpoint (a message for the API's ``url`` param
    error), or None when it may. Resolves the host unless ``allow_private``."""
    if len(url) > URL_CHARS_MAX:
        return f"url must be at most {URL_CHARS_MAX} characters"
    try:
        parsed = URL(url)
        netloc = urllib.parse.urlsplit(url).netloc
    except ValueError:  # not echoed: the parser's message may quote a password
        return "url is not a valid URL"
    if parsed.scheme not in SCHEMES:
        return "url must be an http or https URL"
    if "@" in netloc:
        return "url must not contain a user name or password"
    host = parsed.raw_host
    if not host:
        return "url must have a host"
    literal = _literal(host)
    if literal is None and not _HOST_NAME.fullmatch(host):
        return f"url's host {host} is not a valid host name"
    if allow_private:
        return None
    if literal is not None:
        why = refusal(literal)
        return f"url's host {host} is {why}" if why else None
    if _localhost_name(host):
        return f"url's host {host} is a loopback name"
    guard = GuardedResolver(allow_private, resolver)
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            await guard.resolve(host, parsed.port or 0, socket.AF_UNSPEC)
    except AddressRefused as refused:
        return f"url's host {refused}"
    except (OSError, TimeoutError):
        return f"url's host {host} could not be resolved"
    finally:
        if resolver is None:
            await guard.close()  # a resolver passed in stays the caller's to close
    return None
