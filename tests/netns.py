"""A test LAN made of Linux network namespaces (needs root and iproute2).

``NetnsLab(count)`` creates one namespace ``<prefix>-br`` that contains a bridge,
and ``count`` node namespaces ``<prefix>-n<i>``, each joined to the bridge by a
veth pair. Every link lives inside the lab's namespaces, so the host network is
never touched. Leaving the ``with`` block kills the processes started in the
lab and deletes its namespaces, also when the body raised.

Faults: ``partition`` and ``cut`` drop unicast IPv4 between nodes until ``heal``
or ``restore``, and ``start_daemon``, ``kill_daemon`` and ``restart_daemon`` run
one flamenco-p2p daemon per node. ``replica_summary`` reads a node's farm
database read-only, so that the copies of several nodes can be compared.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from flamenco_p2p.demo import node_argv

logger = logging.getLogger(__name__)

_PREFIX = re.compile(r"[a-z][a-z0-9]{0,15}")
_counter = itertools.count()
_FIRST_HOST = 10  # node i gets the subnet's address number 10 + i
_BRIDGE = "br0"
_NODE_LINK = "eth0"
# Policy routing drops the traffic of a partition or cut. A node's namespace gets
# one rule per blocked peer, "from <peer> iif eth0 blackhole" at preference
# _DROP_PREF + peer index. The input route lookup then finds no route for the
# peer's packets, and with forwarding off the kernel discards them without an
# ICMP error, as a broken link would. The rule that looks up the local table
# moves from preference 0 to _LOCAL_PREF, because it would otherwise deliver the
# packets before any drop rule is read.
_DROP_PREF = 100
_LOCAL_PREF = 1000
DAEMON_STOP_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class NetnsNode:
    """One node namespace and the IPv4 address of its ``eth0``."""

    name: str
    address: str


@dataclass(frozen=True, slots=True)
class TaskSummary:
    """A task as a replica stores it, without timestamps, workers or progress."""

    index: int
    name: str
    status: str
    attempts: int
    failures: int


@dataclass(frozen=True, slots=True)
class JobSummary:
    """A job and its tasks as a replica stores them, without timestamps."""

    job_id: str
    name: str
    status: str
    error: str | None
    tasks: tuple[TaskSummary, ...]


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One row of a replica's attempts table; started and ended are Unix times."""

    attempt_id: str
    job_id: str
    task_id: str
    task_index: int
    worker_id: str
    node_id: str
    status: str
    error: str | None
    started: float
    ended: float | None


