"""A standby following a real server role over CURVE ZeroMQ on loopback."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flamenco_p2p.blobs import BlobStore
from flamenco_p2p.errors import ProtocolError
from flamenco_p2p.farmkey import FarmKey
from flamenco_p2p.jobs.spec import JobSpec
from flamenco_p2p.jobs.status import TaskStatus
from flamenco_p2p.roles.replication import PULL_REPLY, LogSource, Standby
from flamenco_p2p.roles.server import ServerRole
from flamenco_p2p.security import FarmContext, ZapHandler, farm_context
from flamenco_p2p.store import FarmStore, WorkerInfo, replica

SERVER = "a" * 32
STANDBY = "b" * 32
_ports = itertools.count(23100)


@dataclass
class Farm:
    ctx: FarmContext
    server: ServerRole
    standby: Standby
    endpoint: str
    server_blobs: BlobStore


def sleep_job(name: str, tasks: int = 4) -> JobSpec:
    return JobSpec(
        name=name,
        job_type="sleep",
        settings={"tasks": tasks, "duration": 0.0},
        submitter_node=SERVER,
    )


def worker(worker_id: str) -> WorkerInfo:
    return WorkerInfo(worker_id, "c" * 32, "lab", 2, (), "4.2.1")


async def eventually(check: Callable[[], object], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def start_server(
    ctx: FarmContext, tmp_path: Path, database: Path, epoch: int
) -> tuple[ServerRole, str, BlobStore]:
    store = await FarmStore.open(database)
    blobs = BlobStore(tmp_path / "server-blobs")
    role = ServerRole(
        ctx,
        SERVER,
        epoch,
        store,
        manager_epoch=lambda site: 0,
        log=LogSource(store, SERVER, blobs),
        scratch=tmp_path / "snapshots",
        unclaimed_after=60.0,
    )
    port = next(_ports)
    await role.start("127.0.0.1", port)
    return role, f"tcp://127.0.0.1:{port}", blobs


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[Farm]:
    ctx = farm_context(FarmKey("replication", bytes(range(32))))
    zap = ZapHandler(ctx)
    server, endpoint, blobs = await start_server(
        ctx, tmp_path, tmp_path / "server.sqlite", epoch=1
    )
    # The standby fetches snapshots from the server node's blob store. There is no
    # node port here, so the standby shares the server's blob store instead.
    standby = Standby(
        ctx, STANDBY, tmp_path / "standby.sqlite", blobs, lambda node_id: []
    )
    await standby.open()
    try:
        yield Farm(ctx, server, standby, endpoint, blobs)
    finally:
        await standby.release()
        await server.close()
        await zap.stop()
        ctx.destroy(linger=0)


async def test_acknowledged_change_waits_for_the_standby(farm: Farm) -> None:
    farm.standby.follow(farm.endpoint, SERVER, 1)
    await eventually(lambda: farm.server.log.standbys)
    job_id = await farm.server.store.submit_job(sleep_job("shot"))
    head = await farm.server.log.head()
    assert await farm.server.log.wait_replicated(head)
    # wait_replicated returned, so the standby's file contains the job already.
    assert farm.standby.store is not None
    assert (await farm.standby.store.get_job(job_id)).name == "shot"
    assert farm.standby.freshness >= head


async def test_offline_standby_is_not_waited_for(farm: Farm) -> None:
    await farm.server.store.submit_job(sleep_job("alone"))
    started = time.monotonic()
    assert await farm.server.log.wait_replicated()
    assert time.monotonic() - started < 0.5


async def test_diverged_standby_merges_then_resyncs(farm: Farm, tmp_path: Path) -> None:
    shared = await farm.server.store.submit_job(sleep_job("before the split"))
    farm.standby.follow(farm.endpoint, SERVER, 1)
    await eventually(lambda: farm.standby.freshness >= 1)
    head = await farm.server.log.head()
    await eventually(lambda: farm.standby.freshness == head)
    farm.standby.follow(None, None, 0)
    # The split: the standby's side elects it (epoch 2) and goes on alone.
    await farm.standby.release()
    own = await FarmStore.open(tmp_path / "standby.sqlite")
    await replica.set_writer(own, 2, STANDBY)
    theirs = await own.submit_job(sleep_job("submitted on the other side"))
    attempt = await own.lease_task(worker("w9"))
    assert attempt is not None and attempt.job_id == shared
    await own.complete_attempt(attempt.attempt_id, [])
    await own.close()
    # Meanwhile the server's side goes on too.
    mine = await farm.server.store.submit_job(sleep_job("submitted here"))
    # The heal: the standby side lost; it follows the server again.
    await farm.standby.open()
    farm.standby.follow(farm.endpoint, SERVER, 1)
    store = farm.server.store

    async def merged() -> bool:
        jobs = {job.id for job in await store.list_jobs()}
        if not {shared, theirs, mine} <= jobs:
            return False
        return (await store.list_tasks(shared))[0].status == TaskStatus.COMPLETED

    deadline = time.monotonic() + 15
    while not await merged():
        assert time.monotonic() < deadline, "merge did not arrive"
        await asyncio.sleep(0.1)
    tasks = await store.list_tasks(shared)
    assert [t.status for t in tasks[1:]] == [TaskStatus.QUEUED] * 3
    # The standby replaced its diverged file with the server's state.
    head = await farm.server.log.head()
    await eventually(lambda: farm.standby.freshness >= head, timeout=15)
    assert farm.standby.store is not None
    standby_jobs = {job.id for job in await farm.standby.store.list_jobs()}
    assert standby_jobs == {shared, theirs, mine}


def test_pull_reply_schema_rejects_malformed_changes() -> None:
    change: dict[str, Any] = {
        "seq": 1,
        "epoch": 1,
        "holder": SERVER,
        "table": "jobs",
        "op": "u",
        "key": '["x"]',
        "row": None,
    }
    good: dict[str, Any] = {"status": "changes", "changes": [change], "terms": []}
    assert PULL_REPLY.check("reply", good) is not None
    bad_seq = {**good, "changes": [{**change, "seq": "1"}]}
    with pytest.raises(ProtocolError, match="seq"):
        PULL_REPLY.check("reply", bad_seq)
    extra = {**good, "changes": [{**change, "sql": "DROP TABLE jobs"}]}
    with pytest.raises(ProtocolError, match="sql"):
        PULL_REPLY.check("reply", extra)
    with pytest.raises(ProtocolError, match="changes"):
        PULL_REPLY.check("reply", {"status": "changes", "terms": []})
