"""The worker's outbox: results kept on disk through manager changes, restarts and
a submitting node that cannot take its files yet.

The integration tests connect a real WorkerAgent over CURVE-secured ZeroMQ to a
fake manager (a RouterEndpoint that records each message and replies as the
test configures it)
and, for outputs, to a real ClientService behind another RouterEndpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from render_helpers import render_children

import flamenco_p2p.roles.worker as worker_module
from flamenco_p2p.blobs import CHUNK_SIZE, BlobStore
from flamenco_p2p.farmkey import new_farm_key
from flamenco_p2p.node_client import ClientService
from flamenco_p2p.protocol.messages import Message
from flamenco_p2p.render.controller import FrameOutput, RenderBackend, RenderEvent
from flamenco_p2p.roles.manager import MANAGER_OPS
from flamenco_p2p.roles.outbox import (
    DELIVERING,
    REPORT_OPS,
    REPORTING,
    RUNNING,
    Outbox,
    attempt_key,
)
from flamenco_p2p.roles.worker import WorkerAgent
from flamenco_p2p.security import FarmContext, ZapHandler, farm_context
from flamenco_p2p.transport import RemoteError, Reply, RouterEndpoint

NODE = "1" * 32
MANAGER = "2" * 32
SUBMITTER = "3" * 32
WORKER_ID = f"{NODE}.0"
OUTPUT_OPS = frozenset({"output_put"})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def worker_info() -> dict[str, Any]:
    return {
        "worker_id": WORKER_ID,
        "node_id": NODE,
        "site": "lab",
        "capabilities": {
            "cpu_cores": 1,
            "gpu_types": [],
            "blender_version": None,
            "tags": [],
        },
    }


def sleep_assignment(attempt_id: str, duration: float = 0.0) -> dict[str, Any]:
    return {
        "job_id": "job",
        "task_id": f"task-of-{attempt_id}",
        "attempt_id": attempt_id,
        "job_type": "sleep",
        "frames": [],
        "payload": {"duration": duration},
        "settings": {},
        "worker_id": WORKER_ID,
        "submitter_node": SUBMITTER,
    }


def render_assignment(
    attempt_id: str, sha256: str, frames: list[int]
) -> dict[str, Any]:
    return {
        "job_id": "render-job",
        "task_id": f"task-of-{attempt_id}",
        "attempt_id": attempt_id,
        "job_type": "blender-render",
        "frames": frames,
        "payload": {},
        "settings": {
            "blend_sha256": sha256,
            "blend_name": "demo.blend",
            "output_name": "frame_####",
            "overrides": {},
        },
        "worker_id": WORKER_ID,
        "submitter_node": SUBMITTER,
    }


def saved_record(outbox_dir: Path, attempt_id: str) -> dict[str, Any] | None:
    """Return an attempt's record as the worker saved it, or None if it has none."""
    path = outbox_dir / (attempt_key(attempt_id) + ".json")
    try:
        record: dict[str, Any] = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    return record


def saved_state(outbox_dir: Path, attempt_id: str) -> str | None:
    record = saved_record(outbox_dir, attempt_id)
    return None if record is None else str(record["state"])


