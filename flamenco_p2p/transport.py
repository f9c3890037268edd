"""ZeroMQ links between nodes: a ROUTER endpoint that serves, a DEALER link that calls.

Every socket gets a bounded ``maxmsgsize`` (a forged frame header could otherwise make
libzmq reserve gigabytes), ZMTP heartbeats (a frozen peer is otherwise never noticed),
and ``linger = 0`` (so closing does not block the loop). ``configure`` sets
all three. Every socket is encrypted
and authenticated with CURVE (see flamenco_p2p/security.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from flamenco_p2p.errors import (
    BlobError,
    FarmError,
    FarmUnavailable,
    InvalidInput,
    NotFound,
    ProtocolError,
)
from flamenco_p2p.protocol.codec import MAX_FRAME_BYTES
from flamenco_p2p.protocol.messages import Message, pack, unpack
from flamenco_p2p.security import HandshakeWatch, secure_client, secure_server

logger = logging.getLogger(__name__)

ZMTP_HEARTBEAT_IVL_MS = 1000
ZMTP_HEARTBEAT_TIMEOUT_MS = 3000
SEND_HWM = 10_000
CONNECT_TIMEOUT_MS = 2000
MAX_HANDLERS = 256
"""Maximum requests that one endpoint handles at once. Beyond it the receive loop
waits for a handler to finish, so a flood waits in ZeroMQ's receive queue (then in
TCP) instead of piling up in memory as tasks.

NOTE: while the server endpoint is full, a standby's pull waits in that queue too,
so handlers in wait_replicated may time out (ACK_TIMEOUT) instead of seeing its
acknowledgement."""
FULL_WARNING_EVERY = 60.0
"""Seconds between warnings that an endpoint is full."""


class Reply:
    """A reply with its own operation, for replies that are not a plain ``reply``."""

    __slots__ = ("body", "op")

    def __init__(self, op: str, body: dict[str, Any]) -> None:
        self.op = op
        self.body = body


Handler = Callable[[bytes, Message], Awaitable["dict[str, Any] | Reply | None"]]


class RemoteError(Exception):
    """A peer replied to a request with an error message."""

    def __init__(self, code: str, message: str, field: str | None) -> None:
        self.code = code
        self.field = field
        # The message alone: codes are for programs, and a message that crossed
        # several nodes would otherwise collect one prefix per hop.
        super().__init__(message)


def configure(sock: zmq.asyncio.Socket) -> None:
    """Apply the options that every flamenco-p2p socket needs."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
    sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.SNDHWM, SEND_HWM)
    # Without it, a connect started during an outage waits out TCP's SYN back-off
    # (tens of seconds) after the network is back.
    sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
    sock.setsockopt(zmq.RCVHWM, SEND_HWM)


class BadInputLog:
    """Counts rejected frames per peer; logs the first of each kind, then rarely."""

    def __init__(self, name: str, every: float = 60.0, max_keys: int = 1024) -> None:
        self.name = name
        self.every = every
        self.max_keys = max_keys
        self.counts: dict[str, int] = {}
        self.last_logged: dict[str, float] = {}
        self.total = 0

    def record(self, peer: str, error: Exception) -> None:
        """Count one rejected frame from a peer and log it if it is due."""
        self.total += 1
        key = f"{peer}:{type(error).__name__}"
        if key not in self.counts and len(self.counts) >= self.max_keys:
            self.counts.clear()
            self.last_logged.clear()
        self.counts[key] = self.counts.get(key, 0) + 1
        now = time.monotonic()
        last = self.last_logged.get(key)
        if last is None or now - last >= self.every:
            self.last_logged[key] = now
            logger.warning(
                "%s: dropped invalid message from %s (%d so far from it): %s",
                self.name,
                peer,
                self.counts[key],
                error,
            )
        else:
            logger.debug(
                "%s: dropped invalid message from %s: %s", self.name, peer, error
            )


