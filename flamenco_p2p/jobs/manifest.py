"""The file list of a packed job: the files a blend file needs besides itself.

A packed scene (textures, linked libraries, caches) travels as blobs, one per
file, and one more blob lists them: the manifest, a JSON object ``{"version": 1,
"files": [{"path", "sha256", "size"}, ...]}``. A job names the manifest by its
hash (``settings.manifest_sha256``), so the job record stays small whatever the
number of files, and every worker lays the files out around the blend file at
their relative paths before it renders.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from flamenco_p2p.errors import InvalidInput

MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
MAX_FILES = 20_000
MAX_PATH_BYTES = 1024
MAX_COMPONENT_BYTES = 255

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class JobFile:
    """One file of a packed job, at a relative POSIX path beside the blend file."""

    path: str
    sha256: str
    size: int


def check_relative_path(path: object, field: str = "path") -> str:
    """Return path if it is a safe relative POSIX path; raise InvalidInput naming it.

    A path from a submission must stay inside the job's folder on every worker,
    so absolute paths, drive letters, backslashes and ``..`` are rejected.
    """
    if not isinstance(path, str) or not path:
        raise InvalidInput(
            f"{field} is {path!r}; give a relative path like 'tex/a.png'"
        )
    parts = path.split("/")
    bad = (
        "\\" in path
        or "\x00" in path
        or path.startswith("/")
        or re.match(r"[A-Za-z]:", path) is not None
        or any(part in ("", ".", "..") for part in parts)
        or any(len(part.encode()) > MAX_COMPONENT_BYTES for part in parts)
        or len(path.encode()) > MAX_PATH_BYTES
    )
    if bad:
        raise InvalidInput(
            f"{field} is {path[:120]!r}; give a relative path with '/' between"
            " names, without '..', '.', empty names or a drive"
        )
    return str(PurePosixPath(path))


def build_manifest(files: Iterable[JobFile]) -> bytes:
    """Return the manifest blob for files, sorted by path."""
    entries = sorted(files, key=lambda f: f.path)
    document = {
        "version": MANIFEST_VERSION,
        "files": [
            {"path": f.path, "sha256": f.sha256, "size": f.size} for f in entries
        ],
    }
    return json.dumps(document, ensure_ascii=False, sort_keys=True).encode("utf-8")


def parse_manifest(data: bytes, blend_name: str) -> list[JobFile]:
    """Validate a manifest from a client or a peer and return its files.

    Raises InvalidInput naming the first bad entry: a manifest that is too large,
    not JSON, of another version, with unsafe or repeated paths, or with a file
    at the blend file's own name.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidInput(
            f"the file list is {len(data)} bytes, over {MAX_MANIFEST_BYTES}; pack"
            " fewer files"
        )
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"the file list is not JSON in UTF-8: {exc}") from exc
    if not isinstance(document, dict) or document.get("version") != MANIFEST_VERSION:
        raise InvalidInput(
            f"the file list must be a JSON object with version {MANIFEST_VERSION}"
        )
    raw_files = document.get("files")
    if not isinstance(raw_files, list) or len(raw_files) > MAX_FILES:
        raise InvalidInput(f"the file list must list at most {MAX_FILES} files")
    files: list[JobFile] = []
    seen = {blend_name}
    for index, raw in enumerate(raw_files):
        field = f"files[{index}]"
        if not isinstance(raw, dict) or set(raw) != {"path", "sha256", "size"}:
            raise InvalidInput(f"{field} must have exactly path, sha256 and size")
        path = check_relative_path(raw["path"], f"{field}.path")
        if path in seen:
            raise InvalidInput(f"{field}.path {path!r} is listed twice")
        seen.add(path)
        sha256, size = raw["sha256"], raw["size"]
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise InvalidInput(f"{field}.sha256 is not 64 lowercase hex digits")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"{field}.size is {size!r}; give a byte count")
        files.append(JobFile(path, sha256, size))
    return files
