"""The server role's persistent state: jobs, tasks, attempts, logs and workers.

One FarmStore owns one SQLite connection (through aiosqlite's worker thread) and
serializes its transactions with an asyncio lock, so coroutines never see each
other's half-done changes. Every method that changes state commits before it
returns.

Durability: the database uses WAL with ``synchronous=NORMAL`` by default. A commit
then survives a crash of the process, which is the common failure. A power cut or
kernel crash may lose the last commits, but the database itself stays consistent.
NORMAL is the default because a lost lease or result only makes a task run again,
while FULL costs one fsync per lease. Pass ``synchronous="FULL"`` to fsync every
commit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from flamenco_p2p.errors import InvalidInput, NotFound, StaleAttempt, StateError
from flamenco_p2p.frames import format_frames
from flamenco_p2p.jobs.compiler import TaskSpec, compile_job
from flamenco_p2p.jobs.spec import GPU_TYPES, JobSpec, Requirements
from flamenco_p2p.jobs.status import (
    FINAL_JOB_STATUSES,
    RUNNABLE_JOB_STATUSES,
    RUNNABLE_TASK_STATUSES,
    AttemptStatus,
    JobStatus,
    TaskStatus,
    check_attempt_transition,
    check_job_transition,
    check_task_transition,
)
from flamenco_p2p.store.schema import migrate

logger = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 6
"""Failed attempts of one task, on any workers, after which the task fails."""

DEFAULT_TASK_FAIL_WORKERS = 3
"""Different workers that failed one task after which the task fails."""

DEFAULT_RETRY_SAME_WORKER_AFTER = 60.0
"""Seconds after a task's last failure before a worker that failed it may retry it."""

DEFAULT_BLOCKLIST_THRESHOLD = 3
"""Failed tasks of one job after which the job blocklists the worker that failed."""

DEFAULT_BLOCKLIST_FORGET_AFTER = 600.0
"""Seconds after which a job's blocklist entry expires."""

DEFAULT_JOB_FAIL_RATIO = 0.1
"""Share of a job's tasks whose failure fails the job and cancels its waiting tasks."""

MAX_FAILED_TASKS_NAMED = 10
"""Failed tasks that a job's error names; it counts the others."""

DEFAULT_LOG_LINES_PER_TASK = 1000
"""Log lines kept per task; older lines are deleted."""

MAX_LOG_LINE_CHARS = 4000
"""Longer log lines are cut to this many characters."""

_ANY_GPU_MASK = (1 << len(GPU_TYPES)) - 1
_BLENDER_VERSION_PREFIX = re.compile(r"(\d{1,3})\.(\d{1,3})(?:\.(\d{1,3}))?")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SYNCHRONOUS_MODES = ("NORMAL", "FULL", "EXTRA")

# One statement picks the job and its first runnable task. Jobs sort by priority,
# then by how well the worker's GPU fits (0: a GPU job the worker's GPU matches,
# 1: a CPU job, 2: a GPU-preferring job the worker cannot accelerate), then age.
# Within a job, the walk along tasks_runnable skips the tasks that this worker
# failed, unless the task's last failure ended before :retry_cutoff. The test
# r.failures = 0 comes first so that tasks that never failed need no attempts
# lookup, because SQLite stops at the first true OR term. A job yields no
# row when the worker may take none of its runnable tasks, because the join
# compares t.id with NULL. Blocklist entries created before :blocklist_cutoff
# have expired.
_LEASE_SQL = """
SELECT j.id, j.status, j.job_type, j.settings, j.submitter_node,
       t.id, t.status, t.frames, t.payload
FROM jobs AS j
JOIN tasks AS t ON t.id = (
    SELECT r.id FROM tasks AS r
    WHERE r.job_id = j.id AND r.status IN ('queued', 'soft-failed')
      AND (
          r.failures = 0
          OR NOT EXISTS (
              SELECT 1 FROM attempts AS mine
              WHERE mine.task_id = r.id AND mine.worker_id = :worker_id
                AND mine.status = 'failed'
          )
          OR NOT EXISTS (
              SELECT 1 FROM attempts AS recent
              WHERE recent.task_id = r.id AND recent.status = 'failed'
                AND recent.ended > :retry_cutoff
          )
      )
    ORDER BY r.idx LIMIT 1
)
WHERE j.status IN ('queued', 'active')
  AND (j.gpu_mode != 'require' OR (j.gpu_mask & :gpu_mask) != 0)
  AND (j.min_blender = 0 OR :blender >= j.min_blender)
  AND (j.needs_blender = 0 OR :blender >= 0)
  AND NOT EXISTS (
      SELECT 1 FROM job_blocklist AS b
      WHERE b.job_id = j.id AND b.worker_id = :worker_id
        AND b.created > :blocklist_cutoff
  )
  AND (:unless_busy = 0 OR NOT EXISTS (
      SELECT 1 FROM attempts AS busy JOIN tasks AS bt ON bt.id = busy.task_id
      WHERE busy.worker_id = :worker_id AND busy.status = 'active'
        AND bt.current_attempt = busy.id
  ))
ORDER BY j.priority DESC,
         CASE
             WHEN j.gpu_mode != 'none' AND (j.gpu_mask & :gpu_mask) != 0 THEN 0
             WHEN j.gpu_mode = 'none' THEN 1
             ELSE 2
         END,
         j.created, j.rowid
LIMIT 1
"""

# The WHERE clause repeats the statuses that the lease query saw, so a change by
# another connection in between makes the insert a no-op instead of a double lease.
_START_ATTEMPT_SQL = """
INSERT INTO attempts (id, task_id, job_id, worker_id, node_id, status, started)
SELECT ?, ?, ?, ?, ?, 'active', ?
WHERE EXISTS (SELECT 1 FROM tasks WHERE id = ? AND status = ?)
  AND EXISTS (SELECT 1 FROM jobs WHERE id = ? AND status = ?)
"""
_LEASE_TRIES = 3

_ASSIGNMENT_SQL = """
SELECT a.job_id, a.task_id, a.id, j.job_type, t.frames, t.payload, j.settings,
       a.worker_id, j.submitter_node
FROM attempts AS a
JOIN tasks AS t ON t.id = a.task_id
JOIN jobs AS j ON j.id = a.job_id
"""

_ATTEMPT_STATE_SQL = """
SELECT a.status, a.task_id, a.job_id, a.worker_id, t.status, t.current_attempt,
       t.failures, t.frames, t.name, j.status
FROM attempts AS a
JOIN tasks AS t ON t.id = a.task_id
JOIN jobs AS j ON j.id = a.job_id
WHERE a.id = ?
"""

_TASK_SQL = """
SELECT id, job_id, idx, name, status, frames, current_attempt, worker_id, attempts,
       error, outputs, progress, failures
FROM tasks
"""

