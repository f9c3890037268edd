"""A client of the local node's port, used by the CLI and the demo."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from types import TracebackType
from typing import Any

import zmq.asyncio

from flamenco_p2p.config import NodeConfig
from flamenco_p2p.errors import FarmUnavailable
from flamenco_p2p.transport import DealerLink

CONNECT_TIMEOUT = 3.0


class NodeClient:
    """Request/reply access to one node; use as ``async with NodeClient(config)``."""

    def __init__(self, endpoint: str, timeout: float = 20.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.ctx = zmq.asyncio.Context()
        # The CLI is not a node, but every message names its sender, so it uses a
        # fresh id that no peer will ever take for a member.
        self.client_id = uuid.UUID(bytes=os.urandom(16)).hex
        self.link: DealerLink | None = None

    @classmethod
    def for_config(cls, config: NodeConfig, timeout: float = 20.0) -> NodeClient:
        """Return a client of the node that runs with this config."""
        return cls(f"tcp://{config.bind_address}:{config.node_port}", timeout)

    async def __aenter__(self) -> NodeClient:
        await asyncio.to_thread(self._check_listening)
        self.link = DealerLink(self.ctx, self.client_id, self.endpoint, name="cli")
        return self

    def _check_listening(self) -> None:
        # ZeroMQ waits silently for a peer that is not there; a plain TCP connect
        # tells at once that no node runs, so the user is not kept waiting.
        host, _, port = self.endpoint.removeprefix("tcp://").rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT):
                pass
        except OSError as exc:
            self.ctx.term()
            raise FarmUnavailable(
                f"no node is listening at {host}:{port} ({exc.strerror or exc});"
                " start one with `flamenco-p2p run` (same --data-dir) and try again"
            ) from exc

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.link is not None:
            await self.link.close()
        self.ctx.term()

    async def call(
        self, op: str, body: dict[str, Any], timeout: float | None = None
    ) -> Any:
        """Send one request to the node and return its result."""
        assert self.link is not None, "use NodeClient as an async context manager"
        try:
            return await self.link.call(op, body, timeout or self.timeout)
        except FarmUnavailable as exc:
            raise FarmUnavailable(
                f"no node answered at {self.endpoint}; start one with"
                " `flamenco-p2p run` (same --data-dir) and try again"
            ) from exc
