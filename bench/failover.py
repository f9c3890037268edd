"""Failover benchmark: the pause in task assignment after a role holder is killed.

A farm of real daemons (one per network namespace of a test LAN, or on loopback
addresses when namespaces are unavailable) runs a long sleep job. The benchmark
sends SIGKILL to the server holder, restarts it once the farm has recovered, then
does the same to the manager holder. For each kill it measures:

- elected s: from the kill until a surviving node logs that it won the role;
- next task s: from the kill until a worker starts an attempt that the server
  leased after the kill. Lease times come from the attempts table of the
  server's database, start times from the workers' "starts attempt" log lines;
- tasks run twice: tasks whose attempt was running at the kill and did not
  complete, so the task ran again. The summary also counts the tasks with two
  completed attempts, which should never happen.

Half of the nodes may only serve and half may only manage, so that one kill
takes one role. Run from the repository root, as root for namespaces:

    .venv/bin/python -m bench.failover
    .venv/bin/python -m bench.failover --repeats 5 --fast-timing
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import machine_lines

if TYPE_CHECKING:
    from failover_lab import FailoverFarm
    from netns import AttemptRecord, NetnsLab

REPO_ROOT = Path(__file__).resolve().parent.parent
# The [timing] of the test farms, without worker_silent_after, which keeps the
# node default: a manager's patience with a silent worker is part of failover.
FAST_TIMING_TOML = """
[timing]
heartbeat_interval = 0.2
suspect_after = 1.0
dead_after = 2.0
settle_time = 0.8
"""
SERVER_ONLY = "[roles]\nmanager = false\n"
MANAGER_ONLY = "[roles]\nserver = false\n"
SETTLE_TIMEOUT = 120.0
FAULTS = (("server", "server holder"), ("manager", "manager holder"))
# The start of an INFO line in the daemon's LOG_FORMAT: asctime, level and node.
STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO +node=\S+ "
# The worker's line when it starts an attempt (flamenco_p2p/roles/worker.py), and
# the election's when a node takes a role (flamenco_p2p/election.py). NOTE: a
# change of either line makes the benchmark time out waiting for it.
START_LINE = re.compile(
    STAMP + r"flamenco_p2p\.roles\.worker: worker \S+ starts attempt (\w+) "
)
WON_LINE = re.compile(
    STAMP + r"flamenco_p2p\.election: won the election for (\S+), epoch"
)


@dataclass
class KillResult:
    """Measurements of one kill; times are Unix times and durations seconds."""

    repeat: int
    fault: str
    killed_at: float
    elected_s: float
    next_task_s: float
    run_twice: int = 0


@dataclass
class RepeatResult:
    """The kills of one farm, and its tasks that completed more than once."""

    kills: list[KillResult] = field(default_factory=list)
    completed_twice: int = 0


def import_harness() -> None:
    """Make the test harness (tests/failover_lab.py, tests/netns.py) importable."""
    tests = str(REPO_ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


def make_lab(nodes: int, loopback: bool) -> tuple[NetnsLab, str]:
    """Return a lab of namespaces, or of loopback addresses, and its description."""
    from failover_lab import LoopbackLab
    from netns import NetnsLab, netns_available

    reason = None if loopback else netns_available()
    if loopback or reason is not None:
        cause = "--loopback given" if loopback else reason
        return LoopbackLab(nodes), f"loopback addresses on this host ({cause})"
    return NetnsLab(nodes), "network namespaces on one bridge"


def node_config(nodes: int) -> dict[int, str]:
    """Let the first half of the nodes serve only, and the rest manage only."""
    return {i: SERVER_ONLY if i < nodes // 2 else MANAGER_ONLY for i in range(nodes)}


def role_key(farm: FailoverFarm, fault: str) -> str:
    return "server" if fault == "server" else farm.manager_role


def log_time(stamp: str) -> float:
    """Return the Unix time of a log line's asctime, which is local time."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def wait_for_election(farm: FailoverFarm, role: str, after: float) -> float:
    """Return when a node first logged that it won role after ``after``."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        won = [
            log_time(match.group(1))
            for index in range(len(farm.data_dirs))
            for line in farm.log_text(index).splitlines()
            if (match := WON_LINE.match(line)) and match.group(2) == role
        ]
        later = [t for t in won if t > after]
        if later:
            return min(later)
        time.sleep(0.2)
    raise TimeoutError(f"no node won {role} within {SETTLE_TIMEOUT:g} s of the kill")


def server_attempts(farm: FailoverFarm, job_id: str) -> list[AttemptRecord]:
    """Return the job's attempts from the current server holder's database."""
    from netns import replica_attempts

    views = farm.wait_for_farm(timeout=SETTLE_TIMEOUT)
    server = farm.holder_index("server", views[0])
    return replica_attempts(farm.data_dirs[server], job_id)


def worker_starts(farm: FailoverFarm) -> dict[str, float]:
    """Return the time at which a worker started each attempt, from the node logs."""
    starts: dict[str, float] = {}
    for index in range(len(farm.data_dirs)):
        for line in farm.log_text(index).splitlines():
            match = START_LINE.match(line)
            if match is None:
                continue
            started = log_time(match.group(1))
            attempt = match.group(2)
            starts[attempt] = min(starts.get(attempt, started), started)
    return starts


def wait_for_next_start(farm: FailoverFarm, job_id: str, after: float) -> float:
    """Return when a worker first started an attempt leased after ``after``.

    Leases that a dying role holder made, or that went to a dead manager, never
    reach a worker, so they do not count.
    """
    from netns import replica_attempts

    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        leased: set[str] = set()
        for index in farm.running():
            try:
                attempts = replica_attempts(farm.data_dirs[index], job_id)
            except FileNotFoundError:
                continue
            leased |= {a.attempt_id for a in attempts if a.started > after}
        started = [t for a, t in worker_starts(farm).items() if a in leased]
        if started:
            return min(started)
        time.sleep(0.2)
    raise TimeoutError(f"no task started within {SETTLE_TIMEOUT:g} s of the kill")


def kill_and_measure(
    farm: FailoverFarm, repeat: int, fault: str, job_id: str
) -> KillResult:
    """Kill the holder of one role, measure the pause, restart it and settle."""
    role = role_key(farm, fault)
    views = farm.wait_for_farm(timeout=SETTLE_TIMEOUT)
    victim = farm.holder_index(role, views[0])
    job = farm.job_view(job_id)["job"]
    if job["status"] != "active":
        raise RuntimeError(
            f"job {job_id} is {job['status']} before the {fault} kill; give a longer"
            " job with --tasks or --duration"
        )
    farm.kill(victim)
    killed_at = time.time()
    elected_at = wait_for_election(farm, role, killed_at)
    started = wait_for_next_start(farm, job_id, killed_at)
    farm.restart(victim)
    farm.wait_for_farm(timeout=SETTLE_TIMEOUT)
    return KillResult(
        repeat, fault, killed_at, elected_at - killed_at, started - killed_at
    )


def count_reruns(attempts: list[AttemptRecord], result: RepeatResult) -> None:
    """Fill in each kill's tasks run twice and the tasks completed twice."""
    by_task: dict[str, list[AttemptRecord]] = defaultdict(list)
    for attempt in attempts:
        by_task[attempt.task_id].append(attempt)
    for kill in result.kills:
        at = kill.killed_at
        for task_attempts in by_task.values():
            interrupted = [
                a
                for a in task_attempts
                if a.started <= at
                and (a.ended is None or a.ended > at)
                and a.status != "completed"
            ]
            kill.run_twice += int(bool(interrupted))
    result.completed_twice = sum(
        1
        for task_attempts in by_task.values()
        if sum(a.status == "completed" for a in task_attempts) > 1
    )


