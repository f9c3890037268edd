"""The worker: runs assigned tasks in render slots and reports to its site's manager."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq.asyncio

from flamenco_p2p.background import BackgroundTasks
from flamenco_p2p.blobs import CHUNK_SIZE, BlobStore
from flamenco_p2p.errors import BlobError, FarmUnavailable, RenderError
from flamenco_p2p.protocol.messages import Message
from flamenco_p2p.render.controller import (
    FrameOutput,
    RenderBackend,
    RenderEvent,
    RenderProcess,
    RenderRequest,
)
from flamenco_p2p.roles.manager import fetch_blob
from flamenco_p2p.transport import DealerLink, RemoteError

logger = logging.getLogger(__name__)

# NOTE: results wait in memory only; a worker restarted meanwhile loses them and
# the server renders those tasks again once it declares the worker lost.
RESULT_PATIENCE = 300.0
WORK_ERRORS = (RenderError, BlobError, FarmUnavailable, RemoteError, OSError)
LOG_BATCH = 50
PROGRESS_EVERY = 0.5


@dataclass(slots=True)
class RunningTask:
    """The attempt one slot is working on."""

    assignment: dict[str, Any]
    task: asyncio.Task[None]
    work: asyncio.Task[list[dict[str, Any]]]
    canceled: bool = False


@dataclass(slots=True)
class Slot:
    """One render slot: a worker id and its warm render process."""

    worker: dict[str, Any]
    process: RenderProcess
    running: RunningTask | None = None
    log_lines: list[str] = field(default_factory=list)
    last_progress: float = 0.0

    @property
    def worker_id(self) -> str:
        """The slot's worker id."""
        worker_id: str = self.worker["worker_id"]
        return worker_id


