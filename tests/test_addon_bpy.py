"""The add-on installed from its zip into bpy, submitting to a real three-node farm.

Each bpy session runs in a child process, because bpy keeps global state, with
Blender's config, cache and temp folders in the test's own folders. The farm
is found over mDNS on 127.0.0.1 as the nodes themselves find each other.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from farm import LocalFarm
from PIL import Image
from render_helpers import add_linked_library, make_textured_scene

from flamenco_p2p.addon_build import build_addon
from flamenco_p2p.farmkey import load_farm_key, new_farm_key
from flamenco_p2p.render.controller import child_environment

pytestmark = [pytest.mark.render, pytest.mark.slow]

ADDON_ID = "flamenco_p2p_submit"
# The green of the texture and the blue of the linked library's cube, as the
# 32 x 18 frame shows them.
TEXTURE_PIXEL = (6, 9)
LIBRARY_PIXEL = (27, 9)
UPLOAD_LOG = re.compile(r"blob ([0-9a-f]{64}) \((\d+) bytes\) uploaded from")

DRIVER_SCRIPT = r"""
import json
import os
import sys
import time

settings = json.load(sys.stdin)
results = []


def record(step, **values):
    results.append({"step": step, **values})
    with open(settings["results"], "w", encoding="utf-8") as handle:
        json.dump(results, handle)


import bpy

bpy.context.preferences.filepaths.save_version = 0
status = bpy.ops.extensions.package_install_files(
    filepath=settings["zip"], repo="user_default", enable_on_install=True
)
# The bundled wheels go first, so that the add-on runs on them and not on the
# packages of the test's own environment.
local = [path for path in sys.path if "extensions" in path and ".local" in path]
for path in local:
    sys.path.remove(path)
    sys.path.insert(0, path)
package = "bl_ext.user_default." + settings["addon_id"]
installed = hasattr(bpy.types, "FLAMENCO_P2P_OT_submit")
# Disabling and enabling again must unregister cleanly and reload the modules.
first_class = sys.modules[package + ".operators"].FLAMENCO_P2P_OT_submit
bpy.ops.preferences.addon_disable(module=package)
disabled = hasattr(bpy.types, "FLAMENCO_P2P_OT_submit")
bpy.ops.preferences.addon_enable(module=package)
record(
    "install",
    status=sorted(status),
    installed=installed,
    disabled=disabled,
    operator=hasattr(bpy.types, "FLAMENCO_P2P_OT_submit"),
    panel=hasattr(bpy.types, "FLAMENCO_P2P_PT_submit"),
    reloaded=sys.modules[package + ".operators"].FLAMENCO_P2P_OT_submit
    is not first_class,
    local=local,
)
bpy.ops.wm.open_mainfile(filepath=settings["blend"])
prefs = bpy.context.preferences.addons[package].preferences
prefs.mdns_interfaces = "127.0.0.1"
prefs.browse_seconds = 3.0
bpy.ops.flamenco_p2p.join(code=settings["join_code"])
record("join", farm=prefs.farm_name, farm_id=prefs.farm_id, token=prefs.api_token)

session = bpy.context.window_manager.flamenco_p2p
scene = bpy.context.scene
scene.flamenco_p2p.frames = settings["frames"]
scene.flamenco_p2p.output_dir = settings["output_dir"]
scene.flamenco_p2p.job_name = settings["job_name"]


def run(step, operator, **arguments):
    started = time.monotonic()
    try:
        outcome = sorted(operator(**arguments))
        error = ""
    except RuntimeError as caught:
        outcome = ["ERROR"]
        error = str(caught)
    return {"outcome": outcome, "error": error, "seconds": time.monotonic() - started}