_JOB_SQL = """
SELECT id, name, status, priority, job_type, settings, requirements, created,
       updated, frames_total, submitter_node, error
FROM jobs
"""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """Capabilities that a worker reports when it requests work."""

    worker_id: str
    node_id: str
    site: str
    cpu_cores: int
    gpu_types: tuple[str, ...]
    blender_version: str | None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("worker_id", "node_id", "site"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InvalidInput(f"worker {name} is {value!r}; give a non-empty id")
        if not isinstance(self.cpu_cores, int) or self.cpu_cores < 0:
            raise InvalidInput(
                f"worker {self.worker_id} cpu_cores is {self.cpu_cores!r}; "
                "give a count of 0 or more"
            )
        if not all(isinstance(gpu, str) for gpu in self.gpu_types):
            raise InvalidInput(
                f"worker {self.worker_id} gpu_types is {self.gpu_types!r}; "
                "give device type names such as 'CUDA'"
            )
        if not all(isinstance(tag, str) for tag in self.tags):
            raise InvalidInput(
                f"worker {self.worker_id} tags is {self.tags!r}; give strings"
            )
        object.__setattr__(self, "gpu_types", tuple(g.upper() for g in self.gpu_types))
        object.__setattr__(self, "tags", tuple(self.tags))
        if self.blender_version is not None:
            blender_number(self.blender_version)

    @property
    def gpu_mask(self) -> int:
        """Bit mask of the worker's GPU types that jobs can ask for."""
        return gpu_mask(self.gpu_types)


@dataclass(frozen=True, slots=True)
class Assignment:
    """An attempt handed to a worker: everything it needs to run the task."""

    job_id: str
    task_id: str
    attempt_id: str
    job_type: str
    frames: tuple[int, ...]
    payload: dict[str, Any]
    settings: dict[str, Any]
    worker_id: str
    submitter_node: str


@dataclass(frozen=True, slots=True)
class JobView:
    """A stored job; task_counts has every TaskStatus value as a key."""

    id: str
    name: str
    status: JobStatus
    priority: int
    job_type: str
    settings: dict[str, Any]
    requirements: Requirements
    created: float
    updated: float
    task_counts: dict[str, int]
    frames_total: int
    frames_done: int
    submitter_node: str
    error: str | None

    @property
    def type(self) -> str:
        """The job type, under the name the job listing uses."""
        return self.job_type


@dataclass(frozen=True, slots=True)
class TaskView:
    """A stored task.

    attempt_id and worker_id name the running attempt, or the attempt that ended
    the task; they are None while the task waits to run (again). attempts counts
    every lease, including lost ones.
    """

    id: str
    index: int
    name: str
    status: TaskStatus
    frames: tuple[int, ...]
    attempt_id: str | None
    worker_id: str | None
    attempts: int
    error: str | None
    outputs: list[dict[str, Any]]
    job_id: str = ""
    progress: float = 0.0
    failures: int = 0


@dataclass(frozen=True, slots=True)
class _LeaseCandidate:
    job_id: str
    job_status: str
    job_type: str
    settings: str
    submitter_node: str
    task_id: str
    task_status: str
    frames: str
    payload: str


@dataclass(frozen=True, slots=True)
class _AttemptState:
    attempt_id: str
    attempt_status: str
    task_id: str
    job_id: str
    worker_id: str
    task_status: str
    current_attempt: str | None
    failures: int
    frames: tuple[int, ...]
    task_name: str
    job_status: str


@dataclass(slots=True)
class _Options:
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    task_fail_workers: int = DEFAULT_TASK_FAIL_WORKERS
    retry_same_worker_after: float = DEFAULT_RETRY_SAME_WORKER_AFTER
    blocklist_threshold: int = DEFAULT_BLOCKLIST_THRESHOLD
    blocklist_forget_after: float = DEFAULT_BLOCKLIST_FORGET_AFTER
    job_fail_ratio: float = DEFAULT_JOB_FAIL_RATIO
    log_lines_per_task: int = DEFAULT_LOG_LINES_PER_TASK


def gpu_mask(gpu_types: Iterable[str]) -> int:
    """Return one bit per known GPU type in gpu_types; unknown names are ignored."""
    mask = 0
    for gpu_type in gpu_types:
        if gpu_type in GPU_TYPES:
            mask |= 1 << GPU_TYPES.index(gpu_type)
    return mask


def blender_number(version: str) -> int:
    """Encode a version such as "4.2.1" (or "4.2.1 LTS") as 4_002_001 for comparisons.

    Raises InvalidInput when version does not start with major.minor.
    """
    match = _BLENDER_VERSION_PREFIX.match(version) if isinstance(version, str) else None
    if match is None:
        raise InvalidInput(
            f"Blender version {version!r} does not start with major.minor like '4.2'"
        )
    major, minor, patch = (int(part or 0) for part in match.groups())
    return major * 1_000_000 + minor * 1000 + patch


class FarmStore:
    """Jobs, tasks, attempts, logs and workers in one SQLite database."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: str,
        clock: Callable[[], float],
        options: _Options,
    ) -> None:
        self._db = db
        self._path = path
        self._clock = clock
        self._options = options
        self._lock = asyncio.Lock()
        self.on_commit: Callable[[], None] | None = None
        """Called after each committed change; the server wakes its standbys."""

    @classmethod
    async def open(
        cls,
        path: str | Path,
        clock: Callable[[], float] = time.time,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        task_fail_workers: int = DEFAULT_TASK_FAIL_WORKERS,
        retry_same_worker_after: float = DEFAULT_RETRY_SAME_WORKER_AFTER,
        blocklist_threshold: int = DEFAULT_BLOCKLIST_THRESHOLD,
        blocklist_forget_after: float = DEFAULT_BLOCKLIST_FORGET_AFTER,
        job_fail_ratio: float = DEFAULT_JOB_FAIL_RATIO,
        log_lines_per_task: int = DEFAULT_LOG_LINES_PER_TASK,
        synchronous: str = "NORMAL",
    ) -> FarmStore:
        """Open or create the database at path and bring its schema up to date.

        lease_task and fail_attempt describe the failure options, whose times
        are seconds of clock. Raises ConfigError for a database written by a
        newer version and InvalidInput for invalid options.
        """
        options = _Options(
            max_attempts=max_attempts,
            task_fail_workers=task_fail_workers,
            retry_same_worker_after=retry_same_worker_after,
            blocklist_threshold=blocklist_threshold,
            blocklist_forget_after=blocklist_forget_after,
            job_fail_ratio=job_fail_ratio,
            log_lines_per_task=log_lines_per_task,
        )
        _check_options(options, synchronous)
        path_text = str(path)
        db = await aiosqlite.connect(path_text, isolation_level=None)
        try:
            await _configure(db, path_text, synchronous.upper())
            await migrate(db, path_text)
        except BaseException:
            await db.close()
            raise
        logger.info("opened farm database %s", path_text)
        return cls(db, path_text, clock, options)

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    async def close(self) -> None:
        """Close the database; the store cannot be used afterwards."""
        async with self._lock:
            await self._db.close()
        logger.info("closed farm database %s", self._path)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await asyncio.shield(self._db.execute("ROLLBACK"))
                raise
            await self._db.execute("COMMIT")
        if self.on_commit is not None:
            self.on_commit()

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            yield self._db

    # Jobs ------------------------------------------------------------------

    async def submit_job(self, spec: JobSpec, job_id: str | None = None) -> str:
        """Compile spec into tasks and store the job and its tasks; return the job id.

        ``job_id`` lets the submitting node choose the id, so that it can record
        the job before the server stores it. Raises FrameSpecError (nothing is
        stored) when the frames do not parse, and InvalidInput for a job id that
        is malformed or already taken.
        """
        # A 1M-frame job takes seconds to compile; keep the event loop responsive.
        # NOTE: such a job also holds the store lock for about 15 s while its tasks
        # are inserted (2-core VM), so leases wait; typical jobs take milliseconds.
        if job_id is None:
            job_id = uuid.uuid4().hex
        elif len(job_id) != 32 or job_id.strip("0123456789abcdef"):
            raise InvalidInput(f"job id {job_id!r} is not 32 lowercase hex digits")
        elif await self._job_exists(job_id):
            raise InvalidInput(f"job id {job_id} is already taken")
        tasks = await asyncio.to_thread(compile_job, spec)
        now = self._clock()
        requirements = spec.requirements
        async with self._transaction() as db:
            # A job with this id may have been stored while the tasks compiled.
            if await _job_row_exists(db, job_id):
                raise InvalidInput(f"job id {job_id} is already taken")
            await db.execute(
                "INSERT INTO jobs (id, name, job_type, status, priority, settings,"
                " requirements, gpu_mode, gpu_mask, min_blender, needs_blender,"
                " submitter_node, frames_total, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    spec.name,
                    spec.job_type,
                    JobStatus.QUEUED.value,
                    spec.priority,
                    _to_json(spec.settings),
                    _to_json(requirements.to_dict()),
                    requirements.gpu,
                    gpu_mask(requirements.gpu_types) or _ANY_GPU_MASK,
                    blender_number(requirements.min_blender)
                    if requirements.min_blender
                    else 0,
                    int(spec.job_type == "blender-render"),
                    spec.submitter_node,
                    sum(len(task.frames) for task in tasks),
                    now,
                    now,
                ),
            )
            await db.executemany(
                "INSERT INTO tasks (id, job_id, idx, name, status, frames,"
                " frame_count, payload, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (_task_row(job_id, task, now) for task in tasks),
            )
        logger.info(
            "job %s submitted: %r, %s, %d tasks, priority %d, from node %s",
            job_id,
            spec.name,
            spec.job_type,
            len(tasks),
            spec.priority,
            spec.submitter_node,
        )
        return job_id

    async def _job_exists(self, job_id: str) -> bool:
        async with self._reading() as db:
            rows = await db.execute_fetchall(
                "SELECT 1 FROM jobs WHERE id = ?", (job_id,)
            )
        return bool(list(rows))

    async def get_job(self, job_id: str) -> JobView:
        """Return the job; raises NotFound for an unknown id."""
        async with self._reading() as db:
            rows = await db.execute_fetchall(f"{_JOB_SQL} WHERE id = ?", (job_id,))
            if not rows:
                raise NotFound(
                    f"job {job_id!r} not found; `flamenco-p2p status` lists the job ids"
                )
            counts = await _task_counts(db, [job_id])
        return _job_view(next(iter(rows)), counts.get(job_id, {}))

    async def list_jobs(self, limit: int = 100) -> list[JobView]:
        """Return up to limit jobs, newest first."""
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise InvalidInput(f"limit is {limit!r}; give an integer of at least 0")
        async with self._reading() as db:
            rows = list(
                await db.execute_fetchall(
                    f"{_JOB_SQL} ORDER BY created DESC, rowid DESC LIMIT ?", (limit,)
                )
            )
            counts = await _task_counts(db, [row[0] for row in rows])
        return [_job_view(row, counts.get(row[0], {})) for row in rows]

    async def list_tasks(self, job_id: str) -> list[TaskView]:
        """Return the job's tasks in dispatch order; NotFound for an unknown job."""
        async with self._reading() as db:
            await _require_job(db, job_id)
            rows = await db.execute_fetchall(
                f"{_TASK_SQL} WHERE job_id = ? ORDER BY idx", (job_id,)
            )
        return [_task_view(row) for row in rows]

    async def cancel_job(self, job_id: str) -> list[Assignment]:
        """Request cancellation and return the running attempts that must be stopped.

        Tasks that wait to run are canceled at once. Without running attempts the
        job is canceled at once; otherwise it stays cancel-requested until every
        attempt is confirmed stopped or lost. Canceling a canceled or
        cancel-requested job again is allowed; a completed or failed job raises
        InvalidTransition.
        """
        async with self._transaction() as db:
            status = await _require_job(db, job_id)
            if status == JobStatus.CANCELED:
                return []
            if status != JobStatus.CANCEL_REQUESTED:
                await self._set_job_status(
                    db, job_id, status, JobStatus.CANCEL_REQUESTED
                )
                await self._cancel_waiting_tasks(db, job_id, "job canceled")
            running = await _assignments(
                db, "WHERE a.job_id = ? AND a.status = 'active'", (job_id,)
            )
            if not running:
                await self._set_job_status(
                    db, job_id, JobStatus.CANCEL_REQUESTED, JobStatus.CANCELED
                )
        logger.info(
            "job %s cancel requested, %d attempts to stop", job_id, len(running)
        )
        return running

    # Views for the HTTP API ------------------------------------------------

    async def job_page(
        self,
        limit: int,
        offset: int = 0,
        statuses: Sequence[str] = (),
        name_contains: str = "",
    ) -> tuple[list[JobView], int]:
        """Return one page of jobs, newest first, and how many jobs match in all.

        statuses keeps jobs in any of these statuses (all when empty);
        name_contains keeps jobs whose name contains the text, ignoring case.
        """
        _check_page(limit, offset)
        unknown = [s for s in statuses if s not in JobStatus.__members__.values()]
        if unknown:
            known = ", ".join(s.value for s in JobStatus)
            raise InvalidInput(f"job status {unknown[0]!r} is unknown; give {known}")
        where = ["1"]
        params: list[Any] = []
        if statuses:
            where.append("status IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(list(statuses)))
        if name_contains:
            where.append("instr(casefold(name), ?) > 0")
            params.append(name_contains.casefold())
        clause = " WHERE " + " AND ".join(where)
        async with self._reading() as db:
            total_rows = await db.execute_fetchall(
                "SELECT COUNT(*) FROM jobs" + clause,  # noqa: S608
                params,
            )
            rows = list(
                await db.execute_fetchall(
                    _JOB_SQL + clause + " ORDER BY created DESC, rowid DESC"
                    " LIMIT ? OFFSET ?",
                    (*params, limit, offset),
                )
            )
            counts = await _task_counts(db, [row[0] for row in rows])
        total: int = next(iter(total_rows))[0]
        return [_job_view(row, counts.get(row[0], {})) for row in rows], total

    async def task_page(
        self, job_id: str, limit: int, offset: int = 0, statuses: Sequence[str] = ()
    ) -> tuple[list[TaskView], int]:
        """Return one page of the job's tasks in dispatch order, and the match count.

        Raises NotFound for an unknown job.
        """
        _check_page(limit, offset)
        unknown = [s for s in statuses if s not in TaskStatus.__members__.values()]
        if unknown:
            known = ", ".join(s.value for s in TaskStatus)
            raise InvalidInput(f"task status {unknown[0]!r} is unknown; give {known}")
        clause = " WHERE job_id = ?"
        params: list[Any] = [job_id]
        if statuses:
            clause += " AND status IN (SELECT value FROM json_each(?))"
            params.append(json.dumps(list(statuses)))
        async with self._reading() as db:
            await _require_job(db, job_id)
            total_rows = await db.execute_fetchall(
                "SELECT COUNT(*) FROM tasks" + clause,  # noqa: S608
                params,
            )
            rows = await db.execute_fetchall(
                _TASK_SQL + clause + " ORDER BY idx LIMIT ? OFFSET ?",
                (*params, limit, offset),
            )
        total: int = next(iter(total_rows))[0]
        return [_task_view(row) for row in rows], total

    async def get_task(self, task_id: str) -> tuple[TaskView, list[dict[str, Any]]]:
        """Return a task and its attempts, oldest first; NotFound for an unknown id."""
        async with self._reading() as db:
            rows = await db.execute_fetchall(f"{_TASK_SQL} WHERE id = ?", (task_id,))
            if not rows:
                raise NotFound(f"task {task_id!r} not found")
            attempts = await db.execute_fetchall(
                "SELECT id, task_id, worker_id, node_id, status, progress, error,"
                " started, ended FROM attempts WHERE task_id = ?"
                " ORDER BY started, rowid",
                (task_id,),
            )
        keys = (
            "id", "task_id", "worker_id", "node_id", "status", "progress", "error",
            "started", "ended",
        )  # fmt: skip
        return _task_view(next(iter(rows))), [
            dict(zip(keys, row, strict=True)) for row in attempts
        ]

    async def tasks_by_id(self, task_ids: Sequence[str]) -> list[TaskView]:
        """Return the tasks of task_ids that exist, in no particular order."""
        if not task_ids:
            return []
        async with self._reading() as db:
            rows = await db.execute_fetchall(
                _TASK_SQL + " WHERE id IN (SELECT value FROM json_each(?))",  # noqa: S608
                (json.dumps(list(task_ids)),),
            )
        return [_task_view(row) for row in rows]

    async def jobs_by_id(self, job_ids: Sequence[str]) -> list[JobView]:
        """Return the jobs of job_ids that exist, in no particular order."""
        if not job_ids:
            return []
        async with self._reading() as db:
            rows = list(
                await db.execute_fetchall(
                    _JOB_SQL + " WHERE id IN (SELECT value FROM json_each(?))",  # noqa: S608
                    (json.dumps(list(job_ids)),),
                )
            )
            counts = await _task_counts(db, [row[0] for row in rows])
        return [_job_view(row, counts.get(row[0], {})) for row in rows]

    async def log_lines(
        self,
        task_id: str,
        *,
        attempt_id: str | None = None,
        after: int = 0,
        limit: int = 1000,
        tail: int | None = None,
    ) -> list[dict[str, Any]]:
        """Return a task's kept log lines as {"id", "attempt_id", "created", "line"}.

        With tail, the last tail lines; otherwise up to limit lines after the
        line id after. Both oldest first, optionally of one attempt only.
        Raises NotFound for an unknown task.
        """
        _check_page(limit, 0)
        clause = " WHERE task_id = ? AND id > ?"
        params: list[Any] = [task_id, after]
        if attempt_id is not None:
            clause += " AND attempt_id = ?"
            params.append(attempt_id)
        if tail is not None:
            order, count = " ORDER BY id DESC LIMIT ?", tail
        else:
            order, count = " ORDER BY id LIMIT ?", limit
        async with self._reading() as db:
            found = await db.execute_fetchall(
                "SELECT 1 FROM tasks WHERE id = ?", (task_id,)
            )
            if not found:
                raise NotFound(f"task {task_id!r} not found")
            rows = list(
                await db.execute_fetchall(
                    "SELECT id, attempt_id, created, line FROM task_logs"  # noqa: S608
                    + clause
                    + order,
                    (*params, count),
                )
            )
        if tail is not None:
            rows.reverse()
        return [
            {"id": row[0], "attempt_id": row[1], "created": row[2], "line": row[3]}
            for row in rows
        ]

    async def current_work(self) -> list[dict[str, Any]]:
        """Return what each busy worker runs: worker, job, task, name, progress."""
        async with self._reading() as db:
            rows = await db.execute_fetchall(
                "SELECT a.worker_id, a.job_id, a.task_id, t.name, a.progress"
                " FROM attempts AS a JOIN tasks AS t ON t.id = a.task_id"
                " WHERE a.status = 'active' AND t.current_attempt = a.id"
            )
        keys = ("worker_id", "job_id", "task_id", "name", "progress")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    async def farm_counts(self) -> dict[str, Any]:
        """Count jobs, tasks and workers by status, and name the newest frame."""
        async with self._reading() as db:
            jobs = await db.execute_fetchall(
                "SELECT status, COUNT(*) FROM jobs GROUP BY status"
            )
            tasks = await db.execute_fetchall(
                "SELECT status, COUNT(*) FROM tasks GROUP BY status"
            )
            workers = await db.execute_fetchall(
                "SELECT status, COUNT(*) FROM workers GROUP BY status"
            )
            last = list(
                await db.execute_fetchall(
                    "SELECT a.job_id, a.task_id, a.ended FROM attempts AS a"
                    " WHERE a.status = 'completed' ORDER BY a.ended DESC LIMIT 1"
                )
            )
        return {
            "jobs": {s.value: 0 for s in JobStatus} | {r[0]: r[1] for r in jobs},
            "tasks": {s.value: 0 for s in TaskStatus} | {r[0]: r[1] for r in tasks},
            "workers": {row[0]: row[1] for row in workers},
            "last_frame": (
                {"job_id": last[0][0], "task_id": last[0][1], "updated": last[0][2]}
                if last
                else None
            ),
        }

    # Steering by users -----------------------------------------------------

    async def pause_job(self, job_id: str) -> list[Assignment]:
        """Stop handing out the job's tasks; return the running attempts to stop.

        Waiting tasks become paused. A job with running attempts stays
        pause-requested until each one has completed, failed or stopped (see
        cancel_attempt_done). Pausing a paused or pause-requested job again does
        nothing. Raises StateError naming the status for any other job that is
        not queued or active.
        """
        async with self._transaction() as db:
            status = await _require_job(db, job_id)
            if status in (JobStatus.PAUSED, JobStatus.PAUSE_REQUESTED):
                return []
            if status not in RUNNABLE_JOB_STATUSES:
                raise StateError(
                    f"job {job_id} is {status}; only a queued or active job can be"
                    " paused"
                )
            await self._set_task_statuses(
                db, job_id, RUNNABLE_TASK_STATUSES, TaskStatus.PAUSED
            )
            running = await _assignments(
                db, "WHERE a.job_id = ? AND a.status = 'active'", (job_id,)
            )
            target = JobStatus.PAUSE_REQUESTED if running else JobStatus.PAUSED
            await self._set_job_status(db, job_id, status, target)
        logger.info("job %s pause requested, %d attempts to stop", job_id, len(running))
        return running

    async def resume_job(self, job_id: str) -> JobView:
        """Queue a paused job and its paused tasks again.

        Raises StateError for a job that is not paused, naming its status.
        """
        async with self._transaction() as db:
            status = await _require_job(db, job_id)
            if status != JobStatus.PAUSED:
                hint = (
                    "; wait until its running tasks have stopped"
                    if status == JobStatus.PAUSE_REQUESTED
                    else ""
                )
                raise StateError(
                    f"job {job_id} is {status}; only a paused job can be resumed{hint}"
                )
            await self._set_task_statuses(
                db, job_id, [TaskStatus.PAUSED], TaskStatus.QUEUED
            )
            await self._set_job_status(db, job_id, status, JobStatus.QUEUED)
        return await self.get_job(job_id)

    async def requeue_job(self, job_id: str, scope: str) -> JobView:
        """Run the job's tasks again: every task (scope "all") or the failed ones.

        "failed" also takes canceled tasks, which lack their frames as failed
        ones do. Requeued tasks start afresh: failure counts, errors and the
        job's blocklist are cleared. A finished or paused job is queued again.
        Raises InvalidInput for another scope and StateError when the job's
        status forbids it (running tasks, a pending cancel or pause) or when
        nothing would run again.
        """
        if scope not in ("all", "failed"):
            raise InvalidInput(f"scope is {scope!r}; give 'all' or 'failed'")
        async with self._transaction() as db:
            status = await _require_job(db, job_id)
            restartable = FINAL_JOB_STATUSES | {JobStatus.PAUSED}
            running = status in RUNNABLE_JOB_STATUSES
            if not (status in restartable or (running and scope == "failed")):
                raise StateError(
                    f"job {job_id} is {status}; requeue all tasks of a completed,"
                    " failed, canceled or paused job, or the failed tasks of a"
                    " queued or active one"
                )
            if scope == "all":
                chosen = [s for s in TaskStatus if s != TaskStatus.ACTIVE]
            else:
                chosen = [TaskStatus.FAILED, TaskStatus.CANCELED]
            if status == JobStatus.PAUSED:
                chosen.append(TaskStatus.PAUSED)
            count = await self._requeue_tasks(db, job_id, chosen)
            if not count:
                raise StateError(
                    f"job {job_id} has no {'' if scope == 'all' else 'failed '}tasks"
                    " to requeue"
                )
            await db.execute("DELETE FROM job_blocklist WHERE job_id = ?", (job_id,))
            await self._restart_job(db, job_id, status)
        logger.info("job %s requeued (%s): %d tasks", job_id, scope, count)
        return await self.get_job(job_id)

    async def requeue_task(self, task_id: str) -> TaskView:
        """Run one task again, which queues its finished job again.

        Raises NotFound for an unknown task and StateError while the task waits
        or runs, or while its job is being canceled or paused.
        """
        async with self._transaction() as db:
            rows = await db.execute_fetchall(
                "SELECT t.status, t.job_id, j.status FROM tasks AS t"
                " JOIN jobs AS j ON j.id = t.job_id WHERE t.id = ?",
                (task_id,),
            )
            if not rows:
                raise NotFound(f"task {task_id!r} not found")
            task_status, job_id, job_status = next(iter(rows))
            waiting = (*RUNNABLE_TASK_STATUSES, TaskStatus.ACTIVE, TaskStatus.PAUSED)
            if task_status in waiting:
                raise StateError(
                    f"task {task_id} is {task_status}; only a completed, failed or"
                    " canceled task can be requeued"
                )
            if job_status in (
                JobStatus.CANCEL_REQUESTED,
                JobStatus.PAUSE_REQUESTED,
                JobStatus.REQUEUEING,
            ):
                raise StateError(
                    f"job {job_id} is {job_status}; wait until it settles, then"
                    " requeue the task"
                )
            check_task_transition(task_id, task_status, TaskStatus.QUEUED)
            await db.execute(
                f"UPDATE tasks SET {_FRESH_TASK} WHERE id = ?",  # noqa: S608
                (self._clock(), task_id),
            )
            await self._restart_job(db, job_id, job_status)
            view = await _fetch_task(db, task_id)
        logger.info("task %s of job %s requeued", task_id, job_id)
        return view

    async def set_priority(self, job_id: str, priority: int) -> JobView:
        """Change the job's priority (0 to 100; higher runs first)."""
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise InvalidInput(f"priority is {priority!r}; give an integer 0 to 100")
        if not 0 <= priority <= 100:
            raise InvalidInput(f"priority is {priority}; give an integer 0 to 100")
        async with self._transaction() as db:
            await _require_job(db, job_id)
            await db.execute(
                "UPDATE jobs SET priority = ?, updated = ? WHERE id = ?",
                (priority, self._clock(), job_id),
            )
        logger.info("job %s priority set to %d", job_id, priority)
        return await self.get_job(job_id)

    async def delete_job(self, job_id: str) -> None:
        """Forget a completed, failed or canceled job with its tasks and logs.

        Rendered frames stay where they were delivered. Raises StateError for a
        job that may still run.
        """
        async with self._transaction() as db:
            status = await _require_job(db, job_id)
            if status not in FINAL_JOB_STATUSES or await _has_tasks(
                db, job_id, [TaskStatus.ACTIVE]
            ):
                raise StateError(
                    f"job {job_id} is {status}; cancel it first, then delete it"
                )
            # Children first, so that the change log holds a delete for each row
            # and replicas drop them whether or not their foreign keys cascade.
            for table in ("task_logs", "job_blocklist", "attempts", "tasks"):
                key = "task_id IN (SELECT id FROM tasks WHERE job_id = ?)"
                where = key if table == "task_logs" else "job_id = ?"
                await db.execute(f"DELETE FROM {table} WHERE {where}", (job_id,))  # noqa: S608
            await db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        logger.info("job %s deleted (it was %s)", job_id, status)

    async def _set_task_statuses(
        self,
        db: aiosqlite.Connection,
        job_id: str,
        current: Iterable[TaskStatus],
        new: TaskStatus,
    ) -> None:
        statuses = list(current)
        for status in statuses:
            check_task_transition(f"(tasks of job {job_id})", status, new)
        where = f"job_id = ? AND status IN {_placeholders(len(statuses))}"
        await db.execute(
            "UPDATE tasks SET status = ?, updated = ? WHERE " + where,  # noqa: S608
            (new.value, self._clock(), job_id, *(s.value for s in statuses)),
        )

    async def _requeue_tasks(
        self, db: aiosqlite.Connection, job_id: str, statuses: Sequence[TaskStatus]
    ) -> int:
        for status in statuses:
            if status != TaskStatus.QUEUED:
                check_task_transition(
                    f"(tasks of job {job_id})", status, TaskStatus.QUEUED
                )
        where = f"job_id = ? AND status IN {_placeholders(len(statuses))}"
        cursor = await db.execute(
            f"UPDATE tasks SET {_FRESH_TASK} WHERE " + where,  # noqa: S608
            (self._clock(), job_id, *(s.value for s in statuses)),
        )
        return cursor.rowcount

    async def _restart_job(
        self, db: aiosqlite.Connection, job_id: str, status: str
    ) -> None:
        """Queue a finished or paused job again after some of its tasks were reset."""
        if status in RUNNABLE_JOB_STATUSES:
            return
        if status == JobStatus.PAUSED and not await _has_tasks(
            db, job_id, [TaskStatus.PAUSED, TaskStatus.ACTIVE]
        ):
            # Every task was requeued: the job runs again rather than stay paused.
            await self._set_job_status(db, job_id, status, JobStatus.QUEUED)
            return
        if status == JobStatus.PAUSED:
            return
        await self._set_job_status(db, job_id, status, JobStatus.REQUEUEING)
        await db.execute("UPDATE jobs SET error = NULL WHERE id = ?", (job_id,))
        await self._set_job_status(db, job_id, JobStatus.REQUEUEING, JobStatus.QUEUED)

    # Leasing ---------------------------------------------------------------

    async def lease_task(
        self, worker: WorkerInfo, unless_busy: bool = False
    ) -> Assignment | None:
        """Start a new attempt of the best task for worker, or return None.

        Only queued or active jobs whose requirements the worker meets and that
        have not blocklisted it in the last blocklist_forget_after seconds are
        considered. Jobs sort by priority first. Among equal priorities, a worker
        whose GPU matches takes GPU jobs first, while other workers take
        GPU-preferring jobs last. Then older jobs go first. Within a job, the
        worker gets the first runnable task in index order that it has not failed
        before. It may take a task that it failed again once retry_same_worker_after
        seconds have passed since the task's last failure. With unless_busy, a
        worker that still runs an attempt gets nothing.
        """
        blender = (
            blender_number(worker.blender_version) if worker.blender_version else -1
        )
        now = self._clock()
        params = {
            "gpu_mask": worker.gpu_mask,
            "blender": blender,
            "worker_id": worker.worker_id,
            "retry_cutoff": now - self._options.retry_same_worker_after,
            "blocklist_cutoff": now - self._options.blocklist_forget_after,
            "unless_busy": int(unless_busy),
        }
        async with self._reading() as db:
            for _ in range(_LEASE_TRIES):
                rows = await db.execute_fetchall(_LEASE_SQL, params)
                if not rows:
                    return None
                candidate = _LeaseCandidate(*next(iter(rows)))
                attempt_id = await self._start_attempt(db, candidate, worker, now)
                if attempt_id is not None:
                    if self.on_commit is not None:
                        self.on_commit()
                    break
            else:
                return None
        logger.debug(
            "attempt %s of task %s (job %s) leased to worker %s",
            attempt_id,
            candidate.task_id,
            candidate.job_id,
            worker.worker_id,
        )
        return Assignment(
            job_id=candidate.job_id,
            task_id=candidate.task_id,
            attempt_id=attempt_id,
            job_type=candidate.job_type,
            frames=tuple(json.loads(candidate.frames)),
            payload=json.loads(candidate.payload),
            settings=json.loads(candidate.settings),
            worker_id=worker.worker_id,
            submitter_node=candidate.submitter_node,
        )

    async def _start_attempt(
        self,
        db: aiosqlite.Connection,
        candidate: _LeaseCandidate,
        worker: WorkerInfo,
        now: float,
    ) -> str | None:
        """Insert the attempt unless the task or job changed since the lease query.

        One statement (with the attempts_lease trigger) keeps the lease atomic
        without a BEGIN/COMMIT round trip. Returns the attempt id, or None.
        """
        check_task_transition(
            candidate.task_id, candidate.task_status, TaskStatus.ACTIVE
        )
        if candidate.job_status == JobStatus.QUEUED:
            check_job_transition(
                candidate.job_id, candidate.job_status, JobStatus.ACTIVE
            )
        attempt_id = uuid.uuid4().hex
        cursor = await db.execute(
            _START_ATTEMPT_SQL,
            (
                attempt_id,
                candidate.task_id,
                candidate.job_id,
                worker.worker_id,
                worker.node_id,
                now,
                candidate.task_id,
                candidate.task_status,
                candidate.job_id,
                candidate.job_status,
            ),
        )
        if cursor.rowcount != 1:
            return None
        if candidate.job_status == JobStatus.QUEUED:
            logger.info("job %s: queued -> active", candidate.job_id)
        return attempt_id

    async def active_attempts(self) -> list[Assignment]:
        """Return every running attempt, oldest first."""
        async with self._reading() as db:
            return await _assignments(
                db, "WHERE a.status = 'active' ORDER BY a.started, a.rowid", ()
            )

    # Attempt results -------------------------------------------------------

    async def complete_attempt(
        self, attempt_id: str, outputs: list[dict[str, Any]]
    ) -> TaskView:
        """Record a finished attempt and its output files; the task completes.

        outputs contains {"frame", "name", "sha256", "size"} per file, for frames of
        the task. Raises StaleAttempt when the attempt is no longer the task's
        running attempt, NotFound for an unknown id, InvalidInput for bad outputs.
        """
        records = _check_outputs(attempt_id, outputs)
        now = self._clock()
        async with self._transaction() as db:
            state = await self._running_attempt(db, attempt_id)
            frames = set(state.frames)
            stray = sorted({r["frame"] for r in records} - frames)
            if stray:
                raise InvalidInput(
                    f"outputs of attempt {attempt_id} name frames {stray} that task "
                    f"{state.task_id} does not render"
                )
            await self._end_attempt(db, state, AttemptStatus.COMPLETED, None, now)
            check_task_transition(
                state.task_id, state.task_status, TaskStatus.COMPLETED
            )
            await db.execute(
                "UPDATE tasks SET status = 'completed', outputs = ?, progress = 1,"
                " error = NULL, updated = ? WHERE id = ?",
                (_to_json(records), now, state.task_id),
            )
            await self._settle_job(db, state.job_id, state.job_status)
            view = await _fetch_task(db, state.task_id)
        logger.info(
            "attempt %s of task %s (job %s) completed by worker %s with %d outputs",
            attempt_id,
            state.task_id,
            state.job_id,
            state.worker_id,
            len(records),
        )
        return view

    async def fail_attempt(self, attempt_id: str, error: str) -> TaskView:
        """Record a failed attempt and apply the failure policy to task and job.

        The task soft-fails and runs again, on another worker while one can take
        it (see lease_task). It fails for good once task_fail_workers different
        workers failed it, or after max_attempts failed attempts in all. Once
        job_fail_ratio of the job's tasks have failed, the job fails and its
        waiting tasks are canceled. Below that ratio the job goes on, and ends as
        failed when none of its tasks is left to run, because frames are missing.
        Attempts of a failed job that still run are left alone: their results are
        accepted, or the caller stops them and confirms with cancel_attempt_done.

        A worker that failed blocklist_threshold different tasks of a job is
        blocklisted for that job, and the entry expires after
        blocklist_forget_after seconds. Raises StaleAttempt or NotFound like
        complete_attempt.
        """
        now = self._clock()
        async with self._transaction() as db:
            state = await self._running_attempt(db, attempt_id)
            await self._end_attempt(db, state, AttemptStatus.FAILED, error, now)
            if state.job_status in _STOPPING_JOB_STATUSES:
                await self._stop_task(db, state, TaskStatus.CANCELED, now)
                await self._settle_job(db, state.job_id, state.job_status)
            else:
                await self._record_failure(db, state, error, now)
            await self._update_blocklist(db, state, now)
            view = await _fetch_task(db, state.task_id)
        logger.warning(
            "attempt %s of task %s (job %s) failed on worker %s: %s",
            attempt_id,
            state.task_id,
            state.job_id,
            state.worker_id,
            error,
        )
        return view

    async def cancel_attempt_done(self, attempt_id: str) -> TaskView:
        """Record that a worker stopped an attempt on request; the task is canceled.

        Allowed only while the job is cancel-requested or failed; raises
        StateError otherwise, and StaleAttempt or NotFound like complete_attempt.
        """
        now = self._clock()
        async with self._transaction() as db:
            state = await self._running_attempt(db, attempt_id)
            stopped = _stopped_task_status(state.job_status)
            if stopped is None:
                raise StateError(
                    f"attempt {attempt_id} of job {state.job_id} was not asked to "
                    f"stop (job is {state.job_status}); report its result with "
                    "complete_attempt or fail_attempt"
                )
            await self._end_attempt(db, state, AttemptStatus.CANCELED, None, now)
            await self._stop_task(db, state, stopped, now)
            await self._settle_job(db, state.job_id, state.job_status)
            view = await _fetch_task(db, state.task_id)
        logger.info(
            "attempt %s of task %s (job %s) stopped by worker %s",
            attempt_id,
            state.task_id,
            state.job_id,
            state.worker_id,
        )
        return view

    async def requeue_worker(self, worker_id: str, reason: str) -> list[str]:
        """Mark the worker's running attempts lost and queue their tasks again.

        Returns the ids of the requeued tasks. Tasks of jobs that are being
        canceled or have failed are canceled instead, which may finish a cancel.
        """
        now = self._clock()
        requeued: list[str] = []
        async with self._transaction() as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT id FROM attempts WHERE worker_id = ? AND status = 'active'",
                    (worker_id,),
                )
            )
            for (attempt_id,) in rows:
                state = await self._attempt_state(db, attempt_id)
                if await self._lose_attempt(db, state, reason, now):
                    requeued.append(state.task_id)
        if rows:
            logger.warning(
                "worker %s lost (%s): %d attempts lost, tasks requeued: %s",
                worker_id,
                reason,
                len(rows),
                ", ".join(requeued) or "none",
            )
        return requeued

    async def _lose_attempt(
        self, db: aiosqlite.Connection, state: _AttemptState, reason: str, now: float
    ) -> bool:
        """End a running attempt as lost; return True when its task runs again.

        A task of a job that is being canceled or has failed is canceled instead.
        """
        await self._end_attempt(db, state, AttemptStatus.LOST, reason, now)
        stopped = _stopped_task_status(state.job_status)
        if stopped is not None:
            await self._stop_task(db, state, stopped, now)
            await self._settle_job(db, state.job_id, state.job_status)
            return False
        await self._stop_task(db, state, TaskStatus.QUEUED, now)
        return True

    # Logs and progress -----------------------------------------------------

    async def add_log(self, attempt_id: str, lines: list[str]) -> None:
        """Append log lines of an attempt to its task's log, keeping the newest lines.

        Lines of attempts that already ended are kept too. Raises NotFound for an
        unknown attempt.
        """
        keep = self._options.log_lines_per_task
        now = self._clock()
        cut = [str(line)[:MAX_LOG_LINE_CHARS] for line in lines][-keep:]
        if not cut:
            return
        async with self._transaction() as db:
            rows = await db.execute_fetchall(
                "SELECT task_id FROM attempts WHERE id = ?", (attempt_id,)
            )
            if not rows:
                raise NotFound(f"attempt {attempt_id!r} not found")
            task_id: str = next(iter(rows))[0]
            await db.executemany(
                "INSERT INTO task_logs (task_id, attempt_id, created, line)"
                " VALUES (?, ?, ?, ?)",
                ((task_id, attempt_id, now, line) for line in cut),
            )
            await db.execute(
                "DELETE FROM task_logs WHERE task_id = ? AND id <= ("
                " SELECT id FROM task_logs WHERE task_id = ?"
                " ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (task_id, task_id, keep),
            )

    async def task_log(self, task_id: str) -> list[str]:
        """Return the kept log lines of a task, oldest first."""
        async with self._reading() as db:
            rows = await db.execute_fetchall(
                "SELECT line FROM task_logs WHERE task_id = ? ORDER BY id", (task_id,)
            )
        return [row[0] for row in rows]

    async def record_progress(self, attempt_id: str, progress: float) -> None:
        """Store progress (0 to 1) of a running attempt.

        Raises InvalidInput for other values and StaleAttempt or NotFound like
        complete_attempt.
        """
        if (
            not isinstance(progress, int | float)
            or isinstance(progress, bool)
            or not math.isfinite(progress)
            or not 0 <= progress <= 1
        ):
            raise InvalidInput(
                f"progress of attempt {attempt_id} is {progress!r}; give 0 to 1"
            )
        async with self._transaction() as db:
            state = await self._running_attempt(db, attempt_id)
            await db.execute(
                "UPDATE attempts SET progress = ? WHERE id = ?", (progress, attempt_id)
            )
            await db.execute(
                "UPDATE tasks SET progress = ? WHERE id = ?", (progress, state.task_id)
            )

    # Workers ---------------------------------------------------------------

    async def upsert_worker(self, worker: WorkerInfo, status: str) -> None:
        """Insert or update a worker's record and set its last-seen time to now."""
        if not isinstance(status, str) or not status:
            raise InvalidInput(
                f"status of worker {worker.worker_id} is {status!r}; give a word "
                "such as 'idle' or 'busy'"
            )
        now = self._clock()
        capabilities = {
            "cpu_cores": worker.cpu_cores,
            "gpu_types": list(worker.gpu_types),
            "blender_version": worker.blender_version,
            "tags": list(worker.tags),
        }
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO workers (worker_id, node_id, site, cpu_cores, gpu_types,"
                " blender_version, tags, capabilities, status, first_seen, last_seen)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (worker_id) DO UPDATE SET node_id = excluded.node_id,"
                " site = excluded.site, cpu_cores = excluded.cpu_cores,"
                " gpu_types = excluded.gpu_types,"
                " blender_version = excluded.blender_version, tags = excluded.tags,"
                " capabilities = excluded.capabilities, status = excluded.status,"
                " last_seen = excluded.last_seen",
                (
                    worker.worker_id,
                    worker.node_id,
                    worker.site,
                    worker.cpu_cores,
                    _to_json(list(worker.gpu_types)),
                    worker.blender_version,
                    _to_json(list(worker.tags)),
                    _to_json(capabilities),
                    status,
                    now,
                    now,
                ),
            )

    async def list_workers(self) -> list[dict[str, Any]]:
        """Return every known worker as a plain dict, ordered by worker id."""
        async with self._reading() as db:
            rows = await db.execute_fetchall(
                "SELECT worker_id, node_id, site, cpu_cores, gpu_types,"
                " blender_version, tags, capabilities, status, first_seen, last_seen"
                " FROM workers ORDER BY worker_id"
            )
        return [
            {
                "worker_id": row[0],
                "node_id": row[1],
                "site": row[2],
                "cpu_cores": row[3],
                "gpu_types": json.loads(row[4]),
                "blender_version": row[5],
                "tags": json.loads(row[6]),
                "capabilities": json.loads(row[7]),
                "status": row[8],
                "first_seen": row[9],
                "last_seen": row[10],
            }
            for row in rows
        ]

    async def job_blocklist(self, job_id: str) -> list[str]:
        """Return the ids of the workers that the job gives no tasks to now.

        Entries older than blocklist_forget_after are left out.
        """
        cutoff = self._clock() - self._options.blocklist_forget_after
        async with self._reading() as db:
            rows = await db.execute_fetchall(
                "SELECT worker_id FROM job_blocklist WHERE job_id = ? AND created > ?"
                " ORDER BY created",
                (job_id, cutoff),
            )
        return [row[0] for row in rows]

    # Internals -------------------------------------------------------------

    async def _attempt_state(
        self, db: aiosqlite.Connection, attempt_id: str
    ) -> _AttemptState:
        rows = await db.execute_fetchall(_ATTEMPT_STATE_SQL, (attempt_id,))
        if not rows:
            raise NotFound(f"attempt {attempt_id!r} not found")
        row = next(iter(rows))
        return _AttemptState(
            attempt_id, row[0], row[1], row[2], row[3], row[4], row[5], row[6],
            tuple(json.loads(row[7])), row[8], row[9],
        )  # fmt: skip

    async def _running_attempt(
        self, db: aiosqlite.Connection, attempt_id: str
    ) -> _AttemptState:
        state = await self._attempt_state(db, attempt_id)
        current = state.current_attempt == attempt_id
        if state.attempt_status != AttemptStatus.ACTIVE or not current:
            raise StaleAttempt(
                f"attempt {attempt_id} of task {state.task_id} is "
                f"{state.attempt_status} and not the task's running attempt; "
                "drop its result"
            )
        return state

    async def _end_attempt(
        self,
        db: aiosqlite.Connection,
        state: _AttemptState,
        status: AttemptStatus,
        error: str | None,
        now: float,
    ) -> None:
        check_attempt_transition(state.attempt_id, state.attempt_status, status)
        await db.execute(
            "UPDATE attempts SET status = ?, error = ?, ended = ? WHERE id = ?",
            (status.value, error, now, state.attempt_id),
        )

    async def _stop_task(
        self,
        db: aiosqlite.Connection,
        state: _AttemptState,
        status: TaskStatus,
        now: float,
    ) -> None:
        """Move a running task to queued (run again), paused or canceled."""
        check_task_transition(state.task_id, state.task_status, status)
        keep_attempt = status == TaskStatus.CANCELED
        await db.execute(
            "UPDATE tasks SET status = ?, progress = 0, updated = ?,"
            " current_attempt = CASE WHEN ? THEN current_attempt END,"
            " worker_id = CASE WHEN ? THEN worker_id END WHERE id = ?",
            (status.value, now, keep_attempt, keep_attempt, state.task_id),
        )

    async def _record_failure(
        self, db: aiosqlite.Connection, state: _AttemptState, error: str, now: float
    ) -> None:
        failures = state.failures + 1
        workers = await _failed_worker_count(db, state.task_id)
        if (
            failures < self._options.max_attempts
            and workers < self._options.task_fail_workers
        ):
            check_task_transition(
                state.task_id, state.task_status, TaskStatus.SOFT_FAILED
            )
            await db.execute(
                "UPDATE tasks SET status = 'soft-failed', failures = ?, error = ?,"
                " progress = 0, current_attempt = NULL, worker_id = NULL,"
                " updated = ? WHERE id = ?",
                (failures, error, now, state.task_id),
            )
            await self._settle_job(db, state.job_id, state.job_status)
            return
        check_task_transition(state.task_id, state.task_status, TaskStatus.FAILED)
        await db.execute(
            "UPDATE tasks SET status = 'failed', failures = ?, error = ?, updated = ?"
            " WHERE id = ?",
            (failures, error, now, state.task_id),
        )
        logger.warning(
            "task %s (job %s) failed for good after %d failed attempts on %d workers",
            state.task_id,
            state.job_id,
            failures,
            workers,
        )
        failed, total = await _failed_task_count(db, state.job_id)
        ratio = self._options.job_fail_ratio
        # Division and the literal both round to the nearest float, and rounding is
        # monotonic, so the comparison is exact: 1 / 10 equals 0.1.
        if failed / total < ratio:
            await self._settle_job(db, state.job_id, state.job_status)
            return
        named = await _failed_task_names(db, state.job_id, failed)
        job_error = (
            f"{failed} of {total} tasks failed, which reaches job_fail_ratio"
            f" {ratio:g}: {named}. Task {state.task_name!r} failed"
            f" {_count(failures, 'time')} on {_count(workers, 'worker')}, last"
            f" with: {error}"
        )
        await self._fail_job(db, state.job_id, state.job_status, job_error)
        await self._cancel_waiting_tasks(db, state.job_id, "job failed")

    async def _fail_job(
        self, db: aiosqlite.Connection, job_id: str, current: str, error: str
    ) -> None:
        await self._set_job_status(db, job_id, current, JobStatus.FAILED, error)
        logger.warning("job %s failed: %s", job_id, error)

    async def _update_blocklist(
        self, db: aiosqlite.Connection, state: _AttemptState, now: float
    ) -> None:
        """Blocklist the worker once it failed blocklist_threshold tasks of the job.

        The job's expired entries are deleted first. Failures from before an
        expired entry still count, so a worker that fails a task of the job again
        after the job forgot it is blocklisted again.
        """
        await self._forget_blocklist_entries(db, state.job_id, now)
        rows = await db.execute_fetchall(
            "SELECT COUNT(DISTINCT task_id) FROM attempts"
            " WHERE job_id = ? AND worker_id = ? AND status = 'failed'",
            (state.job_id, state.worker_id),
        )
        failed: int = next(iter(rows))[0]
        if failed < self._options.blocklist_threshold:
            return
        cursor = await db.execute(
            "INSERT OR IGNORE INTO job_blocklist (job_id, worker_id, reason, created)"
            " VALUES (?, ?, ?, ?)",
            (state.job_id, state.worker_id, f"failed {failed} tasks", now),
        )
        if cursor.rowcount:
            logger.warning(
                "job %s blocklisted worker %s for %g s after it failed %d tasks",
                state.job_id,
                state.worker_id,
                self._options.blocklist_forget_after,
                failed,
            )

    async def _forget_blocklist_entries(
        self, db: aiosqlite.Connection, job_id: str, now: float
    ) -> None:
        """Delete the job's blocklist entries that lease_task already ignores."""
        rows = await db.execute_fetchall(
            "DELETE FROM job_blocklist WHERE job_id = ? AND created <= ?"
            " RETURNING worker_id, created",
            (job_id, now - self._options.blocklist_forget_after),
        )
        for worker_id, created in rows:
            logger.info(
                "job %s forgot blocklisted worker %s, blocklisted %.0f s ago",
                job_id,
                worker_id,
                now - created,
            )

    async def _cancel_waiting_tasks(
        self, db: aiosqlite.Connection, job_id: str, reason: str
    ) -> None:
        """Cancel the job's tasks that wait to run (queued, soft-failed, paused)."""
        waiting = [*RUNNABLE_TASK_STATUSES, TaskStatus.PAUSED]
        for status in waiting:
            check_task_transition(
                f"(tasks of job {job_id})", status, TaskStatus.CANCELED
            )
        where = f"job_id = ? AND status IN {_placeholders(len(waiting))}"
        await db.execute(
            "UPDATE tasks SET status = 'canceled', error = COALESCE(error, ?),"  # noqa: S608
            " updated = ? WHERE " + where,
            (reason, self._clock(), job_id, *(status.value for status in waiting)),
        )

    async def _settle_job(
        self, db: aiosqlite.Connection, job_id: str, job_status: str
    ) -> None:
        """Move the job to the status that its tasks now imply, if any.

        A job with no task left to run completes when every task completed. It
        fails when some task failed, because a completed job has every frame.
        """
        if job_status == JobStatus.CANCEL_REQUESTED:
            if not await _has_tasks(db, job_id, [TaskStatus.ACTIVE]):
                await self._set_job_status(db, job_id, job_status, JobStatus.CANCELED)
            return
        if job_status not in (JobStatus.ACTIVE, JobStatus.PAUSE_REQUESTED):
            return
        if not await _has_tasks(db, job_id, _UNDONE_TASK_STATUSES):
            failed, total = await _failed_task_count(db, job_id)
            if failed:
                named = await _failed_task_names(db, job_id, failed)
                error = (
                    f"{failed} of {total} tasks failed and the others ended, so"
                    f" the job lacks their frames: {named}"
                )
                await self._fail_job(db, job_id, job_status, error)
                return
            if not await _has_tasks(db, job_id, [TaskStatus.CANCELED]):
                await self._set_job_status(db, job_id, job_status, JobStatus.COMPLETED)
                return
        if job_status == JobStatus.PAUSE_REQUESTED and not await _has_tasks(
            db, job_id, [TaskStatus.ACTIVE]
        ):
            await self._set_job_status(db, job_id, job_status, JobStatus.PAUSED)

    async def _set_job_status(
        self,
        db: aiosqlite.Connection,
        job_id: str,
        current: str,
        new: JobStatus,
        error: str | None = None,
    ) -> None:
        check_job_transition(job_id, current, new)
        await db.execute(
            "UPDATE jobs SET status = ?, updated = ?, error = COALESCE(?, error)"
            " WHERE id = ?",
            (new.value, self._clock(), error, job_id),
        )
        logger.info("job %s: %s -> %s", job_id, current, new.value)

    # Attempts after a coordinator change -----------------------------------

    async def running_attempts(
        self, attempt_ids: Sequence[str]
    ) -> tuple[dict[str, str], list[str]]:
        """Sort attempt_ids into running ones and stale ones.

        Returns ({attempt id: worker id} of the attempts that run as their task's
        current attempt, [ids of known attempts that no longer run]). Unknown ids
        are in neither: after a partition, the attempt may still arrive with the
        other side's state.
        """
        if not attempt_ids:
            return {}, []
        # One statement text for any number of ids (json_each), so that the
        # connection's statement cache does not fill with one entry per count.
        async with self._reading() as db:
            rows = await db.execute_fetchall(
                "SELECT a.id, a.worker_id, a.status = 'active'"
                " AND t.current_attempt IS a.id"
                " FROM attempts AS a JOIN tasks AS t ON t.id = a.task_id"
                " WHERE a.id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(attempt_ids)),),
            )
        running = {row[0]: row[1] for row in rows if row[2]}
        stale = [row[0] for row in rows if not row[2]]
        return running, stale

    async def worker_busy(self, worker_id: str) -> bool:
        """Return True while the worker has a running attempt."""
        async with self._reading() as db:
            return await _runs_attempt(db, worker_id)

    async def has_runnable_tasks(self) -> bool:
        """Return True when some task waits to run (queued or soft-failed)."""
        async with self._reading() as db:
            return await _has_runnable_tasks(db)

    async def idle_workers(self, worker_ids: Sequence[str]) -> list[str]:
        """Return the workers of worker_ids, in order, that run no attempt.

        Returns an empty list while no task waits to run (queued or soft-failed),
        so that a caller with many waiting workers makes one query for them all.
        """
        if not worker_ids:
            return []
        async with self._reading() as db:
            if not await _has_runnable_tasks(db):
                return []
            # One statement text for any number of ids, as in running_attempts.
            rows = await db.execute_fetchall(
                "SELECT DISTINCT a.worker_id FROM attempts AS a"
                " JOIN tasks AS t ON t.id = a.task_id"
                " WHERE a.worker_id IN (SELECT value FROM json_each(?))"
                " AND a.status = 'active' AND t.current_attempt = a.id",
                (json.dumps(list(worker_ids)),),
            )
        busy = {row[0] for row in rows}
        return [worker_id for worker_id in worker_ids if worker_id not in busy]

    async def lose_attempts(self, attempt_ids: Sequence[str], reason: str) -> list[str]:
        """Mark running attempts lost and queue their tasks again; return the tasks.

        Ids that are unknown or no longer running are skipped. Tasks of jobs that
        are being canceled or have failed are canceled instead.
        """
        now = self._clock()
        requeued: list[str] = []
        async with self._transaction() as db:
            for attempt_id in attempt_ids:
                try:
                    state = await self._running_attempt(db, attempt_id)
                except (NotFound, StaleAttempt):
                    continue
                if await self._lose_attempt(db, state, reason, now):
                    requeued.append(state.task_id)
        if requeued:
            logger.warning(
                "attempts %s lost (%s): tasks requeued: %s",
                ", ".join(attempt_ids),
                reason,
                ", ".join(requeued),
            )
        return requeued


