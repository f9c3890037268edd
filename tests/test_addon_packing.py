"""The add-on's packing and submission steps on real blend files, outside Blender.

blender-asset-tracer comes from the wheel that the add-on bundles, imported
straight from the cached wheel file (it is pure Python), so these tests use the
same BAT as the add-on without installing it into the test environment.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flamenco_p2p_submit import packing, submission
from flamenco_p2p_submit.api import FarmUnreachable
from flamenco_p2p_submit.background import Cancelled, Progress
from render_helpers import add_linked_library, make_textured_scene

from flamenco_p2p.addon_build import fetch_wheels

pytestmark = pytest.mark.render

BAT_WHEEL = "blender_asset_tracer-1.23-py3-none-any.whl"


@pytest.fixture(scope="module", autouse=True)
def bundled_bat() -> Iterator[None]:
    wheel = str(fetch_wheels()[BAT_WHEEL])
    sys.path.insert(0, wheel)
    try:
        yield
    finally:
        sys.path.remove(wheel)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("packing")
    make_textured_scene(folder / "shot.blend", "tex/green.png")
    add_linked_library(folder / "shot.blend", "lib/props.blend")
    shutil.rmtree(folder / ".blender-scratch")
    return folder


def test_pack_brings_texture_and_library(project: Path, tmp_path: Path) -> None:
    copy = project / ".shot.copy.blend"
    shutil.copy(project / "shot.blend", copy)
    try:
        packed = packing.pack_blend(copy, project, tmp_path / "pack", "shot.blend")
    finally:
        copy.unlink()
    assert packed.blend_relative == "shot.blend"
    assert packed.missing == ()
    files = sorted(
        path.relative_to(packed.root).as_posix()
        for path in packed.root.rglob("*")
        if path.is_file()
    )
    assert files == ["lib/props.blend", "pack-info.txt", "shot.blend", "tex/green.png"]


def test_missing_texture_found_by_path(project: Path, tmp_path: Path) -> None:
    shutil.copytree(project, tmp_path / "project")
    texture = tmp_path / "project" / "tex" / "green.png"
    texture.unlink()
    blend = tmp_path / "project" / "shot.blend"
    assert packing.find_missing_files(blend) == [texture]
    request = submission.SubmitRequest(
        blend=blend,
        blend_name="shot.blend",
        project=blend.parent,
        options=submission.JobOptions("n", "1", 1, 50, "/tmp", "", "none", "5.0.1"),
        base_url="http://127.0.0.1:9",
        token="token",
    )
    with pytest.raises(submission.MissingFilesError) as caught:
        submission.run_submission(request, Progress())
    assert caught.value.paths == [texture]
    assert str(texture) in str(caught.value)
    # Going on anyway reaches the network, where nothing listens on port 9.
    allowed = dataclasses.replace(request, allow_missing=True)
    with pytest.raises(FarmUnreachable, match=r"http://127\.0\.0\.1:9 "):
        submission.run_submission(allowed, Progress())


def test_pack_stops_when_cancelled(project: Path, tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        packing.pack_blend(
            project / "shot.blend", project, tmp_path / "pack", "shot.blend", cancel
        )
