"""SQLite schema of the farm store and its migrations.

``PRAGMA user_version`` stores the number of migrations applied. Each migration is
an SQL script that runs in its own transaction together with the version bump, so
a failed migration leaves the database at the previous version. Append new
migrations; never edit one that has shipped.
"""

from __future__ import annotations

import logging
import sqlite3

import aiosqlite

from flamenco_p2p.errors import ConfigError

logger = logging.getLogger(__name__)

_V1 = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    job_type TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    settings TEXT NOT NULL,            -- JSON object
    requirements TEXT NOT NULL,        -- JSON object, Requirements.to_dict()
    gpu_mode TEXT NOT NULL,            -- requirements.gpu, for the lease query
    gpu_mask INTEGER NOT NULL,         -- one bit per accepted GPU type
    min_blender INTEGER NOT NULL,      -- major * 1e6 + minor * 1e3 + patch; 0 = any
    needs_blender INTEGER NOT NULL,    -- 1 when the worker must have Blender
    submitter_node TEXT NOT NULL,
    frames_total INTEGER NOT NULL,
    error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX jobs_by_status ON jobs (status, priority DESC, created);
CREATE INDEX jobs_by_created ON jobs (created DESC);

CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,              -- dispatch order within the job, from 0
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    frames TEXT NOT NULL,              -- JSON array of frame numbers
    frame_count INTEGER NOT NULL,
    payload TEXT NOT NULL,             -- JSON object
    current_attempt TEXT,              -- running attempt, or the one that ended it
    worker_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    progress REAL NOT NULL DEFAULT 0,
    error TEXT,
    outputs TEXT NOT NULL DEFAULT '[]', -- JSON array of output records
    updated REAL NOT NULL,
    UNIQUE (job_id, idx)
);
-- The lease query takes the first runnable task of a job from this index.
CREATE INDEX tasks_runnable ON tasks (job_id, idx)
    WHERE status IN ('queued', 'soft-failed');
-- Task counts per status, and "does this job still have tasks in status X".
CREATE INDEX tasks_by_status ON tasks (job_id, status, frame_count);

CREATE TABLE attempts (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    worker_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    error TEXT,
    started REAL NOT NULL,
    ended REAL
);
CREATE INDEX attempts_by_task ON attempts (task_id);
CREATE INDEX attempts_active_by_worker ON attempts (worker_id) WHERE status = 'active';
CREATE INDEX attempts_active_by_job ON attempts (job_id) WHERE status = 'active';
CREATE INDEX attempts_failed ON attempts (job_id, worker_id) WHERE status = 'failed';

-- Inserting an active attempt is a lease: the task becomes active with this attempt
-- as its current one, and a queued job becomes active. FarmStore.lease_task checks
-- both transitions with flamenco_p2p.jobs.status before it inserts; the trigger
-- makes the lease one atomic statement.
CREATE TRIGGER attempts_lease AFTER INSERT ON attempts WHEN NEW.status = 'active'
BEGIN
    UPDATE tasks SET status = 'active', current_attempt = NEW.id,
        worker_id = NEW.worker_id, attempts = attempts + 1, progress = 0,
        updated = NEW.started
    WHERE id = NEW.task_id;
    UPDATE jobs SET status = 'active', updated = NEW.started
    WHERE id = NEW.job_id AND status = 'queued';
END;

