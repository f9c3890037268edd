"""The HTTP API and the dashboard that every node serves (docs/http-api.md).

A node answers from its own view what it knows (members, roles) and forwards
the rest to the farm's server over the server port. Reads are open; every
change needs the farm token. Errors are JSON with a code, a message and the
field at fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp_sse import sse_response

from flamenco_p2p.api.events import EventHub
from flamenco_p2p.api.views import job_out, task_out
from flamenco_p2p.dashboard import STATIC_DIR
from flamenco_p2p.errors import (
    ConfigError,
    FarmError,
    FarmUnavailable,
    NotFound,
    StateError,
)
from flamenco_p2p.farmkey import check_token
from flamenco_p2p.node_client import utc_timestamps
from flamenco_p2p.transport import DealerLink, RemoteError

if TYPE_CHECKING:
    from flamenco_p2p.node import Node

logger = logging.getLogger(__name__)

MAX_JSON_BYTES = 1024 * 1024
MAX_BLOB_BYTES = 4 * 1024**3
BLOB_CHUNK = 1024 * 1024
MAX_HASHES = 1000
FORWARD_TIMEOUT = 15.0
# An election takes a few seconds; a request waits that long for a new server.
ELECTION_WAIT = 5.0
SUMMARY_TIMEOUT = 2.0
PEER_TIMEOUT = 10.0
SSE_PING = 15.0
HELLO_WAIT = 5.0
STATUS_OF_CODE = {
    "invalid": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "busy": 503,
    "unavailable": 503,
}
JOB_ACTIONS = ("pause", "resume", "cancel", "requeue", "priority")
ID_PATTERN = re.compile(r"[0-9a-f]{32}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
JOB_KEYS = frozenset({"name", "job_type", "priority", "settings", "requirements"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answer: HTTP status, code, message and the field at fault."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.field = field


def error_response(
    status: int, code: str, message: str, field: str | None = None
) -> web.Response:
    """Return the JSON error body that every failure of the API uses."""
    body = {"error": {"code": code, "message": message, "field": field}}
    return web.json_response(body, status=status, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _json(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=_dumps)


class FarmApi:
    """The aiohttp application of one node, with its event hub."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.token = node.farm_key.api_token
        self.events = EventHub(
            self._forward_call, self.nodes_view, self._membership_fingerprint
        )
        self.app = self.build_app()
        self.runner: web.AppRunner | None = None

    def build_app(self) -> web.Application:
        """Return the application with every route of the API and the dashboard."""
        app = web.Application(
            client_max_size=MAX_JSON_BYTES,
            middlewares=[self._errors, self._authorize],
        )
        get, post = web.get, web.post
        app.add_routes(
            [
                get("/", self._index),
                get("/api/openapi.json", self._openapi),
                get("/api/farm", self._farm),
                get("/api/farm/thumbnail", self._farm_thumbnail),
                get("/api/nodes", self._nodes),
                get("/api/jobs", self._jobs),
                post("/api/jobs", self._submit),
                get("/api/jobs/{job_id}", self._job),
                web.delete("/api/jobs/{job_id}", self._delete_job),
                *(
                    post("/api/jobs/{job_id}/" + a, self._job_action)
                    for a in JOB_ACTIONS
                ),
                get("/api/jobs/{job_id}/tasks", self._tasks),
                get("/api/jobs/{job_id}/thumbnail", self._job_thumbnail),
                get("/api/tasks/{task_id}", self._task),
                post("/api/tasks/{task_id}/requeue", self._requeue_task),
                get("/api/tasks/{task_id}/log", self._task_log),
                get("/api/tasks/{task_id}/log.txt", self._task_log_text),
                post("/api/blobs/missing", self._missing_blobs),
                web.put("/api/blobs/{sha256}", self._put_blob),
                get("/api/events", self._event_stream),
                web.static("/static", STATIC_DIR),
            ]
        )
        return app

    async def start(self, address: str, port: int) -> None:
        """Listen on address:port and start following the server's events."""
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, address, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            self.runner = None
            raise ConfigError(
                f"cannot serve the HTTP API on {address}:{port}: {exc.strerror};"
                " stop what uses that port or set another with ports.http"
            ) from exc
        self.events.start()
        logger.info("HTTP API and dashboard on http://%s:%d/", address, port)

    async def close(self) -> None:
        """Stop serving; idempotent."""
        await self.events.close()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
            logger.info("HTTP API stopped")

    # Middlewares -----------------------------------------------------------

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not_found", 413: "too_large"}.get(exc.status, "invalid")
            message = {
                404: f"nothing at {request.path}; /api/openapi.json lists the routes",
                405: f"{request.path} does not take {request.method}",
            }.get(exc.status, exc.reason)
            return error_response(exc.status, code, message)
        except (ApiError, RemoteError, FarmError, ValueError) as exc:
            status, code, field = _error_of(exc)
            if status >= 500:
                logger.error("%s %s failed: %s", request.method, request.path, exc)
            return error_response(status, code, str(exc), field)
        except Exception as exc:  # a bug in a handler must still answer in JSON
            logger.exception("%s %s failed", request.method, request.path)
            return error_response(500, "internal", f"the node failed: {exc}")

    @web.middleware
    async def _authorize(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not check_token(given.strip(), self.token):
                logger.warning(
                    "refused %s %s from %s: %s farm token",
                    request.method,
                    request.path,
                    request.remote,
                    "wrong" if given else "no",
                )
                problem = (
                    "the token given is not this farm's"
                    if given
                    else "this change needs the farm token"
                )
                raise ApiError(
                    401,
                    "unauthorized",
                    f"{problem}; send it as 'Authorization: Bearer TOKEN'."
                    " `flamenco-p2p token` prints it",
                )
        return await handler(request)

    # Helpers ---------------------------------------------------------------

    async def _forward_call(self, op: str, body: dict[str, Any], **kwargs: Any) -> Any:
        return await self.node.client.call_server(op, body, **kwargs)

    async def _forward(self, op: str, body: dict[str, Any]) -> Any:
        result = await self.node.client.call_server(
            op, body, timeout=FORWARD_TIMEOUT, wait_for_server=ELECTION_WAIT
        )
        return utc_timestamps(result)

    async def _job_view(self, job_id: str) -> dict[str, Any]:
        reply = await self._forward(
            "task_page", {"job_id": job_id, "limit": 1, "offset": 0, "statuses": []}
        )
        job: dict[str, Any] = reply["job"]
        return job_out(job)

    def _membership_fingerprint(self) -> str:
        view = self.node.describe()
        members = [
            (n["node_id"], n["state"], [r["role"] for r in n["roles"]])
            for n in view["nodes"]
        ]
        return json.dumps(members, sort_keys=True)

    # Farm and nodes --------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def _openapi(self, request: web.Request) -> web.StreamResponse:
        text = (
            resources.files("flamenco_p2p.api")
            .joinpath("openapi.json")
            .read_text(encoding="utf-8")
        )
        return web.Response(text=text, content_type="application/json")

    async def _summary(self) -> dict[str, Any] | None:
        try:
            # Short waits: these views are how people find out that the farm
            # has no server.
            summary: dict[str, Any] = await self.node.client.call_server(
                "farm_summary", {}, timeout=SUMMARY_TIMEOUT, wait_for_server=1.0
            )
        except RemoteError as exc:
            logger.debug("farm summary: %s", exc)
            return None
        return summary

    async def _farm(self, request: web.Request) -> web.StreamResponse:
        view = self.node.describe()
        summary = await self._summary()
        roles = view["roles"]
        server = roles.get("server")
        managers = [
            {"site": role.removeprefix("manager:"), **_holder(holder)}
            for role, holder in sorted(roles.items())
            if role.startswith("manager:") and holder is not None
        ]
        states: dict[str, int] = {}
        for member in view["nodes"]:
            states[member["state"]] = states.get(member["state"], 0) + 1
        counts = summary["counts"] if summary else None
        return _json(
            {
                "farm": view["farm"],
                "farm_id": view["farm_id"],
                "node_id": view["node_id"],
                "server": _holder(server) if server else None,
                "managers": managers,
                "sites": sorted({n["site"] for n in view["nodes"]}),
                "counts": {
                    "nodes": states,
                    "jobs": counts["jobs"] if counts else {},
                    "tasks": counts["tasks"] if counts else {},
                    "workers": counts["workers"] if counts else {},
                },
                "last_frame": utc_timestamps(counts["last_frame"]) if counts else None,
                "server_reachable": summary is not None,
            }
        )

    async def nodes_view(self) -> dict[str, Any]:
        """Return the members with their roles, health and workers."""
        view = self.node.describe()
        summary = await self._summary()
        workers = utc_timestamps(summary["workers"]) if summary else []
        now = time.time()
        monotonic = self.node.clock()
        nodes = []
        for member in view["nodes"]:
            record = self.node.membership.peers.get(member["node_id"])
            heard = now - (monotonic - record.last_heard) if record else now
            nodes.append(
                {
                    "node_id": member["node_id"],
                    "site": member["site"],
                    "address": member["address"],
                    "state": member["state"],
                    "roles": member["roles"],
                    "capabilities": member["capabilities"],
                    "worker_slots": member["worker_slots"],
                    "this_node": member["this_node"],
                    "last_seen": utc_timestamps({"last_seen": heard})["last_seen"],
                    "workers": [
                        {
                            "worker_id": w["worker_id"],
                            "status": w["status"],
                            "current_task": _current_task(w["current_task"]),
                        }
                        for w in workers
                        if w["node_id"] == member["node_id"]
                    ],
                }
            )
        return {"nodes": nodes}

    async def _nodes(self, request: web.Request) -> web.StreamResponse:
        return _json(await self.nodes_view())

    # Jobs ------------------------------------------------------------------

    async def _jobs(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        limit = _int_param(query, "limit", 50, 1, 1000)
        offset = _int_param(query, "offset", 0, 0, 2**53)
        statuses = query.getall("status", [])
        if len(statuses) > 16:
            raise ApiError(400, "invalid", "give at most 16 status values", "status")
        text = query.get("q", "")
        if len(text) > 200:
            raise ApiError(400, "invalid", "q is longer than 200 characters", "q")
        reply = await self._forward(
            "job_page",
            {"limit": limit, "offset": offset, "statuses": statuses, "query": text},
        )
        return _json(
            {
                "jobs": [job_out(job) for job in reply["jobs"]],
                "total": reply["total"],
                "limit": limit,
                "offset": offset,
            }
        )

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        unknown = sorted(set(body) - JOB_KEYS)
        if unknown:
            raise ApiError(
                400,
                "invalid",
                f"unknown field {unknown[0]!r}; a job has "
                + ", ".join(sorted(JOB_KEYS)),
                unknown[0],
            )
        try:
            job_id = await self.node.client.submit(body)
        except KeyError as exc:
            raise ApiError(400, "invalid", f"missing field {exc.args[0]!r}") from exc
        except TypeError as exc:
            raise ApiError(
                400, "invalid", f"a job field has the wrong type: {exc}"
            ) from exc
        logger.info("job %s submitted over HTTP from %s", job_id, request.remote)
        return _json({"job": await self._job_view(job_id)}, status=201)

    async def _job(self, request: web.Request) -> web.StreamResponse:
        return _json(await self._job_view(_item_id(request, "job_id")))

    async def _delete_job(self, request: web.Request) -> web.StreamResponse:
        job_id = _item_id(request, "job_id")
        reply = await self._forward(
            "job_control", {"job_id": job_id, "action": "delete"}
        )
        self.node.client.thumbnails.path(job_id).unlink(missing_ok=True)
        return _json(reply)

    async def _job_action(self, request: web.Request) -> web.StreamResponse:
        job_id = _item_id(request, "job_id")
        action = request.path.rsplit("/", 1)[1]
        if action == "cancel":
            await self._forward("cancel_job", {"job_id": job_id})
            return _json({"job": await self._job_view(job_id)})
        body: dict[str, Any] = {"job_id": job_id, "action": action}
        if action == "requeue":
            data = await _json_body(request, optional=True)
            scope = data.get("scope", "all")
            if scope not in ("all", "failed"):
                raise ApiError(
                    400,
                    "invalid",
                    f"scope is {scope!r}; give 'all' or 'failed'",
                    "scope",
                )
            body["scope"] = scope
        elif action == "priority":
            data = await _json_body(request)
            priority = data.get("priority")
            if not isinstance(priority, int) or isinstance(priority, bool):
                raise ApiError(
                    400,
                    "invalid",
                    f"priority is {priority!r}; give an integer 0 to 100",
                    "priority",
                )
            if not 0 <= priority <= 100:
                raise ApiError(
                    400,
                    "invalid",
                    f"priority is {priority}; give an integer 0 to 100",
                    "priority",
                )
            body["priority"] = priority
        reply = await self._forward("job_control", body)
        return _json({"job": job_out(reply["job"])})

    # Tasks -----------------------------------------------------------------

    async def _tasks(self, request: web.Request) -> web.StreamResponse:
        job_id = _item_id(request, "job_id")
        limit = _int_param(request.query, "limit", 200, 1, 1000)
        offset = _int_param(request.query, "offset", 0, 0, 2**53)
        statuses = request.query.getall("status", [])
        if len(statuses) > 16:
            raise ApiError(400, "invalid", "give at most 16 status values", "status")
        reply = await self._forward(
            "task_page",
            {"job_id": job_id, "limit": limit, "offset": offset, "statuses": statuses},
        )
        return _json(
            {
                "tasks": [task_out(t) for t in reply["tasks"]],
                "total": reply["total"],
                "limit": limit,
                "offset": offset,
            }
        )

    async def _task(self, request: web.Request) -> web.StreamResponse:
        reply = await self._forward(
            "get_task", {"task_id": _item_id(request, "task_id")}
        )
        return _json({"task": task_out(reply["task"]), "attempts": reply["attempts"]})

    async def _requeue_task(self, request: web.Request) -> web.StreamResponse:
        reply = await self._forward(
            "requeue_task", {"task_id": _item_id(request, "task_id")}
        )
        return _json({"task": task_out(reply["task"]), "job": job_out(reply["job"])})

    async def _log_lines(
        self, request: web.Request, text: bool
    ) -> list[dict[str, Any]]:
        query = request.query
        attempt_id = query.get("attempt_id")
        if attempt_id is not None and not 1 <= len(attempt_id) <= 64:
            raise ApiError(400, "invalid", "attempt_id must be 1 to 64 characters")
        body: dict[str, Any] = {
            "task_id": _item_id(request, "task_id"),
            "attempt_id": attempt_id,
            "after": _int_param(query, "after", 0, 0, 2**53),
            "limit": _int_param(query, "limit", 10_000 if text else 1000, 1, 10_000),
            "tail": None,
        }
        if not text and "tail" in query:
            body["tail"] = _int_param(query, "tail", 200, 0, 10_000)
        elif not text and "after" not in query:
            body["tail"] = 200
        reply = await self._forward("task_log_lines", body)
        lines: list[dict[str, Any]] = reply["lines"]
        return lines

    async def _task_log(self, request: web.Request) -> web.StreamResponse:
        lines = await self._log_lines(request, text=False)
        last_id = (
            lines[-1]["id"]
            if lines
            else _int_param(request.query, "after", 0, 0, 2**53)
        )
        return _json({"lines": lines, "last_id": last_id})

    async def _task_log_text(self, request: web.Request) -> web.StreamResponse:
        lines = await self._log_lines(request, text=True)
        text = "".join(line["line"] + "\n" for line in lines)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    # Frames ----------------------------------------------------------------

    async def _thumbnail_of(self, job_id: str) -> bytes:
        job = await self._job_view(job_id)
        submitter = job["submitter_node"]
        if submitter == self.node.node_id:
            data = self.node.client.thumbnails.read(job_id)
        else:
            data = await self._peer_thumbnail(submitter, job_id)
        if data is None:
            raise ApiError(404, "not_found", f"job {job_id} has no rendered frame yet")
        return data

    async def _peer_thumbnail(self, node_id: str, job_id: str) -> bytes | None:
        info = self.node.membership.info(node_id)
        if info is None:
            raise ApiError(
                503,
                "unavailable",
                f"node {node_id}, which took job {job_id} and holds its frames, is"
                " not a member now",
            )
        link = DealerLink(
            self.node.ctx, self.node.node_id, info.node_endpoint, name="api->peer"
        )
        try:
            reply = await link.call(
                "client_thumbnail", {"job_id": job_id}, PEER_TIMEOUT
            )
        except RemoteError as exc:
            if exc.code == "not_found":
                return None
            raise
        finally:
            await link.close()
        data: bytes = reply["data"]
        return data

    async def _job_thumbnail(self, request: web.Request) -> web.StreamResponse:
        data = await self._thumbnail_of(_item_id(request, "job_id"))
        return web.Response(
            body=data, content_type="image/jpeg", headers={"Cache-Control": "no-store"}
        )

    async def _farm_thumbnail(self, request: web.Request) -> web.StreamResponse:
        summary = await self._summary()
        last = summary["counts"]["last_frame"] if summary else None
        if last is None:
            raise ApiError(404, "not_found", "the farm has rendered no frame yet")
        data = await self._thumbnail_of(last["job_id"])
        return web.Response(
            body=data, content_type="image/jpeg", headers={"Cache-Control": "no-store"}
        )

    # Blobs -----------------------------------------------------------------

    async def _missing_blobs(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        hashes = body.get("hashes")
        if not isinstance(hashes, list) or len(hashes) > MAX_HASHES:
            raise ApiError(
                400,
                "invalid",
                f"hashes must be a list of at most {MAX_HASHES} SHA-256 hex digests",
                "hashes",
            )
        for value in hashes:
            if not isinstance(value, str) or not SHA256_PATTERN.fullmatch(value):
                raise ApiError(
                    400,
                    "invalid",
                    f"{str(value)[:80]!r} is not a SHA-256 digest (64 lowercase hex"
                    " digits)",
                    "hashes",
                )
        missing = [h for h in dict.fromkeys(hashes) if not self.node.blobs.has(h)]
        return _json({"missing": missing})

    async def _put_blob(self, request: web.Request) -> web.StreamResponse:
        sha256 = request.match_info["sha256"]
        if not SHA256_PATTERN.fullmatch(sha256):
            raise ApiError(
                400, "invalid", f"{sha256[:80]!r} is not a SHA-256 digest", "sha256"
            )
        size = request.content_length
        if size is None:
            raise ApiError(400, "invalid", "give the blob's size as Content-Length")
        if size > MAX_BLOB_BYTES:
            raise ApiError(
                413, "too_large", f"a blob may have at most {MAX_BLOB_BYTES} bytes"
            )
        if self.node.blobs.has(sha256):
            return _json({"sha256": sha256, "size": self.node.blobs.size(sha256)}, 201)
        writer = self.node.blobs.begin(sha256, size)
        try:
            offset = 0
            while chunk := await request.content.read(BLOB_CHUNK):
                writer.write(offset, chunk)
                offset += len(chunk)
            writer.finish()
        except FarmError as exc:
            writer.abort()
            raise ApiError(400, "invalid", str(exc), "body") from exc
        except BaseException:
            writer.abort()
            raise
        logger.info("blob %s (%d bytes) uploaded from %s", sha256, size, request.remote)
        return _json({"sha256": sha256, "size": size}, 201)

    # Events ----------------------------------------------------------------

    async def _event_stream(self, request: web.Request) -> web.StreamResponse:
        job_id = request.query.get("job_id") or None
        if job_id is not None and not ID_PATTERN.fullmatch(job_id):
            raise ApiError(
                400, "invalid", f"job_id {job_id[:80]!r} is not a job id", "job_id"
            )
        subscriber = self.events.subscribe(job_id)
        try:
            async with sse_response(request, ping_interval=SSE_PING) as stream:
                # A client fetches what it shows after hello, so hello waits until
                # the feed has a starting point: no change falls between the two.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.events.ready.wait(), HELLO_WAIT)
                await stream.send(_dumps({"node_id": self.node.node_id}), event="hello")
                while stream.is_connected():
                    kind, data = await subscriber.queue.get()
                    if kind == "closing":
                        break
                    await stream.send(_dumps(data), event=kind)
        finally:
            self.events.unsubscribe(subscriber)
        return stream


def _error_of(exc: Exception) -> tuple[int, str, str | None]:
    """Return the HTTP status, code and field of an error."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.field
    if isinstance(exc, RemoteError):
        # An unknown code is a failure inside the server, not the client's fault.
        return STATUS_OF_CODE.get(exc.code, 502), exc.code, exc.field
    if isinstance(exc, NotFound):
        return 404, "not_found", None
    if isinstance(exc, FarmUnavailable):
        return 503, "unavailable", None
    if isinstance(exc, StateError):
        return 409, "conflict", None
    return 400, "invalid", None


def _current_task(work: dict[str, Any] | None) -> dict[str, Any] | None:
    if work is None:
        return None
    keys = ("job_id", "task_id", "name", "progress")
    return {key: work[key] for key in keys}


def _holder(holder: dict[str, Any]) -> dict[str, Any]:
    return {"node_id": holder["holder"], "epoch": holder["epoch"]}


def _item_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not 1 <= len(value) <= 64:
        raise ApiError(400, "invalid", f"{name} must be 1 to 64 characters", name)
    return value


def _int_param(query: Any, name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if (
        value is None
        or not low <= value <= high
        or not raw.strip().lstrip("-").isdigit()
    ):
        raise ApiError(
            400,
            "invalid",
            f"{name} is {raw[:40]!r}; give an integer {low} to {high}",
            name,
        )
    return value


async def _json_body(request: web.Request, optional: bool = False) -> dict[str, Any]:
    if optional and not request.can_read_body:
        return {}
    raw = await request.read()
    if optional and not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "invalid", f"the body is not JSON in UTF-8: {exc}") from exc
    except RecursionError as exc:
        raise ApiError(400, "invalid", "the body's JSON is nested too deeply") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "invalid", "the body must be a JSON object")
    return body
