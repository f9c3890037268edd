"""ApiClient against a real two-node farm on loopback, and its event stream parser."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from farm import LocalFarm

from flamenco_p2p.api.client import (
    ApiClient,
    ApiError,
    EventStreamParser,
    NodeUnreachable,
    local_api,
)
from flamenco_p2p.config import load_config

# The en dash is on purpose: names come back exactly as given. U+2028 and U+0085
# are line breaks to str.splitlines but not to an event stream.
UNICODE_NAME = "\u00c9pisode 01 \u2013 plan 3"
TRICKY_NAME = UNICODE_NAME + " \u2028 \x85 end"
FAST_FAILURES = "[failures]\nmax_attempts = 1\n"


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFarm]:
    root = tmp_path_factory.mktemp("api-client-farm")
    with LocalFarm(root, 2, extra_config=FAST_FAILURES, mdns=False) as running:
        asyncio.run(running.wait_for_roles())
        yield running


@pytest.fixture
async def api(farm: LocalFarm) -> AsyncIterator[ApiClient]:
    async with ApiClient(farm.api_url(1), farm.token) as client:
        yield client


def sleep_job(tasks: int, duration: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": extra.pop("name", "sleepy"),
        "job_type": "sleep",
        "priority": extra.pop("priority", 50),
        "settings": {"tasks": tasks, "duration": duration, **extra},
        "requirements": {"gpu": "none", "gpu_types": [], "min_blender": None},
    }


def is_done(job: dict[str, Any]) -> bool:
    return bool(job["status"] == "completed")


async def wait_for(
    api: ApiClient, job_id: str, statuses: set[str], timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = await api.job(job_id)
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, f"job stayed {job['status']}: {job}"
        await asyncio.sleep(0.1)


async def wait_active(api: ApiClient, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while (await api.job(job_id))["task_counts"]["active"] == 0:
        assert time.monotonic() < deadline, "no task of the job started"
        await asyncio.sleep(0.1)


# Farm, nodes and jobs -------------------------------------------------------


async def test_api_client_reads_farm_and_nodes(api: ApiClient, farm: LocalFarm) -> None:
    view = await api.farm()
    assert view["farm"] == farm.farm
    assert view["server"] is not None
    assert [m["site"] for m in view["managers"]] == ["lab"]
    nodes = (await api.nodes())["nodes"]
    assert len(nodes) == 2
    assert {n["state"] for n in nodes} == {"alive"}
    this_node = [n for n in nodes if n["this_node"]]
    assert len(this_node) == 1
    assert this_node[0]["address"] == farm.nodes[1].address


async def test_api_client_local_api_of_data_dir(farm: LocalFarm) -> None:
    url, token = local_api(load_config(farm.nodes[0].data_dir))
    assert url == farm.api_url(0)
    assert token == farm.token
    async with ApiClient(url, token) as client:
        assert (await client.farm())["farm"] == farm.farm


async def test_api_client_submit_and_follow_events(api: ApiClient) -> None:
    events: list[tuple[str, Any]] = []
    async with contextlib.aclosing(api.events()) as stream:
        first = await anext(stream)
        assert first[0] == "hello"
        created = (await api.submit(sleep_job(3, 0.2, name=TRICKY_NAME)))["job"]
        job_id = created["id"]
        assert created["name"] == TRICKY_NAME
        async with asyncio.timeout(30):
            async for event, data in stream:
                events.append((event, data))
                if event == "job" and data["id"] == job_id and is_done(data):
                    break
    job_events = [d for e, d in events if e == "job" and d["id"] == job_id]
    assert job_events, events
    assert job_events[-1]["name"] == TRICKY_NAME
    assert job_events[-1]["task_counts"]["completed"] == 3
    tasks = {d["id"] for e, d in events if e == "task" and d["job_id"] == job_id}
    assert len(tasks) == 3
    logged = [
        line["line"]
        for e, d in events
        if e == "log" and d["job_id"] == job_id
        for line in d["lines"]
    ]
    assert any(line.startswith("sleeping 0.2 s") for line in logged), logged
    page = await api.jobs(q="plan 3 \u2028")
    assert job_id in [j["id"] for j in page["jobs"]]


async def test_api_client_events_narrow_to_job(api: ApiClient) -> None:
    other = (await api.submit(sleep_job(1, 0.0, name="other")))["job"]["id"]
    mine = (await api.submit(sleep_job(1, 0.3, name="mine")))["job"]["id"]
    seen: list[tuple[str, Any]] = []
    async with contextlib.aclosing(api.events(job_id=mine)) as stream:
        async with asyncio.timeout(30):
            async for event, data in stream:
                seen.append((event, data))
                # Events before the stream opened are missed: read the job then.
                if event == "hello" and is_done(await api.job(mine)):
                    break
                if event == "job" and data["id"] == mine and is_done(data):
                    break
    foreign = [
        d for e, d in seen if e in ("task", "log") and d.get("job_id") not in (mine,)
    ]
    assert not foreign, foreign
    assert (await api.job(other))["status"] in ("active", "queued", "completed")


async def test_api_client_jobs_filters_and_pages(api: ApiClient) -> None:
    ids = []
    for number in range(3):
        job = sleep_job(1, 0.0, name=f"pager {number}")
        ids.append((await api.submit(job))["job"]["id"])
    for job_id in ids:
        await wait_for(api, job_id, {"completed"})
    page = await api.jobs(q="pager", limit=2)
    assert page["total"] == 3
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2]
    rest = await api.jobs(q="pager", limit=2, offset=2)
    assert [j["id"] for j in rest["jobs"]] == ids[:1]
    done = await api.jobs(status=["completed", "failed"], q="pager")
    assert done["total"] == 3
    none = await api.jobs(status="paused", q="pager")
    assert none["jobs"] == []
    tasks = await api.tasks(ids[0])
    assert [t["index"] for t in tasks["tasks"]] == [0]
    with pytest.raises(ApiError) as caught:
        await api.jobs(status="nope")
    assert caught.value.status == 400
    assert "nope" in caught.value.message


# Changes and their conflicts ------------------------------------------------


async def test_api_client_pause_resume_cancel(api: ApiClient) -> None:
    job_id = (await api.submit(sleep_job(2, 30.0)))["job"]["id"]
    try:
        await wait_active(api, job_id)
        paused = (await api.pause(job_id))["job"]
        assert paused["status"] in ("pause-requested", "paused")
        await wait_for(api, job_id, {"paused"})
        resumed = (await api.resume(job_id))["job"]
        assert resumed["status"] in ("queued", "active")
        with pytest.raises(ApiError) as caught:
            await api.resume(job_id)
        assert caught.value.status == 409
        assert caught.value.code == "conflict"
        assert "only a paused job can be resumed" in caught.value.message
        assert (await api.priority(job_id, 80))["job"]["priority"] == 80
        with pytest.raises(ApiError) as caught:
            await api.priority(job_id, 101)
        assert caught.value.status == 400
        assert caught.value.field == "priority"
    finally:
        await api.cancel(job_id)
    canceled = await wait_for(api, job_id, {"canceled"})
    assert canceled["task_counts"]["canceled"] == 2
    with pytest.raises(ApiError) as caught:
        await api.pause(job_id)
    assert caught.value.status == 409
    assert "canceled" in caught.value.message


async def test_api_client_requeue_and_delete(api: ApiClient) -> None:
    job = sleep_job(3, 0.1, fail_tasks=[1])
    job_id = (await api.submit(job))["job"]["id"]
    failed = await wait_for(api, job_id, {"failed"})
    assert failed["task_counts"]["failed"] == 1
    tasks = (await api.tasks(job_id, status="failed"))["tasks"]
    assert [t["index"] for t in tasks] == [1]
    again = (await api.requeue(job_id, "failed"))["job"]
    assert again["status"] in ("queued", "active", "failed")
    await wait_for(api, job_id, {"failed"})
    with pytest.raises(ApiError) as caught:
        await api.requeue(job_id, "some")
    assert caught.value.status == 400
    assert caught.value.field == "scope"
    reply = await api.requeue_task(tasks[0]["id"])
    assert reply["task"]["id"] == tasks[0]["id"]
    assert reply["job"]["id"] == job_id
    await wait_for(api, job_id, {"failed"})
    assert (await api.delete(job_id)) == {"deleted": job_id}
    with pytest.raises(ApiError) as caught:
        await api.job(job_id)
    assert caught.value.status == 404
    assert caught.value.code == "not_found"
    assert caught.value.field == "job_id"


async def test_api_client_requeue_active_task_conflicts(api: ApiClient) -> None:
    job_id = (await api.submit(sleep_job(1, 30.0)))["job"]["id"]
    try:
        await wait_active(api, job_id)
        task = (await api.tasks(job_id))["tasks"][0]
        with pytest.raises(ApiError) as caught:
            await api.requeue_task(task["id"])
        assert caught.value.status == 409
        assert "is active" in caught.value.message
        with pytest.raises(ApiError) as caught:
            await api.delete(job_id)
        assert caught.value.status == 409
        assert "cancel it first" in caught.value.message
    finally:
        await api.cancel(job_id)


async def test_api_client_wrong_token_is_unauthorized(farm: LocalFarm) -> None:
    async with ApiClient(farm.api_url(0), "not-the-token") as wrong:
        assert (await wrong.farm())["farm"] == farm.farm
        with pytest.raises(ApiError) as caught:
            await wrong.submit(sleep_job(1, 0.0))
        assert caught.value.status == 401
        assert caught.value.code == "unauthorized"
    async with ApiClient(farm.api_url(0)) as anonymous:
        with pytest.raises(ApiError) as caught:
            await anonymous.missing_blobs([])
        assert caught.value.status == 401


# Logs -----------------------------------------------------------------------


async def test_api_client_task_log_tail_and_after(api: ApiClient) -> None:
    job_id = (await api.submit(sleep_job(1, 0.1)))["job"]["id"]
    await wait_for(api, job_id, {"completed"})
    task = (await api.tasks(job_id))["tasks"][0]
    everything = await api.task_log(task["id"], after=0)
    texts = [line["line"] for line in everything["lines"]]
    assert texts[0].startswith("sleeping 0.1 s on ")
    assert texts[-1] == "slept 0.1 s"
    assert everything["last_id"] == everything["lines"][-1]["id"]
    tail = await api.task_log(task["id"], tail=1)
    assert [line["line"] for line in tail["lines"]] == ["slept 0.1 s"]
    rest = await api.task_log(task["id"], after=everything["last_id"])
    assert rest == {"lines": [], "last_id": everything["last_id"]}
    first = await api.task_log(task["id"], after=0, limit=1)
    assert [line["line"] for line in first["lines"]] == texts[:1]
    text = await api.task_log_text(task["id"])
    assert text == "".join(line + "\n" for line in texts)
    detail = await api.task(task["id"])
    assert detail["task"]["status"] == "completed"
    assert len(detail["attempts"]) == 1


# Blobs ----------------------------------------------------------------------


async def test_api_client_upload_blend_sends_missing_only(
    api: ApiClient, farm: LocalFarm, tmp_path: Path
) -> None:
    blend = tmp_path / "shot \u00e9.blend"
    content = b"BLENDER-v300" + os.urandom(3 * 1024 * 1024 + 17)
    blend.write_bytes(content)
    sha256 = hashlib.sha256(content).hexdigest()
    assert (await api.missing_blobs([sha256]))["missing"] == [sha256]
    uploaded = await api.upload_blend(blend)
    assert uploaded == {"sha256": sha256, "size": len(content), "name": blend.name}
    assert (await api.missing_blobs([sha256]))["missing"] == []
    assert await api.upload_blend(blend) == uploaded
    log = farm.nodes[1].log_text()
    assert log.count(f"blob {sha256} ({len(content)} bytes) uploaded") == 1


async def test_api_client_put_blob_checks_hash(api: ApiClient, tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(1000))
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ApiError) as caught:
        await api.put_blob(path, wrong)
    assert caught.value.status == 400
    assert caught.value.field == "body"
    assert (await api.missing_blobs([wrong]))["missing"] == [wrong]
    stored = await api.put_blob(path)
    assert stored == {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "size": 1000,
    }


# Failures without a farm ----------------------------------------------------


async def test_api_client_refused_names_url_and_fix() -> None:
    url = "http://127.0.0.1:9"
    async with ApiClient(url) as client:
        with pytest.raises(NodeUnreachable) as caught:
            await client.farm()
    message = str(caught.value)
    assert url in message
    assert "connection refused" in message
    assert "flamenco-p2p run" in message
    assert "--node" in message
    assert caught.value.status == 0


@contextlib.asynccontextmanager
async def fake_node(routes: list[web.RouteDef]) -> AsyncIterator[str]:
    """Serve routes on a free loopback port; yields the base URL."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_api_client_https_to_plain_node_says_so() -> None:
    async def farm(request: web.Request) -> web.Response:
        return web.json_response({"farm": "f"})

    async with fake_node([web.get("/api/farm", farm)]) as url:
        https = url.replace("http://", "https://")
        async with ApiClient(https) as client:
            with pytest.raises(NodeUnreachable) as caught:
                await client.farm()
    message = str(caught.value)
    assert "TLS handshake" in message
    assert https in message
    assert "http://" in message
    assert "operation not permitted" not in message


