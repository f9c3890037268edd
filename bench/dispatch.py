"""Measure task dispatch on one node: the worker's gap between tasks, and tasks/s.

Runs a node in this process, with the Node API in the benchmark's own event loop,
on a loopback address. The node elects itself manager and server, and a job of
zero-length sleep tasks goes through the whole path: worker -> manager -> server
(SQLite) -> manager -> worker.

Gap: the time from a sleep task's end to the start of the next task on the same
worker id, measured with time.perf_counter_ns around WorkerAgent._run_sleep. The
wrapper adds about 1 us per task (two clock reads and two list appends).

Throughput: tasks per second from the client_submit call until the server's store
reports the job completed.

With --standby, a second node runs as a daemon process on the next loopback
address, may only serve, and keeps a replica of the farm state; each task result
is then acknowledged only once that standby holds it.

Run from the repository root:

    .venv/bin/python -m bench.dispatch
    .venv/bin/python -m bench.dispatch --gap-tasks 500 --tasks 2000 --slots 1,4
    .venv/bin/python -m bench.dispatch --profile /tmp/dispatch.prof
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import FAST_TIMING, loopback_address, machine_lines, percentile
from flamenco_p2p.client import NodeClient
from flamenco_p2p.config import NodeConfig, config_from_dict, load_node_id
from flamenco_p2p.daemon import LOG_FORMAT, NodeNameFilter, node_capabilities
from flamenco_p2p.farmkey import new_farm_key, save_farm_key
from flamenco_p2p.node import Node
from flamenco_p2p.roles.worker import WorkerAgent

GAP_TARGET_P50_MS = 2.0
GAP_TARGET_P99_MS = 10.0
THROUGHPUT_TARGET = 5000.0
ELECTION_TIMEOUT = 30.0

SleepRunner = Callable[[WorkerAgent, dict[str, Any]], Awaitable[list[dict[str, Any]]]]


@dataclass
class RunResult:
    """Measurements of one job run."""

    slots: int
    tasks: int
    elapsed_s: float
    submit_s: float
    gaps_ns: list[int]

    @property
    def tasks_per_s(self) -> float:
        """Completed tasks per second, submit to job completed."""
        return self.tasks / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    def gap_ms(self, fraction: float) -> float:
        """Return a gap percentile in milliseconds (fraction 1.0 is the maximum)."""
        return percentile(sorted(self.gaps_ns), fraction) / 1e6


class TaskClock:
    """Start and end times of every sleep task, per worker id."""

    def __init__(self) -> None:
        self.spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.ended = 0
        self.target = 0
        self.all_ended = asyncio.Event()

    def expect(self, count: int) -> None:
        """Reset the clock for a job of count tasks."""
        self.spans.clear()
        self.ended = 0
        self.target = count
        self.all_ended.clear()

    def record(self, worker_id: str, start_ns: int, end_ns: int) -> None:
        """Store one task's span and signal when the expected count has ended."""
        self.spans[worker_id].append((start_ns, end_ns))
        self.ended += 1
        if self.ended >= self.target:
            self.all_ended.set()

    def gaps_ns(self) -> list[int]:
        """Return each worker's time from one task's end to its next task's start."""
        gaps: list[int] = []
        for spans in self.spans.values():
            ordered = sorted(spans)
            gaps += [ordered[i + 1][0] - ordered[i][1] for i in range(len(ordered) - 1)]
        return gaps


@contextmanager
def timed_sleep_tasks(clock: TaskClock) -> Iterator[None]:
    """Wrap WorkerAgent._run_sleep for the duration of the block to time each task.

    NOTE: this patches a private method, so a rename in flamenco_p2p/roles/worker.py
    breaks the benchmark with an AttributeError here.
    """
    original: SleepRunner = WorkerAgent._run_sleep

    async def timed(
        agent: WorkerAgent, assignment: dict[str, Any]
    ) -> list[dict[str, Any]]:
        start = time.perf_counter_ns()
        outputs = await original(agent, assignment)
        clock.record(assignment["worker_id"], start, time.perf_counter_ns())
        return outputs

    WorkerAgent._run_sleep = timed  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        WorkerAgent._run_sleep = original  # type: ignore[method-assign, assignment]


