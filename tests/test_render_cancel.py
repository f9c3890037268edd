"""Tests of cancelling, closing and crashing render child processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from render_helpers import EventLog, build_demo_blend, process_exists, session_members

from flamenco_p2p.errors import RenderError
from flamenco_p2p.render.controller import (
    RenderBackend,
    RenderEvent,
    RenderProcess,
    RenderRequest,
)
from flamenco_p2p.render.validate import validate_output

# A render that takes minutes: the samples override makes each frame very slow.
LONG_OVERRIDES = {"samples": 1 << 20, "resolution_percentage": 200}


@pytest.fixture(scope="module")
def demo_blend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_blend(tmp_path_factory.mktemp("demo"))


@pytest.fixture
async def render_process(tmp_path: Path) -> AsyncIterator[RenderProcess]:
    process = RenderProcess(RenderBackend(), tmp_path / "scratch", stop_grace=3.0)
    yield process
    await process.close()


def long_request(blend: Path, output_dir: Path) -> RenderRequest:
    return RenderRequest(
        blend_path=str(blend),
        frames=(1, 2),
        output_dir=str(output_dir),
        output_name="",
        overrides=LONG_OVERRIDES,
    )


def quick_request(blend: Path, output_dir: Path) -> RenderRequest:
    return RenderRequest(
        blend_path=str(blend),
        frames=(1,),
        output_dir=str(output_dir),
        output_name="",
        overrides={},
    )


async def start_long_render(
    process: RenderProcess, blend: Path, output_dir: Path
) -> tuple[asyncio.Task[object], int]:
    """Start a long render and return its task and the child pid once frame 1 runs."""
    started = asyncio.Event()

    def on_event(event: RenderEvent) -> None:
        if event.kind == "progress" and event.frame == 1:
            started.set()

    task: asyncio.Task[object] = asyncio.create_task(
        process.render(long_request(blend, output_dir), on_event)
    )
    await asyncio.wait_for(started.wait(), 60)
    await asyncio.sleep(0.5)  # let Cycles get into sampling
    pid = process.pid
    assert pid is not None
    return task, pid


async def wait_until_gone(pid: int, limit_seconds: float) -> float:
    """Return seconds until the pid and its session members are gone, or fail."""
    start = time.monotonic()
    while time.monotonic() - start < limit_seconds:
        if not process_exists(pid) and not session_members(pid):
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"pid {pid} or its session {session_members(pid)} survived")


@pytest.mark.render
async def test_render_cancel_stops_long_render(
    render_process: RenderProcess, demo_blend: Path, tmp_path: Path
) -> None:
    task, pid = await start_long_render(render_process, demo_blend, tmp_path / "long")
    assert session_members(pid) != []
    started = time.monotonic()
    await render_process.cancel()
    with pytest.raises(RenderError, match="canceled"):
        await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 10
    await wait_until_gone(pid, 10)
    assert render_process.pid is None
    assert render_process.loaded_blend is None
    assert list((tmp_path / "long").iterdir()) == []

    outputs = await render_process.render(
        quick_request(demo_blend, tmp_path / "next"), EventLog()
    )
    assert render_process.pid != pid
    assert validate_output(outputs[0].path).format == "PNG"


@pytest.mark.render
async def test_render_cancel_task_kills_child(
    render_process: RenderProcess, demo_blend: Path, tmp_path: Path
) -> None:
    task, pid = await start_long_render(render_process, demo_blend, tmp_path / "long")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    await wait_until_gone(pid, 10)
    assert render_process.pid is None


@pytest.mark.render
async def test_render_cancel_escalates_to_sigkill(
    demo_blend: Path, tmp_path: Path
) -> None:
    process = RenderProcess(RenderBackend(), tmp_path / "scratch", stop_grace=0.5)
    try:
        task, pid = await start_long_render(process, demo_blend, tmp_path / "long")
        # A stopped process cannot handle SIGTERM, so only SIGKILL ends it.
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        await process.cancel()
        with pytest.raises(RenderError, match="canceled"):
            await asyncio.wait_for(task, 10)
        assert time.monotonic() - started < 5
        await wait_until_gone(pid, 10)
    finally:
        await process.close()


@pytest.mark.render
async def test_render_process_segfault_reported(
    render_process: RenderProcess, demo_blend: Path, tmp_path: Path
) -> None:
    task, pid = await start_long_render(render_process, demo_blend, tmp_path / "long")
    os.kill(pid, signal.SIGSEGV)
    with pytest.raises(RenderError) as caught:
        await asyncio.wait_for(task, 20)
    message = str(caught.value)
    assert "SIGSEGV" in message
    assert "139" in message
    assert str(demo_blend) in message
    await wait_until_gone(pid, 10)

    outputs = await render_process.render(
        quick_request(demo_blend, tmp_path / "next"), EventLog()
    )
    assert render_process.pid not in (None, pid)
    assert validate_output(outputs[0].path).format == "PNG"


@pytest.mark.render
async def test_render_process_close_ends_idle_child(
    demo_blend: Path, tmp_path: Path
) -> None:
    process = RenderProcess(RenderBackend(), tmp_path / "scratch")
    await process.render(quick_request(demo_blend, tmp_path / "out"), EventLog())
    pid = process.pid
    assert pid is not None
    started = time.monotonic()
    await process.close()
    elapsed = time.monotonic() - started
    assert process.pid is None
    await wait_until_gone(pid, 5)
    # A clean quit needs no SIGTERM, so it finishes well inside stop_grace.
    assert elapsed < 3.0


@pytest.mark.render
async def test_render_process_missing_python_fails(tmp_path: Path) -> None:
    process = RenderProcess(
        RenderBackend(python=str(tmp_path / "no-python")), tmp_path / "scratch"
    )
    with pytest.raises(RenderError, match="cannot start Blender"):
        await process.render(quick_request(tmp_path / "x.blend", tmp_path), EventLog())
