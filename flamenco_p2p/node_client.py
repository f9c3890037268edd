"""Requests that any node serves on its node port: commands from the CLI, blobs for
managers, and outputs that workers send back to the node that submitted a job."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flamenco_p2p.errors import BlobError, FarmUnavailable, InvalidInput
from flamenco_p2p.protocol.messages import Message
from flamenco_p2p.thumbnail_cache import Thumbnails
from flamenco_p2p.transport import DealerLink, RemoteError, Reply

if TYPE_CHECKING:
    from flamenco_p2p.node import Node

logger = logging.getLogger(__name__)

MAX_OPEN_OUTPUTS = 64
_SHA256 = re.compile(r"[0-9a-f]{64}")
TIMESTAMP_FIELDS = frozenset(
    {"created", "updated", "started", "ended", "first_seen", "last_seen"}
)
OUTPUT_IDLE_AFTER = 120.0
SERVER_TIMEOUT = 15.0
SUBMISSION_WAIT = 5.0
# Compiling and storing a job of a million frames takes about 15 s on 2 cores.
SUBMIT_TIMEOUT = 120.0
# Client requests that the node passes on to the server unchanged.
FORWARDED_OPS = {
    "client_job": "get_job",
    "client_cancel": "cancel_job",
    "client_task_log": "get_task_log",
}


@dataclass(slots=True)
class OutputWriter:
    """An output file being received from a worker."""

    final: Path
    tmp: Path
    sha256: str
    size: int
    job_id: str
    received: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    last_write: float = field(default_factory=time.monotonic)


class ClientService:
    """The node-port requests other than membership and election."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.server: DealerLink | None = None
        self.server_epoch = 0
        self._link_lock = asyncio.Lock()
        self.submissions_dir = node.config.data_dir / "submissions"
        self.submissions_dir.mkdir(parents=True, exist_ok=True)
        self.outputs: dict[tuple[str, str], OutputWriter] = {}
        self.server_ready = asyncio.Event()
        self.thumbnails = Thumbnails(node.config.data_dir / "thumbnails")

    async def close(self) -> None:
        """Drop the server link and partial outputs."""
        await self.thumbnails.close()
        if self.server is not None:
            await self.server.close()
            self.server = None
        for writer in self.outputs.values():
            writer.tmp.unlink(missing_ok=True)
        self.outputs.clear()

    @property
    def server_endpoint(self) -> str | None:
        """The endpoint requests are forwarded to, or None."""
        return self.server.endpoint if self.server is not None else None

    async def set_server(self, endpoint: str | None, epoch: int) -> None:
        """Point forwarded requests at the server's new holder."""
        async with self._link_lock:
            await self._set_server_locked(endpoint, epoch)

    async def _set_server_locked(self, endpoint: str | None, epoch: int) -> None:
        old, self.server = self.server, None
        if old is not None:
            await old.close()
        self.server_epoch = epoch
        self.server_ready.clear()
        if endpoint is not None:
            self.server = DealerLink(
                self.node.ctx, self.node.node_id, endpoint, name="node->server"
            )
            self.server_ready.set()

    async def handle(
        self, identity: bytes, message: Message
    ) -> dict[str, Any] | Reply | None:
        """Serve one request; unknown operations get an error reply."""
        body = message.body
        forwarded = FORWARDED_OPS.get(message.op)
        if forwarded is not None:
            result: dict[str, Any] = utc_timestamps(
                await self.call_server(forwarded, body)
            )
            return result
        if message.op == "client_submit":
            self._check_local(message)
            return await self._submit(body)
        if message.op == "client_status":
            return await self._status()
        if message.op == "blob_get":
            return self._blob_get(body)
        if message.op == "client_thumbnail":
            return self._thumbnail(body["job_id"])
        if message.op == "output_put":
            return await self._output_put(body)
        raise RemoteError(
            "unknown_op", f"operation {message.op!r} is not served here", "op"
        )

    async def call_server(
        self,
        op: str,
        body: dict[str, Any],
        timeout: float = SERVER_TIMEOUT,
        wait_for_server: float = SERVER_TIMEOUT,
    ) -> Any:
        """Forward a request to the farm's server.

        ``wait_for_server`` is how long to wait, in seconds, for an election when
        the farm has no server yet. A request whose server changes before it
        replies is sent again to the next server until both times have passed;
        every forwarded operation is safe to repeat (a submission carries its
        job id).
        """
        deadline = time.monotonic() + wait_for_server + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                await asyncio.wait_for(self.server_ready.wait(), max(remaining, 0.01))
            except TimeoutError as exc:
                raise RemoteError(
                    "unavailable",
                    "the farm has no server yet; wait for the election or check"
                    " `status`",
                    None,
                ) from exc
            link = self.server
            if link is None:
                await asyncio.sleep(0.1)
                continue
            try:
                return await link.call(
                    op, body, timeout=max(min(timeout, remaining), 0.5)
                )
            except FarmUnavailable as exc:
                # Only a server change is worth another try: a server that is
                # there but slow would only get the same request twice.
                replaced = self.server is not link or link.closed
                if not replaced or time.monotonic() >= deadline:
                    raise RemoteError("unavailable", str(exc), None) from exc
                logger.info(
                    "%s got no reply before the server changed (%s): sending it again",
                    op,
                    exc,
                )

    def _check_local(self, message: Message) -> None:
        """Reject a submission from another machine.

        A submission names files and folders of this machine (the blend file and
        the output folder), so only a client on this machine may send one.
        """
        address = message.peer_address
        local = address is not None and (
            address == self.node.config.bind_address
            or ipaddress.ip_address(address).is_loopback
        )
        if not local:
            logger.warning(
                "rejected a submission from %s (%s): submissions must come from"
                " this machine",
                address,
                message.sender,
            )
            raise RemoteError(
                "forbidden",
                "a node takes submissions only from its own machine, because they"
                " name local files; run `flamenco-p2p submit` where the blend file is",
                None,
            )

    async def _submit(self, body: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body["job"], dict):
            raise RemoteError("invalid", "job must be a map of job settings", "job")
        blend: tuple[str, int, str] | None = None
        blend_path = body["blend_path"]
        if body["job"].get("job_type") == "blender-render":
            if not blend_path:
                raise InvalidInput("a blender-render job needs the blend file's path")
            path = Path(blend_path)
            if not path.is_file():
                raise InvalidInput(f"blend file {blend_path!r} not found on this node")
            sha256, size = await self.node.blobs.add_file(path)
            blend = (sha256, size, path.name)
        return {"job_id": await self.submit(body["job"], blend)}

    async def submit(
        self, raw_job: dict[str, Any], blend: tuple[str, int, str] | None = None
    ) -> str:
        """Check a job from a client, store it on the server and return its id.

        ``blend`` is (sha256, size, file name) of the blend file in this node's
        blob store; without it, a blender-render job must name one in its
        settings. Outputs come back to this node, into the job's output_dir.
        """
        job = dict(raw_job)
        if not isinstance(job.get("settings") or {}, dict):
            raise RemoteError("invalid", "job.settings must be a map", "job.settings")
        settings = dict(job.get("settings") or {})
        job["submitter_node"] = self.node.node_id
        if job.get("job_type") == "blender-render":
            if blend is not None:
                settings.update(
                    blend_sha256=blend[0], blend_size=blend[1], blend_name=blend[2]
                )
            self._check_blend(settings)
            output_dir = Path(str(settings.get("output_dir", "")))
            if not output_dir.is_absolute():
                raise InvalidInput(
                    f"output_dir {str(output_dir)!r} must be an absolute path"
                )
            _check_output_dir(output_dir)
        job["settings"] = settings
        from flamenco_p2p.jobs.spec import JobSpec

        spec = JobSpec.from_dict(job)
        # The record must exist before the server can hand out the first task,
        # because workers deliver outputs against it.
        job_id = uuid.uuid4().hex
        self._record_submission(job_id, settings)
        try:
            await self.call_server(
                "submit_job",
                {"job": spec.to_dict(), "job_id": job_id},
                timeout=SUBMIT_TIMEOUT,
            )
        except RemoteError as exc:
            if exc.code != "unavailable":
                self._submission_path(job_id).unlink(missing_ok=True)
            raise
        return job_id

    def _check_blend(self, settings: dict[str, Any]) -> None:
        sha256 = settings.get("blend_sha256")
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise InvalidInput(
                f"settings.blend_sha256 is {str(sha256)[:80]!r}; give the blend"
                " file's SHA-256 as 64 lowercase hex digits"
            )
        if not self.node.blobs.has(sha256):
            raise InvalidInput(
                f"settings.blend_sha256 is {sha256!r}, which this node does not"
                " hold; upload the blend file first (PUT /api/blobs/SHA256)"
            )
        settings["blend_size"] = self.node.blobs.size(sha256)
        name = settings.get("blend_name")
        if not isinstance(name, str) or not name.endswith(".blend"):
            raise InvalidInput(
                f"settings.blend_name is {name!r}; give the blend file's name,"
                " ending in .blend"
            )
        manifest = settings.get("manifest_sha256")
        if manifest is not None:
            self._check_manifest(manifest, name)

    def _check_manifest(self, manifest: object, blend_name: str) -> None:
        """Check that the file list and every file it names are on this node."""
        from flamenco_p2p.jobs.manifest import MAX_MANIFEST_BYTES, parse_manifest

        if not isinstance(manifest, str) or not _SHA256.fullmatch(manifest):
            raise InvalidInput(
                f"settings.manifest_sha256 is {str(manifest)[:80]!r}; give the"
                " SHA-256 of the job's file list as 64 lowercase hex digits"
            )
        if not self.node.blobs.has(manifest):
            raise InvalidInput(
                f"settings.manifest_sha256 is {manifest}, which this node does not"
                " hold; upload the file list first (PUT /api/blobs/SHA256)"
            )
        if self.node.blobs.size(manifest) > MAX_MANIFEST_BYTES:
            raise InvalidInput(
                f"the file list {manifest} is over {MAX_MANIFEST_BYTES} bytes"
            )
        files = parse_manifest(self.node.blobs.path(manifest).read_bytes(), blend_name)
        missing = [f for f in files if not self.node.blobs.has(f.sha256)]
        if missing:
            named = ", ".join(f"{f.path} ({f.sha256[:12]})" for f in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise InvalidInput(
                f"{len(missing)} files of the job are not on this node: {named}{more};"
                " upload them first (POST /api/blobs/missing tells which)"
            )

    def _record_submission(self, job_id: str, settings: dict[str, Any]) -> None:
        record = {"output_dir": settings.get("output_dir")}
        path = self._submission_path(job_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, path)

    def _submission_path(self, job_id: str) -> Path:
        from flamenco_p2p.outputs import safe_path_component

        return self.submissions_dir / (safe_path_component(job_id) + ".json")

    async def _status(self) -> dict[str, Any]:
        status = self.node.describe()
        try:
            # status must stay quick when the farm has no server: it is how a
            # user finds out why.
            farm = await self.call_server(
                "list_jobs", {"limit": 100}, timeout=5.0, wait_for_server=2.0
            )
        except RemoteError as exc:
            status["jobs"] = []
            status["workers"] = []
            status["server_error"] = str(exc)
        else:
            status["jobs"] = utc_timestamps(farm["jobs"])
            status["workers"] = utc_timestamps(farm["workers"])
        return status

    def _blob_get(self, body: dict[str, Any]) -> Reply:
        sha256 = body["sha256"]
        try:
            size = self.node.blobs.size(sha256)
            data = self.node.blobs.read_chunk(sha256, body["offset"], body["length"])
        except BlobError as exc:
            raise RemoteError("not_found", str(exc), "sha256") from exc
        return Reply("blob_data", {"size": size, "data": data})

    def _thumbnail(self, job_id: str) -> Reply:
        data = self.thumbnails.read(job_id)
        if data is None:
            raise RemoteError(
                "not_found", f"job {job_id} has no rendered frame here yet", "job_id"
            )
        return Reply("blob_data", {"size": len(data), "data": data})

    async def _output_dir(self, job_id: str) -> Path:
        path = self._submission_path(job_id)
        waited = 0.0
        while not path.exists() and waited < SUBMISSION_WAIT:
            await asyncio.sleep(0.1)
            waited += 0.1
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RemoteError(
                "not_found",
                f"job {job_id} was not submitted through this node",
                "job_id",
            ) from exc
        output_dir = record.get("output_dir") if isinstance(record, dict) else None
        if not isinstance(output_dir, str):
            raise RemoteError(
                "not_found", f"job {job_id} has no output folder", "job_id"
            )
        return Path(output_dir)

    async def _output_put(self, body: dict[str, Any]) -> dict[str, Any]:
        key = (body["attempt_id"], body["name"])
        writer = self.outputs.get(key)
        if writer is not None and body["offset"] == 0:
            # The worker starts over (it retries a delivery that was cut off).
            del self.outputs[key]
            writer.tmp.unlink(missing_ok=True)
            writer = None
        if writer is None:
            if body["offset"] != 0:
                raise RemoteError(
                    "invalid", f"output {body['name']!r}: no transfer open", "offset"
                )
            writer = await self._open_output(body)
        try:
            self._write_chunk(writer, body)
        except InvalidInput as exc:
            self.outputs.pop(key, None)
            writer.tmp.unlink(missing_ok=True)
            raise RemoteError("invalid", str(exc), "data") from exc
        if not body["last"]:
            return {"received": writer.received}
        del self.outputs[key]
        return self._finish_output(writer)

    async def _open_output(self, body: dict[str, Any]) -> OutputWriter:
        from flamenco_p2p.outputs import safe_path_component

        name = body["name"]
        if safe_path_component(body["attempt_id"]) != body["attempt_id"]:
            raise RemoteError(
                "invalid", f"attempt id {body['attempt_id']!r} is invalid", "attempt_id"
            )
        if safe_path_component(name) != name or name.startswith("."):
            raise RemoteError(
                "invalid", f"output name {name!r} is not a plain file name", "name"
            )
        self._drop_idle_outputs()
        if len(self.outputs) >= MAX_OPEN_OUTPUTS:
            raise RemoteError("busy", "too many output transfers at once; retry", None)
        folder = await self._output_dir(body["job_id"])
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / name
        # The attempt id comes from the network: hash it rather than trust it in
        # a file name.
        attempt_tag = hashlib.sha256(body["attempt_id"].encode()).hexdigest()[:16]
        tmp = folder / f".{name}.{attempt_tag}.part"
        tmp.write_bytes(b"")
        writer = OutputWriter(final, tmp, body["sha256"], body["size"], body["job_id"])
        self.outputs[(body["attempt_id"], name)] = writer
        return writer

    def _drop_idle_outputs(self) -> None:
        """Forget transfers that no chunk reached for OUTPUT_IDLE_AFTER seconds."""
        now = time.monotonic()
        for key, writer in list(self.outputs.items()):
            if now - writer.last_write > OUTPUT_IDLE_AFTER:
                del self.outputs[key]
                writer.tmp.unlink(missing_ok=True)
                logger.warning(
                    "dropped the transfer of output %s: no data for %.0f s",
                    writer.final,
                    now - writer.last_write,
                )

    def _write_chunk(self, writer: OutputWriter, body: dict[str, Any]) -> None:
        data: bytes = body["data"]
        if body["offset"] != writer.received:
            raise InvalidInput(f"chunk at {body['offset']}, expected {writer.received}")
        if writer.received + len(data) > writer.size:
            raise InvalidInput(f"more than the {writer.size} bytes announced")
        with writer.tmp.open("ab") as handle:
            handle.write(data)
        writer.digest.update(data)
        writer.received += len(data)
        writer.last_write = time.monotonic()

    def _finish_output(self, writer: OutputWriter) -> dict[str, Any]:
        actual = writer.digest.hexdigest()
        if writer.received != writer.size or actual != writer.sha256:
            writer.tmp.unlink(missing_ok=True)
            raise RemoteError(
                "invalid",
                f"output {writer.final.name}: {writer.received} bytes hashing to"
                f" {actual}, expected {writer.size} bytes hashing to {writer.sha256}",
                "sha256",
            )
        os.replace(writer.tmp, writer.final)
        logger.info("received output %s (%d bytes)", writer.final, writer.size)
        self.thumbnails.frame_arrived(writer.job_id, writer.final)
        return {"path": str(writer.final), "sha256": actual}


def utc_timestamps(value: Any) -> Any:
    """Return value with its timestamp fields as ISO 8601 text in UTC.

    The farm state stores Unix times from the server's clock. Clients get text
    with an explicit +00:00 offset, so no reader has to guess the time zone.
    """
    if isinstance(value, list):
        return [utc_timestamps(item) for item in value]
    if not isinstance(value, dict):
        return value
    converted = {}
    for key, item in value.items():
        if key in TIMESTAMP_FIELDS and isinstance(item, int | float):
            moment = datetime.datetime.fromtimestamp(item, datetime.UTC)
            converted[key] = moment.isoformat()
        else:
            converted[key] = utc_timestamps(item)
    return converted


def _check_output_dir(output_dir: Path) -> None:
    """Create the output folder now, so that a bad one fails the submission."""
    for parent in (output_dir, *output_dir.parents):
        if parent.exists():
            if not parent.is_dir():
                raise InvalidInput(
                    f"output folder {str(output_dir)!r} cannot be created: {parent}"
                    " is a file; choose another --output"
                )
            break
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(
            f"output folder {str(output_dir)!r} cannot be created:"
            f" {exc.strerror or exc}; choose another --output"
        ) from exc
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise InvalidInput(
            f"output folder {str(output_dir)!r} is not writable; choose another"
            " --output or fix its permissions"
        )
