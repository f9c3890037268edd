"""Tests for the job, task and attempt state machines."""

from __future__ import annotations

import itertools

import pytest

from flamenco_p2p.errors import InvalidTransition, StateError
from flamenco_p2p.jobs.status import (
    ATTEMPT_TRANSITIONS,
    FINAL_JOB_STATUSES,
    JOB_TRANSITIONS,
    TASK_TRANSITIONS,
    AttemptStatus,
    JobStatus,
    TaskStatus,
    check_attempt_transition,
    check_job_transition,
    check_task_transition,
)

J = JobStatus
T = TaskStatus


def test_job_status_values_match_flamenco() -> None:
    assert {status.value for status in JobStatus} == {
        "queued",
        "active",
        "paused",
        "pause-requested",
        "completed",
        "failed",
        "cancel-requested",
        "canceled",
        "requeueing",
    }


def test_task_status_values_match_flamenco() -> None:
    assert {status.value for status in TaskStatus} == {
        "queued",
        "active",
        "completed",
        "soft-failed",
        "failed",
        "canceled",
        "paused",
    }


def test_attempt_status_values() -> None:
    assert {status.value for status in AttemptStatus} == {
        "active",
        "completed",
        "failed",
        "canceled",
        "lost",
    }


@pytest.mark.parametrize(("current", "new"), sorted(JOB_TRANSITIONS))
def test_check_job_transition_allows_pair(current: JobStatus, new: JobStatus) -> None:
    assert check_job_transition("job-1", current, new) is new
    assert check_job_transition("job-1", current.value, new.value) is new


@pytest.mark.parametrize(("current", "new"), sorted(TASK_TRANSITIONS))
def test_check_task_transition_allows_pair(
    current: TaskStatus, new: TaskStatus
) -> None:
    assert check_task_transition("task-1", current, new) is new


@pytest.mark.parametrize(("current", "new"), sorted(ATTEMPT_TRANSITIONS))
def test_check_attempt_transition_allows_pair(
    current: AttemptStatus, new: AttemptStatus
) -> None:
    assert check_attempt_transition("attempt-1", current, new) is new


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (J.QUEUED, J.ACTIVE),
        (J.ACTIVE, J.COMPLETED),
        (J.ACTIVE, J.FAILED),
        (J.ACTIVE, J.CANCEL_REQUESTED),
        (J.ACTIVE, J.PAUSE_REQUESTED),
        (J.CANCEL_REQUESTED, J.CANCELED),
        (J.PAUSE_REQUESTED, J.PAUSED),
        (J.FAILED, J.REQUEUEING),
        (J.CANCELED, J.REQUEUEING),
        (J.COMPLETED, J.REQUEUEING),
        (J.REQUEUEING, J.QUEUED),
    ],
)
def test_job_transitions_contain_flamenco_flow(
    current: JobStatus, new: JobStatus
) -> None:
    assert (current, new) in JOB_TRANSITIONS