class WorkerAgent:
    """All render slots of one node, connected to the site's current manager."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        node_id: str,
        workers: list[dict[str, Any]],
        backend: RenderBackend,
        blobs: BlobStore,
        scratch: Path,
        node_endpoint_of: Callable[[str], list[str]],
        heartbeat_interval: float,
    ) -> None:
        self.ctx = ctx
        self.node_id = node_id
        self.blobs = blobs
        self.scratch = scratch
        self.node_endpoint_of = node_endpoint_of
        self.heartbeat_interval = heartbeat_interval
        self.slots = {
            w["worker_id"]: Slot(w, RenderProcess(backend, scratch / f"slot-{i}"))
            for i, w in enumerate(workers)
        }
        self.manager: DealerLink | None = None
        self.manager_epoch = 0
        self._link_lock = asyncio.Lock()
        self._heartbeat: asyncio.Task[None] | None = None
        self.background = BackgroundTasks("worker")
        self._closing = False

    async def start(self) -> None:
        """Start the heartbeat loop; tasks arrive once a manager is set."""
        self._heartbeat = asyncio.create_task(self._beat(), name="worker-heartbeat")

    async def close(self) -> None:
        """Cancel running tasks, stop render processes, drop the manager link."""
        self._closing = True
        if self.manager is not None:
            # The manager requeues this node's tasks at once instead of waiting
            # for its heartbeats to stop.
            for slot in self.slots.values():
                self.manager.send_nowait(
                    "worker_leaving", {"worker_id": slot.worker_id}
                )
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        for slot in self.slots.values():
            if slot.running is not None:
                slot.running.work.cancel()
                slot.running.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await slot.running.task
            await slot.process.close()
        await self.background.cancel_all()
        if self.manager is not None:
            await self.manager.close()
            self.manager = None

    @property
    def manager_endpoint(self) -> str | None:
        """The manager endpoint the slots report to, or None."""
        return self.manager.endpoint if self.manager is not None else None

    async def set_manager(self, endpoint: str | None, epoch: int) -> None:
        """Connect to the site's new manager and introduce every slot."""
        async with self._link_lock:
            await self._set_manager_locked(endpoint, epoch)

    async def _set_manager_locked(self, endpoint: str | None, epoch: int) -> None:
        old, self.manager = self.manager, None
        if old is not None:
            await old.close()
        self.manager_epoch = epoch
        if endpoint is None:
            return
        link = DealerLink(
            self.ctx, self.node_id, endpoint, self._on_push, "worker->manager"
        )
        self.manager = link
        logger.info("worker uses manager %s (epoch %d)", endpoint, epoch)
        for slot in self.slots.values():
            await self._hello(slot)

    async def _hello(self, slot: Slot) -> None:
        """Introduce one slot to the manager, with the attempt it is running."""
        link = self.manager
        if link is None:
            return
        running = [slot.running.assignment["attempt_id"]] if slot.running else []
        body = {"worker": slot.worker, "slots": 1, "running": running}
        try:
            await link.call("worker_hello", body, timeout=5.0)
        except (FarmUnavailable, RemoteError) as exc:
            logger.warning(
                "manager %s did not accept worker %s: %s",
                link.endpoint,
                slot.worker_id,
                exc,
            )

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            link = self.manager
            if link is None:
                continue
            for slot in self.slots.values():
                with contextlib.suppress(Exception):
                    await link.send("worker_heartbeat", {"worker_id": slot.worker_id})
                await self._flush_log(slot)

    async def _on_push(self, identity: bytes, message: Message) -> None:
        if message.epoch is not None and message.epoch < self.manager_epoch:
            logger.warning(
                "rejected %s from stale manager epoch %d (current %d)",
                message.op,
                message.epoch,
                self.manager_epoch,
            )
            return
        if message.op == "task_assign":
            self._on_assign(message.body["assignment"])
        elif message.op == "task_cancel":
            await self._on_cancel(message.body["attempt_id"])
        elif message.op == "worker_reset":
            slot = self.slots.get(message.body["worker_id"])
            if slot is not None:
                self.background.spawn(self._hello(slot), "hello")
        else:
            logger.warning("unexpected %s from the manager", message.op)

    def _on_assign(self, assignment: dict[str, Any]) -> None:
        slot = self.slots.get(assignment["worker_id"])
        if slot is None or slot.running is not None:
            logger.warning(
                "attempt %s for busy or unknown worker %s: failing it",
                assignment["attempt_id"],
                assignment["worker_id"],
            )
            self.background.spawn(
                self._report(
                    None,
                    "task_failed",
                    {"attempt_id": assignment["attempt_id"], "error": "worker busy"},
                ),
                "report-busy",
            )
            return
        logger.info(
            "worker %s starts attempt %s (job %s, task %s, frames %s)",
            slot.worker_id,
            assignment["attempt_id"],
            assignment["job_id"],
            assignment["task_id"],
            _frames_text(assignment["frames"]),
        )
        # The work runs in its own task, so that a cancel stops the render but
        # never the report that follows it.
        work = asyncio.create_task(self._work(slot, assignment))
        task = asyncio.create_task(self._run(slot, assignment, work))
        slot.running = RunningTask(assignment, task, work)

    async def _on_cancel(self, attempt_id: str) -> None:
        for slot in self.slots.values():
            running = slot.running
            if running is None or running.assignment["attempt_id"] != attempt_id:
                continue
            logger.info("worker %s cancels attempt %s", slot.worker_id, attempt_id)
            running.canceled = True
            await slot.process.cancel()
            running.work.cancel()
            return
        logger.info("cancel of attempt %s: not running here", attempt_id)
        await self._report(None, "task_canceled", {"attempt_id": attempt_id})

    async def _work(
        self, slot: Slot, assignment: dict[str, Any]
    ) -> list[dict[str, Any]]:
        if assignment["job_type"] == "sleep":
            return await self._run_sleep(assignment)
        return await self._run_render(slot, assignment)

    async def _run(
        self,
        slot: Slot,
        assignment: dict[str, Any],
        work: asyncio.Task[list[dict[str, Any]]],
    ) -> None:
        attempt_id = assignment["attempt_id"]
        op = "task_done"
        body: dict[str, Any] = {"attempt_id": attempt_id}
        await asyncio.wait({work})
        if self._closing:
            return
        if work.cancelled():
            op = "task_canceled"
        elif slot.running is not None and slot.running.canceled:
            work.exception()  # retrieved, so asyncio does not report it as lost
            logger.info("worker %s attempt %s canceled", slot.worker_id, attempt_id)
        elif isinstance(error := work.exception(), WORK_ERRORS):
            logger.warning(
                "worker %s attempt %s failed: %s", slot.worker_id, attempt_id, error
            )
            op = "task_failed"
            body["error"] = str(error)[:4000]
        elif error is not None:
            logger.error(
                "worker %s attempt %s failed unexpectedly",
                slot.worker_id,
                attempt_id,
                exc_info=error,
            )
            op = "task_failed"
            body["error"] = f"worker error: {type(error).__name__}: {error}"[:4000]
        else:
            body["outputs"] = work.result()
        running = slot.running
        if running is not None and running.canceled:
            op = "task_canceled"
            body = {"attempt_id": attempt_id}
        await self._flush_log(slot, attempt_id)
        slot.running = None
        await self._report(slot, op, body)

    async def _run_sleep(self, assignment: dict[str, Any]) -> list[dict[str, Any]]:
        payload = assignment["payload"]
        duration = float(payload.get("duration", 0.0))
        if duration > 0:
            await asyncio.sleep(duration)
        if payload.get("fail"):
            raise RenderError(
                f"sleep task {assignment['task_id']} failed because its job lists"
                " it in fail_tasks"
            )
        return []

    async def _run_render(
        self, slot: Slot, assignment: dict[str, Any]
    ) -> list[dict[str, Any]]:
        settings = assignment["settings"]
        blend = await self._ensure_blend(assignment)
        out_dir = self.scratch / "out" / assignment["attempt_id"]
        out_dir.mkdir(parents=True, exist_ok=True)
        overrides = dict(settings.get("overrides") or {})
        require = _required_device(slot.worker, overrides)
        request = RenderRequest(
            blend_path=str(blend),
            frames=tuple(assignment["frames"]),
            output_dir=str(out_dir),
            output_name=settings.get("output_name", ""),
            overrides=overrides,
            require_device=require,
        )
        try:
            frames = await slot.process.render(
                request, lambda e: self._on_event(slot, e)
            )
            return await self._deliver(assignment, frames)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    async def _ensure_blend(self, assignment: dict[str, Any]) -> Path:
        settings = assignment["settings"]
        sha256 = settings["blend_sha256"]
        if not self.blobs.has(sha256):
            link = self.manager
            if link is None:
                raise FarmUnavailable("no manager to fetch the blend file from")
            extra = {"submitter": assignment["submitter_node"]}
            await fetch_blob(
                self.ctx, self.node_id, [link.endpoint], self.blobs, sha256, extra
            )
        # Blender picks the output format and resolves "//" against the file's own
        # folder, so each job gets a folder with the file under its original name.
        folder = self.scratch / "jobs" / assignment["job_id"]
        folder.mkdir(parents=True, exist_ok=True)
        target: Path = folder / _safe_blend_name(
            settings.get("blend_name", "scene.blend")
        )
        if not target.exists():
            tmp = target.with_name(target.name + ".tmp")
            shutil.copyfile(self.blobs.path(sha256), tmp)
            tmp.replace(target)
        return target

    async def _deliver(
        self, assignment: dict[str, Any], frames: list[FrameOutput]
    ) -> list[dict[str, Any]]:
        endpoints = self.node_endpoint_of(assignment["submitter_node"])
        if not endpoints:
            raise FarmUnavailable(
                f"submitting node {assignment['submitter_node']} is unknown"
            )
        link = DealerLink(self.ctx, self.node_id, endpoints[0], name="output-put")
        try:
            outputs = []
            for frame in frames:
                await _send_output(link, assignment, frame)
                outputs.append(
                    {
                        "frame": frame.frame,
                        "name": Path(frame.path).name,
                        "sha256": frame.sha256,
                        "size": frame.size,
                    }
                )
            return outputs
        finally:
            await link.close()

    def _on_event(self, slot: Slot, event: RenderEvent) -> None:
        if event.kind == "log":
            slot.log_lines.append(event.text[:2000])
            if len(slot.log_lines) > 1000:
                del slot.log_lines[:500]
            return
        if event.kind != "progress" or slot.running is None:
            return
        now = time.monotonic()
        if now - slot.last_progress < PROGRESS_EVERY or self.manager is None:
            return
        slot.last_progress = now
        body = {
            "attempt_id": slot.running.assignment["attempt_id"],
            "fraction": min(max(event.fraction or 0.0, 0.0), 1.0),
            "frame": event.frame,
            "text": event.text[:400],
        }
        self.background.spawn(self.manager.send("task_progress", body), "progress")

    async def _flush_log(self, slot: Slot, attempt_id: str | None = None) -> None:
        """Send the slot's buffered Blender log lines for its current attempt."""
        if attempt_id is None and slot.running is not None:
            attempt_id = slot.running.assignment["attempt_id"]
        if attempt_id is None or self.manager is None:
            slot.log_lines.clear()
            return
        while slot.log_lines:
            batch = slot.log_lines[:LOG_BATCH]
            del slot.log_lines[:LOG_BATCH]
            await self.manager.send(
                "task_log", {"attempt_id": attempt_id, "lines": batch}
            )

    async def _report(self, slot: Slot | None, op: str, body: dict[str, Any]) -> None:
        """Send a result to the manager, retrying while no manager responds.

        A result is the product of a render, so the worker keeps trying for
        RESULT_PATIENCE seconds, through manager changes.
        """
        deadline = time.monotonic() + RESULT_PATIENCE
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            link = self.manager
            if link is None:
                await asyncio.sleep(1.0)
                continue
            try:
                await link.call(op, body, timeout=15.0)
                return
            except RemoteError as exc:
                logger.warning(
                    "%s of attempt %s rejected: %s", op, body["attempt_id"], exc
                )
                return
            except FarmUnavailable as exc:
                logger.warning(
                    "%s of attempt %s not acknowledged (try %d): %s",
                    op,
                    body["attempt_id"],
                    attempt,
                    exc,
                )
                await asyncio.sleep(min(attempt, 5))
        logger.error("gave up reporting %s of attempt %s", op, body["attempt_id"])


