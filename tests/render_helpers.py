"""Helpers shared by the render tests: demo files, event logs, process checks and a
fake Blender executable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from flamenco_p2p.render.controller import RenderEvent, child_environment
from flamenco_p2p.render.demo_scene import make_demo_scene

# Tiny renders, because the test machine has 2 shared cores.
TEST_RESOLUTION = (64, 36)
TEST_SAMPLES = 4


def build_demo_blend(
    directory: Path, *, frames: int = 4, file_format: str = "PNG", device: str = "CPU"
) -> Path:
    """Build a tiny demo scene in directory and return its path."""
    path = directory / "demo.blend"
    make_demo_scene(
        path,
        frames=frames,
        resolution=TEST_RESOLUTION,
        samples=TEST_SAMPLES,
        file_format=file_format,
        device=device,
    )
    return path


class EventLog:
    """Collects RenderEvents; pass the instance as render()'s on_event."""

    def __init__(self) -> None:
        self.events: list[RenderEvent] = []

    def __call__(self, event: RenderEvent) -> None:
        self.events.append(event)

    def of_kind(self, kind: str) -> list[RenderEvent]:
        """Return the events of one kind, in arrival order."""
        return [event for event in self.events if event.kind == kind]


def blender_frame_paths(
    scratch: Path, output_dir: Path, output_name: str, frames: Sequence[int]
) -> list[str]:
    """Return the paths that bpy's own frame_path gives, from a separate bpy child."""
    script = (
        "import json, os, sys\n"
        "settings = json.load(sys.stdin)\n"
        "import bpy\n"
        "render = bpy.context.scene.render\n"
        "render.filepath = os.path.join(settings['dir'], settings['name'])\n"
        "paths = [render.frame_path(frame=f) for f in settings['frames']]\n"
        "print('PATHS ' + json.dumps(paths), flush=True)\n"
    )
    settings = {"dir": str(output_dir), "name": output_name, "frames": list(frames)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(settings),
        capture_output=True,
        text=True,
        env=child_environment(scratch),
        timeout=60,
        check=True,
    )
    for line in result.stdout.splitlines():
        if line.startswith("PATHS "):
            paths: list[str] = json.loads(line.removeprefix("PATHS "))
            return paths
    raise AssertionError(f"bpy child printed no paths: {result.stdout[-500:]}")


