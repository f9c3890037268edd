"""Several real daemons on one machine, each on its own loopback address."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flamenco_p2p.client import NodeClient
from flamenco_p2p.config import load_config
from flamenco_p2p.demo import create_farm
from flamenco_p2p.demo import run_cli as cli
from flamenco_p2p.errors import FarmUnavailable
from flamenco_p2p.transport import RemoteError

_blocks = itertools.count(os.getpid() % 100 * 2 + 10)

NO_PROBE = """
[capabilities]
gpu_types = []
blender_version = "5.0.1"
"""

FAST_TIMING = """
[timing]
heartbeat_interval = 0.2
suspect_after = 1.0
dead_after = 2.0
settle_time = 0.8
worker_silent_after = 2.0
"""


@dataclass
class FarmNode:
    """One daemon started by a test."""

    index: int
    data_dir: Path
    address: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        """The node's log file."""
        return self.data_dir / "node.log"

    def log_text(self) -> str:
        """Return what the node logged so far."""
        return self.log.read_text(encoding="utf-8") if self.log.exists() else ""


class LocalFarm:
    """Start, inspect, kill and stop a farm of daemons; a context manager.

    Every process it starts is ended by PID on exit, even when the test fails.
    """

    def __init__(
        self,
        root: Path,
        count: int,
        extra_config: str = "",
        per_node_config: dict[int, str] | None = None,
        mdns: bool = True,
        strangers: frozenset[int] = frozenset(),
        timing: str = FAST_TIMING,
    ) -> None:
        self.root = root
        self.farm = "test-" + uuid.uuid4().hex[:8]
        block = next(_blocks) % 250
        self.nodes = [
            FarmNode(i, root / f"node{i}", f"127.101.{block}.{i + 10}")
            for i in range(count)
        ]
        self.extra_config = extra_config
        self.per_node_config = per_node_config or {}
        self.mdns = mdns
        self.strangers = strangers
        self.timing = timing

    def __enter__(self) -> LocalFarm:
        for node in self.nodes:
            self.write_config(node)
        self.create_farm()
        for node in self.nodes:
            self.start(node.index)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def create_farm(self) -> None:
        """Create the farm as a user does: init on one node, join on the others.

        Nodes listed in ``strangers`` get a farm of their own with the same name.
        """
        members = [n.data_dir for n in self.nodes if n.index not in self.strangers]
        create_farm(members, self.farm)
        for index in self.strangers:
            cli(
                [
                    "init",
                    "--farm",
                    self.farm,
                    "--data-dir",
                    str(self.nodes[index].data_dir),
                ]
            )

    def secrets(self) -> list[str]:
        """Return every secret of the farm's key files, as they could appear in text."""
        from flamenco_p2p.farmkey import load_farm_key

        found = []
        for node in self.nodes:
            key = load_farm_key(node.data_dir)
            found += [
                key.key.hex(),
                key.invite_code(),
                key.api_token,
                key.server_curve.secret.decode(),
                key.client_curve.secret.decode(),
            ]
        return found

    def write_config(self, node: FarmNode) -> None:
        """Write a node's TOML config."""
        node.data_dir.mkdir(parents=True, exist_ok=True)
        seeds = ""
        if not self.mdns:
            others = [f'"{n.address}"' for n in self.nodes if n is not node]
            seeds = f"seeds = [{', '.join(others)}]\n"
        own = self.per_node_config.get(node.index, "")
        # Capabilities set here spare each daemon the bpy probe at start-up.
        capabilities = "" if "[capabilities]" in own else NO_PROBE
        text = (
            f'site = "lab"\nbind_address = "{node.address}"\n'
            f"mdns = {'true' if self.mdns else 'false'}\n"
            'mdns_interfaces = ["127.0.0.1"]\n'
            f"{seeds}{self.extra_config}\n{own}\n{capabilities}{self.timing}"
        )
        (node.data_dir / "flamenco-p2p.toml").write_text(text, encoding="utf-8")

    def start(self, index: int) -> None:
        """Start (or restart) one node."""
        node = self.nodes[index]
        argv = [
            sys.executable,
            "-m",
            "flamenco_p2p",
            "run",
            "--data-dir",
            str(node.data_dir),
            "--log-file",
            str(node.log),
            "--log-level",
            "DEBUG",
        ]
        node.process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send a signal to one node's process group.

        Render children run in sessions of their own, so they are not in the
        group: they must end with their node by themselves.
        """
        process = self.nodes[index].process
        assert process is not None
        if sig == signal.SIGKILL:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        process.wait(30)

    def stop_all(self) -> None:
        """SIGTERM every node, then SIGKILL whatever is left of its process group."""
        running = [
            n.process for n in self.nodes if n.process and n.process.poll() is None
        ]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for node in self.nodes:
            if node.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)

    def api_url(self, index: int = 0) -> str:
        """The base address of one node's HTTP API, without a trailing slash."""
        config = load_config(self.nodes[index].data_dir)
        return f"http://{config.bind_address}:{config.http_port}"

    @property
    def token(self) -> str:
        """The farm token that HTTP changes must carry."""
        from flamenco_p2p.farmkey import load_farm_key

        return load_farm_key(self.nodes[0].data_dir).api_token

    def client(self, index: int = 0) -> NodeClient:
        """Return a client of one node."""
        return NodeClient.for_config(
            load_config(self.nodes[index].data_dir), timeout=20
        )

    async def call(
        self, index: int, op: str, body: dict[str, Any], timeout: float = 20
    ) -> Any:
        """Send one request to a node."""
        async with self.client(index) as client:
            return await client.call(op, body, timeout)

    async def wait_for_roles(
        self, alive: int | None = None, timeout: float = 30, via: int = 0
    ) -> dict[str, Any]:
        """Wait until a node sees `alive` live nodes, a manager and a server."""
        expected = len(self.nodes) if alive is None else alive
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                status = await self.call(via, "client_status", {}, timeout=5)
            except (FarmUnavailable, RemoteError) as exc:
                last = exc
                await asyncio.sleep(0.3)
                continue
            last = status
            states = [n["state"] for n in status["nodes"]]
            roles = status["roles"]
            if (
                states.count("alive") == expected
                and roles.get("server")
                and roles.get("manager:lab")
            ):
                return dict(status)
            await asyncio.sleep(0.3)
        raise AssertionError(f"no election within {timeout} s; last status: {last}")

    async def wait_for_job(
        self, job_id: str, timeout: float = 120, via: int = 0
    ) -> dict[str, Any]:
        """Wait until a job is completed, failed or canceled; returns job and tasks."""
        deadline = time.monotonic() + timeout
        view: Any = None
        while time.monotonic() < deadline:
            view = await self.call(via, "client_job", {"job_id": job_id})
            if view["job"]["status"] in ("completed", "failed", "canceled"):
                return dict(view)
            await asyncio.sleep(0.2)
        raise AssertionError(f"job {job_id} did not end within {timeout} s: {view}")

    def logs(self) -> str:
        """Return every node's log, for assertion messages."""
        return "\n".join(
            f"--- node {n.index}\n{n.log_text()[-4000:]}" for n in self.nodes
        )
