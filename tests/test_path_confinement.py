"""Names from peers and users never lead to a path outside its directory.

Covers safe_path_component, output uploads (output_put) to a running node, blob
hashes, and job names, with separators, parent references, absolute and Windows
paths, NUL bytes, over-long names, reserved characters and symlinks.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from farm import LocalFarm

from flamenco_p2p.blobs import BlobStore
from flamenco_p2p.errors import BlobError
from flamenco_p2p.outputs import safe_path_component
from flamenco_p2p.render.demo_scene import make_demo_scene
from flamenco_p2p.submission import build_render_job
from flamenco_p2p.transport import RemoteError

BAD_NAMES = {
    "parent_escape": "../../etc/passwd",
    "absolute": "/etc/passwd",
    "windows_drive": "C:\\Windows\\x",
    "inner_parent": "a/../../b",
    "nul_byte": "frame\x00.png",
    "300_chars": "n" * 300,
    "reserved_chars": 'a/b:c*?"<>|',
}
BAD_HASHES = {
    "parent_escape": "../../x",
    "parent_escape_64": ("../" * 22)[:63] + "a",
    "absolute": "/etc/passwd",
    "uppercase": "A" * 64,
    "not_hex": "g" * 64,
    "short": "0" * 63,
    "long": "0" * 65,
    "nul_byte": "0" * 63 + "\x00",
}
PAYLOAD = b"not a frame"
ETC_PASSWD = Path("/etc/passwd")


def assert_one_safe_component(name: str, result: str, parent: Path) -> None:
    assert result, f"{name!r} became an empty name"
    assert "/" not in result, result
    assert "\\" not in result, result
    assert "\x00" not in result, result
    assert result not in (".", ".."), result
    assert len(result.encode()) <= 255, len(result.encode())
    assert (parent / result).resolve().parent == parent.resolve(), result


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_safe_path_component_makes_one_name(name: str, tmp_path: Path) -> None:
    assert_one_safe_component(name, safe_path_component(name), tmp_path)


def test_safe_path_component_keeps_plain_name() -> None:
    assert safe_path_component("frame_0001.png") == "frame_0001.png"


@pytest.mark.parametrize("sha256", BAD_HASHES.values(), ids=BAD_HASHES.keys())
def test_blob_store_path_rejects_bad_hash(sha256: str, tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(BlobError):
        store.path(sha256)
    with pytest.raises(BlobError):
        store.has(sha256)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["blobs", "incoming"]


@dataclass
class RenderFarm:
    """A 1-node farm and a finished render job that was submitted through it."""

    farm: LocalFarm
    root: Path
    output: Path
    job_id: str


def files_outside(root: Path, *inside: Path) -> set[Path]:
    """Return every path under root except the farm's and the given directories."""
    skipped = [root / "farm", *inside]
    found = set()
    for path in root.rglob("*"):
        if not any(path == s or s in path.parents for s in skipped):
            found.add(path)
    return found


def etc_passwd_state() -> tuple[int, int, bytes]:
    stat = ETC_PASSWD.stat()
    return stat.st_mtime_ns, stat.st_size, ETC_PASSWD.read_bytes()


async def start_render_job(farm: LocalFarm, root: Path, output: Path) -> str:
    blend = root / "scene.blend"
    make_demo_scene(blend, frames=1)
    job, _warnings = build_render_job(
        blend=blend,
        frames="1",
        chunk=1,
        output=str(output / "frame_####"),
        cwd=root,
    )
    await farm.wait_for_roles(timeout=60)
    result = await farm.call(0, "client_submit", {"job": job, "blend_path": str(blend)})
    job_id: str = result["job_id"]
    view = await farm.wait_for_job(job_id, timeout=180)
    assert view["job"]["status"] == "completed", farm.logs()
    return job_id


@pytest.fixture(scope="module")
def render_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RenderFarm]:
    root = tmp_path_factory.mktemp("confinement")
    # Deep enough that "../../x" from the output directory still lies under root.
    output = root / "jobs" / "shot" / "out"
    with LocalFarm(root / "farm", 1, mdns=False) as farm:
        job_id = asyncio.run(start_render_job(farm, root, output))
        yield RenderFarm(farm, root, output, job_id)


def upload(job_id: str, name: str, attempt_id: str = "confinement") -> dict[str, Any]:
    return {
        "job_id": job_id,
        "attempt_id": attempt_id,
        "name": name,
        "offset": 0,
        "data": PAYLOAD,
        "last": True,
        "sha256": hashlib.sha256(PAYLOAD).hexdigest(),
        "size": len(PAYLOAD),
    }


def sent_name(case: str, name: str, root: Path) -> str:
    # The daemon may run as root. An absolute name that got through would replace
    # the real /etc/passwd, so the absolute case names a file in the test's tree.
    if case == "absolute":
        return str(root / "etc" / "passwd")
    return name


