"""HTTP API latency and the delay of the event stream, on a farm of real daemons.

Two measurements, each on its own farm of daemons on loopback addresses:

- list latency: one server node without workers holds --jobs sleep jobs of
  --tasks-per-job tasks each (nothing runs, so the numbers are pure API and
  store cost). A client sends --requests sequential requests for the first page
  of the job list, then for the first page of one job's tasks, to the server's
  node and to a second node that forwards them over the server port.
- event delay: three nodes with one worker each render a sleep job; headless
  Chromium shows the dashboard's job page. For every task the delay is the time
  from the server ending the attempt (its ``ended`` stamp) to the page marking
  the task's cell completed, measured with one wall clock.

Run from the repository root: ``.venv/bin/python -m bench.api``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import NO_PROBE_TOML, machine_lines, median, percentile

CHROMIUM = "/usr/bin/chromium"
NO_WORKER = "[worker]\nslots = 0\n"
OBSERVER = """
() => {
  window.__completed = {};
  const mark = (cell) => {
    const id = cell.dataset.taskId;
    if (cell.dataset.status === "completed" && !(id in window.__completed)) {
      window.__completed[id] = Date.now();
    }
  };
  const isCell = (node) => node.nodeType === 1 && node.dataset?.testid === "task-cell";
  new MutationObserver((records) => {
    for (const record of records) {
      if (isCell(record.target)) mark(record.target);
      for (const node of record.addedNodes || []) {
        if (node.nodeType !== 1) continue;
        if (isCell(node)) mark(node);
        node.querySelectorAll("[data-testid=task-cell]").forEach(mark);
      }
    }
  }).observe(document.body, {
    subtree: true, childList: true, attributes: true, attributeFilter: ["data-status"],
  });
}
"""


def import_harness() -> None:
    """Make the test suite's farm harness (tests/farm.py) importable."""
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


async def submit_sleep(
    session: aiohttp.ClientSession,
    base: str,
    token: str,
    name: str,
    tasks: int,
    duration: float,
) -> str:
    """Submit a sleep job over the API and return its id."""
    body = {
        "name": name,
        "job_type": "sleep",
        "settings": {"tasks": tasks, "duration": duration},
    }
    headers = {"Authorization": f"Bearer {token}"}
    async with session.post(f"{base}/api/jobs", json=body, headers=headers) as reply:
        data = await reply.json()
        if reply.status != 201:
            raise RuntimeError(f"submitting {name!r} failed: {data}")
    job_id: str = data["job"]["id"]
    return job_id


async def time_requests(
    session: aiohttp.ClientSession, url: str, count: int
) -> list[float]:
    """Return the sorted latencies, in ms, of count sequential GETs of url."""
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        async with session.get(url) as reply:
            await reply.read()
            if reply.status != 200:
                raise RuntimeError(f"GET {url} answered {reply.status}")
        latencies.append((time.perf_counter() - start) * 1000)
    return sorted(latencies)


async def list_latency(args: argparse.Namespace, root: Path) -> list[str]:
    import_harness()
    from farm import LocalFarm

    lines = []
    config = {0: NO_WORKER + NO_PROBE_TOML, 1: NO_WORKER + "[roles]\nserver = false\n"}
    with LocalFarm(root, 2, per_node_config=config, mdns=False) as farm:
        await farm.wait_for_roles()
        token = farm.token
        server_base, other_base = farm.api_url(0), farm.api_url(1)
        async with aiohttp.ClientSession() as session:
            start = time.monotonic()
            job_ids = [
                await submit_sleep(
                    session, server_base, token, f"job {i}", args.tasks_per_job, 0
                )
                for i in range(args.jobs)
            ]
            print(
                f"stored {args.jobs} jobs of {args.tasks_per_job} tasks in"
                f" {time.monotonic() - start:.1f} s",
                flush=True,
            )
            targets = [
                ("job list, first 50", "/api/jobs?limit=50"),
                ("task page, 200", f"/api/jobs/{job_ids[0]}/tasks?limit=200"),
            ]
            for label, path in targets:
                for where, base in (
                    ("server node", server_base),
                    ("other node", other_base),
                ):
                    await time_requests(session, base + path, 20)
                    latencies = await time_requests(session, base + path, args.requests)
                    line = (
                        f"{label:<20} via {where:<12} p50 {median(latencies):6.1f} ms"
                        f"  p99 {percentile(latencies, 0.99):6.1f} ms"
                        f"  max {latencies[-1]:6.1f} ms"
                    )
                    print(line, flush=True)
                    lines.append(line)
    return lines


async def event_delay(args: argparse.Namespace, root: Path) -> list[float]:
    from playwright.async_api import async_playwright

    import_harness()
    from farm import LocalFarm

    with LocalFarm(root, 3, mdns=False) as farm:
        await farm.wait_for_roles()
        base, token = farm.api_url(1), farm.token
        async with aiohttp.ClientSession() as session, async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox"]
            )
            page = await browser.new_page()
            # A short job first, so that the page's job route exists.
            warm = await submit_sleep(session, base, token, "warm-up", 1, 0)
            await page.goto(f"{base}/#/jobs/{warm}")
            job_id = await submit_sleep(
                session, base, token, "timed", args.delay_tasks, args.task_seconds
            )
            await page.goto(f"{base}/#/jobs/{job_id}")
            await page.wait_for_selector("[data-testid=task-cell]")
            await page.evaluate(OBSERVER)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                seen = await page.evaluate("Object.keys(window.__completed).length")
                if seen >= args.delay_tasks:
                    break
                await asyncio.sleep(0.5)
            marks: dict[str, int] = await page.evaluate("window.__completed")
            await browser.close()
            delays = []
            for task_id, shown_ms in marks.items():
                async with session.get(f"{base}/api/tasks/{task_id}") as reply:
                    detail = await reply.json()
                ended = [
                    a["ended"] for a in detail["attempts"] if a["status"] == "completed"
                ]
                if ended:
                    stamp = datetime.datetime.fromisoformat(ended[-1]).timestamp()
                    delays.append(shown_ms - stamp * 1000)
    return sorted(delays)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs stored (1000)")
    parser.add_argument(
        "--tasks-per-job", type=int, default=100, help="tasks per stored job (100)"
    )
    parser.add_argument(
        "--requests", type=int, default=500, help="timed requests per target (500)"
    )
    parser.add_argument(
        "--delay-tasks", type=int, default=60, help="tasks of the timed job (60)"
    )
    parser.add_argument(
        "--task-seconds", type=float, default=0.3, help="sleep per task (0.3)"
    )
    parser.add_argument(
        "--skip-browser", action="store_true", help="measure list latency only"
    )
    args = parser.parse_args(argv)
    for name in ("jobs", "tasks_per_job", "requests", "delay_tasks"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run both measurements and print a summary line."""
    args = parse_args(argv)
    for line in machine_lines():
        print(line)
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        root = Path(tmp)
        latency_lines = asyncio.run(list_latency(args, root / "list"))
        summary = "; ".join(line.split("  max")[0] for line in latency_lines)
        if not args.skip_browser:
            delays = asyncio.run(event_delay(args, root / "events"))
            delay_line = (
                f"task completed -> browser cell updated, {len(delays)} tasks:"
                f" p50 {median(delays):.0f} ms, p99 {percentile(delays, 0.99):.0f} ms,"
                f" max {delays[-1] if delays else float('nan'):.0f} ms"
            )
            print(delay_line)
            summary += "; " + delay_line
    print("summary: " + summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
