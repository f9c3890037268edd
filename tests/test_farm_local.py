"""Whole farms of real daemons on loopback, running sleep jobs (no Blender needed)."""

from __future__ import annotations

import asyncio
import datetime
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from farm import LocalFarm

from flamenco_p2p.transport import RemoteError

pytestmark = pytest.mark.slow


def sleep_job(tasks: int, duration: float, **extra: Any) -> dict[str, Any]:
    requirements = extra.pop(
        "requirements", {"gpu": "none", "gpu_types": [], "min_blender": None}
    )
    return {
        "name": extra.pop("name", "sleepy"),
        "job_type": "sleep",
        "priority": extra.pop("priority", 50),
        "settings": {"tasks": tasks, "duration": duration, **extra},
        "requirements": requirements,
    }


async def submit(farm: LocalFarm, job: dict[str, Any], via: int = 0) -> str:
    result = await farm.call(via, "client_submit", {"job": job, "blend_path": None})
    job_id: str = result["job_id"]
    return job_id


def node_of(task: dict[str, Any]) -> str:
    return str(task["worker_id"]).split(".")[0]


async def test_farm_elects_once_and_runs_job(tmp_path: Path) -> None:
    with LocalFarm(tmp_path, 3) as farm:
        status = await farm.wait_for_roles()
        views = [await farm.call(i, "client_status", {}) for i in range(3)]
        roles = [v["roles"] for v in views]
        assert roles[0] == roles[1] == roles[2], farm.logs()
        holders = [n for n in status["nodes"] if n["roles"]]
        assert len({r["role"] for n in holders for r in n["roles"]}) == 2
        server_holders = [
            n for n in status["nodes"] if any(r["role"] == "server" for r in n["roles"])
        ]
        assert len(server_holders) == 1
        job_id = await submit(farm, sleep_job(9, 0.3))
        view = await farm.wait_for_job(job_id)
        assert view["job"]["status"] == "completed", farm.logs()
        assert all(t["status"] == "completed" for t in view["tasks"])
        assert len({node_of(t) for t in view["tasks"]}) == 3, view["tasks"]
        # Clients get timestamps in UTC with an explicit offset.
        created = datetime.datetime.fromisoformat(view["job"]["created"])
        assert created.utcoffset() == datetime.timedelta(0)
        assert view["job"]["created"].endswith("+00:00")
        assert abs(created.timestamp() - time.time()) < 120


async def test_farm_forms_through_seeds_without_mdns(tmp_path: Path) -> None:
    with LocalFarm(tmp_path, 3, mdns=False) as farm:
        status = await farm.wait_for_roles()
        assert len(status["nodes"]) == 3
        job_id = await submit(farm, sleep_job(3, 0.1))
        assert (await farm.wait_for_job(job_id))["job"]["status"] == "completed"


async def test_farm_requeues_task_of_killed_worker(tmp_path: Path) -> None:
    # Only node 0 may hold roles, so killing node 1 or 2 kills a plain worker.
    roles = "[roles]\nmanager = false\nserver = false\n"
    with LocalFarm(tmp_path, 3, per_node_config={1: roles, 2: roles}) as farm:
        await farm.wait_for_roles()
        job_id = await submit(farm, sleep_job(6, 2.0))
        victim = None
        deadline = time.monotonic() + 20
        while victim is None and time.monotonic() < deadline:
            view = await farm.call(0, "client_job", {"job_id": job_id})
            for task in view["tasks"]:
                if task["status"] == "active" and not node_of(task).startswith(
                    _node_id(farm, 0)[:8]
                ):
                    victim = next(
                        n.index
                        for n in farm.nodes
                        if _node_id(farm, n.index) == node_of(task)
                    )
            await asyncio.sleep(0.1)
        assert victim is not None, "no task started on a worker-only node"
        farm.kill(victim)
        view = await farm.wait_for_job(job_id, timeout=60)
        assert view["job"]["status"] == "completed", farm.logs()
        statuses = Counter(t["status"] for t in view["tasks"])
        assert statuses == {"completed": 6}
        victim_id = _node_id(farm, victim)
        retried = [t for t in view["tasks"] if t["attempts"] > 1]
        assert retried, "the killed worker's task was not rendered again"
        assert all(node_of(t) != victim_id for t in retried)


