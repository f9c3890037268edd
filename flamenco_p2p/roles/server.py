"""The server role: owns the farm state and leases tasks to site managers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq.asyncio

from flamenco_p2p.errors import (
    InvalidInput,
    InvalidTransition,
    NotFound,
    StaleAttempt,
    StateError,
)
from flamenco_p2p.jobs.spec import JobSpec
from flamenco_p2p.protocol.messages import Message
from flamenco_p2p.roles.farm_queries import QUERY_OPS, FarmQueries
from flamenco_p2p.roles.replication import LogSource
from flamenco_p2p.roles.wire import (
    assignment_to_dict,
    job_view_to_dict,
    worker_from_dict,
)
from flamenco_p2p.store import replica
from flamenco_p2p.store.farmstore import Assignment, FarmStore, WorkerInfo
from flamenco_p2p.transport import RemoteError, RouterEndpoint

logger = logging.getLogger(__name__)

SERVER_OPS = frozenset(
    {
        "manager_hello",
        "want_task",
        "withdraw_worker",
        "worker_lost",
        "task_result",
        "task_progress",
        "task_log",
        "submit_job",
        "get_job",
        "list_jobs",
        "cancel_job",
        "get_task_log",
        "attempts_running",
        "attempts_lost",
        "repl_pull",
        "repl_snapshot",
        "repl_merge",
    }
    | QUERY_OPS
)
SWEEP_EVERY = 2.0
MAX_PARKED = 4096


@dataclass(slots=True)
class ParkedRequest:
    """A manager's standing request for a task for one worker."""

    identity: bytes
    worker: WorkerInfo


