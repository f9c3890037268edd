"""The steps of a submission after the file is saved: pack, upload, submit.

These steps need no Blender, so they run in a background thread in the UI and
directly in background mode, and plain tests can drive them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import FarmClient
from .background import Cancelled, Progress
from .packing import pack_blend
from .upload import Blob, describe_pack, plan_upload

logger = logging.getLogger(__name__)

GPU_MODES = ("none", "prefer", "require")


class MissingFilesError(Exception):
    """The blend file refers to files that do not exist; paths lists them."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        listed = ", ".join(str(path) for path in paths[:5])
        more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
        super().__init__(
            f"{len(paths)} file(s) the scene needs are missing: {listed}{more};"
            " restore them, or submit anyway to render without them"
        )


@dataclass(frozen=True, slots=True)
class JobOptions:
    """The job settings from the submit panel."""

    name: str
    frames: str
    chunk_size: int
    priority: int
    output_dir: str
    output_name: str
    gpu: str
    blender_version: str


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    """A saved copy of the open file and where and how to submit it."""

    blend: Path
    """The file to pack: the saved file or a copy saved beside it."""
    blend_name: str
    """The file name the job gets: the open file's own name."""
    project: Path
    options: JobOptions
    base_url: str
    token: str
    allow_missing: bool = False


@dataclass(slots=True)
class SubmitResult:
    """The submitted job and what crossed the network for it."""

    job: dict[str, Any]
    uploaded_bytes: int
    uploaded_blobs: int
    total_blobs: int
    missing: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def build_job(
    options: JobOptions, blend_sha256: str, blend_name: str, manifest_sha256: str | None
) -> dict[str, Any]:
    """Return the body of ``POST /api/jobs`` for a packed blend file."""
    if options.gpu not in GPU_MODES:
        raise ValueError(f"GPU mode {options.gpu!r} is not one of {GPU_MODES}")
    settings: dict[str, Any] = {
        "blend_sha256": blend_sha256,
        "blend_name": blend_name,
        "frames": options.frames,
        "chunk_size": options.chunk_size,
        "output_dir": options.output_dir,
        "output_name": options.output_name,
        "overrides": {"device": "GPU"} if options.gpu != "none" else {},
        "blender_version": options.blender_version,
    }
    if manifest_sha256 is not None:
        settings["manifest_sha256"] = manifest_sha256
    return {
        "name": options.name,
        "job_type": "blender-render",
        "priority": options.priority,
        "settings": settings,
        "requirements": {
            "gpu": options.gpu,
            "gpu_types": [],
            "min_blender": oldest_blender(options.blender_version),
        },
    }


def oldest_blender(saved_by: str) -> str | None:
    """Return the oldest Blender release, as "major.minor", to render a file with.

    A release may drop or misread data that a newer release saved, so the job
    requires workers with at least the major and minor version that saved the
    file. Returns None for a version that does not parse, which the farm then
    rejects in settings.blender_version.
    """
    parts = saved_by.split(".")
    if len(parts) < 2 or not all(part.isdigit() for part in parts[:2]):
        return None
    return f"{int(parts[0])}.{int(parts[1])}"


def run_submission(request: SubmitRequest, progress: Progress) -> SubmitResult:
    """Pack the copy, upload what the farm lacks and submit the job.

    Raises MissingFilesError before any upload when files are missing and
    request.allow_missing is false, Cancelled when progress.cancel is set, and
    FarmError subclasses with the farm's message.
    """
    started = time.monotonic()
    client = FarmClient(request.base_url, request.token)
    work_dir = Path(tempfile.mkdtemp(prefix="flamenco-p2p-pack-"))
    try:
        progress.update("Packing the file and its dependencies", 0.0)
        packed = pack_blend(
            request.blend,
            request.project,
            work_dir / "pack",
            request.blend_name,
            progress.cancel,
        )
        if packed.missing and not request.allow_missing:
            raise MissingFilesError(list(packed.missing))
        blend, files, manifest = _hash_pack(
            packed.root, packed.blend_relative, progress
        )
        progress.update("Asking the farm which files it lacks", 0.2)
        hashes = [blob.sha256 for blob in (blend, *files)]
        if manifest is not None:
            hashes.append(manifest.sha256)
        plan = plan_upload(blend, files, manifest, client.missing_blobs(hashes))
        _upload(client, plan.missing, plan.missing_bytes, progress)
        progress.update("Submitting the job", 0.95)
        job = client.submit(
            build_job(
                request.options,
                blend.sha256,
                request.blend_name,
                manifest.sha256 if manifest is not None else None,
            )
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    result = SubmitResult(
        job=job,
        uploaded_bytes=plan.missing_bytes,
        uploaded_blobs=len(plan.missing),
        total_blobs=len(plan.all_blobs),
        missing=list(packed.missing),
        seconds=time.monotonic() - started,
    )
    logger.info(
        "submitted job %s to %s: uploaded %d of %d files, %d bytes, in %.1f s",
        job.get("id"),
        request.base_url,
        result.uploaded_blobs,
        result.total_blobs,
        result.uploaded_bytes,
        result.seconds,
    )
    return result


def _hash_pack(
    root: Path, blend_relative: str, progress: Progress
) -> tuple[Blob, list[Blob], Blob | None]:
    total = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    done = 0

    def on_bytes(count: int) -> None:
        nonlocal done
        done += count
        progress.update("Hashing packed files", 0.1 + 0.1 * done / max(total, 1))

    return describe_pack(root, blend_relative, progress.cancel, on_bytes)


def _upload(
    client: FarmClient, blobs: Iterable[Blob], total: int, progress: Progress
) -> None:
    sent = 0

    def on_bytes(count: int) -> None:
        nonlocal sent
        sent += count
        megabytes = sent / 1e6
        progress.update(
            f"Uploading {megabytes:.1f} of {total / 1e6:.1f} MB",
            0.2 + 0.75 * sent / max(total, 1),
        )

    for blob in blobs:
        if progress.cancel.is_set():
            raise Cancelled("the upload was cancelled")
        client.put_blob(blob.source, blob.sha256, on_bytes, progress.cancel)
