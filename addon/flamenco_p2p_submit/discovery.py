"""Finding farms over mDNS: the nodes' adverts, grouped into farms.

Every farm node registers ``<node id>._flamenco-p2p._tcp.local.`` with these TXT
keys: ``v`` (protocol version), ``id`` (node id), ``farm`` (farm id, derived from
the farm key), ``site``, ``roles`` (``role:epoch`` pairs), ``caps`` and ``http``
(the port of its HTTP API). The adverts come from the network, so each value is
checked before use and a bad advert is skipped. zeroconf is imported only when
browsing starts, so the rest of this module works without it.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

SERVICE_TYPE = "_flamenco-p2p._tcp.local."
DEFAULT_BROWSE_SECONDS = 2.0
RESOLVE_TIMEOUT_MS = 1500
MAX_NODES = 1000
"""Maximum number of adverts one browse resolves; the rest are ignored."""

_MAX_ITEM_BYTES = 255
_NODE_ID = re.compile(r"[0-9a-f]{32}")
_FARM_ID = re.compile(r"[0-9a-f]{16,64}")
_ROLE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_DECIMAL = re.compile(r"[0-9]{1,19}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class AdvertError(ValueError):
    """An mDNS advert with a missing or invalid field; the message names it."""


class DiscoveryError(RuntimeError):
    """Browsing failed, for example because an interface address is not local."""


@dataclass(frozen=True, slots=True)
class NodeAdvert:
    """One farm node as its mDNS advert describes it."""

    node_id: str
    farm_id: str
    site: str
    address: str
    http_port: int | None
    roles: Mapping[str, int] = field(hash=False)

    @property
    def api_url(self) -> str | None:
        """The base URL of the node's HTTP API, or None when it serves none."""
        if self.http_port is None:
            return None
        return f"http://{self.address}:{self.http_port}"


@dataclass(frozen=True, slots=True)
class FarmListing:
    """The nodes of one farm that a browse found."""

    farm_id: str
    nodes: tuple[NodeAdvert, ...]

    @property
    def server(self) -> NodeAdvert | None:
        """The node that advertises the server role with the highest epoch."""
        holders = [node for node in self.nodes if "server" in node.roles]
        if not holders:
            return None
        return max(holders, key=lambda node: node.roles["server"])

    @property
    def api_url(self) -> str | None:
        """The API of the server node, else of the first node that serves one."""
        server = self.server
        if server is not None and server.api_url is not None:
            return server.api_url
        for node in self.nodes:
            if node.api_url is not None:
                return node.api_url
        return None


def parse_advert(
    properties: Mapping[bytes, bytes | None], addresses: Sequence[str]
) -> NodeAdvert:
    """Validate one node's TXT properties and addresses; raises AdvertError."""
    node_id = _text(properties, "id")
    if not _NODE_ID.fullmatch(node_id):
        raise AdvertError(f"id {node_id[:40]!r} is not 32 lowercase hex digits")
    farm_id = _text(properties, "farm")
    if not _FARM_ID.fullmatch(farm_id):
        raise AdvertError(f"farm {farm_id[:70]!r} is not 16 to 64 lowercase hex digits")
    site = _text(properties, "site")
    if _CONTROL.search(site) or len(site.encode("utf-8")) > 64:
        raise AdvertError(f"site {site[:40]!r} is invalid")
    return NodeAdvert(
        node_id=node_id,
        farm_id=farm_id,
        site=site,
        address=_first_ipv4(addresses),
        http_port=_http_port(properties),
        roles=_parse_roles(_text(properties, "roles")),
    )


def group_farms(adverts: Iterable[NodeAdvert]) -> list[FarmListing]:
    """Group adverts by farm id, one entry per node id, farms sorted by id."""
    farms: dict[str, dict[str, NodeAdvert]] = {}
    for advert in adverts:
        farms.setdefault(advert.farm_id, {})[advert.node_id] = advert
    return [
        FarmListing(farm_id, tuple(sorted(nodes.values(), key=lambda n: n.node_id)))
        for farm_id, nodes in sorted(farms.items())
    ]


