"""The discovery records: what a node publishes and how it travels as mDNS TXT.

A node's TXT record carries these keys, all values ASCII or UTF-8 text:

    v      protocol version, decimal
    id     node id, 32 lowercase hex characters (also the service instance name)
    farm   farm id, 16-64 lowercase hex characters
    site   site name, free text without control characters
    roles  comma-separated ``role:epoch`` pairs, for example ``manager:3,server:2``
    caps   capability summary, printable ASCII
    http   port of the node's HTTP API, decimal (absent when it serves none)

The node's address comes from the service's A record and its port from the SRV
record, so neither is repeated in the TXT record. Unknown keys are ignored, so a
later protocol version can add keys that older nodes skip.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from flamenco_p2p.errors import ProtocolError

SERVICE_TYPE = "_flamenco-p2p._tcp.local."
PROTOCOL_VERSION = 1

# RFC 6763 section 6.1: each TXT string has a one-byte length prefix.
MAX_ITEM_BYTES = 255
# Sum of the length-prefixed items. Measured with zeroconf 0.154: a record past
# about 8.6 KB no longer fits one packet and peers silently fail to resolve it.
# 1300 bytes leaves room for the PTR, SRV and A records in the same packet.
MAX_TXT_BYTES = 1300

MAX_SITE_BYTES = 64
MAX_CAPABILITIES_BYTES = 240
MAX_ROLES = 16
MAX_EPOCH = 2**63 - 1
MAX_PROTOCOL = 65535

_NODE_ID = re.compile(r"[0-9a-f]{32}")
_FARM_ID = re.compile(r"[0-9a-f]{16,64}")
_ROLE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_DECIMAL = re.compile(r"[0-9]{1,19}")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


@dataclass(frozen=True, slots=True)
class Advert:
    """The description of itself that a node publishes over mDNS."""

    node_id: str
    farm_id: str
    site: str
    address: str
    node_port: int
    roles: Mapping[str, int] = field(hash=False)
    capabilities: str
    protocol: int = PROTOCOL_VERSION
    http_port: int | None = None


@dataclass(frozen=True, slots=True)
class PeerSighting:
    """A peer seen by a browser (``source="mdns"``) or listed in config (``"seed"``)."""

    node_id: str
    farm_id: str
    site: str
    address: str
    node_port: int
    roles: Mapping[str, int] = field(hash=False)
    capabilities: str
    protocol: int
    source: str
    http_port: int | None = None


class _InvalidField(Exception):
    """A field that failed validation, turned into ValueError or ProtocolError."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


def encode_txt(advert: Advert) -> dict[str, str]:
    """Build the TXT properties for an advert, raising ValueError naming a bad key."""
    try:
        properties = {
            "v": str(_check_protocol(advert.protocol)),
            "id": _check_node_id(advert.node_id),
            "farm": _check_farm_id(advert.farm_id),
            "site": _check_site(advert.site),
            "roles": _format_roles(advert.roles),
            "caps": _check_capabilities(advert.capabilities),
        }
        if advert.http_port is not None:
            properties["http"] = str(_check_port(advert.http_port, "http"))
        _check_address(advert.address)
        _check_port(advert.node_port, "node_port")
    except _InvalidField as error:
        raise ValueError(
            f"invalid advert field {error.key!r}: {error.reason}; "
            "fix the value before publishing it"
        ) from None
    _check_sizes(properties)
    return properties


def decode_txt(
    properties: Mapping[bytes, bytes | None],
    addresses: Sequence[str | bytes],
    port: int,
) -> PeerSighting:
    """Validate an untrusted TXT record, raising ProtocolError naming the field."""
    try:
        return PeerSighting(
            node_id=_check_node_id(_text(properties, "id")),
            farm_id=_check_farm_id(_text(properties, "farm")),
            site=_check_site(_text(properties, "site")),
            address=_first_ipv4(addresses),
            node_port=_check_port(port, "port"),
            roles=_parse_roles(_text(properties, "roles")),
            capabilities=_check_capabilities(_text(properties, "caps")),
            protocol=_parse_protocol(_text(properties, "v")),
            source="mdns",
            http_port=_optional_port(properties, "http"),
        )
    except _InvalidField as error:
        raise ProtocolError(
            f"invalid mDNS advert field {error.key!r}: {error.reason}", field=error.key
        ) from None


def _optional_port(properties: Mapping[bytes, bytes | None], key: str) -> int | None:
    if key.encode() not in properties:
        return None
    text = _text(properties, key)
    if not _DECIMAL.fullmatch(text):
        raise _InvalidField(key, f"expected a decimal port, got {text[:20]!r}")
    return _check_port(int(text), key)


def _check_address(address: object) -> str:
    if not isinstance(address, str):
        raise _InvalidField("address", f"expected an IPv4 address, got {address!r}")
    try:
        parsed = ipaddress.IPv4Address(address)
    except ValueError:
        raise _InvalidField("address", f"{address!r} is not an IPv4 address") from None
    if parsed.is_unspecified or parsed.is_multicast or parsed == _BROADCAST:
        raise _InvalidField("address", f"{address!r} is not a unicast address")
    return address