class ServerRole:
    """Serves the server port while this node holds the server role."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        node_id: str,
        epoch: int,
        store: FarmStore,
        manager_epoch: Callable[[str], int],
        log: LogSource,
        scratch: Path,
        unclaimed_after: float,
    ) -> None:
        self.node_id = node_id
        self.epoch = epoch
        self.store = store
        self.manager_epoch = manager_epoch
        self.log = log
        self.scratch = scratch
        self.unclaimed_after = unclaimed_after
        self.endpoint = RouterEndpoint(ctx, node_id, "server", self.handle, SERVER_OPS)
        self.endpoint.epoch = epoch
        self.manager_sites: dict[bytes, str] = {}
        self.parked: dict[str, ParkedRequest] = {}
        self.worker_manager: dict[str, bytes] = {}
        self.claimed: dict[str, float] = {}
        self._lease_lock = asyncio.Lock()
        self._passes_requested = 0
        self._passes_covered = 0
        self._sweeper: asyncio.Task[None] | None = None
        self.queries = FarmQueries(
            store, log, epoch, self._send_cancel, self._serve_parked
        )

    async def start(self, address: str, port: int) -> None:
        """Start writing the change log under this epoch and bind the server port."""
        await replica.set_writer(self.store, self.epoch, self.node_id)
        await self.log.start()
        self.store.on_commit = self.log.notify
        self.endpoint.bind(address, port)
        self._sweeper = asyncio.create_task(self._sweep(), name="server-sweep")
        logger.info(
            "server role active, epoch %d, database %s at change %d",
            self.epoch,
            self.store.path,
            await self.log.head(),
        )

    async def close(self) -> None:
        """Unbind and close the store; idempotent."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.endpoint.close()
        self.store.on_commit = None
        await self.log.close()
        await self.store.close()
        logger.info("server role stopped, epoch %d", self.epoch)

    async def handle(self, identity: bytes, message: Message) -> dict[str, Any] | None:
        """Dispatch one request from a manager or a node."""
        self._check_epoch(identity, message)
        if message.op == "repl_pull":
            body = message.body
            return await self.log.pull(
                message.sender,
                body["after"],
                body["epoch"],
                body["holder"],
                body["wait"],
            )
        if message.op in QUERY_OPS:
            return await self.queries.handle(message.op, message.body)
        handler = getattr(self, "_on_" + message.op)
        result: dict[str, Any] | None = await handler(identity, message.body)
        return result

    # Attempts that the managers vouch for ------------------------------------

    def _claim(self, attempt_ids: list[str]) -> None:
        now = time.monotonic()
        for attempt_id in attempt_ids:
            self.claimed[attempt_id] = now

    async def _sweep(self) -> None:
        """Requeue running attempts that no manager has reported for a while.

        Managers report their workers' attempts every few seconds. An attempt that
        no manager reports ran on a worker that died while the manager role (or
        this server role) changed hands, so no manager will ever declare it lost.
        """
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                await self._sweep_once()
                # wait_replicated reads the head only while a standby is online;
                # this keeps the freshness that elections compare up to date.
                await self.log.head()
            except StateError as exc:
                logger.warning("sweep of unreported attempts failed: %s", exc)

    async def _sweep_once(self) -> None:
        now = time.monotonic()
        running = {a.attempt_id for a in await self.store.active_attempts()}
        for attempt_id in list(self.claimed):
            if attempt_id not in running:
                del self.claimed[attempt_id]
        silent = []
        for attempt_id in running:
            seen = self.claimed.setdefault(attempt_id, now)
            if now - seen > self.unclaimed_after:
                silent.append(attempt_id)
        if silent:
            reason = f"no manager reported it for {self.unclaimed_after:.0f} s"
            await self.store.lose_attempts(silent, reason)
            for attempt_id in silent:
                self.claimed.pop(attempt_id, None)
            await self._serve_parked()

    async def _on_attempts_running(
        self, identity: bytes, body: dict[str, Any]
    ) -> dict[str, Any]:
        reported = {
            entry["attempt_id"]: entry["worker_id"] for entry in body["running"]
        }
        running, stale = await self.store.running_attempts(list(reported))
        for attempt_id, worker_id in running.items():
            if reported[attempt_id] == worker_id:
                self.worker_manager[worker_id] = identity
        self._claim(list(running))
        if stale:
            logger.info("attempts %s are no longer current: stopping them", stale)
        return {"stale": stale}

    async def _on_attempts_lost(self, identity: bytes, body: dict[str, Any]) -> None:
        requeued = await self.store.lose_attempts(body["attempt_ids"], body["reason"])
        logger.info(
            "worker %s lost attempts %s (%s): requeued %s",
            body["worker_id"],
            body["attempt_ids"],
            body["reason"],
            requeued,
        )
        await self._serve_parked()

    # Replication ---------------------------------------------------------------

    async def _on_repl_snapshot(
        self, identity: bytes, body: dict[str, Any]
    ) -> dict[str, Any]:
        return await self.log.make_snapshot(self.scratch)

    async def _on_repl_merge(
        self, identity: bytes, body: dict[str, Any]
    ) -> dict[str, Any]:
        result = await replica.merge_job(self.store, body)
        if result.canceled:
            for assignment in await self.store.active_attempts():
                if assignment.job_id == result.job_id:
                    await self._send_cancel(assignment)
        await self.log.wait_replicated()
        await self._serve_parked()
        return {
            "job_id": result.job_id,
            "added": result.job_added,
            "completed": result.tasks_completed,
            "adopted": result.tasks_adopted,
            "canceled": result.canceled,
        }

    def _check_epoch(self, identity: bytes, message: Message) -> None:
        site = self.manager_sites.get(identity)
        if site is None or message.epoch is None:
            return
        known = self.manager_epoch(site)
        if message.epoch < known:
            raise RemoteError(
                "stale_epoch",
                f"manager epoch {message.epoch} of site {site!r} is older than {known}",
                "epoch",
            )

    async def _on_manager_hello(
        self, identity: bytes, body: dict[str, Any]
    ) -> dict[str, Any]:
        self.manager_sites[identity] = body["site"]
        running = body.get("running", [])
        logger.info(
            "manager of site %s connected, %d attempts running",
            body["site"],
            len(running),
        )
        result = await self._on_attempts_running(identity, {"running": running})
        return {"epoch": self.epoch, "stale": result["stale"]}

    async def _on_want_task(self, identity: bytes, body: dict[str, Any]) -> None:
        worker = worker_from_dict(body["worker"])
        await self.store.upsert_worker(worker, "awake")
        self._park(ParkedRequest(identity, worker))
        await self._serve_parked([worker.worker_id])

    def _park(self, request: ParkedRequest) -> None:
        worker_id = request.worker.worker_id
        if worker_id not in self.parked and len(self.parked) >= MAX_PARKED:
            oldest = next(iter(self.parked))
            del self.parked[oldest]
            logger.warning(
                "%d workers wait for tasks: dropped the oldest request, of %s",
                MAX_PARKED,
                oldest,
            )
        self.parked[worker_id] = request

    async def _on_withdraw_worker(self, identity: bytes, body: dict[str, Any]) -> None:
        self.parked.pop(body["worker_id"], None)

    async def _on_worker_lost(self, identity: bytes, body: dict[str, Any]) -> None:
        worker_id = body["worker_id"]
        self.parked.pop(worker_id, None)
        requeued = await self.store.requeue_worker(worker_id, body["reason"])
        logger.warning(
            "worker %s lost (%s): requeued tasks %s",
            worker_id,
            body["reason"],
            requeued,
        )
        await self._serve_parked()

    async def _on_task_result(
        self, identity: bytes, body: dict[str, Any]
    ) -> dict[str, Any]:
        attempt_id = body["attempt_id"]
        status = body["status"]
        self.claimed.pop(attempt_id, None)
        try:
            task = await self._record_result(attempt_id, status, body)
        finally:
            # The worker is free whatever became of its result, a rejected one
            # included, so it gets its next task at once.
            await self._park_reporter(identity, body)
        # The worker deletes the result once it is acknowledged, so a standby must
        # have it first: then a takeover cannot lose it.
        await self.log.wait_replicated()
        # The store logs each completion at INFO already; this line adds the status.
        logger.debug(
            "attempt %s %s: task %s is %s", attempt_id, status, task.id, task.status
        )
        return {"task_id": task.id, "status": str(task.status)}

    async def _park_reporter(self, identity: bytes, body: dict[str, Any]) -> None:
        if body["worker"] is not None:
            worker = worker_from_dict(body["worker"])
            self._park(ParkedRequest(identity, worker))
            await self._serve_parked([worker.worker_id])
        await self._serve_parked()

    async def _record_result(
        self, attempt_id: str, status: str, body: dict[str, Any]
    ) -> Any:
        try:
            if status == "completed":
                task = await self.store.complete_attempt(attempt_id, body["outputs"])
            elif status == "failed":
                task = await self.store.fail_attempt(attempt_id, body["error"])
            elif status == "canceled":
                task = await self.store.cancel_attempt_done(attempt_id)
            else:
                raise InvalidInput(f"task_result status {status!r} is not known")
        except StaleAttempt as exc:
            logger.warning("rejected result of attempt %s: %s", attempt_id, exc)
            raise RemoteError("stale_attempt", str(exc), "attempt_id") from exc
        except NotFound as exc:
            raise RemoteError("not_found", str(exc), "attempt_id") from exc
        return task

    async def _on_task_progress(self, identity: bytes, body: dict[str, Any]) -> None:
        self._claim([body["attempt_id"]])
        try:
            await self.store.record_progress(body["attempt_id"], body["fraction"])
        except StateError as exc:
            # Progress may trail the result of its attempt; it is only advisory.
            logger.debug("progress of attempt %s dropped: %s", body["attempt_id"], exc)

    async def _on_task_log(self, identity: bytes, body: dict[str, Any]) -> None:
        try:
            await self.store.add_log(body["attempt_id"], body["lines"])
        except StateError as exc:
            logger.warning(
                "log lines of attempt %s dropped: %s", body["attempt_id"], exc
            )

    async def _on_submit_job(
        self, identity: bytes, body: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            spec = JobSpec.from_dict(body["job"])
            job_id = body.get("job_id")
            if job_id is not None and await self._stored_before(job_id, spec):
                return {"job_id": job_id}
            job_id = await self.store.submit_job(spec, job_id)
        except InvalidInput as exc:
            raise RemoteError("invalid", str(exc), None) from exc
        logger.info("job %s submitted: %s (%s)", job_id, spec.name, spec.job_type)
        await self.log.wait_replicated()
        await self._serve_parked()
        return {"job_id": job_id}

    async def _stored_before(self, job_id: str, spec: JobSpec) -> bool:
        """Return True for a resubmission, after a reply was lost, of a stored job."""
        try:
            stored = await self.store.get_job(job_id)
        except NotFound:
            return False
        if stored.submitter_node != spec.submitter_node or stored.name != spec.name:
            raise InvalidInput(f"job id {job_id} is already taken by another job")
        logger.info("job %s was sent again by node %s", job_id, spec.submitter_node)
        await self.log.wait_replicated()
        return True

    async def _on_get_job(
        self, identity: bytes, body: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            job = await self.store.get_job(body["job_id"])
            tasks = await self.store.list_tasks(body["job_id"])
        except NotFound as exc:
            raise RemoteError("not_found", str(exc), "job_id") from exc
        return {"job": job_view_to_dict(job), "tasks": [_task_dict(t) for t in tasks]}

    async def _on_list_jobs(
        self, identity: bytes, body: dict[str, Any]
    ) -> dict[str, Any]:
        jobs = await self.store.list_jobs(body["limit"])
        workers = await self.store.list_workers()
        return {"jobs": [job_view_to_dict(j) for j in jobs], "workers": workers}

    async def _on_cancel_job(
        self, identity: bytes, body: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            active = await self.store.cancel_job(body["job_id"])
        except NotFound as exc:
            raise RemoteError("not_found", str(exc), "job_id") from exc
        except InvalidTransition as exc:
            raise RemoteError(
                "conflict",
                f"job {body['job_id']} is already {exc.current}; only jobs that are"
                " queued, active or paused can be canceled",
                "job_id",
            ) from exc
        for assignment in active:
            await self._send_cancel(assignment)
        await self.log.wait_replicated()
        logger.info(
            "job %s cancel requested: %d tasks running", body["job_id"], len(active)
        )
        return {"stopping": len(active)}

    async def _on_get_task_log(
        self, identity: bytes, body: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            lines = await self.store.task_log(body["task_id"])
        except NotFound as exc:
            raise RemoteError("not_found", str(exc), "task_id") from exc
        return {"lines": lines}

    async def _send_cancel(self, assignment: Assignment) -> None:
        identity = self.worker_manager.get(assignment.worker_id)
        if identity is None:
            logger.warning(
                "cannot cancel attempt %s: no manager known for worker %s",
                assignment.attempt_id,
                assignment.worker_id,
            )
            return
        body = {"attempt_id": assignment.attempt_id, "worker_id": assignment.worker_id}
        await self.endpoint.send(identity, "cancel_attempt", body)

    async def _serve_parked(self, worker_ids: list[str] | None = None) -> None:
        """Lease tasks to parked workers until tasks or workers run out.

        One lock serialises leasing, because handlers run concurrently and two of
        them must never lease for the same parked request. A pass over every
        parked request (worker_ids None) is skipped when another one started
        after it was requested, because that pass saw the same requests and the
        same tasks. Each store call here waits for the store lock while holding
        the lease lock, so a pass makes as few of them as it can.
        """
        if worker_ids is None:
            self._passes_requested += 1
            ticket = self._passes_requested
        async with self._lease_lock:
            if worker_ids is None:
                if self._passes_covered >= ticket:
                    return
                self._passes_covered = self._passes_requested
                worker_ids = list(self.parked)
            waiting = [w for w in worker_ids if w in self.parked]
            if not waiting:
                return
            # After a coordinator change, a request can arrive before the result
            # of the worker's last attempt: it waits for that result. One worker
            # needs no filter, because its lease checks that in the same query.
            if len(waiting) > 1:
                waiting = await self.store.idle_workers(waiting)
            for worker_id in waiting:
                request = self.parked.pop(worker_id, None)
                if request is None:
                    continue
                # The worker may have started an attempt since idle_workers.
                assignment = await self.store.lease_task(
                    request.worker, unless_busy=True
                )
                if assignment is None:
                    # A request that arrived meanwhile is newer; keep that one.
                    self.parked.setdefault(worker_id, request)
                    continue
                await self._send_assignment(request, assignment)

    async def _send_assignment(
        self, request: ParkedRequest, assignment: Assignment
    ) -> None:
        worker_id = request.worker.worker_id
        self.worker_manager[worker_id] = request.identity
        self._claim([assignment.attempt_id])
        body = {"assignment": assignment_to_dict(assignment)}
        if not await self.endpoint.send(request.identity, "assign", body):
            logger.warning(
                "manager of worker %s is gone: requeueing attempt %s",
                worker_id,
                assignment.attempt_id,
            )
            await self.store.requeue_worker(worker_id, "manager unreachable")


def _task_dict(task: Any) -> dict[str, Any]:
    from flamenco_p2p.roles.wire import task_view_to_dict

    return task_view_to_dict(task)