CREATE TABLE task_logs (
    id INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt_id TEXT NOT NULL,
    created REAL NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX task_logs_by_task ON task_logs (task_id, id);

CREATE TABLE workers (
    worker_id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    site TEXT NOT NULL,
    cpu_cores INTEGER NOT NULL,
    gpu_types TEXT NOT NULL,           -- JSON array
    blender_version TEXT,
    tags TEXT NOT NULL,                -- JSON array
    capabilities TEXT NOT NULL,        -- JSON object of all reported fields
    status TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
);

-- Workers that failed too many tasks of a job get no more tasks of that job.
CREATE TABLE job_blocklist (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    worker_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (job_id, worker_id)
) WITHOUT ROWID;
"""

# Replication: every change of a replicated table is also written to ``changes``,
# in commit order, by the triggers below; the server streams that log to standby
# nodes, which apply it with ``replication.applying`` set so that no trigger fires
# twice. REAL columns go through quote(), whose text keeps every bit of a float;
# SQLite's JSON functions round floats to 15 digits.
_V2_TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "jobs": (
        ("id",),
        (
            "id", "name", "job_type", "status", "priority", "settings",
            "requirements", "gpu_mode", "gpu_mask", "min_blender", "needs_blender",
            "submitter_node", "frames_total", "error", "created", "updated",
        ),
    ),
    "tasks": (
        ("id",),
        (
            "id", "job_id", "idx", "name", "status", "frames", "frame_count",
            "payload", "current_attempt", "worker_id", "attempts", "failures",
            "progress", "error", "outputs", "updated",
        ),
    ),
    "attempts": (
        ("id",),
        (
            "id", "task_id", "job_id", "worker_id", "node_id", "status", "progress",
            "error", "started", "ended",
        ),
    ),
    "task_logs": (("id",), ("id", "task_id", "attempt_id", "created", "line")),
    "workers": (
        ("worker_id",),
        (
            "worker_id", "node_id", "site", "cpu_cores", "gpu_types",
            "blender_version", "tags", "capabilities", "status", "first_seen",
            "last_seen",
        ),
    ),
    "job_blocklist": (
        ("job_id", "worker_id"),
        ("job_id", "worker_id", "reason", "created"),
    ),
}  # fmt: skip

REPLICATED_TABLES = _V2_TABLES
"""Replicated tables: (primary key columns, every column), as of the newest schema.

A migration that changes the columns of one of them recreates its triggers from
its own copy of the lists, and points this name at the new lists. The lists of a
shipped migration never change.
"""

REAL_COLUMNS = frozenset(
    {"created", "updated", "progress", "started", "ended", "first_seen", "last_seen"}
)
"""Columns of REAL type in the replicated tables; the change log quotes them."""

# applying is 1 while a standby replays the server's log (nothing is logged or
# leased) and 2 while a merge inserts rows as they are (logged, not leased).
_NOT_REPLAYING = "(SELECT applying FROM replication) != 1"


def _column_value(row: str, column: str) -> str:
    if column in REAL_COLUMNS:
        value = f"{row}.{column}"
        return f"CASE WHEN {value} IS NULL THEN NULL ELSE quote({value}) END"
    return f"{row}.{column}"


def _change_triggers(
    table: str, tables: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
) -> str:
    key_columns, columns = tables[table]
    statements = []
    for event, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
        key = "json_array(" + ", ".join(f"{row}.{c}" for c in key_columns) + ")"
        if event == "DELETE":
            op, body = "'d'", "NULL"
        else:
            pairs = ", ".join(f"'{c}', {_column_value(row, c)}" for c in columns)
            op, body = "'u'", f"json_object({pairs})"
        # Table and column names come from the constants above, never from input.
        statements.append(
            f"CREATE TRIGGER {table}_log_{event.lower()} AFTER {event} ON {table}\n"
            f"WHEN {_NOT_REPLAYING}\nBEGIN\n"
            "    INSERT INTO changes (epoch, holder, tbl, op, key, row)\n"
            f"    SELECT epoch, holder, '{table}', {op}, {key}, {body}\n"
            "    FROM replication;\nEND;"
        )
    return "\n".join(statements)


_V2 = (
    """
-- The change log. seq orders every change; epoch and holder name the server that
-- made it, so that two logs can be compared after a takeover or a partition.
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    epoch INTEGER NOT NULL,
    holder TEXT NOT NULL,
    tbl TEXT NOT NULL,
    op TEXT NOT NULL,                  -- 'u': insert or update, 'd': delete
    key TEXT NOT NULL,                 -- JSON array of the primary key values
    row TEXT                           -- JSON object of the row, for 'u'
);

-- One row: the server epoch and node that writes changes now, and what writes
-- rows as they are: 0 nobody, 1 a standby's replay (no trigger logs or leases),
-- 2 a merge (rows are logged, but inserting an attempt leases nothing).
CREATE TABLE replication (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL DEFAULT 0,
    holder TEXT NOT NULL DEFAULT '',
    applying INTEGER NOT NULL DEFAULT 0
);
INSERT INTO replication (id) VALUES (1);

DROP TRIGGER attempts_lease;
CREATE TRIGGER attempts_lease AFTER INSERT ON attempts
WHEN NEW.status = 'active' AND (SELECT applying FROM replication) = 0
BEGIN
    UPDATE tasks SET status = 'active', current_attempt = NEW.id,
        worker_id = NEW.worker_id, attempts = attempts + 1, progress = 0,
        updated = NEW.started
    WHERE id = NEW.task_id;
    UPDATE jobs SET status = 'active', updated = NEW.started
    WHERE id = NEW.job_id AND status = 'queued';
END;
"""
    + "\n".join(_change_triggers(table, _V2_TABLES) for table in _V2_TABLES)
    + "\n"
)

MIGRATIONS: tuple[str, ...] = (_V1, _V2)
"""SQL scripts; migration i (from 0) brings the schema to version i + 1."""

SCHEMA_VERSION = len(MIGRATIONS)
"""Schema version that this code reads and writes."""


async def schema_version(db: aiosqlite.Connection) -> int:
    """Return the database's ``PRAGMA user_version``."""
    rows = await db.execute_fetchall("PRAGMA user_version")
    version: int = next(iter(rows))[0]
    return version


async def migrate(db: aiosqlite.Connection, path: str) -> int:
    """Apply the missing migrations in order and return the resulting version.

    db must be in autocommit mode (isolation_level=None). Raises ConfigError when
    the database was written by a newer flamenco-p2p.
    """
    current = await schema_version(db)
    if current > SCHEMA_VERSION:
        raise ConfigError(
            f"farm database {path} has schema version {current}, but this "
            f"flamenco-p2p only knows versions up to {SCHEMA_VERSION}; upgrade "
            "flamenco-p2p or point it at another state directory"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        script = MIGRATIONS[version - 1]
        logger.info("migrating farm database %s to schema version %d", path, version)
        try:
            await db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;"
            )
        except sqlite3.Error:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            logger.exception(
                "migration of farm database %s to version %d failed", path, version
            )
            raise
    return SCHEMA_VERSION
