"""The daemon: one node of the farm, with discovery, membership, election and roles."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from flamenco_p2p import __version__
from flamenco_p2p.api.app import FarmApi
from flamenco_p2p.background import BackgroundTasks
from flamenco_p2p.blobs import BlobStore
from flamenco_p2p.config import NodeConfig, load_node_id
from flamenco_p2p.discovery import (
    Advert,
    MdnsDiscovery,
    PeerSighting,
    check_multicast,
    default_interfaces,
    parse_seed,
)
from flamenco_p2p.election import (
    SERVER_ROLE,
    Action,
    BecomeHolder,
    Election,
    HolderChanged,
    RequestVotes,
    StepDown,
    manager_role,
)
from flamenco_p2p.errors import FarmUnavailable, ProtocolError, StateError
from flamenco_p2p.farmkey import load_farm_key
from flamenco_p2p.membership import Membership, NodeInfo, Rank
from flamenco_p2p.node_client import ClientService
from flamenco_p2p.protocol.messages import Message
from flamenco_p2p.render.controller import RenderBackend
from flamenco_p2p.roles.manager import ManagerRole
from flamenco_p2p.roles.replication import LogSource, Standby
from flamenco_p2p.roles.server import ServerRole
from flamenco_p2p.roles.worker import WorkerAgent
from flamenco_p2p.security import ZapHandler, farm_context
from flamenco_p2p.store.farmstore import FarmStore
from flamenco_p2p.transport import DealerLink, RemoteError, Reply, RouterEndpoint

logger = logging.getLogger(__name__)

VOTE_TIMEOUT = 1.0
# Each contact holds a ZeroMQ socket (libzmq allows 1,023 per context by default),
# and gossip from any member can add contacts.
MAX_CONTACTS = 512
CONTACT_FORGET_AFTER = 600.0
CLOCK_SKEW_WARNING = 60.0


@dataclass(slots=True)
class Contact:
    """An address to send heartbeats to, from mDNS, a seed, or gossip."""

    endpoint: str
    source: str
    node_id: str | None = None
    last_heard: float = 0.0
    added: float = 0.0


class Node:
    """One running daemon. Create, ``await start()``, then ``await stop()``."""

    def __init__(
        self,
        config: NodeConfig,
        capabilities: dict[str, Any],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self.node_id = load_node_id(config.data_dir)
        self.farm_key = load_farm_key(config.data_dir)
        self.farm_id = self.farm_key.farm_id
        self.capabilities = capabilities
        self.ctx = farm_context(self.farm_key)
        self.authenticator: ZapHandler | None = None
        self.foreign: dict[str, dict[str, Any]] = {}
        self.blobs = BlobStore(config.blob_dir)
        self.me = NodeInfo(
            node_id=self.node_id,
            site=config.site,
            address=config.bind_address,
            node_port=config.node_port,
            manager_port=config.manager_port,
            server_port=config.server_port,
            can_manage=config.can_manage,
            can_serve=config.can_serve,
            rank=Rank(config.priority, 0, self.node_id),
            worker_slots=config.worker_slots,
            capabilities=capabilities,
            started=clock(),
        )
        self.membership = Membership(self.me, config.timing)
        self.election = Election(self.membership, config.timing)
        self.endpoint = RouterEndpoint(self.ctx, self.node_id, "node", self._handle)
        self.contacts: dict[str, Contact] = {}
        self.links: dict[str, DealerLink] = {}
        self.server_role: ServerRole | None = None
        self.manager_role: ManagerRole | None = None
        self.worker: WorkerAgent | None = None
        self.standby: Standby | None = None
        self.client = ClientService(self)
        self.api: FarmApi | None = None
        self.discovery: MdnsDiscovery | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._vote_tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.background = BackgroundTasks("node")
        self._skew_warned: dict[str, float] = {}
        self._advert_dirty = False
        self._advert_task: asyncio.Task[None] | None = None

    # Lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Bind the node port, start discovery, the worker and the heartbeat loop."""
        config = self.config
        logger.info(
            "flamenco-p2p %s node %s starting: farm %s, site %s, %s:%d, data %s",
            __version__,
            self.node_id,
            self.farm_key.farm,
            config.site,
            config.bind_address,
            config.node_port,
            config.data_dir,
        )
        self.authenticator = ZapHandler(self.ctx)
        self.endpoint.bind(config.bind_address, config.node_port)
        for seed in config.seeds:
            self._add_contact(_seed_endpoint(seed, config.node_port), "seed")
        if config.mdns:
            await self._start_discovery()
        if config.can_serve:
            self.standby = Standby(
                self.ctx,
                self.node_id,
                config.database_path,
                self.blobs,
                self.node_endpoints,
            )
            await self.standby.open()
            self.me = dataclasses.replace(
                self.me,
                rank=dataclasses.replace(
                    self.me.rank, freshness=self.standby.freshness
                ),
            )
        if config.worker_slots > 0:
            await self._start_worker()
        self.api = FarmApi(self)
        await self.api.start(config.bind_address, config.http_port)
        # The settle time runs from here: discovery has had its chance to find
        # peers, and the first heartbeats go out now.
        self.me = dataclasses.replace(self.me, started=self.clock())
        self.membership.update_self(self.me)
        self._tasks.append(
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        )
        logger.info("node %s started", self.node_id)

    async def stop(self, reason: str = "stop requested") -> None:
        """Tell peers this node is leaving, give up roles and close everything."""
        if self._stopping:
            return
        self._stopping = True
        logger.info("node %s stopping: %s", self.node_id, reason)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for action in self.election.resign_all():
            await self._step_down(action)
        for link in self.links.values():
            link.send_nowait("leaving", {"reason": reason[:200]})
        # Give the leaving messages a moment to reach the wire before closing.
        await asyncio.sleep(0.05)
        if self.api is not None:
            await self.api.close()
        if self.worker is not None:
            await self.worker.close()
        if self.standby is not None:
            await self.standby.release()
        await self.background.cancel_all()
        if self.discovery is not None:
            await self.discovery.stop()
        await self.client.close()
        for link in self.links.values():
            await link.close()
        await self.endpoint.close()
        if self.authenticator is not None:
            await self.authenticator.stop()
        # destroy() closes any socket that a late task still holds, so that terminating
        # the context cannot wait for it.
        self.ctx.destroy(linger=0)
        logger.info("node %s stopped", self.node_id)

    async def _start_discovery(self) -> None:
        interfaces = list(self.config.mdns_interfaces) or default_interfaces(
            self.config.bind_address
        )
        problem = check_multicast(interfaces)
        if problem is not None:
            logger.warning("mDNS discovery may not work: %s", problem)
        self.discovery = MdnsDiscovery(
            self._advert(),
            self._on_sighting,
            interfaces=interfaces,
            on_goodbye=self._on_goodbye,
        )
        try:
            await self.discovery.start()
        except OSError as exc:
            logger.warning(
                "mDNS discovery failed to start on %s: %s; only seeds will be used",
                interfaces,
                exc,
            )
            self.discovery = None

    async def _start_worker(self) -> None:
        render = self.config.render
        backend = RenderBackend(
            kind=render.backend,
            python=render.python or sys.executable,
            blender_path=render.blender_path,
            allow_scripts=render.allow_scripts,
        )
        workers = [
            {
                "worker_id": f"{self.node_id}.{slot}",
                "node_id": self.node_id,
                "site": self.config.site,
                "capabilities": self.capabilities,
            }
            for slot in range(self.config.worker_slots)
        ]
        self.worker = WorkerAgent(
            self.ctx,
            self.node_id,
            workers,
            backend,
            self.blobs,
            self.config.data_dir / "scratch",
            self.node_endpoints,
            self.config.timing.heartbeat_interval,
            outbox_dir=self.config.data_dir / "outbox",
        )
        await self.worker.start()

    # Discovery and contacts ----------------------------------------------------

    def _advert(self) -> Advert:
        caps = self.capabilities
        summary = (
            f"cpu={caps.get('cpu_cores', 0)};gpu={','.join(caps.get('gpu_types', []))};"
            f"blender={caps.get('blender_version') or '-'}"
        )
        # The advert names roles without the site: the advert carries the site.
        roles = {
            role.split(":")[0]: epoch for role, epoch in self.election.held.items()
        }
        return Advert(
            node_id=self.node_id,
            farm_id=self.farm_id,
            site=self.config.site,
            address=self.config.bind_address,
            node_port=self.config.node_port,
            roles=roles,
            capabilities=summary[:200],
            http_port=self.config.http_port,
        )

    def _on_sighting(self, sighting: PeerSighting) -> None:
        if sighting.farm_id != self.farm_id:
            self._note_foreign(sighting)
            return
        endpoint = f"tcp://{sighting.address}:{sighting.node_port}"
        self._add_contact(endpoint, "mdns", sighting.node_id)

    def _note_foreign(self, sighting: PeerSighting) -> None:
        if sighting.node_id not in self.foreign:
            if len(self.foreign) >= 256:
                self.foreign.pop(next(iter(self.foreign)))
            logger.warning(
                "node %s at %s belongs to another farm (farm id %s): not contacting"
                " it; join this farm with `flamenco-p2p join` on it to add it",
                sighting.node_id,
                sighting.address,
                sighting.farm_id,
            )
        self.foreign[sighting.node_id] = {
            "node_id": sighting.node_id,
            "address": sighting.address,
            "farm_id": sighting.farm_id,
            "site": sighting.site,
        }

    def _on_goodbye(self, node_id: str) -> None:
        self.foreign.pop(node_id, None)
        logger.debug("mDNS goodbye from %s", node_id)

    def _add_contact(
        self, endpoint: str, source: str, node_id: str | None = None
    ) -> None:
        if endpoint == self._own_endpoint():
            return
        contact = self.contacts.get(endpoint)
        if contact is None:
            if len(self.contacts) >= MAX_CONTACTS and not self._evict_contact():
                logger.debug("contact %s from %s dropped: table full", endpoint, source)
                return
            now = self.clock()
            self.contacts[endpoint] = Contact(endpoint, source, node_id, 0.0, now)
            logger.info(
                "contact %s from %s (node %s)", endpoint, source, node_id or "?"
            )
        elif node_id is not None:
            contact.node_id = node_id

    def _evict_contact(self) -> bool:
        """Drop the oldest contact that never responded; False if every one did."""
        silent = [
            c
            for c in self.contacts.values()
            if c.last_heard == 0.0 and c.source != "seed"
        ]
        if not silent:
            return False
        oldest = min(silent, key=lambda c: c.added)
        del self.contacts[oldest.endpoint]
        link = self.links.pop(oldest.endpoint, None)
        if link is not None:
            self.background.spawn(link.close(), "close-link")
        return True

    def _own_endpoint(self) -> str:
        return f"tcp://{self.config.bind_address}:{self.config.node_port}"

    def _link(self, endpoint: str) -> DealerLink:
        link = self.links.get(endpoint)
        if link is None:
            link = DealerLink(
                self.ctx,
                self.node_id,
                endpoint,
                name=f"peer {endpoint}",
                immediate=True,
            )
            self.links[endpoint] = link
        return link

    def node_endpoints(self, node_id: str | None) -> list[str]:
        """Return the node-port endpoints at which a node can be reached."""
        if node_id is None:
            return []
        info = self.membership.info(node_id)
        if info is not None:
            return [info.node_endpoint]
        return [c.endpoint for c in self.contacts.values() if c.node_id == node_id]

    # Heartbeats and election ---------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.config.timing.heartbeat_interval
        while True:
            try:
                await self._beat()
            except Exception:
                logger.exception("heartbeat round failed")
            await asyncio.sleep(interval)

    async def _beat(self) -> None:
        now = self.clock()
        freshness = self._freshness()
        if freshness != self.me.rank.freshness:
            rank = dataclasses.replace(self.me.rank, freshness=freshness)
            self.me = dataclasses.replace(self.me, rank=rank)
            self.membership.update_self(self.me)
        await self._run_actions(self.election.tick(now, self._may_stand(now)))
        await self._reconcile_links(now)
        body = self._heartbeat_body(now)
        for endpoint in list(self.contacts):
            self._link(endpoint).send_nowait("heartbeat", body)
        self._forget_contacts(now)

    def _may_stand(self, now: float) -> bool:
        """Return False while a recently found contact has not responded yet."""
        wait = self.config.timing.settle_time
        for contact in self.contacts.values():
            answered = contact.last_heard > 0.0
            if not answered and now - contact.added < wait:
                return False
        return True

    def _heartbeat_body(self, now: float) -> dict[str, Any]:
        peers = [
            {"node_id": n.node_id, "address": n.address, "node_port": n.node_port}
            for n in self.membership.reachable(now)
            if n.node_id != self.node_id
        ]
        claims = [
            {"role": role, "epoch": epoch, "holder": holder}
            for role, epoch, holder in self.election.claims()
            if holder == self.node_id or self.election.holder(role, now) is not None
        ]
        return {
            "node": self.me.to_dict(),
            "peers": peers[:512],
            "claims": claims[:64],
            "wall_clock": time.time(),
        }

    def _forget_contacts(self, now: float) -> None:
        for endpoint, contact in list(self.contacts.items()):
            if contact.source == "seed":
                continue
            if now - max(contact.last_heard, contact.added) > CONTACT_FORGET_AFTER:
                del self.contacts[endpoint]
                link = self.links.pop(endpoint, None)
                if link is not None:
                    self.background.spawn(link.close(), "close-link")

    async def _on_heartbeat(self, message: Message) -> None:
        now = self.clock()
        info = NodeInfo.from_dict(message.body["node"])
        if info.node_id != message.sender:
            raise ProtocolError(
                "heartbeat node id differs from its sender", "node.node_id"
            )
        self.membership.heard(info, now)
        self._check_skew(info.node_id, message.body.get("wall_clock"), now)
        endpoint = info.node_endpoint
        self._add_contact(endpoint, "heartbeat", info.node_id)
        contact = self.contacts.get(endpoint)
        if contact is not None:
            contact.last_heard = now
        for peer in message.body["peers"]:
            if peer["node_id"] != self.node_id:
                self._add_contact(
                    f"tcp://{peer['address']}:{peer['node_port']}",
                    "gossip",
                    peer["node_id"],
                )
        actions: list[Action] = []
        for claim in message.body["claims"]:
            direct = claim["holder"] == message.sender
            actions += self.election.observe_claim(
                claim["role"], claim["epoch"], claim["holder"], now, direct
            )
        await self._run_actions(actions)

    def _check_skew(self, node_id: str, wall_clock: float | None, now: float) -> None:
        """Warn, at most every 10 minutes per peer, of a wall clock over 60 s off.

        Nothing depends on the skew: every timeout runs on the deciding node's own
        monotonic clock. Timestamps in the farm state and in logs are each
        node's wall clock, so a skewed node's times read wrong.
        """
        if wall_clock is None:
            return
        skew = wall_clock - time.time()
        if abs(skew) <= CLOCK_SKEW_WARNING:
            return
        if now - self._skew_warned.get(node_id, -math.inf) < 600:
            return
        if len(self._skew_warned) >= MAX_CONTACTS:
            self._skew_warned.clear()
        self._skew_warned[node_id] = now
        logger.warning(
            "node %s's clock is %+.0f s off this node's; timestamps it writes will"
            " read wrong until its clock is set (timeouts are not affected)",
            node_id,
            skew,
        )

    async def _run_actions(self, actions: list[Action]) -> None:
        if self._stopping:
            return
        for action in actions:
            if isinstance(action, RequestVotes):
                self._request_votes(action)
            elif isinstance(action, BecomeHolder):
                await self._become_holder(action)
            elif isinstance(action, StepDown):
                await self._step_down(action)
            elif isinstance(action, HolderChanged):
                await self._holder_changed(action.role)

    def _request_votes(self, action: RequestVotes) -> None:
        for voter in action.voters:
            task = asyncio.create_task(self._ask_vote(action, voter))
            self._vote_tasks.add(task)
            task.add_done_callback(self._vote_tasks.discard)

    async def _ask_vote(self, action: RequestVotes, voter: str) -> None:
        endpoints = self.node_endpoints(voter)
        if not endpoints:
            return
        body = {
            "role": action.role,
            "epoch": action.epoch,
            "rank": self.me.rank.to_dict(),
        }
        try:
            result = await self._link(endpoints[0]).call(
                "vote_request", body, VOTE_TIMEOUT
            )
            granted = bool(result["granted"])
            known = int(result["known_epoch"])
        except (FarmUnavailable, RemoteError, KeyError, TypeError, ValueError) as exc:
            logger.info(
                "no vote from %s for %s epoch %d: %s",
                voter,
                action.role,
                action.epoch,
                exc,
            )
            return
        actions = self.election.handle_vote(
            action.role, action.epoch, voter, granted, known
        )
        await self._run_actions(actions)

    async def _become_holder(self, action: BecomeHolder) -> None:
        try:
            if action.role == SERVER_ROLE:
                await self._start_server(action.epoch)
            else:
                await self._start_manager(action.epoch)
        except (zmq.ZMQError, OSError) as exc:
            logger.error(
                "cannot take %s epoch %d: %s; another program may hold the port",
                action.role,
                action.epoch,
                exc,
            )
            self.election.held.pop(action.role, None)
            await self._step_down(StepDown(action.role, action.epoch, str(exc)))
            return
        if self._stopping:
            # stop() began while the role was starting, after it resigned roles.
            await self._step_down(
                StepDown(action.role, action.epoch, "node is stopping")
            )
            return
        # Tell peers at once instead of at the next heartbeat.
        body = self._heartbeat_body(self.clock())
        for endpoint in list(self.contacts):
            self._link(endpoint).send_nowait("heartbeat", body)
        self._update_advert()

    async def _start_server(self, epoch: int) -> None:
        if self.standby is not None:
            # The replica is the database the server role goes on with.
            await self.standby.release()
        failures = self.config.failures
        store = await FarmStore.open(
            self.config.database_path,
            max_attempts=failures.max_attempts,
            task_fail_workers=failures.task_fail_workers,
            retry_same_worker_after=failures.retry_same_worker_after,
            blocklist_threshold=failures.blocklist_threshold,
            blocklist_forget_after=failures.blocklist_forget_after,
            job_fail_ratio=failures.job_fail_ratio,
        )
        timing = self.config.timing
        role = ServerRole(
            self.ctx,
            self.node_id,
            epoch,
            store,
            self._manager_epoch,
            LogSource(store, self.node_id, self.blobs),
            self.config.data_dir / "snapshots",
            unclaimed_after=timing.worker_silent_after + timing.dead_after,
        )
        try:
            await role.start(self.config.bind_address, self.config.server_port)
        except zmq.ZMQError:
            await role.close()
            await self._resume_standby()
            raise
        self.server_role = role
        await self._holder_changed(SERVER_ROLE)

    async def _resume_standby(self) -> None:
        if self.standby is not None and not self._stopping:
            await self.standby.open()

    async def _start_manager(self, epoch: int) -> None:
        role = ManagerRole(
            self.ctx,
            self.node_id,
            self.config.site,
            epoch,
            self.blobs,
            self.node_endpoints,
            self.config.timing.worker_silent_after,
        )
        role.start(self.config.bind_address, self.config.manager_port)
        self.manager_role = role
        await self._holder_changed(SERVER_ROLE)
        await self._holder_changed(manager_role(self.config.site))

    def _manager_epoch(self, site: str) -> int:
        return self.election.view(manager_role(site)).epoch

    async def _step_down(self, action: StepDown) -> None:
        level = logging.INFO if self._stopping else logging.WARNING
        logger.log(
            level,
            "leaving role %s epoch %d: %s",
            action.role,
            action.epoch,
            action.reason,
        )
        if action.role == SERVER_ROLE and self.server_role is not None:
            role, self.server_role = self.server_role, None
            await role.close()
            await self._resume_standby()
        elif action.role != SERVER_ROLE and self.manager_role is not None:
            manager, self.manager_role = self.manager_role, None
            await manager.close()
        self._update_advert()

    async def _holder_changed(self, role: str) -> None:
        now = self.clock()
        holder = self.election.holder(role, now)
        if role == SERVER_ROLE:
            endpoint = self.role_endpoint(SERVER_ROLE, now)
            epoch = holder[1] if holder else 0
            if self.manager_role is not None:
                await self.manager_role.set_server(endpoint, epoch)
            await self.client.set_server(endpoint, epoch)
            self._follow_server(now)
        elif role == manager_role(self.config.site) and self.worker is not None:
            endpoint = self.role_endpoint(role, now)
            await self.worker.set_manager(endpoint, holder[1] if holder else 0)

    async def _reconcile_links(self, now: float) -> None:
        """Point every link at the current role holders, if one points elsewhere.

        A holder can become known before its address does (gossip names it before
        its own heartbeat arrives), or before the worker exists; the change is
        then applied here, on the next heartbeat round, instead of never.
        """
        server = self.role_endpoint(SERVER_ROLE, now)
        manager = self.role_endpoint(manager_role(self.config.site), now)
        stale = self.client.server_endpoint != server
        if self.manager_role is not None:
            stale = stale or self.manager_role.server_endpoint != server
        if stale:
            logger.info(
                "links to the server are out of date: reconnecting to %s", server
            )
            await self._holder_changed(SERVER_ROLE)
        self._follow_server(now)
        if self.worker is not None and self.worker.manager_endpoint != manager:
            logger.info("the worker's manager link is out of date: using %s", manager)
            await self._holder_changed(manager_role(self.config.site))

    def _follow_server(self, now: float) -> None:
        """Point the standby at the current server, unless this node is the server."""
        if self.standby is None or self.standby.store is None:
            return
        holder = self.election.holder(SERVER_ROLE, now)
        if holder is None or holder[0] == self.node_id:
            self.standby.follow(None, None, 0)
            return
        self.standby.follow(self.role_endpoint(SERVER_ROLE, now), holder[0], holder[1])

    def _freshness(self) -> int:
        if self.server_role is not None:
            return self.server_role.log.last_head
        return self.standby.freshness if self.standby is not None else 0

    def role_endpoint(self, role: str, now: float) -> str | None:
        """Return the ZeroMQ endpoint of a role's current holder, or None."""
        holder = self.election.holder(role, now)
        if holder is None:
            return None
        info = self.membership.info(holder[0])
        if info is None:
            return None
        port = info.server_port if role == SERVER_ROLE else info.manager_port
        return f"tcp://{info.address}:{port}"

    def _update_advert(self) -> None:
        """Republish the mDNS advert in the background; updates coalesce."""
        if self.discovery is None or self._stopping:
            return
        self._advert_dirty = True
        if self._advert_task is None or self._advert_task.done():
            self._advert_task = self.background.spawn(self._publish_advert(), "advert")

    async def _publish_advert(self) -> None:
        while self._advert_dirty and not self._stopping and self.discovery is not None:
            self._advert_dirty = False
            try:
                await self.discovery.update(self._advert())
            except (OSError, ValueError, StateError) as exc:
                logger.warning("mDNS advert update failed: %s", exc)

    # Node port -----------------------------------------------------------------

    async def _handle(
        self, identity: bytes, message: Message
    ) -> dict[str, Any] | Reply | None:
        op = message.op
        if op == "heartbeat":
            await self._on_heartbeat(message)
            return None
        if op == "leaving":
            self.membership.mark_left(message.sender)
            await self._run_actions(self.election.tick(self.clock()))
            return None
        if op == "vote_request":
            body = message.body
            granted, known = self.election.handle_vote_request(
                body["role"], body["epoch"], Rank.from_dict(body["rank"]), self.clock()
            )
            if body["rank"]["node_id"] != message.sender:
                granted = False
            return {"granted": granted, "known_epoch": known}
        return await self.client.handle(identity, message)

    # Status --------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Return this node's view of the farm: peers, states, roles and epochs."""
        now = self.clock()
        nodes = []
        for info in [self.me] + [r.info for r in self.membership.peers.values()]:
            state = self.membership.state(info.node_id, now)
            roles = [
                {"role": role, "epoch": epoch}
                for role, epoch, holder in self.election.claims()
                if holder == info.node_id
                and self.election.holder(role, now) is not None
            ]
            nodes.append(
                {
                    "node_id": info.node_id,
                    "site": info.site,
                    "address": info.address,
                    "state": str(state),
                    "roles": roles,
                    "capabilities": info.capabilities,
                    "worker_slots": info.worker_slots,
                    "this_node": info.node_id == self.node_id,
                }
            )
        holders: dict[str, dict[str, Any] | None] = {}
        for role in {r for r, _e, _h in self.election.claims()}:
            holder = self.election.holder(role, now)
            holders[role] = (
                {"holder": holder[0], "epoch": holder[1]} if holder else None
            )
        return {
            "node_id": self.node_id,
            "farm": self.farm_key.farm,
            "farm_id": self.farm_id,
            "foreign": list(self.foreign.values()),
            "nodes": nodes,
            "roles": holders,
        }


def _seed_endpoint(seed: str, default_port: int) -> str:
    host, port = parse_seed(seed, default_port)
    return f"tcp://{host}:{port}"
