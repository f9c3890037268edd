"""Content-addressed file store: each blob is a file named by its SHA-256."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from flamenco_p2p.errors import BlobError

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
HASH_BLOCK = 4 * 1024 * 1024


def sha256_file(path: Path) -> tuple[str, int]:
    """Return the hex SHA-256 and the size of a file."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _check_hash(sha256: str) -> str:
    if len(sha256) != 64 or sha256.strip("0123456789abcdef"):
        raise BlobError(f"{sha256[:80]!r} is not a SHA-256 in lowercase hex")
    return sha256


class BlobStore:
    """Blobs under one directory, two hex digits of fan-out, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Return where a blob lives (whether or not it is there)."""
        _check_hash(sha256)
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        """Return True when the blob is stored."""
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        """Return a stored blob's size; raises BlobError when it is missing."""
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError as exc:
            raise BlobError(f"blob {sha256} is not in {self.root}") from exc

    async def add_file(self, source: Path) -> tuple[str, int]:
        """Copy a file into the store; returns its hash and size."""
        return await asyncio.to_thread(self._add_file, source)

    def _add_file(self, source: Path) -> tuple[str, int]:
        sha256, size = sha256_file(source)
        target = self.path(sha256)
        if target.is_file():
            return sha256, size
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.incoming, delete=False) as handle:
            tmp = Path(handle.name)
        try:
            shutil.copyfile(source, tmp)
            copied, copied_size = sha256_file(tmp)
            if copied != sha256:
                raise BlobError(
                    f"{source} changed while it was copied; submit it again"
                )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        logger.info("stored blob %s (%d bytes) from %s", sha256, size, source)
        return sha256, copied_size

    def remove(self, sha256: str) -> None:
        """Delete a stored blob; a missing one is no error."""
        self.path(sha256).unlink(missing_ok=True)

    def read_chunk(self, sha256: str, offset: int, length: int) -> bytes:
        """Read part of a stored blob."""
        try:
            with self.path(sha256).open("rb") as handle:
                handle.seek(offset)
                return handle.read(min(length, CHUNK_SIZE * 4))
        except FileNotFoundError as exc:
            raise BlobError(f"blob {sha256} is not stored here") from exc

    def begin(self, sha256: str, size: int) -> BlobWriter:
        """Start receiving a blob in chunks."""
        return BlobWriter(self, _check_hash(sha256), size)


class BlobWriter:
    """A blob being received: chunks in order, verified against the hash at the end."""

    def __init__(self, store: BlobStore, sha256: str, size: int) -> None:
        self.store = store
        self.sha256 = sha256
        self.size = size
        self.received = 0
        self._digest = hashlib.sha256()
        # The handle stays open across chunks and is closed by finish() or abort().
        handle = tempfile.NamedTemporaryFile(dir=store.incoming, delete=False)  # noqa: SIM115
        self._handle = handle
        self.tmp = Path(handle.name)

    def write(self, offset: int, data: bytes) -> None:
        """Append the chunk that starts at ``offset``."""
        if offset != self.received:
            raise BlobError(
                f"blob {self.sha256}: chunk at {offset}, expected {self.received}"
            )
        if self.received + len(data) > self.size:
            raise BlobError(
                f"blob {self.sha256}: more than the {self.size} bytes announced"
            )
        self._handle.write(data)
        self._digest.update(data)
        self.received += len(data)

    def finish(self) -> Path:
        """Verify and move the blob into the store; returns its path."""
        self._handle.close()
        try:
            if self.received != self.size:
                raise BlobError(
                    f"blob {self.sha256}: got {self.received} of {self.size} bytes"
                )
            actual = self._digest.hexdigest()
            if actual != self.sha256:
                raise BlobError(f"blob {self.sha256}: content hashes to {actual}")
            target = self.store.path(self.sha256)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp, target)
            return target
        finally:
            self.tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop a partial blob."""
        self._handle.close()
        self.tmp.unlink(missing_ok=True)
