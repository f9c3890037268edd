"""Pause, resume, requeue, priority and delete in the farm store, and its pages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_farmstore import StepClock, cpu_worker, sleep_job

from flamenco_p2p.errors import InvalidInput, NotFound, StateError
from flamenco_p2p.jobs.spec import JobSpec, Requirements
from flamenco_p2p.jobs.status import JobStatus, TaskStatus
from flamenco_p2p.store import FarmStore, replica

# The en dash is on purpose: names come back exactly as given.
UNICODE_NAME = "\u00c9pisode 01 \u2013 plan 3"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FarmStore]:
    farm = await FarmStore.open(tmp_path / "farm.sqlite", clock=StepClock())
    yield farm
    await farm.close()


def failing_job(tasks: int, fail: list[int]) -> JobSpec:
    return JobSpec(
        name="breaks",
        job_type="sleep",
        priority=50,
        settings={"tasks": tasks, "duration": 0.0, "fail_tasks": fail},
        requirements=Requirements(),
        submitter_node="node-submit",
    )


async def statuses(store: FarmStore, job_id: str) -> list[str]:
    tasks, _total = await store.task_page(job_id, 1000)
    return [str(task.status) for task in tasks]


async def finish_all(store: FarmStore, worker: str = "cpu-1") -> None:
    while (lease := await store.lease_task(cpu_worker(worker))) is not None:
        await store.complete_attempt(lease.attempt_id, [])


async def test_pause_without_running_tasks_pauses_at_once(store: FarmStore) -> None:
    job_id = await store.submit_job(sleep_job(tasks=3))
    assert await store.pause_job(job_id) == []
    assert (await store.get_job(job_id)).status == JobStatus.PAUSED
    assert await statuses(store, job_id) == ["paused"] * 3
    assert await store.lease_task(cpu_worker()) is None
    # Pausing again is allowed and changes nothing.
    assert await store.pause_job(job_id) == []


async def test_pause_waits_for_running_attempts(store: FarmStore) -> None:
    job_id = await store.submit_job(sleep_job(tasks=3))
    first = await store.lease_task(cpu_worker("w1"))
    second = await store.lease_task(cpu_worker("w2"))
    assert first is not None and second is not None
    stop = await store.pause_job(job_id)
    assert {a.attempt_id for a in stop} == {first.attempt_id, second.attempt_id}
    assert (await store.get_job(job_id)).status == JobStatus.PAUSE_REQUESTED
    # One attempt finishes before it hears of the pause; the other stops.
    await store.complete_attempt(first.attempt_id, [])
    assert (await store.get_job(job_id)).status == JobStatus.PAUSE_REQUESTED
    await store.cancel_attempt_done(second.attempt_id)
    job = await store.get_job(job_id)
    assert job.status == JobStatus.PAUSED
    assert sorted(await statuses(store, job_id)) == ["completed", "paused", "paused"]


async def test_pause_then_lost_worker_pauses_the_task(store: FarmStore) -> None:
    job_id = await store.submit_job(sleep_job(tasks=2))
    lease = await store.lease_task(cpu_worker("w1"))
    assert lease is not None
    await store.pause_job(job_id)
    assert await store.requeue_worker("w1", "gone") == []
    assert (await store.get_job(job_id)).status == JobStatus.PAUSED
    assert await statuses(store, job_id) == ["paused", "paused"]


async def test_resume_runs_the_job_to_the_end(store: FarmStore) -> None:
    job_id = await store.submit_job(sleep_job(tasks=3))
    await store.pause_job(job_id)
    job = await store.resume_job(job_id)
    assert job.status == JobStatus.QUEUED
    await finish_all(store)
    assert (await store.get_job(job_id)).status == JobStatus.COMPLETED


async def test_pause_and_resume_refuse_wrong_states(store: FarmStore) -> None:
    job_id = await store.submit_job(sleep_job(tasks=1))
    with pytest.raises(StateError, match="is queued; only a paused job"):
        await store.resume_job(job_id)
    await finish_all(store)
    with pytest.raises(StateError, match="is completed; only a queued or active"):
        await store.pause_job(job_id)
    with pytest.raises(NotFound):
        await store.pause_job("0" * 32)


async def test_resume_refuses_while_pausing(store: FarmStore) -> None:
    job_id = await store.submit_job(sleep_job(tasks=1))
    assert await store.lease_task(cpu_worker()) is not None
    await store.pause_job(job_id)
    with pytest.raises(StateError, match="wait until its running tasks"):
        await store.resume_job(job_id)


async def test_requeue_all_renders_a_completed_job_again(store: FarmStore) -> None:
    job_id = await store.submit_job(sleep_job(tasks=2))
    await finish_all(store)
    job = await store.requeue_job(job_id, "all")
    assert job.status == JobStatus.QUEUED
    tasks, _total = await store.task_page(job_id, 10)
    assert all(t.status == TaskStatus.QUEUED and t.outputs == [] for t in tasks)
    assert all(t.attempt_id is None and t.progress == 0 for t in tasks)
    await finish_all(store)
    assert (await store.get_job(job_id)).status == JobStatus.COMPLETED


async def test_requeue_failed_takes_only_failed_tasks(store: FarmStore) -> None:
    # Three workers fail the task for good; the other tasks complete.
    job_id = await store.submit_job(failing_job(20, [0]))
    for worker in ("w1", "w2", "w3"):
        lease = await store.lease_task(cpu_worker(worker))
        assert lease is not None and lease.task_id.endswith("0000000")
        await store.fail_attempt(lease.attempt_id, "boom")
    await finish_all(store, "w4")
    job = await store.get_job(job_id)
    assert job.status == JobStatus.FAILED and job.error
    job = await store.requeue_job(job_id, "failed")
    assert job.status == JobStatus.QUEUED
    assert job.error is None
    counts = job.task_counts
    assert counts["queued"] == 1 and counts["completed"] == 19
    task, _attempts = await store.get_task(f"{job_id}-0000000")
    assert task.failures == 0 and task.error is None
    with pytest.raises(StateError, match="no failed tasks"):
        await store.requeue_job(job_id, "failed")


async def test_requeue_refuses_running_jobs_and_bad_scopes(store: FarmStore) -> None:
    job_id = await store.submit_job(sleep_job(tasks=2))
    with pytest.raises(StateError, match="is queued; requeue all tasks of a"):
        await store.requeue_job(job_id, "all")
    with pytest.raises(InvalidInput, match="scope is 'some'"):
        await store.requeue_job(job_id, "some")


async def test_requeue_task_queues_its_job_again(store: FarmStore) -> None:
    job_id = await store.submit_job(sleep_job(tasks=3))
    task_id = f"{job_id}-0000001"
    with pytest.raises(StateError, match="is queued; only a completed"):
        await store.requeue_task(task_id)
    await finish_all(store)
    task = await store.requeue_task(task_id)
    assert task.status == TaskStatus.QUEUED
    assert (await store.get_job(job_id)).status == JobStatus.QUEUED
    assert await statuses(store, job_id) == ["completed", "queued", "completed"]
    lease = await store.lease_task(cpu_worker())
    assert lease is not None and lease.task_id == task_id
    with pytest.raises(NotFound):
        await store.requeue_task("nope")


async def test_priority_changes_the_lease_order(store: FarmStore) -> None:
    low = await store.submit_job(sleep_job("low", tasks=1, priority=10))
    high = await store.submit_job(sleep_job("high", tasks=1, priority=20))
    await store.set_priority(low, 90)
    lease = await store.lease_task(cpu_worker())
    assert lease is not None and lease.job_id == low
    assert (await store.get_job(low)).priority == 90
    for bad in (101, -1, True, "50"):
        with pytest.raises(InvalidInput, match="priority is"):
            await store.set_priority(high, bad)  # type: ignore[arg-type]


async def test_delete_forgets_a_finished_job_everywhere(
    store: FarmStore, tmp_path: Path
) -> None:
    job_id = await store.submit_job(sleep_job(tasks=2))
    with pytest.raises(StateError, match="cancel it first"):
        await store.delete_job(job_id)
    lease = await store.lease_task(cpu_worker())
    assert lease is not None
    await store.add_log(lease.attempt_id, ["line"])
    await store.complete_attempt(lease.attempt_id, [])
    await finish_all(store)
    await store.delete_job(job_id)
    with pytest.raises(NotFound):
        await store.get_job(job_id)
    # A replica that replays the log holds no row of the job either.
    replay = await FarmStore.open(tmp_path / "replica.sqlite")
    try:
        changes = await replica.changes_after(store, 0, limit=10_000)
        await replica.apply_changes(replay, changes)
        for table in ("jobs", "tasks", "attempts", "task_logs"):
            async with replay._reading() as db:
                rows = await db.execute_fetchall(f"SELECT COUNT(*) FROM {table}")
            assert next(iter(rows))[0] == 0, table
    finally:
        await replay.close()


async def test_job_page_filters_and_counts(store: FarmStore) -> None:
    ids = [await store.submit_job(sleep_job(f"shot {i}", tasks=1)) for i in range(5)]
    await store.submit_job(sleep_job(UNICODE_NAME, tasks=1))
    await store.cancel_job(ids[0])
    jobs, total = await store.job_page(2, 0)
    assert total == 6 and [j.name for j in jobs] == [UNICODE_NAME, "shot 4"]
    jobs, total = await store.job_page(10, 4)
    assert total == 6 and [j.name for j in jobs] == ["shot 1", "shot 0"]
    jobs, total = await store.job_page(10, 0, ["canceled"])
    assert total == 1 and jobs[0].id == ids[0]
    jobs, total = await store.job_page(10, 0, (), "ÉPISODE 01")
    assert total == 1
    with pytest.raises(InvalidInput, match="job status 'done' is unknown"):
        await store.job_page(10, 0, ["done"])
    with pytest.raises(InvalidInput, match="limit is 0"):
        await store.job_page(0, 0)


async def test_task_page_of_a_large_job(store: FarmStore) -> None:
    job_id = await store.submit_job(sleep_job(tasks=10_000))
    tasks, total = await store.task_page(job_id, 200, 9_900)
    assert total == 10_000
    assert [t.index for t in tasks] == list(range(9_900, 10_000))
    tasks, total = await store.task_page(job_id, 5, 0, ["completed"])
    assert (tasks, total) == ([], 0)
    with pytest.raises(NotFound):
        await store.task_page("0" * 32, 10)


async def test_get_task_lists_attempts_and_log_pages(store: FarmStore) -> None:
    job_id = await store.submit_job(sleep_job(tasks=1))
    first = await store.lease_task(cpu_worker("w1"))
    assert first is not None
    await store.add_log(first.attempt_id, ["one", "two"])
    await store.fail_attempt(first.attempt_id, "broke")
    second = await store.lease_task(cpu_worker("w2"))
    assert second is not None
    await store.add_log(second.attempt_id, ["three"])
    task, attempts = await store.get_task(first.task_id)
    assert task.status == TaskStatus.ACTIVE
    assert [(a["worker_id"], a["status"]) for a in attempts] == [
        ("w1", "failed"),
        ("w2", "active"),
    ]
    lines = await store.log_lines(first.task_id, tail=2)
    assert [line["line"] for line in lines] == ["two", "three"]
    after = await store.log_lines(first.task_id, after=lines[0]["id"])
    assert [line["line"] for line in after] == ["three"]
    only = await store.log_lines(first.task_id, attempt_id=first.attempt_id)
    assert [line["line"] for line in only] == ["one", "two"]
    with pytest.raises(NotFound):
        await store.log_lines("nope")
    assert [a["id"] for a in attempts] == [first.attempt_id, second.attempt_id]
    assert task.job_id == job_id


async def test_farm_counts_and_current_work(store: FarmStore) -> None:
    job_id = await store.submit_job(sleep_job(tasks=2))
    lease = await store.lease_task(cpu_worker("w1"))
    assert lease is not None
    await store.record_progress(lease.attempt_id, 0.5)
    work = await store.current_work()
    assert work == [
        {
            "worker_id": "w1",
            "job_id": job_id,
            "task_id": lease.task_id,
            "name": "sleep 0",
            "progress": 0.5,
        }
    ]
    counts = await store.farm_counts()
    assert counts["jobs"]["active"] == 1 and counts["tasks"]["queued"] == 1
    assert counts["last_frame"] is None
    await store.complete_attempt(lease.attempt_id, [])
    counts = await store.farm_counts()
    assert counts["last_frame"]["task_id"] == lease.task_id
