"""Farms of real daemons rendering real blend files with Blender through bpy."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from farm import LocalFarm
from render_helpers import render_children

from flamenco_p2p.render.demo_scene import make_demo_scene, make_text_blend
from flamenco_p2p.render.validate import validate_output
from flamenco_p2p.submission import build_render_job

pytestmark = [pytest.mark.render, pytest.mark.slow]


def render_job(blend: Path, frames: str, output: Path, **extra: Any) -> dict[str, Any]:
    job, _warnings = build_render_job(
        blend=blend,
        frames=frames,
        chunk=extra.pop("chunk", 1),
        output=str(output / "frame_####"),
        cwd=blend.parent,
        **extra,
    )
    return job


async def submit(
    farm: LocalFarm, job: dict[str, Any], blend: Path, via: int = 0
) -> str:
    result = await farm.call(
        via, "client_submit", {"job": job, "blend_path": str(blend)}
    )
    job_id: str = result["job_id"]
    return job_id


def node_id(farm: LocalFarm, index: int) -> str:
    return (farm.nodes[index].data_dir / "node-id").read_text().strip()


async def wait_active(
    farm: LocalFarm, job_id: str, count: int, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    view: Any = None
    while time.monotonic() < deadline:
        view = await farm.call(0, "client_job", {"job_id": job_id})
        if sum(t["status"] == "active" for t in view["tasks"]) >= count:
            return dict(view)
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} tasks became active: {view}")


async def test_render_job_delivers_frames_to_submitter(tmp_path: Path) -> None:
    blend = tmp_path / "Épisode 01" / "scène finale.blend"
    blend.parent.mkdir()
    make_demo_scene(blend, frames=4)
    output = tmp_path / "out put"
    with LocalFarm(tmp_path / "farm", 2) as farm:
        await farm.wait_for_roles()
        job_id = await submit(farm, render_job(blend, "1-4", output), blend)
        view = await farm.wait_for_job(job_id, timeout=180)
        assert view["job"]["status"] == "completed", farm.logs()
        task_id = view["tasks"][0]["id"]
        log = await farm.call(0, "client_task_log", {"task_id": task_id})
        assert log["lines"], "no Blender log lines reached the server"
    hashes = set()
    for frame in range(1, 5):
        info = validate_output(str(output / f"frame_{frame:04d}.png"))
        hashes.add(info.sha256)
    assert len(hashes) == 4
    # Workers render only what they received: no node read the submitter's file.
    for node in farm.nodes:
        assert list((node.data_dir / "blobs").glob("*/*")), node.index


async def test_render_killed_worker_frame_rendered_once_elsewhere(
    tmp_path: Path,
) -> None:
    blend = tmp_path / "slow.blend"
    make_demo_scene(blend, frames=4, resolution=(320, 180), samples=256)
    output = tmp_path / "out"
    roles = "[roles]\nmanager = false\nserver = false\n"
    with LocalFarm(tmp_path / "farm", 2, per_node_config={1: roles}) as farm:
        await farm.wait_for_roles()
        job_id = await submit(farm, render_job(blend, "1-4", output), blend)
        worker_id = node_id(farm, 1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            view = await farm.call(0, "client_job", {"job_id": job_id})
            if any(
                t["status"] == "active" and t["worker_id"].startswith(worker_id)
                for t in view["tasks"]
            ):
                break
            await asyncio.sleep(0.1)
        # The task is active from its lease on; the render child starts once the
        # blend file has arrived.
        deadline = time.monotonic() + 60
        while not render_children(farm.nodes[1].data_dir):
            assert time.monotonic() < deadline, "the worker never started Blender"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        farm.kill(1)
        # The render child dies with its worker instead of rendering on alone.
        deadline = time.monotonic() + 5
        while render_children(farm.nodes[1].data_dir):
            assert time.monotonic() < deadline, "render child outlived its worker"
            await asyncio.sleep(0.1)
        view = await farm.wait_for_job(job_id, timeout=300)
        assert view["job"]["status"] == "completed", farm.logs()
    assert Counter(t["status"] for t in view["tasks"]) == {"completed": 4}
    names = sorted(p.name for p in output.iterdir())
    assert names == [f"frame_{f:04d}.png" for f in range(1, 5)]
    for name in names:
        validate_output(str(output / name))


async def test_render_cancel_leaves_no_blender(tmp_path: Path) -> None:
    blend = tmp_path / "slow.blend"
    make_demo_scene(blend, frames=4, resolution=(640, 360), samples=4096)
    quick = tmp_path / "quick.blend"
    make_demo_scene(quick, frames=2)
    with LocalFarm(tmp_path / "farm", 2) as farm:
        await farm.wait_for_roles()
        job_id = await submit(farm, render_job(blend, "1-4", tmp_path / "out"), blend)
        await wait_active(farm, job_id, 2)
        await asyncio.sleep(2)
        assert len(render_children(tmp_path / "farm")) == 2
        started = time.monotonic()
        await farm.call(0, "client_cancel", {"job_id": job_id})
        view = await farm.wait_for_job(job_id, timeout=10)
        while time.monotonic() - started < 10:
            if not render_children(tmp_path / "farm"):
                break
            await asyncio.sleep(0.1)
        assert render_children(tmp_path / "farm") == []
        assert time.monotonic() - started < 10
        assert view["job"]["status"] == "canceled"
        assert {t["status"] for t in view["tasks"]} == {"canceled"}
        next_id = await submit(farm, render_job(quick, "1-2", tmp_path / "next"), quick)
        view = await farm.wait_for_job(next_id, timeout=120)
        assert view["job"]["status"] == "completed", farm.logs()


async def test_render_text_file_fails_job_naming_file(tmp_path: Path) -> None:
    blend = tmp_path / "x.blend"
    make_text_blend(blend)
    # A farm of one worker retries the task on that worker at once, until its
    # attempts run out.
    retry_at_once = "[failures]\nretry_same_worker_after = 0\nmax_attempts = 3\n"
    with LocalFarm(tmp_path / "farm", 1, extra_config=retry_at_once) as farm:
        await farm.wait_for_roles()
        job_id = await submit(farm, render_job(blend, "1-2", tmp_path / "out"), blend)
        view = await farm.wait_for_job(job_id, timeout=120)
        assert view["job"]["status"] == "failed"
        errors = " ".join(str(t.get("error") or "") for t in view["tasks"])
        assert "x.blend" in errors, view
        status = await farm.call(0, "client_status", {})
        assert status["roles"]["server"] is not None
