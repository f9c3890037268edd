"""Failed-task policy of the farm store: retries, hard failures, blocklist, job end.

Every test runs on a real SQLite file with a clock that moves only when the test
advances it, so the time rules need no sleeping.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from flamenco_p2p.errors import InvalidInput
from flamenco_p2p.jobs.spec import JobSpec, Requirements
from flamenco_p2p.jobs.status import JobStatus, TaskStatus
from flamenco_p2p.store import FarmStore, WorkerInfo
from flamenco_p2p.store.farmstore import Assignment

SHA = "ab" * 32


class ManualClock:
    """A clock that does not move until the test advances it."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "farm.sqlite"


@pytest.fixture
async def store(db_path: Path, clock: ManualClock) -> AsyncIterator[FarmStore]:
    farm = await FarmStore.open(db_path, clock=clock)
    yield farm
    await farm.close()


def worker(worker_id: str) -> WorkerInfo:
    return WorkerInfo(worker_id, "node-" + worker_id, "site-a", 4, (), "4.2.1")


def sleep_job(tasks: int, name: str = "sleepy", priority: int = 50) -> JobSpec:
    return JobSpec(
        name=name,
        job_type="sleep",
        priority=priority,
        settings={"tasks": tasks, "duration": 0.0},
        requirements=Requirements(),
        submitter_node="node-submit",
    )


def render_job(frames: str, chunk_size: int) -> JobSpec:
    return JobSpec(
        name="shot",
        job_type="blender-render",
        priority=50,
        settings={
            "blend_sha256": SHA,
            "blend_size": 100,
            "blend_name": "shot.blend",
            "frames": frames,
            "chunk_size": chunk_size,
            "output_dir": "/proj/render",
            "output_name": "shot_####",
        },
        requirements=Requirements(),
        submitter_node="node-submit",
    )


def outputs(assignment: Assignment) -> list[dict[str, Any]]:
    return [
        {"frame": frame, "name": f"shot_{frame:04d}.png", "sha256": SHA, "size": 10}
        for frame in assignment.frames
    ]


async def lease(farm: FarmStore, worker_id: str) -> Assignment:
    assignment = await farm.lease_task(worker(worker_id))
    assert assignment is not None, f"worker {worker_id} got no task"
    return assignment


async def task_status(farm: FarmStore, job_id: str, task_id: str) -> TaskStatus:
    tasks = {task.id: task for task in await farm.list_tasks(job_id)}
    return tasks[task_id].status


def blocklist_rows(db_path: Path) -> list[Any]:
    with sqlite3.connect(db_path) as other:
        return other.execute(
            "SELECT job_id, worker_id FROM job_blocklist ORDER BY worker_id"
        ).fetchall()


# Retrying on another worker ---------------------------------------------------


async def test_failed_task_leased_to_other_worker(store: FarmStore) -> None:
    job_id = await store.submit_job(sleep_job(tasks=2))
    first = await lease(store, "a")
    task = await store.fail_attempt(first.attempt_id, "Blender crashed")
    assert task.status == TaskStatus.SOFT_FAILED
    assert task.failures == 1

    # The worker that failed task 0 gets task 1, although task 0 comes first.
    second = await lease(store, "a")
    assert second.task_id != first.task_id
    assert await store.lease_task(worker("a")) is None

    retry = await lease(store, "b")
    assert retry.task_id == first.task_id
    assert retry.job_id == job_id


async def test_failing_worker_gets_next_job(store: FarmStore) -> None:
    urgent = await store.submit_job(sleep_job(tasks=1, name="urgent", priority=90))
    later = await store.submit_job(sleep_job(tasks=1, name="later", priority=10))
    first = await lease(store, "a")
    assert first.job_id == urgent
    await store.fail_attempt(first.attempt_id, "out of memory")

    other = await lease(store, "a")
    assert other.job_id == later
    retry = await lease(store, "b")
    assert retry.job_id == urgent


async def test_same_worker_retries_after_wait(
    store: FarmStore, clock: ManualClock
) -> None:
    await store.submit_job(sleep_job(tasks=1))
    first = await lease(store, "a")
    await store.fail_attempt(first.attempt_id, "driver reset")

    clock.advance(59.9)
    assert await store.lease_task(worker("a")) is None
    clock.advance(0.1)
    retry = await lease(store, "a")
    assert retry.task_id == first.task_id
    assert retry.attempt_id != first.attempt_id


async def test_retry_wait_counts_from_last_failure(
    store: FarmStore, clock: ManualClock
) -> None:
    await store.submit_job(sleep_job(tasks=1))
    first = await lease(store, "a")
    await store.fail_attempt(first.attempt_id, "crash on a")
    clock.advance(30)
    second = await lease(store, "b")
    await store.fail_attempt(second.attempt_id, "crash on b")

    # 60 s after a's failure, but only 30 s after the task's last failure.
    clock.advance(30)
    assert await store.lease_task(worker("a")) is None
    assert await store.lease_task(worker("b")) is None
    clock.advance(30)
    retry = await lease(store, "a")
    assert retry.task_id == first.task_id


