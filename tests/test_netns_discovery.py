"""Tests for mDNS discovery between processes in separate network namespaces.

Each node runs in its own namespace on a bridged test subnet and announces only
on its namespace address, as nodes on separate machines of one LAN would.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netns import NetnsLab, netns_available

_UNAVAILABLE = netns_available()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        _UNAVAILABLE is not None, reason=f"network namespaces: {_UNAVAILABLE}"
    ),
]

REPO_ROOT = Path(__file__).resolve().parent.parent
FARM_ID = "0123456789abcdef"

# The node program: argv[1] is a JSON config. It prints one JSON object per line
# and reads JSON commands ("update", "stop") from stdin.
NODE_PROGRAM = """
import asyncio, dataclasses, json, sys
from flamenco_p2p.discovery import Advert, MdnsDiscovery, check_multicast

def emit(**fields):
    print(json.dumps(fields), flush=True)

async def main():
    config = json.loads(sys.argv[1])
    emit(event="multicast", problem=check_multicast(config["interfaces"]))
    discovery = MdnsDiscovery(
        Advert(**config["advert"]),
        lambda s: emit(event="sighting", **dataclasses.asdict(s)),
        interfaces=config["interfaces"],
        on_goodbye=lambda node_id: emit(event="goodbye", node_id=node_id),
    )
    await discovery.start()
    emit(event="started")
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = json.loads(line)
        if command["command"] == "update":
            await discovery.update(Advert(**command["advert"]))
            emit(event="updated")
        elif command["command"] == "stop":
            break
    await discovery.stop()
    emit(event="stopped")

