"""Failover of a farm of real daemons on a test LAN (network namespaces and a bridge).

Each test injects one kind of fault with the tools of tests/netns.py: SIGKILL of
role holders and workers, a partition of the LAN, an outage between a worker and
its manager, and a frame that crashes Blender. Renders are real bpy renders of
the demo scene. A text block in the blend file paces or crashes them, so the
nodes run with ``[render] allow_scripts = true``.

The randomized test draws its plan from FLAMENCO_FAILOVER_SEED (default 1204)
and prints the seed in every failure, so a failing plan can be run again.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from failover_lab import FailoverFarm
from netns import NetnsLab, netns_available, replica_attempts, replica_summary
from render_helpers import render_children

from flamenco_p2p.render.controller import child_environment
from flamenco_p2p.render.demo_scene import make_demo_scene
from flamenco_p2p.render.validate import validate_output

reason = netns_available()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(reason is not None, reason=reason or ""),
]

SEED = int(os.environ.get("FLAMENCO_FAILOVER_SEED", "1204"))
ROUNDS = 20

SERVER_ONLY = "[roles]\nmanager = false\n"
MANAGER_ONLY = "[roles]\nserver = false\n"
NO_ROLES = "[roles]\nmanager = false\nserver = false\n"
NO_WORKER = "[worker]\nslots = 0\n"
SCRIPTS = "[render]\nallow_scripts = true\n"
# The fast test timing without worker_silent_after, so that the node default
# applies: how long a manager waits for a silent worker is what the outage tests.
TIMING_DEFAULT_SILENCE = """
[timing]
heartbeat_interval = 0.2
suspect_after = 1.0
dead_after = 2.0
settle_time = 0.8
"""
# Seconds of silence after which the manager requeues a worker's task in the long
# outage test. An outage only a few seconds longer then keeps the test short.
SHORT_SILENCE = 6.0
TIMING_SHORT_SILENCE = (
    TIMING_DEFAULT_SILENCE + f"worker_silent_after = {SHORT_SILENCE}\n"
)

# Opens argv[-2], registers a text block with the code in argv[-1] and saves.
# A registered text block runs when a node opens the file with scripts allowed.
ADD_TEXT_BLOCK = """
import sys
import bpy
blend, code = sys.argv[-2:]
bpy.ops.wm.open_mainfile(filepath=blend, load_ui=False)
text = bpy.data.texts.new("failover_handler.py")
text.write(code)
text.use_module = True
bpy.context.preferences.filepaths.save_version = 0
bpy.ops.wm.save_as_mainfile(filepath=blend)
"""

# Makes every frame take {seconds} s longer, without using the CPU, so that a
# fault can land while a task runs. A render calls frame_change_pre more than
# once per frame (three times with bpy 5.0.1), so only the first call sleeps.
PACE_CODE = """
import time
import bpy

paced_frames = set()

def pace_frame(scene, *args):
    if scene.frame_current not in paced_frames:
        paced_frames.add(scene.frame_current)
        time.sleep({seconds})

bpy.app.handlers.frame_change_pre.append(pace_frame)
"""

CRASH_CODE = """
import os
import resource
import bpy

def crash_on_frame(scene, *args):
    if scene.frame_current == {frame}:
        # No core dump, because the test causes this crash on purpose.
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.abort()