async def test_lost_attempt_allows_same_worker(store: FarmStore) -> None:
    await store.submit_job(sleep_job(tasks=1))
    first = await lease(store, "a")
    assert await store.requeue_worker("a", "heartbeat timed out") == [first.task_id]
    again = await lease(store, "a")
    assert again.task_id == first.task_id


async def test_retry_same_worker_after_option(
    db_path: Path, clock: ManualClock
) -> None:
    farm = await FarmStore.open(db_path, clock=clock, retry_same_worker_after=0)
    try:
        await farm.submit_job(sleep_job(tasks=1))
        first = await lease(farm, "a")
        await farm.fail_attempt(first.attempt_id, "crash")
        retry = await lease(farm, "a")
        assert retry.task_id == first.task_id
    finally:
        await farm.close()


# Hard failure of a task -------------------------------------------------------


async def test_task_fails_on_third_worker(store: FarmStore) -> None:
    job_id = await store.submit_job(sleep_job(tasks=20))
    failing_task = None
    for number, worker_id in enumerate(("a", "b", "c"), start=1):
        assignment = await lease(store, worker_id)
        failing_task = failing_task or assignment.task_id
        assert assignment.task_id == failing_task
        task = await store.fail_attempt(assignment.attempt_id, f"crash {number}")
        assert task.failures == number
        assert task.error == f"crash {number}"
        if number < 3:
            assert task.status == TaskStatus.SOFT_FAILED
    assert task.status == TaskStatus.FAILED
    job = await store.get_job(job_id)
    assert job.status == JobStatus.ACTIVE
    assert job.task_counts["failed"] == 1
    assert job.task_counts["queued"] == 19


async def test_task_fails_after_max_attempts(
    store: FarmStore, clock: ManualClock
) -> None:
    job_id = await store.submit_job(sleep_job(tasks=20))
    failing_task = None
    for number in range(1, 7):
        worker_id = "a" if number % 2 else "b"
        assignment = await lease(store, worker_id)
        failing_task = failing_task or assignment.task_id
        assert assignment.task_id == failing_task, f"attempt {number}"
        task = await store.fail_attempt(assignment.attempt_id, f"crash {number}")
        assert task.failures == number
        if number < 6:
            assert task.status == TaskStatus.SOFT_FAILED, f"attempt {number}"
        clock.advance(60)
    assert task.status == TaskStatus.FAILED
    assert failing_task is not None
    assert await task_status(store, job_id, failing_task) == TaskStatus.FAILED


async def test_max_attempts_option(db_path: Path, clock: ManualClock) -> None:
    farm = await FarmStore.open(db_path, clock=clock, max_attempts=2)
    try:
        await farm.submit_job(sleep_job(tasks=20))
        first = await lease(farm, "a")
        task = await farm.fail_attempt(first.attempt_id, "crash 1")
        assert task.status == TaskStatus.SOFT_FAILED
        second = await lease(farm, "b")
        assert second.task_id == first.task_id
        task = await farm.fail_attempt(second.attempt_id, "crash 2")
        assert task.status == TaskStatus.FAILED
    finally:
        await farm.close()


async def test_task_fail_workers_option(db_path: Path, clock: ManualClock) -> None:
    farm = await FarmStore.open(db_path, clock=clock, task_fail_workers=1)
    try:
        await farm.submit_job(sleep_job(tasks=20))
        first = await lease(farm, "a")
        task = await farm.fail_attempt(first.attempt_id, "crash")
        assert task.status == TaskStatus.FAILED
    finally:
        await farm.close()


# Blocklist --------------------------------------------------------------------


