"""The fault tools of tests/netns.py: partitions, cuts, daemon kills, replica reads."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from failover_lab import FailoverFarm
from netns import NetnsLab, netns_available, replica_attempts, replica_summary

_UNAVAILABLE = netns_available()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        _UNAVAILABLE is not None, reason=f"network namespaces: {_UNAVAILABLE}"
    ),
]

PORT = 7390

ECHO_SERVER = """
import socket, sys, threading

def echo(conn):
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)

server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    threading.Thread(target=echo, args=(conn,), daemon=True).start()
"""

# Prints what came back, "timeout" for a silent drop, or the error's class name.
CONNECT_PROBE = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5) as c:
        c.sendall(b"ping")
        print(c.recv(4).decode())
except TimeoutError:
    print("timeout")
except OSError as exc:
    print(type(exc).__name__)
"""

# Keeps one connection open. Each input line is "<payload> <seconds>": send the
# payload ("-" sends nothing), then print what arrives within the seconds.
STREAM_CLIENT = """
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
for line in sys.stdin:
    payload, wait = line.split()
    if payload != "-":
        conn.sendall(payload.encode())
    conn.settimeout(float(wait))
    try:
        print(conn.recv(64).decode(), flush=True)
    except TimeoutError:
        print("timeout", flush=True)
"""