def node_config(
    data_dir: Path, address: str, slots: int, seeds: tuple[str, ...] = ()
) -> NodeConfig:
    """Return a node config without mDNS and without the capability probe.

    The benchmark node outranks a standby (priority 100), so it takes both roles.
    """
    raw: dict[str, Any] = {
        "site": "bench",
        "bind_address": address,
        "mdns": False,
        "seeds": list(seeds),
        "roles": {"priority": 100},
        "worker": {"slots": slots},
        "capabilities": {"gpu_types": [], "blender_version": "5.0.1"},
        "timing": dict(FAST_TIMING),
    }
    return config_from_dict(raw, data_dir, source="bench/dispatch.py")


STANDBY_CONFIG = """site = "bench"
bind_address = "{address}"
mdns = false
seeds = ["{seed}"]

[roles]
manager = false
priority = 0

[worker]
slots = 0

[capabilities]
gpu_types = []
blender_version = "5.0.1"

[timing]
{timing}
"""


def start_standby(data_dir: Path, address: str, seed: str) -> subprocess.Popen[bytes]:
    """Start a standby daemon of the benchmark node's farm; the caller ends it."""
    timing = "\n".join(f"{key} = {value}" for key, value in FAST_TIMING.items())
    (data_dir / "flamenco-p2p.toml").write_text(
        STANDBY_CONFIG.format(address=address, seed=seed, timing=timing),
        encoding="utf-8",
    )
    argv = [sys.executable, "-m", "flamenco_p2p", "run", "--data-dir", str(data_dir)]
    argv += ["--log-file", str(data_dir / "node.log")]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_standby(process: subprocess.Popen[bytes]) -> None:
    """End the standby daemon started by this benchmark, by its PID."""
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def wait_for_standby(node: Node) -> None:
    """Wait until the node's server role has a standby that follows its log."""
    deadline = time.monotonic() + ELECTION_TIMEOUT
    while time.monotonic() < deadline:
        server = node.server_role
        if server is not None and server.log.standbys:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no standby followed node {node.node_id}'s change log")


def sleep_job(tasks: int) -> dict[str, Any]:
    """Return a client_submit job of zero-length sleep tasks."""
    return {
        "name": f"bench {tasks} sleep tasks",
        "job_type": "sleep",
        "priority": 50,
        "settings": {"tasks": tasks, "duration": 0.0},
        "requirements": {"gpu": "none", "gpu_types": [], "min_blender": None},
    }


def log_to_file(node_id: str, level: str, path: Path) -> logging.Handler:
    """Send the node's log records to a file in the daemon's format."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(NodeNameFilter(node_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("asyncio", "aiosqlite"):
        logging.getLogger(name).setLevel(max(root.level, logging.INFO))
    return handler


async def wait_until_ready(node: Node, slots: int) -> None:
    """Wait until the node is manager and server and has registered every slot."""
    deadline = time.monotonic() + ELECTION_TIMEOUT
    while time.monotonic() < deadline:
        manager = node.manager_role
        if (
            node.server_role is not None
            and manager is not None
            and manager.server is not None
            and len(manager.workers) == slots
            and node.client.server_ready.is_set()
        ):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(
        f"node {node.node_id} did not become manager and server with {slots} workers"
        f" within {ELECTION_TIMEOUT} s"
    )


async def wait_job_completed(node: Node, job_id: str, timeout: float) -> None:
    """Poll the server's store until the job has ended; raise if it did not complete."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server = node.server_role
        if server is None:
            raise RuntimeError(f"node {node.node_id} lost the server role mid-run")
        job = await server.store.get_job(job_id)
        status = str(job.status)
        if status == "completed":
            return
        if status in ("failed", "canceled"):
            raise RuntimeError(f"job {job_id} ended {status}: {job.error}")
        await asyncio.sleep(0.005)
    raise TimeoutError(f"job {job_id} did not complete within {timeout} s")


