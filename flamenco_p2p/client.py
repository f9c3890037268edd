"""A client of the local node's port, used by the CLI and the demo."""

from __future__ import annotations

import asyncio
import os
import uuid
from types import TracebackType
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from flamenco_p2p.config import NodeConfig
from flamenco_p2p.errors import FarmUnavailable
from flamenco_p2p.farmkey import FarmKey, load_farm_key
from flamenco_p2p.security import HANDSHAKE_EVENTS, farm_context
from flamenco_p2p.transport import DealerLink

CONNECT_TIMEOUT = 5.0
CONNECT_EVENTS = (
    zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_HANDSHAKE_SUCCEEDED | HANDSHAKE_EVENTS
)


class NodeClient:
    """Request/reply access to one node; use as ``async with NodeClient(config)``."""

    def __init__(self, endpoint: str, farm_key: FarmKey, timeout: float = 20.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.ctx = farm_context(farm_key)
        # The CLI is not a node, but every message names its sender, so it uses a
        # fresh id that no peer will ever take for a member.
        self.client_id = uuid.UUID(bytes=os.urandom(16)).hex
        self.link: DealerLink | None = None

    @classmethod
    def for_config(cls, config: NodeConfig, timeout: float = 20.0) -> NodeClient:
        """Return a client of the node that runs with this config."""
        farm_key = load_farm_key(config.data_dir)
        return cls(f"tcp://{config.bind_address}:{config.node_port}", farm_key, timeout)

    async def __aenter__(self) -> NodeClient:
        self.link = DealerLink(self.ctx, self.client_id, self.endpoint, name="cli")
        try:
            await self._wait_connected(self.link)
        except BaseException:
            await self.link.close()
            self.link = None
            self.ctx.destroy(linger=0)
            raise
        return self

    async def _wait_connected(self, link: DealerLink) -> None:
        # ZeroMQ retries a refused connection silently, so without this watch a
        # missing node or a wrong farm key would look like a slow node.
        monitor = link.sock.get_monitor_socket(CONNECT_EVENTS)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                while True:
                    event = parse_monitor_message(await monitor.recv_multipart())
                    self._check_event(int(event["event"]))
                    if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                        return
        except TimeoutError as exc:
            raise FarmUnavailable(
                f"timed out after {CONNECT_TIMEOUT:.0f} s connecting to {self.endpoint}"
            ) from exc
        finally:
            link.sock.disable_monitor()
            monitor.close(0)

    def _check_event(self, kind: int) -> None:
        if kind == zmq.EVENT_CONNECT_RETRIED:
            raise FarmUnavailable(
                f"no node is listening at {self.endpoint}; start one with"
                " `flamenco-p2p run` (same --data-dir) and try again"
            )
        if kind & HANDSHAKE_EVENTS:
            raise FarmUnavailable(
                f"the node at {self.endpoint} rejected this client: its farm key"
                " differs from the one in this data directory"
            )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.link is not None:
            await self.link.close()
        self.ctx.destroy(linger=0)

    async def call(
        self, op: str, body: dict[str, Any], timeout: float | None = None
    ) -> Any:
        """Send one request to the node and return its result."""
        assert self.link is not None, "use NodeClient as an async context manager"
        try:
            return await self.link.call(op, body, timeout or self.timeout)
        except FarmUnavailable as exc:
            raise FarmUnavailable(
                f"no node responded at {self.endpoint}; start one with"
                " `flamenco-p2p run` (same --data-dir) and try again"
            ) from exc
