"""Builds a small animated demo scene in a child bpy process.

Every frame of the scene differs visibly: a cube moves and turns, the sun's colour
and strength change, and the camera moves. It renders with Cycles, on the CPU
unless device="GPU".
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from flamenco_p2p.errors import InvalidInput, RenderError
from flamenco_p2p.render.controller import child_environment

logger = logging.getLogger(__name__)

# Seconds allowed for the child. The build took under 1 s with bpy 5.0.1 on a
# 2-core VM, most of it the bpy import, so this leaves room for slow disks.
BUILD_TIMEOUT = 120.0
# Blender file format identifiers that make_demo_scene accepts.
OUTPUT_FORMATS = ("PNG", "JPEG", "TIFF", "OPEN_EXR")

# Runs under a Python with bpy. Reads its settings as JSON from stdin, because the
# Cycles add-on parses sys.argv during the bpy import.
BUILD_SCRIPT = r"""
import json
import math
import sys

settings = json.load(sys.stdin)
import bpy

bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
frames = settings["frames"]
scene.frame_start = 1
scene.frame_end = frames
scene.render.engine = "CYCLES"
scene.cycles.device = settings["device"]
scene.cycles.samples = settings["samples"]
scene.cycles.use_denoising = False
# A fixed sample count, so a samples override sets the render time.
scene.cycles.use_adaptive_sampling = False
scene.render.resolution_x, scene.render.resolution_y = settings["resolution"]
scene.render.resolution_percentage = 100
scene.render.image_settings.file_format = settings["file_format"]
scene.render.filepath = "//render/frame_####"

world = bpy.data.worlds.new("DemoWorld")
world.use_nodes = True
world.node_tree.nodes["Background"].inputs["Color"].default_value = (
    0.05, 0.08, 0.2, 1.0
)
scene.world = world

def material(name, colour):
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    mat.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = colour
    return mat

bpy.ops.mesh.primitive_plane_add(size=12.0, location=(0.0, 0.0, 0.0))
bpy.context.object.data.materials.append(material("Floor", (0.6, 0.6, 0.55, 1.0)))
bpy.ops.mesh.primitive_uv_sphere_add(radius=0.8, location=(-2.0, 1.5, 0.8))
bpy.context.object.data.materials.append(material("Ball", (0.1, 0.6, 0.2, 1.0)))
bpy.ops.mesh.primitive_cube_add(size=1.2, location=(-2.5, 0.0, 0.6))
cube = bpy.context.object
cube.data.materials.append(material("Cube", (0.8, 0.15, 0.1, 1.0)))
cube.keyframe_insert("location", frame=1)
cube.keyframe_insert("rotation_euler", frame=1)
cube.location = (2.5, -0.5, 1.2)
cube.rotation_euler = (0.0, 0.0, math.pi)
cube.keyframe_insert("location", frame=frames)
cube.keyframe_insert("rotation_euler", frame=frames)

sun_data = bpy.data.lights.new("Sun", type="SUN")
sun = bpy.data.objects.new("Sun", sun_data)
scene.collection.objects.link(sun)
sun.rotation_euler = (0.7, 0.2, 0.5)
sun_data.energy = 1.0
sun_data.color = (1.0, 0.9, 0.7)
sun_data.keyframe_insert("energy", frame=1)
sun_data.keyframe_insert("color", frame=1)
sun_data.energy = 5.0
sun_data.color = (0.6, 0.7, 1.0)
sun_data.keyframe_insert("energy", frame=frames)
sun_data.keyframe_insert("color", frame=frames)

camera_data = bpy.data.cameras.new("Camera")
camera = bpy.data.objects.new("Camera", camera_data)
scene.collection.objects.link(camera)
scene.camera = camera
camera.location = (0.0, -9.0, 4.0)
camera.rotation_euler = (math.radians(68.0), 0.0, 0.0)
camera.keyframe_insert("location", frame=1)
camera.location = (1.5, -8.0, 4.5)
camera.keyframe_insert("location", frame=frames)

bpy.context.preferences.filepaths.save_version = 0
bpy.ops.wm.save_as_mainfile(filepath=settings["path"], compress=True)
print("demo scene saved to", settings["path"])
"""


def make_demo_scene(
    path: Path,
    *,
    frames: int = 12,
    resolution: tuple[int, int] = (160, 90),
    samples: int = 8,
    python: str = sys.executable,
    file_format: str = "PNG",
    device: str = "CPU",
) -> None:
    """Build the demo scene with a bpy child process and save it to path.

    device is the Cycles device saved in the file ("CPU" or "GPU").
    Raises RenderError with the child's last output when it fails.
    """
    check_settings(frames, resolution, samples, file_format)
    if device not in ("CPU", "GPU"):
        raise InvalidInput(f"invalid device {device!r}; use 'CPU' or 'GPU'")
    settings = {
        "path": str(Path(path).absolute()),
        "frames": frames,
        "resolution": list(resolution),
        "samples": samples,
        "file_format": file_format,
        "device": device,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flamenco-demo-") as scratch:
        environment = child_environment(Path(scratch))
        try:
            result = subprocess.run(
                [python, "-c", BUILD_SCRIPT],
                input=json.dumps(settings),
                capture_output=True,
                text=True,
                env=environment,
                cwd=scratch,
                timeout=BUILD_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RenderError(f"cannot build demo scene '{path}': {exc}") from exc
    if result.returncode != 0 or not Path(path).is_file():
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise RenderError(
            f"cannot build demo scene '{path}' with {python!r}: exit status "
            f"{result.returncode}; output: {' | '.join(tail)}; check that this "
            "Python has the bpy module"
        )
    logger.info("demo scene saved to '%s' (%d frames)", path, frames)


def check_settings(
    frames: int, resolution: tuple[int, int], samples: int, file_format: str
) -> None:
    """Raise InvalidInput naming the first invalid demo scene setting."""
    if frames < 1:
        raise InvalidInput(f"invalid frames {frames}; give at least 1")
    if len(resolution) != 2 or min(resolution) < 4:
        raise InvalidInput(
            f"invalid resolution {resolution}; give (width, height) >= 4"
        )
    if samples < 1:
        raise InvalidInput(f"invalid samples {samples}; give at least 1")
    if file_format not in OUTPUT_FORMATS:
        raise InvalidInput(
            f"invalid file_format {file_format!r}; use one of {list(OUTPUT_FORMATS)}"
        )


def make_text_blend(path: Path) -> None:
    """Write a text file, for tests that feed Blender a file that is not a blend."""
    Path(path).write_text("this is a text file, not a Blender file\n", encoding="utf-8")