async def test_blocklist_after_three_failed_tasks(
    store: FarmStore, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = await store.submit_job(sleep_job(tasks=10))
    failed_tasks = []
    with caplog.at_level(logging.WARNING, logger="flamenco_p2p.store.farmstore"):
        for number in range(3):
            assert await store.job_blocklist(job_id) == []
            assignment = await lease(store, "bad")
            failed_tasks.append(assignment.task_id)
            await store.fail_attempt(assignment.attempt_id, f"crash {number}")
    assert len(set(failed_tasks)) == 3
    assert await store.job_blocklist(job_id) == ["bad"]
    assert await store.lease_task(worker("bad")) is None
    good = await lease(store, "good")
    assert good.job_id == job_id
    logged = [r.getMessage() for r in caplog.records if "blocklisted" in r.message]
    assert len(logged) == 1
    assert job_id in logged[0]
    assert "bad" in logged[0]


async def test_blocklist_ignores_repeats_of_one_task(
    store: FarmStore, clock: ManualClock
) -> None:
    job_id = await store.submit_job(sleep_job(tasks=1))
    for number in range(3):
        assignment = await lease(store, "flaky")
        task = await store.fail_attempt(assignment.attempt_id, f"crash {number}")
        assert task.status == TaskStatus.SOFT_FAILED
        clock.advance(60)
    assert await store.job_blocklist(job_id) == []
    assert await store.lease_task(worker("flaky")) is not None


async def test_blocklist_only_for_that_job(store: FarmStore) -> None:
    job_id = await store.submit_job(sleep_job(tasks=5, priority=90))
    for number in range(3):
        assignment = await lease(store, "bad")
        assert assignment.job_id == job_id
        await store.fail_attempt(assignment.attempt_id, f"crash {number}")
    other_job = await store.submit_job(sleep_job(tasks=1, name="other", priority=1))
    elsewhere = await lease(store, "bad")
    assert elsewhere.job_id == other_job


async def test_blocklist_forgotten_after_timeout(
    store: FarmStore,
    clock: ManualClock,
    db_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job_id = await store.submit_job(sleep_job(tasks=10))
    for number in range(3):
        assignment = await lease(store, "bad")
        await store.fail_attempt(assignment.attempt_id, f"crash {number}")
    assert await store.job_blocklist(job_id) == ["bad"]

    clock.advance(599)
    assert await store.lease_task(worker("bad")) is None
    assert await store.job_blocklist(job_id) == ["bad"]

    clock.advance(1)
    assert await store.job_blocklist(job_id) == []
    back = await lease(store, "bad")
    assert back.job_id == job_id
    # The lease ignores the expired entry; the next failure of the job deletes it.
    assert blocklist_rows(db_path) == [(job_id, "bad")]
    other = await lease(store, "other")
    with caplog.at_level(logging.INFO, logger="flamenco_p2p.store.farmstore"):
        await store.fail_attempt(other.attempt_id, "unrelated crash")
    assert blocklist_rows(db_path) == []
    forgot = [r.getMessage() for r in caplog.records if "forgot" in r.message]
    assert len(forgot) == 1
    assert job_id in forgot[0]
    assert "bad" in forgot[0]

    # Earlier failures still count, so one more failure blocklists it again.
    await store.fail_attempt(back.attempt_id, "crash again")
    assert await store.job_blocklist(job_id) == ["bad"]
    assert await store.lease_task(worker("bad")) is None


async def test_blocklist_forget_after_option(db_path: Path, clock: ManualClock) -> None:
    farm = await FarmStore.open(db_path, clock=clock, blocklist_forget_after=30)
    try:
        job_id = await farm.submit_job(sleep_job(tasks=10))
        for number in range(3):
            assignment = await lease(farm, "bad")
            await farm.fail_attempt(assignment.attempt_id, f"crash {number}")
        assert await farm.lease_task(worker("bad")) is None
        clock.advance(30)
        back = await lease(farm, "bad")
        assert back.job_id == job_id
    finally:
        await farm.close()


# Job failure ------------------------------------------------------------------


async def fail_on_three_workers(farm: FarmStore, error: str) -> str:
    """Fail the first runnable task on workers x, y and z; return its id."""
    task_id = None
    for worker_id in ("x", "y", "z"):
        assignment = await lease(farm, worker_id)
        task_id = task_id or assignment.task_id
        assert assignment.task_id == task_id
        await farm.fail_attempt(assignment.attempt_id, error)
    assert task_id is not None
    return task_id


async def test_job_fails_at_ratio(store: FarmStore) -> None:
    job_id = await store.submit_job(render_job(frames="1-20", chunk_size=2))
    running = await lease(store, "busy")
    assert running.frames == (1, 2)
    failing = await fail_on_three_workers(store, "segfault in Cycles")

    job = await store.get_job(job_id)
    assert job.status == JobStatus.FAILED
    assert job.error is not None
    assert "1 of 10 tasks failed" in job.error
    assert "task 'render 3-4' (frames 3-4)" in job.error
    assert "segfault in Cycles" in job.error
    assert job.task_counts["failed"] == 1
    assert job.task_counts["canceled"] == 8
    assert job.task_counts["active"] == 1
    assert await task_status(store, job_id, failing) == TaskStatus.FAILED
    assert await store.lease_task(worker("fresh")) is None

    # An attempt that still runs when its job fails may finish.
    done = await store.complete_attempt(running.attempt_id, outputs(running))
    assert done.status == TaskStatus.COMPLETED
    assert (await store.get_job(job_id)).status == JobStatus.FAILED


async def test_job_below_ratio_ends_failed(store: FarmStore) -> None:
    job_id = await store.submit_job(render_job(frames="1-40", chunk_size=2))
    failing = await fail_on_three_workers(store, "broken output")
    job = await store.get_job(job_id)
    assert job.status == JobStatus.ACTIVE
    assert job.task_counts["failed"] == 1

    for _ in range(19):
        assignment = await lease(store, "good")
        assert assignment.task_id != failing
        await store.complete_attempt(assignment.attempt_id, outputs(assignment))
    assert await store.lease_task(worker("good")) is None

    job = await store.get_job(job_id)
    assert job.status == JobStatus.FAILED
    assert job.task_counts["completed"] == 19
    assert job.task_counts["failed"] == 1
    assert job.frames_done == 38
    assert job.error is not None
    assert "1 of 20 tasks failed" in job.error
    assert "task 'render 1-2' (frames 1-2)" in job.error


async def test_job_ends_failed_after_last_failure(
    db_path: Path, clock: ManualClock
) -> None:
    farm = await FarmStore.open(db_path, clock=clock, max_attempts=1)
    try:
        job_id = await farm.submit_job(sleep_job(tasks=20))
        for _ in range(19):
            assignment = await lease(farm, "good")
            await farm.complete_attempt(assignment.attempt_id, [])
        last = await lease(farm, "bad")
        await farm.fail_attempt(last.attempt_id, "crash")
        job = await farm.get_job(job_id)
        assert job.status == JobStatus.FAILED
        assert job.error is not None
        assert "task 'sleep 19'" in job.error
    finally:
        await farm.close()


async def test_job_fails_at_exact_ratio(db_path: Path, clock: ManualClock) -> None:
    # 3 / 30 must reach 0.1 although 0.1 * 30 is 3.0000000000000004 in floats.
    farm = await FarmStore.open(db_path, clock=clock, max_attempts=1)
    try:
        job_id = await farm.submit_job(sleep_job(tasks=30))
        for number in range(1, 4):
            assignment = await lease(farm, f"w{number}")
            await farm.fail_attempt(assignment.attempt_id, f"crash {number}")
            job = await farm.get_job(job_id)
            expected = JobStatus.FAILED if number == 3 else JobStatus.ACTIVE
            assert job.status == expected, f"after {number} failed tasks"
        assert job.error is not None
        assert "3 of 30 tasks failed" in job.error
        assert "'sleep 0', task 'sleep 1', task 'sleep 2'" in job.error
    finally:
        await farm.close()


async def test_job_error_names_ten_tasks(db_path: Path, clock: ManualClock) -> None:
    farm = await FarmStore.open(
        db_path, clock=clock, max_attempts=1, job_fail_ratio=1.0
    )
    try:
        job_id = await farm.submit_job(sleep_job(tasks=12))
        for number in range(12):
            assignment = await lease(farm, f"w{number}")
            if number < 11:
                await farm.fail_attempt(assignment.attempt_id, "crash")
            else:
                await farm.complete_attempt(assignment.attempt_id, [])
        job = await farm.get_job(job_id)
        assert job.status == JobStatus.FAILED
        assert job.error is not None
        assert "11 of 12 tasks failed" in job.error
        assert "task 'sleep 9'" in job.error
        assert "task 'sleep 10'" not in job.error
        assert job.error.endswith("and 1 more")
    finally:
        await farm.close()


async def test_job_fail_ratio_zero(db_path: Path, clock: ManualClock) -> None:
    farm = await FarmStore.open(
        db_path, clock=clock, max_attempts=1, job_fail_ratio=0.0
    )
    try:
        job_id = await farm.submit_job(sleep_job(tasks=100))
        assignment = await lease(farm, "a")
        await farm.fail_attempt(assignment.attempt_id, "crash")
        job = await farm.get_job(job_id)
        assert job.status == JobStatus.FAILED
        assert job.task_counts["canceled"] == 99
    finally:
        await farm.close()


async def test_job_with_soft_failure_completes(store: FarmStore) -> None:
    job_id = await store.submit_job(sleep_job(tasks=2))
    first = await lease(store, "a")
    await store.fail_attempt(first.attempt_id, "transient crash")
    for worker_id in ("b", "c"):
        assignment = await lease(store, worker_id)
        await store.complete_attempt(assignment.attempt_id, [])
    job = await store.get_job(job_id)
    assert job.status == JobStatus.COMPLETED
    assert job.error is None


# Options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("task_fail_workers", 0),
        ("max_attempts", True),
        ("blocklist_threshold", 1.5),
        ("retry_same_worker_after", -1),
        ("retry_same_worker_after", float("inf")),
        ("blocklist_forget_after", "600"),
        ("job_fail_ratio", 1.5),
        ("job_fail_ratio", float("nan")),
    ],
)
async def test_open_rejects_bad_failure_option(
    db_path: Path, option: str, value: Any
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await FarmStore.open(db_path, **{option: value})
    message = str(caught.value)
    assert option in message
    assert repr(value) in message
    assert "give" in message
