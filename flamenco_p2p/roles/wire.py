"""Conversions between store records and the plain maps that travel in messages."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from flamenco_p2p.store.farmstore import Assignment, WorkerInfo


def plain(value: Any) -> Any:
    """Turn dataclasses, enums and tuples into msgpack-friendly plain values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def assignment_to_dict(assignment: Assignment) -> dict[str, Any]:
    """Return the wire form of an assignment."""
    result: dict[str, Any] = plain(assignment)
    return result


def assignment_from_dict(raw: dict[str, Any]) -> Assignment:
    """Build an assignment from a validated wire map."""
    fields = dict(raw)
    fields["frames"] = tuple(raw["frames"])
    return Assignment(**fields)


def worker_to_dict(worker: WorkerInfo) -> dict[str, Any]:
    """Return the wire form of a worker (the WORKER schema)."""
    return {
        "worker_id": worker.worker_id,
        "node_id": worker.node_id,
        "site": worker.site,
        "capabilities": {
            "cpu_cores": worker.cpu_cores,
            "gpu_types": list(worker.gpu_types),
            "blender_version": worker.blender_version,
            "tags": list(worker.tags),
        },
    }


def worker_from_dict(raw: dict[str, Any]) -> WorkerInfo:
    """Build a worker from a validated WORKER map."""
    caps = raw["capabilities"]
    return WorkerInfo(
        worker_id=raw["worker_id"],
        node_id=raw["node_id"],
        site=raw["site"],
        cpu_cores=caps["cpu_cores"],
        gpu_types=tuple(caps["gpu_types"]),
        blender_version=caps["blender_version"],
        tags=tuple(caps["tags"]),
    )


def job_view_to_dict(job: Any) -> dict[str, Any]:
    """Return the wire form of a job view."""
    result: dict[str, Any] = plain(job)
    return result


def task_view_to_dict(task: Any) -> dict[str, Any]:
    """Return the wire form of a task view."""
    result: dict[str, Any] = plain(task)
    return result