def test_job_transitions_cancel_from_every_unfinished_status() -> None:
    unfinished = set(JobStatus) - FINAL_JOB_STATUSES - {J.CANCEL_REQUESTED}
    for status in unfinished:
        assert (status, J.CANCEL_REQUESTED) in JOB_TRANSITIONS, status
    for status in FINAL_JOB_STATUSES:
        assert (status, J.CANCEL_REQUESTED) not in JOB_TRANSITIONS, status


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (T.QUEUED, T.ACTIVE),
        (T.ACTIVE, T.COMPLETED),
        (T.ACTIVE, T.SOFT_FAILED),
        (T.ACTIVE, T.FAILED),
        (T.ACTIVE, T.CANCELED),
        (T.ACTIVE, T.QUEUED),
        (T.SOFT_FAILED, T.QUEUED),
        (T.SOFT_FAILED, T.ACTIVE),
        (T.QUEUED, T.CANCELED),
        (T.COMPLETED, T.QUEUED),
        (T.FAILED, T.QUEUED),
        (T.CANCELED, T.QUEUED),
    ],
)
def test_task_transitions_contain_flamenco_flow(
    current: TaskStatus, new: TaskStatus
) -> None:
    assert (current, new) in TASK_TRANSITIONS


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (J.COMPLETED, J.ACTIVE),
        (J.COMPLETED, J.QUEUED),
        (J.CANCELED, J.ACTIVE),
        (J.CANCELED, J.QUEUED),
        (J.FAILED, J.ACTIVE),
        (J.CANCEL_REQUESTED, J.ACTIVE),
        (J.CANCEL_REQUESTED, J.QUEUED),
        (J.CANCEL_REQUESTED, J.COMPLETED),
        (J.QUEUED, J.COMPLETED),
        (J.QUEUED, J.FAILED),
        (J.REQUEUEING, J.ACTIVE),
        (J.COMPLETED, J.CANCEL_REQUESTED),
    ],
)
def test_check_job_transition_rejects_pair(current: JobStatus, new: JobStatus) -> None:
    with pytest.raises(InvalidTransition) as caught:
        check_job_transition("job-7", current, new)
    error = caught.value
    assert error.kind == "job"
    assert error.item_id == "job-7"
    assert error.current == current
    assert error.requested == new
    assert "job-7" in str(error)
    assert repr(current.value) in str(error)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (T.COMPLETED, T.ACTIVE),
        (T.COMPLETED, T.FAILED),
        (T.CANCELED, T.ACTIVE),
        (T.CANCELED, T.COMPLETED),
        (T.FAILED, T.ACTIVE),
        (T.FAILED, T.COMPLETED),
        (T.QUEUED, T.COMPLETED),
        (T.QUEUED, T.SOFT_FAILED),
        (T.PAUSED, T.ACTIVE),
    ],
)
def test_check_task_transition_rejects_pair(
    current: TaskStatus, new: TaskStatus
) -> None:
    with pytest.raises(InvalidTransition) as caught:
        check_task_transition("task-3", current, new)
    assert caught.value.kind == "task"
    assert "task-3" in str(caught.value)


def test_check_transition_rejects_same_status() -> None:
    for job_status in JobStatus:
        with pytest.raises(InvalidTransition):
            check_job_transition("job-1", job_status, job_status)
    for task_status in TaskStatus:
        with pytest.raises(InvalidTransition):
            check_task_transition("task-1", task_status, task_status)


def test_check_attempt_transition_ends_once() -> None:
    ended = [status for status in AttemptStatus if status != AttemptStatus.ACTIVE]
    for current, new in itertools.product(ended, AttemptStatus):
        with pytest.raises(InvalidTransition):
            check_attempt_transition("attempt-1", current, new)


def test_check_transition_rejects_unknown_status() -> None:
    with pytest.raises(InvalidTransition):
        check_job_transition("job-1", "queued", "borked")
    with pytest.raises(InvalidTransition):
        check_task_transition("task-1", "borked", "active")


def test_invalid_transition_is_state_error() -> None:
    with pytest.raises(StateError):
        check_job_transition("job-1", J.COMPLETED, J.ACTIVE)


def test_transition_tables_only_use_known_statuses() -> None:
    for current, new in JOB_TRANSITIONS:
        assert isinstance(current, JobStatus)
        assert isinstance(new, JobStatus)
        assert current != new
    for task_current, task_new in TASK_TRANSITIONS:
        assert isinstance(task_current, TaskStatus)
        assert isinstance(task_new, TaskStatus)
        assert task_current != task_new


def test_every_job_status_reachable_from_queued() -> None:
    reached = {J.QUEUED}
    frontier = [J.QUEUED]
    while frontier:
        status = frontier.pop()
        for current, new in JOB_TRANSITIONS:
            if current == status and new not in reached:
                reached.add(new)
                frontier.append(new)
    assert reached == set(JobStatus)