def netns_available() -> str | None:
    """Return None if namespaces can be created here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_SYS_ADMIN); run these tests as root"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    probe = f"fpprobe{os.getpid()}"
    created = subprocess.run(
        ["ip", "netns", "add", probe], capture_output=True, text=True, check=False
    )
    if created.returncode != 0:
        return f"'ip netns add' failed: {created.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, check=False)
    return None


class NetnsLab:
    """A bridge namespace and ``count`` node namespaces wired into one subnet."""

    def __init__(
        self, count: int, prefix: str | None = None, subnet: str = "10.231.0.0/24"
    ) -> None:
        self.prefix = prefix or f"fp{os.getpid()}x{next(_counter)}"
        if not _PREFIX.fullmatch(self.prefix):
            raise ValueError(
                f"namespace prefix {self.prefix!r} must be 1-16 lowercase letters or "
                "digits, starting with a letter"
            )
        self.network = ipaddress.IPv4Network(subnet)
        if count < 1 or _FIRST_HOST + count >= self.network.num_addresses - 1:
            raise ValueError(
                f"{count} nodes do not fit in subnet {subnet} from host number "
                f"{_FIRST_HOST}; use a count of 1 or more, or a larger subnet"
            )
        self.bridge_namespace = f"{self.prefix}-br"
        self.nodes = [
            NetnsNode(
                name=f"{self.prefix}-n{index}",
                address=str(self.network[_FIRST_HOST + index]),
            )
            for index in range(count)
        ]
        self._processes: list[subprocess.Popen[Any]] = []
        self._daemons: dict[int, subprocess.Popen[bytes]] = {}
        self._daemon_dirs: dict[int, Path] = {}
        self._partition_pairs: set[frozenset[int]] = set()
        self._cut_pairs: set[frozenset[int]] = set()
        self._applied_pairs: set[frozenset[int]] = set()

    def __enter__(self) -> NetnsLab:
        self._delete_leftovers()
        try:
            self._create()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._teardown()

    @property
    def namespaces(self) -> list[str]:
        """Names of every namespace this lab owns, bridge first."""
        return [self.bridge_namespace, *(node.name for node in self.nodes)]

    def popen(
        self, node_index: int, argv: list[str], **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start argv inside a node's namespace in a new session, and track it."""
        command = ["ip", "netns", "exec", self.nodes[node_index].name, *argv]
        process: subprocess.Popen[Any] = subprocess.Popen(
            command, start_new_session=True, **kwargs
        )
        self._processes.append(process)
        return process

    def run(
        self, node_index: int, argv: list[str], timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside a node's namespace to completion, capturing its output."""
        command = ["ip", "netns", "exec", self.nodes[node_index].name, *argv]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )

    # Faults ---------------------------------------------------------------------

    def partition(self, groups: list[list[int]]) -> None:
        """Drop all unicast IPv4 traffic between nodes of different groups.

        Every node index must appear in exactly one group. A new partition
        replaces the previous one. Traffic inside a group, multicast (mDNS) and
        ARP still pass, and pairs blocked by ``cut`` stay blocked.
        """
        seen: list[int] = [index for group in groups for index in group]
        if len(groups) < 2 or sorted(seen) != list(range(len(self.nodes))):
            raise ValueError(
                f"partition groups {groups} are invalid; list each node index from 0"
                f" to {len(self.nodes) - 1} exactly once, in at least two groups"
            )
        pairs = {
            frozenset((a, b))
            for number, group in enumerate(groups)
            for other in groups[number + 1 :]
            for a in group
            for b in other
        }
        self._partition_pairs = pairs
        self._apply_blocks()
        logger.info("lab %s: partitioned into %s", self.prefix, groups)

    def heal(self) -> None:
        """End the partition; pairs blocked by ``cut`` stay blocked."""
        self._partition_pairs = set()
        self._apply_blocks()
        logger.info("lab %s: partition healed", self.prefix)

    def cut(self, a: int, b: int) -> None:
        """Drop all unicast IPv4 traffic between nodes a and b, both directions."""
        self._cut_pairs.add(self._pair(a, b))
        self._apply_blocks()
        logger.info("lab %s: cut between nodes %d and %d", self.prefix, a, b)

    def restore(self, a: int, b: int) -> None:
        """Undo ``cut(a, b)``; a partition that separates them still applies."""
        self._cut_pairs.discard(self._pair(a, b))
        self._apply_blocks()
        logger.info("lab %s: link between nodes %d and %d restored", self.prefix, a, b)

    @property
    def blocked_pairs(self) -> frozenset[frozenset[int]]:
        """Node index pairs whose traffic is dropped now, by a partition or a cut."""
        return frozenset(self._applied_pairs)

    def _pair(self, a: int, b: int) -> frozenset[int]:
        count = len(self.nodes)
        if a == b or not (0 <= a < count and 0 <= b < count):
            raise ValueError(
                f"node pair ({a}, {b}) is invalid; give two different indices from 0"
                f" to {count - 1}"
            )
        return frozenset((a, b))

    def _apply_blocks(self) -> None:
        blocked = self._partition_pairs | self._cut_pairs
        for pair in blocked - self._applied_pairs:
            a, b = sorted(pair)
            self._node_rule(a, "add", b)
            self._node_rule(b, "add", a)
            self._applied_pairs.add(pair)
        for pair in self._applied_pairs - blocked:
            a, b = sorted(pair)
            self._node_rule(a, "del", b)
            self._node_rule(b, "del", a)
            self._applied_pairs.discard(pair)

    def _node_rule(self, index: int, verb: str, peer: int) -> None:
        rule = [
            "pref",
            str(_DROP_PREF + peer),
            "from",
            self.nodes[peer].address,
            "iif",
            _NODE_LINK,
            "blackhole",
        ]
        _run(["ip", "-n", self.nodes[index].name, "rule", verb, *rule])

    # Daemons --------------------------------------------------------------------

    def start_daemon(
        self, index: int, data_dir: Path, log_level: str = "INFO"
    ) -> subprocess.Popen[bytes]:
        """Start ``flamenco-p2p run`` for data_dir in node index's namespace.

        The daemon logs to data_dir/node.log and runs in a session of its own, so
        that ``kill_daemon`` can signal its process group.
        """
        running = self._daemons.get(index)
        if running is not None and running.poll() is None:
            raise RuntimeError(
                f"node {index} already runs a daemon (pid {running.pid}); kill it"
                " first or call restart_daemon"
            )
        argv = [*node_argv(data_dir), "--log-level", log_level]
        process: subprocess.Popen[bytes] = self.popen(
            index, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._daemons[index] = process
        self._daemon_dirs[index] = data_dir
        logger.info(
            "lab %s: node %d daemon started, pid %d", self.prefix, index, process.pid
        )
        return process

    def daemon(self, index: int) -> subprocess.Popen[bytes] | None:
        """Return the last daemon process started on node index, or None."""
        return self._daemons.get(index)

    def daemon_running(self, index: int) -> bool:
        """Return True while node index's daemon process is alive."""
        process = self._daemons.get(index)
        return process is not None and process.poll() is None

    def kill_daemon(self, index: int) -> int:
        """SIGKILL the process group of node index's daemon; returns its exit status.

        Render children run in sessions of their own. The kernel kills them when
        their worker dies (PR_SET_PDEATHSIG), so they are not signaled here.
        """
        process = self._daemons.get(index)
        if process is None:
            raise RuntimeError(f"node {index} has no daemon; call start_daemon first")
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        returncode = process.wait(timeout=30)
        logger.info(
            "lab %s: node %d daemon killed, exit status %d",
            self.prefix,
            index,
            returncode,
        )
        return returncode

    def restart_daemon(
        self, index: int, log_level: str = "INFO"
    ) -> subprocess.Popen[bytes]:
        """Kill node index's daemon if it runs, then start it on the same data dir."""
        data_dir = self._daemon_dirs.get(index)
        if data_dir is None:
            raise RuntimeError(f"node {index} has no daemon; call start_daemon first")
        if self.daemon_running(index):
            self.kill_daemon(index)
        return self.start_daemon(index, data_dir, log_level)

    def stop_daemons(self) -> None:
        """SIGTERM every running daemon, then SIGKILL those still running after 20 s."""
        running = [p for p in self._daemons.values() if p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + DAEMON_STOP_TIMEOUT
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning(
                    "lab %s: daemon pid %d ignored SIGTERM; killing it",
                    self.prefix,
                    process.pid,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)

    def kill_all(self) -> None:
        """SIGKILL every process started here and every process in the namespaces."""
        for process in self._processes:
            if process.poll() is None:
                _kill(process.pid)
        for namespace in self.namespaces:
            for pid in _namespace_pids(namespace):
                _kill(pid)
        for process in self._processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                logger.warning("lab %s: pid %d did not exit", self.prefix, process.pid)

    def _create(self) -> None:
        _ip("netns", "add", self.bridge_namespace)
        bridge = ["ip", "-n", self.bridge_namespace, "link"]
        _run([*bridge, "add", _BRIDGE, "type", "bridge"])
        _run([*bridge, "set", "dev", _BRIDGE, "up", "multicast", "on"])
        prefix_length = self.network.prefixlen
        for index, node in enumerate(self.nodes):
            port = f"v{index}"
            _ip("netns", "add", node.name)
            _run(
                [
                    *bridge,
                    "add",
                    port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    _NODE_LINK,
                    "netns",
                    node.name,
                ]
            )
            _run([*bridge, "set", "dev", port, "master", _BRIDGE, "up"])
            inside = ["ip", "-n", node.name]
            _run([*inside, "link", "set", "dev", "lo", "up"])
            address = f"{node.address}/{prefix_length}"
            _run([*inside, "addr", "add", address, "dev", _NODE_LINK])
            _run([*inside, "link", "set", "dev", _NODE_LINK, "up", "multicast", "on"])
            _run([*inside, "route", "add", "224.0.0.0/4", "dev", _NODE_LINK])
            _run([*inside, "rule", "add", "pref", str(_LOCAL_PREF), "lookup", "local"])
            _run([*inside, "rule", "del", "pref", "0"])

    def _teardown(self) -> None:
        self.kill_all()
        failures = []
        for namespace in self.namespaces:
            if namespace not in _list_namespaces():
                continue
            result = subprocess.run(
                ["ip", "netns", "delete", namespace],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                failures.append(f"{namespace}: {result.stderr.strip()}")
        if failures:
            raise RuntimeError(
                f"lab {self.prefix} could not delete namespaces: {'; '.join(failures)}"
            )

    def _delete_leftovers(self) -> None:
        """Remove namespaces left by an earlier crashed run with the same prefix."""
        leftovers = [
            name for name in _list_namespaces() if name.startswith(f"{self.prefix}-")
        ]
        for namespace in leftovers:
            logger.warning(
                "lab %s: deleting leftover namespace %s", self.prefix, namespace
            )
            for pid in _namespace_pids(namespace):
                _kill(pid)
            subprocess.run(["ip", "netns", "delete", namespace], check=False)


def _ip(*args: str) -> None:
    _run(["ip", *args])


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)!r} failed with exit status {result.returncode}: "
            f"{result.stderr.strip()}"
        )


