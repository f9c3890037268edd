"""Tests of the capability probe with real child processes."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
from render_helpers import has_gpu_device, write_fake_blender

from flamenco_p2p.render.capabilities import Capabilities, probe_capabilities
from flamenco_p2p.render.controller import RenderBackend
from flamenco_p2p.render.runner import GPU_TYPES


def expected_cores() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.render
def test_capabilities_probe_bpy() -> None:
    capabilities = probe_capabilities(RenderBackend())
    assert capabilities.probe_error is None
    assert capabilities.cpu_cores >= 1
    assert capabilities.cpu_cores == expected_cores()
    assert capabilities.blender_version is not None
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", capabilities.blender_version)
    assert set(capabilities.gpu_types) <= set(GPU_TYPES)
    device_types = {device["type"] for device in capabilities.gpu_devices}
    assert device_types == set(capabilities.gpu_types)
    if not has_gpu_device():
        assert capabilities.gpu_types == ()
        assert capabilities.gpu_devices == ()


@pytest.mark.render
def test_capabilities_probe_blender_executable(tmp_path: Path) -> None:
    """Probe through a fake "blender" script, because no Blender 5.x executable is
    installed here; the script runs --python-expr code with the venv's bpy."""
    executable, argv_log = write_fake_blender(tmp_path)
    backend = RenderBackend(kind="blender", blender_path=str(executable))
    capabilities = probe_capabilities(backend)
    assert capabilities.probe_error is None
    assert capabilities.blender_version is not None
    argv = json.loads(argv_log.read_text().splitlines()[-1])
    assert argv[1:3] == ["-b", "--factory-startup"]
    assert "-Y" in argv
    assert "--python-expr" in argv


def test_capabilities_probe_without_bpy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    python = tmp_path / "python-without-bpy"
    python.write_text("#!/bin/sh\necho \"No module named 'bpy'\" >&2\nexit 1\n")
    python.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="flamenco_p2p.render.capabilities"):
        capabilities = probe_capabilities(RenderBackend(python=str(python)))
    assert capabilities.blender_version is None
    assert capabilities.gpu_types == ()
    assert capabilities.cpu_cores == expected_cores()
    assert capabilities.probe_error is not None
    assert "status 1" in capabilities.probe_error
    assert "No module named 'bpy'" in capabilities.probe_error
    assert "capability probe" in caplog.text


def test_capabilities_probe_missing_program(tmp_path: Path) -> None:
    capabilities = probe_capabilities(RenderBackend(python=str(tmp_path / "nothing")))
    assert capabilities.blender_version is None
    assert capabilities.probe_error is not None
    assert "could not run" in capabilities.probe_error


def test_capabilities_probe_timeout(tmp_path: Path) -> None:
    python = tmp_path / "slow-python"
    python.write_text("#!/bin/sh\nexec sleep 30\n")
    python.chmod(0o755)
    capabilities = probe_capabilities(RenderBackend(python=str(python)), timeout=0.5)
    assert capabilities.blender_version is None
    assert capabilities.probe_error is not None
    assert "timed out" in capabilities.probe_error


def test_capabilities_dict_round_trip() -> None:
    capabilities = Capabilities(
        cpu_cores=16,
        gpu_types=("CUDA", "OPTIX"),
        gpu_devices=(
            {"type": "CUDA", "name": "NVIDIA H200", "id": "CUDA_NVIDIA H200_0000"},
            {"type": "OPTIX", "name": "NVIDIA H200", "id": "OPTIX_NVIDIA H200_0000"},
        ),
        blender_version="5.0.1",
    )
    data = capabilities.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert Capabilities.from_dict(data) == capabilities
    fallback = Capabilities(1, (), (), None, probe_error="no bpy")
    assert Capabilities.from_dict(fallback.to_dict()) == fallback