async def test_api_client_error_without_json_body() -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=502, text="Bad Gateway from a proxy")

    async with (
        fake_node([web.get("/api/farm", broken)]) as url,
        ApiClient(url) as client,
    ):
        with pytest.raises(ApiError) as caught:
            await client.farm()
    assert caught.value.status == 502
    assert caught.value.code == "http_error"
    assert "Bad Gateway from a proxy" in caught.value.message


async def test_api_client_times_out_slow_node() -> None:
    release = asyncio.Event()

    async def stuck(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    async with fake_node([web.get("/api/farm", stuck)]) as url:
        async with ApiClient(url, timeout=0.5) as client:
            started = time.monotonic()
            with pytest.raises(NodeUnreachable) as caught:
                await client.farm()
        release.set()
    assert time.monotonic() - started < 5
    assert caught.value.code == "timed_out"
    assert "0.5 s" in str(caught.value)


async def test_api_client_events_split_across_chunks() -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        name = TRICKY_NAME.encode()
        pieces = [
            b": ping\r\n\r\nevent: hello\r\ndata: {}\r",
            b'\n\r\nevent: job\ndata: {"name": "' + name[:3],
            name[3:] + b'"}\n\nevent: log\rdata: [1,\rdata: 2]\r\r',
        ]
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.05)
        return response

    async with (
        fake_node([web.get("/api/events", stream)]) as url,
        ApiClient(url) as client,
    ):
        events = [event async for event in client.events()]
    assert events == [("hello", {}), ("job", {"name": TRICKY_NAME}), ("log", [1, 2])]