@contextmanager
def echo_lab(count: int) -> Iterator[NetnsLab]:
    """Start a lab with an echo server on every node."""
    servers: list[subprocess.Popen[str]] = []
    with NetnsLab(count) as lab:
        try:
            for index, node in enumerate(lab.nodes):
                server = lab.popen(
                    index,
                    [sys.executable, "-c", ECHO_SERVER, node.address, str(PORT)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                servers.append(server)
                assert server.stdout is not None
                assert server.stdout.readline().strip() == "listening"
            yield lab
        finally:
            lab.kill_all()
            for server in servers:
                if server.stdout is not None:
                    server.stdout.close()


def probe(lab: NetnsLab, source: int, target: int) -> str:
    """Connect from node source to node target's echo server; returns the outcome."""
    argv = [sys.executable, "-c", CONNECT_PROBE, lab.nodes[target].address, str(PORT)]
    return lab.run(source, argv).stdout.strip()


def reachability(lab: NetnsLab) -> dict[tuple[int, int], str]:
    count = len(lab.nodes)
    return {
        (a, b): probe(lab, a, b) for a in range(count) for b in range(count) if a != b
    }


def test_partition_drops_traffic_between_groups() -> None:
    with echo_lab(4) as lab:
        assert set(reachability(lab).values()) == {"ping"}
        lab.partition([[0, 1], [2, 3]])
        split = reachability(lab)
        healed_before = lab.blocked_pairs
        lab.heal()
        healed = reachability(lab)
    same_side = {(0, 1), (1, 0), (2, 3), (3, 2)}
    for pair, outcome in split.items():
        expected = "ping" if pair in same_side else "timeout"
        assert outcome == expected, f"{pair} during the partition: {outcome}"
    assert len(healed_before) == 4
    assert set(healed.values()) == {"ping"}, healed


def test_cut_drops_one_pair_only() -> None:
    with echo_lab(3) as lab:
        lab.cut(0, 1)
        cut = reachability(lab)
        lab.restore(1, 0)
        restored = reachability(lab)
    assert cut[(0, 1)] == "timeout"
    assert cut[(1, 0)] == "timeout"
    assert {cut[p] for p in [(0, 2), (2, 0), (1, 2), (2, 1)]} == {"ping"}
    assert set(restored.values()) == {"ping"}, restored


def test_heal_keeps_cuts_and_restore_keeps_partition() -> None:
    with echo_lab(3) as lab:
        lab.cut(1, 2)
        lab.partition([[0], [1, 2]])
        assert lab.blocked_pairs == {
            frozenset({0, 1}),
            frozenset({0, 2}),
            frozenset({1, 2}),
        }
        lab.heal()
        after_heal = reachability(lab)
        lab.partition([[0, 2], [1]])
        lab.restore(1, 2)
        after_restore = reachability(lab)
        lab.heal()
        assert lab.blocked_pairs == frozenset()
    assert after_heal[(1, 2)] == "timeout"
    assert after_heal[(2, 1)] == "timeout"
    assert after_heal[(0, 1)] == "ping"
    assert after_restore[(1, 2)] == "timeout", "the partition still separates 1 and 2"
    assert after_restore[(0, 2)] == "ping"


def test_partition_stalls_open_connection_until_heal() -> None:
    with echo_lab(2) as lab:
        client = lab.popen(
            0,
            [sys.executable, "-c", STREAM_CLIENT, lab.nodes[1].address, str(PORT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdin is not None
        assert client.stdout is not None

        def exchange(line: str) -> str:
            assert client.stdin is not None
            assert client.stdout is not None
            client.stdin.write(line + "\n")
            client.stdin.flush()
            reply: str = client.stdout.readline()
            return reply.strip()

        try:
            before = exchange("first 5")
            lab.partition([[0], [1]])
            during = exchange("second 1.5")
            lab.heal()
            # TCP retransmits the unacknowledged bytes once the path is back,
            # because a drop (unlike a reset) leaves the connection open.
            after = exchange("- 20")
        finally:
            client.stdin.close()
            client.kill()
            client.wait(timeout=10)
            client.stdout.close()
    assert before == "first"
    assert during == "timeout"
    assert after == "second"


def test_partition_rejects_invalid_groups() -> None:
    lab = NetnsLab(3)
    with pytest.raises(ValueError, match="exactly once"):
        lab.partition([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="exactly once"):
        lab.partition([[0, 1]])
    with pytest.raises(ValueError, match="exactly once"):
        lab.partition([[0], [1]])
    with pytest.raises(ValueError, match="two different indices"):
        lab.cut(1, 1)
    with pytest.raises(ValueError, match="two different indices"):
        lab.cut(0, 3)


def test_replica_summary_reports_missing_database(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"farm\.sqlite not found"):
        replica_summary(tmp_path)


@pytest.mark.slow
def test_daemon_kill_and_restart_keep_data(tmp_path: Path) -> None:
    with NetnsLab(1) as lab, FailoverFarm(lab, tmp_path) as farm:
        farm.wait_for_farm(timeout=60)
        job_id = farm.submit_sleep(0, tasks=3, duration=0.1)
        view = farm.wait_for_job(job_id, timeout=60)
        assert view["job"]["status"] == "completed", farm.logs()

        summary = replica_summary(farm.data_dirs[0])
        attempts = replica_attempts(farm.data_dirs[0], job_id)
        old = lab.daemon(0)
        returncode = farm.kill(0)
        assert not lab.daemon_running(0)
        down = farm.status(0)
        killed = replica_summary(farm.data_dirs[0])

        farm.restart(0)
        new = lab.daemon(0)
        farm.wait_for_farm(timeout=60)
        deadline = time.monotonic() + 30
        while (status := farm.status(0)) is None or not status["jobs"]:
            assert time.monotonic() < deadline, f"no jobs after the restart: {status}"
            time.sleep(0.5)
        after = replica_summary(farm.data_dirs[0])

    assert returncode == -9
    assert down is None
    assert old is not None
    assert new is not None
    assert new.pid != old.pid
    assert summary[job_id].status == "completed"
    assert [t.status for t in summary[job_id].tasks] == ["completed"] * 3
    assert [t.status for t in summary[job_id].tasks] == [
        t["status"] for t in view["tasks"]
    ]
    assert [a.status for a in attempts] == ["completed"] * 3
    assert {a.task_index for a in attempts} == {0, 1, 2}
    assert status["node_id"] == farm.node_id(0)
    assert [j["id"] for j in status["jobs"]] == [job_id]
    assert killed == summary
    assert after == summary