for step in settings["steps"]:
    kind = step["kind"]
    if kind == "find":
        result = run(kind, bpy.ops.flamenco_p2p.find_farms)
        farms = [
            {
                "farm_id": farm.farm_id,
                "label": farm.label,
                "server": farm.server,
                "node_count": farm.node_count,
                "api_url": farm.api_url,
            }
            for farm in session.farms
        ]
        for index, farm in enumerate(session.farms):
            if farm.farm_id == prefs.farm_id:
                bpy.ops.flamenco_p2p.use_farm(index=index)
        record(kind, farms=farms, farm_url=prefs.farm_url, **result)
    elif kind == "join":
        bpy.ops.flamenco_p2p.join(code=step["code"])
        prefs.farm_url = ""
        record(kind, farm=prefs.farm_name)
    elif kind == "submit":
        prefs.node_address = step.get("node_address", "")
        scene.flamenco_p2p.include_unsaved = step.get("include_unsaved", True)
        session.job_id = ""
        result = run(kind, bpy.ops.flamenco_p2p.submit, **step.get("arguments", {}))
        record(
            kind,
            job_id=session.job_id,
            status=session.job_status,
            uploaded=session.uploaded_bytes,
            frames_total=session.frames_total,
            **result,
        )
    elif kind == "follow":
        deadline = time.monotonic() + step["timeout"]
        seen = []
        while time.monotonic() < deadline:
            bpy.ops.flamenco_p2p.refresh_job()
            seen.append(round(session.job_progress, 3))
            if session.job_status in ("completed", "failed", "canceled"):
                break
            time.sleep(0.5)
        image = session.thumbnail
        record(
            kind,
            status=session.job_status,
            progress=session.job_progress,
            frames_done=session.frames_done,
            seen=seen,
            thumbnail=list(image.size) if image else None,
        )
record(
    "modules",
    farm_package="flamenco_p2p" in sys.modules,
    zeroconf=getattr(sys.modules.get("zeroconf"), "__file__", None),
    bat=getattr(sys.modules.get("blender_asset_tracer"), "__file__", None),
    copies=[name for name in os.listdir(os.path.dirname(settings["blend"]))
            if "flamenco-p2p" in name],
)
"""


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_addon(tmp_path_factory.mktemp("addon") / f"{ADDON_ID}.zip")


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFarm]:
    with LocalFarm(tmp_path_factory.mktemp("addon-farm"), 3) as running:
        asyncio.run(running.wait_for_roles())
        yield running


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    blend = tmp_path_factory.mktemp("project") / "shot.blend"
    make_textured_scene(blend, "tex/green.png", frames=2)
    add_linked_library(blend, "lib/props.blend")
    return blend


def drive_addon(
    zip_path: Path,
    blend: Path,
    farm: LocalFarm,
    work: Path,
    steps: list[dict[str, Any]],
    frames: str = "1-2",
    output_dir: Path | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """Run the steps in a fresh bpy process; returns their records and its output."""
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results.json"
    settings = {
        "zip": str(zip_path),
        "addon_id": ADDON_ID,
        "blend": str(blend),
        "join_code": load_farm_key(farm.nodes[0].data_dir).invite_code(),
        "frames": frames,
        "output_dir": str(output_dir or work / "frames"),
        "job_name": "addon test",
        "results": str(results),
        "steps": steps,
    }
    completed = subprocess.run(
        [sys.executable, "-c", DRIVER_SCRIPT],
        input=json.dumps(settings),
        text=True,
        env=child_environment(work / "blender"),
        timeout=240,
        capture_output=True,
        check=False,
    )
    output = completed.stdout[-3000:] + completed.stderr[-3000:]
    assert completed.returncode == 0, output
    records: list[dict[str, Any]] = json.loads(results.read_text())
    return records, output


def step(records: list[dict[str, Any]], kind: str, index: int = 0) -> dict[str, Any]:
    """Return the index-th record of one kind of step."""
    return [record for record in records if record["step"] == kind][index]


def job_total(farm: LocalFarm) -> int:
    """Return how many jobs the farm lists."""
    url = farm.api_url(0) + "/api/jobs?limit=1"
    with urllib.request.urlopen(url, timeout=10) as response:
        total: int = json.load(response)["total"]
    return total


def uploads_seen(farm: LocalFarm) -> list[tuple[str, int]]:
    """Return every blob upload the farm's nodes logged, as (sha256, bytes)."""
    return [
        (match[1], int(match[2]))
        for node in farm.nodes
        for match in UPLOAD_LOG.finditer(node.log_text())
    ]


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def check_pixels(frame: Path) -> None:
    with Image.open(frame) as image:
        rgb = image.convert("RGB")
        texture = rgb.getpixel(TEXTURE_PIXEL)
        library = rgb.getpixel(LIBRARY_PIXEL)
    assert isinstance(texture, tuple)
    assert isinstance(library, tuple)
    # A missing texture renders in Blender's magenta, a missing library not at all.
    assert texture[1] > 200, f"{frame.name}: texture pixel {texture}"
    assert texture[0] < 60, f"{frame.name}: texture pixel {texture}"
    assert texture[2] < 60, f"{frame.name}: texture pixel {texture}"
    assert library[2] > 200, f"{frame.name}: library pixel {library}"
    assert library[0] < 60, f"{frame.name}: library pixel {library}"
    assert library[1] < 60, f"{frame.name}: library pixel {library}"


