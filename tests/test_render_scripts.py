"""Scripts embedded in blend files run only where the node allows it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flamenco_p2p.render.controller import (
    RenderBackend,
    RenderProcess,
    RenderRequest,
    child_environment,
)
from flamenco_p2p.render.demo_scene import make_demo_scene

pytestmark = pytest.mark.render

ADD_SCRIPT = """
import sys
import bpy
blend, marker = sys.argv[-2:]
bpy.ops.wm.open_mainfile(filepath=blend, load_ui=False)
text = bpy.data.texts.new("marker.py")
text.write(f"open({marker!r}, 'w').write('ran')\\n")
# A registered text block runs when the file is opened with scripts allowed.
text.use_module = True
bpy.context.preferences.filepaths.save_version = 0
bpy.ops.wm.save_as_mainfile(filepath=blend)
"""


def blend_with_script(tmp_path: Path, marker: Path) -> Path:
    blend = tmp_path / "scripted.blend"
    make_demo_scene(blend, frames=1)
    subprocess.run(
        [sys.executable, "-c", ADD_SCRIPT, str(blend), str(marker)],
        env=child_environment(tmp_path / "maker"),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return blend


@pytest.mark.parametrize("allowed", [False, True])
async def test_render_scripts_follow_setting(tmp_path: Path, allowed: bool) -> None:
    marker = tmp_path / "script-ran.txt"
    blend = blend_with_script(tmp_path, marker)
    process = RenderProcess(RenderBackend(allow_scripts=allowed), tmp_path / "scratch")
    request = RenderRequest(
        blend_path=str(blend),
        frames=(1,),
        output_dir=str(tmp_path / "out"),
        output_name="",
    )
    try:
        outputs = await process.render(request, lambda event: None)
    finally:
        await process.close()
    assert len(outputs) == 1
    assert marker.exists() is allowed
