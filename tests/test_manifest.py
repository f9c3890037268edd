"""The file list of packed jobs: building, parsing and rejecting bad entries."""

from __future__ import annotations

import json

import pytest

from flamenco_p2p.errors import InvalidInput
from flamenco_p2p.jobs.manifest import (
    MAX_FILES,
    JobFile,
    build_manifest,
    check_relative_path,
    parse_manifest,
)

SHA = "ab" * 32


def manifest(*entries: dict[str, object], version: int = 1) -> bytes:
    return json.dumps({"version": version, "files": list(entries)}).encode()


def entry(path: str, size: int = 3) -> dict[str, object]:
    return {"path": path, "sha256": SHA, "size": size}


def test_manifest_round_trip_sorts_by_path() -> None:
    files = [JobFile("tex/b.png", SHA, 5), JobFile("lib/set.blend", SHA, 0)]
    parsed = parse_manifest(build_manifest(files), "shot.blend")
    assert parsed == sorted(files, key=lambda f: f.path)


@pytest.mark.parametrize(
    "path",
    ["tex/a.png", "_outside_project/home/ana/tex/é.png", "a b/c", "x"],
)
def test_relative_path_accepts_safe_paths(path: str) -> None:
    assert check_relative_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "../up.png",
        "tex/../../up.png",
        "tex//a.png",
        "./a.png",
        "tex/",
        "C:/tex/a.png",
        "c:a.png",
        "tex\\a.png",
        "a\x00b",
        "a" * 256,
        "/".join(["abc"] * 300),
    ],
)
def test_relative_path_rejects_escapes(path: str) -> None:
    with pytest.raises(InvalidInput, match="relative path"):
        check_relative_path(path)


def test_parse_rejects_wrong_documents() -> None:
    cases = [
        (b"\xff", "not JSON"),
        (b"[1]", "version 1"),
        (manifest(version=2), "version 1"),
        (json.dumps({"version": 1, "files": {}}).encode(), "at most"),
        (manifest({"path": "a"}), "exactly path, sha256 and size"),
        (manifest(entry("a"), entry("a")), "listed twice"),
        (manifest(entry("shot.blend")), "listed twice"),
        (manifest({"path": "a", "sha256": "AB" * 32, "size": 1}), "hex"),
        (manifest(entry("a", size=-1)), "byte count"),
        (manifest({"path": "a", "sha256": SHA, "size": True}), "byte count"),
        (manifest(entry("../a")), "files\\[0\\].path"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    ]
    for data, message in cases:
        with pytest.raises(InvalidInput, match=message):
            parse_manifest(data, "shot.blend")


def test_parse_bounds_the_file_count() -> None:
    many = manifest(*(entry(f"f{i}") for i in range(MAX_FILES + 1)))
    with pytest.raises(InvalidInput, match=f"at most {MAX_FILES}"):
        parse_manifest(many, "shot.blend")
