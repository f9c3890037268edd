"""Parsing of the addresses that an artist types: farm nodes and mDNS interfaces."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

DEFAULT_HTTP_PORT = 8888
"""The port of a node's HTTP API unless its config sets ``ports.http``."""

_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


class AddressError(ValueError):
    """An address that does not parse; the message quotes it and gives the form."""


def node_base_url(text: str, default_port: int = DEFAULT_HTTP_PORT) -> str:
    """Turn ``host``, ``host:port``, ``[v6]:port`` or ``http://host:port/`` into a URL.

    Returns ``http://host:port`` without a trailing slash. Raises AddressError
    naming the part that is wrong.
    """
    value = text.strip()
    if not value:
        raise AddressError(
            "the node address is empty; type a node's host name or IP address,"
            " optionally with :port"
        )
    if "://" in value:
        scheme = value.split("://", 1)[0].lower()
        if scheme != "http":
            raise AddressError(
                f"{value!r} uses {scheme}://; farm nodes serve plain http://"
            )
    else:
        value = "http://" + value
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError as error:
        raise AddressError(
            f"{text.strip()!r} is not a valid address ({error}); use host or"
            " host:port, such as 192.168.1.20:8888"
        ) from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise AddressError(
            f"{text.strip()!r} has a path; give only the node's host and port"
        )
    if parts.username is not None or parts.password is not None:
        raise AddressError(f"{text.strip()!r} contains a user name; remove it")
    host = parts.hostname or ""
    _check_host(host, text.strip())
    if port == 0:
        raise AddressError(f"{text.strip()!r} has port 0; use a port 1 to 65535")
    chosen = default_port if port is None else port
    shown_host = f"[{host}]" if ":" in host else host
    return f"http://{shown_host}:{chosen}"


def _check_host(host: str, original: str) -> None:
    if not host:
        raise AddressError(f"{original!r} has no host name or IP address")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_NAME.fullmatch(host):
            raise AddressError(
                f"{host!r} in {original!r} is neither an IP address nor a host name"
            ) from None


def parse_interfaces(text: str) -> list[str] | None:
    """Parse the mDNS interface setting: IPv4 addresses separated by commas.

    Returns None for an empty setting, which means every interface. Raises
    AddressError naming an entry that is not an IPv4 address.
    """
    entries = [entry.strip() for entry in text.replace(";", ",").split(",")]
    addresses = [entry for entry in entries if entry]
    if not addresses:
        return None
    for address in addresses:
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise AddressError(
                f"mDNS interface {address!r} is not an IPv4 address; list the"
                " addresses of this machine's interfaces, such as 192.168.1.20,"
                " or leave the setting empty to use every interface"
            ) from None
    return list(dict.fromkeys(addresses))


def describe_interfaces(interfaces: list[str] | None) -> str:
    """Return the interface setting as a phrase for messages."""
    if interfaces is None:
        return "every network interface"
    return "interface " + ", ".join(interfaces)