async def run_job(
    root: Path,
    address: str,
    slots: int,
    tasks: int,
    clock: TaskClock,
    log_level: str,
    timeout: float,
    standby_address: str | None = None,
) -> RunResult:
    """Start a fresh node, run one job of tasks zero-length tasks, stop the node.

    With standby_address, a standby daemon on that address follows the node.
    """
    data_dir = root / f"node-{slots}-{tasks}-{time.monotonic_ns()}"
    data_dir.mkdir(parents=True)
    farm_key = new_farm_key("bench-dispatch")
    save_farm_key(data_dir, farm_key)
    seeds = (standby_address,) if standby_address else ()
    config = node_config(data_dir, address, slots, seeds)
    standby = None
    if standby_address is not None:
        standby_dir = data_dir.with_name(data_dir.name + "-standby")
        standby_dir.mkdir(parents=True)
        save_farm_key(standby_dir, farm_key)
        standby = start_standby(standby_dir, standby_address, address)
    handler = log_to_file(load_node_id(data_dir), log_level, data_dir / "node.log")
    node = Node(config, await node_capabilities(config))
    try:
        await node.start()
        await wait_until_ready(node, slots)
        if standby is not None:
            await wait_for_standby(node)
        clock.expect(tasks)
        async with NodeClient.for_config(config) as client:
            started = time.perf_counter()
            result = await client.call(
                "client_submit", {"job": sleep_job(tasks), "blend_path": None}, 60
            )
            submit_s = time.perf_counter() - started
            await asyncio.wait_for(clock.all_ended.wait(), timeout)
            await wait_job_completed(node, result["job_id"], timeout)
            elapsed = time.perf_counter() - started
    finally:
        await node.stop("benchmark run finished")
        if standby is not None:
            stop_standby(standby)
        logging.getLogger().removeHandler(handler)
        handler.close()
    return RunResult(slots, tasks, elapsed, submit_s, clock.gaps_ns())


def print_results(title: str, results: list[RunResult]) -> None:
    """Print one table row per run.

    seconds runs from the client_submit call to job completion; submit s is the
    part until client_submit returned (compiling and inserting the tasks).
    """
    print(f"\n{title}")
    print(
        f"{'slots':>5} {'tasks':>6} {'gaps':>6} {'p50 ms':>8} {'p95 ms':>8}"
        f" {'p99 ms':>8} {'max ms':>8} {'submit s':>8} {'seconds':>8} {'tasks/s':>8}"
    )
    for r in results:
        print(
            f"{r.slots:>5} {r.tasks:>6} {len(r.gaps_ns):>6} {r.gap_ms(0.50):>8.3f}"
            f" {r.gap_ms(0.95):>8.3f} {r.gap_ms(0.99):>8.3f} {r.gap_ms(1.0):>8.3f}"
            f" {r.submit_s:>8.2f} {r.elapsed_s:>8.2f} {r.tasks_per_s:>8.0f}"
        )


def summary_line(gap_runs: list[RunResult], rate_runs: list[RunResult]) -> str:
    """Return the one-line summary against the design targets."""
    parts = []
    for r in gap_runs:
        parts.append(
            f"gap {r.slots} slot(s) p50 {r.gap_ms(0.5):.2f} ms p99"
            f" {r.gap_ms(0.99):.2f} ms"
        )
    for r in rate_runs:
        parts.append(f"{r.slots} slot(s) {r.tasks_per_s:.0f} tasks/s")
    targets = (
        f"targets: gap p50 < {GAP_TARGET_P50_MS:g} ms, p99 < {GAP_TARGET_P99_MS:g} ms,"
        f" {THROUGHPUT_TARGET:.0f} tasks/s"
    )
    return "summary: " + "; ".join(parts) + f" ({targets})"