async def eventually(
    condition: Callable[[], bool], what: str, timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


class FakeManager:
    """A manager port that records every message and replies as configured.

    ``answers[op]`` lists the error codes that the next requests of that
    operation get, one each, before one is accepted. "silent" sends no reply.
    """

    def __init__(self, ctx: FarmContext) -> None:
        self.endpoint = RouterEndpoint(
            ctx, MANAGER, "fake-manager", self.handle, MANAGER_OPS
        )
        self.endpoint.bind("127.0.0.1", free_port())
        self.messages: list[Message] = []
        self.answers: dict[str, deque[str]] = {}
        # Rejects hellos with the "interrupted" field, as managers before it did.
        self.rejects_interrupted = False
        self.identity: bytes | None = None

    @property
    def url(self) -> str:
        return self.endpoint.endpoint

    async def handle(self, identity: bytes, message: Message) -> dict[str, Any] | None:
        self.identity = identity
        self.messages.append(message)
        answers = self.answers.get(message.op)
        if answers:
            code = answers.popleft()
            if code == "silent":
                return None
            raise RemoteError(code, f"the fake manager answers {code}", "attempt_id")
        if self.rejects_interrupted and "interrupted" in message.body:
            raise RemoteError("invalid", ": unknown field 'interrupted'", "")
        if message.op == "worker_hello":
            return {"epoch": 1}
        if message.op in REPORT_OPS:
            return {"task_id": "task", "status": "ok"}
        return None

    def bodies(self, op: str) -> list[dict[str, Any]]:
        return [m.body for m in self.messages if m.op == op]

    def reports(self) -> list[Message]:
        return [m for m in self.messages if m.op in REPORT_OPS]

    async def push(self, op: str, body: dict[str, Any]) -> None:
        assert self.identity is not None, "the worker has not said hello yet"
        assert await self.endpoint.send(self.identity, op, body)


class Submitter:
    """A real ClientService receiving outputs, behind a RouterEndpoint.

    Each (name, offset) in ``hang_once`` gets no reply the first time it
    arrives, which breaks a transfer off mid-file as a crash or a partition
    would.
    """

    def __init__(self, ctx: FarmContext, data_dir: Path, output_dir: Path) -> None:
        node = SimpleNamespace(config=SimpleNamespace(data_dir=data_dir))
        self.service = ClientService(cast(Any, node))
        self.output_dir = output_dir
        self.endpoint = RouterEndpoint(
            ctx, SUBMITTER, "fake-submitter", self.handle, OUTPUT_OPS
        )
        self.endpoint.bind("127.0.0.1", free_port())
        self.puts: list[tuple[str, int]] = []
        self.hang_once: set[tuple[str, int]] = set()
        self.errors: list[str] = []

    def accept_job(self, job_id: str) -> None:
        self.service._record_submission(job_id, {"output_dir": str(self.output_dir)})

    async def handle(
        self, identity: bytes, message: Message
    ) -> dict[str, Any] | Reply | None:
        key = (message.body["name"], message.body["offset"])
        self.puts.append(key)
        if key in self.hang_once:
            self.hang_once.discard(key)
            return None
        try:
            return await self.service.handle(identity, message)
        except RemoteError as exc:
            self.errors.append(f"{exc.code}:{exc.field}")
            raise

    async def close(self) -> None:
        await self.endpoint.close()
        await self.service.close()


@pytest.fixture
async def ctx() -> AsyncIterator[FarmContext]:
    context = farm_context(new_farm_key("outbox-test"))
    zap = ZapHandler(context)
    try:
        yield context
    finally:
        await zap.stop()
        context.destroy(linger=0)


class Farm:
    """Agents and fake managers of one test, all closed at its end."""

    def __init__(self, ctx: FarmContext, root: Path) -> None:
        self.ctx = ctx
        self.root = root
        self.outbox_dir = root / "outbox"
        self.endpoints: dict[str, list[str]] = {}
        self.agents: list[WorkerAgent] = []
        self.managers: list[FakeManager] = []
        self.submitters: list[Submitter] = []

    def agent(self, **options: Any) -> WorkerAgent:
        agent = WorkerAgent(
            self.ctx,
            NODE,
            [worker_info()],
            RenderBackend(),
            BlobStore(self.root / "blobs"),
            self.root / "scratch",
            lambda node_id: self.endpoints.get(node_id, []),
            0.2,
            outbox_dir=self.outbox_dir,
            **options,
        )
        self.agents.append(agent)
        return agent

    def manager(self) -> FakeManager:
        manager = FakeManager(self.ctx)
        self.managers.append(manager)
        return manager

    def submitter(self) -> Submitter:
        submitter = Submitter(
            self.ctx, self.root / "submitter", self.root / "delivered"
        )
        self.submitters.append(submitter)
        return submitter

    async def close(self) -> None:
        for agent in self.agents:
            await agent.close()
        for manager in self.managers:
            await manager.endpoint.close()
        for submitter in self.submitters:
            await submitter.close()


@pytest.fixture
async def farm(ctx: FarmContext, tmp_path: Path) -> AsyncIterator[Farm]:
    farm = Farm(ctx, tmp_path)
    try:
        yield farm
    finally:
        await farm.close()


async def started(agent: WorkerAgent, manager: FakeManager | None) -> WorkerAgent:
    await agent.start()
    if manager is not None:
        await agent.set_manager(manager.url, 1)
        assert manager.bodies("worker_hello"), "the worker said no hello"
    return agent


def write_frame(directory: Path, name: str, size: int) -> FrameOutput:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    data = os.urandom(size)
    path.write_bytes(data)
    return FrameOutput(1, str(path), size, hashlib.sha256(data).hexdigest())


# Outbox records on real files ------------------------------------------------


def test_outbox_failed_write_keeps_previous_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = Outbox(tmp_path)
    assignment = sleep_assignment("attempt-1")
    outbox.start(assignment)
    assert saved_state(tmp_path, "attempt-1") == RUNNING

    def crash(source: Any, target: Any) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        outbox.save_report(assignment, "task_done", {"attempt_id": "attempt-1"})
    monkeypatch.undo()
    assert saved_state(tmp_path, "attempt-1") == RUNNING
    assert list(tmp_path.glob("*.tmp")), "the interrupted write left no temporary"

    records = Outbox(tmp_path).load()
    assert [r.attempt_id for r in records] == ["attempt-1"]
    assert records[0].interrupted
    assert not list(tmp_path.glob("*.tmp"))


def test_outbox_reload_returns_every_state(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    running = sleep_assignment("attempt-running")
    reporting = sleep_assignment("attempt-reporting")
    delivering = sleep_assignment("attempt-delivering")
    outbox.start(running)
    outbox.start(reporting)
    outbox.save_report(
        reporting, "task_failed", {"attempt_id": "attempt-reporting", "error": "boom"}
    )
    outbox.start(delivering)
    frame = write_frame(tmp_path / "render", "frame_0001.png", 5000)
    moved = outbox.keep_outputs(delivering, [frame])
    assert not Path(frame.path).exists()
    assert Path(moved[0].path).parent == outbox.outputs_dir("attempt-delivering")

    # A new Outbox on the same folder reads what the next start of the node reads.
    records = {r.attempt_id: r for r in Outbox(tmp_path / "outbox").load()}
    assert set(records) == {
        "attempt-running",
        "attempt-reporting",
        "attempt-delivering",
    }
    assert records["attempt-running"].interrupted
    assert records["attempt-running"].assignment == running
    report = records["attempt-reporting"].report
    assert report is not None
    assert report.op == "task_failed"
    assert report.body == {"attempt_id": "attempt-reporting", "error": "boom"}
    assert not records["attempt-reporting"].interrupted
    restored = records["attempt-delivering"]
    assert restored.state == DELIVERING
    assert not restored.interrupted
    assert restored.outputs == tuple(moved)
    data = Path(restored.outputs[0].path).read_bytes()
    assert hashlib.sha256(data).hexdigest() == frame.sha256


def test_outbox_report_deletes_kept_outputs(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    assignment = sleep_assignment("attempt-1")
    frame = write_frame(tmp_path / "render", "frame_0001.png", 100)
    outbox.keep_outputs(assignment, [frame])
    assert outbox.outputs_dir("attempt-1").is_dir()
    outbox.save_report(assignment, "task_canceled", {"attempt_id": "attempt-1"})
    assert not outbox.outputs_dir("attempt-1").exists()
    assert saved_state(tmp_path, "attempt-1") == REPORTING


def test_outbox_lost_output_means_interrupted(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    assignment = sleep_assignment("attempt-1")
    frames = [
        write_frame(tmp_path / "render", "frame_0001.png", 100),
        write_frame(tmp_path / "render", "frame_0002.png", 100),
    ]
    moved = outbox.keep_outputs(assignment, frames)
    Path(moved[1].path).unlink()
    records = Outbox(tmp_path).load()
    assert len(records) == 1
    assert records[0].interrupted
    assert records[0].outputs == ()
    assert not outbox.outputs_dir("attempt-1").exists()


def test_outbox_unreadable_record_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path)
    outbox.start(sleep_assignment("attempt-good"))
    broken = tmp_path / (attempt_key("attempt-broken") + ".json")
    broken.write_text('{"version": 1, "attempt_id": "attempt-bro')
    records = Outbox(tmp_path).load()
    assert [r.attempt_id for r in records] == ["attempt-good"]
    assert not broken.exists()
    assert broken.with_name(broken.name + ".corrupt").exists()
    assert "is unreadable" in caplog.text


def test_outbox_remove_and_orphan_cleanup(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    assignment = sleep_assignment("attempt-1")
    outbox.keep_outputs(assignment, [write_frame(tmp_path / "r", "a.png", 10)])
    outbox.remove("attempt-1")
    assert saved_record(tmp_path, "attempt-1") is None
    assert not outbox.outputs_dir("attempt-1").exists()
    outbox.remove("attempt-1")  # removing twice is fine
    orphan = outbox.outputs_dir("attempt-orphan")
    orphan.mkdir()
    (orphan / "a.png").write_bytes(b"x")
    assert Outbox(tmp_path).load() == []
    assert not orphan.exists()


# A worker agent and a fake manager over ZeroMQ -------------------------------


async def test_result_waits_for_manager_and_is_sent_once(farm: Farm) -> None:
    first = farm.manager()
    agent = await started(farm.agent(), first)
    await first.push(
        "task_assign", {"assignment": sleep_assignment("attempt-a", duration=0.5)}
    )
    slot = agent.slots[WORKER_ID]
    await eventually(lambda: slot.running is not None, "the attempt starts")
    await agent.set_manager(None, 1)
    # Blender log lines that arrive while no manager is set wait in memory.
    agent._on_event(slot, RenderEvent("log", None, None, "rendered without a manager"))
    await eventually(
        lambda: saved_state(farm.outbox_dir, "attempt-a") == REPORTING,
        "the result is saved",
    )
    await asyncio.sleep(0.5)
    assert saved_state(farm.outbox_dir, "attempt-a") == REPORTING

    second = farm.manager()
    await agent.set_manager(second.url, 2)
    await eventually(lambda: bool(second.reports()), "the result reaches a manager")
    await eventually(
        lambda: saved_record(farm.outbox_dir, "attempt-a") is None,
        "the acknowledged result leaves the outbox",
    )
    await asyncio.sleep(0.5)
    assert [m.op for m in second.reports()] == ["task_done"]
    assert second.reports()[0].body == {
        "attempt_id": "attempt-a",
        "outputs": [],
        "worker_id": WORKER_ID,
    }
    assert first.reports() == []
    lines = [
        line
        for body in second.bodies("task_log")
        if body["attempt_id"] == "attempt-a"
        for line in body["lines"]
    ]
    # The sleep task logs its start and end around the line the test added.
    assert lines == [
        f"sleeping 0.5 s on {'1' * 32}",
        "rendered without a manager",
        "slept 0.5 s",
    ]


async def test_result_survives_agent_restart(farm: Farm) -> None:
    manager = farm.manager()
    manager.answers["task_done"] = deque(["unavailable"] * 1000)
    first = await started(farm.agent(), manager)
    await manager.push(
        "task_assign", {"assignment": sleep_assignment("attempt-r", duration=0.1)}
    )
    await eventually(lambda: bool(manager.reports()), "the first report try")
    begin = time.monotonic()
    await first.close()
    assert time.monotonic() - begin < 2.0
    assert saved_state(farm.outbox_dir, "attempt-r") == REPORTING
    tries = len(manager.reports())

    manager.answers.clear()
    await started(farm.agent(), manager)
    await eventually(
        lambda: saved_record(farm.outbox_dir, "attempt-r") is None,
        "the restarted worker delivers the result",
    )
    after_restart = manager.reports()[tries:]
    assert [m.op for m in after_restart] == ["task_done"]
    assert after_restart[0].body["attempt_id"] == "attempt-r"


async def test_stopped_attempt_announced_as_interrupted(farm: Farm) -> None:
    manager = farm.manager()
    first = await started(farm.agent(), manager)
    await manager.push(
        "task_assign", {"assignment": sleep_assignment("attempt-i", duration=30)}
    )
    await eventually(
        lambda: saved_state(farm.outbox_dir, "attempt-i") == RUNNING,
        "the attempt is recorded",
    )
    begin = time.monotonic()
    await first.close()
    assert time.monotonic() - begin < 2.0
    assert saved_state(farm.outbox_dir, "attempt-i") == RUNNING
    assert manager.reports() == []

    hellos_before = len(manager.bodies("worker_hello"))
    await started(farm.agent(), manager)
    hello = manager.bodies("worker_hello")[hellos_before]
    assert hello["interrupted"] == ["attempt-i"]
    assert hello["running"] == []
    assert saved_record(farm.outbox_dir, "attempt-i") is None
    await manager.push("worker_reset", {"worker_id": WORKER_ID})
    await eventually(
        lambda: len(manager.bodies("worker_hello")) > hellos_before + 1,
        "a second hello",
    )
    assert "interrupted" not in manager.bodies("worker_hello")[-1]
    assert manager.reports() == []


async def test_killed_attempt_kept_until_hello_acknowledged(farm: Farm) -> None:
    # A record without a report is what a node killed mid-render leaves behind.
    Outbox(farm.outbox_dir).start(sleep_assignment("attempt-k", duration=30))
    manager = farm.manager()
    manager.answers["worker_hello"] = deque(["unavailable"])
    agent = farm.agent()
    await agent.start()
    await agent.set_manager(manager.url, 1)
    assert manager.bodies("worker_hello")[0]["interrupted"] == ["attempt-k"]
    assert saved_state(farm.outbox_dir, "attempt-k") == RUNNING

    await manager.push("worker_reset", {"worker_id": WORKER_ID})
    await eventually(lambda: len(manager.bodies("worker_hello")) == 2, "a new hello")
    assert manager.bodies("worker_hello")[1]["interrupted"] == ["attempt-k"]
    await eventually(
        lambda: saved_record(farm.outbox_dir, "attempt-k") is None,
        "the announced attempt leaves the outbox",
    )
    assert agent.interrupted == {}


async def test_interrupted_dropped_for_older_manager(
    farm: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    Outbox(farm.outbox_dir).start(sleep_assignment("attempt-o", duration=30))
    manager = farm.manager()
    manager.rejects_interrupted = True
    agent = await started(farm.agent(), manager)
    hellos = manager.bodies("worker_hello")
    assert len(hellos) == 2
    assert hellos[0]["interrupted"] == ["attempt-o"]
    assert "interrupted" not in hellos[1]
    assert saved_record(farm.outbox_dir, "attempt-o") is None
    assert agent.interrupted == {}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("attempt-o" in r.getMessage() for r in warnings), caplog.text
    await manager.push("task_assign", {"assignment": sleep_assignment("attempt-p")})
    await eventually(lambda: bool(manager.reports()), "the next attempt reports")


async def test_not_found_retried_until_server_knows(farm: Farm) -> None:
    manager = farm.manager()
    manager.answers["task_done"] = deque(["not_found", "not_found", "unavailable"])
    await started(farm.agent(unknown_attempt_patience=30.0), manager)
    await manager.push("task_assign", {"assignment": sleep_assignment("attempt-n")})
    await eventually(lambda: len(manager.reports()) == 4, "four report tries")
    await eventually(
        lambda: saved_record(farm.outbox_dir, "attempt-n") is None,
        "the result is accepted",
    )
    assert [m.op for m in manager.reports()] == ["task_done"] * 4
    assert manager.answers["task_done"] == deque()


async def test_not_found_dropped_after_patience(
    farm: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    manager = farm.manager()
    manager.answers["task_done"] = deque(["not_found"] * 1000)
    await started(farm.agent(unknown_attempt_patience=1.0), manager)
    begin = time.monotonic()
    await manager.push("task_assign", {"assignment": sleep_assignment("attempt-u")})
    await eventually(lambda: bool(manager.reports()), "the first report try")
    await eventually(
        lambda: saved_record(farm.outbox_dir, "attempt-u") is None,
        "the unknown attempt's result is dropped",
    )
    assert time.monotonic() - begin >= 1.0
    tries = len(manager.reports())
    assert tries >= 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("attempt-u" in r.getMessage() for r in errors), caplog.text
    await asyncio.sleep(0.8)
    assert len(manager.reports()) == tries


async def test_stale_attempt_reply_drops_report(
    farm: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    manager = farm.manager()
    manager.answers["task_done"] = deque(["stale_attempt"] * 10)
    await started(farm.agent(), manager)
    await manager.push("task_assign", {"assignment": sleep_assignment("attempt-s")})
    await eventually(lambda: bool(manager.reports()), "the report try")
    await eventually(
        lambda: saved_record(farm.outbox_dir, "attempt-s") is None,
        "the rejected result is dropped",
    )
    await asyncio.sleep(0.8)
    assert len(manager.reports()) == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "attempt-s" in r.getMessage() and "stale_attempt" in r.getMessage()
        for r in warnings
    ), caplog.text


async def test_stale_cancel_stops_work_and_sends_nothing(
    farm: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    manager = farm.manager()
    agent = await started(farm.agent(), manager)
    slot = agent.slots[WORKER_ID]
    await manager.push(
        "task_assign", {"assignment": sleep_assignment("attempt-x", duration=30)}
    )
    await eventually(
        lambda: saved_state(farm.outbox_dir, "attempt-x") == RUNNING,
        "the attempt is recorded",
    )
    begin = time.monotonic()
    await manager.push("task_cancel", {"attempt_id": "attempt-x", "reason": "stale"})
    await eventually(lambda: slot.running is None, "the stale attempt stops")
    assert time.monotonic() - begin < 2.0
    await eventually(
        lambda: saved_record(farm.outbox_dir, "attempt-x") is None,
        "the stale attempt leaves the outbox",
    )
    await asyncio.sleep(0.8)
    assert manager.reports() == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("attempt-x" in r.getMessage() for r in warnings), caplog.text

    # A cancel without a reason still reports the attempt canceled.
    await manager.push(
        "task_assign", {"assignment": sleep_assignment("attempt-y", duration=30)}
    )
    await eventually(lambda: slot.running is not None, "the next attempt starts")
    await manager.push("task_cancel", {"attempt_id": "attempt-y"})
    await eventually(lambda: bool(manager.reports()), "the cancel is reported")
    assert [(m.op, m.body) for m in manager.reports()] == [
        ("task_canceled", {"attempt_id": "attempt-y", "worker_id": WORKER_ID})
    ]


async def test_delivery_resumes_after_restart(
    farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "OUTPUT_PUT_TIMEOUT", 0.5)
    assignment = sleep_assignment("attempt-d")
    assignment["job_id"] = "render-job"
    small = write_frame(farm.root / "render", "frame_0001.png", 1000)
    large = write_frame(farm.root / "render", "frame_0002.exr", CHUNK_SIZE + 5000)
    # What a worker stopped while its submitting node was down leaves behind.
    outbox = Outbox(farm.outbox_dir)
    outbox.start(assignment)
    outbox.keep_outputs(assignment, [small, large])

    submitter = farm.submitter()
    submitter.accept_job("render-job")
    # The second chunk of the large file gets no reply on its first arrival.
    submitter.hang_once.add(("frame_0002.exr", CHUNK_SIZE))
    manager = farm.manager()
    agent = await started(farm.agent(), manager)
    assert manager.bodies("worker_hello")[0]["running"] == ["attempt-d"]
    await asyncio.sleep(0.6)
    assert saved_state(farm.outbox_dir, "attempt-d") == DELIVERING
    assert agent.slots[WORKER_ID].running is not None
    assert manager.bodies("worker_heartbeat"), "the busy worker stopped heartbeats"

    farm.endpoints[SUBMITTER] = [submitter.endpoint.endpoint]
    await eventually(lambda: bool(manager.reports()), "the result is reported")
    report = manager.reports()[0]
    assert report.op == "task_done"
    assert report.body["outputs"] == [
        {"frame": 1, "name": f.name, "sha256": s, "size": n}
        for f, s, n in (
            (Path(small.path), small.sha256, small.size),
            (Path(large.path), large.sha256, large.size),
        )
    ]
    for frame in (small, large):
        data = (submitter.output_dir / Path(frame.path).name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == frame.sha256
    # The small file is sent once. The large one starts twice: in the first
    # try, and in the retry, which the receiver takes as a restart of the
    # transfer that the first try left open.
    assert submitter.puts.count(("frame_0001.png", 0)) == 1
    assert submitter.puts.count(("frame_0002.exr", 0)) == 2
    assert submitter.errors == []
    await eventually(
        lambda: saved_record(farm.outbox_dir, "attempt-d") is None,
        "the delivered attempt leaves the outbox",
    )
    assert list(farm.outbox_dir.iterdir()) == []


async def test_delivery_refused_by_submitter_fails_attempt(farm: Farm) -> None:
    assignment = sleep_assignment("attempt-f")
    assignment["job_id"] = "render-job"
    outbox = Outbox(farm.outbox_dir)
    outbox.start(assignment)
    # The submitting node refuses a file name that could hide a file.
    hidden = write_frame(farm.root / "render", ".frame_0001.png", 100)
    outbox.keep_outputs(assignment, [hidden])
    submitter = farm.submitter()
    submitter.accept_job("render-job")
    farm.endpoints[SUBMITTER] = [submitter.endpoint.endpoint]
    manager = farm.manager()
    await started(farm.agent(), manager)
    await eventually(lambda: bool(manager.reports()), "the failure is reported")
    report = manager.reports()[0]
    assert report.op == "task_failed"
    assert "is not a plain file name" in report.body["error"]
    assert submitter.errors == ["invalid:name"]
    await eventually(
        lambda: saved_record(farm.outbox_dir, "attempt-f") is None,
        "the failed attempt leaves the outbox",
    )
    assert list(farm.outbox_dir.iterdir()) == []
    assert not (submitter.output_dir / ".frame_0001.png").exists()


# Real renders through bpy ----------------------------------------------------


async def add_demo_blend(farm: Farm, **scene: Any) -> str:
    from flamenco_p2p.render.demo_scene import make_demo_scene

    blend = farm.root / "source" / "demo.blend"
    blend.parent.mkdir()
    await asyncio.to_thread(make_demo_scene, blend, **scene)
    sha256, _size = await BlobStore(farm.root / "blobs").add_file(blend)
    return sha256


@pytest.mark.render
@pytest.mark.slow
async def test_render_outputs_wait_for_unknown_submitter(farm: Farm) -> None:
    sha256 = await add_demo_blend(farm, frames=2, resolution=(64, 36), samples=4)
    submitter = farm.submitter()
    submitter.accept_job("render-job")
    manager = farm.manager()
    agent = await started(farm.agent(), manager)
    assignment = render_assignment("attempt-b", sha256, [1, 2])
    await manager.push("task_assign", {"assignment": assignment})
    await eventually(
        lambda: saved_state(farm.outbox_dir, "attempt-b") == DELIVERING,
        "the rendered frames wait in the outbox",
        timeout=120,
    )
    outbox_names = sorted(
        p.name for p in Outbox(farm.outbox_dir).outputs_dir("attempt-b").iterdir()
    )
    assert outbox_names == ["frame_0001.png", "frame_0002.png"]
    heartbeats = len(manager.bodies("worker_heartbeat"))
    await asyncio.sleep(1.0)
    assert len(manager.bodies("worker_heartbeat")) > heartbeats
    assert manager.reports() == []
    await manager.push("worker_reset", {"worker_id": WORKER_ID})
    await eventually(lambda: len(manager.bodies("worker_hello")) == 2, "a new hello")
    assert manager.bodies("worker_hello")[1]["running"] == ["attempt-b"]
    assert agent.slots[WORKER_ID].running is not None

    farm.endpoints[SUBMITTER] = [submitter.endpoint.endpoint]
    await eventually(lambda: bool(manager.reports()), "the result is reported")
    report = manager.reports()[0]
    assert report.op == "task_done", report.body
    names = [output["name"] for output in report.body["outputs"]]
    assert names == ["frame_0001.png", "frame_0002.png"]
    for output in report.body["outputs"]:
        data = (submitter.output_dir / output["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == output["sha256"]
    assert manager.bodies("task_log"), "no Blender log lines reached the manager"
    await eventually(
        lambda: saved_record(farm.outbox_dir, "attempt-b") is None,
        "the delivered attempt leaves the outbox",
    )
    assert list((farm.root / "scratch" / "out").iterdir()) == []


@pytest.mark.render
@pytest.mark.slow
async def test_render_stale_cancel_stops_blender(farm: Farm) -> None:
    sha256 = await add_demo_blend(farm, frames=2, resolution=(640, 360), samples=4096)
    manager = farm.manager()
    agent = await started(farm.agent(), manager)
    await manager.push(
        "task_assign", {"assignment": render_assignment("attempt-z", sha256, [1, 2])}
    )
    await eventually(
        lambda: bool(render_children(farm.root)), "Blender starts", timeout=60
    )
    await asyncio.sleep(1.0)
    begin = time.monotonic()
    await manager.push("task_cancel", {"attempt_id": "attempt-z", "reason": "stale"})
    await eventually(
        lambda: not render_children(farm.root), "Blender stops", timeout=10
    )
    assert time.monotonic() - begin < 10
    await eventually(lambda: agent.slots[WORKER_ID].running is None, "the attempt ends")
    await eventually(
        lambda: saved_record(farm.outbox_dir, "attempt-z") is None,
        "the stale attempt leaves the outbox",
    )
    await asyncio.sleep(0.5)
    assert manager.reports() == []