def _list_namespaces() -> list[str]:
    result = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    )
    # Lines read "name" or "name (id: 3)".
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _namespace_pids(namespace: str) -> list[int]:
    result = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False
    )
    return [int(word) for word in result.stdout.split() if word.isdigit()]


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def replica_summary(data_dir: Path) -> dict[str, JobSummary]:
    """Read the jobs and tasks of data_dir/farm.sqlite, opened read-only.

    Two nodes whose replicas hold the same farm state return equal dicts: the
    summary leaves out timestamps, progress, logs and the workers of tasks.
    """
    with _open_replica(data_dir) as db:
        jobs = db.execute(
            "SELECT id, name, status, error FROM jobs ORDER BY id"
        ).fetchall()
        tasks = db.execute(
            "SELECT job_id, idx, name, status, attempts, failures FROM tasks"
            " ORDER BY job_id, idx"
        ).fetchall()
    by_job: dict[str, list[TaskSummary]] = {}
    for job_id, index, name, status, attempts, failures in tasks:
        by_job.setdefault(job_id, []).append(
            TaskSummary(index, name, status, attempts, failures)
        )
    return {
        job_id: JobSummary(job_id, name, status, error, tuple(by_job.get(job_id, [])))
        for job_id, name, status, error in jobs
    }


def replica_attempts(data_dir: Path, job_id: str | None = None) -> list[AttemptRecord]:
    """Read the attempts of data_dir/farm.sqlite (of one job, or all), oldest first."""
    query = (
        "SELECT a.id, a.job_id, a.task_id, t.idx, a.worker_id, a.node_id, a.status,"
        " a.error, a.started, a.ended FROM attempts AS a"
        " JOIN tasks AS t ON t.id = a.task_id"
    )
    parameters: tuple[str, ...] = ()
    if job_id is not None:
        query += " WHERE a.job_id = ?"
        parameters = (job_id,)
    with _open_replica(data_dir) as db:
        rows = db.execute(query + " ORDER BY a.started, a.id", parameters).fetchall()
    return [AttemptRecord(*row) for row in rows]


@contextlib.contextmanager
def _open_replica(data_dir: Path) -> Iterator[sqlite3.Connection]:
    path = data_dir / "farm.sqlite"
    if not path.is_file():
        raise FileNotFoundError(
            f"replica {path} not found: this node has not served or replicated the"
            " farm state yet"
        )
    # mode=ro opens the database file read-only. SQLite still reads the WAL, so
    # the result includes the commits of a running daemon and of a killed one.
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        yield db
    finally:
        db.close()
