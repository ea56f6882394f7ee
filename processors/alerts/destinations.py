"""Which webhook destinations the dispatcher may contact, and a transport that pins the address it checked.

A webhook URL is checked twice. `check_url` is static (settings load and every request): http or
https only, no userinfo, a plain host name or a canonical IP literal, no cloud metadata name. At
each attempt `PinnedTransport` resolves the host once, refuses the request if any resolved
address is not allowed, and connects to the address it checked (the Host header and the TLS
server name stay the host name), so a DNS answer that changes between the check and the connect
(rebinding) cannot redirect the request. Proxies from the environment are not used.

Refused unless `alert_allow_private_destinations`: loopback, link-local, private (RFC 1918,
fc00::/7) and every other non-global address (shared 100.64/10, documentation, reserved).
Refused always: cloud metadata addresses and names, unspecified and multicast addresses, and
numeric host forms that are not canonical IP literals (`2130706433`, `0x7f.1`, `127.1`),
which resolvers read differently.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from processors.alerts.errors import DestinationRefused

__all__ = [
    "Destination",
    "DestinationRefused",
    "PinnedTransport",
    "Resolver",
    "check_address",
    "check_url",
    "destination_id",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
"""(host, port) -> the addresses the host resolves to, as text."""

SCHEMES = frozenset({"http", "https"})

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.169.253",  # AWS VPC DNS
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.0.23",  # Tencent Cloud
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server (a global address: refused by name, not by class)
        "fd00:ec2::254",  # AWS IPv6
    )
)
METADATA_HOSTS = frozenset(
    {
        "metadata.google.internal",
        "metadata.goog",
        "metadata",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
    }
)
LOOPBACK_HOSTS = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


@dataclass(frozen=True, slots=True)
class Destination:
    """A URL that passed the static checks."""

    scheme: str
    host: str
    """Lower case, no trailing dot; an IP literal without brackets."""
    port: int
    ip: IPAddress | None
    """The address when the host is an IP literal; None for a name, resolved per attempt."""


def _embedded_ipv4(ip: IPAddress) -> list[IPAddress]:
    """IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64), to check them too."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found: list[IPAddress] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in ipaddress.IPv6Network("64:ff9b::/96"):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _refusal(ip: IPAddress, allow_private: bool) -> DestinationRefused | None:
    if ip in METADATA_ADDRESSES:
        return DestinationRefused("metadata", f"{ip} is a cloud metadata address")
    if ip.is_unspecified:
        return DestinationRefused("unspecified", f"{ip} is the unspecified address")
    if ip.is_multicast:
        return DestinationRefused("multicast", f"{ip} is a multicast address")
    if allow_private:
        return None
    if ip.is_loopback:
        return DestinationRefused("loopback", f"{ip} is a loopback address", overridable=True)
    if ip.is_link_local:
        return DestinationRefused("link_local", f"{ip} is a link-local address", overridable=True)
    if ip.is_private:
        return DestinationRefused("private", f"{ip} is a private address", overridable=True)
    if not ip.is_global:
        return DestinationRefused("not_global", f"{ip} is not a public address", overridable=True)
    return None


def check_address(ip: IPAddress, *, allow_private: bool) -> None:
    """Raise DestinationRefused unless the dispatcher may connect to `ip`."""
    # The embedded IPv4 address first: it is where the packet would go, and names the better reason.
    for candidate in (*_embedded_ipv4(ip), ip):
        refused = _refusal(candidate, allow_private)
        if refused is not None:
            if candidate != ip:
                refused = DestinationRefused(refused.code, f"{ip} embeds {refused}", overridable=refused.overridable)
            raise refused


def check_url(url: str, *, allow_private: bool) -> Destination:
    """The static checks on a webhook URL; no name is resolved here. Raises DestinationRefused."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise DestinationRefused("invalid_url", f"not a valid URL: {exc}") from None
    scheme = parsed.scheme.lower()
    if scheme not in SCHEMES:
        raise DestinationRefused("scheme", f"scheme {scheme or '(none)'!r} is not http or https")
    if parsed.userinfo:
        raise DestinationRefused("userinfo", "credentials in the URL (user@host) are not allowed")
    raw = parsed.host
    if not raw:
        raise DestinationRefused("no_host", "the URL has no host")
    if "%" in raw:
        raise DestinationRefused("host", f"host {raw!r} has percent-encoding or an IPv6 zone")
    host = raw.lower().removesuffix(".")
    port = parsed.port or (443 if scheme == "https" else 80)
    try:
        ip: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        check_address(ip, allow_private=allow_private)
        return Destination(scheme, host, port, ip)
    labels = host.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        # 2130706433, 0x7f.1, 127.1, 0177.0.0.1: inet_aton reads these as addresses; no DNS name
        # ends in a numeric label, so only a canonical literal is accepted.
        raise DestinationRefused("ambiguous_ip", f"host {host!r} is a non-canonical numeric address")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise DestinationRefused("host", f"host {host!r} is not a valid host name")
    if host in METADATA_HOSTS:
        raise DestinationRefused("metadata", f"{host} is a cloud metadata host")
    if not allow_private and (host in LOOPBACK_HOSTS or host.endswith(".localhost")):
        raise DestinationRefused("loopback", f"{host} is a loopback name", overridable=True)
    return Destination(scheme, host, port, None)


def destination_id(url: str, name: str = "") -> str:
    """A stable, secret-free id of a webhook for delivery records: label plus a hash of the URL."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    if name:
        return f"{name}#{digest}"
    parsed = httpx.URL(url)
    port = f":{parsed.port}" if parsed.port else ""
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{parsed.scheme}://{host}{port}#{digest}"


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class PinnedTransport(httpx.BaseTransport):
    """Checks every request's destination, resolves its host once and connects to that address."""

    def __init__(
        self,
        *,
        allow_private: bool,
        resolver: Resolver = system_resolver,
        inner: httpx.BaseTransport | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.resolver = resolver
        self._inner = inner if inner is not None else httpx.HTTPTransport(retries=0)

    def resolve(self, destination: Destination) -> IPAddress:
        """The address to connect to: the literal, or the first resolved one if all are allowed."""
        if destination.ip is not None:
            return destination.ip
        try:
            answers = self.resolver(destination.host, destination.port)
        except (OSError, UnicodeError) as exc:
            raise httpx.ConnectError(f"cannot resolve {destination.host}: {exc}") from exc
        addresses = []
        for answer in answers:
            ip = ipaddress.ip_address(answer.split("%", 1)[0])
            if "%" in answer:  # a scoped (zone) address: link-local by construction
                raise DestinationRefused("link_local", f"{destination.host} resolves to scoped {answer}")
            try:
                check_address(ip, allow_private=self.allow_private)
            except DestinationRefused as exc:
                raise DestinationRefused(
                    exc.code, f"{destination.host} resolves to {exc}", overridable=exc.overridable
                ) from None
            addresses.append(ip)
        if not addresses:
            raise httpx.ConnectError(f"{destination.host} resolves to no address")
        return addresses[0]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        destination = check_url(str(request.url), allow_private=self.allow_private)
        ip = self.resolve(destination)
        # The Host header was set from the original URL when the request was built; it stays.
        request.url = request.url.copy_with(host=str(ip))
        if destination.scheme == "https" and destination.ip is None:
            request.extensions = {**request.extensions, "sni_hostname": destination.host}
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()
