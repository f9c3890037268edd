"""Replicated farm state and takeover, with real daemons on loopback addresses."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from farm import LocalFarm
from test_farm_local import sleep_job, submit


def replica_jobs(database: Path) -> dict[str, tuple[str, list[str]]]:
    """Each job's status and task statuses in one node's farm database."""
    if not database.exists():
        return {}
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    try:
        jobs = dict(db.execute("SELECT id, status FROM jobs").fetchall())
        tasks: dict[str, list[str]] = {}
        for job_id, status in db.execute(
            "SELECT job_id, status FROM tasks ORDER BY job_id, idx"
        ):
            tasks.setdefault(job_id, []).append(status)
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
    return {job_id: (status, tasks.get(job_id, [])) for job_id, status in jobs.items()}


async def wait_until_replicas_agree(
    farm: LocalFarm, timeout: float = 20
) -> dict[str, tuple[str, list[str]]]:
    deadline = time.monotonic() + timeout
    views: list[dict[str, tuple[str, list[str]]]] = []
    while time.monotonic() < deadline:
        views = [
            replica_jobs(n.data_dir / "farm.sqlite")
            for n in farm.nodes
            if n.process is not None and n.process.poll() is None
        ]
        if views and all(v == views[0] for v in views) and views[0]:
            return views[0]
        await asyncio.sleep(0.3)
    raise AssertionError(f"replicas differ after {timeout} s: {views}")


def holder_index(farm: LocalFarm, status: dict[str, Any], role: str) -> int:
    holder = status["roles"][role]["holder"]
    for node in farm.nodes:
        if (node.data_dir / "node-id").read_text().strip() == holder:
            return node.index
    raise AssertionError(f"holder {holder} of {role} is not a node of this farm")


async def test_takeover_replicas_agree(tmp_path: Path) -> None:
    with LocalFarm(tmp_path, 3) as farm:
        await farm.wait_for_roles()
        job_id = await submit(farm, sleep_job(6, 0.1))
        view = await farm.wait_for_job(job_id)
        assert view["job"]["status"] == "completed"
        agreed = await wait_until_replicas_agree(farm)
        assert agreed[job_id] == ("completed", ["completed"] * 6)


async def test_takeover_after_server_kill(
    tmp_path: Path,
) -> None:
    with LocalFarm(tmp_path, 3) as farm:
        status = await farm.wait_for_roles()
        server = holder_index(farm, status, "server")
        epoch = status["roles"]["server"]["epoch"]
        via = (server + 1) % 3
        job_id = await submit(farm, sleep_job(12, 0.5), via=via)
        while True:
            view = await farm.call(via, "client_job", {"job_id": job_id})
            if view["job"]["task_counts"]["completed"] >= 3:
                break
            await asyncio.sleep(0.1)
        farm.kill(server)
        view = await farm.wait_for_job(job_id, via=via)
        assert view["job"]["status"] == "completed", farm.logs()
        assert all(t["status"] == "completed" for t in view["tasks"])
        status = await farm.call(via, "client_status", {})
        new_server = status["roles"]["server"]
        assert new_server["epoch"] > epoch
        assert holder_index(farm, status, "server") != server
        # Only the tasks that ran at the kill can have run twice.
        rerun = [t for t in view["tasks"] if t["attempts"] > 1]
        assert len(rerun) <= 3, view["tasks"]
        farm.start(server)
        await farm.wait_for_roles(via=via)
        agreed = await wait_until_replicas_agree(farm, timeout=30)
        assert agreed[job_id][0] == "completed"
