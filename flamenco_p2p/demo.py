"""``flamenco-p2p demo``: three local nodes render the bundled demo animation."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from flamenco_p2p.client import NodeClient
from flamenco_p2p.config import NodeConfig, load_config
from flamenco_p2p.errors import FarmError, FarmUnavailable, RenderError
from flamenco_p2p.farmkey import load_farm_key
from flamenco_p2p.transport import RemoteError

NODE_COUNT = 3
ELECTION_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


def say(text: str) -> None:
    """Print a progress line of the demo."""
    print(text, flush=True)


def run_demo(frames: int, output: Path, work_dir: Path | None, timeout: float) -> int:
    """Run the whole demo; returns the exit status."""
    if not 1 <= frames <= 250:
        raise FarmError(f"--frames {frames} is invalid; use 1 to 250")
    if timeout <= 0:
        raise FarmError(f"--timeout {timeout} is invalid; give a number of seconds")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FarmError(
            f"--output {output} cannot be used as a folder: {exc.strerror or exc}"
        ) from exc
    started = time.monotonic()
    work = work_dir or Path(tempfile.mkdtemp(prefix="flamenco-p2p-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    addresses = demo_addresses()
    data_dirs = [work / f"node{i + 1}" for i in range(NODE_COUNT)]
    farm = "demo-" + secrets.token_hex(4)
    for data_dir, address in zip(data_dirs, addresses, strict=True):
        write_node_config(data_dir, address)
    create_farm(data_dirs, farm)
    say(f"demo: created farm {farm!r} on node 1 and joined nodes 2 and 3 to it")
    say(f"demo: work directory {work}")
    processes = [start_node(d) for d in data_dirs]
    try:
        return asyncio.run(
            _demo(data_dirs, processes, frames, output, work, timeout, started)
        )
    finally:
        stop_nodes(processes)
        say(f"demo: nodes stopped; their logs are in {work}/node*/node.log")


def demo_addresses() -> list[str]:
    """Pick three loopback addresses that no other demo on this machine uses."""
    block = os.getpid() % 200 + 20
    return [f"127.77.{block}.{11 + i}" for i in range(NODE_COUNT)]


def create_farm(data_dirs: list[Path], farm: str) -> None:
    """Create the farm on the first node and join the others with its code."""
    run_cli(["init", "--farm", farm, "--data-dir", str(data_dirs[0])])
    code = run_cli(["invite", "--data-dir", str(data_dirs[0])]).strip()
    for data_dir in data_dirs[1:]:
        run_cli(["join", code, "--data-dir", str(data_dir)])


def run_cli(args: list[str]) -> str:
    """Run one flamenco-p2p command as a user would; returns its output."""
    result = subprocess.run(
        [sys.executable, "-m", "flamenco_p2p", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise FarmError(f"flamenco-p2p {args[0]} failed: {result.stderr.strip()}")
    return result.stdout


def write_node_config(data_dir: Path, address: str) -> None:
    """Write one demo node's config: its own loopback address, mDNS on loopback."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "flamenco-p2p.toml").write_text(
        f'site = "demo"\nbind_address = "{address}"\n'
        'mdns_interfaces = ["127.0.0.1"]\n\n[worker]\nslots = 1\n',
        encoding="utf-8",
    )


def node_argv(data_dir: Path) -> list[str]:
    """Return the command that runs a node which logs to its data directory."""
    return [
        sys.executable,
        "-m",
        "flamenco_p2p",
        "run",
        "--data-dir",
        str(data_dir),
        "--log-file",
        str(data_dir / "node.log"),
    ]


