"""Jobs: specifications, their compilation into tasks, and status state machines."""

from flamenco_p2p.jobs.compiler import TaskSpec, compile_job
from flamenco_p2p.jobs.spec import JobSpec, Requirements
from flamenco_p2p.jobs.status import (
    AttemptStatus,
    JobStatus,
    TaskStatus,
    check_attempt_transition,
    check_job_transition,
    check_task_transition,
)

__all__ = [
    "AttemptStatus",
    "JobSpec",
    "JobStatus",
    "Requirements",
    "TaskSpec",
    "TaskStatus",
    "check_attempt_transition",
    "check_job_transition",
    "check_task_transition",
    "compile_job",
]
