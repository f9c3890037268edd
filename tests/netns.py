"""A test LAN made of Linux network namespaces (needs root and iproute2).

``NetnsLab(count)`` creates one namespace ``<prefix>-br`` that contains a bridge,
and ``count`` node namespaces ``<prefix>-n<i>``, each joined to the bridge by a
veth pair. Every link lives inside the lab's namespaces, so the host network is
never touched. Leaving the ``with`` block kills the processes started in the
lab and deletes its namespaces, also when the body raised.
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
import subprocess
from dataclasses import dataclass
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

_PREFIX = re.compile(r"[a-z][a-z0-9]{0,15}")
_counter = itertools.count()
_FIRST_HOST = 10  # node i gets the subnet's address number 10 + i
_BRIDGE = "br0"
_NODE_LINK = "eth0"


@dataclass(frozen=True, slots=True)
class NetnsNode:
    """One node namespace and the IPv4 address of its ``eth0``."""

    name: str
    address: str


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