@pytest.mark.slow
@pytest.mark.render
@pytest.mark.parametrize("case", BAD_NAMES.keys())
async def test_output_put_rejects_bad_name(render_farm: RenderFarm, case: str) -> None:
    root, output = render_farm.root, render_farm.output
    name = sent_name(case, BAD_NAMES[case], root)
    outside_before = files_outside(root, output)
    passwd_before = etc_passwd_state()
    with pytest.raises(RemoteError) as error:
        await render_farm.farm.call(0, "output_put", upload(render_farm.job_id, name))
    assert error.value.code == "invalid", error.value
    assert error.value.field == "name", error.value
    assert files_outside(root, output) == outside_before
    assert etc_passwd_state() == passwd_before
    assert not (root / "etc").exists()


@pytest.mark.slow
@pytest.mark.render
@pytest.mark.parametrize("attempt_id", ["../../x", "a/b", "/abs"])
async def test_output_put_rejects_bad_attempt_id(
    render_farm: RenderFarm, attempt_id: str
) -> None:
    root, output = render_farm.root, render_farm.output
    outside_before = files_outside(root, output)
    body = upload(render_farm.job_id, "frame_9999.png", attempt_id)
    with pytest.raises(RemoteError) as error:
        await render_farm.farm.call(0, "output_put", body)
    assert error.value.code == "invalid", error.value
    assert error.value.field == "attempt_id", error.value
    assert files_outside(root, output) == outside_before
    assert "Traceback" not in render_farm.farm.nodes[0].log_text()


@pytest.mark.slow
@pytest.mark.render
@pytest.mark.parametrize("kind", ["file", "directory"])
async def test_output_put_does_not_follow_symlink(
    render_farm: RenderFarm, kind: str
) -> None:
    root, output = render_farm.root, render_farm.output
    outside = root / f"outside_{kind}"
    outside.mkdir()
    target = outside / "target.png"
    target.write_bytes(b"original")
    link = output / f"link_{kind}.png"
    link.symlink_to(target if kind == "file" else outside)
    outside_before = {p: p.read_bytes() for p in outside.iterdir()}
    body = upload(render_farm.job_id, link.name, f"symlink-{kind}")
    try:
        result = await render_farm.farm.call(0, "output_put", body)
    except RemoteError as exc:
        result = {"rejected": str(exc)}
    # Either the upload is rejected or it replaces the link itself; it never
    # writes through the link.
    assert {p: p.read_bytes() for p in outside.iterdir()} == outside_before, result
    if "rejected" not in result:
        assert not link.is_symlink(), result
        assert link.read_bytes() == PAYLOAD
        assert Path(result["path"]).parent == output, result


@pytest.mark.slow
@pytest.mark.render
@pytest.mark.parametrize("sha256", BAD_HASHES.values(), ids=BAD_HASHES.keys())
async def test_blob_get_rejects_bad_hash(render_farm: RenderFarm, sha256: str) -> None:
    body = {"sha256": sha256, "offset": 0, "length": 1024}
    with pytest.raises(RemoteError) as error:
        await render_farm.farm.call(0, "blob_get", body)
    assert error.value.code == "invalid", error.value
    assert error.value.field == "sha256", error.value


def sleep_job(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "job_type": "sleep",
        "priority": 50,
        "settings": {"tasks": 1, "duration": 0.0},
        "requirements": {"gpu": "none", "gpu_types": [], "min_blender": None},
    }


@pytest.mark.slow
@pytest.mark.render
@pytest.mark.parametrize(
    "name",
    ['a/b:c*?"<>|', "../../etc/passwd", "C:\\Windows\\x", "é" * 256],
    ids=["reserved_chars", "parent_escape", "windows_drive", "256_chars"],
)
async def test_job_name_stored_intact(render_farm: RenderFarm, name: str) -> None:
    farm = render_farm.farm
    body = {"job": sleep_job(name), "blend_path": None}
    job_id = (await farm.call(0, "client_submit", body))["job_id"]
    view = await farm.call(0, "client_job", {"job_id": job_id})
    assert view["job"]["name"] == name
    assert_one_safe_component(name, safe_path_component(name), render_farm.root)
    data_dir = farm.nodes[0].data_dir
    assert not [p for p in data_dir.rglob("*") if name in p.name]
    assert os.path.exists(data_dir / "submissions" / f"{job_id}.json")


@pytest.mark.slow
@pytest.mark.render
async def test_job_name_over_limit_rejected(render_farm: RenderFarm) -> None:
    body = {"job": sleep_job(BAD_NAMES["300_chars"]), "blend_path": None}
    with pytest.raises(RemoteError) as error:
        await render_farm.farm.call(0, "client_submit", body)
    assert error.value.code == "invalid", error.value
    assert "name" in str(error.value), error.value
