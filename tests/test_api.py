"""The HTTP API of a running three-node farm, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from farm import LocalFarm
from PIL import Image
from render_helpers import make_textured_scene

from flamenco_p2p.render.demo_scene import make_demo_scene
from flamenco_p2p.submission import build_render_job

pytestmark = pytest.mark.slow

# The en dash is on purpose: names come back exactly as given.
UNICODE_NAME = "\u00c9pisode 01 \u2013 plan 3"
CHANGE_ROUTES = [
    ("POST", "/api/jobs"),
    ("DELETE", "/api/jobs/{job_id}"),
    ("POST", "/api/jobs/{job_id}/pause"),
    ("POST", "/api/jobs/{job_id}/resume"),
    ("POST", "/api/jobs/{job_id}/cancel"),
    ("POST", "/api/jobs/{job_id}/requeue"),
    ("POST", "/api/jobs/{job_id}/priority"),
    ("POST", "/api/tasks/{task_id}/requeue"),
    ("POST", "/api/blobs/missing"),
    ("PUT", "/api/blobs/{sha256}"),
]


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFarm]:
    with LocalFarm(tmp_path_factory.mktemp("api-farm"), 3, mdns=False) as running:
        asyncio.run(running.wait_for_roles())
        yield running


@pytest.fixture
async def http(farm: LocalFarm) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, farm.api_url(1), farm.token)


class Api:
    """Small request helpers; every call returns (status, decoded JSON)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session = session
        self.base = base
        self.token = token

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = "farm",
        data: bytes | None = None,
    ) -> tuple[int, Any]:
        headers = {}
        if token is not None:
            headers["Authorization"] = "Bearer " + (
                self.token if token == "farm" else token
            )
        async with self.session.request(
            method, self.base + path, json=body, data=data, headers=headers
        ) as response:
            raw = await response.read()
            if response.content_type == "application/json":
                return response.status, json.loads(raw)
            return response.status, raw

    async def sleep_job(self, name: str, tasks: int, duration: float) -> dict[str, Any]:
        status, body = await self.call(
            "POST",
            "/api/jobs",
            {
                "name": name,
                "job_type": "sleep",
                "settings": {"tasks": tasks, "duration": duration},
            },
        )
        assert status == 201, body
        job: dict[str, Any] = body["job"]
        return job

    async def wait_status(
        self, job_id: str, wanted: set[str], timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: Any = None
        while time.monotonic() < deadline:
            status, job = await self.call("GET", f"/api/jobs/{job_id}")
            assert status == 200, job
            if job["status"] in wanted:
                return dict(job)
            await asyncio.sleep(0.2)
        raise AssertionError(f"job {job_id} never reached {wanted}: {job}")


async def test_every_change_needs_the_token(http: Api) -> None:
    job = await http.sleep_job("guarded", 1, 0.0)
    ids = {"job_id": job["id"], "task_id": job["id"] + "-0000000", "sha256": "0" * 64}
    for method, template in CHANGE_ROUTES:
        path = template.format(**ids)
        for token in (None, "not-the-token"):
            status, body = await http.call(method, path, {}, token=token)
            assert status == 401, (method, path, token, body)
            assert body["error"]["code"] == "unauthorized"
            assert "flamenco-p2p token" in body["error"]["message"]
    # Reads need no token.
    status, _body = await http.call("GET", f"/api/jobs/{job['id']}", token=None)
    assert status == 200


async def test_wrong_states_get_409_with_the_reason(http: Api) -> None:
    done = await http.sleep_job("finished", 2, 0.0)
    await http.wait_status(done["id"], {"completed"})
    cases = [
        ("POST", f"/api/jobs/{done['id']}/cancel", None, "already completed"),
        ("POST", f"/api/jobs/{done['id']}/pause", None, "is completed"),
        ("POST", f"/api/jobs/{done['id']}/resume", None, "only a paused job"),
        ("POST", f"/api/jobs/{done['id']}/requeue", {"scope": "failed"}, "no failed"),
    ]
    long = await http.sleep_job("long", 4, 30.0)
    cases += [
        ("DELETE", f"/api/jobs/{long['id']}", None, "cancel it first"),
        ("POST", f"/api/jobs/{long['id']}/requeue", {"scope": "all"}, "is "),
        ("POST", f"/api/tasks/{long['id']}-0000003/requeue", None, "only a completed"),
    ]
    for method, path, body, reason in cases:
        status, reply = await http.call(method, path, body)
        assert status == 409, (path, reply)
        assert reply["error"]["code"] == "conflict"
        assert reason in reply["error"]["message"], reply
    status, reply = await http.call("POST", f"/api/jobs/{long['id']}/cancel")
    assert status == 200
    assert reply["job"]["status"] in ("cancel-requested", "canceled")
    await http.wait_status(long["id"], {"canceled"})
    status, reply = await http.call("DELETE", f"/api/jobs/{long['id']}")
    assert (status, reply) == (200, {"deleted": long["id"]})
    status, reply = await http.call("GET", f"/api/jobs/{long['id']}")
    assert status == 404
    assert reply["error"]["code"] == "not_found"


async def test_bad_input_gets_400_naming_the_field(http: Api) -> None:
    cases: list[tuple[str, str, Any, str]] = [
        ("GET", "/api/jobs?limit=0", None, "limit"),
        ("GET", "/api/jobs?limit=abc", None, "limit"),
        ("GET", "/api/jobs?status=done", None, "done"),
        ("POST", "/api/jobs", {"name": "x", "job_type": "nope"}, "job_type"),
        (
            "POST",
            "/api/jobs",
            {"name": "x", "job_type": "sleep", "colour": 1},
            "colour",
        ),
        ("POST", "/api/jobs", [1, 2], "JSON object"),
        ("POST", "/api/blobs/missing", {"hashes": ["xyz"]}, "SHA-256"),
    ]
    job = await http.sleep_job("target", 1, 0.0)
    cases += [
        ("POST", f"/api/jobs/{job['id']}/priority", {"priority": 101}, "priority"),
        ("POST", f"/api/jobs/{job['id']}/requeue", {"scope": "most"}, "scope"),
    ]
    for method, path, body, named in cases:
        status, reply = await http.call(method, path, body)
        assert status == 400, (path, reply)
        assert reply["error"]["code"] == "invalid"
        assert named in reply["error"]["message"], reply
    status, reply = await http.call("POST", "/api/jobs", data=b"\xff{not json")
    assert status == 400
    assert "not JSON" in reply["error"]["message"]
    status, reply = await http.call("GET", "/api/jobs/nope/tasks")
    assert status == 404


async def test_unicode_name_comes_back_byte_for_byte(http: Api) -> None:
    job = await http.sleep_job(UNICODE_NAME, 1, 0.0)
    async with http.session.get(f"{http.base}/api/jobs/{job['id']}") as response:
        raw = await response.read()
        assert response.charset == "utf-8"
    assert UNICODE_NAME.encode("utf-8") in raw
    assert json.loads(raw)["name"] == UNICODE_NAME
    status, listing = await http.call("GET", "/api/jobs?q=%C3%A9pisode%2001")
    assert status == 200
    assert UNICODE_NAME in [j["name"] for j in listing["jobs"]]


async def test_ten_thousand_tasks_come_in_pages(http: Api) -> None:
    job = await http.sleep_job("many", 10_000, 0.0)
    assert job["tasks_total"] == 10_000
    status, page = await http.call("GET", f"/api/jobs/{job['id']}/tasks?limit=200")
    assert status == 200
    assert page["total"] == 10_000
    assert [t["index"] for t in page["tasks"]] == list(range(200))
    status, page = await http.call(
        "GET", f"/api/jobs/{job['id']}/tasks?limit=1000&offset=9500"
    )
    assert [t["index"] for t in page["tasks"]] == list(range(9500, 10_000))
    status, page = await http.call("GET", f"/api/jobs/{job['id']}/tasks?limit=1001")
    assert status == 400
    status, _reply = await http.call("POST", f"/api/jobs/{job['id']}/cancel")
    assert status == 200


async def test_pause_and_resume_a_running_job(http: Api) -> None:
    job = await http.sleep_job("pausable", 6, 1.0)
    await http.wait_status(job["id"], {"active"})
    status, reply = await http.call("POST", f"/api/jobs/{job['id']}/pause")
    assert status == 200
    assert reply["job"]["status"] in ("pause-requested", "paused")
    paused = await http.wait_status(job["id"], {"paused"}, timeout=30)
    assert paused["task_counts"]["active"] == 0
    assert paused["task_counts"]["paused"] >= 1
    status, reply = await http.call("POST", f"/api/jobs/{job['id']}/resume")
    # The server may lease a task before it answers.
    assert status == 200
    assert reply["job"]["status"] in ("queued", "active")
    done = await http.wait_status(job["id"], {"completed"}, timeout=60)
    assert done["frames_done"] == done["frames_total"]
    assert done["progress"] == 1.0
    status, reply = await http.call(
        "POST", f"/api/jobs/{job['id']}/priority", {"priority": 80}
    )
    assert status == 200
    assert reply["job"]["priority"] == 80


async def test_task_detail_and_logs(http: Api) -> None:
    job = await http.sleep_job("logged", 1, 0.0)
    await http.wait_status(job["id"], {"completed"})
    task_id = job["id"] + "-0000000"
    deadline = time.monotonic() + 10
    while True:
        status, log = await http.call("GET", f"/api/tasks/{task_id}/log?tail=10")
        if len(log["lines"]) >= 2 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    lines = [line["line"] for line in log["lines"]]
    assert lines[0].startswith("sleeping 0 s on ")
    assert lines[-1] == "slept 0 s"
    status, rest = await http.call(
        "GET", f"/api/tasks/{task_id}/log?after={log['lines'][0]['id']}"
    )
    assert [line["line"] for line in rest["lines"]] == lines[1:]
    status, text = await http.call("GET", f"/api/tasks/{task_id}/log.txt")
    assert text.decode() == "".join(line + "\n" for line in lines)
    status, detail = await http.call("GET", f"/api/tasks/{task_id}")
    assert detail["task"]["status"] == "completed"
    assert [a["status"] for a in detail["attempts"]] == ["completed"]
    status, reply = await http.call("POST", f"/api/tasks/{task_id}/requeue")
    assert status == 200
    assert reply["task"]["status"] in (
        "queued",
        "active",
        "completed",
    )
    await http.wait_status(job["id"], {"completed"})
    status, detail = await http.call("GET", f"/api/tasks/{task_id}")
    assert len(detail["attempts"]) == 2


async def test_event_stream_reports_jobs_tasks_and_logs(http: Api) -> None:
    seen: list[tuple[str, Any]] = []
    done = asyncio.Event()
    job_id = ""

    async def listen() -> None:
        async with http.session.get(f"{http.base}/api/events") as response:
            assert response.content_type == "text/event-stream"
            kind = ""
            async for raw in response.content:
                line = raw.decode("utf-8").rstrip("\n")
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    data = json.loads(line.split(":", 1)[1])
                    seen.append((kind, data))
                    if kind == "hello":
                        connected.set()
                    if (
                        kind == "job"
                        and data["id"] == job_id
                        and data["status"] == "completed"
                    ):
                        done.set()
                        return

    connected = asyncio.Event()
    listener = asyncio.create_task(listen())
    await asyncio.wait_for(connected.wait(), 10)
    job = await http.sleep_job(UNICODE_NAME, 3, 0.2)
    job_id = job["id"]
    try:
        await asyncio.wait_for(done.wait(), 60)
    finally:
        listener.cancel()
    kinds = {kind for kind, data in seen}
    assert {"hello", "job", "task"} <= kinds, seen
    task_events = [d for k, d in seen if k == "task" and d["job_id"] == job_id]
    assert {t["status"] for t in task_events} >= {"active", "completed"}
    job_events = [d for k, d in seen if k == "job" and d["id"] == job_id]
    assert job_events[-1]["name"] == UNICODE_NAME


async def test_blend_upload_by_hash_and_render_thumbnail(
    http: Api, tmp_path: Path
) -> None:
    blend = tmp_path / "scène.blend"
    make_demo_scene(blend, frames=2)
    data = blend.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    status, reply = await http.call("POST", "/api/blobs/missing", {"hashes": [sha256]})
    assert (status, reply) == (200, {"missing": [sha256]})
    status, reply = await http.call("PUT", f"/api/blobs/{'1' * 64}", data=data)
    assert status == 400
    assert "hashes to" in reply["error"]["message"]
    status, reply = await http.call("PUT", f"/api/blobs/{sha256}", data=data)
    assert (status, reply) == (201, {"sha256": sha256, "size": len(data)})
    status, reply = await http.call("POST", "/api/blobs/missing", {"hashes": [sha256]})
    assert reply == {"missing": []}
    job, _warnings = build_render_job(
        blend=blend,
        frames="1-2",
        chunk=1,
        output=str(tmp_path / "out" / "frame_####"),
        cwd=tmp_path,
        resolution=25,
    )
    job["settings"] |= {"blend_sha256": "2" * 64, "blend_name": blend.name}
    status, reply = await http.call("POST", "/api/jobs", job)
    assert status == 400
    assert "upload the blend file first" in reply["error"]["message"]
    status, reply = await http.call("GET", "/api/farm/thumbnail")
    job["settings"] |= {"blend_sha256": sha256}
    status, reply = await http.call("POST", "/api/jobs", job)
    assert status == 201, reply
    job_id = reply["job"]["id"]
    status, reply = await http.call("GET", f"/api/jobs/{job_id}/thumbnail")
    assert status == 404
    assert reply["error"]["code"] == "not_found"
    finished = await http.wait_status(job_id, {"completed", "failed"}, timeout=180)
    assert finished["status"] == "completed", finished
    assert (tmp_path / "out" / "frame_0002.png").is_file()
    # Another node than the submitter answers too: it asks the submitter.
    other = Api(http.session, http.base.replace(".11:", ".12:"), http.token)
    for api, path in (
        (http, f"/api/jobs/{job_id}/thumbnail"),
        (other, "/api/farm/thumbnail"),
    ):
        deadline = time.monotonic() + 15
        while True:
            status, image = await api.call("GET", path)
            if status == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        assert status == 200, image
        with Image.open(io.BytesIO(image)) as picture:
            assert picture.format == "JPEG"
            assert max(picture.size) <= 640


async def test_farm_and_nodes_views(http: Api, farm: LocalFarm) -> None:
    status, view = await http.call("GET", "/api/farm")
    assert status == 200
    assert view["farm"] == farm.farm
    assert view["server"]["epoch"] >= 1
    assert [m["site"] for m in view["managers"]] == ["lab"]
    assert view["counts"]["nodes"] == {"alive": 3}
    status, nodes = await http.call("GET", "/api/nodes")
    assert len(nodes["nodes"]) == 3
    holders = [n for n in nodes["nodes"] if n["roles"]]
    assert holders
    assert all(n["state"] == "alive" for n in nodes["nodes"])
    assert all(len(n["workers"]) == 1 for n in nodes["nodes"])
    assert sum(n["this_node"] for n in nodes["nodes"]) == 1
    status, page = await http.call("GET", "/")
    assert status == 200
    assert b"<html" in page.lower()
    status, doc = await http.call("GET", "/api/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.")


async def test_packed_job_brings_its_texture(http: Api, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    blend = project / "shot.blend"
    texture = make_textured_scene(blend, "tex/green.png")
    # The texture moves away: only the farm's copy of it can reach the render.
    packed = texture.read_bytes()
    texture.unlink()
    sources = {"tex/green.png": packed, blend.name: blend.read_bytes()}
    hashes = {path: hashlib.sha256(data).hexdigest() for path, data in sources.items()}
    document = {
        "version": 1,
        "files": [
            {
                "path": "tex/green.png",
                "sha256": hashes["tex/green.png"],
                "size": len(packed),
            }
        ],
    }
    manifest = json.dumps(document).encode()
    manifest_sha = hashlib.sha256(manifest).hexdigest()
    for sha256, data in [(hashes[p], d) for p, d in sources.items()] + [
        (manifest_sha, manifest)
    ]:
        status, reply = await http.call("PUT", f"/api/blobs/{sha256}", data=data)
        assert status == 201, reply
    job, _warnings = build_render_job(
        blend=blend,
        frames="1",
        chunk=1,
        output=str(tmp_path / "out" / "frame_####"),
        cwd=tmp_path,
    )
    job["settings"] |= {
        "blend_sha256": hashes[blend.name],
        "blend_name": blend.name,
        "manifest_sha256": "3" * 64,
    }
    status, reply = await http.call("POST", "/api/jobs", job)
    assert status == 400
    assert "upload the file list first" in reply["error"]["message"]
    job["settings"]["manifest_sha256"] = manifest_sha
    status, reply = await http.call("POST", "/api/jobs", job)
    assert status == 201, reply
    finished = await http.wait_status(reply["job"]["id"], {"completed", "failed"}, 180)
    assert finished["status"] == "completed", finished
    with Image.open(tmp_path / "out" / "frame_0001.png") as frame:
        pixel = frame.convert("RGB").getpixel((16, 9))
    assert isinstance(pixel, tuple)
    red, green, blue = pixel[:3]
    # Blender shows a missing texture in magenta.
    assert green > 200, (red, green, blue)
    assert red < 60, (red, green, blue)
    assert blue < 60, (red, green, blue)