async def test_farm_cancel_stops_tasks_and_next_job_runs(tmp_path: Path) -> None:
    with LocalFarm(tmp_path, 2) as farm:
        await farm.wait_for_roles()
        job_id = await submit(farm, sleep_job(4, 30.0))
        await _wait_active(farm, job_id, 2)
        started = time.monotonic()
        await farm.call(0, "client_cancel", {"job_id": job_id})
        view = await farm.wait_for_job(job_id, timeout=10)
        assert time.monotonic() - started < 10
        assert view["job"]["status"] == "canceled", farm.logs()
        assert {t["status"] for t in view["tasks"]} == {"canceled"}
        next_id = await submit(farm, sleep_job(2, 0.1))
        view = await farm.wait_for_job(next_id, timeout=20)
        assert view["job"]["status"] == "completed", farm.logs()
        with pytest.raises(RemoteError) as caught:
            await farm.call(0, "client_cancel", {"job_id": next_id})
        assert caught.value.code == "conflict"
        assert "already completed" in str(caught.value)


async def test_farm_gpu_job_goes_only_to_gpu_worker(tmp_path: Path) -> None:
    # This machine has no GPU: node 0 claims CUDA through its config, which is
    # what the matching reads, and sleep tasks stand in for GPU renders.
    gpu = '[capabilities]\ngpu_types = ["CUDA"]\nblender_version = "5.0.1"\n'
    with LocalFarm(tmp_path, 3, per_node_config={0: gpu}) as farm:
        await farm.wait_for_roles()
        requirements: dict[str, Any] = {
            "gpu": "require",
            "gpu_types": [],
            "min_blender": None,
        }
        job_id = await submit(farm, sleep_job(6, 0.1, requirements=requirements))
        view = await farm.wait_for_job(job_id)
        assert view["job"]["status"] == "completed", farm.logs()
        assert {node_of(t) for t in view["tasks"]} == {_node_id(farm, 0)}


async def test_farm_sigterm_leaves_cleanly(tmp_path: Path) -> None:
    with LocalFarm(tmp_path, 3) as farm:
        status = await farm.wait_for_roles()
        manager_id = status["roles"]["manager:lab"]["holder"]
        manager_epoch = status["roles"]["manager:lab"]["epoch"]
        index = next(
            n.index for n in farm.nodes if _node_id(farm, n.index) == manager_id
        )
        farm.kill(index, signal.SIGTERM)
        process = farm.nodes[index].process
        assert process is not None
        assert process.returncode == 0
        assert "stopping: received SIGTERM" in farm.nodes[index].log_text()
        via = next(i for i in range(3) if i != index)
        deadline = time.monotonic() + 15
        while True:
            view = await farm.call(via, "client_status", {})
            holder = view["roles"].get("manager:lab")
            states = {n["node_id"]: n["state"] for n in view["nodes"]}
            if holder and holder["holder"] != manager_id:
                break
            assert time.monotonic() < deadline, view
            await asyncio.sleep(0.2)
        assert states[manager_id] == "left"
        assert holder["epoch"] > manager_epoch


async def test_farm_rejects_bad_job(tmp_path: Path) -> None:
    with LocalFarm(tmp_path, 1) as farm:
        await farm.wait_for_roles()
        with pytest.raises(RemoteError) as caught:
            await submit(farm, sleep_job(0, 0.1))
        assert "tasks" in str(caught.value)
        status = await farm.call(0, "client_status", {})
        assert status["jobs"] == []


def _node_id(farm: LocalFarm, index: int) -> str:
    return (farm.nodes[index].data_dir / "node-id").read_text().strip()


async def _wait_active(farm: LocalFarm, job_id: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        view = await farm.call(0, "client_job", {"job_id": job_id})
        if sum(t["status"] == "active" for t in view["tasks"]) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} tasks became active: {view}")


