"""An asyncio client of the HTTP API that every node serves (docs/http-api.md).

The CLI uses it, and so can the Blender add-on, a console or a script::

    async with ApiClient("http://127.0.0.1:8888", token) as api:
        job = (await api.submit(job_map))["job"]

Each method returns the JSON document of its route unchanged, so a caller sees
what the API documents. A failed request raises ApiError with the status, code,
message and field of the error body. NodeUnreachable, a subclass, means that no
reply came at all: nothing listens at the address, or the node timed out.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import AsyncGenerator, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import quote

import aiohttp

from flamenco_p2p.config import NodeConfig
from flamenco_p2p.errors import FarmError
from flamenco_p2p.farmkey import load_farm_key

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
"""Seconds to open a connection; a node on the LAN connects well within that."""

REQUEST_TIMEOUT = 45.0
"""Seconds for a whole read or change. A node waits up to 15 s for an election
and 15 s for the server's reply before it returns 503 itself."""

SUBMIT_TIMEOUT = 180.0
"""Seconds for a submission: the server may take 120 s to compile and store a
job of a million frames, after up to 15 s waiting for an election."""

UPLOAD_READ_TIMEOUT = 120.0
"""Seconds an upload may go without progress before it is abandoned."""

EVENT_READ_TIMEOUT = 45.0
"""Seconds an event stream may stay silent; the node sends a comment every 15 s."""

HASH_CHUNK = 1024 * 1024
MAX_EVENT_BYTES = 16 * 1024 * 1024
"""Largest event accepted from a stream, so a broken server cannot fill memory."""

ERROR_TEXT_LIMIT = 300


