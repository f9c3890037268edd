"""Upload planning: which files of a packed job the farm still needs.

A packed job is a folder with the blend file and every file it needs at paths
relative to it. Each file travels as a blob named by its SHA-256. One more
blob, the manifest, lists the other files as JSON ``{"version": 1, "files":
[{"path", "sha256", "size"}, ...]}``, sorted by path, in the format that the
farm's ``settings.manifest_sha256`` expects. The farm is asked which blobs it
lacks, and only those are sent, so an unchanged file crosses the network once.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .background import Cancelled

MANIFEST_VERSION = 1
PACK_INFO_NAME = "pack-info.txt"
"""The note blender-asset-tracer writes at the top of a pack; the farm needs none."""

_HASH_BLOCK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Blob:
    """One file to offer the farm: where it is here and what it is there."""

    path: str
    """Relative POSIX path in the job's folder ("" for the manifest)."""
    source: Path
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class UploadPlan:
    """The blobs of a job and those of them the farm lacks."""

    blend: Blob
    files: tuple[Blob, ...]
    manifest: Blob | None
    missing: tuple[Blob, ...]

    @property
    def all_blobs(self) -> list[Blob]:
        """Every blob the job names: blend file, other files and manifest."""
        blobs = [self.blend, *self.files]
        if self.manifest is not None:
            blobs.append(self.manifest)
        return blobs

    @property
    def missing_bytes(self) -> int:
        """How many bytes the upload sends."""
        return sum(blob.size for blob in self.missing)


def hash_file(
    path: Path,
    cancel: threading.Event | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[str, int]:
    """Return the SHA-256 hex digest and size of a file; raises Cancelled."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            if cancel is not None and cancel.is_set():
                raise Cancelled("hashing was cancelled")
            digest.update(block)
            size += len(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return digest.hexdigest(), size


def packed_files(pack_root: Path, blend_relative: str) -> list[Path]:
    """List the files of a pack other than the blend file and BAT's note, sorted."""
    skipped = {blend_relative, PACK_INFO_NAME}
    return sorted(
        path
        for path in pack_root.rglob("*")
        if path.is_file() and path.relative_to(pack_root).as_posix() not in skipped
    )


def build_manifest(files: Iterable[Blob]) -> bytes:
    """Return the manifest blob's bytes for the files, sorted by path."""
    entries = sorted(files, key=lambda blob: blob.path)
    document = {
        "version": MANIFEST_VERSION,
        "files": [
            {"path": blob.path, "sha256": blob.sha256, "size": blob.size}
            for blob in entries
        ],
    }
    return json.dumps(document, ensure_ascii=False, sort_keys=True).encode("utf-8")


def describe_pack(
    pack_root: Path,
    blend_relative: str,
    cancel: threading.Event | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[Blob, list[Blob], Blob | None]:
    """Hash a packed job: the blend file, its other files and their manifest.

    The manifest is written beside the pack (``<pack>.manifest.json``) so that
    it uploads like any other file. It is None when the blend file needs no
    other file.
    """
    blend_path = pack_root / blend_relative
    blend = Blob(blend_relative, blend_path, *hash_file(blend_path, cancel, on_bytes))
    files = []
    for path in packed_files(pack_root, blend_relative):
        relative = path.relative_to(pack_root).as_posix()
        files.append(Blob(relative, path, *hash_file(path, cancel, on_bytes)))
    if not files:
        return blend, files, None
    manifest_path = pack_root.with_name(pack_root.name + ".manifest.json")
    data = build_manifest(files)
    manifest_path.write_bytes(data)
    manifest = Blob("", manifest_path, hashlib.sha256(data).hexdigest(), len(data))
    return blend, files, manifest


def plan_upload(
    blend: Blob,
    files: Iterable[Blob],
    manifest: Blob | None,
    missing_hashes: Iterable[str],
) -> UploadPlan:
    """Pick the blobs the farm lacks, each hash once, in upload order.

    The manifest goes last: the farm accepts a job that names it only when
    every file it lists is there.
    """
    missing = set(missing_hashes)
    plan = UploadPlan(blend, tuple(files), manifest, ())
    chosen: dict[str, Blob] = {}
    for blob in plan.all_blobs:
        if blob.sha256 in missing and blob.sha256 not in chosen:
            chosen[blob.sha256] = blob
    return UploadPlan(blend, plan.files, manifest, tuple(chosen.values()))