async def run_all(args: argparse.Namespace, root: Path) -> None:
    """Run the gap runs, then the throughput runs, each on a fresh node."""
    clock = TaskClock()
    addresses = (f"{args.address_prefix}.{10 + i}" for i in range(240))
    gap_runs: list[RunResult] = []
    rate_runs: list[RunResult] = []
    with timed_sleep_tasks(clock):
        for slots in args.gap_slots:
            for _ in range(args.repeats):
                address = loopback_address(next(addresses))
                gap_runs.append(
                    await run_job(
                        root,
                        address,
                        slots,
                        args.gap_tasks,
                        clock,
                        args.log_level,
                        args.timeout,
                        standby_of(args, addresses),
                    )
                )
                print_results("gap run", gap_runs[-1:])
        for slots in args.slots:
            for _ in range(args.repeats):
                address = loopback_address(next(addresses))
                rate_runs.append(
                    await run_job(
                        root,
                        address,
                        slots,
                        args.tasks,
                        clock,
                        args.log_level,
                        args.timeout,
                        standby_of(args, addresses),
                    )
                )
                print_results("throughput run", rate_runs[-1:])
    print_results("gap between tasks on one worker (zero-length tasks)", gap_runs)
    print_results("throughput (zero-length tasks, submit to job completed)", rate_runs)
    print()
    print(summary_line(gap_runs, rate_runs))


def standby_of(args: argparse.Namespace, addresses: Iterator[str]) -> str | None:
    """Return the address for a run's standby, or None without --standby."""
    return loopback_address(next(addresses)) if args.standby else None


def parse_counts(text: str) -> list[int]:
    """Parse a comma-separated list of positive integers such as "1,4,16"."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid list {text!r}: {exc}") from exc
    if any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(
            f"invalid list {text!r}; give comma-separated counts of at least 1"
        )
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--gap-tasks", type=int, default=2000, help="tasks per gap run (default 2000)"
    )
    parser.add_argument(
        "--gap-slots",
        type=parse_counts,
        default=[1, 4],
        help="worker slots of each gap run, comma-separated (default 1,4);"
        " an empty string skips the gap runs",
    )
    parser.add_argument(
        "--tasks",
        type=int,
        default=10_000,
        help="tasks per throughput run (default 10000)",
    )
    parser.add_argument(
        "--slots",
        type=parse_counts,
        default=[1, 4, 16],
        help="worker slots of each throughput run, comma-separated (default 1,4,16)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each configuration (default 1)"
    )
    parser.add_argument(
        "--address-prefix",
        default="127.88.0",
        help="first three octets of the loopback addresses the nodes bind"
        " (default 127.88.0; the runs use .10, .11, ...)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="node log level, written to a file in the temporary folder (default"
        " INFO, as `flamenco-p2p run` uses)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds one job may take before the run fails (default 600)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="run everything under cProfile, write the stats to this file and print"
        " the top functions",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder with the logs"
    )
    parser.add_argument(
        "--standby",
        action="store_true",
        help="run a standby daemon next to each node, so that every result waits"
        " for replication",
    )
    args = parser.parse_args(argv)
    loopback_address(f"{args.address_prefix}.10")
    if args.gap_tasks < 2 or args.tasks < 1 or args.repeats < 1:
        parser.error("--gap-tasks must be at least 2, --tasks and --repeats at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the results."""
    args = parse_args(argv)
    for line in machine_lines():
        print(line)
    print(
        f"gap runs: {args.gap_tasks} tasks, slots {args.gap_slots}; throughput runs:"
        f" {args.tasks} tasks, slots {args.slots}; repeats {args.repeats};"
        f" log level {args.log_level}; standby {'yes' if args.standby else 'no'}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    try:
        asyncio.run(run_all(args, tmp))
    finally:
        if profiler is not None and args.profile is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
            stats = pstats.Stats(profiler, stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(40)
        if args.keep:
            print(f"logs in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