class ApiError(FarmError):
    """An error reply of the API: HTTP status, error code, message and field.

    ``status`` is 0 for a request that got no reply (see NodeUnreachable).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        url: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.url = url


class NodeUnreachable(ApiError):
    """No reply: the connection was refused or broke, or the request timed out."""

    def __init__(self, code: str, message: str, url: str) -> None:
        super().__init__(0, code, message, None, url)


def local_api(config: NodeConfig) -> tuple[str, str]:
    """Return the base URL and the farm token of the node that runs with config.

    Raises ConfigError, with the fix, when the data directory has no farm key.
    """
    token = load_farm_key(config.data_dir).api_token
    return f"http://{_url_host(config.bind_address)}:{config.http_port}", token


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class ApiClient:
    """A session with one node's HTTP API; use as ``async with ApiClient(...)``.

    ``token`` is the farm token. Reads work without it, and every change sends it
    as ``Authorization: Bearer TOKEN``. ``timeout`` bounds each request in seconds
    (submissions and uploads have longer bounds of their own).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = REQUEST_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout(total=self.timeout),
            headers={"Accept": "application/json"},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session's connections; idempotent."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # Farm and nodes --------------------------------------------------------

    async def farm(self) -> dict[str, Any]:
        """Return the farm: name, id, server, managers, sites and counts."""
        return await self._json("GET", "/api/farm")

    async def nodes(self) -> dict[str, Any]:
        """Return ``{"nodes": [...]}``: members, roles, health and workers."""
        return await self._json("GET", "/api/nodes")

    # Jobs ------------------------------------------------------------------

    async def jobs(
        self,
        status: str | Iterable[str] | None = None,
        limit: int = 50,
        offset: int = 0,
        q: str | None = None,
    ) -> dict[str, Any]:
        """Return one page of jobs, newest first: ``{"jobs", "total", ...}``.

        ``status`` keeps jobs in any of the given statuses, ``q`` jobs whose name
        contains the text.
        """
        params: list[tuple[str, str]] = [("limit", str(limit)), ("offset", str(offset))]
        params += [("status", value) for value in _values(status)]
        if q:
            params.append(("q", q))
        return await self._json("GET", "/api/jobs", params=params)

    async def job(self, job_id: str) -> dict[str, Any]:
        """Return one job."""
        return await self._json("GET", f"/api/jobs/{_segment(job_id)}")

    async def submit(self, job: dict[str, Any]) -> dict[str, Any]:
        """Submit a job map (name, job_type, priority, settings, requirements).

        Returns ``{"job": JOB}``. A blender-render job must name a blend file that
        the node holds: see upload_blend.
        """
        return await self._json(
            "POST", "/api/jobs", body=job, timeout=self._timeout(total=SUBMIT_TIMEOUT)
        )

    async def pause(self, job_id: str) -> dict[str, Any]:
        """Stop handing out a job's tasks; returns ``{"job": JOB}``."""
        return await self._job_action(job_id, "pause")

    async def resume(self, job_id: str) -> dict[str, Any]:
        """Queue a paused job again; returns ``{"job": JOB}``."""
        return await self._job_action(job_id, "resume")

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Stop a job for good (a requeue can revive it); returns ``{"job": JOB}``."""
        return await self._job_action(job_id, "cancel")

    async def requeue(self, job_id: str, scope: str = "all") -> dict[str, Any]:
        """Run a job's tasks again: ``scope`` is "all" or "failed"."""
        return await self._job_action(job_id, "requeue", {"scope": scope})

    async def priority(self, job_id: str, priority: int) -> dict[str, Any]:
        """Set a job's priority, 0 to 100; returns ``{"job": JOB}``."""
        return await self._job_action(job_id, "priority", {"priority": priority})

    async def delete(self, job_id: str) -> dict[str, Any]:
        """Forget a completed, failed or canceled job; returns ``{"deleted": ID}``."""
        return await self._json("DELETE", f"/api/jobs/{_segment(job_id)}")

    async def _job_action(
        self, job_id: str, action: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return await self._json(
            "POST", f"/api/jobs/{_segment(job_id)}/{action}", body=body or {}
        )

    # Tasks -----------------------------------------------------------------

    async def tasks(
        self,
        job_id: str,
        limit: int = 200,
        offset: int = 0,
        status: str | Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """Return one page of a job's tasks in order: ``{"tasks", "total", ...}``."""
        params: list[tuple[str, str]] = [("limit", str(limit)), ("offset", str(offset))]
        params += [("status", value) for value in _values(status)]
        return await self._json(
            "GET", f"/api/jobs/{_segment(job_id)}/tasks", params=params
        )

    async def task(self, task_id: str) -> dict[str, Any]:
        """Return ``{"task": TASK, "attempts": [...]}``."""
        return await self._json("GET", f"/api/tasks/{_segment(task_id)}")

    async def requeue_task(self, task_id: str) -> dict[str, Any]:
        """Run one task again; returns ``{"task": TASK, "job": JOB}``."""
        return await self._json(
            "POST", f"/api/tasks/{_segment(task_id)}/requeue", body={}
        )

    async def task_log(
        self,
        task_id: str,
        *,
        tail: int | None = None,
        after: int | None = None,
        limit: int | None = None,
        attempt_id: str | None = None,
    ) -> dict[str, Any]:
        """Return log lines of a task: ``{"lines": [...], "last_id": N}``.

        With ``after``, up to ``limit`` lines after line id ``after``, oldest
        first; pass the reply's ``last_id`` as the next ``after`` to read on.
        Otherwise the last ``tail`` lines (the node's default is 200).
        """
        params: list[tuple[str, str]] = []
        if after is not None:
            params.append(("after", str(after)))
        if limit is not None:
            params.append(("limit", str(limit)))
        if tail is not None:
            params.append(("tail", str(tail)))
        if attempt_id is not None:
            params.append(("attempt_id", attempt_id))
        return await self._json(
            "GET", f"/api/tasks/{_segment(task_id)}/log", params=params
        )

    async def task_log_text(self, task_id: str, attempt_id: str | None = None) -> str:
        """Return a task's log as plain text, one line per log line."""
        params = [("attempt_id", attempt_id)] if attempt_id else []
        data = await self._request(
            "GET", f"/api/tasks/{_segment(task_id)}/log.txt", params=params
        )
        return data.decode("utf-8", errors="replace")

    # Frames ----------------------------------------------------------------

    async def job_thumbnail(self, job_id: str) -> bytes:
        """Return a job's last rendered frame as JPEG; ApiError 404 before any."""
        return await self._request("GET", f"/api/jobs/{_segment(job_id)}/thumbnail")

    async def farm_thumbnail(self) -> bytes:
        """Return the farm's last rendered frame as JPEG; ApiError 404 before any."""
        return await self._request("GET", "/api/farm/thumbnail")

    # Blobs -----------------------------------------------------------------

    async def missing_blobs(self, hashes: Iterable[str]) -> dict[str, Any]:
        """Return ``{"missing": [...]}``: the SHA-256 digests the node lacks."""
        return await self._json(
            "POST", "/api/blobs/missing", body={"hashes": list(hashes)}
        )

    async def put_blob(self, path: Path, sha256: str | None = None) -> dict[str, Any]:
        """Upload one file, streamed from disk; returns ``{"sha256", "size"}``.

        Without ``sha256``, the file is hashed first. The node checks the hash and
        rejects the upload with ApiError 400 when the bytes do not match.
        """
        digest = sha256 or (await asyncio.to_thread(hash_file, path))[0]
        handle: BinaryIO = await asyncio.to_thread(path.open, "rb")
        try:
            size = path.stat().st_size
            return await self._json(
                "PUT",
                f"/api/blobs/{_segment(digest)}",
                data=handle,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                },
                timeout=self._timeout(total=None, sock_read=UPLOAD_READ_TIMEOUT),
            )
        finally:
            await asyncio.to_thread(handle.close)

    async def upload_blend(self, path: Path) -> dict[str, Any]:
        """Put a blend file into the farm unless the node has it already.

        Returns ``{"sha256", "size", "name"}``, the values that a blender-render
        job's settings name it by (blend_sha256, blend_size, blend_name).
        """
        sha256, size = await asyncio.to_thread(hash_file, path)
        missing = (await self.missing_blobs([sha256]))["missing"]
        if sha256 in missing:
            logger.info("uploading %s (%d bytes, sha256 %s)", path, size, sha256)
            await self.put_blob(path, sha256)
        else:
            logger.info("the node already has %s (sha256 %s)", path, sha256)
        return {"sha256": sha256, "size": size, "name": path.name}

    # Events ----------------------------------------------------------------

    async def events(
        self, job_id: str | None = None
    ) -> AsyncGenerator[tuple[str, Any], None]:
        """Yield (event, data) from the node's server-sent event stream.

        ``data`` is the event's parsed JSON. The first event is always ``hello``.
        With ``job_id``, task and log events of other jobs are left out. The
        iteration ends when the node closes the stream, and raises
        NodeUnreachable when the connection breaks or stays silent for
        EVENT_READ_TIMEOUT seconds. Close the iterator (``aclose``) to stop early.
        """
        params = [("job_id", job_id)] if job_id else []
        url = self.base_url + "/api/events"
        timeout = self._timeout(total=None, sock_read=EVENT_READ_TIMEOUT)
        try:
            async with self._open(
                "GET",
                "/api/events",
                params=params,
                headers={"Accept": "text/event-stream"},
                timeout=timeout,
            ) as response:
                await self._check(response)
                parser = EventStreamParser()
                async for chunk in response.content.iter_any():
                    for event, text in parser.feed(chunk):
                        yield event, _parse_event_data(event, text, url)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(exc, "GET", url, timeout) from exc
        except ValueError as exc:
            raise ApiError(200, "invalid_response", f"{url}: {exc}", url=url) from exc

    # Requests --------------------------------------------------------------

    def _timeout(
        self, total: float | None, sock_read: float | None = None
    ) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=total, sock_connect=self.connect_timeout, sock_read=sock_read
        )

    def _open(
        self,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str]] | None = None,
        body: dict[str, Any] | None = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> Any:
        if self._session is None:
            raise RuntimeError("use ApiClient as an async context manager")
        all_headers = dict(headers or {})
        if method not in ("GET", "HEAD") and self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            all_headers["Content-Type"] = "application/json; charset=utf-8"
        return self._session.request(
            method,
            self.base_url + path,
            params=params or None,
            data=data,
            headers=all_headers,
            timeout=timeout or self._timeout(total=self.timeout),
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str]] | None = None,
        body: dict[str, Any] | None = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> bytes:
        """Send one request and return the body of its 2xx reply."""
        url = self.base_url + path
        try:
            async with self._open(
                method,
                path,
                params=params,
                body=body,
                data=data,
                headers=headers,
                timeout=timeout,
            ) as response:
                await self._check(response)
                content: bytes = await response.read()
                return content
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(exc, method, url, timeout) from exc

    async def _json(
        self,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str]] | None = None,
        body: dict[str, Any] | None = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> dict[str, Any]:
        content = await self._request(
            method,
            path,
            params=params,
            body=body,
            data=data,
            headers=headers,
            timeout=timeout,
        )
        url = self.base_url + path
        try:
            document = json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ApiError(
                200,
                "invalid_response",
                f"{method} {url} returned a body that is not JSON: {exc}",
                url=url,
            ) from exc
        if not isinstance(document, dict):
            raise ApiError(
                200,
                "invalid_response",
                f"{method} {url} returned JSON that is not an object",
                url=url,
            )
        return document

    async def _check(self, response: aiohttp.ClientResponse) -> None:
        """Raise ApiError for a reply that is not 2xx, from its error body."""
        if response.status < 400:
            return
        url = str(response.url)
        text = (await response.read()).decode("utf-8", errors="replace")
        try:
            error = json.loads(text)["error"]
            code, message = str(error["code"]), str(error["message"])
            field = error.get("field")
        except (ValueError, KeyError, TypeError):
            # Not the API's error body: a proxy's page or another server on the port.
            raise ApiError(
                response.status,
                "http_error",
                f"{response.method} {url} returned HTTP {response.status}"
                f" {response.reason or ''}: {text[:ERROR_TEXT_LIMIT].strip()}".strip(),
                url=url,
            ) from None
        raise ApiError(
            response.status,
            code,
            message,
            field if isinstance(field, str) else None,
            url,
        )

    def _unreachable(
        self,
        exc: aiohttp.ClientError | TimeoutError,
        method: str,
        url: str,
        timeout: aiohttp.ClientTimeout | None,
    ) -> NodeUnreachable:
        """Return the error for a request that got no reply, with the fix."""
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return NodeUnreachable(
                "timed_out",
                f"connecting to {self.base_url} timed out after"
                f" {self.connect_timeout:g} s; check the address and that the node"
                " is running (`flamenco-p2p run`)",
                url,
            )
        if isinstance(exc, aiohttp.ClientSSLError):
            # An SSL error carries the library's error number, which
            # os.strerror would misread as an errno.
            return NodeUnreachable(
                "unreachable",
                f"the TLS handshake with {self.base_url} failed"
                f" ({exc.os_error}); nodes serve plain HTTP, so use an http://"
                " address unless a TLS proxy stands in front of the node",
                url,
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            number = exc.os_error.errno
            reason = os.strerror(number) if number else str(exc.os_error) or str(exc)
            return NodeUnreachable(
                "unreachable",
                f"no node is answering at {self.base_url} ({reason.lower()}); start"
                " one with `flamenco-p2p run` or pass --node with the address of a"
                " running node",
                url,
            )
        if isinstance(exc, TimeoutError):
            # The read timeout of streams and uploads, else the total timeout.
            limit = self.timeout
            if timeout is not None:
                limit = timeout.total or timeout.sock_read or self.timeout
            return NodeUnreachable(
                "timed_out",
                f"{method} {url} got no reply within {limit:g} s; check that the"
                " node is running and that the farm has a server"
                " (`flamenco-p2p status`)",
                url,
            )
        return NodeUnreachable(
            "unreachable",
            f"{method} {url} failed: {exc or type(exc).__name__}; check that the node"
            " is still running",
            url,
        )


def hash_file(path: Path) -> tuple[str, int]:
    """Return the SHA-256 hex digest and the size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class EventStreamParser:
    """Split a server-sent event stream into (event, data) pairs.

    Follows the HTML standard's event stream format: lines end with CR LF, LF or
    CR, a line starting with a colon is a comment, ``data`` lines are joined with
    LF, and a blank line ends an event. Only CR and LF end a line, so JSON text
    that contains U+2028 or U+0085 stays whole. Feed it bytes as they arrive.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self._skip_lf = False

    def feed(self, chunk: bytes) -> Iterator[tuple[str, str]]:
        """Consume bytes and yield every event that they complete."""
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = False
        self._buffer += chunk
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                break
            line, end = self._buffer[:cut], self._buffer[cut : cut + 2]
            if end == b"\r\n":
                self._buffer = self._buffer[cut + 2 :]
            else:
                self._buffer = self._buffer[cut + 1 :]
                # A CR at the end of the chunk may be the first half of CR LF.
                self._skip_lf = end == b"\r" and not self._buffer
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                yield event
        if len(self._buffer) + self._size > self.max_event_bytes:
            raise ValueError(
                f"an event of the stream is longer than {self.max_event_bytes} bytes"
            )

    def _line(self, line: str) -> tuple[str, str] | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = (self._event or "message", "\n".join(self._data))
            self._event, self._data, self._size = "", [], 0
            return event
        if line.startswith(":"):
            return None
        name, _colon, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._size += len(value)
            if self._size > self.max_event_bytes:
                raise ValueError(
                    f"an event of the stream is longer than {self.max_event_bytes}"
                    " bytes"
                )
        return None


def _line_end(buffer: bytes) -> int | None:
    """Return the index of the first CR or LF, or None."""
    positions = [i for i in (buffer.find(b"\r"), buffer.find(b"\n")) if i >= 0]
    return min(positions) if positions else None


def _parse_event_data(event: str, text: str, url: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ApiError(
            200,
            "invalid_response",
            f"event {event!r} from {url} carries data that is not JSON: {exc}",
            url=url,
        ) from exc


def _values(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def _segment(value: str) -> str:
    """Quote an id for use as one path segment."""
    return quote(value, safe="")
