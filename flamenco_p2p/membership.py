"""The peer table: who is in the farm, and whether each peer is alive.

Pure logic with an injected clock. A peer is ``alive`` while its heartbeats arrive,
``suspect`` after ``suspect_after`` seconds of silence, ``dead`` after
``dead_after``, and ``left`` once it said goodbye. mDNS sightings only add addresses
to try; only heartbeats make a peer alive.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from flamenco_p2p.config import Timing

logger = logging.getLogger(__name__)

MAX_PEERS = 512
FORGET_AFTER = 600.0


class PeerState(StrEnum):
    """Liveness of a peer as this node sees it."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class Rank:
    """Election rank: higher priority, then fresher state, then larger node id wins."""

    priority: int
    freshness: int
    node_id: str

    def key(self) -> tuple[int, int, str]:
        """Return the tuple that orders ranks."""
        return (self.priority, self.freshness, self.node_id)

    def to_dict(self) -> dict[str, Any]:
        """Return the wire form."""
        return {
            "priority": self.priority,
            "freshness": self.freshness,
            "node_id": self.node_id,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Rank:
        """Build from a validated wire map."""
        return cls(raw["priority"], raw["freshness"], raw["node_id"])


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a node tells its peers about itself in every heartbeat."""

    node_id: str
    site: str
    address: str
    node_port: int
    manager_port: int
    server_port: int
    can_manage: bool
    can_serve: bool
    rank: Rank
    worker_slots: int
    capabilities: dict[str, Any]
    started: float

    def to_dict(self) -> dict[str, Any]:
        """Return the wire form."""
        return {
            "node_id": self.node_id,
            "site": self.site,
            "address": self.address,
            "node_port": self.node_port,
            "manager_port": self.manager_port,
            "server_port": self.server_port,
            "can_manage": self.can_manage,
            "can_serve": self.can_serve,
            "rank": self.rank.to_dict(),
            "worker_slots": self.worker_slots,
            "capabilities": self.capabilities,
            "started": self.started,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> NodeInfo:
        """Build from a validated wire map."""
        fields = dict(raw)
        fields["rank"] = Rank.from_dict(raw["rank"])
        return cls(**fields)

    @property
    def node_endpoint(self) -> str:
        """The ZeroMQ endpoint of the node's own port."""
        return f"tcp://{self.address}:{self.node_port}"


@dataclass(slots=True)
class PeerRecord:
    """One row of the peer table."""

    info: NodeInfo
    last_heard: float
    left: bool = False


class Membership:
    """The peer table of one node; every method takes the current time."""

    def __init__(self, me: NodeInfo, timing: Timing) -> None:
        self.me = me
        self.timing = timing
        self.peers: dict[str, PeerRecord] = {}

    def update_self(self, me: NodeInfo) -> None:
        """Replace this node's own info (capabilities probed, rank changed)."""
        self.me = me

    def heard(self, info: NodeInfo, now: float) -> bool:
        """Record a heartbeat; returns True when the peer is new or came back."""
        if info.node_id == self.me.node_id:
            return False
        record = self.peers.get(info.node_id)
        if record is None:
            if len(self.peers) >= MAX_PEERS:
                self._forget_one()
            self.peers[info.node_id] = PeerRecord(info, now)
            logger.info(
                "peer %s joined (site %s, %s:%d)",
                info.node_id,
                info.site,
                info.address,
                info.node_port,
            )
            return True
        if record.left and record.info.started == info.started:
            # A heartbeat that overtook the goodbye of the same run of the node.
            return False
        came_back = record.left or self.state(info.node_id, now) is PeerState.DEAD
        record.info = info
        record.last_heard = now
        record.left = False
        if came_back:
            logger.info("peer %s is alive again", info.node_id)
        return came_back

    def mark_left(self, node_id: str) -> None:
        """Record that a peer said goodbye."""
        record = self.peers.get(node_id)
        if record is not None and not record.left:
            record.left = True
            logger.info("peer %s left the farm", node_id)

    def state(self, node_id: str, now: float) -> PeerState:
        """Return a peer's liveness; this node itself is always alive."""
        if node_id == self.me.node_id:
            return PeerState.ALIVE
        record = self.peers.get(node_id)
        if record is None:
            return PeerState.DEAD
        if record.left:
            return PeerState.LEFT
        silence = now - record.last_heard
        if silence < self.timing.suspect_after:
            return PeerState.ALIVE
        if silence < self.timing.dead_after:
            return PeerState.SUSPECT
        return PeerState.DEAD

    def info(self, node_id: str) -> NodeInfo | None:
        """Return what is known of a node, this one included."""
        if node_id == self.me.node_id:
            return self.me
        record = self.peers.get(node_id)
        return record.info if record else None

    def nodes(self, now: float, states: frozenset[PeerState]) -> list[NodeInfo]:
        """Return this node and the peers in the given states."""
        found = [self.me]
        for node_id, record in self.peers.items():
            if self.state(node_id, now) in states:
                found.append(record.info)
        return found

    def alive(self, now: float) -> list[NodeInfo]:
        """Return this node and every alive peer."""
        return self.nodes(now, frozenset({PeerState.ALIVE}))

    def reachable(self, now: float) -> list[NodeInfo]:
        """Return this node and the peers that are alive or only suspect."""
        return self.nodes(now, frozenset({PeerState.ALIVE, PeerState.SUSPECT}))

    def prune(self, now: float) -> list[str]:
        """Forget peers dead or gone for FORGET_AFTER seconds; returns their ids."""
        gone = [
            node_id
            for node_id, record in self.peers.items()
            if now - record.last_heard > FORGET_AFTER
        ]
        for node_id in gone:
            del self.peers[node_id]
        return gone

    def _forget_one(self) -> None:
        oldest = min(self.peers, key=lambda node_id: self.peers[node_id].last_heard)
        del self.peers[oldest]
