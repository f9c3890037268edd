"""Snapshots of the console's farm and job screens at two terminal sizes.

The app reads a fixed, in-memory farm through FixedFarm below, with a fixed
clock, so each picture is the same on every run. FixedFarm stands in for fixed
data only: tests/test_console.py runs the console against real daemons.
Update the pictures with ``pytest tests/test_console_snapshots.py
--snapshot-update`` and look at each changed SVG before keeping it.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Log

from flamenco_p2p.console.app import ConsoleApp
from flamenco_p2p.console.job_screen import JobScreen

NOW = datetime(2026, 12, 4, 21, 40, 0, tzinfo=UTC)
NODE_A = "a1b2c3d4" + "0" * 24
NODE_B = "b2c3d4e5" + "1" * 24
NODE_C = "c3d4e5f6" + "2" * 24
NODE_D = "d4e5f6a7" + "3" * 24
NODE_E = "e5f6a7b8" + "4" * 24
JOB_LIGHTING = "1f00000000000000000000000000000a"
JOB_COMP = "2e00000000000000000000000000000b"
TASK_STATUSES = {
    "queued": 0,
    "active": 0,
    "completed": 0,
    "soft-failed": 0,
    "failed": 0,
    "canceled": 0,
    "paused": 0,
}


def stamp(minutes_ago: float) -> str:
    """Return the API's form of a time some minutes before NOW."""
    moment = NOW.timestamp() - minutes_ago * 60
    return datetime.fromtimestamp(moment, UTC).isoformat()


def worker(node_id: str, slot: int, task: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "worker_id": f"{node_id}.{slot}",
        "status": "busy" if task else "awake",
        "current_task": task,
    }


def node(
    node_id: str,
    site: str,
    state: str,
    roles: list[tuple[str, int]],
    gpus: list[str],
    cores: int,
    workers: list[dict[str, Any]],
    seen_minutes_ago: float = 0.01,
) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "site": site,
        "address": f"10.0.0.{int(node_id[0], 16) + 10}",
        "state": state,
        "roles": [{"role": role, "epoch": epoch} for role, epoch in roles],
        "capabilities": {
            "cpu_cores": cores,
            "gpu_types": gpus,
            "blender_version": "5.0.1",
            "tags": [],
        },
        "worker_slots": len(workers),
        "this_node": node_id == NODE_A,
        "last_seen": stamp(seen_minutes_ago),
        "workers": workers,
    }


def job(
    job_id: str,
    name: str,
    status: str,
    priority: int,
    done: int,
    total: int,
    minutes_ago: float,
    **counts: int,
) -> dict[str, Any]:
    task_counts = dict(TASK_STATUSES, completed=done)
    task_counts.update({key.replace("_", "-"): value for key, value in counts.items()})
    task_counts["queued"] = total - sum(
        value for key, value in task_counts.items() if key != "queued"
    )
    return {
        "id": job_id,
        "name": name,
        "status": status,
        "priority": priority,
        "job_type": "blender-render",
        "settings": {},
        "requirements": {},
        "created": stamp(minutes_ago),
        "updated": stamp(0.5),
        "task_counts": task_counts,
        "tasks_total": total,
        "frames_total": 0,
        "frames_done": 0,
        "progress": done / total if total else 0.0,
        "submitter_node": NODE_A,
        "error": "task 7 failed 3 times: Blender exited with 139"
        if status == "failed"
        else None,
    }


JOBS = [
    job(JOB_LIGHTING, "shot-010 lighting", "active", 70, 8, 20, 25, active=3),
    job(
        "3d00000000000000000000000000000c",
        "shot-020 \u00e9clairage",
        "queued",
        50,
        0,
        40,
        12,
    ),
    job(
        "4c00000000000000000000000000000d",
        "turntable [draft]",
        "paused",
        40,
        6,
        24,
        90,
        paused=2,
    ),
    job(JOB_COMP, "shot-005 comp", "completed", 50, 30, 30, 240),
    job(
        "5b00000000000000000000000000000e",
        "fx smoke v3",
        "failed",
        60,
        9,
        12,
        180,
        failed=1,
        canceled=2,
    ),
    job(
        "6a00000000000000000000000000000f",
        "old preview",
        "canceled",
        10,
        2,
        10,
        600,
        canceled=8,
    ),
]
LIGHTING_AT_START = 0.40
"""The lighting job's progress when the console first fetches it; a later event
at 0.45 gives the console a rate, and so a time left."""

