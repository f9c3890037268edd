"""Turning command-line options into a blender-render job, checked before it is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flamenco_p2p.errors import InvalidInput
from flamenco_p2p.frames import parse_frames
from flamenco_p2p.jobs.spec import ENGINES
from flamenco_p2p.outputs import split_output, template_warnings

# Blender writes plain files starting with "BLENDER"; compressed ones are gzip
# (before 3.0) or zstd (3.0 and later).
BLEND_MAGICS = (b"BLENDER", b"\x1f\x8b", b"\x28\xb5\x2f\xfd")


def _looks_like_blend(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    return head.startswith(BLEND_MAGICS)


def _output_warnings(output: str, folder: str, name: str, digits: int) -> list[str]:
    """Warn about output names that Blender accepts but that surprise people."""
    if not name:
        # A folder: Blender names frames with 4 digits, more when a frame needs it.
        return []
    warnings = template_warnings(name, digits)
    if "#" not in name and not Path(folder, name).suffix:
        warnings.append(
            f"--output {output!r} makes frames named {name}0001.png in {folder};"
            f" end it with / to make {name} a folder instead"
        )
    return warnings


def build_render_job(
    *,
    blend: Path,
    frames: str,
    chunk: int,
    output: str,
    cwd: Path,
    name: str | None = None,
    priority: int = 50,
    engine: str | None = None,
    samples: int | None = None,
    resolution: int | None = None,
    gpu: str = "none",
) -> tuple[dict[str, Any], list[str]]:
    """Return the job map for client_submit, and warnings to show the user.

    Raises InvalidInput (or FrameSpecError) naming the bad value; no job exists then.
    """
    if blend.is_dir():
        raise InvalidInput(
            f"{str(blend)!r} is a folder; give the path of a .blend file"
        )
    if not blend.is_file():
        raise InvalidInput(f"blend file {str(blend)!r} not found; check the path")
    if blend.stat().st_size == 0:
        raise InvalidInput(f"blend file {str(blend)!r} is empty; save it again")
    frame_list = parse_frames(frames)
    if not 1 <= chunk <= 1000:
        raise InvalidInput(f"--chunk {chunk} is invalid; use 1 to 1000 frames per task")
    output_dir, output_name = split_output(output, str(cwd), str(blend.parent))
    largest = max(abs(f) for f in frame_list)
    warnings = _output_warnings(output, output_dir, output_name, len(str(largest)))
    if not _looks_like_blend(blend):
        warnings.append(
            f"{blend.name} does not start like a blend file; its tasks will fail if"
            " Blender cannot open it"
        )
    overrides: dict[str, Any] = {}
    if engine is not None:
        if engine.upper() not in ENGINES:
            raise InvalidInput(
                f"--engine {engine!r} is invalid; use one of {', '.join(ENGINES)}"
            )
        overrides["engine"] = engine.upper()
    if samples is not None:
        if not 1 <= samples <= 1_000_000:
            raise InvalidInput(f"--samples {samples} is invalid; use 1 to 1000000")
        overrides["samples"] = samples
    if resolution is not None:
        if not 1 <= resolution <= 1000:
            raise InvalidInput(f"--resolution {resolution} is invalid; use 1 to 1000")
        overrides["resolution_percentage"] = resolution
    if gpu != "none":
        overrides["device"] = "GPU"
    job = {
        "name": name or blend.name,
        "job_type": "blender-render",
        "priority": priority,
        "settings": {
            "frames": frames,
            "chunk_size": chunk,
            "output_dir": output_dir,
            "output_name": output_name,
            "overrides": overrides,
        },
        "requirements": {"gpu": gpu, "gpu_types": [], "min_blender": None},
    }
    return job, warnings
