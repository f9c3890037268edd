"""Compare frame_path() with bpy's own scene.render.frame_path().

bpy runs in a child process with its config, cache and temp folders in tmp_path,
so it neither writes into the user's Blender setup nor shares state with pytest.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from flamenco_p2p.outputs import KNOWN_IMAGE_EXTENSIONS, frame_path

# find_spec checks for bpy without importing it into the pytest process.
pytestmark = [
    pytest.mark.render,
    pytest.mark.skipif(
        importlib.util.find_spec("bpy") is None, reason="needs the bpy extra"
    ),
]

REPO_ROOT = Path(__file__).resolve().parent.parent

# Reads [[template, frame, file_format, use_file_extension], ...] on stdin and
# prints bpy's frame_path for each, or "ERROR: ..." when bpy raises.
BPY_SCRIPT = r"""
import json, os, sys
import bpy

blend_path, = sys.argv[1:]
bpy.ops.wm.save_as_mainfile(filepath=blend_path)
render = bpy.context.scene.render
results = []
for template, frame, file_format, use_extension in json.load(sys.stdin):
    render.image_settings.file_format = file_format
    render.use_file_extension = use_extension
    render.filepath = template
    try:
        results.append(render.frame_path(frame=frame))
    except Exception as error:
        results.append("ERROR: " + str(error))
print("RESULTS " + json.dumps(results), flush=True)
# bpy 5.0.1 can crash while shutting down; the results are already out.
os._exit(0)
"""

EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "OPEN_EXR": ".exr"}

FIXED_CASES: list[tuple[str, int, str]] = [
    ("//render/shot_", 1, "PNG"),
    ("//render/shot_####.png", 42, "PNG"),
    ("//render/shot_#", 42, "PNG"),
    ("//render/", 1, "PNG"),
    ("//render/shot_####", -3, "PNG"),
    ("//render/shot_####", 10000, "PNG"),
    ("//render/shot_", -3, "PNG"),
    ("//render/shot_", 1048574, "PNG"),
    ("//render/shot_", -1048574, "PNG"),
    ("//render/shot_###", 2147483647, "PNG"),
    ("//r##/shot_", 5, "PNG"),
    ("//r##/shot_##_x_###", 5, "PNG"),
    ("//render/a_#_b_##.png", 7, "PNG"),
    ("//rendu/scène finale_####", 12, "PNG"),
    ("//", 1, "PNG"),
    ("//../up/x_", 1, "PNG"),
    ("//./a/./b/../c/x_", 1, "PNG"),
    ("/abs//dbl/x_", 1, "PNG"),
    ("/x/y/..", 1, "PNG"),
    ("/x/y/.", 1, "PNG"),
    ("//render\\shot_##", 3, "PNG"),
    ("C:\\render\\x_", 1, "PNG"),
    ("//render/x_" + "#" * 20, 7, "PNG"),
    ("//render/shot_####.jpg", 1, "PNG"),
    ("//render/shot_####.PNG", 1, "PNG"),
    ("//render/shot_####.", 1, "PNG"),
    ("//render/shot.png", 1, "PNG"),
    ("//render/x_####.jpeg", 1, "JPEG"),
    ("//render/x_####.tiff", 1, "TIFF"),
    ("//render/x_####.png", 1, "OPEN_EXR"),
    ("//render/{{x}}_####", 1, "PNG"),
    ("//render/{blend_name}_####", 1, "PNG"),
]

# Blender 5.0.1 aborts (free(): invalid pointer) on absolute paths that combine
# repeated separators with "..", such as "/////.." and "/.//_/..", so the random
# templates leave those out.
ALPHABET = [
    "a", "b", "/", "/", ".", "..", "#", "##", "\\", " ", "é", ".png", ".jpg",
    ".exr", ".tiff", ".jpeg", "_", "//", "{{", "}}", "C:", "?",
]  # fmt: skip
FRAMES = [0, 1, -1, 7, 42, -3, 999, 10000, 1048574, -1048574]


def random_cases(count: int, seed: int) -> list[tuple[str, int, str]]:
    """Return templates built from path-like pieces, minus those that crash bpy."""
    rng = random.Random(seed)
    cases: list[tuple[str, int, str]] = []
    while len(cases) < count:
        template = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 10)))
        template = rng.choice(["//", "/", ""]) + template
        unified = template.replace("\\", "/")
        redundant = "//" in unified[2:] or "/./" in unified or unified[:3] == "///"
        if ".." in unified and (redundant or unified.startswith("/./")):
            continue
        cases.append((template, rng.choice(FRAMES), rng.choice(list(EXTENSIONS))))
    return cases


def run_bpy(
    tmp_path: Path, blend_path: Path, cases: list[tuple[str, int, str, bool]]
) -> list[str]:
    """Return bpy's frame_path for each case, computed in a child process."""
    env = dict(os.environ)
    for name in (
        "XDG_CONFIG_HOME",
        "XDG_CACHE_HOME",
        "TMPDIR",
        "BLENDER_USER_RESOURCES",
    ):
        folder = tmp_path / name.lower()
        folder.mkdir(exist_ok=True)
        env[name] = str(folder)
    result = subprocess.run(
        [sys.executable, "-c", BPY_SCRIPT, str(blend_path)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=240,
        check=False,
    )
    for line in result.stdout.splitlines():
        if line.startswith("RESULTS "):
            results: list[str] = json.loads(line.removeprefix("RESULTS "))
            return results
    raise AssertionError(
        f"bpy child exited with {result.returncode} without results: "
        f"{result.stdout[-800:]} {result.stderr[-800:]}"
    )


@pytest.fixture(scope="module")
def blend_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bpy") / "Épisode 01"
    directory.mkdir()
    return directory / "scène finale.blend"


def test_frame_path_matches_bpy(tmp_path: Path, blend_file: Path) -> None:
    cases = FIXED_CASES + random_cases(3000, seed=20250101)
    bpy_cases = [(template, frame, fmt, True) for template, frame, fmt in cases]
    bpy_cases.append(("//render/x_", 1, "PNG", False))
    expected = run_bpy(tmp_path, blend_file, bpy_cases)
    variables = {"blend_name": blend_file.stem}
    mismatches = []
    for (template, frame, fmt, use_extension), blender in zip(
        bpy_cases, expected, strict=True
    ):
        extension = EXTENSIONS[fmt] if use_extension else ""
        ours = frame_path(
            template, frame, str(blend_file.parent), extension, variables=variables
        )
        if ours != blender:
            mismatches.append((template, frame, fmt, blender, ours))
    assert mismatches == []


def test_known_image_extensions_match_bpy(tmp_path: Path, blend_file: Path) -> None:
    candidates = sorted(KNOWN_IMAGE_EXTENSIONS | {".avif", ".gif", ".mov", ".txt"})
    cases = [("/out/x_####" + ext, 1, "OPEN_EXR", True) for ext in candidates]
    results = run_bpy(tmp_path, blend_file, cases)
    for ext, blender in zip(candidates, results, strict=True):
        replaced = blender == "/out/x_0001.exr"
        assert replaced == (ext in KNOWN_IMAGE_EXTENSIONS), (ext, blender)
        assert frame_path("/out/x_####" + ext, 1, extension=".exr") == blender
