"""The event stream across a server takeover, on a farm of real daemons."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from farm import LocalFarm

pytestmark = pytest.mark.slow


async def read_events(
    response: aiohttp.ClientResponse, seen: list[tuple[str, Any]]
) -> None:
    kind = ""
    async for raw in response.content:
        line = raw.decode("utf-8").rstrip("\n")
        if line.startswith("event:"):
            kind = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            seen.append((kind, json.loads(line.split(":", 1)[1])))


async def wait_for(
    seen: list[tuple[str, Any]], test: Any, timeout: float, what: str
) -> tuple[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in seen:
            if test(*event):
                return event
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout} s; events: {seen[-20:]}")


async def test_stream_survives_a_server_takeover(tmp_path: Path) -> None:
    with LocalFarm(tmp_path, 3, mdns=False) as farm:
        status = await farm.wait_for_roles()
        server_id = status["roles"]["server"]["holder"]
        ids = [(n.data_dir / "node-id").read_text().strip() for n in farm.nodes]
        server = ids.index(server_id)
        watcher = next(i for i in range(3) if i != server)
        base = farm.api_url(watcher)
        headers = {"Authorization": f"Bearer {farm.token}"}
        seen: list[tuple[str, Any]] = []
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{base}/api/events") as stream,
        ):
            reader = asyncio.create_task(read_events(stream, seen))
            try:
                await wait_for(seen, lambda k, d: k == "hello", 10, "hello")
                farm.kill(server)
                await wait_for(seen, lambda k, d: k == "reset", 30, "reset")
                body = {
                    "name": "after the takeover",
                    "job_type": "sleep",
                    "settings": {"tasks": 2, "duration": 0.1},
                }
                async with session.post(
                    f"{base}/api/jobs", json=body, headers=headers
                ) as reply:
                    assert reply.status == 201, await reply.text()
                    job_id = (await reply.json())["job"]["id"]
                await wait_for(
                    seen,
                    lambda k, d: (
                        k == "job" and d["id"] == job_id and d["status"] == "completed"
                    ),
                    30,
                    "completed job event from the new server",
                )
                nodes = await wait_for(
                    seen,
                    lambda k, d: (
                        k == "nodes"
                        and any(
                            n["node_id"] == server_id and n["state"] != "alive"
                            for n in d["nodes"]
                        )
                    ),
                    30,
                    "nodes event showing the killed server",
                )
                assert nodes[1]["nodes"]
            finally:
                reader.cancel()