# Event stream parser --------------------------------------------------------


def parse(chunks: list[bytes]) -> list[tuple[str, str]]:
    parser = EventStreamParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def test_event_parser_line_endings() -> None:
    for end in (b"\n", b"\r\n", b"\r"):
        text = b"event: job" + end + b"data: {}" + end + end
        assert parse([text]) == [("job", "{}")]


def test_event_parser_cr_lf_split_between_chunks() -> None:
    assert parse([b"event: a\r", b"\ndata: 1\r", b"\n\r", b"\n"]) == [("a", "1")]


def test_event_parser_comments_and_defaults() -> None:
    events = parse([b": keep-alive\n\ndata: x\n\nevent: lonely\n\n"])
    assert events == [("message", "x")]


def test_event_parser_joins_data_lines() -> None:
    assert parse([b"data: a\ndata:b\ndata:  c\n\n"]) == [("message", "a\nb\n c")]


def test_event_parser_keeps_unicode_line_separators() -> None:
    data = '{"name": "a\u2028b\x85c\u2029d"}'.encode()
    events = parse([b"event: job\ndata: " + data[:8], data[8:] + b"\n\n"])
    assert events == [("job", data.decode())]


def test_event_parser_rejects_oversized_event() -> None:
    parser = EventStreamParser(max_event_bytes=100)
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        list(parser.feed(b"data: " + b"x" * 200))
    parser = EventStreamParser(max_event_bytes=100)
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        for _ in range(20):
            list(parser.feed(b"data: " + b"x" * 10 + b"\n"))