def start_node(data_dir: Path) -> subprocess.Popen[bytes]:
    """Start one node as a child process that logs to its data directory."""
    argv = node_argv(data_dir)
    return subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_nodes(processes: list[subprocess.Popen[bytes]]) -> None:
    """Send SIGTERM to each node, then SIGKILL to any still running."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _demo(
    data_dirs: list[Path],
    processes: list[subprocess.Popen[bytes]],
    frames: int,
    output: Path,
    work: Path,
    timeout: float,
    started: float,
) -> int:
    from flamenco_p2p.render.demo_scene import make_demo_scene

    blend = work / "demo.blend"
    say(f"demo: building the demo scene ({frames} frames) with bpy")
    await asyncio.to_thread(make_demo_scene, blend, frames=frames)
    config = load_config(data_dirs[0])
    await wait_for_port(config, processes)
    async with NodeClient.for_config(config) as client:
        status = await wait_for_roles(client, processes)
        describe_roles(status)
        # The demo farm lives only as long as the demo, so its token may show.
        token = load_farm_key(config.data_dir).api_token
        say(
            "demo: watch it in a browser at"
            f" http://{config.bind_address}:{config.http_port}/#token={token}"
        )
        job_id = await submit_demo(client, blend, frames, output)
        from flamenco_p2p.cli import wait_for_job

        final = await wait_for_job(client, job_id, timeout)
    if final["status"] != "completed":
        say(f"demo: job {job_id} ended {final['status']}: {final.get('error') or ''}")
        return 1
    report_tasks(final, status)
    check_outputs(output, frames)
    say(f"demo: wall time {time.monotonic() - started:.1f} s")
    return 0


async def wait_for_port(
    config: NodeConfig, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Wait until the first node listens on its port."""
    deadline = time.monotonic() + ELECTION_TIMEOUT
    while True:
        _check_running(processes)
        try:
            async with NodeClient.for_config(config):
                return
        except FarmUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def _check_running(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is not None:
            raise FarmError(f"a demo node exited with status {process.returncode}")


async def wait_for_roles(
    client: NodeClient, processes: list[subprocess.Popen[bytes]]
) -> dict[str, Any]:
    """Wait until every node is alive and a manager and a server are elected."""
    deadline = time.monotonic() + ELECTION_TIMEOUT
    say("demo: waiting for the nodes to find each other and elect roles")
    while time.monotonic() < deadline:
        _check_running(processes)
        try:
            status: dict[str, Any] = await client.call("client_status", {}, timeout=5)
        except (FarmUnavailable, RemoteError):
            await asyncio.sleep(0.5)
            continue
        alive = [n for n in status["nodes"] if n["state"] == "alive"]
        roles = status["roles"]
        if (
            len(alive) == NODE_COUNT
            and roles.get("server")
            and roles.get("manager:demo")
        ):
            return status
        await asyncio.sleep(0.3)
    raise FarmError(f"no election within {ELECTION_TIMEOUT:.0f} s; see the node logs")


def describe_roles(status: dict[str, Any]) -> None:
    """Print which node holds which role."""
    for node in status["nodes"]:
        roles = ", ".join(f"{r['role']} (epoch {r['epoch']})" for r in node["roles"])
        say(
            f"demo: node {node['node_id'][:8]} at {node['address']}: worker"
            + (f", {roles}" if roles else "")
        )


async def submit_demo(
    client: NodeClient, blend: Path, frames: int, output: Path
) -> str:
    """Submit the demo scene, one frame per task."""
    from flamenco_p2p.submission import build_render_job

    output.mkdir(parents=True, exist_ok=True)
    job, _warnings = build_render_job(
        blend=blend,
        frames=f"1-{frames}",
        chunk=1,
        output=str(output / "frame_####"),
        cwd=Path.cwd(),
        name="flamenco-p2p demo",
    )
    result = await client.call(
        "client_submit", {"job": job, "blend_path": str(blend)}, timeout=60
    )
    job_id: str = result["job_id"]
    say(f"demo: submitted job {job_id}; frames go to {output}")
    return job_id


def report_tasks(job: dict[str, Any], status: dict[str, Any]) -> None:
    """Print which node rendered which frames."""
    by_node: dict[str, list[int]] = defaultdict(list)
    for task in job["tasks"]:
        worker = str(task.get("worker_id") or "?")
        by_node[worker.split(".", maxsplit=1)[0]].extend(task["frames"])
    addresses = {n["node_id"]: n["address"] for n in status["nodes"]}
    idle = sorted(set(addresses) - set(by_node))
    for node_id in idle:
        say(f"demo: warning: node {node_id[:8]} rendered no frame")
    for node_id, node_frames in sorted(by_node.items()):
        say(
            f"demo: node {node_id[:8]} ({addresses.get(node_id, '?')}) rendered frames"
            f" {', '.join(str(f) for f in sorted(node_frames))}"
        )


def check_outputs(output: Path, frames: int) -> None:
    """Check that every frame is a valid, distinct PNG; raises RenderError if not."""
    from flamenco_p2p.render.validate import validate_output

    hashes = set()
    for frame in range(1, frames + 1):
        path = output / f"frame_{frame:04d}.png"
        info = validate_output(str(path))
        hashes.add(info.sha256)
    if len(hashes) != frames:
        raise RenderError(
            f"only {len(hashes)} of {frames} frames differ from each other"
        )
    say(f"demo: {frames} frames, each a valid PNG and all different, in {output}")
