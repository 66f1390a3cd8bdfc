"""Webhook target URLs: their shape, and the SSRF rule (every address a host
resolves to must be public unless WEBHOOK_ALLOW_PRIVATE_TARGETS), checked when
subscribing and again before every connection."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import idna
from django.conf import settings

from core.errors import ValidationFailed

MAX_URL_LENGTH = 2000


CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f-\x9f]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
# Labels of letters, digits, "-" and "_" (some hosts have one), at most 63 long.
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")
# A bracketed host is an IPv6 address and nothing else: "[" and "]" once each, around it.
_BRACKETED = re.compile(r"\[[^\[\]]*\](:[^\[\]]*)?")
# IPv6 addresses that carry an IPv4 address, judged by that one: IPv4-mapped,
# IPv4-compatible (::/96, deprecated), the well-known NAT64 prefix (RFC 6052),
# 6to4 (2002::/16) and Teredo (2001::/32: its server and its client).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# Local-use NAT64 (RFC 8215): a translator inside some network, never a public target.
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class TargetRefused(ValidationFailed):
    """A webhook URL that may not be used; `code` is the API's error code."""

    def __init__(self, code: str, detail: str):
        self.code = code
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # A-label host name or IP address text (no brackets)
    port: int
    path: str  # path and query, as sent in the request line

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def target_parse(url: str) -> Target:
    """The parts of a webhook URL, or TargetRefused(invalid_webhook_url)."""

    def refuse(why: str):
        raise TargetRefused("invalid_webhook_url", f"url: {why}")

    if len(url) > MAX_URL_LENGTH:
        refuse(f"at most {MAX_URL_LENGTH} characters.")
    if CONTROL_OR_SPACE.search(url):
        refuse("spaces and control characters are not allowed (percent-encode them).")
    try:
        parts = urlsplit(url)
    except ValueError:  # a broken IPv6 literal: "[::1", "[zz::1]"
        refuse("the host is not a valid address.")
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        refuse("must be an https:// URL.")
    if scheme == "http" and not settings.WEBHOOK_ALLOW_HTTP:
        refuse("must be https:// (plain http is allowed only with WEBHOOK_ALLOW_HTTP).")
    if "@" in parts.netloc:
        refuse("credentials in the URL are not allowed; authenticate the request by its signature.")
    if parts.fragment or url.endswith("#"):
        refuse("a fragment (#…) is not allowed.")
    host_and_port = parts.netloc.rpartition("@")[2]
    if ("[" in host_and_port or "]" in host_and_port) and not _BRACKETED.fullmatch(host_and_port):
        refuse("the host is not a valid address.")
    try:
        port = parts.port
    except ValueError:
        refuse("the port is not a number from 1 to 65535.")
    if port == 0:
        refuse("the port is not a number from 1 to 65535.")
    host = parts.hostname or ""
    if not host:
        refuse("a host name is required.")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        if host_and_port.startswith("[") or ":" in host:
            refuse("the host is not a valid address.")
        host = host.rstrip(".")
        if not host.isascii():
            try:
                host = idna.encode(host, uts46=True).decode("ascii")
            except idna.IDNAError:
                refuse("the host is not a valid host name.")
        if not _HOST_NAME.fullmatch(host):
            refuse("the host is not a valid host name.")
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    path = _NON_ASCII.sub(lambda found: quote(found.group()), path)  # the request line is ASCII
    return Target(scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80), path=path)


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not (
        ip.is_multicast or ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_reserved or ip.is_unspecified
    )


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (none for most)."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    return []


def address_allowed(address: str) -> bool:
    """A public unicast address: not loopback, private, link-local (169.254.169.254,
    the cloud metadata service, is one), multicast, reserved or unspecified. An
    IPv6 address carrying an IPv4 one is judged by that one as well: a mapped or
    NAT64 address by it alone, a 6to4, Teredo or IPv4-compatible one also by
    itself (Teredo and IPv4-compatible addresses are never public), and a
    local-use NAT64 address (64:ff9b:1::/48) is refused."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 4:
        return _public(ip)
    if ip in _NAT64_LOCAL:
        return False
    embedded = _embedded_ipv4(ip)
    if not all(_public(ipv4) for ipv4 in embedded):
        return False
    if ip.ipv4_mapped is not None or ip in _NAT64:
        return True
    return _public(ip)


def target_addresses(target: Target) -> list[str]:
    """The addresses to connect to for `target`, every one checked: TargetRefused
    if the host does not resolve or any of its addresses is not allowed."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as error:
        raise TargetRefused("webhook_host_unresolvable", f"url: the host {target.host} does not resolve ({error}).") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise TargetRefused("webhook_host_unresolvable", f"url: the host {target.host} has no address.")
    if not settings.WEBHOOK_ALLOW_PRIVATE_TARGETS:
        refused = [a for a in addresses if not address_allowed(a)]
        if refused:
            raise TargetRefused(
                "webhook_target_not_allowed",
                f"url: {target.host} resolves to {refused[0]}, an internal address "
                "(loopback, private, link-local, multicast or reserved); "
                "only public addresses are allowed unless WEBHOOK_ALLOW_PRIVATE_TARGETS is set.",
            )
    return addresses


def webhook_url_check(url: str) -> Target:
    """Validate a URL a caller subscribes: its shape, its scheme, and (unless
    WEBHOOK_ALLOW_PRIVATE_TARGETS) that its host resolves to public addresses only."""
    try:
        target = target_parse(url)
        if not settings.WEBHOOK_ALLOW_PRIVATE_TARGETS:
            target_addresses(target)
    except TargetRefused as refused:
        raise ValidationFailed(refused.detail, fields={"url": [refused.detail]}, code=refused.code) from None
    return target
