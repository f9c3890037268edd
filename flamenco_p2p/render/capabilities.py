"""Probes what a node can render: Blender version, CPU cores and Cycles GPUs.

The probe runs in a child process, because importing bpy costs about 256 MB that
the worker should not keep, and because a Blender executable can only be queried by
running it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flamenco_p2p.render.controller import RenderBackend, child_environment
from flamenco_p2p.render.runner import GPU_TYPES

logger = logging.getLogger(__name__)

# Prefix of the probe's result line, because Blender writes its own lines to stdout.
RESULT_PREFIX = "FLAMENCO_P2P_CAPABILITIES "

PROBE_SCRIPT = r"""
import json
import os
import sys

sys.argv = sys.argv[:1]
import bpy
import _cycles

# NOTE: available_devices() entries carry no memory size in bpy 5.0.1.
devices = []
for kind in GPU_TYPES:
    # available_devices(kind) also lists the CPU, so filter on the type field.
    for entry in _cycles.available_devices(kind):
        if entry[1] == kind:
            devices.append({"type": kind, "name": str(entry[0]), "id": str(entry[2])})
affinity = None
if hasattr(os, "sched_getaffinity"):
    affinity = len(os.sched_getaffinity(0))
result = {
    "blender_version": bpy.app.version_string,
    "cpu_count": os.cpu_count(),
    "affinity": affinity,
    "gpu_devices": devices,
}
print(RESULT_PREFIX + json.dumps(result), flush=True)
""".replace("GPU_TYPES", repr(GPU_TYPES)).replace("RESULT_PREFIX", repr(RESULT_PREFIX))


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a node can render with; probe_error is why the probe failed, or None."""

    cpu_cores: int
    gpu_types: tuple[str, ...]
    gpu_devices: tuple[dict[str, Any], ...]
    blender_version: str | None
    probe_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-compatible dict."""
        return {
            "cpu_cores": self.cpu_cores,
            "gpu_types": list(self.gpu_types),
            "gpu_devices": [dict(device) for device in self.gpu_devices],
            "blender_version": self.blender_version,
            "probe_error": self.probe_error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Capabilities:
        """Build Capabilities from to_dict() output."""
        return cls(
            cpu_cores=int(data["cpu_cores"]),
            gpu_types=tuple(str(kind) for kind in data.get("gpu_types", ())),
            gpu_devices=tuple(dict(device) for device in data.get("gpu_devices", ())),
            blender_version=data.get("blender_version"),
            probe_error=data.get("probe_error"),
        )


def local_cpu_cores() -> int:
    """Return the cores this process may run on (affinity mask, else cpu_count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def probe_argv(backend: RenderBackend) -> list[str]:
    """Return the argument list that runs the probe script for a backend."""
    if backend.kind == "bpy":
        return [backend.python, "-c", PROBE_SCRIPT]
    assert backend.blender_path is not None  # checked in RenderBackend
    return [
        backend.blender_path,
        "-b",
        "--factory-startup",
        "-Y",
        "--python-exit-code",
        "1",
        "--python-expr",
        PROBE_SCRIPT,
    ]


def probe_capabilities(backend: RenderBackend, timeout: float = 60) -> Capabilities:
    """Run the probe in a child process and return the node's capabilities.

    When the probe fails (no bpy, no Blender, a crash or a timeout) this returns
    CPU-only capabilities with blender_version None and the reason in probe_error,
    and logs a warning.
    """
    argv = probe_argv(backend)
    with tempfile.TemporaryDirectory(prefix="flamenco-probe-") as scratch:
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                env=child_environment(Path(scratch)),
                cwd=scratch,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return fallback(argv[0], f"probe timed out after {timeout} s")
        except OSError as exc:
            return fallback(argv[0], f"probe could not run: {exc}")
    for line in result.stdout.splitlines():
        if not line.startswith(RESULT_PREFIX):
            continue
        try:
            return parse_probe(line.removeprefix(RESULT_PREFIX))
        except (ValueError, KeyError, TypeError) as exc:
            return fallback(argv[0], f"probe sent an invalid result {line!r}: {exc}")
    tail = " | ".join((result.stdout + result.stderr).strip().splitlines()[-3:])
    return fallback(
        argv[0], f"probe exited with status {result.returncode}: {tail or 'no output'}"
    )


def parse_probe(payload: str) -> Capabilities:
    """Turn the probe's JSON result into Capabilities."""
    data = json.loads(payload)
    cores = data.get("affinity") or data.get("cpu_count") or 1
    devices = tuple(dict(device) for device in data.get("gpu_devices", ()))
    gpu_types = tuple(
        kind for kind in GPU_TYPES if any(d["type"] == kind for d in devices)
    )
    capabilities = Capabilities(
        cpu_cores=int(cores),
        gpu_types=gpu_types,
        gpu_devices=devices,
        blender_version=str(data["blender_version"]),
    )
    logger.info(
        "capabilities probed: Blender %s, %d CPU cores, GPU types %s",
        capabilities.blender_version,
        capabilities.cpu_cores,
        list(gpu_types),
    )
    return capabilities


def fallback(program: str, reason: str) -> Capabilities:
    """Return CPU-only capabilities after a failed probe, and log why."""
    logger.warning(
        "capability probe with %r failed, so the node reports CPU only and no "
        "Blender: %s",
        program,
        reason,
    )
    return Capabilities(
        cpu_cores=local_cpu_cores(),
        gpu_types=(),
        gpu_devices=(),
        blender_version=None,
        probe_error=reason,
    )
