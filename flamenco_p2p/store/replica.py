"""Replication of the farm state: the change log, its replay, snapshots and merges.

The server's triggers write every change of a replicated table to the ``changes``
table (see schema.py). A standby pulls that log in order and applies it to its own
database with :func:`apply_changes`. Its copy of the log keeps the server's
sequence numbers, epochs and holders, so that the standby can take over and go on
writing the same log. Two logs share a prefix up to the last entry that has the same
sequence number, epoch and holder in both (:func:`common_seq`). After a partition,
the entries of the losing side past that point name the jobs that must be merged
into the winner (:func:`jobs_changed_after`, :func:`export_job`, :func:`merge_job`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from flamenco_p2p.errors import InvalidInput
from flamenco_p2p.jobs.status import AttemptStatus, JobStatus, TaskStatus
from flamenco_p2p.store.farmstore import (
    _JOB_SQL,
    _TASK_SQL,
    FarmStore,
    _job_view,
    _task_view,
)
from flamenco_p2p.store.schema import REAL_COLUMNS, REPLICATED_TABLES

logger = logging.getLogger(__name__)

MAX_ROW_CHARS = 60_000
"""Maximum length of a row's text in a merge; the codec's string limit is 64 KiB."""

_OPS = ("u", "d")
_FINAL_JOB = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED})
_STOPPING_JOB = frozenset({JobStatus.CANCEL_REQUESTED, JobStatus.CANCELED})
_RUNNABLE_TASK = frozenset({TaskStatus.QUEUED, TaskStatus.SOFT_FAILED})


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change log, with key and row as the JSON text stored."""

    seq: int
    epoch: int
    holder: str
    table: str
    op: str
    key: str
    row: str | None

    def to_dict(self) -> dict[str, Any]:
        """Return the wire form."""
        return {
            "seq": self.seq,
            "epoch": self.epoch,
            "holder": self.holder,
            "table": self.table,
            "op": self.op,
            "key": self.key,
            "row": self.row,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Change:
        """Build from a wire map that the standby checked (roles.replication)."""
        return cls(
            raw["seq"],
            raw["epoch"],
            raw["holder"],
            raw["table"],
            raw["op"],
            raw["key"],
            raw["row"],
        )


@dataclass(frozen=True, slots=True)
class LogPosition:
    """The last entry of a change log; seq 0 for an empty log."""

    seq: int
    epoch: int
    holder: str


@dataclass(frozen=True, slots=True)
class Term:
    """The entries that one server (epoch and holder) wrote, as a range of seqs."""

    epoch: int
    holder: str
    first: int
    last: int

    def to_dict(self) -> dict[str, Any]:
        """Return the wire form."""
        return {
            "epoch": self.epoch,
            "holder": self.holder,
            "first": self.first,
            "last": self.last,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Term:
        """Build from a validated wire map."""
        return cls(raw["epoch"], raw["holder"], raw["first"], raw["last"])


# The log ------------------------------------------------------------------------


async def set_writer(store: FarmStore, epoch: int, holder: str) -> None:
    """Name the server (epoch and node) that the next changes are written by."""
    async with store._transaction() as db:
        await db.execute(
            "UPDATE replication SET epoch = ?, holder = ?, applying = 0",
            (epoch, holder),
        )
    logger.info(
        "farm database %s now written by node %s, epoch %d", store.path, holder, epoch
    )


async def position(store: FarmStore) -> LogPosition:
    """Return the last entry of the store's change log."""
    async with store._reading() as db:
        return await _position(db)


async def _position(db: aiosqlite.Connection) -> LogPosition:
    rows = list(
        await db.execute_fetchall(
            "SELECT seq, epoch, holder FROM changes ORDER BY seq DESC LIMIT 1"
        )
    )
    if not rows:
        return LogPosition(0, 0, "")
    seq, epoch, holder = rows[0]
    return LogPosition(seq, epoch, holder)


async def oldest_seq(store: FarmStore) -> int:
    """Return the oldest seq still in the log, or 0 for an empty log."""
    async with store._reading() as db:
        rows = list(await db.execute_fetchall("SELECT MIN(seq) FROM changes"))
    return int(rows[0][0] or 0)


async def entry_at(store: FarmStore, seq: int) -> tuple[int, str] | None:
    """Return (epoch, holder) of the entry seq, or None when the log lacks it."""
    async with store._reading() as db:
        rows = list(
            await db.execute_fetchall(
                "SELECT epoch, holder FROM changes WHERE seq = ?", (seq,)
            )
        )
    return (rows[0][0], rows[0][1]) if rows else None


async def changes_after(
    store: FarmStore, after: int, limit: int = 500, max_chars: int = 256_000
) -> list[Change]:
    """Return up to limit entries after seq ``after``, at most max_chars of rows."""
    async with store._reading() as db:
        rows = await db.execute_fetchall(
            "SELECT seq, epoch, holder, tbl, op, key, row FROM changes"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
    changes: list[Change] = []
    size = 0
    for row in rows:
        change = Change(*row)
        size += len(change.key) + len(change.row or "")
        if changes and size > max_chars:
            break
        changes.append(change)
    return changes


async def terms(store: FarmStore) -> list[Term]:
    """Return the ranges of the log that each server wrote, oldest first."""
    async with store._reading() as db:
        rows = await db.execute_fetchall(
            "SELECT epoch, holder, MIN(seq), MAX(seq) FROM changes"
            " GROUP BY epoch, holder ORDER BY MIN(seq)"
        )
    return [Term(*row) for row in rows]


def common_seq(mine: list[Term], theirs: list[Term]) -> int:
    """Return the last seq at which two logs hold the same entry.

    One server writes each seq once, so two logs that both have an entry of one
    epoch and holder at a seq have the same entry there, and the same entries
    before it.
    """
    best = 0
    for own in mine:
        for other in theirs:
            if (own.epoch, own.holder) != (other.epoch, other.holder):
                continue
            low = max(own.first, other.first)
            high = min(own.last, other.last)
            if low <= high:
                best = max(best, high)
    return best


async def prune(store: FarmStore, keep: int) -> int:
    """Delete all but the newest ``keep`` entries of the log; return how many."""
    async with store._transaction() as db:
        cursor = await db.execute(
            "DELETE FROM changes WHERE seq <= (SELECT MAX(seq) FROM changes) - ?",
            (keep,),
        )
        deleted = cursor.rowcount
    if deleted:
        logger.debug("pruned %d change log entries of %s", deleted, store.path)
    return deleted


# Replay -------------------------------------------------------------------------


async def apply_changes(store: FarmStore, changes: list[Change]) -> LogPosition:
    """Apply entries of another node's log in one transaction; return the new end.

    Entries must follow the log's last entry without a gap. Raises InvalidInput
    (and applies nothing) for a gap or for an entry that names an unknown table
    or column.
    """
    async with store._transaction() as db:
        current = await _position(db)
        expected = current.seq + 1
        await db.execute("UPDATE replication SET applying = 1")
        for change in changes:
            if change.seq != expected:
                raise InvalidInput(
                    f"change {change.seq} does not follow change {expected - 1};"
                    " pull the log again from the last applied change"
                )
            await _apply_one(db, change)
            expected += 1
        await db.execute("UPDATE replication SET applying = 0")
        return await _position(db)


async def _apply_one(db: aiosqlite.Connection, change: Change) -> None:
    spec = REPLICATED_TABLES.get(change.table)
    if spec is None or change.op not in _OPS:
        raise InvalidInput(
            f"change {change.seq} names table {change.table!r} and operation"
            f" {change.op!r}; expected one of {sorted(REPLICATED_TABLES)} and u or d"
        )
    key_columns, columns = spec
    key = _json_value(change, change.key)
    if not isinstance(key, list) or len(key) != len(key_columns):
        raise InvalidInput(f"change {change.seq} has key {change.key[:80]!r}")
    where = " AND ".join(f"{c} = ?" for c in key_columns)
    if change.op == "d":
        await db.execute(f"DELETE FROM {change.table} WHERE {where}", key)  # noqa: S608
    else:
        row = _row_values(change, columns)
        await _upsert(db, change.table, key_columns, columns, row)
    await db.execute(
        "INSERT INTO changes (seq, epoch, holder, tbl, op, key, row)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            change.seq,
            change.epoch,
            change.holder,
            change.table,
            change.op,
            change.key,
            change.row,
        ),
    )


def _row_values(change: Change, columns: tuple[str, ...]) -> list[Any]:
    raw = _json_value(change, change.row or "null")
    if not isinstance(raw, dict) or set(raw) != set(columns):
        raise InvalidInput(
            f"change {change.seq} of table {change.table} does not carry the columns"
            f" {', '.join(columns)}"
        )
    values = []
    for column in columns:
        value = raw[column]
        if column in REAL_COLUMNS and value is not None:
            value = _real(change, column, value)
        elif not isinstance(value, str | int | float | type(None)):
            raise InvalidInput(
                f"change {change.seq}: column {column} contains a"
                f" {type(value).__name__}"
            )
        values.append(value)
    return values


def _real(change: Change, column: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"change {change.seq}: column {column} is {value!r}, not a number"
        ) from exc


def _json_value(change: Change, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"change {change.seq} contains invalid JSON: {exc}") from exc


async def _upsert(
    db: aiosqlite.Connection,
    table: str,
    key_columns: tuple[str, ...],
    columns: tuple[str, ...],
    values: list[Any],
) -> None:
    # ON CONFLICT DO UPDATE instead of INSERT OR REPLACE: REPLACE deletes the old
    # row first, which would cascade to the rows that reference it.
    names = ", ".join(columns)
    marks = ", ".join("?" * len(columns))
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key_columns)
    conflict = ", ".join(key_columns)
    action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
    await db.execute(
        f"INSERT INTO {table} ({names}) VALUES ({marks})"  # noqa: S608
        f" ON CONFLICT ({conflict}) {action}",
        values,
    )


# Snapshots ----------------------------------------------------------------------


async def snapshot(store: FarmStore, target: Path) -> LogPosition:
    """Write a consistent copy of the store's database to target.

    Uses SQLite's online backup from a second connection, which reads one
    consistent state while the store goes on writing.
    """
    await asyncio.to_thread(_backup, Path(store.path), target)
    db = await aiosqlite.connect(str(target))
    try:
        return await _position(db)
    finally:
        await db.close()


def _backup(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    src = sqlite3.connect(source)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            # A snapshot travels as one file: leave it in rollback-journal mode.
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def install_snapshot(snapshot_file: Path, database: Path) -> None:
    """Replace database (closed by every connection) with a snapshot file."""
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    snapshot_file.replace(database)


# Merge after a partition --------------------------------------------------------


async def jobs_changed_after(store: FarmStore, seq: int) -> list[str]:
    """Return the ids of the jobs that entries after seq created or changed."""
    async with store._reading() as db:
        rows = await db.execute_fetchall(
            "SELECT DISTINCT CASE tbl WHEN 'jobs' THEN json_extract(row, '$.id')"
            " ELSE json_extract(row, '$.job_id') END FROM changes"
            " WHERE seq > ? AND op = 'u' AND tbl IN"
            " ('jobs', 'tasks', 'attempts', 'job_blocklist')",
            (seq,),
        )
    return sorted(str(row[0]) for row in rows if row[0] is not None)


async def export_job(store: FarmStore, job_id: str) -> dict[str, Any] | None:
    """Return a job's rows (job, tasks, attempts, blocklist), or None if unknown."""
    async with store._reading() as db:
        job = await _rows(db, "jobs", "id = ?", job_id)
        if not job:
            return None
        return {
            "job": job[0],
            "tasks": await _rows(db, "tasks", "job_id = ?", job_id),
            "attempts": await _rows(db, "attempts", "job_id = ?", job_id),
            "blocklist": await _rows(db, "job_blocklist", "job_id = ?", job_id),
        }


async def _rows(
    db: aiosqlite.Connection, table: str, where: str, value: Any
) -> list[dict[str, Any]]:
    columns = REPLICATED_TABLES[table][1]
    rows = await db.execute_fetchall(
        f"SELECT {', '.join(columns)} FROM {table} WHERE {where}",  # noqa: S608
        (value,),
    )
    return [dict(zip(columns, row, strict=True)) for row in rows]


@dataclass(frozen=True, slots=True)
class MergeResult:
    """The changes that a merge made to the winner's state."""

    job_id: str
    job_added: bool
    tasks_completed: int
    tasks_adopted: int
    canceled: bool


async def merge_job(store: FarmStore, export: dict[str, Any]) -> MergeResult:
    """Merge one job of a losing partition side into this store.

    A job the store lacks is inserted as it is, its running attempts included, so
    their results are accepted here. For a job both sides know, tasks completed
    on the other side are completed here with their outputs, because the frames
    are at the submitter already. A task that runs there and waits here takes the
    running attempt over. A cancel there cancels the job here. Applying the
    same export twice changes nothing the second time.
    """
    job = _check_row(export.get("job"), "jobs")
    tasks = [_check_row(r, "tasks") for r in _row_list(export, "tasks")]
    attempts = [_check_row(r, "attempts") for r in _row_list(export, "attempts")]
    blocklist = [_check_row(r, "job_blocklist") for r in _row_list(export, "blocklist")]
    job_id = str(job["id"])
    for row in [*tasks, *attempts, *blocklist]:
        if row["job_id"] != job_id:
            raise InvalidInput(f"merge of job {job_id} carries a row of another job")
    try:
        async with store._transaction() as db:
            await db.execute("UPDATE replication SET applying = 2")
            existing = await _rows(db, "jobs", "id = ?", job_id)
            if not existing:
                await _insert_rows(db, "jobs", [job])
                await _insert_rows(db, "tasks", tasks)
                await _insert_rows(db, "attempts", attempts)
                await _insert_rows(db, "job_blocklist", blocklist)
                result = MergeResult(job_id, True, 0, 0, False)
            else:
                result = await _merge_existing(
                    db, store, job, existing[0], tasks, attempts, blocklist
                )
            await _end_superseded_attempts(db, job_id, store._clock())
            await _check_merged(db, job_id)
            await db.execute("UPDATE replication SET applying = 0")
    except sqlite3.Error as exc:
        raise InvalidInput(f"merge of job {job_id} is invalid: {exc}") from exc
    logger.info(
        "merged job %s from the other side of a partition: %s",
        job_id,
        "added"
        if result.job_added
        else f"{result.tasks_completed} tasks completed,"
        f" {result.tasks_adopted} running attempts taken over,"
        f" canceled: {result.canceled}",
    )
    return result


async def _merge_existing(
    db: aiosqlite.Connection,
    store: FarmStore,
    theirs: dict[str, Any],
    ours: dict[str, Any],
    tasks: list[dict[str, Any]],
    attempts: list[dict[str, Any]],
    blocklist: list[dict[str, Any]],
) -> MergeResult:
    job_id = str(ours["id"])
    # A job merged in parts: tasks of a later part are new here.
    await _insert_rows(db, "tasks", tasks, ignore_existing=True)
    await _insert_rows(db, "attempts", attempts, ignore_existing=True)
    await _insert_rows(db, "job_blocklist", blocklist, ignore_existing=True)
    local = {row["id"]: row for row in await _rows(db, "tasks", "job_id = ?", job_id)}
    completed = adopted = 0
    now = store._clock()
    for task in tasks:
        mine = local.get(task["id"])
        if mine is None or mine["status"] == TaskStatus.COMPLETED:
            continue
        if task["status"] == TaskStatus.COMPLETED:
            await db.execute(
                "UPDATE tasks SET status = 'completed', outputs = ?, progress = 1,"
                " error = NULL, current_attempt = ?, worker_id = ?, updated = ?"
                " WHERE id = ?",
                (
                    task["outputs"],
                    task["current_attempt"],
                    task["worker_id"],
                    now,
                    task["id"],
                ),
            )
            completed += 1
        elif task["status"] == TaskStatus.ACTIVE and mine["status"] in _RUNNABLE_TASK:
            await db.execute(
                "UPDATE tasks SET status = 'active', current_attempt = ?,"
                " worker_id = ?, attempts = MAX(attempts, ?), updated = ?"
                " WHERE id = ?",
                (
                    task["current_attempt"],
                    task["worker_id"],
                    task["attempts"],
                    now,
                    task["id"],
                ),
            )
            adopted += 1
    status = JobStatus(ours["status"])
    canceled = theirs["status"] in _STOPPING_JOB and status not in _FINAL_JOB
    if completed or adopted:
        status = await _settle_after_merge(db, store, job_id, status)
    if canceled:
        await db.execute(
            "UPDATE jobs SET status = ?, updated = ? WHERE id = ?",
            (JobStatus.CANCEL_REQUESTED.value, now, job_id),
        )
        await db.execute(
            "UPDATE tasks SET status = 'canceled', updated = ? WHERE job_id = ?"
            " AND status IN ('queued', 'soft-failed', 'paused')",
            (now, job_id),
        )
        await store._settle_job(db, job_id, JobStatus.CANCEL_REQUESTED.value)
    return MergeResult(job_id, False, completed, adopted, canceled)


async def _settle_after_merge(
    db: aiosqlite.Connection, store: FarmStore, job_id: str, status: JobStatus
) -> JobStatus:
    if status == JobStatus.QUEUED:
        await db.execute(
            "UPDATE jobs SET status = 'active', updated = ? WHERE id = ?",
            (store._clock(), job_id),
        )
        status = JobStatus.ACTIVE
    await store._settle_job(db, job_id, status.value)
    rows = list(
        await db.execute_fetchall("SELECT status FROM jobs WHERE id = ?", (job_id,))
    )
    return JobStatus(rows[0][0])


async def _end_superseded_attempts(
    db: aiosqlite.Connection, job_id: str, now: float
) -> None:
    """Mark running attempts of the other side that no task runs here as lost.

    Their managers learn from the server that the attempts are stale, and their
    workers stop them. An attempt left active would keep its worker counted as busy.
    """
    await db.execute(
        "UPDATE attempts SET status = 'lost', ended = ?,"
        " error = 'superseded when a network partition healed'"
        " WHERE job_id = ? AND status = 'active' AND id NOT IN ("
        " SELECT current_attempt FROM tasks WHERE job_id = ? AND status = 'active'"
        " AND current_attempt IS NOT NULL)",
        (now, job_id, job_id),
    )


async def _check_merged(db: aiosqlite.Connection, job_id: str) -> None:
    """Read the merged job back as the server will, so that bad rows roll back."""
    try:
        for row in await db.execute_fetchall(f"{_JOB_SQL} WHERE id = ?", (job_id,)):
            view = _job_view(row, {})
            if not isinstance(view.settings, dict):
                raise InvalidInput("settings is not a map")
        tasks = await db.execute_fetchall(f"{_TASK_SQL} WHERE job_id = ?", (job_id,))
        for row in tasks:
            task = _task_view(row)
            if not all(isinstance(f, int) for f in task.frames):
                raise InvalidInput(f"task {task.id} frames are not integers")
        payloads = await db.execute_fetchall(
            "SELECT payload FROM tasks WHERE job_id = ?", (job_id,)
        )
        if not all(isinstance(json.loads(p), dict) for (p,) in payloads):
            raise InvalidInput("a task payload is not a map")
        statuses = await db.execute_fetchall(
            "SELECT status FROM attempts WHERE job_id = ?", (job_id,)
        )
        for (status,) in statuses:
            AttemptStatus(status)
    except (InvalidInput, ValueError, TypeError, KeyError) as exc:
        raise InvalidInput(f"merge of job {job_id} is invalid: {exc}") from exc


def _row_list(export: dict[str, Any], name: str) -> list[Any]:
    rows = export.get(name, [])
    if not isinstance(rows, list):
        raise InvalidInput(f"merge field {name} is {type(rows).__name__}, not a list")
    return rows


def _check_row(raw: Any, table: str) -> dict[str, Any]:
    columns = REPLICATED_TABLES[table][1]
    if not isinstance(raw, dict) or set(raw) != set(columns):
        raise InvalidInput(
            f"merge row of table {table} must have the columns {', '.join(columns)}"
        )
    for column, value in raw.items():
        if not isinstance(value, str | int | float | type(None)) or (
            isinstance(value, str) and len(value) > MAX_ROW_CHARS
        ):
            raise InvalidInput(f"merge row of table {table}: column {column} invalid")
    return raw


async def _insert_rows(
    db: aiosqlite.Connection,
    table: str,
    rows: list[dict[str, Any]],
    *,
    ignore_existing: bool = False,
) -> None:
    if not rows:
        return
    columns = REPLICATED_TABLES[table][1]
    verb = "INSERT OR IGNORE" if ignore_existing else "INSERT"
    await db.executemany(
        f"{verb} INTO {table} ({', '.join(columns)})"
        f" VALUES ({', '.join('?' * len(columns))})",
        [[row[c] for c in columns] for row in rows],
    )