class RouterEndpoint:
    """A bound ROUTER socket that decodes each request and dispatches it to a handler.

    The handler gets the peer's routing identity and the message; a map it returns is
    sent as the ``reply`` to requests that carry an id.
    """

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        node_id: str,
        name: str,
        handler: Handler,
        allowed: frozenset[str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.node_id = node_id
        self.name = name
        self.handler = handler
        self.allowed = allowed
        self.epoch: int | None = None
        self.bad_input = BadInputLog(name)
        self.sock: zmq.asyncio.Socket | None = None
        self.handshakes: HandshakeWatch | None = None
        self.endpoint = ""
        self._task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_HANDLERS)
        self._full_waits = 0
        self._full_warned = -FULL_WARNING_EVERY

    def bind(self, address: str, port: int) -> None:
        """Bind the socket and start serving; raises zmq.ZMQError if the port is
        taken."""
        sock = self.ctx.socket(zmq.ROUTER)
        configure(sock)
        secure_server(sock, self.ctx)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.endpoint = f"tcp://{address}:{port}"
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError:
            sock.close(0)
            raise
        self.sock = sock
        self.handshakes = HandshakeWatch(sock, self.name)
        self._task = asyncio.create_task(self._serve(), name=f"{self.name}-serve")
        logger.info("%s: listening on %s", self.name, self.endpoint)

    async def close(self) -> None:
        """Stop serving and unbind; idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._handlers):
            task.cancel()
        if self.handshakes is not None:
            await self.handshakes.close()
            self.handshakes = None
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None
            logger.info("%s: closed %s", self.name, self.endpoint)

    async def send(
        self,
        identity: bytes,
        op: str,
        body: dict[str, Any],
        request_id: int | None = None,
    ) -> bool:
        """Send a message to one connected peer; False when the peer is gone."""
        if self.sock is None:
            return False
        frame = pack(op, self.node_id, body, epoch=self.epoch, request_id=request_id)
        try:
            await self.sock.send_multipart([identity, frame])
        except zmq.ZMQError as exc:
            logger.debug("%s: send %s to %r failed: %s", self.name, op, identity, exc)
            return False
        return True

    async def _serve(self) -> None:
        assert self.sock is not None
        while True:
            try:
                frames = await self.sock.recv_multipart(copy=False)
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:
                logger.warning("%s: receive failed: %s", self.name, exc)
                await asyncio.sleep(0.05)
                continue
            parts = [f.bytes for f in frames]
            if len(parts) != 2:
                self.bad_input.record(repr(parts[0][:16]), ProtocolError("not 1 frame"))
                continue
            identity, frame = parts
            try:
                message = unpack(frame, self.allowed)
                message = dataclasses.replace(
                    message, peer_address=_peer_address(frames[1])
                )
            except ProtocolError as exc:
                self.bad_input.record(identity.hex()[:16], exc)
                await self._reject(identity, frame, exc)
                continue
            await self._wait_for_slot()
            task = asyncio.create_task(self._dispatch(identity, message))
            self._handlers.add(task)
            task.add_done_callback(self._handler_done)

    async def _wait_for_slot(self) -> None:
        if self._slots.locked():
            self._full_waits += 1
            now = time.monotonic()
            if now - self._full_warned >= FULL_WARNING_EVERY:
                self._full_warned = now
                logger.warning(
                    "%s: %d requests in progress (the maximum): the next request"
                    " waits until one finishes (%d waits so far)",
                    self.name,
                    MAX_HANDLERS,
                    self._full_waits,
                )
        await self._slots.acquire()

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._handlers.discard(task)
        self._slots.release()

    async def _reject(
        self, identity: bytes, frame: bytes, error: ProtocolError
    ) -> None:
        # Only a frame that decodes to a map with a request id gets a reply, so a
        # stream of garbage from an unknown peer costs no replies.
        request_id = _peek_request_id(frame)
        if request_id is not None:
            await self.send(
                identity,
                "error",
                {"code": "invalid", "message": str(error), "field": error.field},
                request_id,
            )

    async def _dispatch(self, identity: bytes, message: Message) -> None:
        try:
            result = await self.handler(identity, message)
        except RemoteError as exc:
            result = None
            await self._error(identity, message, exc.code, str(exc), exc.field)
        except (ProtocolError, InvalidInput, ValueError) as exc:
            result = None
            field = exc.field if isinstance(exc, ProtocolError) else None
            await self._error(identity, message, "invalid", str(exc), field)
        except (NotFound, BlobError) as exc:
            result = None
            await self._error(identity, message, "not_found", str(exc), None)
        except FarmError as exc:
            # StateError and the rest: the request is valid but not now.
            result = None
            await self._error(identity, message, "conflict", str(exc), None)
        except Exception as exc:  # a handler bug must not end the endpoint
            logger.exception(
                "%s: handling %s from %s failed", self.name, message.op, message.sender
            )
            result = None
            await self._error(identity, message, type(exc).__name__, str(exc), None)
        if result is None or message.request_id is None:
            return
        if isinstance(result, Reply):
            await self.send(identity, result.op, result.body, message.request_id)
        else:
            await self.send(identity, "reply", {"result": result}, message.request_id)

    async def _error(
        self, identity: bytes, message: Message, code: str, text: str, field: str | None
    ) -> None:
        logger.debug(
            "%s: %s from %s failed (%s): %s",
            self.name,
            message.op,
            message.sender,
            code,
            text,
        )
        if message.request_id is None:
            logger.warning(
                "%s: %s from %s rejected: %s",
                self.name,
                message.op,
                message.sender,
                text,
            )
            return
        body = {"code": code[:40], "message": text[:4000], "field": field}
        await self.send(identity, "error", body, message.request_id)


def _peer_address(frame: zmq.Frame) -> str | None:
    try:
        address = frame.get("Peer-Address")
    except zmq.ZMQError:
        return None
    return address if isinstance(address, str) else None


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _peek_request_id(frame: bytes) -> int | None:
    from flamenco_p2p.protocol.codec import decode

    try:
        raw = decode(frame)
    except ProtocolError:
        return None
    value = raw.get("id")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


class DealerLink:
    """A DEALER connection to one peer's endpoint, with request/reply correlation.

    Messages the peer pushes without a request id go to ``on_push``.
    """

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        node_id: str,
        endpoint: str,
        on_push: Handler | None = None,
        name: str = "link",
        immediate: bool = False,
    ) -> None:
        self.node_id = node_id
        self.endpoint = endpoint
        self.name = name
        self.on_push = on_push
        self.epoch: int | None = None
        self.sock = ctx.socket(zmq.DEALER)
        configure(sock=self.sock)
        secure_client(self.sock, ctx)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if immediate:
            # Queue nothing for a peer that is not connected: heartbeats and votes
            # for a dead node are dropped instead of piling up until it returns.
            self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.connect(endpoint)
        self.bad_input = BadInputLog(name)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._task = asyncio.create_task(self._receive(), name=f"{name}-receive")
        self.last_received = time.monotonic()
        self.closed = False

    async def send(self, op: str, body: dict[str, Any]) -> None:
        """Send a one-way message, waiting while the send queue is full."""
        frame = pack(op, self.node_id, body, epoch=self.epoch)
        await self.sock.send(frame)

    def send_nowait(self, op: str, body: dict[str, Any]) -> bool:
        """Send a one-way message unless the peer is unconnected or its queue is full.

        Returns False when the message was dropped; heartbeats use this, because a
        late heartbeat is worthless and must never block the loop.
        """
        frame = pack(op, self.node_id, body, epoch=self.epoch)
        future = self.sock.send(frame, flags=zmq.DONTWAIT)
        if not isinstance(future, asyncio.Future):
            return True
        if future.done():
            return not future.cancelled() and future.exception() is None
        future.add_done_callback(_consume_exception)
        return True

    async def call(self, op: str, body: dict[str, Any], timeout: float = 10.0) -> Any:
        """Send a request and return the reply's result; raises RemoteError on an error.

        Raises FarmUnavailable when no answer arrives within ``timeout`` seconds.
        """
        message = await self.call_message(op, body, timeout)
        if message.op == "reply":
            return message.body["result"]
        return message.body

    async def call_message(
        self, op: str, body: dict[str, Any], timeout: float
    ) -> Message:
        """Send a request and return the raw answer message."""
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        frame = pack(op, self.node_id, body, epoch=self.epoch, request_id=request_id)
        try:
            async with asyncio.timeout(timeout):
                await self.sock.send(frame)
                message = await future
        except TimeoutError as exc:
            raise FarmUnavailable(
                f"{self.name}: request {op} to {self.endpoint} timed out after"
                f" {timeout} s"
            ) from exc
        finally:
            self._pending.pop(request_id, None)
        if message.op == "error":
            raise RemoteError(
                message.body["code"], message.body["message"], message.body["field"]
            )
        return message

    async def close(self) -> None:
        """Close the connection and fail pending requests; idempotent."""
        if self.closed:
            return
        self.closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for future in self._pending.values():
            if not future.done():
                future.set_exception(FarmUnavailable(f"{self.name}: link closed"))
        self._pending.clear()
        self.sock.close(0)

    async def _receive(self) -> None:
        while True:
            try:
                frame = await self.sock.recv(copy=True)
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:
                logger.warning("%s: receive failed: %s", self.name, exc)
                await asyncio.sleep(0.05)
                continue
            try:
                message = unpack(frame)
            except ProtocolError as exc:
                self.bad_input.record(self.endpoint, exc)
                continue
            self.last_received = time.monotonic()
            if message.request_id is not None and message.op in (
                "reply",
                "error",
                "blob_data",
            ):
                future = self._pending.get(message.request_id)
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            if self.on_push is not None:
                try:
                    await self.on_push(b"", message)
                except Exception:
                    logger.exception(
                        "%s: handling %s from %s failed",
                        self.name,
                        message.op,
                        message.sender,
                    )
