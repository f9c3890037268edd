"""A farm of real daemons on a NetnsLab, with the requests and waits that the
failover tests and bench/failover.py share.

The test process cannot reach the lab's addresses, so every client request goes
through a ClientAgent: a small Python process in the node's own namespace that
sends each request to its node with NodeClient and prints the reply as JSON. A
partition or a cut never separates an agent from its node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from farm import FAST_TIMING, NO_PROBE
from netns import NetnsLab, NetnsNode

from flamenco_p2p.config import load_node_id
from flamenco_p2p.demo import create_farm

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_ROLE = "server"
FINAL_JOB_STATUSES = frozenset({"completed", "failed", "canceled"})
# Seconds the agent itself may add to a request's timeout (connect and handshake)
# before the test gives up on it.
AGENT_GRACE = 10.0

# Runs in a node's namespace: argv[1] is the node's data directory. Reads one JSON
# request per line ({"op", "body", "timeout"}) and prints one JSON reply per line,
# {"result": ...} or {"error": message, "code": code}.
AGENT_PROGRAM = r"""
import asyncio
import json
import sys
from pathlib import Path

from flamenco_p2p.client import NodeClient
from flamenco_p2p.config import load_config
from flamenco_p2p.errors import FarmError
from flamenco_p2p.transport import RemoteError


async def request(config, op, body, timeout):
    async with asyncio.timeout(timeout + 5):
        async with NodeClient.for_config(config, timeout=timeout) as client:
            return await client.call(op, body, timeout)


async def serve(config):
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        message = json.loads(line)
        try:
            result = await request(
                config, message["op"], message["body"], float(message["timeout"])
            )
            reply = {"result": result}
        except RemoteError as exc:
            reply = {"error": str(exc), "code": exc.code}
        except (FarmError, TimeoutError, OSError) as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}", "code": "unavailable"}
        print(json.dumps(reply, default=repr), flush=True)


asyncio.run(serve(load_config(Path(sys.argv[1]))))
"""


class RequestFailed(Exception):
    """A client request to a node failed; code is the farm's error code."""

    def __init__(self, index: int, op: str, code: str, message: str) -> None:
        self.index = index
        self.op = op
        self.code = code
        super().__init__(f"{op} via node {index} failed ({code}): {message}")


