"""The manager role: a site's dispatcher between its workers and the server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import zmq.asyncio

from flamenco_p2p.background import BackgroundTasks
from flamenco_p2p.blobs import CHUNK_SIZE, BlobStore
from flamenco_p2p.errors import BlobError, FarmUnavailable
from flamenco_p2p.protocol.messages import Message
from flamenco_p2p.transport import DealerLink, RemoteError, Reply, RouterEndpoint

logger = logging.getLogger(__name__)

MANAGER_OPS = frozenset(
    {
        "worker_hello",
        "worker_heartbeat",
        "worker_leaving",
        "task_progress",
        "task_log",
        "task_done",
        "task_failed",
        "task_canceled",
        "blob_get",
    }
)
RESULT_TIMEOUT = 10.0
REPORT_RUNNING_EVERY = 2.0


@dataclass(slots=True)
class WorkerSlot:
    """One worker (one render slot of a node) connected to this manager."""

    worker: dict[str, Any]
    identity: bytes
    last_seen: float
    attempt_id: str | None = None
    lost: bool = False


@dataclass(slots=True)
class BlobFetch:
    """A blob being copied from the submitting node into this manager's cache."""

    done: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None


class ManagerRole:
    """Serves the manager port while this node holds its site's manager role."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        node_id: str,
        site: str,
        epoch: int,
        blobs: BlobStore,
        node_endpoint_of: Any,
        silent_after: float,
    ) -> None:
        self.ctx = ctx
        self.node_id = node_id
        self.site = site
        self.epoch = epoch
        self.blobs = blobs
        self.node_endpoint_of = node_endpoint_of
        self.silent_after = silent_after
        self.endpoint = RouterEndpoint(
            ctx, node_id, "manager", self.handle, MANAGER_OPS
        )
        self.endpoint.epoch = epoch
        self.workers: dict[str, WorkerSlot] = {}
        self.server: DealerLink | None = None
        self.server_epoch = 0
        self._link_lock = asyncio.Lock()
        self.fetches: dict[str, BlobFetch] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self.background = BackgroundTasks("manager")

    def start(self, address: str, port: int) -> None:
        """Bind the manager port and watch for silent workers."""
        self.endpoint.bind(address, port)
        self._watchdog = asyncio.create_task(
            self._watch_workers(), name="manager-watch"
        )
        self._reporter = asyncio.create_task(
            self._report_running_loop(), name="manager-report"
        )
        logger.info("manager role active for site %s, epoch %d", self.site, self.epoch)

    async def close(self) -> None:
        """Unbind and drop the server link; idempotent."""
        for task in (self._watchdog, self._reporter):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._watchdog = self._reporter = None
        await self.background.cancel_all()
        await self.endpoint.close()
        if self.server is not None:
            await self.server.close()
            self.server = None
        logger.info("manager role stopped for site %s, epoch %d", self.site, self.epoch)

    @property
    def server_endpoint(self) -> str | None:
        """The server endpoint this manager uses, or None."""
        return self.server.endpoint if self.server is not None else None

    async def set_server(self, endpoint: str | None, epoch: int) -> None:
        """Connect to a new server, and ask it for tasks for every idle worker."""
        async with self._link_lock:
            await self._set_server_locked(endpoint, epoch)

    async def _set_server_locked(self, endpoint: str | None, epoch: int) -> None:
        old, self.server = self.server, None
        if old is not None:
            await old.close()
        self.server_epoch = epoch
        if endpoint is None:
            return
        link = DealerLink(
            self.ctx, self.node_id, endpoint, self._on_server_push, "manager->server"
        )
        link.epoch = self.epoch
        self.server = link
        body = {"site": self.site, "running": self._running()}
        try:
            reply = await link.call("manager_hello", body, timeout=5.0)
        except (FarmUnavailable, RemoteError) as exc:
            if link is not self.server:
                return  # replaced by a newer server while greeting this one
            logger.warning("server at %s did not greet: %s", endpoint, exc)
        else:
            await self._stop_stale(reply.get("stale", []))
        logger.info(
            "manager of site %s uses server %s (epoch %d)", self.site, endpoint, epoch
        )
        for slot in self.workers.values():
            if slot.attempt_id is None and not slot.lost:
                await self._want_task(slot)

    def _running(self) -> list[dict[str, str]]:
        return [
            {"worker_id": worker_id, "attempt_id": slot.attempt_id}
            for worker_id, slot in self.workers.items()
            if slot.attempt_id is not None and not slot.lost
        ]

    async def _report_running_loop(self) -> None:
        """Report the attempts that run here, and stop those the server calls stale.

        The report also keeps the server from requeueing attempts whose workers
        cannot reach this manager for a while, up to the silence limit.
        """
        while True:
            await asyncio.sleep(REPORT_RUNNING_EVERY)
            await self._report_running(self._running())

    async def _report_running(self, running: list[dict[str, str]]) -> None:
        link = self.server
        if link is None or not running:
            return
        try:
            reply = await link.call(
                "attempts_running", {"running": running}, timeout=5.0
            )
        except (FarmUnavailable, RemoteError) as exc:
            logger.info("report of running attempts failed: %s", exc)
            return
        await self._stop_stale(reply.get("stale", []))

    async def _stop_stale(self, stale: list[str]) -> None:
        """Have workers stop attempts that the server no longer counts on."""
        for attempt_id in stale:
            slot = self._slot_of(attempt_id, None)
            if slot is None:
                continue
            logger.warning(
                "attempt %s of worker %s is stale: stopping it",
                attempt_id,
                slot.worker["worker_id"],
            )
            await self.endpoint.send(
                slot.identity,
                "task_cancel",
                {"attempt_id": attempt_id, "reason": "stale"},
            )

    async def handle(
        self, identity: bytes, message: Message
    ) -> dict[str, Any] | Reply | None:
        """Dispatch one message from a worker."""
        body = message.body
        op = message.op
        if op == "worker_hello":
            return await self._on_hello(identity, body)
        if op == "blob_get":
            return await self._on_blob_get(body)
        worker_id = body.get("worker_id")
        slot = self._slot_of(body.get("attempt_id"), worker_id)
        if slot is not None:
            slot.last_seen = time.monotonic()
            slot.identity = identity
        if op == "worker_heartbeat":
            if slot is None:
                # A worker this manager gave up on (too long silent) is back:
                # have it introduce itself again instead of idling forever.
                logger.info(
                    "worker %s is back: asking it to say hello again", worker_id
                )
                await self.endpoint.send(
                    identity, "worker_reset", {"worker_id": worker_id}
                )
            return None
        if op == "worker_leaving":
            if slot is not None and not slot.lost:
                await self._lose(body["worker_id"], slot, "its node is stopping")
            return None
        if op in ("task_progress", "task_log"):
            await self._to_server(op, body)
            return None
        return await self._on_result(op, body, slot)

    def _slot_of(
        self, attempt_id: str | None, worker_id: str | None
    ) -> WorkerSlot | None:
        if worker_id is not None:
            return self.workers.get(worker_id)
        for slot in self.workers.values():
            if attempt_id is not None and slot.attempt_id == attempt_id:
                return slot
        return None

    async def _on_hello(self, identity: bytes, body: dict[str, Any]) -> dict[str, Any]:
        worker = body["worker"]
        worker_id = worker["worker_id"]
        running = body["running"]
        slot = WorkerSlot(
            worker, identity, time.monotonic(), running[0] if running else None
        )
        self.workers[worker_id] = slot
        interrupted = body.get("interrupted", [])
        logger.info(
            "worker %s connected to manager of %s (running %s, interrupted %s)",
            worker_id,
            self.site,
            running,
            interrupted,
        )
        if interrupted:
            await self._to_server(
                "attempts_lost",
                {
                    "worker_id": worker_id,
                    "attempt_ids": interrupted,
                    "reason": "its worker restarted",
                },
            )
        if slot.attempt_id is None:
            await self._want_task(slot)
        else:
            self.background.spawn(
                self._report_running(
                    [{"worker_id": worker_id, "attempt_id": slot.attempt_id}]
                ),
                "report-running",
            )
        return {"epoch": self.epoch}

    async def _want_task(self, slot: WorkerSlot) -> None:
        await self._to_server("want_task", {"worker": slot.worker})

    async def _to_server(self, op: str, body: dict[str, Any]) -> None:
        if self.server is None:
            logger.debug("no server yet: %s not sent", op)
            return
        await self.server.send(op, body)

    async def _on_result(
        self, op: str, body: dict[str, Any], slot: WorkerSlot | None
    ) -> dict[str, Any]:
        status = {"task_done": "completed", "task_failed": "failed"}.get(op, "canceled")
        attempt_id = body["attempt_id"]
        wants_more = slot is not None and not slot.lost
        if slot is not None and slot.attempt_id == attempt_id:
            slot.attempt_id = None
        request = {
            "attempt_id": attempt_id,
            "status": status,
            "outputs": body.get("outputs", []),
            "error": body.get("error", ""),
            "worker": slot.worker if wants_more and slot is not None else None,
        }
        if self.server is None:
            raise RemoteError("unavailable", "the farm has no server right now", None)
        try:
            result: dict[str, Any] = await self.server.call(
                "task_result", request, timeout=RESULT_TIMEOUT
            )
        except FarmUnavailable as exc:
            raise RemoteError("unavailable", str(exc), None) from exc
        return result

    async def _on_server_push(self, identity: bytes, message: Message) -> None:
        if message.epoch is not None and message.epoch < self.server_epoch:
            logger.warning(
                "dropped %s from stale server epoch %s (current %d)",
                message.op,
                message.epoch,
                self.server_epoch,
            )
            return
        if message.op == "assign":
            await self._on_assign(message.body["assignment"])
        elif message.op == "cancel_attempt":
            await self._on_cancel(message.body)
        else:
            logger.warning("unexpected %s from the server", message.op)

    async def _on_assign(self, assignment: dict[str, Any]) -> None:
        worker_id = assignment["worker_id"]
        slot = self.workers.get(worker_id)
        if slot is None or slot.lost:
            logger.warning(
                "attempt %s for unknown worker %s: reporting it lost",
                assignment["attempt_id"],
                worker_id,
            )
            await self._to_server(
                "worker_lost", {"worker_id": worker_id, "reason": "gone"}
            )
            return
        if slot.attempt_id is not None and slot.attempt_id != assignment["attempt_id"]:
            logger.warning(
                "attempt %s for worker %s, which runs %s: handing it back",
                assignment["attempt_id"],
                worker_id,
                slot.attempt_id,
            )
            await self._to_server(
                "attempts_lost",
                {
                    "worker_id": worker_id,
                    "attempt_ids": [assignment["attempt_id"]],
                    "reason": "its worker was busy",
                },
            )
            return
        slot.attempt_id = assignment["attempt_id"]
        sent = await self.endpoint.send(
            slot.identity, "task_assign", {"assignment": assignment}
        )
        if not sent:
            await self._lose(worker_id, slot, "unreachable")

    async def _on_cancel(self, body: dict[str, Any]) -> None:
        slot = self.workers.get(body["worker_id"])
        if slot is None:
            logger.warning(
                "cancel of attempt %s: worker %s unknown",
                body["attempt_id"],
                body["worker_id"],
            )
            return
        await self.endpoint.send(
            slot.identity, "task_cancel", {"attempt_id": body["attempt_id"]}
        )

    async def _watch_workers(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.silent_after / 4))
            now = time.monotonic()
            for worker_id, slot in list(self.workers.items()):
                if not slot.lost and now - slot.last_seen > self.silent_after:
                    await self._lose(
                        worker_id, slot, f"silent for {now - slot.last_seen:.1f} s"
                    )

    async def _lose(self, worker_id: str, slot: WorkerSlot, reason: str) -> None:
        logger.warning("worker %s lost: %s", worker_id, reason)
        slot.lost = True
        del self.workers[worker_id]
        await self._to_server(
            "worker_lost", {"worker_id": worker_id, "reason": reason[:200]}
        )

    async def _on_blob_get(self, body: dict[str, Any]) -> Reply:
        sha256 = body["sha256"]
        submitter = body.get("submitter")
        if not self.blobs.has(sha256):
            await self._fetch_blob(sha256, submitter)
        size = self.blobs.size(sha256)
        data = self.blobs.read_chunk(sha256, body["offset"], body["length"])
        return Reply("blob_data", {"size": size, "data": data})

    async def _fetch_blob(self, sha256: str, submitter: str | None) -> None:
        fetch = self.fetches.get(sha256)
        if fetch is None:
            fetch = BlobFetch()
            self.fetches[sha256] = fetch
            self.background.spawn(self._copy_blob(sha256, submitter, fetch), "blob")
        await fetch.done.wait()
        if fetch.error is not None:
            self.fetches.pop(sha256, None)
            raise BlobError(fetch.error)

    async def _copy_blob(
        self, sha256: str, submitter: str | None, fetch: BlobFetch
    ) -> None:
        try:
            endpoints = self.node_endpoint_of(submitter)
            await fetch_blob(self.ctx, self.node_id, endpoints, self.blobs, sha256)
        except (BlobError, FarmUnavailable, RemoteError) as exc:
            fetch.error = f"cannot fetch blob {sha256}: {exc}"
            logger.warning("%s", fetch.error)
        finally:
            fetch.done.set()


async def fetch_blob(
    ctx: zmq.asyncio.Context,
    node_id: str,
    endpoints: list[str],
    blobs: BlobStore,
    sha256: str,
    extra: dict[str, Any] | None = None,
) -> None:
    """Copy a blob in chunks from the first endpoint that has it, verifying its hash."""
    errors: list[str] = []
    for endpoint in endpoints:
        link = DealerLink(ctx, node_id, endpoint, name="blob-fetch")
        try:
            await _copy_from(link, blobs, sha256, extra or {})
            return
        except (BlobError, FarmUnavailable, RemoteError) as exc:
            errors.append(f"{endpoint}: {exc}")
        finally:
            await link.close()
    raise BlobError(
        f"blob {sha256} not available: " + "; ".join(errors or ["no source"])
    )


async def _copy_from(
    link: DealerLink, blobs: BlobStore, sha256: str, extra: dict[str, Any]
) -> None:
    writer = None
    offset = 0
    try:
        while True:
            body = {"sha256": sha256, "offset": offset, "length": CHUNK_SIZE, **extra}
            message = await link.call_message("blob_get", body, timeout=30.0)
            size = message.body["size"]
            data = message.body["data"]
            if writer is None:
                writer = blobs.begin(sha256, size)
            if not data and offset < size:
                raise BlobError(f"blob {sha256}: empty chunk at {offset} of {size}")
            writer.write(offset, data)
            offset += len(data)
            if offset >= size:
                break
        writer.finish()
        writer = None
    finally:
        if writer is not None:
            writer.abort()
