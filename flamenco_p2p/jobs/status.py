"""Job, task and attempt statuses and the transitions allowed between them.

The statuses and their meaning follow Flamenco 3's manager. Every status change
that the store makes goes through check_job_transition, check_task_transition or
check_attempt_transition, so a bug shows up as InvalidTransition instead of a
job stuck in an impossible state. A change to the same status is not a
transition and is rejected too; callers skip it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from flamenco_p2p.errors import InvalidTransition

_S = TypeVar("_S", bound=StrEnum)


class JobStatus(StrEnum):
    """Status of a whole job."""

    QUEUED = "queued"
    ACTIVE = "active"
    PAUSED = "paused"
    PAUSE_REQUESTED = "pause-requested"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCEL_REQUESTED = "cancel-requested"
    CANCELED = "canceled"
    REQUEUEING = "requeueing"


class TaskStatus(StrEnum):
    """Status of one task; soft-failed tasks run again like queued ones."""

    QUEUED = "queued"
    ACTIVE = "active"
    COMPLETED = "completed"
    SOFT_FAILED = "soft-failed"
    FAILED = "failed"
    CANCELED = "canceled"
    PAUSED = "paused"


class AttemptStatus(StrEnum):
    """Status of one run of a task on one worker."""

    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    LOST = "lost"


# Short aliases keep the transition tables readable.
_J = JobStatus
_T = TaskStatus
_A = AttemptStatus

FINAL_JOB_STATUSES = frozenset({_J.COMPLETED, _J.FAILED, _J.CANCELED})
"""Job statuses that change only when a user requeues the job."""

RUNNABLE_JOB_STATUSES = frozenset({_J.QUEUED, _J.ACTIVE})
"""Job statuses whose tasks workers may lease."""

RUNNABLE_TASK_STATUSES = frozenset({_T.QUEUED, _T.SOFT_FAILED})
"""Task statuses that a worker may lease."""

_CANCELABLE_JOB_STATUSES = frozenset(
    {_J.QUEUED, _J.ACTIVE, _J.PAUSED, _J.PAUSE_REQUESTED, _J.REQUEUEING}
)

JOB_TRANSITIONS: frozenset[tuple[JobStatus, JobStatus]] = frozenset(
    {
        # The first task lease starts the job.
        (_J.QUEUED, _J.ACTIVE),
        # Pausing a job with nothing running needs no request phase.
        (_J.QUEUED, _J.PAUSED),
        (_J.ACTIVE, _J.COMPLETED),
        (_J.ACTIVE, _J.FAILED),
        (_J.ACTIVE, _J.PAUSE_REQUESTED),
        (_J.ACTIVE, _J.PAUSED),
        # All running tasks were requeued, for example because their workers left.
        (_J.ACTIVE, _J.QUEUED),
        (_J.ACTIVE, _J.REQUEUEING),
        # Running tasks may still finish or fail before they stop.
        (_J.PAUSE_REQUESTED, _J.PAUSED),
        (_J.PAUSE_REQUESTED, _J.COMPLETED),
        (_J.PAUSE_REQUESTED, _J.FAILED),
        (_J.PAUSED, _J.QUEUED),
        (_J.PAUSED, _J.REQUEUEING),
        # Canceled once the last running task confirmed that it stopped.
        (_J.CANCEL_REQUESTED, _J.CANCELED),
        # Flamenco also cancels a failed job, which stops its remaining tasks.
        (_J.FAILED, _J.CANCELED),
        # A user requeues a finished job; requeueing resets the tasks, then queues.
        (_J.COMPLETED, _J.REQUEUEING),
        (_J.FAILED, _J.REQUEUEING),
        (_J.CANCELED, _J.REQUEUEING),
        (_J.REQUEUEING, _J.QUEUED),
    }
    | {(status, _J.CANCEL_REQUESTED) for status in _CANCELABLE_JOB_STATUSES}
)
"""Allowed (current, new) job status pairs."""

TASK_TRANSITIONS: frozenset[tuple[TaskStatus, TaskStatus]] = frozenset(
    {
        (_T.QUEUED, _T.ACTIVE),
        (_T.QUEUED, _T.CANCELED),
        (_T.QUEUED, _T.PAUSED),
        (_T.ACTIVE, _T.COMPLETED),
        # A failure with attempts left: the task runs again, possibly elsewhere.
        (_T.ACTIVE, _T.SOFT_FAILED),
        (_T.ACTIVE, _T.FAILED),
        (_T.ACTIVE, _T.CANCELED),
        (_T.ACTIVE, _T.PAUSED),
        # The worker was lost; the attempt does not count as a failure.
        (_T.ACTIVE, _T.QUEUED),
        (_T.SOFT_FAILED, _T.ACTIVE),
        (_T.SOFT_FAILED, _T.QUEUED),
        (_T.SOFT_FAILED, _T.COMPLETED),
        (_T.SOFT_FAILED, _T.FAILED),
        (_T.SOFT_FAILED, _T.CANCELED),
        (_T.SOFT_FAILED, _T.PAUSED),
        (_T.PAUSED, _T.QUEUED),
        (_T.PAUSED, _T.CANCELED),
        # Requeueing a job or a single task.
        (_T.COMPLETED, _T.QUEUED),
        (_T.FAILED, _T.QUEUED),
        (_T.FAILED, _T.CANCELED),
        (_T.CANCELED, _T.QUEUED),
    }
)
"""Allowed (current, new) task status pairs."""

ATTEMPT_TRANSITIONS: frozenset[tuple[AttemptStatus, AttemptStatus]] = frozenset(
    {(_A.ACTIVE, end) for end in (_A.COMPLETED, _A.FAILED, _A.CANCELED, _A.LOST)}
)
"""Allowed (current, new) attempt status pairs: only an active attempt can end."""


def check_job_transition(job_id: str, current: str, new: str) -> JobStatus:
    """Validate a job status change and return the new status.

    Raises InvalidTransition naming the job when the state machine forbids it.
    """
    return _check(
        JOB_TRANSITIONS, JobStatus, kind="job", item_id=job_id, current=current, new=new
    )


def check_task_transition(task_id: str, current: str, new: str) -> TaskStatus:
    """Validate a task status change and return the new status.

    Raises InvalidTransition naming the task when the state machine forbids it.
    """
    return _check(
        TASK_TRANSITIONS,
        TaskStatus,
        kind="task",
        item_id=task_id,
        current=current,
        new=new,
    )


def check_attempt_transition(attempt_id: str, current: str, new: str) -> AttemptStatus:
    """Validate an attempt status change and return the new status.

    Raises InvalidTransition naming the attempt when it already ended.
    """
    return _check(
        ATTEMPT_TRANSITIONS,
        AttemptStatus,
        kind="attempt",
        item_id=attempt_id,
        current=current,
        new=new,
    )


def _check(
    allowed: frozenset[tuple[_S, _S]],
    status_type: type[_S],
    *,
    kind: str,
    item_id: str,
    current: str,
    new: str,
) -> _S:
    values = {member.value for member in status_type}
    if current not in values or new not in values:
        raise InvalidTransition(kind, item_id, current, new)
    current_status = status_type(current)
    new_status = status_type(new)
    if (current_status, new_status) not in allowed:
        raise InvalidTransition(kind, item_id, current, new)
    return new_status
