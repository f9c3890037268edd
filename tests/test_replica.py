"""Tests for the change log, its replay on a standby, snapshots and partition merges.

Every test uses real SQLite files: a server store writes, a standby store replays.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from flamenco_p2p.errors import InvalidInput
from flamenco_p2p.jobs.spec import JobSpec
from flamenco_p2p.jobs.status import JobStatus, TaskStatus
from flamenco_p2p.store import FarmStore, WorkerInfo, replica
from flamenco_p2p.store.replica import Change, Term, common_seq
from flamenco_p2p.store.schema import REPLICATED_TABLES

SERVER = "a" * 32
UNICODE_NAME = "\u00c9pisode 01 \u2013 plan 3"
OTHER = "b" * 32


class StepClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.123456789

    def __call__(self) -> float:
        self.now += 0.1
        return self.now


def sleep_job(name: str = "shot", tasks: int = 6) -> JobSpec:
    return JobSpec(
        name=name,
        job_type="sleep",
        priority=50,
        settings={"tasks": tasks, "duration": 0.0},
        submitter_node=SERVER,
    )


def worker(worker_id: str = "w1") -> WorkerInfo:
    return WorkerInfo(worker_id, "c" * 32, "lab", 4, (), "4.2.1")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[FarmStore]:
    store = await FarmStore.open(tmp_path / "server.sqlite", clock=StepClock())
    await replica.set_writer(store, 3, SERVER)
    yield store
    await store.close()


@pytest.fixture
async def standby(tmp_path: Path) -> AsyncIterator[FarmStore]:
    store = await FarmStore.open(tmp_path / "standby.sqlite", clock=StepClock())
    yield store
    await store.close()


def table_rows(path: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every replicated table's rows, sorted, read with plain sqlite3."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            table: sorted(
                db.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall(),
                key=repr,
            )
            for table, (_key, columns) in REPLICATED_TABLES.items()
        }
    finally:
        db.close()


async def replicate(source: FarmStore, target: FarmStore) -> int:
    """Pull and apply the whole log in small batches; return the batch count."""
    batches = 0
    while True:
        after = (await replica.position(target)).seq
        changes = await replica.changes_after(source, after, limit=7)
        if not changes:
            return batches
        await replica.apply_changes(target, changes)
        batches += 1


async def run_job(store: FarmStore, spec: JobSpec, fail_first: bool = False) -> str:
    job_id = await store.submit_job(spec)
    first = True
    while (assignment := await store.lease_task(worker())) is not None:
        await store.add_log(assignment.attempt_id, ["Fra:1 Mem:1M", "Saved"])
        await store.record_progress(assignment.attempt_id, 0.5)
        if fail_first and first:
            await store.fail_attempt(assignment.attempt_id, "Blender crashed")
        else:
            await store.complete_attempt(assignment.attempt_id, [])
        first = False
    return job_id


async def test_standby_replay_gives_identical_tables(
    server: FarmStore, standby: FarmStore
) -> None:
    await run_job(server, sleep_job(), fail_first=True)
    await server.upsert_worker(worker("w2"), "awake")
    batches = await replicate(server, standby)
    assert batches > 3
    assert table_rows(standby.path) == table_rows(server.path)
    source_end = await replica.position(server)
    assert await replica.position(standby) == source_end
    assert source_end.epoch == 3
    assert source_end.holder == SERVER


async def test_replay_keeps_every_bit_of_timestamps(
    server: FarmStore, standby: FarmStore
) -> None:
    job_id = await server.submit_job(sleep_job())
    await replicate(server, standby)
    original = await server.get_job(job_id)
    copy = await standby.get_job(job_id)
    assert copy.created == original.created
    assert copy.created != round(copy.created, 6)


async def test_replay_skips_lease_trigger(
    server: FarmStore, standby: FarmStore
) -> None:
    job_id = await server.submit_job(sleep_job(tasks=2))
    await server.lease_task(worker())
    await replicate(server, standby)
    tasks = await standby.list_tasks(job_id)
    # The lease trigger would have counted the attempt a second time.
    assert [t.attempts for t in tasks] == [1, 0]
    assert (await replica.position(standby)).seq == (await replica.position(server)).seq


async def test_standby_that_takes_over_continues_the_log(
    server: FarmStore, standby: FarmStore
) -> None:
    job_id = await server.submit_job(sleep_job(tasks=3))
    assignment = await server.lease_task(worker())
    assert assignment is not None
    await replicate(server, standby)
    before = (await replica.position(standby)).seq
    await replica.set_writer(standby, 4, OTHER)
    await standby.complete_attempt(assignment.attempt_id, [])
    end = await replica.position(standby)
    assert end.seq > before
    assert (end.epoch, end.holder) == (4, OTHER)
    assert (await standby.list_tasks(job_id))[0].status == TaskStatus.COMPLETED


async def test_replay_rejects_gap_or_unknown_table(
    server: FarmStore, standby: FarmStore
) -> None:
    await server.submit_job(sleep_job())
    changes = await replica.changes_after(server, 0)
    with pytest.raises(InvalidInput, match="does not follow"):
        await replica.apply_changes(standby, changes[1:])
    forged = Change(1, 3, SERVER, "sqlite_master", "u", "[1]", "{}")
    with pytest.raises(InvalidInput, match="sqlite_master"):
        await replica.apply_changes(standby, [forged])
    bad_row = Change(1, 3, SERVER, "jobs", "u", '["x"]', '{"id": "x"}')
    with pytest.raises(InvalidInput, match="columns"):
        await replica.apply_changes(standby, [bad_row])
    assert (await replica.position(standby)).seq == 0
    assert await standby.list_jobs() == []


async def test_snapshot_installs_as_a_full_replica(
    server: FarmStore, tmp_path: Path
) -> None:
    await run_job(server, sleep_job())
    target = tmp_path / "snap.sqlite"
    end = await replica.snapshot(server, target)
    assert end == await replica.position(server)
    database = tmp_path / "fresh.sqlite"
    database.write_bytes(b"old")
    replica.install_snapshot(target, database)
    fresh = await FarmStore.open(database)
    try:
        assert await replica.position(fresh) == end
    finally:
        await fresh.close()
    assert table_rows(str(database)) == table_rows(server.path)


def test_common_seq_finds_the_shared_prefix() -> None:
    shared = [Term(1, SERVER, 1, 40)]
    mine = [*shared, Term(2, SERVER, 41, 90)]
    theirs = [*shared, Term(2, OTHER, 41, 60), Term(3, OTHER, 61, 80)]
    assert common_seq(mine, theirs) == 40
    assert common_seq(mine, mine) == 90
    assert common_seq([Term(1, SERVER, 1, 30)], theirs) == 30
    assert common_seq([], theirs) == 0


async def test_prune_keeps_the_newest_entries(server: FarmStore) -> None:
    await run_job(server, sleep_job())
    end = await replica.position(server)
    deleted = await replica.prune(server, keep=5)
    assert deleted == end.seq - 5
    assert await replica.oldest_seq(server) == end.seq - 4
    assert await replica.position(server) == end


async def test_merge_adds_a_job_from_the_other_side(
    server: FarmStore, tmp_path: Path
) -> None:
    other = await FarmStore.open(tmp_path / "other.sqlite", clock=StepClock())
    try:
        await replica.set_writer(other, 4, OTHER)
        job_id = await other.submit_job(sleep_job(name=UNICODE_NAME))
        running = await other.lease_task(worker())
        assert running is not None
        assert await replica.jobs_changed_after(other, 0) == [job_id]
        export = await replica.export_job(other, job_id)
        assert export is not None
        result = await replica.merge_job(server, export)
        again = await replica.merge_job(server, export)
    finally:
        await other.close()
    assert result.job_added
    assert not again.job_added
    merged = await server.get_job(job_id)
    assert merged.name == UNICODE_NAME
    tasks = await server.list_tasks(job_id)
    assert tasks[0].status == TaskStatus.ACTIVE
    assert tasks[0].attempts == 1
    # The running attempt of the other side is current here, so its result counts.
    await server.complete_attempt(running.attempt_id, [])
    assert (await server.list_tasks(job_id))[0].status == TaskStatus.COMPLETED


async def test_merge_shared_job_keeps_both_sides(
    server: FarmStore, tmp_path: Path
) -> None:
    job_id = await server.submit_job(sleep_job(tasks=4))
    split = tmp_path / "split.sqlite"
    await replica.snapshot(server, split)
    other = await FarmStore.open(split, clock=StepClock())
    try:
        await replica.set_writer(other, 4, OTHER)
        # Each side renders a different first task meanwhile.
        mine = await server.lease_task(worker("w1"))
        assert mine is not None
        await server.complete_attempt(mine.attempt_id, [])
        theirs_done = await other.lease_task(worker("w9"))
        theirs_done_2 = await other.lease_task(worker("w8"))
        theirs_running = await other.lease_task(worker("w7"))
        assert theirs_done is not None
        assert theirs_done_2 is not None
        assert theirs_running is not None
        await other.complete_attempt(theirs_done.attempt_id, [])
        await other.complete_attempt(theirs_done_2.attempt_id, [])
        export = await replica.export_job(other, job_id)
        assert export is not None
    finally:
        await other.close()
    result = await replica.merge_job(server, export)
    assert not await server.worker_busy("w9")
    assert await server.worker_busy("w7")
    assert result.tasks_completed == 1
    statuses = [t.status for t in await server.list_tasks(job_id)]
    # Task 1: both sides completed it; task 2 completed there; task 3 ran there.
    assert statuses[:3] == [
        TaskStatus.COMPLETED,
        TaskStatus.COMPLETED,
        TaskStatus.ACTIVE,
    ]
    assert result.tasks_adopted == 1
    await server.complete_attempt(theirs_running.attempt_id, [])
    last = await server.lease_task(worker("w1"))
    assert last is not None
    await server.complete_attempt(last.attempt_id, [])
    assert (await server.get_job(job_id)).status == JobStatus.COMPLETED


async def test_merge_carries_a_cancel_over(server: FarmStore, tmp_path: Path) -> None:
    job_id = await server.submit_job(sleep_job())
    split = tmp_path / "split.sqlite"
    await replica.snapshot(server, split)
    other = await FarmStore.open(split, clock=StepClock())
    try:
        await other.cancel_job(job_id)
        export = await replica.export_job(other, job_id)
        assert export is not None
    finally:
        await other.close()
    result = await replica.merge_job(server, export)
    assert result.canceled
    assert (await server.get_job(job_id)).status == JobStatus.CANCELED


async def test_merge_refuses_malformed_rows(server: FarmStore) -> None:
    with pytest.raises(InvalidInput, match="columns"):
        await replica.merge_job(server, {"job": {"id": "x"}})
    job_id = await server.submit_job(sleep_job())
    export = await replica.export_job(server, job_id)
    assert export is not None
    export["tasks"][0]["job_id"] = "f" * 32
    with pytest.raises(InvalidInput, match="another job"):
        await replica.merge_job(server, export)


async def test_merge_rolls_back_rows_the_server_cannot_read(
    server: FarmStore, tmp_path: Path
) -> None:
    other = await FarmStore.open(tmp_path / "other.sqlite", clock=StepClock())
    try:
        job_id = await other.submit_job(sleep_job())
        export = await replica.export_job(other, job_id)
    finally:
        await other.close()
    assert export is not None
    export["job"]["status"] = "exploded"
    with pytest.raises(InvalidInput, match="exploded"):
        await replica.merge_job(server, export)
    export["job"]["status"] = "queued"
    export["tasks"][0]["frames"] = '"not a list"'
    with pytest.raises(InvalidInput, match="invalid"):
        await replica.merge_job(server, export)
    export["tasks"][0]["frames"] = "[]"
    export["tasks"][0]["name"] = None
    with pytest.raises(InvalidInput, match="NOT NULL"):
        await replica.merge_job(server, export)
    assert await server.list_jobs() == []


async def test_merge_ends_superseded_attempt(server: FarmStore, tmp_path: Path) -> None:
    job_id = await server.submit_job(sleep_job(tasks=1))
    split = tmp_path / "split.sqlite"
    await replica.snapshot(server, split)
    other = await FarmStore.open(split, clock=StepClock())
    try:
        theirs = await other.lease_task(worker("w5"))
        assert theirs is not None
        export = await replica.export_job(other, job_id)
        assert export is not None
    finally:
        await other.close()
    mine = await server.lease_task(worker("w1"))
    assert mine is not None
    await server.complete_attempt(mine.attempt_id, [])
    await replica.merge_job(server, export)
    assert not await server.worker_busy("w5")
    running, stale = await server.running_attempts([theirs.attempt_id, "unknown"])
    assert running == {}
    assert stale == [theirs.attempt_id]
    assert (await server.get_job(job_id)).status == JobStatus.COMPLETED


async def test_lease_unless_busy_skips_busy_worker(
    server: FarmStore,
) -> None:
    await server.submit_job(sleep_job(tasks=3))
    first = await server.lease_task(worker("w1"), unless_busy=True)
    assert first is not None
    assert await server.lease_task(worker("w1"), unless_busy=True) is None
    assert await server.idle_workers(["w1", "w2"]) == ["w2"]
    # Without the flag the store leases as asked (the server always passes it).
    assert await server.lease_task(worker("w1")) is not None
    await server.complete_attempt(first.attempt_id, [])