# Device nodes of NVIDIA (CUDA, OptiX), AMD (HIP) and WSL GPU drivers.
GPU_DEVICE_NODES = ("/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def has_gpu_device() -> bool:
    """Return whether this machine has a GPU device node that Cycles could use."""
    return any(Path(node).exists() for node in GPU_DEVICE_NODES)


def process_exists(pid: int) -> bool:
    """Return whether a process with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = read_stat_fields(pid)
    return state is not None and state[0] != "Z"


def read_stat_fields(pid: int) -> list[str] | None:
    """Return the /proc/PID/stat fields after the command name, or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces.
    return text[text.rindex(")") + 2 :].split()


def session_members(session_id: int) -> list[int]:
    """Return the live pids whose session id is session_id, scanning /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = read_stat_fields(int(entry))
        # Fields after the name: state, ppid, pgrp, session, ...
        if fields is not None and fields[0] != "Z" and int(fields[3]) == session_id:
            members.append(int(entry))
    return members


def write_fake_blender(directory: Path) -> tuple[Path, Path]:
    """Write a stand-in Blender executable and return (its path, its argv log).

    It appends its argv as a JSON line to the log and checks the options that the
    controller must pass. Like Blender, it prints a banner on stdout and has bpy
    loaded (from the test interpreter) before it runs the --python script or the
    --python-expr code, with its full argv in sys.argv.
    """
    executable = directory / "blender"
    argv_log = directory / "blender-argv.jsonl"
    executable.write_text(FAKE_BLENDER.format(python=sys.executable, log=str(argv_log)))
    executable.chmod(0o755)
    return executable, argv_log


FAKE_BLENDER = '''#!{python}
"""Fake Blender executable for tests; no real Blender 5.x is installed."""
import json
import runpy
import sys

argv = list(sys.argv)
with open({log!r}, "a", encoding="utf-8") as log:
    log.write(json.dumps(argv) + "\\n")
if "-b" not in argv or "--factory-startup" not in argv:
    print("fake blender: expected -b and --factory-startup", file=sys.stderr)
    sys.exit(2)
print("Blender 5.0.1 (fake executable for tests)", flush=True)
end = argv.index("--") if "--" in argv else len(argv)
sys.argv = argv[:1]
import bpy  # a real Blender has bpy loaded before it runs scripts
sys.argv = argv
if "--python" in argv[:end]:
    runpy.run_path(argv[argv.index("--python") + 1], run_name="__main__")
elif "--python-expr" in argv[:end]:
    exec(argv[argv.index("--python-expr") + 1], {{"__name__": "__main__"}})
else:
    print("fake blender: expected --python or --python-expr", file=sys.stderr)
    sys.exit(2)
'''


def render_children(root: Path) -> list[int]:
    """Return the pids of render children whose temporary folder lies under root.

    A render child is a runner.py process; each node points its TMPDIR into the
    node's scratch folder, under the node's data directory.
    """
    prefix = f"TMPDIR={root}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        variables = environ.split(b"\0")
        if b"runner.py" in cmdline and any(v.startswith(prefix) for v in variables):
            found.append(int(entry.name))
    return found


TEXTURED_SCENE_SCRIPT = r"""
import json
import sys

settings = json.load(sys.stdin)
import bpy

bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.frame_start, scene.frame_end = 1, settings["frames"]
scene.render.engine = "CYCLES"
scene.cycles.samples = 1
scene.cycles.use_denoising = False
scene.render.resolution_x, scene.render.resolution_y = 32, 18
scene.render.resolution_percentage = 100
scene.render.filepath = "//render/frame_####"
# Standard keeps the texture's green as it is; the default view desaturates it.
scene.view_settings.view_transform = "Standard"
bpy.ops.mesh.primitive_plane_add(size=4)
plane = bpy.context.object
material = bpy.data.materials.new("Textured")
material.use_nodes = True
nodes = material.node_tree.nodes
links = material.node_tree.links
nodes.clear()
image = nodes.new("ShaderNodeTexImage")
image.image = bpy.data.images.load(settings["texture"], check_existing=False)
# A relative path, as an artist's project has: the farm must bring the file.
image.image.filepath = "//" + settings["texture_relative"]
emission = nodes.new("ShaderNodeEmission")
output = nodes.new("ShaderNodeOutputMaterial")
links.new(image.outputs["Color"], emission.inputs["Color"])
links.new(emission.outputs["Emission"], output.inputs["Surface"])
plane.data.materials.append(material)
bpy.ops.object.camera_add(location=(0, 0, 3))
scene.camera = bpy.context.object
bpy.ops.wm.save_as_mainfile(filepath=settings["blend"], relative_remap=True)
"""


def make_textured_scene(blend: Path, texture_relative: str, frames: int = 1) -> Path:
    """Save a scene whose only visible surface shows a solid green image texture.

    The texture is written at texture_relative beside the blend file and named
    by a relative path, so a render without it shows Blender's magenta.
    Returns the texture's path.
    """
    from PIL import Image

    texture = blend.parent / texture_relative
    texture.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (0, 255, 0)).save(texture)
    settings = {
        "blend": str(blend),
        "texture": str(texture),
        "texture_relative": texture_relative,
        "frames": frames,
    }
    subprocess.run(
        [sys.executable, "-c", TEXTURED_SCENE_SCRIPT],
        input=json.dumps(settings),
        text=True,
        check=True,
        env=child_environment(blend.parent / ".blender-scratch"),
        timeout=120,
        capture_output=True,
    )
    return texture


LIBRARY_SCRIPT = r"""
import json
import sys

settings = json.load(sys.stdin)
import bpy

# The library: one blue cube in a collection named Props.
bpy.ops.wm.read_factory_settings(use_empty=True)
props = bpy.data.collections.new("Props")
bpy.context.scene.collection.children.link(props)
bpy.ops.mesh.primitive_cube_add(size=0.5, location=(0.7, 0.0, 0.5))
cube = bpy.context.object
for collection in cube.users_collection:
    collection.objects.unlink(cube)
props.objects.link(cube)
material = bpy.data.materials.new("Blue")
material.use_nodes = True
nodes = material.node_tree.nodes
nodes.clear()
emission = nodes.new("ShaderNodeEmission")
emission.inputs["Color"].default_value = (0.0, 0.0, 1.0, 1.0)
output = nodes.new("ShaderNodeOutputMaterial")
material.node_tree.links.new(emission.outputs["Emission"], output.inputs["Surface"])
cube.data.materials.append(material)
bpy.ops.wm.save_as_mainfile(filepath=settings["library"])

# The shot links the collection by a relative path and shows it.
bpy.ops.wm.open_mainfile(filepath=settings["blend"])
with bpy.data.libraries.load(settings["library"], link=True, relative=True) as (
    source,
    target,
):
    target.collections = ["Props"]
instance = bpy.data.objects.new("Props", None)
instance.instance_type = "COLLECTION"
instance.instance_collection = target.collections[0]
bpy.context.scene.collection.objects.link(instance)
bpy.ops.wm.save_mainfile()
"""


def add_linked_library(blend: Path, library_relative: str) -> Path:
    """Save a library with a blue cube beside blend and link it into the scene.

    The cube sits right of the centre of make_textured_scene's camera view, and
    the shot names the library by a relative path. Returns the library's path.
    """
    library = blend.parent / library_relative
    library.parent.mkdir(parents=True, exist_ok=True)
    settings = {"blend": str(blend), "library": str(library)}
    subprocess.run(
        [sys.executable, "-c", LIBRARY_SCRIPT],
        input=json.dumps(settings),
        text=True,
        check=True,
        env=child_environment(blend.parent / ".blender-scratch"),
        timeout=120,
        capture_output=True,
    )
    return library