_STOPPING_JOB_STATUSES = frozenset({JobStatus.CANCEL_REQUESTED, JobStatus.FAILED})

_FRESH_TASK = (
    "status = 'queued', failures = 0, error = NULL, progress = 0,"
    " current_attempt = NULL, worker_id = NULL, outputs = '[]', updated = ?"
)
"""The SET clause that makes a task wait to run as if it had never run."""

_UNDONE_TASK_STATUSES = (
    TaskStatus.QUEUED,
    TaskStatus.SOFT_FAILED,
    TaskStatus.ACTIVE,
    TaskStatus.PAUSED,
)
"""Task statuses of tasks that may still run, which keep a job from ending."""


async def _configure(db: aiosqlite.Connection, path: str, synchronous: str) -> None:
    # SQLite's lower() folds ASCII only; job names are often not ASCII.
    await db.create_function("casefold", 1, _casefold, deterministic=True)
    await db.execute("PRAGMA foreign_keys = ON")
    await db.execute("PRAGMA busy_timeout = 5000")
    rows = await db.execute_fetchall("PRAGMA journal_mode = WAL")
    mode = next(iter(rows))[0]
    if mode != "wal":
        # In-memory databases cannot use WAL; they have no durability anyway.
        logger.warning("farm database %s uses journal mode %s, not WAL", path, mode)
    await db.execute(f"PRAGMA synchronous = {synchronous}")