def _check_port(port: object, key: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise _InvalidField(key, f"{port!r} is not a port between 1 and 65535")
    return port


def _text(properties: Mapping[bytes, bytes | None], key: str) -> str:
    value = properties.get(key.encode("ascii"))
    if value is None:
        raise _InvalidField(key, "missing from the TXT record")
    if not isinstance(value, bytes):
        raise _InvalidField(key, f"expected bytes, got {type(value).__name__}")
    if len(value) > MAX_ITEM_BYTES:
        raise _InvalidField(key, f"{len(value)} bytes, over {MAX_ITEM_BYTES}")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise _InvalidField(key, f"{value[:40]!r} is not UTF-8") from None


def _check_node_id(node_id: object) -> str:
    if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id):
        raise _InvalidField("id", f"{node_id!r} is not 32 lowercase hex characters")
    return node_id


def _check_farm_id(farm_id: object) -> str:
    if not isinstance(farm_id, str) or not _FARM_ID.fullmatch(farm_id):
        raise _InvalidField(
            "farm", f"{farm_id!r} is not 16 to 64 lowercase hex characters"
        )
    return farm_id


def _check_site(site: object) -> str:
    if not isinstance(site, str):
        raise _InvalidField("site", f"expected text, got {site!r}")
    if len(site.encode("utf-8")) > MAX_SITE_BYTES:
        raise _InvalidField("site", f"longer than {MAX_SITE_BYTES} bytes")
    if _CONTROL.search(site):
        raise _InvalidField("site", f"{site!r} contains control characters")
    return site


def _check_capabilities(capabilities: object) -> str:
    if not isinstance(capabilities, str):
        raise _InvalidField("caps", f"expected text, got {capabilities!r}")
    if len(capabilities) > MAX_CAPABILITIES_BYTES:
        raise _InvalidField("caps", f"longer than {MAX_CAPABILITIES_BYTES} bytes")
    if not _PRINTABLE_ASCII.fullmatch(capabilities):
        raise _InvalidField(
            "caps", f"{capabilities[:40]!r} contains non-printable or non-ASCII text"
        )
    return capabilities


def _check_protocol(protocol: object) -> int:
    if (
        isinstance(protocol, bool)
        or not isinstance(protocol, int)
        or not 1 <= protocol <= MAX_PROTOCOL
    ):
        raise _InvalidField(
            "v", f"{protocol!r} is not a protocol version from 1 to {MAX_PROTOCOL}"
        )
    return protocol


def _parse_protocol(text: str) -> int:
    if not _DECIMAL.fullmatch(text):
        raise _InvalidField("v", f"{text[:40]!r} is not a decimal protocol version")
    return _check_protocol(int(text))


def _check_role(name: object, epoch: object) -> None:
    if not isinstance(name, str) or not _ROLE_NAME.fullmatch(name):
        raise _InvalidField(
            "roles",
            f"role name {name!r} must be 1-32 of a-z, 0-9, '_' or '-', "
            "starting with a letter",
        )
    if (
        isinstance(epoch, bool)
        or not isinstance(epoch, int)
        or not 0 <= epoch <= MAX_EPOCH
    ):
        raise _InvalidField(
            "roles", f"epoch {epoch!r} of role {name!r} is not an integer 0..2**63-1"
        )


def _format_roles(roles: Mapping[str, int]) -> str:
    if len(roles) > MAX_ROLES:
        raise _InvalidField("roles", f"{len(roles)} roles, over {MAX_ROLES}")
    for name, epoch in roles.items():
        _check_role(name, epoch)
    return ",".join(f"{name}:{epoch}" for name, epoch in sorted(roles.items()))


def _parse_roles(text: str) -> dict[str, int]:
    if not text:
        return {}
    pairs = text.split(",")
    if len(pairs) > MAX_ROLES:
        raise _InvalidField("roles", f"{len(pairs)} roles, over {MAX_ROLES}")
    roles: dict[str, int] = {}
    for pair in pairs:
        name, separator, epoch_text = pair.partition(":")
        if not separator or not _DECIMAL.fullmatch(epoch_text):
            raise _InvalidField("roles", f"{pair[:40]!r} is not 'role:epoch'")
        epoch = int(epoch_text)
        _check_role(name, epoch)
        if name in roles:
            raise _InvalidField("roles", f"role {name!r} is listed twice")
        roles[name] = epoch
    return roles


def _first_ipv4(addresses: Sequence[str | bytes]) -> str:
    """Pick the first unicast IPv4 address, skipping IPv6 and malformed entries."""
    for raw in addresses:
        if isinstance(raw, bytes):
            if len(raw) != 4:
                continue
            text = str(ipaddress.IPv4Address(raw))
        else:
            text = raw
        try:
            return _check_address(text)
        except _InvalidField:
            continue
    raise _InvalidField("address", f"no unicast IPv4 address among {addresses!r}")


def _check_sizes(properties: Mapping[str, str]) -> None:
    total = 0
    for key, value in properties.items():
        item_bytes = len(f"{key}={value}".encode())
        if item_bytes > MAX_ITEM_BYTES:
            raise ValueError(
                f"TXT item {key!r} is {item_bytes} bytes, over the "
                f"{MAX_ITEM_BYTES}-byte limit of one item; shorten its value"
            )
        total += 1 + item_bytes
    if total > MAX_TXT_BYTES:
        raise ValueError(
            f"TXT record is {total} bytes, over {MAX_TXT_BYTES}; "
            "shorten the site, roles or capabilities"
        )
