"""The worker: runs assigned tasks in render slots and reports to its site's manager.

Every attempt has a record in an outbox on disk (flamenco_p2p/roles/outbox.py) from
its start until the manager acknowledges its result. A result therefore survives
manager changes, a submitting node that is down for a while, and a restart of this
node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from flamenco_p2p.background import BackgroundTasks
from flamenco_p2p.blobs import CHUNK_SIZE, BlobStore
from flamenco_p2p.errors import BlobError, FarmUnavailable, RenderError
from flamenco_p2p.jobs.manifest import JobFile, parse_manifest
from flamenco_p2p.protocol.messages import Message
from flamenco_p2p.render.controller import (
    FrameOutput,
    RenderBackend,
    RenderEvent,
    RenderProcess,
    RenderRequest,
)
from flamenco_p2p.roles.manager import fetch_blob
from flamenco_p2p.roles.outbox import (
    DELIVERING,
    Outbox,
    OutboxRecord,
    PendingReport,
    attempt_key,
)
from flamenco_p2p.transport import DealerLink, RemoteError

logger = logging.getLogger(__name__)

WORK_ERRORS = (RenderError, BlobError, FarmUnavailable, RemoteError, OSError)
LOG_BATCH = 50
PROGRESS_EVERY = 0.5
# Blender log lines kept per attempt until a manager takes them; the oldest go first.
LOG_LINES_PER_ATTEMPT = 1000
# Attempts whose unsent log lines are kept; the oldest attempt's lines go first.
MAX_LOGGED_ATTEMPTS = 64
# The worker_hello schema's limit on the "interrupted" list.
MAX_INTERRUPTED_PER_HELLO = 64
HELLO_TIMEOUT = 5.0
# Seconds to wait for the manager's acknowledgement of one report. The manager
# itself waits up to 10 s (RESULT_TIMEOUT) for the server.
REPORT_TIMEOUT = 15.0
REPORT_BACKOFF_MAX = 5.0
# Seconds a report keeps being retried while the server returns "not_found",
# because a server that took over after a partition may not have merged it yet.
UNKNOWN_ATTEMPT_PATIENCE = 120.0
OUTPUT_PUT_TIMEOUT = 30.0
DELIVERY_BACKOFF_MAX = 10.0
FIRST_BACKOFF = 0.25
# A result that waits longer than this (in seconds) is logged again at WARNING.
WAIT_WARNING_EVERY = 60.0
# output_put error codes after which the same file may be accepted later.
RETRY_DELIVERY_CODES = frozenset({"unavailable", "busy"})
# The task_cancel reason of an attempt that is no longer the task's current one.
STALE_REASON = "stale"


@dataclass(slots=True)
class RunningTask:
    """The attempt one slot is working on."""

    assignment: dict[str, Any]
    task: asyncio.Task[None]
    work: asyncio.Task[list[dict[str, Any]]]
    canceled: bool = False
    # Set by a stale cancel: the result is dropped instead of reported.
    stale: bool = False


@dataclass(slots=True)
class Slot:
    """One render slot: a worker id and its warm render process."""

    worker: dict[str, Any]
    process: RenderProcess
    running: RunningTask | None = None
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
        *,
        outbox_dir: Path | None = None,
        unknown_attempt_patience: float = UNKNOWN_ATTEMPT_PATIENCE,
    ) -> None:
        """Create the agent; outbox_dir defaults to ``outbox`` next to scratch."""
        self.ctx = ctx
        self.node_id = node_id
        self.blobs = blobs
        self.scratch = scratch
        self.node_endpoint_of = node_endpoint_of
        self.heartbeat_interval = heartbeat_interval
        self.unknown_attempt_patience = unknown_attempt_patience
        self.outbox = Outbox(outbox_dir or scratch.parent / "outbox")
        self.slots = {
            w["worker_id"]: Slot(w, RenderProcess(backend, scratch / f"slot-{i}"))
            for i, w in enumerate(workers)
        }
        self.manager: DealerLink | None = None
        self.manager_epoch = 0
        # Whether the current manager responded to the last request sent to it.
        self._manager_ok = False
        # Set and replaced at every manager change, which wakes waiting reports.
        self._manager_changed = asyncio.Event()
        self._link_lock = asyncio.Lock()
        self._log_lock = asyncio.Lock()
        self._heartbeat: asyncio.Task[None] | None = None
        self.background = BackgroundTasks("worker")
        # Reports on their way to the manager, by attempt id.
        self.reports: dict[str, asyncio.Task[None]] = {}
        # Attempts found running in the outbox at start, by worker id, until a
        # manager acknowledges a hello that names them.
        self.interrupted: dict[str, list[str]] = {}
        self.log_lines: dict[str, deque[str]] = {}
        self._closing = False

    async def start(self) -> None:
        """Load the outbox and start the heartbeat loop.

        Reports saved before a restart are sent once a manager is set, and
        attempts that were running are announced in the next worker_hello.
        """
        await self._recover()
        self._heartbeat = asyncio.create_task(self._beat(), name="worker-heartbeat")

    async def close(self) -> None:
        """Stop render processes and drop the manager link, keeping the outbox.

        Saved reports and kept outputs stay on disk for the next start, and the
        records of running attempts make them count as interrupted then.
        """
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
            running = slot.running
            if running is not None:
                running.work.cancel()
                running.task.cancel()
                for task in (running.work, running.task):
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            await slot.process.close()
        await self.background.cancel_all()
        self.reports.clear()
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
        self._manager_ok = False
        if old is not None:
            await old.close()
        self.manager_epoch = epoch
        if endpoint is None:
            self._signal_manager_change()
            return
        link = DealerLink(
            self.ctx, self.node_id, endpoint, self._on_push, "worker->manager"
        )
        self.manager = link
        logger.info("worker uses manager %s (epoch %d)", endpoint, epoch)
        for slot in self.slots.values():
            await self._hello(slot)
        # Waiting reports go out after the hellos, so that the manager has registered
        # their workers and requests their next tasks from the server.
        self._signal_manager_change()
        await self._flush_logs()

    def _signal_manager_change(self) -> None:
        self._manager_changed.set()
        self._manager_changed = asyncio.Event()

    def _mark_reachable(self, link: DealerLink, reachable: bool) -> None:
        if link is self.manager:
            self._manager_ok = reachable

    async def _hello(self, slot: Slot) -> None:
        """Introduce one slot to the manager, with its running and interrupted attempts.

        Interrupted attempts are forgotten once the manager acknowledges the hello
        that names them. A hello names at most MAX_INTERRUPTED_PER_HELLO of them,
        so a longer list takes several hellos.
        """
        link = self.manager
        if link is None:
            return
        while True:
            running = [slot.running.assignment["attempt_id"]] if slot.running else []
            pending = self.interrupted.get(slot.worker_id, [])
            interrupted = pending[:MAX_INTERRUPTED_PER_HELLO]
            body: dict[str, Any] = {
                "worker": slot.worker,
                "slots": 1,
                "running": running,
            }
            if interrupted:
                # Sent only when the list is not empty, so that a manager
                # without the field still accepts this worker's hellos.
                body["interrupted"] = interrupted
            try:
                await link.call("worker_hello", body, timeout=HELLO_TIMEOUT)
            except (FarmUnavailable, RemoteError) as exc:
                if isinstance(exc, FarmUnavailable):
                    self._mark_reachable(link, False)
                elif interrupted and exc.code == "invalid":
                    # A manager from before the field rejects it as unknown. It
                    # cannot requeue them anyway, so the slot introduces itself
                    # without them instead of never.
                    logger.warning(
                        "manager %s rejected the interrupted attempts %s of worker"
                        " %s (%s): forgetting them",
                        link.endpoint,
                        ", ".join(interrupted),
                        slot.worker_id,
                        exc,
                    )
                    await self._forget_interrupted(slot.worker_id, pending)
                    continue
                logger.warning(
                    "manager %s did not accept worker %s: %s",
                    link.endpoint,
                    slot.worker_id,
                    exc,
                )
                return
            self._mark_reachable(link, True)
            if not interrupted:
                return
            logger.info(
                "worker %s reported to manager %s that attempts %s were interrupted",
                slot.worker_id,
                link.endpoint,
                ", ".join(interrupted),
            )
            await self._forget_interrupted(slot.worker_id, interrupted)
            if not self.interrupted.get(slot.worker_id):
                return

    async def _forget_interrupted(self, worker_id: str, attempt_ids: list[str]) -> None:
        done = set(attempt_ids)
        remaining = [a for a in self.interrupted.get(worker_id, []) if a not in done]
        if remaining:
            self.interrupted[worker_id] = remaining
        else:
            self.interrupted.pop(worker_id, None)
        for attempt_id in attempt_ids:
            await self._remove_record(attempt_id)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            link = self.manager
            if link is None:
                continue
            for slot in self.slots.values():
                with contextlib.suppress(Exception):
                    await link.send("worker_heartbeat", {"worker_id": slot.worker_id})
            await self._flush_logs()

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
            await self._on_cancel(
                message.body["attempt_id"], message.body.get("reason")
            )
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
            failure = PendingReport(
                "task_failed",
                {"attempt_id": assignment["attempt_id"], "error": "worker busy"},
            )
            self._start_report(assignment["attempt_id"], failure, durable=False)
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

    async def _on_cancel(self, attempt_id: str, reason: str | None) -> None:
        """Stop an attempt; a stale one ends without a report."""
        stale = reason == STALE_REASON
        for slot in self.slots.values():
            running = slot.running
            if running is None or running.assignment["attempt_id"] != attempt_id:
                continue
            if stale:
                logger.warning(
                    "worker %s stops attempt %s and drops its result: the manager"
                    " reports the attempt stale",
                    slot.worker_id,
                    attempt_id,
                )
                running.stale = True
            else:
                logger.info("worker %s cancels attempt %s", slot.worker_id, attempt_id)
            running.canceled = True
            await slot.process.cancel()
            running.work.cancel()
            return
        report = self.reports.get(attempt_id)
        if report is not None:
            if stale:
                logger.warning(
                    "dropped the unsent result of attempt %s: the manager reports"
                    " the attempt stale",
                    attempt_id,
                )
                report.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await report
                await self._remove_record(attempt_id)
                for idle in self.slots.values():
                    if idle.running is None:
                        self.background.spawn(self._hello(idle), "hello")
            else:
                logger.info(
                    "cancel of attempt %s: its result is already being reported",
                    attempt_id,
                )
            return
        logger.info("cancel of attempt %s: not running here", attempt_id)
        if not stale:
            canceled = PendingReport("task_canceled", {"attempt_id": attempt_id})
            self._start_report(attempt_id, canceled, durable=False)

    async def _work(
        self, slot: Slot, assignment: dict[str, Any]
    ) -> list[dict[str, Any]]:
        await asyncio.to_thread(self.outbox.start, assignment)
        if assignment["job_type"] == "sleep":
            return await self._run_sleep(assignment)
        return await self._run_render(slot, assignment)

    async def _run(
        self,
        slot: Slot,
        assignment: dict[str, Any],
        work: asyncio.Task[list[dict[str, Any]]],
    ) -> None:
        """Wait for an attempt's work, save its report, then start sending it."""
        attempt_id = assignment["attempt_id"]
        await asyncio.wait({work})
        running = slot.running
        if self._closing:
            _retrieve(work)
            return  # the outbox keeps the attempt for the next start
        if running is not None and running.stale:
            _retrieve(work)
            slot.running = None
            logger.warning(
                "worker %s dropped the result of stale attempt %s",
                slot.worker_id,
                attempt_id,
            )
            await self._remove_record(attempt_id)
            # No result follows, so a new hello lets the manager know the slot is free.
            self.background.spawn(self._hello(slot), "hello")
            return
        op, body = self._outcome(slot, attempt_id, work)
        # The worker id lets a manager that took over find the slot.
        body["worker_id"] = slot.worker_id
        try:
            await asyncio.to_thread(self.outbox.save_report, assignment, op, body)
        except OSError as exc:
            logger.error(
                "worker %s cannot save the %s of attempt %s in the outbox (%s): it"
                " is kept in memory only, so a restart before the manager"
                " acknowledges it loses it",
                slot.worker_id,
                op,
                attempt_id,
                exc,
            )
        slot.running = None
        await self._flush_logs()
        self._start_report(attempt_id, PendingReport(op, body))

    def _outcome(
        self, slot: Slot, attempt_id: str, work: asyncio.Task[list[dict[str, Any]]]
    ) -> tuple[str, dict[str, Any]]:
        """Return the report operation and body for an attempt's finished work."""
        op = "task_done"
        body: dict[str, Any] = {"attempt_id": attempt_id}
        running = slot.running
        canceled = running is not None and running.canceled
        if work.cancelled():
            op = "task_canceled"
        elif canceled:
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
        if canceled:
            return "task_canceled", {"attempt_id": attempt_id}
        return op, body

    async def _run_sleep(self, assignment: dict[str, Any]) -> list[dict[str, Any]]:
        payload = assignment["payload"]
        duration = float(payload.get("duration", 0.0))
        attempt_id = assignment["attempt_id"]
        # Sleep tasks stand in for renders in tests and demos, so they log too.
        self._buffer_log(attempt_id, f"sleeping {duration:g} s on {self.node_id}")
        if duration > 0:
            await asyncio.sleep(duration)
        self._buffer_log(attempt_id, f"slept {duration:g} s")
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
        out_dir = self._render_dir(assignment["attempt_id"])
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
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
        # A cancel during the move leaves part of out_dir behind; the next
        # start() clears the whole render folder.
        outbox_frames = await asyncio.to_thread(
            self.outbox.keep_outputs, assignment, frames
        )
        shutil.rmtree(out_dir, ignore_errors=True)
        return await self._deliver(assignment, outbox_frames)

    def _render_dir(self, attempt_id: str) -> Path:
        # The attempt id comes from the network, so the folder is named by its hash.
        return self.scratch / "out" / attempt_key(attempt_id)

    async def _ensure_blend(self, assignment: dict[str, Any]) -> Path:
        settings = assignment["settings"]
        sha256 = settings["blend_sha256"]
        await self._fetch(assignment, sha256)
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
        manifest = settings.get("manifest_sha256")
        if manifest:
            await self._ensure_files(assignment, manifest, folder, target.name)
        return target

    async def _ensure_files(
        self, assignment: dict[str, Any], manifest: str, folder: Path, blend: str
    ) -> None:
        """Lay out the job's other files (textures, libraries) around the blend."""
        done = folder / f".files-{manifest[:16]}"
        if done.exists():
            return
        await self._fetch(assignment, manifest)
        data = await asyncio.to_thread(self.blobs.path(manifest).read_bytes)
        files = parse_manifest(data, blend)
        for job_file in files:
            await self._fetch(assignment, job_file.sha256)
        await asyncio.to_thread(_place_files, self.blobs, folder, files)
        done.touch()
        logger.info(
            "job %s: %d files placed beside %s", assignment["job_id"], len(files), blend
        )

    async def _fetch(self, assignment: dict[str, Any], sha256: str) -> None:
        if self.blobs.has(sha256):
            return
        link = self.manager
        if link is None:
            raise FarmUnavailable(f"no manager to fetch blob {sha256} from")
        extra = {"submitter": assignment["submitter_node"]}
        await fetch_blob(
            self.ctx, self.node_id, [link.endpoint], self.blobs, sha256, extra
        )

    async def _deliver(
        self, assignment: dict[str, Any], frames: list[FrameOutput]
    ) -> list[dict[str, Any]]:
        """Send rendered files to the submitting node, retrying until it takes them.

        An unknown or unreachable submitter, or one that replies "unavailable" or
        "busy", is retried with backoff for as long as it takes, because the files
        are kept in the outbox meanwhile. Any other error reply fails the attempt.
        Returns the outputs for the task_done report.
        """
        # NOTE: a submitting node that never returns keeps this slot busy until
        # the job is canceled; a warning is logged every WAIT_WARNING_EVERY s.
        attempt_id = assignment["attempt_id"]
        submitter = assignment["submitter_node"]
        delivered: set[str] = set()
        started = time.monotonic()
        next_warning = started + WAIT_WARNING_EVERY
        tries = 0
        while True:
            tries += 1
            try:
                await self._deliver_once(assignment, frames, delivered)
                break
            except FarmUnavailable as exc:
                now = time.monotonic()
                if tries == 1:
                    logger.warning(
                        "attempt %s: outputs not delivered to node %s (%s); they"
                        " stay in the outbox and delivery is retried",
                        attempt_id,
                        submitter,
                        exc,
                    )
                elif now >= next_warning:
                    logger.warning(
                        "attempt %s: outputs still not delivered to node %s after"
                        " %.0f s and %d tries: %s",
                        attempt_id,
                        submitter,
                        now - started,
                        tries,
                        exc,
                    )
                    next_warning = now + WAIT_WARNING_EVERY
                else:
                    logger.debug(
                        "attempt %s: delivery try %d: %s", attempt_id, tries, exc
                    )
            await asyncio.sleep(_backoff(tries, DELIVERY_BACKOFF_MAX))
        if tries > 1:
            logger.info(
                "attempt %s: outputs delivered to node %s after %d tries",
                attempt_id,
                submitter,
                tries,
            )
        return [
            {
                "frame": frame.frame,
                "name": Path(frame.path).name,
                "sha256": frame.sha256,
                "size": frame.size,
            }
            for frame in frames
        ]

    async def _deliver_once(
        self,
        assignment: dict[str, Any],
        frames: list[FrameOutput],
        delivered: set[str],
    ) -> None:
        """Send the files not yet in delivered; FarmUnavailable means retry later."""
        submitter = assignment["submitter_node"]
        endpoints = self.node_endpoint_of(submitter)
        if not endpoints:
            raise FarmUnavailable(f"submitting node {submitter} is unknown")
        link = DealerLink(self.ctx, self.node_id, endpoints[0], name="output-put")
        try:
            for frame in frames:
                name = Path(frame.path).name
                if name in delivered:
                    continue
                try:
                    await _send_output(link, assignment, frame)
                except RemoteError as exc:
                    if exc.code not in RETRY_DELIVERY_CODES:
                        raise
                    raise FarmUnavailable(
                        f"submitting node {submitter} returned error {exc.code}: {exc}"
                    ) from exc
                delivered.add(name)
        finally:
            await link.close()

    def _on_event(self, slot: Slot, event: RenderEvent) -> None:
        if slot.running is None:
            return
        attempt_id = slot.running.assignment["attempt_id"]
        if event.kind == "log":
            self._buffer_log(attempt_id, event.text[:2000])
            return
        if event.kind != "progress":
            return
        now = time.monotonic()
        if now - slot.last_progress < PROGRESS_EVERY or self.manager is None:
            return
        slot.last_progress = now
        body = {
            "attempt_id": attempt_id,
            "fraction": min(max(event.fraction or 0.0, 0.0), 1.0),
            "frame": event.frame,
            "text": event.text[:400],
        }
        self.background.spawn(self.manager.send("task_progress", body), "progress")

    def _buffer_log(self, attempt_id: str, line: str) -> None:
        lines = self.log_lines.get(attempt_id)
        if lines is None:
            if len(self.log_lines) >= MAX_LOGGED_ATTEMPTS:
                oldest = next(iter(self.log_lines))
                dropped = self.log_lines.pop(oldest)
                logger.warning(
                    "dropped %d unsent log lines of attempt %s: more than %d"
                    " attempts wait for a manager",
                    len(dropped),
                    oldest,
                    MAX_LOGGED_ATTEMPTS,
                )
            lines = deque(maxlen=LOG_LINES_PER_ATTEMPT)
            self.log_lines[attempt_id] = lines
        lines.append(line)

    async def _flush_logs(self) -> None:
        """Send the buffered Blender log lines while the manager responds to requests.

        Lines stay buffered while there is no manager, or while its last request
        timed out.
        """
        # NOTE: a manager that vanished after its last response is noticed only
        # when a request to it times out. Lines sent before that are lost.
        async with self._log_lock:
            for attempt_id in list(self.log_lines):
                link = self.manager
                if link is None or not self._manager_ok:
                    return
                lines = self.log_lines[attempt_id]
                while lines:
                    batch = [lines.popleft() for _ in range(min(LOG_BATCH, len(lines)))]
                    body = {"attempt_id": attempt_id, "lines": batch}
                    try:
                        await link.send("task_log", body)
                    except zmq.ZMQError as exc:
                        lines.extendleft(reversed(batch))
                        logger.debug("log lines of %s not sent: %s", attempt_id, exc)
                        return
                if self.log_lines.get(attempt_id) is lines:
                    del self.log_lines[attempt_id]

    def _start_report(
        self, attempt_id: str, report: PendingReport, durable: bool = True
    ) -> None:
        """Send a report in the background; a durable one has an outbox record."""
        task = self.background.spawn(
            self._report(attempt_id, report, durable), report.op
        )
        if not durable:
            return
        self.reports[attempt_id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self.reports.get(attempt_id) is done:
                del self.reports[attempt_id]

        task.add_done_callback(forget)

    async def _report(
        self, attempt_id: str, report: PendingReport, durable: bool
    ) -> None:
        """Send a result to the manager until it is acknowledged or rejected for good.

        Tries go to whichever manager is current. Without a manager, on a timeout
        and on "unavailable" the report waits as long as it takes. On "not_found"
        it waits for unknown_attempt_patience seconds. Any other code, such as
        "stale_attempt", drops it. The outbox record goes once the report is
        acknowledged or dropped.
        """
        op, body = report.op, report.body
        started = time.monotonic()
        next_warning = started + WAIT_WARNING_EVERY
        unknown_since: float | None = None
        tries = 0
        warned = False
        last_error = "no manager is set"
        while True:
            changed = self._manager_changed
            now = time.monotonic()
            if now >= next_warning:
                logger.warning(
                    "%s of attempt %s still not acknowledged after %.0f s and %d"
                    " tries: %s",
                    op,
                    attempt_id,
                    now - started,
                    tries,
                    last_error,
                )
                next_warning = now + WAIT_WARNING_EVERY
            link = self.manager
            if link is None:
                await _wait_event(changed, REPORT_BACKOFF_MAX)
                continue
            tries += 1
            try:
                await link.call(op, body, timeout=REPORT_TIMEOUT)
            except FarmUnavailable as exc:
                self._mark_reachable(link, False)
                last_error = str(exc)
            except RemoteError as exc:
                last_error = f"{exc.code}: {exc}"
                if exc.code == "not_found":
                    if unknown_since is None:
                        unknown_since = now
                    if now - unknown_since >= self.unknown_attempt_patience:
                        logger.error(
                            "dropped %s of attempt %s: the server has not found the"
                            " attempt for %.0f s: %s",
                            op,
                            attempt_id,
                            now - unknown_since,
                            exc,
                        )
                        break
                elif exc.code != "unavailable":
                    logger.warning(
                        "dropped %s of attempt %s: the manager rejected it (%s): %s",
                        op,
                        attempt_id,
                        exc.code,
                        exc,
                    )
                    break
            else:
                self._mark_reachable(link, True)
                logger.debug("%s of attempt %s acknowledged", op, attempt_id)
                break
            if not warned:
                warned = True
                logger.warning(
                    "%s of attempt %s not acknowledged (%s); retrying",
                    op,
                    attempt_id,
                    last_error,
                )
            await _wait_event(changed, _backoff(tries, REPORT_BACKOFF_MAX))
        if durable:
            await self._remove_record(attempt_id)
        await self._flush_logs()

    async def _remove_record(self, attempt_id: str) -> None:
        try:
            await asyncio.to_thread(self.outbox.remove, attempt_id)
        except OSError as exc:
            logger.error(
                "cannot remove the outbox record of attempt %s: %s", attempt_id, exc
            )

    async def _recover(self) -> None:
        """Resume the work that the outbox contains from before this start.

        Saved reports are sent again, attempts that were delivering resume their
        delivery in their slot, and attempts that were running count as
        interrupted.
        """
        await asyncio.to_thread(shutil.rmtree, self.scratch / "out", ignore_errors=True)
        records = await asyncio.to_thread(self.outbox.load)
        for record in records:
            if record.report is not None:
                logger.info(
                    "outbox: %s of attempt %s from before this start will be sent",
                    record.report.op,
                    record.attempt_id,
                )
                report = PendingReport(
                    record.report.op,
                    {**record.report.body, "worker_id": record.worker_id},
                )
                self._start_report(record.attempt_id, report)
                continue
            slot = self.slots.get(record.worker_id)
            if record.state == DELIVERING and slot is not None and not slot.running:
                logger.info(
                    "outbox: worker %s resumes delivering %d files of attempt %s",
                    slot.worker_id,
                    len(record.outputs),
                    record.attempt_id,
                )
                self._resume_delivery(slot, record)
                continue
            await self._mark_interrupted(record, slot)

    def _resume_delivery(self, slot: Slot, record: OutboxRecord) -> None:
        assignment = record.assignment
        work = asyncio.create_task(self._deliver(assignment, list(record.outputs)))
        task = asyncio.create_task(self._run(slot, assignment, work))
        slot.running = RunningTask(assignment, task, work)

    async def _mark_interrupted(self, record: OutboxRecord, slot: Slot | None) -> None:
        # An attempt of a slot that this node no longer has is announced by its
        # first slot: the manager requeues by attempt id.
        if slot is None:
            slot = next(iter(self.slots.values()), None)
        if slot is None:
            logger.warning(
                "outbox: attempt %s was interrupted, but this node has no worker"
                " slot to announce it: record removed",
                record.attempt_id,
            )
            await self._remove_record(record.attempt_id)
            return
        logger.warning(
            "outbox: attempt %s of worker %s was interrupted by the last stop; the"
            " next worker_hello announces it",
            record.attempt_id,
            record.worker_id,
        )
        self.interrupted.setdefault(slot.worker_id, []).append(record.attempt_id)


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
            await _put_chunk(link, body)
            offset += len(data)
            if last:
                return


async def _put_chunk(link: DealerLink, body: dict[str, Any]) -> None:
    try:
        await link.call("output_put", body, timeout=OUTPUT_PUT_TIMEOUT)
    except RemoteError as exc:
        if body["offset"] != 0 or exc.code != "invalid" or exc.field != "data":
            raise
        # A try that broke off mid-file leaves its transfer open on the submitting
        # node, which rejects a new start at offset 0 and closes that transfer, so
        # the second start succeeds. A file that is really invalid fails again.
        await link.call("output_put", body, timeout=OUTPUT_PUT_TIMEOUT)


def _backoff(tries: int, cap: float) -> float:
    """Return the seconds to wait after a failed try: doubling from FIRST_BACKOFF."""
    return float(min(cap, FIRST_BACKOFF * 2 ** min(tries - 1, 16)))


async def _wait_event(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


def _retrieve(work: asyncio.Task[Any]) -> None:
    """Mark a finished task's exception as seen, so asyncio does not log it as lost."""
    if not work.cancelled():
        work.exception()


def _required_device(worker: dict[str, Any], overrides: dict[str, Any]) -> str | None:
    """Return the Cycles device type the render must find, or None for any.

    A GPU render asks for the first GPU type this worker advertises, so a worker
    whose GPU vanished fails the task instead of rendering on the CPU.
    """
    if overrides.get("device") != "GPU":
        return None
    gpu_types = worker["capabilities"]["gpu_types"]
    return str(gpu_types[0]) if gpu_types else "CUDA"


def _place_files(blobs: BlobStore, folder: Path, files: list[JobFile]) -> None:
    """Copy each file from the blob store to its path under folder."""
    root = folder.resolve()
    for job_file in files:
        target = (folder / job_file.path).resolve()
        # The manifest's paths are checked already; this guards against a link
        # left in the folder by an earlier job file.
        if not target.is_relative_to(root):
            raise RenderError(f"job file {job_file.path!r} would land outside {folder}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        shutil.copyfile(blobs.path(job_file.sha256), tmp)
        tmp.replace(target)


def _safe_blend_name(name: str) -> str:
    from flamenco_p2p.outputs import safe_path_component

    safe = safe_path_component(name)
    return safe if safe.endswith(".blend") else safe + ".blend"


def _frames_text(frames: list[int]) -> str:
    from flamenco_p2p.frames import format_frames

    return format_frames(list(frames))
