"""Measure the server's store alone: lease_task plus complete_attempt per task.

Opens a FarmStore on a temporary SQLite file, submits one job of zero-length sleep
tasks, and has one worker lease and complete them in a loop, with no ZeroMQ and no
roles. This is the ceiling that the store puts on the dispatch rate of
bench/dispatch.py, and it counts the SQL statements that each call runs.

Run from the repository root:

    .venv/bin/python -m bench.store
    .venv/bin/python -m bench.store --tasks 5000 --synchronous FULL
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine_lines, percentile
from flamenco_p2p.jobs.spec import JobSpec
from flamenco_p2p.store.farmstore import FarmStore, WorkerInfo


class StatementCounter:
    """Counts the SQL statements that SQLite runs, through its trace callback."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, _statement: str) -> None:
        self.count += 1


async def install_counter(store: FarmStore, counter: StatementCounter) -> None:
    """Attach the counter to the store's sqlite3 connection, on aiosqlite's thread.

    NOTE: this reaches into private attributes of FarmStore (_db) and of
    aiosqlite.Connection (_conn, _execute); it breaks if either renames them.
    """
    db = store._db
    connection: sqlite3.Connection = db._conn
    await db._execute(connection.set_trace_callback, counter)  # type: ignore[no-untyped-call]


async def run(tasks: int, synchronous: str, root: Path) -> None:
    """Lease and complete every task of one job; print the latencies."""
    store = await FarmStore.open(root / "farm.sqlite", synchronous=synchronous)
    counter = StatementCounter()
    try:
        spec = JobSpec.from_dict(
            {
                "name": "bench store",
                "job_type": "sleep",
                "priority": 50,
                "settings": {"tasks": tasks, "duration": 0.0},
                "requirements": {"gpu": "none", "gpu_types": [], "min_blender": None},
                "submitter_node": "bench",
            }
        )
        job_id = await store.submit_job(spec)
        worker = WorkerInfo("bench.0", "bench", "bench", 1, (), "5.0.1")
        await store.upsert_worker(worker, "awake")
        await install_counter(store, counter)
        lease_ns: list[int] = []
        complete_ns: list[int] = []
        lease_statements = complete_statements = 0
        started = time.perf_counter()
        for _ in range(tasks):
            before = counter.count
            t0 = time.perf_counter_ns()
            assignment = await store.lease_task(worker)
            t1 = time.perf_counter_ns()
            if assignment is None:
                raise RuntimeError("lease_task found no task before the job ended")
            middle = counter.count
            await store.complete_attempt(assignment.attempt_id, [])
            t2 = time.perf_counter_ns()
            lease_statements += middle - before
            complete_statements += counter.count - middle
            lease_ns.append(t1 - t0)
            complete_ns.append(t2 - t1)
        elapsed = time.perf_counter() - started
        job = await store.get_job(job_id)
    finally:
        await store.close()
    print(f"\njob status: {job.status}; synchronous={synchronous}")
    print(f"{'call':<16} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'statements':>10}")
    for name, values, statements in (
        ("lease_task", lease_ns, lease_statements),
        ("complete_attempt", complete_ns, complete_statements),
    ):
        ordered = sorted(values)
        print(
            f"{name:<16} {percentile(ordered, 0.5) / 1e6:>8.3f}"
            f" {percentile(ordered, 0.99) / 1e6:>8.3f} {ordered[-1] / 1e6:>8.3f}"
            f" {statements / tasks:>10.1f}"
        )
    print(
        f"\nsummary: store alone {tasks / elapsed:.0f} tasks/s"
        f" ({1000 * elapsed / tasks:.3f} ms per lease + complete, {tasks} tasks)"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tasks", type=int, default=5000, help="tasks in the job (default 5000)"
    )
    parser.add_argument(
        "--synchronous",
        default="NORMAL",
        choices=("NORMAL", "FULL", "EXTRA"),
        help="SQLite synchronous mode of the store (default NORMAL, the daemon's)",
    )
    args = parser.parse_args(argv)
    if args.tasks < 1:
        parser.error("--tasks must be at least 1")
    for line in machine_lines():
        print(line)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        asyncio.run(run(args.tasks, args.synchronous, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