bpy.app.handlers.frame_change_pre.append(crash_on_frame)
"""


def scripted_scene(path: Path, frames: int, code: str) -> Path:
    """Build the demo scene at path with a registered text block that runs code."""
    make_demo_scene(path, frames=frames)
    subprocess.run(
        [sys.executable, "-c", ADD_TEXT_BLOCK, str(path), code],
        env=child_environment(path.parent / "scene-maker"),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return path


def frame_names(frames: Iterable[int]) -> list[str]:
    return [f"frame_{frame:04d}.png" for frame in frames]


def check_frames(output: Path, frames: Iterable[int]) -> None:
    """Assert that output contains exactly one valid, distinct PNG per frame."""
    names = sorted(p.name for p in output.iterdir() if not p.name.startswith("."))
    assert names == frame_names(frames), f"{output}: {names}"
    hashes = {validate_output(str(output / name)).sha256 for name in names}
    assert len(hashes) == len(names), f"{output}: some frames are identical"


def wait_until(
    check: Callable[[], Any], timeout: float, what: str, logs: Callable[[], str]
) -> Any:
    """Poll check every 0.3 s until it returns a true value, which is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{logs()}")


def mid_job(farm: FailoverFarm, job_id: str, via: list[int]) -> dict[str, Any]:
    """Wait until the job has a completed task and a task still to run."""

    def check() -> dict[str, Any] | None:
        view = farm.job_view(job_id, via)
        statuses = Counter(t["status"] for t in view["tasks"])
        if statuses["completed"] >= 1 and statuses["active"] >= 1:
            return view
        return None

    view: dict[str, Any] = wait_until(
        check, 120, f"job {job_id} to be half done", farm.logs
    )
    return view


def role_nodes(view: dict[str, Any], role: str) -> list[str]:
    """Return the ids of the nodes that a status view lists with role."""
    return [
        n["node_id"]
        for n in view["nodes"]
        if any(r["role"] == role for r in n["roles"])
    ]


@pytest.mark.render
def test_failover_kills_server_manager_worker(tmp_path: Path) -> None:
    frames = range(1, 13)
    blend = scripted_scene(tmp_path / "paced.blend", 12, PACE_CODE.format(seconds=2))
    # Node 3 is the artist's workstation: it submits and receives the frames, and
    # is never killed. Nodes 0 to 2 render. Nodes 0 and 2 may serve, and nodes 1
    # and 2 may manage.
    node_config = {
        0: SERVER_ONLY + SCRIPTS,
        1: MANAGER_ONLY + SCRIPTS,
        2: SCRIPTS,
        3: NO_ROLES + NO_WORKER,
    }
    workstation = 3
    workers = [0, 1, 2]
    submitted: list[str] = []
    with (
        NetnsLab(4) as lab,
        FailoverFarm(lab, tmp_path / "farm", node_config=node_config) as farm,
    ):
        farm.wait_for_farm(timeout=90)
        for phase in ("server", "manager", "worker"):
            output = tmp_path / f"frames-{phase}"
            job_id = farm.submit_render(
                workstation, blend, "1-12", str(output / "frame_####")
            )
            submitted.append(job_id)
            mid_job(farm, job_id, [workstation])
            victim = pick_victim(farm, phase, job_id, workstation)
            farm.kill(victim)
            killed_at = time.time()
            final = farm.wait_for_job(job_id, timeout=240, via=[workstation])
            assert final["job"]["status"] == "completed", (
                f"{phase} phase: job {job_id} ended {final['job']['status']}:"
                f" {final['job']['error']}\n{farm.logs()}"
            )
            assert [t["status"] for t in final["tasks"]] == ["completed"] * 12
            check_frames(output, frames)

            # Every worker that survived the kill must be given work again.
            status = farm.status(workstation)
            assert status is not None, farm.logs()
            server_dir = farm.data_dirs[farm.holder_index("server", status)]
            later = replica_attempts(server_dir, job_id)
            busy = {a.node_id for a in later if a.started > killed_at}
            survivors = {farm.node_id(i) for i in workers if i != victim}
            idle = {node_id[:8] for node_id in survivors - busy}
            assert not idle, (
                f"{phase} phase: workers {idle} started no task after the kill\n"
                f"{farm.logs()}"
            )

            farm.restart(victim)
            farm.wait_for_farm(timeout=90)
        status = farm.status(workstation)
    assert status is not None
    listed = {job["id"]: job["status"] for job in status["jobs"]}
    for job_id in submitted:
        assert listed.get(job_id) == "completed", f"job {job_id} lost: {listed}"


