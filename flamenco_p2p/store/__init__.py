"""The server role's SQLite store of jobs, tasks, attempts, logs and workers."""

from flamenco_p2p.store.farmstore import (
    Assignment,
    FarmStore,
    JobView,
    TaskView,
    WorkerInfo,
)
from flamenco_p2p.store.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "Assignment",
    "FarmStore",
    "JobView",
    "TaskView",
    "WorkerInfo",
]