async def _send_output(
    link: DealerLink, assignment: dict[str, Any], frame: FrameOutput
) -> None:
    name = Path(frame.path).name
    offset = 0
    with Path(frame.path).open("rb") as handle:  # noqa: ASYNC230 - reads go to a thread
        while True:
            data = await asyncio.to_thread(handle.read, CHUNK_SIZE)
            last = offset + len(data) >= frame.size
            body = {
                "job_id": assignment["job_id"],
                "attempt_id": assignment["attempt_id"],
                "name": name,
                "offset": offset,
                "data": data,
                "last": last,
                "sha256": frame.sha256,
                "size": frame.size,
            }
            await link.call("output_put", body, timeout=30.0)
            offset += len(data)
            if last:
                return


def _required_device(worker: dict[str, Any], overrides: dict[str, Any]) -> str | None:
    """Return the Cycles device type the render must find, or None for any.

    A GPU render asks for the first GPU type this worker advertises, so a worker
    whose GPU vanished fails the task instead of rendering on the CPU.
    """
    if overrides.get("device") != "GPU":
        return None
    gpu_types = worker["capabilities"]["gpu_types"]
    return str(gpu_types[0]) if gpu_types else "CUDA"


def _safe_blend_name(name: str) -> str:
    from flamenco_p2p.outputs import safe_path_component

    safe = safe_path_component(name)
    return safe if safe.endswith(".blend") else safe + ".blend"


def _frames_text(frames: list[int]) -> str:
    from flamenco_p2p.frames import format_frames

    return format_frames(list(frames))