def browse(
    interfaces: list[str] | None,
    seconds: float = DEFAULT_BROWSE_SECONDS,
    cancel: threading.Event | None = None,
    on_found: Callable[[int], None] | None = None,
) -> list[NodeAdvert]:
    """Listen for farm nodes for the given seconds and return their adverts.

    interfaces lists the IPv4 addresses to use (None: every interface). Blocks
    the calling thread. Raises DiscoveryError when zeroconf cannot start, with
    the fix in the message.
    """
    try:
        from zeroconf import (
            DNSQuestionType,
            InterfaceChoice,
            IPVersion,
            ServiceBrowser,
            ServiceStateChange,
            Zeroconf,
        )
    except ImportError as error:
        raise DiscoveryError(
            f"cannot search over mDNS: zeroconf is not installed ({error}); the"
            " add-on bundles it for Linux x64, Windows x64 and macOS, so on other"
            " platforms type a node's address in the add-on preferences"
        ) from error

    names: dict[str, None] = {}
    lock = threading.Lock()

    def on_change(
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            return
        with lock:
            if len(names) < MAX_NODES:
                names[name] = None

    try:
        zeroconf = Zeroconf(
            interfaces=interfaces if interfaces else InterfaceChoice.All,
            ip_version=IPVersion.V4Only,
        )
    except OSError as error:
        raise DiscoveryError(
            f"cannot start mDNS on {_describe(interfaces)}: {error.strerror or error};"
            " check the mDNS interfaces preference, which must list addresses of"
            " this machine"
        ) from error
    try:
        # QM questions: several processes share port 5353 on one machine, and
        # answers to QU questions reach only one of them after a delay.
        browser = ServiceBrowser(
            zeroconf,
            SERVICE_TYPE,
            handlers=[on_change],
            question_type=DNSQuestionType.QM,
        )
        _wait(seconds, cancel, lambda: len(names), on_found)
        browser.cancel()
        with lock:
            found = list(names)
        return _resolve_all(zeroconf, found, cancel)
    finally:
        zeroconf.close()


def _wait(
    seconds: float,
    cancel: threading.Event | None,
    count: Callable[[], int],
    on_found: Callable[[int], None] | None,
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cancel is not None and cancel.is_set():
            return
        if on_found is not None:
            on_found(count())
        time.sleep(0.05)


def _resolve_all(
    zeroconf: object, names: list[str], cancel: threading.Event | None
) -> list[NodeAdvert]:
    from zeroconf import DNSQuestionType, ServiceInfo, Zeroconf

    assert isinstance(zeroconf, Zeroconf)
    adverts: list[NodeAdvert] = []
    for name in names:
        if cancel is not None and cancel.is_set():
            break
        info = ServiceInfo(SERVICE_TYPE, name)
        if not info.request(
            zeroconf, RESOLVE_TIMEOUT_MS, question_type=DNSQuestionType.QM
        ):
            logger.debug("mDNS service %s did not resolve in time", name)
            continue
        try:
            adverts.append(parse_advert(info.properties, info.parsed_addresses()))
        except AdvertError as error:
            logger.warning("skipped the mDNS advert %s: %s", name, error)
    return adverts


def _describe(interfaces: list[str] | None) -> str:
    if not interfaces:
        return "every network interface"
    return "interface " + ", ".join(interfaces)


def _text(properties: Mapping[bytes, bytes | None], key: str) -> str:
    name = key.encode("ascii")
    if name not in properties:
        raise AdvertError(f"{key} is missing from the TXT record")
    # zeroconf 0.148 returns None for an empty value such as "roles=", which
    # nodes without a role publish; later versions return b"".
    value = properties[name] or b""
    if len(value) > _MAX_ITEM_BYTES:
        raise AdvertError(f"{key} is {len(value)} bytes, over {_MAX_ITEM_BYTES}")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise AdvertError(f"{key} is not UTF-8 text") from None


def _http_port(properties: Mapping[bytes, bytes | None]) -> int | None:
    if b"http" not in properties:
        return None
    text = _text(properties, "http")
    port = int(text) if _DECIMAL.fullmatch(text) else 0
    if not 1 <= port <= 65535:
        raise AdvertError(f"http {text[:20]!r} is not a port from 1 to 65535")
    return port


def _parse_roles(text: str) -> dict[str, int]:
    roles: dict[str, int] = {}
    if not text:
        return roles
    pairs = text.split(",")
    if len(pairs) > 16:
        raise AdvertError(f"roles lists {len(pairs)} roles, over 16")
    for pair in pairs:
        name, separator, epoch = pair.partition(":")
        if not separator or not _ROLE_NAME.fullmatch(name):
            raise AdvertError(f"roles entry {pair[:40]!r} is not 'role:epoch'")
        if not _DECIMAL.fullmatch(epoch) or int(epoch) > 2**63 - 1:
            raise AdvertError(f"roles entry {pair[:40]!r} has an invalid epoch")
        if name in roles:
            raise AdvertError(f"roles lists {name!r} twice")
        roles[name] = int(epoch)
    return roles


def _first_ipv4(addresses: Sequence[str]) -> str:
    for text in addresses:
        try:
            address = ipaddress.IPv4Address(text)
        except ValueError:
            continue
        if not (address.is_unspecified or address.is_multicast or address.is_reserved):
            return str(address)
    raise AdvertError(f"no unicast IPv4 address among {list(addresses)[:4]}")