def pick_victim(farm: FailoverFarm, phase: str, job_id: str, spared: int) -> int:
    """Return the node to kill: a role holder, or a busy worker without a role."""
    status = farm.status(spared)
    assert status is not None, farm.logs()
    if phase == "server":
        return farm.holder_index("server", status)
    if phase == "manager":
        return farm.holder_index(farm.manager_role, status)
    holders = {held[0] for held in farm.holders(status).values() if held}

    def busy_plain_worker() -> int | None:
        view = farm.job_view(job_id, [spared])
        for task in view["tasks"]:
            if task["status"] != "active" or not task["worker_id"]:
                continue
            index = farm.index_of(task["worker_id"])
            if farm.node_id(index) not in holders and index != spared:
                return index
        return None

    victim: int = wait_until(
        busy_plain_worker, 60, "a task on a node without a role", farm.logs
    )
    return victim


@dataclass(frozen=True)
class RoundPlan:
    """What one randomized round does, drawn before the farm starts."""

    tasks: int
    duration: float
    via: int
    target: str
    node: int
    kill_after: float
    down_for: float

    def victim(self, farm: FailoverFarm, status: dict[str, Any]) -> int:
        """Return the node index to kill: a role's holder, or the plan's node."""
        if self.target == "server":
            return farm.holder_index("server", status)
        if self.target == "manager":
            return farm.holder_index(farm.manager_role, status)
        return self.node


def draw_plans(seed: int, nodes: int) -> list[RoundPlan]:
    """Draw every round's plan; each kind of target has the same chance."""
    rng = random.Random(seed)
    return [
        RoundPlan(
            tasks=rng.randint(4, 8),
            duration=round(rng.uniform(0.3, 1.0), 2),
            via=rng.randrange(nodes),
            target=rng.choice(("server", "manager", "node")),
            node=rng.randrange(nodes),
            kill_after=round(rng.uniform(0.0, 2.0), 2),
            down_for=round(rng.uniform(1.0, 4.0), 2),
        )
        for _ in range(ROUNDS)
    ]


