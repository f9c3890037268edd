"""The console's copy of the farm: members, jobs and their progress over time.

The app fills it from the API after each connection and keeps it current with
the event stream; screens read from it and never fetch jobs themselves.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from flamenco_p2p.console.source import Clock

Job = dict[str, Any]

FINAL_STATUSES = frozenset({"completed", "failed", "canceled"})

STATUS_FILTERS: dict[str, frozenset[str] | None] = {
    "all": None,
    "unfinished": frozenset(
        {
            "queued",
            "active",
            "paused",
            "pause-requested",
            "cancel-requested",
            "requeueing",
        }
    ),
    "active": frozenset({"active"}),
    "queued": frozenset({"queued", "requeueing"}),
    "paused": frozenset({"paused", "pause-requested"}),
    "completed": frozenset({"completed"}),
    "failed": frozenset({"failed"}),
    "canceled": frozenset({"canceled", "cancel-requested"}),
}
"""Status filters of the jobs screen, in the order the filter key cycles them.
A filter of a final status includes the status that leads to it."""

SORT_ORDERS = ("created", "priority", "progress", "name")
"""Orders of the jobs screen, in the order the sort key cycles them."""

DESCENDING_BY_DEFAULT = frozenset({"created", "priority", "progress"})

ETA_WINDOW = 600.0
"""Seconds of observed progress that an estimate is based on, so that it
follows a job that speeds up or slows down."""


@dataclass
class JobFilter:
    """The jobs that the jobs screen lists, and their order."""

    status: str = "all"
    text: str = ""
    order: str = "created"
    descending: bool = True

    def matches(self, job: Job) -> bool:
        """Return whether a job passes the status and text filters.

        The text matches anywhere in the name, ignoring case, or at the start
        of the job id.
        """
        statuses = STATUS_FILTERS[self.status]
        if statuses is not None and job.get("status") not in statuses:
            return False
        needle = self.text.strip().casefold()
        if not needle:
            return True
        name = str(job.get("name", "")).casefold()
        return needle in name or str(job.get("id", "")).startswith(needle)

    def sort_key(self, job: Job) -> tuple[Any, ...]:
        """Return the key that orders a job; ties fall back to creation time."""
        created = str(job.get("created", ""))
        job_id = str(job.get("id", ""))
        if self.order == "priority":
            return (int(job.get("priority", 0)), created, job_id)
        if self.order == "progress":
            return (float(job.get("progress", 0.0)), created, job_id)
        if self.order == "name":
            return (str(job.get("name", "")).casefold(), created, job_id)
        return (created, job_id)

    def next_status(self) -> None:
        """Move to the next status filter."""
        names = list(STATUS_FILTERS)
        self.status = names[(names.index(self.status) + 1) % len(names)]

    def next_order(self) -> None:
        """Move to the next order, in its natural direction."""
        index = SORT_ORDERS.index(self.order)
        self.order = SORT_ORDERS[(index + 1) % len(SORT_ORDERS)]
        self.descending = self.order in DESCENDING_BY_DEFAULT


class EtaEstimator:
    """Estimates the time left of active jobs from the progress the console saw.

    A job's rate is its progress change over the last ETA_WINDOW seconds of
    observations. The estimate is unknown (None) until the console has seen
    the progress of an active job move, and starts over when the job stops
    being active or its progress falls (a requeue).
    """

    def __init__(self, window: float = ETA_WINDOW) -> None:
        self.window = window
        self._samples: dict[str, deque[tuple[float, float]]] = {}

    def observe(self, job: Job, now: float) -> None:
        """Record a job's progress at monotonic time now."""
        job_id = str(job["id"])
        progress = float(job.get("progress", 0.0))
        if job.get("status") != "active":
            self._samples.pop(job_id, None)
            return
        samples = self._samples.setdefault(job_id, deque())
        if samples and progress < samples[-1][1]:
            samples.clear()
        if not samples or progress > samples[-1][1]:
            samples.append((now, progress))
        while len(samples) > 2 and samples[1][0] < now - self.window:
            samples.popleft()

    def forget(self, job_id: str) -> None:
        """Drop what was recorded for a job."""
        self._samples.pop(job_id, None)

    def remaining(self, job_id: str, now: float) -> float | None:
        """Return the estimated seconds left of a job, or None when unknown."""
        samples = self._samples.get(job_id)
        if not samples or len(samples) < 2:
            return None
        first_time, first_progress = samples[0]
        last_time, last_progress = samples[-1]
        if last_time <= first_time or last_progress <= first_progress:
            return None
        rate = (last_progress - first_progress) / (last_time - first_time)
        return max(0.0, (1.0 - last_progress) / rate - (now - last_time))


class FarmState:
    """The farm, its members and its jobs as the console last heard of them."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.farm: dict[str, Any] | None = None
        self.nodes: list[dict[str, Any]] = []
        self.jobs: dict[str, Job] = {}
        self.eta = EtaEstimator()

    def set_job(self, job: Job) -> Job | None:
        """Store a job from a reply or an event; returns the copy it replaces."""
        previous = self.jobs.get(job["id"])
        self.jobs[job["id"]] = job
        self.eta.observe(job, self.clock.monotonic())
        return previous

    def replace_jobs(self, jobs: list[Job]) -> None:
        """Replace every job, after a fresh fetch."""
        kept = {job["id"] for job in jobs}
        for job_id in set(self.jobs) - kept:
            self.eta.forget(job_id)
        self.jobs = {}
        for job in jobs:
            self.set_job(job)

    def remove_job(self, job_id: str) -> Job | None:
        """Forget a deleted job; returns it, or None when it was not known."""
        self.eta.forget(job_id)
        return self.jobs.pop(job_id, None)

    def remaining(self, job_id: str) -> float | None:
        """Return a job's estimated seconds left, or None when unknown."""
        return self.eta.remaining(job_id, self.clock.monotonic())

    def server(self) -> dict[str, Any] | None:
        """Return the elected server as ``{"node_id", "epoch"}``, or None."""
        for node in self.nodes:
            for role in node.get("roles", []):
                if role.get("role") == "server":
                    return {"node_id": node["node_id"], "epoch": role.get("epoch")}
        if self.farm is not None:
            server: dict[str, Any] | None = self.farm.get("server")
            return server
        return None

    def managers(self) -> list[dict[str, Any]]:
        """Return each site's manager as ``{"site", "node_id", "epoch"}``."""
        found = []
        for node in self.nodes:
            for role in node.get("roles", []):
                name = str(role.get("role", ""))
                if name.startswith("manager:"):
                    found.append(
                        {
                            "site": name.removeprefix("manager:"),
                            "node_id": node["node_id"],
                            "epoch": role.get("epoch"),
                        }
                    )
        if not found and not self.nodes and self.farm is not None:
            found = list(self.farm.get("managers", []))
        return sorted(found, key=lambda manager: str(manager["site"]))

    def job_counts(self) -> dict[str, int]:
        """Return how many known jobs are in each status."""
        counts: dict[str, int] = {}
        for job in self.jobs.values():
            status = str(job.get("status"))
            counts[status] = counts.get(status, 0) + 1
        return counts

    def job_name(self, job_id: str) -> str | None:
        """Return the name of a known job, or None."""
        job = self.jobs.get(job_id)
        return None if job is None else str(job.get("name", ""))