asyncio.run(main())
"""


def make_advert(index: int, address: str) -> dict[str, Any]:
    return {
        "node_id": f"{index + 1:02x}" * 16,
        "farm_id": FARM_ID,
        "site": f"rack {index}",
        "address": address,
        "node_port": 7100 + index,
        "roles": {"worker": index},
        "capabilities": f"cpu={index + 2};blender=5.0.1",
    }


class NodeProcess:
    """A node program in a namespace, with its output lines parsed as they come."""

    def __init__(self, lab: NetnsLab, index: int, port_offset: int = 0) -> None:
        self.index = index
        self.advert = make_advert(index, lab.nodes[index].address)
        self.advert["node_port"] += port_offset
        config = {"advert": self.advert, "interfaces": [lab.nodes[index].address]}
        self.process = lab.popen(
            index,
            [sys.executable, "-c", NODE_PROGRAM, json.dumps(config)],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def node_id(self) -> str:
        return str(self.advert["node_id"])

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def close(self) -> None:
        """Close the pipes once the process is gone (the lab kills it on exit)."""
        self._reader.join(timeout=10)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def wait_for(self, what: str, limit: float, **fields: Any) -> dict[str, Any]:
        """Return the first event whose fields match, failing after limit seconds."""
        deadline = time.monotonic() + limit
        while True:
            for event in self.events:
                if all(event.get(key) == value for key, value in fields.items()):
                    return event
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                pytest.fail(
                    self._failure(f"timed out after {limit} s waiting for {what}")
                )
            if line is None:
                pytest.fail(self._failure(f"node exited while waiting for {what}"))
            self.events.append(json.loads(line))

    def _failure(self, message: str) -> str:
        stderr = ""
        if self.process.poll() is not None and self.process.stderr is not None:
            stderr = self.process.stderr.read()[-2000:]
        return f"node {self.index}: {message}; events {self.events}; stderr {stderr}"


@contextlib.contextmanager
def node_lab(count: int) -> Iterator[tuple[NetnsLab, list[NodeProcess]]]:
    """Start a lab with a node program in each namespace, and clean both up."""
    nodes: list[NodeProcess] = []
    try:
        with NetnsLab(count) as lab:
            nodes.extend(NodeProcess(lab, index) for index in range(count))
            for node in nodes:
                check = node.wait_for("the multicast check", 20.0, event="multicast")
                assert check["problem"] is None
                node.wait_for("start", 20.0, event="started")
            yield lab, nodes
    finally:
        for node in nodes:
            node.close()


def test_netns_nodes_see_each_other() -> None:
    with node_lab(3) as (lab, nodes):
        for node in nodes:
            for other in nodes:
                if other is node:
                    continue
                sighting = node.wait_for(
                    f"a sighting of node {other.index}",
                    10.0,
                    event="sighting",
                    node_id=other.node_id,
                )
                assert sighting["address"] == lab.nodes[other.index].address
                assert sighting["node_port"] == other.advert["node_port"]
                assert sighting["farm_id"] == FARM_ID
                assert sighting["site"] == other.advert["site"]
                assert sighting["roles"] == other.advert["roles"]
                assert sighting["capabilities"] == other.advert["capabilities"]
                assert sighting["protocol"] == 1
                assert sighting["source"] == "mdns"
            own = [e for e in node.events if e.get("node_id") == node.node_id]
            assert own == []


def test_netns_update_and_goodbye() -> None:
    with node_lab(3) as (_, nodes):
        first, second, third = nodes
        for watcher in (second, third):
            watcher.wait_for(
                "the first sighting", 10.0, event="sighting", node_id=first.node_id
            )

        changed = {**first.advert, "roles": {"manager": 7, "worker": 0}}
        first.send(command="update", advert=changed)
        first.wait_for("the update", 10.0, event="updated")
        for watcher in (second, third):
            watcher.wait_for(
                "the updated roles",
                10.0,
                event="sighting",
                node_id=first.node_id,
                roles={"manager": 7, "worker": 0},
            )

        first.send(command="stop")
        first.wait_for("the stop", 10.0, event="stopped")
        assert first.process.wait(timeout=10) == 0
        for watcher in (second, third):
            watcher.wait_for("the goodbye", 5.0, event="goodbye", node_id=first.node_id)
        goodbyes = [e for e in second.events if e["event"] == "goodbye"]
        assert [e["node_id"] for e in goodbyes] == [first.node_id]


def test_netns_restart_after_kill() -> None:
    # A SIGKILLed node sends no goodbye, so peers keep its records cached and
    # see the restarted node as an update of the same name.
    with node_lab(2) as (lab, nodes):
        first, second = nodes
        second.wait_for(
            "the first sighting", 10.0, event="sighting", node_id=first.node_id
        )
        first.process.kill()
        first.process.wait(timeout=10)
        restarted = NodeProcess(lab, 0, port_offset=50)
        try:
            restarted.wait_for("start", 20.0, event="started")
            sighting = second.wait_for(
                "the restarted node",
                10.0,
                event="sighting",
                node_id=first.node_id,
                node_port=first.advert["node_port"] + 50,
            )
            assert sighting["address"] == lab.nodes[0].address
            assert not [e for e in second.events if e["event"] == "goodbye"]
        finally:
            lab.kill_all()
            restarted.close()


def test_netns_check_multicast_reports_fix() -> None:
    check = (
        "import sys; from flamenco_p2p.discovery import check_multicast; "
        "print(check_multicast(sys.argv[1:]))"
    )
    with NetnsLab(1) as lab:
        address = lab.nodes[0].address
        argv = [sys.executable, "-c", check]
        lab.run(0, ["ip", "link", "set", "dev", "eth0", "multicast", "off"])
        lab.run(0, ["ip", "link", "set", "dev", "lo", "down"])
        off = lab.run(0, [*argv, address])
        down = lab.run(0, [*argv, "127.0.0.1"])
    assert "ip link set dev eth0 multicast on" in off.stdout
    assert address in off.stdout
    assert "ip link set dev lo up" in down.stdout


def _namespaces() -> list[str]:
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    )
    return [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]


def _host_links() -> list[str]:
    listed = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
    )
    return sorted(line.split(":")[1].strip() for line in listed.stdout.splitlines())


def test_netns_lab_cleans_up_when_body_raises() -> None:
    links_before = _host_links()
    with pytest.raises(RuntimeError, match="body failed"), NetnsLab(2) as lab:
        names = lab.namespaces
        sleeper = lab.popen(1, ["sleep", "60"])
        assert set(names) <= set(_namespaces())
        assert _host_links() == links_before
        raise RuntimeError("body failed")
    assert sleeper.poll() is not None
    assert not set(names) & set(_namespaces())
    assert _host_links() == links_before


def test_netns_lab_removes_leftovers() -> None:
    prefix = f"fpleft{os.getpid()}"
    leftover = f"{prefix}-n0"
    subprocess.run(["ip", "netns", "add", leftover], check=True)
    try:
        with NetnsLab(1, prefix=prefix) as lab:
            assert lab.nodes[0].name == leftover
            shown = lab.run(0, ["ip", "-o", "addr", "show", "dev", "eth0"])
            assert lab.nodes[0].address in shown.stdout
        assert leftover not in _namespaces()
    finally:
        if leftover in _namespaces():
            subprocess.run(["ip", "netns", "delete", leftover], check=False)


def test_netns_lab_rejects_bad_prefix() -> None:
    with pytest.raises(ValueError, match="namespace prefix"):
        NetnsLab(1, prefix="Bad-Prefix")
