"""The content-addressed blob store and chunked, verified transfers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from flamenco_p2p.blobs import BlobStore
from flamenco_p2p.errors import BlobError


async def test_blob_add_is_content_addressed(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    source = tmp_path / "scene.blend"
    source.write_bytes(b"BLENDER" * 1000)
    sha256, size = await store.add_file(source)
    assert sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert size == 7000
    assert store.has(sha256)
    assert store.path(sha256).read_bytes() == source.read_bytes()
    assert await store.add_file(source) == (sha256, size)


def test_blob_chunks_reassemble(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "a")
    data = bytes(range(256)) * 5000
    sha256 = hashlib.sha256(data).hexdigest()
    writer = store.begin(sha256, len(data))
    for offset in range(0, len(data), 100_000):
        writer.write(offset, data[offset : offset + 100_000])
    path = writer.finish()
    assert path.read_bytes() == data
    assert store.read_chunk(sha256, 10, 5) == data[10:15]


def test_blob_tampered_content_rejected(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "a")
    data = b"x" * 1000
    writer = store.begin(hashlib.sha256(data).hexdigest(), len(data))
    writer.write(0, b"y" * 1000)
    with pytest.raises(BlobError, match="hashes to"):
        writer.finish()
    assert list((tmp_path / "a" / "incoming").iterdir()) == []


def test_blob_out_of_order_chunk_rejected(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "a")
    writer = store.begin("0" * 64, 10)
    with pytest.raises(BlobError, match="expected 0"):
        writer.write(5, b"abc")
    writer.abort()


def test_blob_more_than_announced_rejected(tmp_path: Path) -> None:
    writer = BlobStore(tmp_path / "a").begin("0" * 64, 2)
    with pytest.raises(BlobError, match="more than"):
        writer.write(0, b"abc")
    writer.abort()


@pytest.mark.parametrize("name", ["../../etc/passwd", "ABC", "0" * 63, "g" * 64])
def test_blob_bad_hash_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(BlobError):
        BlobStore(tmp_path / "a").path(name)
