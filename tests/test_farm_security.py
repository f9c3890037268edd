"""Strangers, plain ZeroMQ clients and raw TCP against a farm with a farm key."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from farm import LocalFarm
from test_farm_local import node_of, sleep_job, submit

from flamenco_p2p.farmkey import load_farm_key
from flamenco_p2p.protocol.messages import pack
from flamenco_p2p.security import farm_context, secure_client
from flamenco_p2p.transport import DealerLink, configure

pytestmark = pytest.mark.slow

STRANGER = 3
ROLE_PORTS = {"node": 7776, "manager": 7777, "server": 9999}


def node_id(farm: LocalFarm, index: int) -> str:
    return (farm.nodes[index].data_dir / "node-id").read_text().strip()


def all_logs(farm: LocalFarm) -> str:
    return "".join(node.log_text() for node in farm.nodes)


async def test_stranger_refused_and_farm_keeps_working(tmp_path: Path) -> None:
    members = [0, 1, 2]
    with LocalFarm(tmp_path, 4, strangers=frozenset({STRANGER})) as farm:
        status = await farm.wait_for_roles(alive=3)
        assert STRANGER not in members
        stranger_id = node_id(farm, STRANGER)
        member_ids = {node_id(farm, i) for i in members}
        assert {n["node_id"] for n in status["nodes"]} == member_ids
        await _wait_foreign(farm, 0, stranger_id)

        # The stranger knows every address and port but not the farm key.
        stranger_key = load_farm_key(farm.nodes[STRANGER].data_dir)
        ctx = farm_context(stranger_key)
        try:
            for node in (farm.nodes[i] for i in members):
                for name, port in ROLE_PORTS.items():
                    link = DealerLink(ctx, stranger_id, f"tcp://{node.address}:{port}")
                    try:
                        with pytest.raises(Exception, match="timed out"):
                            await link.call("client_status", {}, timeout=1.0)
                    finally:
                        await link.close()
                    assert name in ROLE_PORTS
        finally:
            ctx.destroy(linger=0)

        job_id = await submit(farm, sleep_job(6, 0.2))
        view = await farm.wait_for_job(job_id)
        assert view["job"]["status"] == "completed", farm.logs()
        assert {node_of(t) for t in view["tasks"]} <= member_ids
        stranger_status = await farm.call(STRANGER, "client_status", {})
        assert stranger_status["jobs"] == []
        assert {n["node_id"] for n in stranger_status["nodes"]} == {stranger_id}
        blobs = farm.nodes[STRANGER].data_dir / "blobs"
        assert not [p for p in blobs.rglob("*") if p.is_file()]
        logs = all_logs(farm)
        assert "rejected a connection whose CURVE handshake failed" in logs
        assert "belongs to another farm" in farm.nodes[STRANGER].log_text()
        assert "Traceback" not in logs


async def test_plain_zmq_and_raw_tcp_get_nothing(tmp_path: Path) -> None:
    with LocalFarm(tmp_path, 2) as farm:
        status = await farm.wait_for_roles()
        addresses = {n["node_id"]: n["address"] for n in status["nodes"]}
        manager = addresses[status["roles"]["manager:lab"]["holder"]]
        server = addresses[status["roles"]["server"]["holder"]]
        targets = [(manager, 7777), (server, 9999), (manager, 7776)]
        for address, port in targets:
            assert await _plain_zmq_answer(f"tcp://{address}:{port}") is None
            assert _raw_tcp_answer(address, port, os.urandom(4096)) == b""
            huge = _zmtp_greeting() + b"\x02" + (2**62).to_bytes(8, "big")
            assert _raw_tcp_answer(address, port, huge) == b""
        job_id = await submit(farm, sleep_job(4, 0.1))
        view = await farm.wait_for_job(job_id)
        assert view["job"]["status"] == "completed", farm.logs()
        for node in farm.nodes:
            assert node.process is not None
            assert node.process.poll() is None
        logs = all_logs(farm)
        assert "rejected a connection whose CURVE handshake failed" in logs
        assert "Traceback" not in logs


async def test_member_garbage_is_dropped_and_logged(tmp_path: Path) -> None:
    with LocalFarm(tmp_path, 1) as farm:
        await farm.wait_for_roles()
        node = farm.nodes[0]
        ctx = farm_context(load_farm_key(node.data_dir))
        sock = ctx.socket(zmq.DEALER)
        configure(sock)
        secure_client(sock, ctx)
        sock.connect(f"tcp://{node.address}:7777")
        try:
            for payload in (b"\x00", b"\xc1", b"\xdf\xff\xff\xff\xff", os.urandom(64)):
                await sock.send(payload)
            await sock.send_multipart([b"a", b"b", b"c"])
            bad_op = pack("no_such_op", "ab" * 16, {}, request_id=7)
            await sock.send(bad_op)
            reply = await asyncio.wait_for(sock.recv(), 5)
            assert b"unknown operation" in reply
        finally:
            sock.close(0)
            ctx.destroy(linger=0)
        job_id = await submit(farm, sleep_job(2, 0.1))
        assert (await farm.wait_for_job(job_id))["job"]["status"] == "completed"
        log = node.log_text()
        assert "dropped invalid message" in log
        assert "Traceback" not in log


async def test_no_secret_in_logs(tmp_path: Path) -> None:
    with LocalFarm(tmp_path, 2) as farm:
        await farm.wait_for_roles()
        job_id = await submit(farm, sleep_job(3, 0.1))
        await farm.wait_for_job(job_id)
        secrets = farm.secrets()
    logs = all_logs(farm)
    assert "DEBUG" in logs
    for secret in secrets:
        assert secret not in logs
        assert secret[:16] not in logs


async def _wait_foreign(farm: LocalFarm, via: int, stranger_id: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = await farm.call(via, "client_status", {})
        if any(f["node_id"] == stranger_id for f in status["foreign"]):
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"node {via} never listed the stranger as foreign")


async def _plain_zmq_answer(endpoint: str) -> Any:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        await sock.send(pack("client_status", "ab" * 16, {}, request_id=1))
        try:
            return await asyncio.wait_for(sock.recv(), 1.5)
        except TimeoutError:
            return None
    finally:
        sock.close(0)
        ctx.term()


def _zmtp_greeting() -> bytes:
    signature = b"\xff" + b"\x00" * 8 + b"\x7f"
    return signature + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31


def _raw_tcp_answer(address: str, port: int, data: bytes) -> bytes:
    """Send bytes and return what comes back other than the ZMTP greeting."""
    received = b""
    with socket.create_connection((address, port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.settimeout(1.0)
            while chunk := sock.recv(4096):
                received += chunk
        except OSError:
            pass
    # A ZeroMQ peer sends its own 64-byte greeting before it reads anything.
    return received[64:] if received[:1] == b"\xff" else received