NODES = [
    node(
        NODE_A,
        "lab",
        "alive",
        [("server", 3), ("manager:lab", 2)],
        ["NVIDIA RTX 4090"],
        32,
        [
            worker(
                NODE_A,
                0,
                {
                    "job_id": JOB_LIGHTING,
                    "task_id": JOB_LIGHTING + "-0000008",
                    "name": "frames 81-90",
                    "progress": 0.45,
                },
            ),
            worker(
                NODE_A,
                1,
                {
                    "job_id": JOB_LIGHTING,
                    "task_id": JOB_LIGHTING + "-0000009",
                    "name": "frames 91-100",
                    "progress": 0.1,
                },
            ),
        ],
    ),
    node(
        NODE_B,
        "lab",
        "alive",
        [],
        [],
        16,
        [
            worker(
                NODE_B,
                0,
                {
                    "job_id": JOB_LIGHTING,
                    "task_id": JOB_LIGHTING + "-0000010",
                    "name": "frames 101-110",
                    "progress": 0.8,
                },
            )
        ],
    ),
    node(
        NODE_C,
        "annex",
        "alive",
        [("manager:annex", 1)],
        ["NVIDIA RTX 3060", "Intel Arc A770"],
        8,
        [worker(NODE_C, 0, None)],
    ),
    node(
        NODE_D,
        "lab",
        "suspect",
        [],
        [],
        12,
        [worker(NODE_D, 0, None)],
        seen_minutes_ago=0.2,
    ),
    node(
        NODE_E,
        "annex",
        "dead",
        [],
        ["AMD Radeon PRO W7800"],
        24,
        [],
        seen_minutes_ago=7,
    ),
]


def lighting_tasks() -> list[dict[str, Any]]:
    tasks = []
    for index in range(20):
        if index < 8:
            status, progress = "completed", 1.0
        elif index < 11:
            status, progress = "active", (0.45, 0.1, 0.8)[index - 8]
        else:
            status, progress = "queued", 0.0
        worker_id = {8: NODE_A + ".0", 9: NODE_A + ".1", 10: NODE_B + ".0"}.get(index)
        first = index * 10 + 1
        tasks.append(
            {
                "id": f"{JOB_LIGHTING}-{index:07d}",
                "job_id": JOB_LIGHTING,
                "index": index,
                "name": f"frames {first}-{first + 9}",
                "status": status,
                "frames": list(range(first, first + 10)),
                "attempt_id": None,
                "worker_id": worker_id if status == "active" else None,
                "attempts": 2 if index == 8 else int(status != "queued"),
                "failures": 1 if index == 8 else 0,
                "progress": progress,
                "error": None,
                "outputs": [],
            }
        )
    return tasks


ATTEMPTS = [
    {
        "id": "aa00000000000000000000000000000a",
        "task_id": JOB_LIGHTING + "-0000008",
        "worker_id": NODE_D + ".0",
        "node_id": NODE_D,
        "status": "lost",
        "progress": 0.3,
        "error": "the worker stopped sending heartbeats",
        "started": stamp(9),
        "ended": stamp(6),
    },
    {
        "id": "bb00000000000000000000000000000b",
        "task_id": JOB_LIGHTING + "-0000008",
        "worker_id": NODE_A + ".0",
        "node_id": NODE_A,
        "status": "active",
        "progress": 0.45,
        "error": None,
        "started": stamp(4),
        "ended": None,
    },
]
LOG_LINES = [
    (
        "aa00000000000000000000000000000a",
        9.0,
        "Blender 5.0.1 (hash 1a2b3c) opening shot-010.blend",
    ),
    (
        "aa00000000000000000000000000000a",
        8.5,
        "Fra:81 Mem:2130M | Rendering 12 / 128 samples",
    ),
    (
        "bb00000000000000000000000000000b",
        4.0,
        "Blender 5.0.1 (hash 1a2b3c) opening shot-010.blend",
    ),
    (
        "bb00000000000000000000000000000b",
        3.5,
        "Fra:81 Mem:2140M | Rendering 64 / 128 samples",
    ),
    (
        "bb00000000000000000000000000000b",
        2.0,
        "Fra:81 Saved: /renders/shot-010/0081.exr",
    ),
    (
        "bb00000000000000000000000000000b",
        1.0,
        "Fra:82 Mem:2141M | Rendering 40 / 128 samples",
    ),
]


class FixedClock:
    """A clock that stands still until a test moves it."""

    def __init__(self) -> None:
        self.seconds = 1000.0

    def monotonic(self) -> float:
        return self.seconds

    def now(self) -> datetime:
        return NOW