async def test_farm_stopping_worker_hands_task_back(tmp_path: Path) -> None:
    roles = "[roles]\nmanager = false\nserver = false\n"
    with LocalFarm(tmp_path, 2, per_node_config={1: roles}) as farm:
        await farm.wait_for_roles()
        job_id = await submit(farm, sleep_job(2, 4.0))
        worker = _node_id(farm, 1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            view = await farm.call(0, "client_job", {"job_id": job_id})
            if any(
                t["status"] == "active" and node_of(t) == worker for t in view["tasks"]
            ):
                break
            await asyncio.sleep(0.1)
        farm.kill(1, signal.SIGTERM)
        view = await farm.wait_for_job(job_id, timeout=60)
        assert view["job"]["status"] == "completed", farm.logs()
        assert {node_of(t) for t in view["tasks"]} == {_node_id(farm, 0)}
        assert "its node is stopping" in farm.nodes[0].log_text()
        assert "rejected" not in farm.nodes[1].log_text()


async def test_farm_rejects_unusable_output_folder(tmp_path: Path) -> None:
    blend = tmp_path / "a.blend"
    blend.write_bytes(b"BLENDER-v300")
    afile = tmp_path / "afile"
    afile.write_text("x")
    job = {
        "name": "bad output",
        "job_type": "blender-render",
        "settings": {
            "frames": "1",
            "chunk_size": 1,
            "output_dir": str(afile / "sub"),
            "output_name": "",
            "overrides": {},
        },
    }
    with LocalFarm(tmp_path / "farm", 1) as farm:
        await farm.wait_for_roles()
        with pytest.raises(RemoteError) as caught:
            await farm.call(0, "client_submit", {"job": job, "blend_path": str(blend)})
        assert "afile/sub" in str(caught.value)
        assert "cannot be created" in str(caught.value)
        status = await farm.call(0, "client_status", {})
        assert status["jobs"] == []


async def test_farm_frozen_worker_rejoins_after_requeue(tmp_path: Path) -> None:
    roles = "[roles]\nmanager = false\nserver = false\n"
    # The manager gives up on a silent worker (1 s) well before peers count it
    # dead (3 s), so the worker's own view of the farm does not change.
    timing = (
        "[timing]\nheartbeat_interval = 0.2\nsuspect_after = 1.5\n"
        "dead_after = 3.0\nsettle_time = 0.8\nworker_silent_after = 1.0\n"
    )
    with LocalFarm(tmp_path, 2, per_node_config={1: roles}, timing=timing) as farm:
        await farm.wait_for_roles()
        job_id = await submit(farm, sleep_job(4, 1.0))
        worker = _node_id(farm, 1)
        await _wait_active(farm, job_id, 2)
        process = farm.nodes[1].process
        assert process is not None
        # Frozen past the manager's patience: its task goes to the other node.
        process.send_signal(signal.SIGSTOP)
        await asyncio.sleep(2)
        process.send_signal(signal.SIGCONT)
        view = await farm.wait_for_job(job_id, timeout=60)
        assert view["job"]["status"] == "completed", farm.logs()
        # The thawed worker is given work again.
        deadline = time.monotonic() + 30
        while True:
            second = await farm.wait_for_job(
                await submit(farm, sleep_job(6, 0.5)), timeout=60
            )
            assert second["job"]["status"] == "completed", farm.logs()
            if worker in {node_of(t) for t in second["tasks"]}:
                break
            assert time.monotonic() < deadline, "the thawed worker got no task"
        assert "asking it to say hello again" in farm.nodes[0].log_text()


async def test_farm_restarted_node_rejoins(tmp_path: Path) -> None:
    roles = "[roles]\nmanager = false\nserver = false\n"
    with LocalFarm(tmp_path, 3, per_node_config={2: roles}) as farm:
        await farm.wait_for_roles()
        farm.kill(2, signal.SIGTERM)
        farm.start(2)
        await farm.wait_for_roles(via=2)
        job_id = await submit(farm, sleep_job(9, 0.3), via=2)
        view = await farm.wait_for_job(job_id, via=2)
        assert view["job"]["status"] == "completed", farm.logs()
        assert _node_id(farm, 2) in {node_of(t) for t in view["tasks"]}
