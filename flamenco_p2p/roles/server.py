"""The server role: owns the farm state and leases tasks to site managers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
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
from flamenco_p2p.roles.wire import (
    assignment_to_dict,
    job_view_to_dict,
    worker_from_dict,
)
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
    }
)


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
    ) -> None:
        self.node_id = node_id
        self.epoch = epoch
        self.store = store
        self.manager_epoch = manager_epoch
        self.endpoint = RouterEndpoint(ctx, node_id, "server", self.handle, SERVER_OPS)
        self.endpoint.epoch = epoch
        self.manager_sites: dict[bytes, str] = {}
        self.parked: dict[str, ParkedRequest] = {}
        self.worker_manager: dict[str, bytes] = {}
        self._lease_lock = asyncio.Lock()

    def start(self, address: str, port: int) -> None:
        """Bind the server port."""
        self.endpoint.bind(address, port)
        logger.info(
            "server role active, epoch %d, database %s", self.epoch, self.store.path
        )

    async def close(self) -> None:
        """Unbind and close the store; idempotent."""
        await self.endpoint.close()
        await self.store.close()
        logger.info("server role stopped, epoch %d", self.epoch)

    async def handle(self, identity: bytes, message: Message) -> dict[str, Any] | None:
        """Dispatch one request from a manager or a node."""
        self._check_epoch(identity, message)
        handler = getattr(self, "_on_" + message.op)
        result: dict[str, Any] | None = await handler(identity, message.body)
        return result

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
        logger.info("manager of site %s connected", body["site"])
        return {"epoch": self.epoch}

    async def _on_want_task(self, identity: bytes, body: dict[str, Any]) -> None:
        worker = worker_from_dict(body["worker"])
        await self.store.upsert_worker(worker, "awake")
        self.parked[worker.worker_id] = ParkedRequest(identity, worker)
        await self._serve_parked([worker.worker_id])

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
        try:
            task = await self._record_result(attempt_id, status, body)
        finally:
            # The worker is free whatever became of its result, a rejected one
            # included, so it gets its next task at once.
            await self._park_reporter(identity, body)
        # The store logs each completion at INFO already; this line adds the status.
        logger.debug(
            "attempt %s %s: task %s is %s", attempt_id, status, task.id, task.status
        )
        return {"task_id": task.id, "status": str(task.status)}

    async def _park_reporter(self, identity: bytes, body: dict[str, Any]) -> None:
        if body["worker"] is not None:
            worker = worker_from_dict(body["worker"])
            self.parked[worker.worker_id] = ParkedRequest(identity, worker)
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
            job_id = await self.store.submit_job(spec, body.get("job_id"))
        except InvalidInput as exc:
            raise RemoteError("invalid", str(exc), None) from exc
        logger.info("job %s submitted: %s (%s)", job_id, spec.name, spec.job_type)
        await self._serve_parked()
        return {"job_id": job_id}

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
        them must never lease for the same parked request.
        """
        async with self._lease_lock:
            for worker_id in (
                worker_ids if worker_ids is not None else list(self.parked)
            ):
                request = self.parked.pop(worker_id, None)
                if request is None:
                    continue
                assignment = await self.store.lease_task(request.worker)
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