class FixedFarm:
    """The fixed data set above, served with ApiClient's method names."""

    base_url = "http://10.0.0.20:8888"
    token = "fixed-token"

    def __init__(self) -> None:
        self.jobs_list = copy.deepcopy(JOBS)
        self.jobs_list[0]["progress"] = LIGHTING_AT_START
        self.tasks_list = lighting_tasks()

    async def farm(self) -> dict[str, Any]:
        return {
            "farm": "studio-farm",
            "farm_id": "5e1f9a0c" + "9" * 24,
            "node_id": NODE_A,
            "server": {"node_id": NODE_A, "epoch": 3},
            "managers": [],
            "sites": ["annex", "lab"],
            "counts": {},
            "last_frame": None,
            "server_reachable": True,
        }

    async def nodes(self) -> dict[str, Any]:
        return {"nodes": copy.deepcopy(NODES)}

    async def jobs(
        self,
        status: str | list[str] | None = None,
        limit: int = 50,
        offset: int = 0,
        q: str | None = None,
    ) -> dict[str, Any]:
        page = self.jobs_list[offset : offset + limit]
        return {"jobs": copy.deepcopy(page), "total": len(self.jobs_list)}

    async def job(self, job_id: str) -> dict[str, Any]:
        return copy.deepcopy(next(j for j in self.jobs_list if j["id"] == job_id))

    async def tasks(
        self,
        job_id: str,
        limit: int = 200,
        offset: int = 0,
        status: str | list[str] | None = None,
    ) -> dict[str, Any]:
        tasks = self.tasks_list if job_id == JOB_LIGHTING else []
        return {
            "tasks": copy.deepcopy(tasks[offset : offset + limit]),
            "total": len(tasks),
        }

    async def task(self, task_id: str) -> dict[str, Any]:
        task = next(t for t in self.tasks_list if t["id"] == task_id)
        attempts = ATTEMPTS if task["index"] == 8 else []
        return {"task": copy.deepcopy(task), "attempts": copy.deepcopy(attempts)}

    async def task_log(
        self,
        task_id: str,
        *,
        tail: int | None = None,
        after: int | None = None,
        limit: int | None = None,
        attempt_id: str | None = None,
    ) -> dict[str, Any]:
        if not task_id.endswith("-0000008"):
            return {"lines": [], "last_id": after or 0}
        lines = [
            {
                "id": number,
                "attempt_id": attempt,
                "created": stamp(minutes),
                "line": text,
            }
            for number, (attempt, minutes, text) in enumerate(LOG_LINES, start=1)
        ]
        return {"lines": lines, "last_id": len(lines)}

    async def _refused(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("the snapshot tests change nothing")

    pause = resume = cancel = requeue = priority = delete = requeue_task = _refused

    async def events(self, job_id: str | None = None) -> AsyncIterator[tuple[str, Any]]:
        yield "hello", {"node_id": NODE_A}
        # The fixed farm never changes by itself.
        await asyncio.Event().wait()


async def wait_until(pilot: Pilot[Any], condition: Callable[[], bool]) -> None:
    """Let the app run until condition holds, for up to five seconds."""
    for _ in range(500):
        if condition():
            return
        await pilot.pause(0.01)
    raise AssertionError("the console did not reach the expected state")


def console() -> tuple[ConsoleApp, FixedClock]:
    clock = FixedClock()
    return ConsoleApp(FixedFarm(), clock), clock


async def show_progress(app: ConsoleApp, clock: FixedClock) -> None:
    """Move the lighting job on a minute, from 0.40 to 0.45: 11m 00s left."""
    await app.loaded.wait()
    clock.seconds += 60
    moved = copy.deepcopy(JOBS[0])
    moved["progress"] = 0.45
    app.apply_event("job", moved)


def farm_screen(
    app: ConsoleApp, clock: FixedClock
) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def before(pilot: Pilot[Any]) -> None:
        await show_progress(app, clock)
        await pilot.pause()

    return before


def job_screen(
    app: ConsoleApp, clock: FixedClock
) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def before(pilot: Pilot[Any]) -> None:
        await show_progress(app, clock)
        app.open_job(JOB_LIGHTING)
        await wait_until(pilot, lambda: isinstance(app.screen, JobScreen))
        await pilot.press(
            "down", "down", "down", "down", "down", "down", "down", "down"
        )
        await wait_until(
            pilot, lambda: app.screen.query_one("#log", Log).line_count > 0
        )
        await pilot.pause()

    return before


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_farm_screen(snap_compare: Any, size: tuple[int, int]) -> None:
    app, clock = console()
    assert snap_compare(app, terminal_size=size, run_before=farm_screen(app, clock))


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_jobs_screen(snap_compare: Any, size: tuple[int, int]) -> None:
    app, clock = console()
    assert snap_compare(
        app, press=["2"], terminal_size=size, run_before=farm_screen(app, clock)
    )


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_job_screen(snap_compare: Any, size: tuple[int, int]) -> None:
    app, clock = console()
    assert snap_compare(app, terminal_size=size, run_before=job_screen(app, clock))
