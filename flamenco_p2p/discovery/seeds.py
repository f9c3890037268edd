"""Seed addresses: peers named in the config for networks where mDNS does not reach."""

from __future__ import annotations

import ipaddress
import re

from flamenco_p2p.errors import ConfigError

# RFC 1123 host name label: letters, digits and inner hyphens, 1-63 characters.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
_MAX_HOST_NAME = 253
_EXAMPLES = "use 'host', 'host:port', '192.0.2.10:7000' or '[2001:db8::1]:7000'"


def parse_seed(text: str, default_port: int) -> tuple[str, int]:
    """Parse a seed address into (host, port), raising ConfigError naming the text."""
    seed = text.strip()
    if not seed:
        raise ConfigError(f"seed address {text!r} is empty; {_EXAMPLES}")
    if seed.startswith("["):
        host, port = _split_bracketed(text, seed, default_port)
    elif seed.count(":") > 1:
        # Two or more colons without brackets can only be a bare IPv6 address.
        host, port = seed, default_port
    else:
        host, separator, port_text = seed.partition(":")
        port = _parse_port(text, port_text) if separator else default_port
    _check_host(text, host)
    _check_default_port(default_port)
    return host, port


def _split_bracketed(text: str, seed: str, default_port: int) -> tuple[str, int]:
    closing = seed.find("]")
    if closing == -1:
        raise ConfigError(f"seed address {text!r} has no closing ']'; {_EXAMPLES}")
    host = seed[1:closing]
    rest = seed[closing + 1 :]
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ConfigError(
            f"seed address {text!r}: {host!r} inside brackets is not an IPv6 "
            f"address; {_EXAMPLES}"
        ) from None
    if not rest:
        return host, default_port
    if not rest.startswith(":"):
        raise ConfigError(
            f"seed address {text!r} has {rest!r} after ']', expected ':port'; "
            f"{_EXAMPLES}"
        )
    return host, _parse_port(text, rest[1:])


def _parse_port(text: str, port_text: str) -> int:
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ConfigError(
            f"seed address {text!r} has port {port_text!r}; "
            "give a port number between 1 and 65535"
        )
    return int(port_text)


def _check_host(text: str, host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return
    name = host.removesuffix(".")
    labels = name.split(".")
    if (
        not name
        or len(name) > _MAX_HOST_NAME
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise ConfigError(
            f"seed address {text!r}: {host!r} is not an IP address or host name; "
            f"{_EXAMPLES}"
        )


def _check_default_port(default_port: int) -> None:
    if not 1 <= default_port <= 65535:
        raise ConfigError(
            f"default seed port {default_port!r} is not between 1 and 65535; "
            "fix the node port setting"
        )