class ClientAgent:
    """A client process in one node's namespace that forwards requests to it."""

    def __init__(self, lab: NetnsLab, index: int, data_dir: Path) -> None:
        self.index = index
        self.process = lab.popen(
            index,
            [sys.executable, "-c", AGENT_PROGRAM, str(data_dir)],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._lock = threading.Lock()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def call(self, op: str, body: dict[str, Any], timeout: float) -> Any:
        """Send one request to the node and return its result; raises RequestFailed."""
        assert self.process.stdin is not None
        line = json.dumps({"op": op, "body": body, "timeout": timeout})
        with self._lock:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
            try:
                reply_line = self._lines.get(timeout=timeout + AGENT_GRACE)
            except queue.Empty as exc:
                raise RuntimeError(
                    f"client agent of node {self.index} sent no reply to {op} within"
                    f" {timeout + AGENT_GRACE:g} s"
                ) from exc
        if reply_line is None:
            raise RuntimeError(
                f"client agent of node {self.index} exited: {self._stderr()}"
            )
        reply = json.loads(reply_line)
        if "error" in reply:
            raise RequestFailed(self.index, op, reply["code"], reply["error"])
        return reply["result"]

    def _stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return "(still running)"
        text: str = self.process.stderr.read()
        return text[-2000:]

    def close(self) -> None:
        """Close the agent's input, which ends it, and its pipes."""
        if self.process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


class LoopbackLab(NetnsLab):
    """NetnsLab's process and daemon methods on loopback addresses of this host.

    It creates no namespaces and needs no root, so it cannot partition or cut:
    those methods raise RuntimeError.
    """

    def __init__(self, count: int) -> None:
        super().__init__(count)
        block = os.getpid() % 200 + 20
        self.nodes = [
            NetnsNode(name="", address=f"127.89.{block}.{10 + index}")
            for index in range(count)
        ]

    @property
    def namespaces(self) -> list[str]:
        """No namespaces: the nodes share the host's network."""
        return []

    def popen(
        self, node_index: int, argv: list[str], **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start argv on this host in a new session, and track it."""
        process: subprocess.Popen[Any] = subprocess.Popen(
            argv, start_new_session=True, **kwargs
        )
        self._processes.append(process)
        return process

    def run(
        self, node_index: int, argv: list[str], timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run argv on this host to completion, capturing its output."""
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False
        )

    def _create(self) -> None:
        pass

    def _delete_leftovers(self) -> None:
        pass

    def _apply_blocks(self) -> None:
        raise RuntimeError(
            "a loopback lab cannot drop traffic between nodes; use a NetnsLab (root)"
        )


class FailoverFarm:
    """One flamenco-p2p daemon per node of a lab, in one farm; a context manager.

    node_config adds TOML per node index (such as "[roles]" or "[worker]"
    tables); timing is the [timing] table that every node gets. Leaving the block
    ends the agents and stops the daemons. The lab's own exit kills anything left.
    """

    def __init__(
        self,
        lab: NetnsLab,
        root: Path,
        *,
        node_config: dict[int, str] | None = None,
        timing: str = FAST_TIMING,
        site: str = "lab",
    ) -> None:
        self.lab = lab
        self.root = root
        self.site = site
        self.manager_role = f"manager:{site}"
        self.farm_name = "failover-" + uuid.uuid4().hex[:8]
        self.node_config = node_config or {}
        self.timing = timing
        self.data_dirs = [root / f"node{index}" for index in range(len(lab.nodes))]
        self.agents: dict[int, ClientAgent] = {}
        self._node_ids: dict[int, str] = {}

    def __enter__(self) -> FailoverFarm:
        for index in range(len(self.data_dirs)):
            self.write_config(index)
        create_farm(self.data_dirs, self.farm_name)
        try:
            for index in range(len(self.data_dirs)):
                self.start(index)
                self.agents[index] = ClientAgent(self.lab, index, self.data_dirs[index])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """End the client agents and stop every daemon."""
        for agent in self.agents.values():
            agent.close()
        self.agents.clear()
        self.lab.stop_daemons()

    def write_config(self, index: int) -> None:
        """Write node index's flamenco-p2p.toml."""
        data_dir = self.data_dirs[index]
        data_dir.mkdir(parents=True, exist_ok=True)
        address = self.lab.nodes[index].address
        multicast = "127.0.0.1" if isinstance(self.lab, LoopbackLab) else address
        own = self.node_config.get(index, "")
        # Capabilities set here spare each daemon the bpy probe at start-up.
        capabilities = "" if "[capabilities]" in own else NO_PROBE
        text = (
            f'site = "{self.site}"\nbind_address = "{address}"\n'
            f'mdns_interfaces = ["{multicast}"]\n'
            f"{own}\n{capabilities}{self.timing}"
        )
        (data_dir / "flamenco-p2p.toml").write_text(text, encoding="utf-8")

    # Daemons ---------------------------------------------------------------------

    def start(self, index: int) -> None:
        """Start node index's daemon."""
        self.lab.start_daemon(index, self.data_dirs[index])

    def kill(self, index: int) -> int:
        """SIGKILL node index's daemon and return its exit status; its data stays."""
        return self.lab.kill_daemon(index)

    def restart(self, index: int) -> None:
        """Start node index's daemon again on the same data directory."""
        self.lab.restart_daemon(index)

    def running(self) -> list[int]:
        """Return the indices of the nodes whose daemon runs."""
        return [i for i in range(len(self.data_dirs)) if self.lab.daemon_running(i)]

    def node_id(self, index: int) -> str:
        """Return node index's node id."""
        if index not in self._node_ids:
            self._node_ids[index] = load_node_id(self.data_dirs[index])
        return self._node_ids[index]

    def index_of(self, node_id: str) -> int:
        """Return the index of the node with this node id (or worker id)."""
        for index in range(len(self.data_dirs)):
            if self.node_id(index) == node_id.split(".", maxsplit=1)[0]:
                return index
        raise KeyError(f"no node of this farm has id {node_id}")

    # Requests --------------------------------------------------------------------

    def call(
        self,
        index: int,
        op: str,
        body: dict[str, Any] | None = None,
        timeout: float = 20.0,
    ) -> Any:
        """Send one client request to node index; raises RequestFailed."""
        return self.agents[index].call(op, body or {}, timeout)

    def status(self, index: int, timeout: float = 10.0) -> dict[str, Any] | None:
        """Return node index's client_status, or None when the request fails."""
        if not self.lab.daemon_running(index):
            return None
        try:
            view: dict[str, Any] = self.call(index, "client_status", {}, timeout)
        except RequestFailed:
            return None
        return view

    def holders(self, view: dict[str, Any]) -> dict[str, tuple[str, int] | None]:
        """Return (holder node id, epoch) of the server and the site's manager."""
        roles = view.get("roles") or {}
        result: dict[str, tuple[str, int] | None] = {}
        for role in (SERVER_ROLE, self.manager_role):
            held = roles.get(role)
            result[role] = (held["holder"], held["epoch"]) if held else None
        return result

    def holder_index(self, role: str, view: dict[str, Any]) -> int:
        """Return the index of the role's holder in view."""
        held = self.holders(view)[role]
        if held is None:
            raise AssertionError(f"no {role} holder in view {view['roles']}")
        return self.index_of(held[0])

    def wait_for_farm(
        self, members: list[int] | None = None, timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """Wait until the members agree on the server and the manager.

        members defaults to every node whose daemon runs. Each member must see
        every member alive, and all members must name the same holders and
        epochs, held by members. Returns the members' views.
        """
        chosen = self.running() if members is None else members
        member_ids = {self.node_id(i) for i in chosen}
        deadline = time.monotonic() + timeout
        last: list[Any] = []
        while time.monotonic() < deadline:
            views = [self.status(i) for i in chosen]
            last = views
            if all(v is not None and self._settled(v, member_ids) for v in views):
                complete = [v for v in views if v is not None]
                if all(self.holders(v) == self.holders(complete[0]) for v in complete):
                    return complete
            time.sleep(0.5)
        summary = [
            None if v is None else self._describe_view(v, member_ids) for v in last
        ]
        raise AssertionError(
            f"nodes {chosen} did not agree on the role holders within {timeout:g} s;"
            f" last views {summary}\n{self.logs()}"
        )

    def _describe_view(
        self, view: dict[str, Any], member_ids: set[str]
    ) -> dict[str, Any]:
        states = {n["node_id"]: n["state"] for n in view["nodes"]}
        not_alive = {
            node_id[:8]: states.get(node_id, "unknown")
            for node_id in member_ids
            if states.get(node_id) != "alive"
        }
        return {
            "node": view["node_id"][:8],
            "not alive": not_alive,
            **self.holders(view),
        }

    def _settled(self, view: dict[str, Any], member_ids: set[str]) -> bool:
        states = {n["node_id"]: n["state"] for n in view["nodes"]}
        if any(states.get(node_id) != "alive" for node_id in member_ids):
            return False
        held = self.holders(view).values()
        return all(h is not None and h[0] in member_ids for h in held)

    def submit_sleep(
        self,
        index: int,
        tasks: int,
        duration: float,
        name: str = "sleep job",
        fail_tasks: list[int] | None = None,
    ) -> str:
        """Submit a sleep job through node index; returns the job id."""
        job = {
            "name": name,
            "job_type": "sleep",
            "priority": 50,
            "settings": {
                "tasks": tasks,
                "duration": duration,
                "fail_tasks": fail_tasks or [],
            },
            "requirements": {"gpu": "none", "gpu_types": [], "min_blender": None},
        }
        result = self.call(
            index, "client_submit", {"job": job, "blend_path": None}, timeout=60
        )
        job_id: str = result["job_id"]
        return job_id

    def submit_render(
        self,
        index: int,
        blend: Path,
        frames: str,
        output: str,
        *extra: str,
    ) -> str:
        """Run ``flamenco-p2p submit --no-wait`` on node index; returns the job id."""
        argv = [
            sys.executable,
            "-m",
            "flamenco_p2p",
            "submit",
            str(blend),
            "--frames",
            frames,
            "--output",
            output,
            "--no-wait",
            "--data-dir",
            str(self.data_dirs[index]),
            *extra,
        ]
        result = self.lab.run(index, argv, timeout=180)
        if result.returncode != 0:
            raise AssertionError(
                f"flamenco-p2p submit on node {index} failed with exit status"
                f" {result.returncode}: {result.stderr}\n{self.logs()}"
            )
        return result.stdout.strip().splitlines()[-1]

    def job_view(self, job_id: str, via: list[int] | None = None) -> dict[str, Any]:
        """Return client_job of job_id from the first node of via that responds.

        via defaults to every running node. Raises RequestFailed with the last
        error when none responds.
        """
        candidates = [i for i in (via or self.running()) if self.lab.daemon_running(i)]
        last: RequestFailed | None = None
        for index in candidates:
            try:
                view: dict[str, Any] = self.call(
                    index, "client_job", {"job_id": job_id}, timeout=10
                )
            except RequestFailed as exc:
                last = exc
                continue
            return view
        raise last or RequestFailed(-1, "client_job", "unavailable", "no node runs")

    def wait_for_job(
        self, job_id: str, timeout: float, via: list[int] | None = None
    ) -> dict[str, Any]:
        """Wait until job_id is completed, failed or canceled; returns job and tasks."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                view = self.job_view(job_id, via)
            except RequestFailed as exc:
                last = exc
            else:
                last = view["job"]
                if view["job"]["status"] in FINAL_JOB_STATUSES:
                    return view
            time.sleep(0.5)
        raise AssertionError(
            f"job {job_id} did not end within {timeout:g} s; last: {last}\n"
            f"{self.logs()}"
        )

    # Logs ------------------------------------------------------------------------

    def log_text(self, index: int) -> str:
        """Return what node index logged so far."""
        path = self.data_dirs[index] / "node.log"
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def logs(self, tail: int = 3000) -> str:
        """Return the end of every node's log, for assertion messages."""
        return "\n".join(
            f"--- node {index} ({self.node_id(index)[:8]})\n"
            f"{self.log_text(index)[-tail:]}"
            for index in range(len(self.data_dirs))
        )
