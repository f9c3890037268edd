"""Tests for MdnsDiscovery over real zeroconf on loopback (no root needed).

Nodes advertise 127.0.0.11-13 and run zeroconf on interface 127.0.0.1, the
layout for several nodes on one machine. Node ids are random, so runs in
parallel with other tests on the same loopback do not see each other's nodes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable

import pytest
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from flamenco_p2p.discovery import SERVICE_TYPE, Advert, MdnsDiscovery, PeerSighting
from flamenco_p2p.errors import ConfigError, StateError

pytestmark = pytest.mark.timeout(60)

LOOPBACK = ["127.0.0.1"]
# A new service is seen after about 1.1 s of probing, so allow more on a busy host.
SEEN_TIMEOUT = 10.0


class Recorder:
    """Callbacks for one MdnsDiscovery, storing what they receive."""

    def __init__(self) -> None:
        self.sightings: list[PeerSighting] = []
        self.goodbyes: list[str] = []

    def on_sighting(self, sighting: PeerSighting) -> None:
        self.sightings.append(sighting)

    def on_goodbye(self, node_id: str) -> None:
        self.goodbyes.append(node_id)

    def latest(self, node_id: str) -> PeerSighting | None:
        matches = [s for s in self.sightings if s.node_id == node_id]
        return matches[-1] if matches else None

    async def wait_for(
        self, condition: Callable[[], bool], what: str, limit: float = SEEN_TIMEOUT
    ) -> None:
        deadline = time.monotonic() + limit
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out after {limit} s waiting for {what}; "
                    f"sightings {self.sightings}, goodbyes {self.goodbyes}"
                )
            await asyncio.sleep(0.05)

    async def wait_for_sighting(
        self,
        node_id: str,
        what: str,
        check: Callable[[PeerSighting], bool] = lambda sighting: True,
    ) -> PeerSighting:
        def matches() -> bool:
            latest = self.latest(node_id)
            return latest is not None and check(latest)

        await self.wait_for(matches, what)
        latest = self.latest(node_id)
        assert latest is not None
        return latest

    async def wait_for_goodbye(self, node_id: str, limit: float) -> None:
        await self.wait_for(lambda: node_id in self.goodbyes, "the goodbye", limit)


class Node:
    """One MdnsDiscovery with its advert and recorder."""

    def __init__(self, index: int, farm_id: str) -> None:
        self.advert = Advert(
            node_id=secrets.token_hex(16),
            farm_id=farm_id,
            site="test-site",
            address=f"127.0.0.{11 + index}",
            node_port=17000 + index,
            roles={"worker": 1},
            capabilities=f"cpu={index + 1};blender=5.0.1",
        )
        self.recorder = Recorder()
        self.discovery = MdnsDiscovery(
            self.advert,
            self.recorder.on_sighting,
            interfaces=LOOPBACK,
            on_goodbye=self.recorder.on_goodbye,
        )

    @property
    def node_id(self) -> str:
        return self.advert.node_id


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    farm_id = secrets.token_hex(8)
    started = [Node(index, farm_id) for index in range(3)]
    await asyncio.gather(*(node.discovery.start() for node in started))
    try:
        yield started
    finally:
        await asyncio.gather(*(node.discovery.stop() for node in started))


async def test_mdns_nodes_see_each_other(nodes: list[Node]) -> None:
    for node in nodes:
        others = [other for other in nodes if other is not node]
        for other in others:
            sighting = await node.recorder.wait_for_sighting(
                other.node_id, f"{node.advert.address} to see {other.advert.address}"
            )
            assert sighting.address == other.advert.address
            assert sighting.node_port == other.advert.node_port
            assert sighting.farm_id == other.advert.farm_id
            assert sighting.site == "test-site"
            assert sighting.roles == {"worker": 1}
            assert sighting.capabilities == other.advert.capabilities
            assert sighting.protocol == 1
            assert sighting.source == "mdns"
        assert node.recorder.latest(node.node_id) is None


async def test_mdns_update_changes_roles(nodes: list[Node]) -> None:
    first, second, third = nodes
    await second.recorder.wait_for_sighting(first.node_id, "first sighting")
    changed = Advert(
        node_id=first.node_id,
        farm_id=first.advert.farm_id,
        site="test-site",
        address=first.advert.address,
        node_port=first.advert.node_port,
        roles={"manager": 4, "worker": 1},
        capabilities="cpu=1;gpu=CUDA",
    )
    await first.discovery.update(changed)

    for watcher in (second, third):
        sighting = await watcher.recorder.wait_for_sighting(
            first.node_id,
            "the updated roles",
            lambda seen: seen.roles == {"manager": 4, "worker": 1},
        )
        assert sighting.capabilities == "cpu=1;gpu=CUDA"


async def test_mdns_stop_sends_goodbye(nodes: list[Node]) -> None:
    first, second, third = nodes
    for watcher in (second, third):
        await watcher.recorder.wait_for_sighting(first.node_id, "first sighting")
    await first.discovery.stop()
    await first.discovery.stop()  # a second stop does nothing

    for watcher in (second, third):
        await watcher.recorder.wait_for_goodbye(first.node_id, limit=5.0)
    assert second.node_id not in third.recorder.goodbyes
    assert first.recorder.goodbyes == []


async def test_mdns_restart_same_node_id(nodes: list[Node]) -> None:
    first, second, _ = nodes
    await second.recorder.wait_for_sighting(first.node_id, "first sighting")
    await first.discovery.stop()
    moved = Advert(
        node_id=first.node_id,
        farm_id=first.advert.farm_id,
        site="test-site",
        address="127.0.0.21",
        node_port=17100,
        roles={"worker": 2},
        capabilities="cpu=1",
    )
    restarted = MdnsDiscovery(moved, Recorder().on_sighting, interfaces=LOOPBACK)
    await restarted.start()
    try:
        sighting = await second.recorder.wait_for_sighting(
            first.node_id, "the restarted node", lambda seen: seen.node_port == 17100
        )
        assert sighting.address == "127.0.0.21"
        assert sighting.roles == {"worker": 2}
    finally:
        await restarted.stop()


def _raw_info(name_id: str, properties: dict[str, str]) -> AsyncServiceInfo:
    return AsyncServiceInfo(
        SERVICE_TYPE,
        f"{name_id}.{SERVICE_TYPE}",
        port=17999,
        properties=properties,
        server=f"{name_id}.local.",
        addresses=[bytes([127, 0, 0, 99])],
    )


async def test_mdns_malformed_advert_dropped_once(
    nodes: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flamenco_p2p.discovery.mdns")
    watcher = nodes[0]
    bad_id = secrets.token_hex(16)
    other_id = secrets.token_hex(16)
    bad_txt = {"v": "1", "id": bad_id, "farm": "not-hex", "site": "s", "roles": ""}
    mismatched_txt = {
        "v": "1",
        "id": other_id,
        "farm": watcher.advert.farm_id,
        "site": "s",
        "roles": "",
        "caps": "",
    }
    raw = AsyncZeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
    try:
        bad = _raw_info(bad_id, bad_txt)
        await (await raw.async_register_service(bad))
        mismatched_id = secrets.token_hex(16)
        mismatched = _raw_info(mismatched_id, mismatched_txt)
        await (await raw.async_register_service(mismatched))

        def records_for(name_id: str, level: int) -> list[logging.LogRecord]:
            # Every node logs its own warning, so count only the watcher's.
            return [
                record
                for record in caplog.records
                if record.levelno == level
                and name_id in record.getMessage()
                and watcher.node_id in record.getMessage()
            ]

        def warnings_for(name_id: str) -> list[logging.LogRecord]:
            return records_for(name_id, logging.WARNING)

        await watcher.recorder.wait_for(
            lambda: bool(warnings_for(bad_id)) and bool(warnings_for(mismatched_id)),
            "warnings about both malformed adverts",
        )
        # A changed but still malformed TXT record must not log again.
        changed = _raw_info(bad_id, {**bad_txt, "farm": "still-bad"})
        await (await raw.async_update_service(changed))
        await watcher.recorder.wait_for(
            lambda: any(
                "still-bad" in r.getMessage()
                for r in records_for(bad_id, logging.DEBUG)
            ),
            "the changed malformed advert to be dropped again",
        )
    finally:
        await raw.async_close()

    bad_warnings = warnings_for(bad_id)
    assert len(bad_warnings) == 1
    assert "'farm'" in bad_warnings[0].getMessage()
    mismatch_warnings = warnings_for(mismatched_id)
    assert len(mismatch_warnings) == 1
    assert "differs from the service name" in mismatch_warnings[0].getMessage()
    seen_ids = {s.node_id for s in watcher.recorder.sightings}
    assert bad_id not in seen_ids
    assert other_id not in seen_ids
    assert mismatched_id not in seen_ids
    # The watcher still works after dropping them.
    assert {nodes[1].node_id, nodes[2].node_id} <= seen_ids
    assert bad_id not in watcher.recorder.goodbyes


def test_mdns_rejects_bad_advert() -> None:
    advert = Advert("xyz", "ab" * 8, "s", "127.0.0.11", 17000, {}, "")
    with pytest.raises(ValueError, match="'id'"):
        MdnsDiscovery(advert, Recorder().on_sighting, interfaces=LOOPBACK)


@pytest.mark.parametrize("interfaces", [[], "127.0.0.1", ["eth0"], ["0.0.0.0"]])
def test_mdns_rejects_bad_interfaces(interfaces: list[str]) -> None:
    advert = Advert(secrets.token_hex(16), "ab" * 8, "s", "127.0.0.11", 17000, {}, "")
    with pytest.raises(ConfigError, match="mDNS interface"):
        MdnsDiscovery(advert, Recorder().on_sighting, interfaces=interfaces)


async def test_mdns_start_after_stop_raises() -> None:
    advert = Advert(secrets.token_hex(16), "ab" * 8, "s", "127.0.0.11", 17000, {}, "")
    discovery = MdnsDiscovery(advert, Recorder().on_sighting, interfaces=LOOPBACK)
    await discovery.stop()
    with pytest.raises(StateError, match="create a new MdnsDiscovery"):
        await discovery.start()


async def test_mdns_update_other_node_id_raises(nodes: list[Node]) -> None:
    advert = Advert(secrets.token_hex(16), "ab" * 8, "s", "127.0.0.11", 17000, {}, "")
    with pytest.raises(StateError, match="cannot change node id"):
        await nodes[0].discovery.update(advert)
