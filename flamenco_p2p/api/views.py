"""The JSON forms of jobs and tasks that the HTTP API and its events send."""

from __future__ import annotations

from typing import Any


def job_out(job: dict[str, Any]) -> dict[str, Any]:
    """Return a job as the API shows it, with its task total and progress."""
    counts = job["task_counts"]
    total = sum(counts.values())
    done = counts.get("completed", 0)
    frames_total = job["frames_total"]
    if frames_total:
        progress = job["frames_done"] / frames_total
    else:
        progress = done / total if total else 0.0
    return {
        "id": job["id"],
        "name": job["name"],
        "status": job["status"],
        "priority": job["priority"],
        "job_type": job["job_type"],
        "settings": job["settings"],
        "requirements": job["requirements"],
        "created": job["created"],
        "updated": job["updated"],
        "task_counts": counts,
        "tasks_total": total,
        "frames_total": frames_total,
        "frames_done": job["frames_done"],
        "progress": min(max(progress, 0.0), 1.0),
        "submitter_node": job["submitter_node"],
        "error": job["error"],
    }


def task_out(task: dict[str, Any]) -> dict[str, Any]:
    """Return a task as the API shows it."""
    return {
        "id": task["id"],
        "job_id": task["job_id"],
        "index": task["index"],
        "name": task["name"],
        "status": task["status"],
        "frames": task["frames"],
        "attempt_id": task["attempt_id"],
        "worker_id": task["worker_id"],
        "attempts": task["attempts"],
        "failures": task["failures"],
        "progress": task["progress"],
        "error": task["error"],
        "outputs": task["outputs"],
    }