def _check_options(options: _Options, synchronous: str) -> None:
    counts = (
        "max_attempts",
        "task_fail_workers",
        "blocklist_threshold",
        "log_lines_per_task",
    )
    for name in counts:
        value = getattr(options, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInput(f"{name} is {value!r}; give an integer of at least 1")
    for name in ("retry_same_worker_after", "blocklist_forget_after"):
        value = getattr(options, name)
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise InvalidInput(
                f"{name} is {value!r}; give a finite number of seconds, 0 or more"
            )
    ratio = options.job_fail_ratio
    if not _is_number(ratio) or not 0 <= ratio <= 1:
        raise InvalidInput(
            f"job_fail_ratio is {ratio!r}; give a number from 0 to 1, such as 0.1"
            " for 10 %"
        )
    if (
        not isinstance(synchronous, str)
        or synchronous.upper() not in _SYNCHRONOUS_MODES
    ):
        modes = ", ".join(_SYNCHRONOUS_MODES)
        raise InvalidInput(f"synchronous is {synchronous!r}; use one of {modes}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_outputs(attempt_id: str, outputs: Sequence[Any]) -> list[dict[str, Any]]:
    if not isinstance(outputs, list | tuple):
        raise InvalidInput(
            f"outputs of attempt {attempt_id} is {outputs!r}; give a list of records"
        )
    return [_check_output(attempt_id, output) for output in outputs]


def _check_output(attempt_id: str, output: Any) -> dict[str, Any]:
    expected = "{'frame': int, 'name': str, 'sha256': 64 hex digits, 'size': int}"
    if not isinstance(output, dict) or set(output) != {
        "frame",
        "name",
        "sha256",
        "size",
    }:
        raise InvalidInput(
            f"output {output!r} of attempt {attempt_id} is invalid; give {expected}"
        )
    frame, name, sha256, size = (output[k] for k in ("frame", "name", "sha256", "size"))
    valid = (
        isinstance(frame, int)
        and not isinstance(frame, bool)
        and isinstance(name, str)
        and bool(name)
        and isinstance(sha256, str)
        and _SHA256.fullmatch(sha256) is not None
        and isinstance(size, int)
        and not isinstance(size, bool)
        and size >= 0
    )
    if not valid:
        raise InvalidInput(
            f"output {output!r} of attempt {attempt_id} is invalid; give {expected}"
        )
    return {"frame": frame, "name": name, "sha256": sha256, "size": size}


async def _has_runnable_tasks(db: aiosqlite.Connection) -> bool:
    rows = await db.execute_fetchall(
        "SELECT 1 FROM tasks WHERE status IN ('queued', 'soft-failed') LIMIT 1"
    )
    return bool(rows)


async def _runs_attempt(db: aiosqlite.Connection, worker_id: str) -> bool:
    rows = await db.execute_fetchall(
        "SELECT 1 FROM attempts AS a JOIN tasks AS t ON t.id = a.task_id"
        " WHERE a.worker_id = ? AND a.status = 'active'"
        " AND t.current_attempt = a.id LIMIT 1",
        (worker_id,),
    )
    return bool(rows)


async def _job_row_exists(db: aiosqlite.Connection, job_id: str) -> bool:
    rows = await db.execute_fetchall("SELECT 1 FROM jobs WHERE id = ?", (job_id,))
    return bool(list(rows))


async def _require_job(db: aiosqlite.Connection, job_id: str) -> str:
    rows = await db.execute_fetchall("SELECT status FROM jobs WHERE id = ?", (job_id,))
    if not rows:
        raise NotFound(
            f"job {job_id!r} not found; `flamenco-p2p status` lists the job ids"
        )
    status: str = next(iter(rows))[0]
    return status


async def _has_tasks(
    db: aiosqlite.Connection, job_id: str, statuses: Sequence[TaskStatus]
) -> bool:
    where = f"job_id = ? AND status IN {_placeholders(len(statuses))}"
    rows = await db.execute_fetchall(
        "SELECT 1 FROM tasks WHERE " + where + " LIMIT 1",  # noqa: S608
        (job_id, *(status.value for status in statuses)),
    )
    return bool(rows)


async def _failed_worker_count(db: aiosqlite.Connection, task_id: str) -> int:
    """Return how many different workers have a failed attempt of the task."""
    rows = await db.execute_fetchall(
        "SELECT COUNT(DISTINCT worker_id) FROM attempts"
        " WHERE task_id = ? AND status = 'failed'",
        (task_id,),
    )
    count: int = next(iter(rows))[0]
    return count


async def _failed_task_count(db: aiosqlite.Connection, job_id: str) -> tuple[int, int]:
    """Return (failed tasks, all tasks) of the job."""
    failed_rows = await db.execute_fetchall(
        "SELECT COUNT(*) FROM tasks WHERE job_id = ? AND status = 'failed'", (job_id,)
    )
    # compile_job numbers tasks from 0 without gaps, and tasks are deleted only
    # with their job, so MAX(idx) + 1 is the task count. It takes one index seek,
    # while COUNT(*) reads every index entry of the job: about 25 ms for 1M tasks
    # (in-memory database, SQLite 3.40, one core of a Xeon VM).
    total_rows = await db.execute_fetchall(
        "SELECT COALESCE(MAX(idx) + 1, 0) FROM tasks WHERE job_id = ?", (job_id,)
    )
    failed: int = next(iter(failed_rows))[0]
    total: int = next(iter(total_rows))[0]
    return failed, total


async def _failed_task_names(db: aiosqlite.Connection, job_id: str, failed: int) -> str:
    """Name the job's first failed tasks with their frames, and count the others."""
    rows = await db.execute_fetchall(
        "SELECT name, frames FROM tasks WHERE job_id = ? AND status = 'failed'"
        " ORDER BY idx LIMIT ?",
        (job_id, MAX_FAILED_TASKS_NAMED),
    )
    names = [_task_label(name, json.loads(frames)) for name, frames in rows]
    if failed > len(names):
        names.append(f"and {failed - len(names)} more")
    return ", ".join(names)


def _task_label(name: str, frames: list[int]) -> str:
    if not frames:
        return f"task {name!r}"
    noun = "frame" if len(frames) == 1 else "frames"
    return f"task {name!r} ({noun} {format_frames(frames)})"


async def _task_counts(
    db: aiosqlite.Connection, job_ids: Sequence[str]
) -> dict[str, dict[str, tuple[int, int]]]:
    """Return {job id: {status: (tasks, frames)}} for the given jobs."""
    if not job_ids:
        return {}
    rows = await db.execute_fetchall(
        "SELECT job_id, status, COUNT(*), SUM(frame_count) FROM tasks"
        " WHERE job_id IN (SELECT value FROM json_each(?))"
        " GROUP BY job_id, status",
        (json.dumps(list(job_ids)),),
    )
    counts: dict[str, dict[str, tuple[int, int]]] = {}
    for job_id, status, tasks, frames in rows:
        counts.setdefault(job_id, {})[status] = (tasks, frames or 0)
    return counts


async def _fetch_task(db: aiosqlite.Connection, task_id: str) -> TaskView:
    rows = await db.execute_fetchall(f"{_TASK_SQL} WHERE id = ?", (task_id,))
    return _task_view(next(iter(rows)))


async def _assignments(
    db: aiosqlite.Connection, where: str, params: tuple[Any, ...]
) -> list[Assignment]:
    rows = await db.execute_fetchall(f"{_ASSIGNMENT_SQL} {where}", params)
    return [
        Assignment(
            job_id=row[0],
            task_id=row[1],
            attempt_id=row[2],
            job_type=row[3],
            frames=tuple(json.loads(row[4])),
            payload=json.loads(row[5]),
            settings=json.loads(row[6]),
            worker_id=row[7],
            submitter_node=row[8],
        )
        for row in rows
    ]


def _job_view(row: Any, counts: dict[str, tuple[int, int]]) -> JobView:
    task_counts = {
        status.value: counts.get(status.value, (0, 0))[0] for status in TaskStatus
    }
    return JobView(
        id=row[0],
        name=row[1],
        status=JobStatus(row[2]),
        priority=row[3],
        job_type=row[4],
        settings=json.loads(row[5]),
        requirements=Requirements.from_dict(json.loads(row[6])),
        created=row[7],
        updated=row[8],
        task_counts=task_counts,
        frames_total=row[9],
        frames_done=counts.get(TaskStatus.COMPLETED.value, (0, 0))[1],
        submitter_node=row[10],
        error=row[11],
    )


def _task_view(row: Any) -> TaskView:
    return TaskView(
        id=row[0],
        job_id=row[1],
        index=row[2],
        name=row[3],
        status=TaskStatus(row[4]),
        frames=tuple(json.loads(row[5])),
        attempt_id=row[6],
        worker_id=row[7],
        attempts=row[8],
        error=row[9],
        outputs=json.loads(row[10]),
        progress=row[11],
        failures=row[12],
    )


def _task_row(job_id: str, task: TaskSpec, now: float) -> tuple[Any, ...]:
    # Ids that grow with the index append to the primary key B-tree in order,
    # which makes inserting a million tasks several times faster than random ids.
    return (
        f"{job_id}-{task.index:07d}",
        job_id,
        task.index,
        task.name,
        TaskStatus.QUEUED.value,
        json.dumps(task.frames),
        len(task.frames),
        _to_json(task.payload),
        now,
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _casefold(text: object) -> object:
    return text.casefold() if isinstance(text, str) else text


def _check_page(limit: int, offset: int) -> None:
    for name, value, low in (("limit", limit, 1), ("offset", offset, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InvalidInput(
                f"{name} is {value!r}; give an integer of at least {low}"
            )


def _stopped_task_status(job_status: str) -> TaskStatus | None:
    """Return what a stopped task of a job in job_status becomes, or None.

    None means nobody asked the job's tasks to stop.
    """
    if job_status in _STOPPING_JOB_STATUSES:
        return TaskStatus.CANCELED
    if job_status == JobStatus.PAUSE_REQUESTED:
        return TaskStatus.PAUSED
    return None


def _placeholders(count: int) -> str:
    """Return "(?, ?, ...)"; SQL text never contains values, only placeholders."""
    return "(" + ", ".join("?" * count) + ")"


def _to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