def test_addon_submits_scene_found_by_mdns(
    addon_zip: Path, farm: LocalFarm, scene: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    steps: list[dict[str, Any]] = [
        {"kind": "find"},
        {"kind": "submit"},
        {"kind": "follow", "timeout": 150},
    ]
    records, log = drive_addon(addon_zip, scene, farm, tmp_path / "first", steps)
    install = step(records, "install")
    assert install["status"] == ["FINISHED"], log
    assert install["installed"], log
    assert not install["disabled"], log
    assert install["operator"], log
    assert install["panel"], log
    assert install["reloaded"], log
    key = load_farm_key(farm.nodes[0].data_dir)
    assert step(records, "join")["farm_id"] == key.farm_id
    assert step(records, "join")["token"] == key.api_token

    found = step(records, "find")
    assert found["outcome"] == ["FINISHED"], found["error"]
    ours = [f for f in found["farms"] if f["farm_id"] == key.farm_id]
    assert len(ours) == 1, found["farms"]
    assert ours[0]["node_count"] == 3
    assert ours[0]["label"] == farm.farm
    assert ours[0]["server"] != "none yet"
    assert found["farm_url"] == ours[0]["api_url"]
    assert found["farm_url"].startswith("http://127.101.")

    submitted = step(records, "submit")
    assert submitted["outcome"] == ["FINISHED"], submitted["error"] or log
    assert re.fullmatch(r"[0-9a-f]{32}", submitted["job_id"])
    assert submitted["frames_total"] == 2
    followed = step(records, "follow")
    assert followed["status"] == "completed", (followed, farm.logs())
    assert followed["progress"] == 1.0
    assert followed["frames_done"] == 2
    assert followed["thumbnail"] is not None
    assert followed["thumbnail"][0] > 0

    modules = step(records, "modules")
    assert modules["farm_package"] is False
    assert "extensions" in modules["zeroconf"], modules
    assert "extensions" in modules["bat"], modules
    assert modules["copies"] == [], "the saved copy was left beside the file"

    frames_dir = tmp_path / "first" / "frames"
    frames = sorted(frames_dir.glob("frame_*.png"))
    assert [frame.name for frame in frames] == ["frame_0001.png", "frame_0002.png"]
    for frame in frames:
        check_pixels(frame)
    job = asyncio.run(farm.call(0, "client_job", {"job_id": submitted["job_id"]}))
    settings = job["job"]["settings"]
    assert settings["blender_version"] == "5.0.1"
    assert settings["blend_name"] == "shot.blend"
    assert settings.get("manifest_sha256")
    print(
        f"first submission: {submitted['uploaded']} bytes uploaded,"
        f" {submitted['seconds']:.1f} s to submit,"
        f" {time.monotonic() - started:.1f} s in all"
    )

    # The same scene again, first from a new copy and then as saved on disk.
    # Blender's saves of one scene differ in a few bytes of padding, so a copy
    # sends only its blend file again. The saved file sends nothing the second
    # time.
    before = uploads_seen(farm)
    assert sum(size for _sha, size in before) == submitted["uploaded"]
    steps = [
        {"kind": "submit"},
        {"kind": "submit", "include_unsaved": False},
        {"kind": "submit", "include_unsaved": False},
    ]
    again, log = drive_addon(
        addon_zip, scene, farm, tmp_path / "again", steps, output_dir=frames_dir
    )
    copies = step(again, "submit", 0)
    assert copies["outcome"] == ["FINISHED"], copies["error"] or log
    assert copies["job_id"] != submitted["job_id"]
    saved = step(again, "submit", 1)
    assert saved["outcome"] == ["FINISHED"], saved["error"]
    resubmitted = step(again, "submit", 2)
    assert resubmitted["outcome"] == ["FINISHED"], resubmitted["error"]
    assert resubmitted["uploaded"] == 0
    # The farm logged one upload for each step's blend file and no other.
    sent_again = uploads_seen(farm)[len(before) :]
    assert [size for _sha, size in sent_again] == [
        copies["uploaded"],
        saved["uploaded"],
    ]
    earlier = {sha256 for sha256, _size in before}
    assert not earlier & {sha256 for sha256, _size in sent_again}
    print(
        f"resubmission: copy {copies['uploaded']} bytes, saved file"
        f" {saved['uploaded']} then {resubmitted['uploaded']} bytes,"
        f" {resubmitted['seconds']:.1f} s to submit"
    )


def test_addon_reports_missing_and_unreachable(
    addon_zip: Path, farm: LocalFarm, scene: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    blend = project / "shot.blend"
    blend.write_bytes(scene.read_bytes())
    # The library comes along, the texture does not.
    (project / "lib").mkdir()
    library = scene.parent / "lib" / "props.blend"
    (project / "lib" / "props.blend").write_bytes(library.read_bytes())
    port = unused_port()
    jobs_before = job_total(farm)
    uploads_before = uploads_seen(farm)
    steps: list[dict[str, Any]] = [
        {"kind": "submit", "node_address": farm.api_url(1).removeprefix("http://")},
        {
            "kind": "submit",
            "node_address": f"127.0.0.1:{port}",
            "arguments": {"allow_missing": True},
        },
        {"kind": "join", "code": new_farm_key("elsewhere").invite_code()},
        {"kind": "submit", "arguments": {"allow_missing": True}},
    ]
    records, log = drive_addon(addon_zip, blend, farm, tmp_path / "missing", steps)
    missing = step(records, "submit", 0)
    assert missing["outcome"] == ["ERROR"], log
    assert str(project / "tex" / "green.png") in missing["error"]
    assert "missing" in missing["error"]
    assert missing["job_id"] == ""
    assert uploads_seen(farm) == uploads_before

    unreachable = step(records, "submit", 1)
    assert unreachable["outcome"] == ["ERROR"], log
    error = unreachable["error"]
    assert f"http://127.0.0.1:{port}" in error
    assert "typed node address" in error
    assert "firewall" in error

    # A farm that mDNS does not find: the report names the search.
    assert step(records, "join", 1)["farm"] == "elsewhere"
    not_found = step(records, "submit", 2)
    assert not_found["outcome"] == ["ERROR"], log
    assert "no node of farm 'elsewhere'" in not_found["error"]
    assert "interface 127.0.0.1" in not_found["error"]
    assert "type a node's address" in not_found["error"]
    assert job_total(farm) == jobs_before