@contextmanager
def failure_context(text: str) -> Iterator[None]:
    """Prefix any assertion failure in the block with text."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{text}: {exc}") from None


def test_failover_random_kills(tmp_path: Path) -> None:
    plans = draw_plans(SEED, 4)
    submitted: list[str] = []
    with NetnsLab(4) as lab, FailoverFarm(lab, tmp_path) as farm:
        farm.wait_for_farm(timeout=90)
        for number, plan in enumerate(plans):
            context = f"FLAMENCO_FAILOVER_SEED={SEED}, round {number}, {plan}"
            with failure_context(context):
                status = farm.status(plan.via)
                assert status is not None, farm.logs()
                victim = plan.victim(farm, status)
                job_id = farm.submit_sleep(
                    plan.via, plan.tasks, plan.duration, name=f"round {number}"
                )
                submitted.append(job_id)
                time.sleep(plan.kill_after)
                farm.kill(victim)
                time.sleep(plan.down_for)
                farm.restart(victim)
                view = farm.wait_for_job(job_id, timeout=120)
                job = view["job"]
                assert job["status"] == "completed", f"{job}\n{farm.logs()}"
                assert [t["index"] for t in view["tasks"]] == list(range(plan.tasks))
                assert {t["status"] for t in view["tasks"]} == {"completed"}
                assert job["task_counts"]["completed"] == plan.tasks, job
                farm.wait_for_farm(timeout=90)
        with failure_context(f"FLAMENCO_FAILOVER_SEED={SEED}, after the rounds"):
            status = farm.status(0)
            assert status is not None, farm.logs()
            listed = {job["id"]: job["status"] for job in status["jobs"]}
            lost = [job_id for job_id in submitted if job_id not in listed]
            assert not lost, f"acknowledged jobs missing from the status: {lost}"
            assert set(listed.values()) == {"completed"}, listed


def test_failover_partition_heals_to_one_state(tmp_path: Path) -> None:
    sides = [[0, 1], [2, 3]]
    with NetnsLab(4) as lab, FailoverFarm(lab, tmp_path) as farm:
        farm.wait_for_farm(timeout=90)
        lab.partition(sides)
        split_at = time.monotonic()
        for side in sides:
            farm.wait_for_farm(members=side, timeout=15)
        # 10 tasks of 3 s on a side's 2 workers run past the heal at 20 s.
        job_ids = [
            farm.submit_sleep(side[0], 10, 3.0, name=f"side of node {side[0]}")
            for side in sides
        ]
        time.sleep(max(0.0, split_at + 20 - time.monotonic()))
        lab.heal()
        for job_id in job_ids:
            view = farm.wait_for_job(job_id, timeout=120)
            assert view["job"]["status"] == "completed", f"{view}\n{farm.logs()}"
            assert {t["status"] for t in view["tasks"]} == {"completed"}
        views = farm.wait_for_farm(timeout=60)
        for view in views:
            assert len(role_nodes(view, "server")) == 1, view["nodes"]
            assert len(role_nodes(view, farm.manager_role)) == 1, view["nodes"]
            assert farm.holders(view) == farm.holders(views[0])

        def replicas_agree() -> bool:
            try:
                summaries = [replica_summary(d) for d in farm.data_dirs]
            except FileNotFoundError:
                return False
            done = all(
                job_id in s and s[job_id].status == "completed"
                for s in summaries
                for job_id in job_ids
            )
            return done and all(s == summaries[0] for s in summaries)

        wait_until(replicas_agree, 60, "the replicas to agree", farm.logs)
        summary = replica_summary(farm.data_dirs[0])
    assert set(job_ids) <= set(summary)
    for job_id in job_ids:
        assert [t.status for t in summary[job_id].tasks] == ["completed"] * 10


@pytest.mark.render
def test_failover_outage_keeps_running_task(tmp_path: Path) -> None:
    # One task of 8 frames, each paced to 5 s: about 45 s, past the 30 s outage.
    frames = range(1, 9)
    blend = scripted_scene(tmp_path / "slow.blend", 8, PACE_CODE.format(seconds=5))
    output = tmp_path / "frames"
    # Node 0 has both roles and renders nothing, node 1 is the only worker and
    # node 2 submits. The outage is between nodes 0 and 1 only.
    node_config = {0: NO_WORKER, 1: NO_ROLES + SCRIPTS, 2: NO_ROLES + NO_WORKER}
    with (
        NetnsLab(3) as lab,
        FailoverFarm(
            lab,
            tmp_path / "farm",
            node_config=node_config,
            timing=TIMING_DEFAULT_SILENCE,
        ) as farm,
    ):
        farm.wait_for_farm(timeout=90)
        job_id = farm.submit_render(
            2, blend, "1-8", str(output / "frame_####"), "--chunk", "8"
        )

        def running_on_worker() -> bool:
            task = farm.job_view(job_id, [2])["tasks"][0]
            return bool(task["status"] == "active" and task["worker_id"])

        wait_until(running_on_worker, 60, "the task to start", farm.logs)
        assert farm.index_of(farm.job_view(job_id, [2])["tasks"][0]["worker_id"]) == 1
        lab.cut(0, 1)
        time.sleep(30)
        lab.restore(0, 1)
        final = farm.wait_for_job(job_id, timeout=120, via=[2])
        received = farm.log_text(2)
        server_dir = farm.data_dirs[0]
        attempts = replica_attempts(server_dir, job_id)
    task = final["tasks"][0]
    assert final["job"]["status"] == "completed", f"{final}\n{received[-4000:]}"
    assert task["attempts"] == 1, f"the task ran again: {final['tasks']}"
    assert [(a.status, a.node_id) for a in attempts] == [("completed", farm.node_id(1))]
    check_frames(output, frames)
    for name in frame_names(frames):
        deliveries = re.findall(rf"received output \S*/{name} ", received)
        assert len(deliveries) == 1, f"{name} was delivered {len(deliveries)} times"


@pytest.mark.render
def test_failover_long_outage_requeues_task(tmp_path: Path) -> None:
    # One task of 6 frames, each paced to 4 s: about 26 s. The task is requeued
    # about 6 s into the 10 s outage, and the stale attempt still renders when
    # the link comes back.
    frames = range(1, 7)
    blend = scripted_scene(tmp_path / "slow.blend", 6, PACE_CODE.format(seconds=4))
    output = tmp_path / "frames"
    # Node 0 has both roles and renders nothing, nodes 1 and 2 render and node
    # 3 submits. The outage is between node 0 and the worker that runs the task.
    node_config = {
        0: NO_WORKER,
        1: NO_ROLES + SCRIPTS,
        2: NO_ROLES + SCRIPTS,
        3: NO_ROLES + NO_WORKER,
    }
    with (
        NetnsLab(4) as lab,
        FailoverFarm(
            lab,
            tmp_path / "farm",
            node_config=node_config,
            timing=TIMING_SHORT_SILENCE,
        ) as farm,
    ):
        farm.wait_for_farm(timeout=90)
        job_id = farm.submit_render(
            3, blend, "1-6", str(output / "frame_####"), "--chunk", "6"
        )

        def leased_worker() -> str | None:
            task = farm.job_view(job_id, [3])["tasks"][0]
            if task["status"] == "active" and task["worker_id"]:
                worker_id: str = task["worker_id"]
                return worker_id
            return None

        first_worker = wait_until(leased_worker, 60, "the task to start", farm.logs)
        cut_off = farm.index_of(first_worker)
        assert cut_off in (1, 2), f"task leased to node {cut_off}, not a worker"
        other = 3 - cut_off
        cut_off_dir = farm.data_dirs[cut_off]
        # The task is active from its lease on; the render child starts once the
        # blend file has arrived.
        children: set[int] = wait_until(
            lambda: set(render_children(cut_off_dir)), 60, "Blender to start", farm.logs
        )
        lab.cut(0, cut_off)
        cut_at = time.monotonic()

        def requeued_elsewhere() -> bool:
            task = farm.job_view(job_id, [3])["tasks"][0]
            return bool(
                task["attempts"] == 2
                and task["status"] == "active"
                and task["worker_id"]
                and farm.index_of(task["worker_id"]) == other
            )

        wait_until(
            requeued_elsewhere,
            SHORT_SILENCE + 20,
            f"the task to run again on node {other}",
            farm.logs,
        )
        stale = replica_attempts(farm.data_dirs[0], job_id)[0]
        # The second attempt keeps the other worker busy, so the tasks of this
        # job wait for the cut-off worker.
        followup_id = farm.submit_sleep(3, 2, 1.0, name="after the outage")
        # The outage lasts SHORT_SILENCE + 4 s or until the requeue, if later.
        time.sleep(max(0.0, cut_at + SHORT_SILENCE + 4 - time.monotonic()))
        assert children <= set(render_children(cut_off_dir)), (
            "the stale attempt stopped rendering before the restore; pace it longer"
        )
        lab.restore(0, cut_off)
        restored_at = time.time()
        window_end = time.monotonic() + 15

        def stale_result_dropped() -> bool:
            return f"dropped the result of stale attempt {stale.attempt_id}" in (
                farm.log_text(cut_off)
            )

        wait_until(
            stale_result_dropped,
            window_end - time.monotonic(),
            f"node {cut_off} to drop the result of stale attempt {stale.attempt_id}",
            farm.logs,
        )
        wait_until(
            lambda: not (children & set(render_children(cut_off_dir))),
            max(0.1, window_end - time.monotonic()),
            f"render children {sorted(children)} of node {cut_off} to stop",
            farm.logs,
        )
        followup = farm.wait_for_job(followup_id, timeout=60, via=[3])
        final = farm.wait_for_job(job_id, timeout=120, via=[3])
        manager_log = farm.log_text(0)
        worker_log = farm.log_text(cut_off)
        received = farm.log_text(3)
        attempts = replica_attempts(farm.data_dirs[0], job_id)
        followup_attempts = replica_attempts(farm.data_dirs[0], followup_id)
        logs = farm.logs()

    assert stale.node_id == farm.node_id(cut_off), stale
    assert f"attempt {stale.attempt_id} of worker" in manager_log, (
        f"the manager did not report attempt {stale.attempt_id} stale"
    )
    assert (
        f"stops attempt {stale.attempt_id} and drops its result: the manager"
        " reports the attempt stale"
    ) in worker_log, f"node {cut_off} did not stop attempt {stale.attempt_id}"

    task = final["tasks"][0]
    assert final["job"]["status"] == "completed", f"{final}\n{logs}"
    assert task["attempts"] == 2, final["tasks"]
    outcomes = [(a.status, a.node_id) for a in attempts]
    assert outcomes == [
        ("lost", farm.node_id(cut_off)),
        ("completed", farm.node_id(other)),
    ]
    check_frames(output, frames)
    for name in frame_names(frames):
        deliveries = re.findall(rf"received output \S*/{name} ", received)
        assert len(deliveries) == 1, f"{name} was delivered {len(deliveries)} times"

    assert followup["job"]["status"] == "completed", f"{followup}\n{logs}"
    later = [
        a
        for a in followup_attempts
        if a.node_id == farm.node_id(cut_off) and a.started > restored_at
    ]
    assert later, f"node {cut_off} started no attempt after the restore\n{logs}"


@pytest.mark.render
def test_failover_crashing_frame_fails_task_hard(tmp_path: Path) -> None:
    crash_frame = 7
    frames = range(1, 13)
    blend = scripted_scene(
        tmp_path / "crash.blend", 12, CRASH_CODE.format(frame=crash_frame)
    )
    output = tmp_path / "frames"
    node_config = dict.fromkeys(range(3), SCRIPTS)
    with (
        NetnsLab(3) as lab,
        FailoverFarm(lab, tmp_path / "farm", node_config=node_config) as farm,
    ):
        farm.wait_for_farm(timeout=90)
        job_id = farm.submit_render(0, blend, "1-12", str(output / "frame_####"))
        final = farm.wait_for_job(job_id, timeout=300, via=[0])
        status = farm.status(0)
        assert status is not None, farm.logs()
        server_dir = farm.data_dirs[farm.holder_index("server", status)]
        attempts = replica_attempts(server_dir, job_id)
        logs = farm.logs()
    job = final["job"]
    tasks = {t["frames"][0]: t for t in final["tasks"]}
    crashed = tasks.pop(crash_frame)

    assert job["status"] == "failed", f"{job}\n{logs}"
    names_task = crashed["name"] in job["error"] or (
        f"task {crashed['index']}" in job["error"]
    )
    assert names_task, f"job error does not name {crashed['name']}: {job['error']}"
    assert crashed["status"] == "failed", crashed
    assert crashed["attempts"] == 3, crashed
    assert crashed["failures"] == 3, crashed
    crash_attempts = [a for a in attempts if a.task_id == crashed["id"]]
    assert [a.status for a in crash_attempts] == ["failed"] * 3, crash_attempts
    assert len({a.node_id for a in crash_attempts}) == 3, crash_attempts

    assert {t["status"] for t in tasks.values()} == {"completed"}, tasks
    check_frames(output, [frame for frame in frames if frame != crash_frame])
