"""Role holders' messages from an older epoch are rejected (fencing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import zmq.asyncio

from flamenco_p2p.blobs import BlobStore
from flamenco_p2p.protocol.messages import Message
from flamenco_p2p.render.controller import RenderBackend
from flamenco_p2p.roles.replication import LogSource
from flamenco_p2p.roles.server import ServerRole
from flamenco_p2p.roles.worker import WorkerAgent
from flamenco_p2p.store.farmstore import FarmStore
from flamenco_p2p.transport import RemoteError

NODE = "1" * 32
MANAGER = "2" * 32


def assignment() -> dict[str, Any]:
    return {
        "job_id": "job",
        "task_id": "task",
        "attempt_id": "attempt",
        "job_type": "sleep",
        "frames": [],
        "payload": {"duration": 0.0},
        "settings": {},
        "worker_id": f"{NODE}.0",
        "submitter_node": NODE,
    }


async def test_worker_rejects_assignment_from_stale_manager(tmp_path: Path) -> None:
    ctx = zmq.asyncio.Context()
    worker = {
        "worker_id": f"{NODE}.0",
        "node_id": NODE,
        "site": "lab",
        "capabilities": {
            "cpu_cores": 1,
            "gpu_types": [],
            "blender_version": None,
            "tags": [],
        },
    }
    agent = WorkerAgent(
        ctx,
        NODE,
        [worker],
        RenderBackend(),
        BlobStore(tmp_path / "blobs"),
        tmp_path / "scratch",
        lambda node_id: [],
        0.5,
    )
    agent.manager_epoch = 3
    try:
        stale = Message("task_assign", MANAGER, {"assignment": assignment()}, epoch=2)
        await agent._on_push(b"", stale)
        assert agent.slots[f"{NODE}.0"].running is None
        current = Message("task_assign", MANAGER, {"assignment": assignment()}, epoch=3)
        await agent._on_push(b"", current)
        assert agent.slots[f"{NODE}.0"].running is not None
    finally:
        await agent.close()
        ctx.destroy(linger=0)


async def test_server_rejects_stale_manager_epoch(tmp_path: Path) -> None:
    ctx = zmq.asyncio.Context()
    store = await FarmStore.open(tmp_path / "farm.sqlite")
    server = ServerRole(
        ctx,
        NODE,
        1,
        store,
        manager_epoch=lambda site: 5,
        log=LogSource(store, NODE, BlobStore(tmp_path / "blobs")),
        scratch=tmp_path / "snapshots",
        unclaimed_after=10.0,
    )
    try:
        await server.handle(
            b"m", Message("manager_hello", MANAGER, {"site": "lab"}, epoch=5)
        )
        with pytest.raises(RemoteError) as caught:
            await server.handle(
                b"m", Message("list_jobs", MANAGER, {"limit": 10}, epoch=4)
            )
        assert caught.value.code == "stale_epoch"
        assert "4" in str(caught.value)
        result = await server.handle(
            b"m", Message("list_jobs", MANAGER, {"limit": 10}, epoch=5)
        )
        assert result is not None
        assert result["jobs"] == []
    finally:
        await server.close()
        ctx.destroy(linger=0)
