"""A small client of a farm node's HTTP API, with the standard library only.

Blender's Python has no aiohttp, and the add-on must not need the farm's
packages, so this client uses urllib. Reads need no token; every change sends
the farm token as ``Authorization: Bearer TOKEN``. Errors come back as
FarmUnreachable (no response) or ApiError (a response with an error status).
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from .background import Cancelled

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
"""Seconds to wait for a connection or for the next bytes of a response."""

MAX_HASHES_PER_REQUEST = 1000
"""Maximum number of hashes that one ``POST /api/blobs/missing`` takes."""

MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_THUMBNAIL_BYTES = 8 * 1024 * 1024
_ERROR_TEXT_LIMIT = 300
_UPLOAD_BLOCK = 256 * 1024


class FarmError(Exception):
    """Base of the errors of this client; the message is meant for the artist."""


class FarmUnreachable(FarmError):
    """No response from the node: connection refused, timed out or no route."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        port = urllib.parse.urlsplit(url).port or 80
        super().__init__(
            f"could not reach the farm node at {url} ({reason}); check that"
            " flamenco-p2p runs on that machine, that the address and port are"
            f" right, and that no firewall blocks TCP port {port}"
        )


class ApiError(FarmError):
    """The node answered with an error; message is the node's own text."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        super().__init__(f"the farm rejected the request: {message}")


class FarmClient:
    """Requests to one node's HTTP API. Each call blocks the calling thread."""

    def __init__(
        self, base_url: str, token: str = "", timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def farm(self) -> dict[str, Any]:
        """Return ``GET /api/farm``: the farm's name, id, server and counts."""
        return self._json("GET", "/api/farm")

    def job(self, job_id: str) -> dict[str, Any]:
        """Return one job as ``GET /api/jobs/{id}`` has it."""
        return self._json("GET", f"/api/jobs/{_segment(job_id)}")

    def submit(self, job: dict[str, Any]) -> dict[str, Any]:
        """Submit a job; returns the job as the farm stored it."""
        reply = self._json("POST", "/api/jobs", job)
        created = reply.get("job")
        if not isinstance(created, dict):
            raise ApiError(200, "invalid_response", "the submission reply has no job")
        return created

    def missing_blobs(self, hashes: Iterable[str]) -> list[str]:
        """Return those of the SHA-256 hashes that the node does not hold."""
        wanted = list(dict.fromkeys(hashes))
        missing: list[str] = []
        for start in range(0, len(wanted), MAX_HASHES_PER_REQUEST):
            batch = wanted[start : start + MAX_HASHES_PER_REQUEST]
            reply = self._json("POST", "/api/blobs/missing", {"hashes": batch})
            listed = reply.get("missing")
            if not isinstance(listed, list):
                raise ApiError(200, "invalid_response", "the reply has no missing list")
            missing += [str(sha256) for sha256 in listed]
        return missing

    def put_blob(
        self,
        path: Path,
        sha256: str,
        on_bytes: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        """Upload one file as the blob named sha256; returns the bytes sent.

        on_bytes is called with each block's size as it is read. Raises
        Cancelled once cancel is set.
        """
        size = path.stat().st_size
        with path.open("rb") as handle:
            body = _CountingReader(handle, on_bytes, cancel)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
            }
            self._request("PUT", f"/api/blobs/{_segment(sha256)}", body, headers)
        return size

    def thumbnail(self, job_id: str) -> bytes | None:
        """Return the job's latest frame as JPEG bytes, or None before the first."""
        try:
            return self._request(
                "GET",
                f"/api/jobs/{_segment(job_id)}/thumbnail",
                limit=MAX_THUMBNAIL_BYTES,
            )
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def _json(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        content = self._request(method, path, data, headers, MAX_JSON_BYTES)
        try:
            document = json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise ApiError(
                200,
                "invalid_response",
                f"{method} {self.base_url}{path} returned a body that is not JSON"
                f" ({error}); check that the address is a farm node's HTTP API",
            ) from None
        if not isinstance(document, dict):
            raise ApiError(200, "invalid_response", f"{path} did not return an object")
        return document

    def _request(
        self,
        method: str,
        path: str,
        data: bytes | _CountingReader | None = None,
        headers: dict[str, str] | None = None,
        limit: int = MAX_JSON_BYTES,
    ) -> bytes:
        url = self.base_url + path
        # The URL is a checked http:// base address plus an API path.
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        if self.token and method != "GET":
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return bytes(response.read(limit + 1))[:limit]
        except urllib.error.HTTPError as error:
            raise _api_error(error) from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, Cancelled):
                raise error.reason from None
            raise FarmUnreachable(self.base_url, _reason(error.reason)) from None
        except Cancelled:
            raise
        except TimeoutError:
            raise FarmUnreachable(
                self.base_url, f"no answer within {self.timeout:g} s"
            ) from None
        except OSError as error:
            raise FarmUnreachable(self.base_url, _reason(error)) from None


class _CountingReader:
    """A file wrapper that http.client reads the request body from."""

    def __init__(
        self,
        handle: BinaryIO,
        on_bytes: Callable[[int], None] | None,
        cancel: threading.Event | None,
    ) -> None:
        self._handle = handle
        self._on_bytes = on_bytes
        self._cancel = cancel

    def read(self, size: int = -1) -> bytes:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("the upload was cancelled")
        block = self._handle.read(_UPLOAD_BLOCK if size < 0 else size)
        if block and self._on_bytes is not None:
            self._on_bytes(len(block))
        return block


def _api_error(error: urllib.error.HTTPError) -> ApiError:
    text = error.read(64 * 1024).decode("utf-8", errors="replace")
    try:
        detail = json.loads(text)["error"]
        code, message = str(detail["code"]), str(detail["message"])
        field = detail.get("field")
    except (ValueError, KeyError, TypeError):
        # Not the API's error body: a proxy's page or another server on the port.
        return ApiError(
            error.code,
            "http_error",
            f"HTTP {error.code} {error.reason} from {error.url}:"
            f" {text[:_ERROR_TEXT_LIMIT].strip()}",
        )
    if error.code == 401:
        message += "; enter the farm's join code again in the add-on's preferences"
    return ApiError(
        error.code, code, message, field if isinstance(field, str) else None
    )


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    if isinstance(reason, TimeoutError):
        return "timed out"
    return str(reason)


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")
