"""Server requests behind the HTTP API: pages of jobs and tasks, steering, events.

Every node's API forwards these to the server, which answers them from its farm
store. The event feed turns the change log, which replication keeps anyway, into
events that name the jobs, tasks and log lines that changed, so that the nodes
can stream them to browsers without anyone polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from flamenco_p2p.errors import NotFound
from flamenco_p2p.roles.replication import LogSource
from flamenco_p2p.roles.wire import job_view_to_dict, task_view_to_dict
from flamenco_p2p.store import replica
from flamenco_p2p.store.farmstore import Assignment, FarmStore
from flamenco_p2p.transport import RemoteError

logger = logging.getLogger(__name__)

MAX_EVENT_WAIT = 10.0
BULK_TASKS = 200
"""Past this many changed tasks of one job in one batch, one "tasks" event
stands for them all, so that submitting or requeueing a large job does not send
every browser thousands of events."""

QUERY_OPS = frozenset(
    {
        "job_page",
        "task_page",
        "get_task",
        "task_log_lines",
        "farm_summary",
        "job_control",
        "requeue_task",
        "events_pull",
    }
)


class FarmQueries:
    """Answers the server requests of QUERY_OPS."""

    def __init__(
        self,
        store: FarmStore,
        log: LogSource,
        epoch: int,
        send_cancel: Callable[[Assignment], Awaitable[None]],
        offer_tasks: Callable[[], Awaitable[None]],
    ) -> None:
        self.store = store
        self.log = log
        self.epoch = epoch
        self.send_cancel = send_cancel
        self.offer_tasks = offer_tasks

    async def handle(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """Serve one request; NotFound becomes a not_found error naming the id."""
        try:
            result: dict[str, Any] = await getattr(self, "_" + op)(body)
        except NotFound as exc:
            field = "task_id" if "task_id" in body else "job_id"
            raise RemoteError("not_found", str(exc), field) from exc
        return result

    async def _job_page(self, body: dict[str, Any]) -> dict[str, Any]:
        jobs, total = await self.store.job_page(
            body["limit"], body["offset"], body["statuses"], body["query"]
        )
        return {"jobs": [job_view_to_dict(j) for j in jobs], "total": total}

    async def _task_page(self, body: dict[str, Any]) -> dict[str, Any]:
        job = await self.store.get_job(body["job_id"])
        tasks, total = await self.store.task_page(
            body["job_id"], body["limit"], body["offset"], body["statuses"]
        )
        return {
            "job": job_view_to_dict(job),
            "tasks": [task_view_to_dict(t) for t in tasks],
            "total": total,
        }

    async def _get_task(self, body: dict[str, Any]) -> dict[str, Any]:
        task, attempts = await self.store.get_task(body["task_id"])
        return {"task": task_view_to_dict(task), "attempts": attempts}

    async def _task_log_lines(self, body: dict[str, Any]) -> dict[str, Any]:
        lines = await self.store.log_lines(
            body["task_id"],
            attempt_id=body["attempt_id"],
            after=body["after"],
            limit=body["limit"],
            tail=body["tail"],
        )
        return {"lines": lines}

    async def _farm_summary(self, body: dict[str, Any]) -> dict[str, Any]:
        counts = await self.store.farm_counts()
        workers = await self.store.list_workers()
        running = {w["worker_id"]: w for w in await self.store.current_work()}
        for worker in workers:
            worker["current_task"] = running.get(worker["worker_id"])
        return {"counts": counts, "workers": workers, "epoch": self.epoch}

    async def _job_control(self, body: dict[str, Any]) -> dict[str, Any]:
        job_id, action = body["job_id"], body["action"]
        stop: list[Assignment] = []
        if action == "pause":
            stop = await self.store.pause_job(job_id)
        elif action == "resume":
            await self.store.resume_job(job_id)
        elif action == "requeue":
            await self.store.requeue_job(job_id, body.get("scope", "all"))
        elif action == "priority":
            if "priority" not in body:
                raise RemoteError(
                    "invalid", "give the new priority, 0 to 100", "priority"
                )
            await self.store.set_priority(job_id, body["priority"])
        elif action == "delete":
            await self.store.delete_job(job_id)
        else:
            raise RemoteError(
                "invalid",
                f"action is {action!r}; give pause, resume, requeue, priority or"
                " delete",
                "action",
            )
        for assignment in stop:
            await self.send_cancel(assignment)
        await self.log.wait_replicated()
        if action in ("resume", "requeue", "priority"):
            # Workers that asked for work while nothing could run wait parked.
            await self.offer_tasks()
        logger.info("job %s: %s done, %d attempts to stop", job_id, action, len(stop))
        if action == "delete":
            return {"deleted": job_id}
        return {"job": job_view_to_dict(await self.store.get_job(job_id))}

    async def _requeue_task(self, body: dict[str, Any]) -> dict[str, Any]:
        task = await self.store.requeue_task(body["task_id"])
        await self.log.wait_replicated()
        await self.offer_tasks()
        job = await self.store.get_job(task.job_id)
        return {"task": task_view_to_dict(task), "job": job_view_to_dict(job)}

    async def _events_pull(self, body: dict[str, Any]) -> dict[str, Any]:
        """Return the events after change ``after``, waiting up to ``wait`` s.

        ``reset`` tells the caller that it cannot go on from ``after`` (another
        server's log, or entries pruned since), and ``head`` where to go on from.
        """
        after, wait = body["after"], min(body["wait"], MAX_EVENT_WAIT)
        head = await self.log.head()
        oldest = await replica.oldest_seq(self.store)
        if after < 0 or after > head or (after and after < oldest - 1):
            return {"epoch": self.epoch, "head": head, "reset": True, "events": []}
        changes = await replica.changes_after(self.store, after)
        if not changes and wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.log.changed()
            changes = await replica.changes_after(self.store, after)
        events = await self._events_of(changes)
        last = changes[-1].seq if changes else after
        return {"epoch": self.epoch, "head": last, "reset": False, "events": events}

    async def _events_of(self, changes: list[replica.Change]) -> list[dict[str, Any]]:
        touched = _Touched.of(changes)
        job_ids, task_ids, deleted, logs = (
            touched.jobs,
            touched.tasks,
            touched.deleted,
            touched.logs,
        )
        events: list[dict[str, Any]] = []
        per_job: dict[str, list[str]] = {}
        for task_id, job_id in task_ids.items():
            per_job.setdefault(job_id, []).append(task_id)
        single = [
            task_id
            for ids in per_job.values()
            if len(ids) <= BULK_TASKS
            for task_id in ids
        ]
        tasks = await self.store.tasks_by_id(single + [t for t, _a in logs])
        task_jobs = {task.id: task.job_id for task in tasks}
        wanted = set(single)
        events.extend(
            {"type": "task", "data": task_view_to_dict(task)}
            for task in tasks
            if task.id in wanted
        )
        events.extend(
            {"type": "tasks", "data": {"job_id": job_id, "count": len(ids)}}
            for job_id, ids in per_job.items()
            if len(ids) > BULK_TASKS
        )
        for job in await self.store.jobs_by_id(list(job_ids)):
            events.append({"type": "job", "data": job_view_to_dict(job)})
        events.extend({"type": "job_deleted", "data": {"id": i}} for i in deleted)
        for (task_id, attempt_id), lines in logs.items():
            if task_id in task_jobs:
                data = {
                    "job_id": task_jobs[task_id],
                    "task_id": task_id,
                    "attempt_id": attempt_id,
                    "lines": lines,
                }
                events.append({"type": "log", "data": data})
        if touched.workers:
            events.append({"type": "workers", "data": {}})
        return events


@dataclass(slots=True)
class _Touched:
    """What a batch of changes touched: jobs, tasks (with their job), log lines."""

    jobs: dict[str, None] = field(default_factory=dict)
    tasks: dict[str, str] = field(default_factory=dict)
    deleted: dict[str, None] = field(default_factory=dict)
    logs: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    workers: bool = False

    @classmethod
    def of(cls, changes: list[replica.Change]) -> _Touched:
        touched = cls()
        for change in changes:
            key = json.loads(change.key)
            row = json.loads(change.row) if change.row else None
            if change.table == "jobs":
                target = touched.deleted if change.op == "d" else touched.jobs
                target[key[0]] = None
            elif change.table == "workers":
                touched.workers = True
            elif row is not None:
                touched.add_row(change.table, key, row)
        return touched

    def add_row(self, table: str, key: list[Any], row: dict[str, Any]) -> None:
        if table == "tasks":
            self.tasks[key[0]] = row["job_id"]
            self.jobs[row["job_id"]] = None
        elif table == "attempts":
            self.tasks[row["task_id"]] = row["job_id"]
        elif table == "task_logs":
            # The change log keeps REAL columns as SQL literals (text).
            created = float(row["created"])
            line = {"id": row["id"], "created": created, "line": row["line"]}
            self.logs.setdefault((row["task_id"], row["attempt_id"]), []).append(line)
