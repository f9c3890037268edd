"""Peer discovery over mDNS (DNS-SD) with python-zeroconf.

Each node registers ``<node_id>._flamenco-p2p._tcp.local.`` with host name
``<node_id>.local.``, and browses the same service type. mDNS only finds
addresses: a node killed without a goodbye stays in peers' caches until the
record TTL runs out (about 19 minutes, measured with zeroconf 0.154), so
liveness must come from the daemon's own heartbeats. ``on_goodbye`` fires on a
goodbye packet and also when cached records expire.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence

from zeroconf import (
    DNSQuestionType,
    IPVersion,
    NonUniqueNameException,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from flamenco_p2p.discovery.txt import (
    SERVICE_TYPE,
    Advert,
    PeerSighting,
    decode_txt,
    encode_txt,
)
from flamenco_p2p.errors import ConfigError, ProtocolError, StateError

logger = logging.getLogger(__name__)

DEFAULT_RESOLVE_TIMEOUT = 3.0  # seconds to wait for a peer's SRV, TXT and A records


class MdnsDiscovery:
    """The mDNS publisher of one node's advert and browser for the adverts of others."""

    def __init__(
        self,
        advert: Advert,
        on_sighting: Callable[[PeerSighting], None],
        *,
        interfaces: Sequence[str],
        on_goodbye: Callable[[str], None] | None = None,
        resolve_timeout: float = DEFAULT_RESOLVE_TIMEOUT,
    ) -> None:
        encode_txt(advert)  # raises ValueError now rather than at start()
        self._advert = advert
        self._on_sighting = on_sighting
        self._on_goodbye = on_goodbye
        self._interfaces = _check_interfaces(interfaces)
        self._resolve_timeout = resolve_timeout
        self._lock = asyncio.Lock()
        self._state = "new"
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._sighted: set[str] = set()
        self._reported_names: set[str] = set()

    @property
    def node_id(self) -> str:
        """The node id this instance publishes and filters out of its own reports."""
        return self._advert.node_id

    async def start(self) -> None:
        """Start browsing for peers, then register and announce this node."""
        async with self._lock:
            if self._state != "new":
                raise StateError(
                    f"mDNS discovery of node {self.node_id} is {self._state}; "
                    "create a new MdnsDiscovery to start again"
                )
            self._state = "started"
            zeroconf = AsyncZeroconf(
                interfaces=list(self._interfaces), ip_version=IPVersion.V4Only
            )
            self._zeroconf = zeroconf
            try:
                # Browse first: existing peers reply within ~80 ms, but our
                # own registration probes for about a second.
                self._browser = AsyncServiceBrowser(
                    zeroconf.zeroconf,
                    SERVICE_TYPE,
                    handlers=[self._on_state_change],
                    question_type=DNSQuestionType.QM,
                )
                await self._register(self._advert)
            except BaseException:
                self._state = "stopped"
                await self._shutdown()
                raise
            logger.info(
                "node %s: mDNS discovery started on interfaces %s, advertising %s:%d",
                self.node_id,
                ",".join(self._interfaces),
                self._advert.address,
                self._advert.node_port,
            )

    async def update(self, advert: Advert) -> None:
        """Publish changed roles, epochs or capabilities under the same name."""
        encode_txt(advert)
        async with self._lock:
            if advert.node_id != self.node_id:
                raise StateError(
                    f"cannot change node id {self.node_id} to {advert.node_id} "
                    "on a running discovery; stop it and start a new one"
                )
            if self._state == "stopped":
                raise StateError(
                    f"mDNS discovery of node {self.node_id} is stopped; "
                    "create a new MdnsDiscovery to publish again"
                )
            if self._state == "new":
                self._advert = advert
                return
            info = _service_info(advert)
            assert self._zeroconf is not None
            pending = await self._zeroconf.async_update_service(info)
            await pending
            self._info = info
            self._advert = advert
            logger.info(
                "node %s: mDNS advert updated, roles %s",
                self.node_id,
                dict(advert.roles),
            )

    async def stop(self) -> None:
        """Send a goodbye for this node and close zeroconf. Later calls do nothing."""
        async with self._lock:
            if self._state == "stopped":
                return
            was_started = self._state == "started"
            self._state = "stopped"
            await self._shutdown()
            if was_started:
                logger.info("node %s: mDNS discovery stopped", self.node_id)

    async def _register(self, advert: Advert) -> None:
        assert self._zeroconf is not None
        info = _service_info(advert)
        try:
            # The first await queues the probes, the second waits until the
            # announcements went out, so a quick stop() cannot drop them.
            pending = await self._zeroconf.async_register_service(info)
            await pending
        except NonUniqueNameException:
            raise StateError(
                f"another node on the network already announces node id "
                f"{advert.node_id}; is another node running with this --data-dir?"
                " Give every node its own data directory"
            ) from None
        self._info = info

    async def _shutdown(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        tasks = list(self._resolving.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._resolving.clear()
        zeroconf, self._zeroconf = self._zeroconf, None
        if zeroconf is None:
            return
        try:
            if self._info is not None:
                pending = await zeroconf.async_unregister_service(self._info)
                await pending
        finally:
            self._info = None
            await zeroconf.async_close()

    def _on_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        instance = _instance_name(name)
        if instance == self.node_id or self._state != "started":
            return
        previous = self._resolving.pop(name, None)
        if previous is not None:
            previous.cancel()
        if state_change is ServiceStateChange.Removed:
            self._handle_goodbye(instance)
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name, instance))
        self._resolving[name] = task
        task.add_done_callback(lambda done: self._forget_task(name, done))

    def _forget_task(self, name: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(name) is task:
            del self._resolving[name]

    def _handle_goodbye(self, instance: str) -> None:
        if instance not in self._sighted:
            return
        self._sighted.discard(instance)
        logger.info(
            "node %s: peer %s left mDNS (goodbye or expired records)",
            self.node_id,
            instance,
        )
        if self._on_goodbye is not None:
            try:
                self._on_goodbye(instance)
            except Exception:
                logger.exception(
                    "node %s: on_goodbye callback failed for peer %s",
                    self.node_id,
                    instance,
                )

    async def _resolve(self, name: str, instance: str) -> None:
        assert self._zeroconf is not None
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        resolved = await info.async_request(
            self._zeroconf.zeroconf,
            self._resolve_timeout * 1000,
            question_type=DNSQuestionType.QM,
        )
        if not resolved:
            self._report_problem(
                name, f"no SRV, TXT and A records within {self._resolve_timeout} s"
            )
            return
        try:
            sighting = decode_txt(
                info.properties,
                info.addresses_by_version(IPVersion.V4Only),
                info.port or 0,
            )
        except ProtocolError as error:
            self._report_problem(name, str(error))
            return
        if sighting.node_id != instance:
            self._report_problem(
                name, f"TXT node id {sighting.node_id} differs from the service name"
            )
            return
        self._reported_names.discard(name)
        self._sighted.add(instance)
        self._deliver(sighting)

    def _deliver(self, sighting: PeerSighting) -> None:
        logger.debug(
            "node %s: sighted peer %s at %s:%d",
            self.node_id,
            sighting.node_id,
            sighting.address,
            sighting.node_port,
        )
        try:
            self._on_sighting(sighting)
        except Exception:
            logger.exception(
                "node %s: on_sighting callback failed for peer %s",
                self.node_id,
                sighting.node_id,
            )

    def _report_problem(self, name: str, reason: str) -> None:
        """Log a dropped advert once per service name until that name resolves."""
        if name in self._reported_names:
            logger.debug(
                "node %s: dropped mDNS advert %r again: %s", self.node_id, name, reason
            )
            return
        self._reported_names.add(name)
        logger.warning(
            "node %s: dropped mDNS advert %r: %s", self.node_id, name, reason
        )


def _service_info(advert: Advert) -> AsyncServiceInfo:
    return AsyncServiceInfo(
        SERVICE_TYPE,
        f"{advert.node_id}.{SERVICE_TYPE}",
        port=advert.node_port,
        properties=encode_txt(advert),
        # A host name per node: nodes sharing one get their addresses merged.
        server=f"{advert.node_id}.local.",
        addresses=[socket.inet_aton(advert.address)],
    )


def _instance_name(name: str) -> str:
    """Return the instance label of a service name, or the whole name if foreign."""
    suffix = "." + SERVICE_TYPE
    if name.lower().endswith(suffix.lower()):
        return name[: -len(suffix)]
    return name


def _check_interfaces(interfaces: Sequence[str]) -> tuple[str, ...]:
    if isinstance(interfaces, str) or not interfaces:
        raise ConfigError(
            f"mDNS interfaces {interfaces!r} must be a non-empty list of IPv4 "
            "addresses; use default_interfaces(bind_address) to choose them"
        )
    for address in interfaces:
        try:
            parsed = ipaddress.IPv4Address(address)
        except ValueError:
            raise ConfigError(
                f"mDNS interface {address!r} is not an IPv4 address; pass the "
                "address of a local interface, such as 127.0.0.1"
            ) from None
        if parsed.is_unspecified or parsed.is_multicast:
            raise ConfigError(
                f"mDNS interface {address!r} names no single interface; pass the "
                "address of a local interface, such as 127.0.0.1"
            )
    return tuple(interfaces)
