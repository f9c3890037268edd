"""Encrypted, authenticated ZeroMQ: CURVE on every socket, ZAP admits farm members.

Every node of a farm derives the same two CURVE key pairs from the farm key: one
for sockets that accept connections and one for sockets that connect. A peer
without the key cannot complete the CURVE handshake (it does not know the server
key), and the ZAP handler admits only the farm's client key, so a socket never
delivers a message from outside the farm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import zmq
import zmq.asyncio
import zmq.utils.z85
from zmq.utils.monitor import parse_monitor_message

from flamenco_p2p.errors import ConfigError
from flamenco_p2p.farmkey import FarmKey

logger = logging.getLogger(__name__)

ZAP_DOMAIN = "flamenco-p2p"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"
HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
REFUSAL_LOG_EVERY = 60.0


class FarmContext(zmq.asyncio.Context):
    """A ZeroMQ context whose sockets speak CURVE with one farm's keys."""

    farm_key: FarmKey | None = None


def farm_context(farm_key: FarmKey) -> FarmContext:
    """Return a new context for a farm's sockets."""
    ctx = FarmContext()
    ctx.farm_key = farm_key
    return ctx


def _key_of(ctx: zmq.asyncio.Context) -> FarmKey:
    farm_key = getattr(ctx, "farm_key", None)
    if not isinstance(farm_key, FarmKey):
        raise ConfigError(
            "a farm socket needs a FarmContext with the farm key; create the context"
            " with farm_context()"
        )
    return farm_key


def secure_server(sock: zmq.asyncio.Socket, ctx: zmq.asyncio.Context) -> None:
    """Make a socket that accepts connections a CURVE server under ZAP."""
    pair = _key_of(ctx).server_curve
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, pair.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, pair.public)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())


def secure_client(sock: zmq.asyncio.Socket, ctx: zmq.asyncio.Context) -> None:
    """Make a connecting socket a CURVE client with the farm's keys."""
    farm_key = _key_of(ctx)
    client = farm_key.client_curve
    sock.setsockopt(zmq.CURVE_SERVERKEY, farm_key.server_curve.public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, client.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, client.secret)


class ZapHandler:
    """The context's ZAP handler (ZeroMQ RFC 27): admits only the farm's client key.

    pyzmq ships an authenticator, but its asyncio variant cannot be awaited when
    it stops, and a node started right after another in the same process then
    lost its ZAP socket's reader to the old one's late clean-up.
    """

    def __init__(self, ctx: FarmContext) -> None:
        self.member = zmq.utils.z85.decode(_key_of(ctx).client_curve.public)
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)
        self.refused = 0
        self.last_logged = 0.0
        self.task = asyncio.create_task(self._serve(), name="zap")

    async def _serve(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            await self.sock.send_multipart(self.answer(frames))

    def answer(self, frames: list[bytes]) -> list[bytes]:
        """Return the ZAP reply to one request."""
        if len(frames) < 6 or frames[0] != ZAP_VERSION:
            request_id = frames[1] if len(frames) > 1 else b""
            return [ZAP_VERSION, request_id, b"400", b"invalid request", b"", b""]
        request_id, address, mechanism = frames[1], frames[3], frames[5]
        credentials = frames[6:]
        if mechanism == b"CURVE" and credentials == [self.member]:
            return [ZAP_VERSION, request_id, b"200", b"OK", b"member", b""]
        self._log_refusal(address.decode("utf-8", "replace"))
        return [ZAP_VERSION, request_id, b"400", b"not a member", b"", b""]

    def _log_refusal(self, address: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if self.refused > 1 and now - self.last_logged < REFUSAL_LOG_EVERY:
            return
        self.last_logged = now
        logger.warning(
            "rejected a ZeroMQ client at %s (%d so far): its CURVE key is not this"
            " farm's",
            address,
            self.refused,
        )

    async def stop(self) -> None:
        """Stop replying to ZAP requests and unbind; idempotent."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.sock.close(0)


class HandshakeWatch:
    """Logs failed CURVE handshakes on one socket: the first, then a count a minute.

    A client without the farm key fails the handshake before ZAP is consulted, and
    ZeroMQ reports that only through the socket monitor.
    """

    def __init__(self, sock: zmq.asyncio.Socket, name: str) -> None:
        self.name = name
        self.failures = 0
        self.last_logged = 0.0
        self.monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
        self.task = asyncio.create_task(self._watch(), name=f"{name}-handshakes")

    async def _watch(self) -> None:
        while True:
            try:
                frames = await self.monitor.recv_multipart()
                event = parse_monitor_message(frames)
            except (zmq.ZMQError, ValueError) as exc:
                logger.debug("%s: monitor stopped: %s", self.name, exc)
                return
            self._record(event)

    def _record(self, event: Any) -> None:
        self.failures += 1
        now = time.monotonic()
        if self.failures > 1 and now - self.last_logged < REFUSAL_LOG_EVERY:
            return
        self.last_logged = now
        logger.warning(
            "%s: rejected a connection whose CURVE handshake failed (%s, %d so far);"
            " only nodes with this farm's key can connect",
            self.name,
            _event_name(event.get("event", 0)),
            self.failures,
        )

    async def close(self) -> None:
        """Stop watching; idempotent."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.monitor.close(0)


def _event_name(event: int) -> str:
    names: dict[int, str] = {
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no detail",
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol error",
        zmq.EVENT_HANDSHAKE_FAILED_AUTH: "authentication failed",
    }
    return names.get(event, str(event))