def run_repeat(args: argparse.Namespace, repeat: int, root: Path) -> RepeatResult:
    """Run one farm through both kills."""
    from failover_lab import FailoverFarm

    lab, where = make_lab(args.nodes, args.loopback)
    timing = FAST_TIMING_TOML if args.fast_timing else ""
    print(f"repeat {repeat}: {args.nodes} nodes on {where}", flush=True)
    farm = FailoverFarm(
        lab,
        root / f"repeat{repeat}",
        node_config=node_config(args.nodes),
        timing=timing,
    )
    result = RepeatResult()
    with lab, farm:
        farm.wait_for_farm(timeout=SETTLE_TIMEOUT)
        job_id = farm.submit_sleep(
            0, args.tasks, args.duration, name="failover benchmark"
        )
        wait_for_steady_work(farm, job_id, args.nodes)
        for fault, _name in FAULTS:
            result.kills.append(kill_and_measure(farm, repeat, fault, job_id))
        view = farm.wait_for_job(job_id, timeout=args.timeout)
        if view["job"]["status"] != "completed":
            raise RuntimeError(
                f"job {job_id} ended {view['job']['status']}: {view['job']['error']}"
            )
        count_reruns(server_attempts(farm, job_id), result)
    return result


def wait_for_steady_work(farm: FailoverFarm, job_id: str, nodes: int) -> None:
    """Wait until the job has completed one task per node, so that work is steady."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        view: dict[str, Any] = farm.job_view(job_id)
        done = sum(t["status"] == "completed" for t in view["tasks"])
        if done >= nodes:
            return
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} completed fewer than {nodes} tasks in time")


def print_table(repeats: list[RepeatResult]) -> None:
    """Print one row per kill, then the medians per fault."""
    names = dict(FAULTS)
    results = [kill for repeat in repeats for kill in repeat.kills]
    print(
        f"\n{'repeat':>6}  {'killed':<15} {'elected s':>9} {'next task s':>11}"
        f" {'tasks run twice':>15}"
    )
    for r in results:
        print(
            f"{r.repeat:>6}  {names[r.fault]:<15} {r.elected_s:>9.2f}"
            f" {r.next_task_s:>11.2f} {r.run_twice:>15}"
        )
    completed_twice = sum(repeat.completed_twice for repeat in repeats)
    parts = []
    for fault, name in FAULTS:
        pauses = [r.next_task_s for r in results if r.fault == fault]
        parts.append(
            f"{name} kill: next task after median {statistics.median(pauses):.2f} s"
            f" (min {min(pauses):.2f}, max {max(pauses):.2f}, n={len(pauses)})"
        )
    reruns = sum(r.run_twice for r in results)
    print(
        "\nsummary: "
        + "; ".join(parts)
        + f"; tasks run twice {reruns}; tasks completed twice {completed_twice}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="farms to run, each killing both role holders once (default 3)",
    )
    parser.add_argument(
        "--nodes", type=int, default=4, help="daemons per farm, at least 4 (default 4)"
    )
    parser.add_argument(
        "--tasks", type=int, default=100, help="sleep tasks in the job (default 100)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=2.0,
        help="seconds each sleep task takes (default 2.0)",
    )
    parser.add_argument(
        "--fast-timing",
        action="store_true",
        help="use the test farms' heartbeat and dead_after timing instead of the"
        " node defaults (worker_silent_after keeps its default either way)",
    )
    parser.add_argument(
        "--loopback",
        action="store_true",
        help="run the nodes on loopback addresses even where namespaces work",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder with the logs"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds the job may take before the run fails (default 600)",
    )
    args = parser.parse_args(argv)

    if args.repeats < 1 or args.nodes < 4 or args.tasks < 1 or args.duration <= 0:
        parser.error(
            "--repeats must be at least 1, --nodes at least 4, --tasks at least 1"
            " and --duration more than 0"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the results."""
    args = parse_args(argv)
    import_harness()
    for line in machine_lines():
        print(line)
    timing = "test timing" if args.fast_timing else "node default timing"
    print(
        f"{args.repeats} repeats, {args.nodes} nodes, a job of {args.tasks} sleep"
        f" tasks of {args.duration:g} s, {timing}"
    )
    repeats: list[RepeatResult] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    try:
        for repeat in range(1, args.repeats + 1):
            repeats.append(run_repeat(args, repeat, tmp))
            print_table(repeats[-1:])
    except (TimeoutError, RuntimeError) as exc:
        # A farm that stops assigning tasks after a kill is a result to report,
        # together with the repeats that completed before it.
        print(f"\nrepeat {len(repeats) + 1} failed: {exc}")
        if repeats:
            print_table(repeats)
        return 1
    finally:
        if args.keep:
            print(f"logs in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print_table(repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
