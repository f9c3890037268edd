"""Tests for job specs, their validation and their compilation into tasks."""

from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest

from flamenco_p2p.errors import FrameSpecError, InvalidInput
from flamenco_p2p.jobs.compiler import TaskSpec, compile_job
from flamenco_p2p.jobs.spec import JobSpec, Requirements

SHA = "ab" * 32


def render_settings(**changes: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "blend_sha256": SHA,
        "blend_size": 1234,
        "blend_name": "scène finale.blend",
        "frames": "1-10",
        "chunk_size": 3,
        "output_dir": "/proj/Épisode 01/render",
        "output_name": "shot_####",
        "overrides": {"engine": "CYCLES", "samples": 16},
    }
    settings.update(changes)
    return settings


def render_spec(**changes: Any) -> JobSpec:
    return JobSpec(
        name="shot 010",
        job_type="blender-render",
        priority=60,
        settings=render_settings(**changes),
        requirements=Requirements(gpu="prefer", gpu_types=("OPTIX", "CUDA")),
        submitter_node="node-a",
    )


def sleep_spec(**settings: Any) -> JobSpec:
    return JobSpec(
        name="sleepy",
        job_type="sleep",
        settings={"tasks": 4, "duration": 0.5, **settings},
        submitter_node="node-a",
    )


def test_compile_job_render_chunks() -> None:
    tasks = compile_job(render_spec())
    assert [task.frames for task in tasks] == [(1, 2, 3), (4, 5, 6), (7, 8, 9), (10,)]
    assert [task.index for task in tasks] == [0, 1, 2, 3]
    assert tasks[0].name == "render 1-3"
    assert tasks[3].name == "render 10"
    assert tasks[1].payload == {"chunk": 1, "chunks": 4}


def test_compile_job_render_keeps_dispatch_order() -> None:
    tasks = compile_job(render_spec(frames="10-1,20", chunk_size=4))
    assert [task.frames for task in tasks] == [
        (10, 9, 8, 7),
        (6, 5, 4, 3),
        (2, 1, 20),
    ]


def test_compile_job_render_negative_frames() -> None:
    tasks = compile_job(render_spec(frames="-3-3", chunk_size=5))
    assert [task.frames for task in tasks] == [(-3, -2, -1, 0, 1), (2, 3)]
    assert tasks[0].name == "render -3-1"


def test_compile_job_render_bad_frames_raise() -> None:
    with pytest.raises(FrameSpecError) as caught:
        compile_job(render_spec(frames="1-10,x"))
    assert caught.value.part == "x"


def test_compile_job_sleep_tasks() -> None:
    tasks = compile_job(sleep_spec(fail_tasks=[2]))
    assert len(tasks) == 4
    assert [task.payload for task in tasks] == [
        {"duration": 0.5, "fail": False},
        {"duration": 0.5, "fail": False},
        {"duration": 0.5, "fail": True},
        {"duration": 0.5, "fail": False},
    ]
    assert all(task.frames == () for task in tasks)
    assert tasks[2] == TaskSpec(2, "sleep 2", (), {"duration": 0.5, "fail": True})


def test_compile_job_unknown_type_lists_known() -> None:
    spec = sleep_spec()
    # A spec that a newer node built; construction of such a spec is rejected here.
    object.__setattr__(spec, "job_type", "bake")
    with pytest.raises(InvalidInput) as caught:
        compile_job(spec)
    message = str(caught.value)
    assert "'bake'" in message
    assert "blender-render" in message
    assert "sleep" in message


def test_job_spec_rejects_unknown_type() -> None:
    with pytest.raises(InvalidInput) as caught:
        JobSpec(name="x", job_type="bake", submitter_node="n")
    assert "job_type" in str(caught.value)
    assert "blender-render, sleep" in str(caught.value)


def test_job_spec_round_trip_through_msgpack() -> None:
    spec = render_spec()
    packed = msgpack.packb(spec.to_dict())
    restored = JobSpec.from_dict(msgpack.unpackb(packed))
    assert restored == spec
    assert restored.requirements.gpu_types == ("CUDA", "OPTIX")


def test_job_spec_sleep_round_trip() -> None:
    spec = sleep_spec(fail_tasks=[3, 1, 3])
    assert spec.settings["fail_tasks"] == [1, 3]
    assert JobSpec.from_dict(spec.to_dict()) == spec


def test_job_spec_normalizes_render_settings() -> None:
    spec = render_spec(blend_sha256=SHA.upper())
    assert spec.settings["blend_sha256"] == SHA
    minimal = {
        key: value
        for key, value in render_settings().items()
        if key not in ("chunk_size", "output_name", "overrides")
    }
    spec = JobSpec("n", "blender-render", settings=minimal, submitter_node="node")
    assert spec.settings["chunk_size"] == 1
    assert spec.settings["output_name"] == ""
    assert spec.settings["overrides"] == {}


def test_job_spec_settings_copied() -> None:
    settings = render_settings()
    spec = JobSpec("n", "blender-render", settings=settings, submitter_node="node")
    settings["frames"] = "1-1000"
    assert spec.settings["frames"] == "1-10"
    spec.to_dict()["settings"]["overrides"]["samples"] = 1
    assert spec.settings["overrides"]["samples"] == 16


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"blend_sha256": "abc"}, "settings.blend_sha256"),
        ({"blend_sha256": 5}, "settings.blend_sha256"),
        ({"blend_size": 0}, "settings.blend_size"),
        ({"blend_size": True}, "settings.blend_size"),
        ({"blend_name": "dir/x.blend"}, "settings.blend_name"),
        ({"blend_name": ".."}, "settings.blend_name"),
        ({"frames": ""}, "settings.frames"),
        ({"frames": 12}, "settings.frames"),
        ({"chunk_size": 0}, "settings.chunk_size"),
        ({"chunk_size": 1001}, "settings.chunk_size"),
        ({"chunk_size": 2.5}, "settings.chunk_size"),
        ({"output_dir": "relative/dir"}, "settings.output_dir"),
        ({"output_name": "sub/shot_"}, "settings.output_name"),
        ({"overrides": {"engine": "LUXCORE"}}, "settings.overrides.engine"),
        ({"overrides": {"samples": 0}}, "settings.overrides.samples"),
        ({"overrides": {"samples": 1_000_001}}, "settings.overrides.samples"),
        ({"overrides": {"resolution_percentage": 1001}}, "resolution_percentage"),
        ({"overrides": {"device": "TPU"}}, "settings.overrides.device"),
        ({"overrides": {"allow_scripts": True}}, "allow_scripts"),
        ({"allow_scripts": True}, "allow_scripts"),
        ({"overrides": []}, "settings.overrides"),
        ({"blender_version": "5"}, "settings.blender_version"),
        ({"blender_version": "5.0.1 LTS"}, "settings.blender_version"),
        ({"blender_version": 5.0}, "settings.blender_version"),
    ],
)
def test_job_spec_rejects_bad_render_setting(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        render_spec(**changes)
    assert field in str(caught.value)


def test_job_spec_keeps_blender_version() -> None:
    spec = render_spec(blender_version="5.0.1")
    assert spec.settings["blender_version"] == "5.0.1"
    assert JobSpec.from_dict(spec.to_dict()) == spec
    assert "blender_version" not in render_spec().settings


def test_job_spec_accepts_windows_output_dir() -> None:
    spec = render_spec(output_dir="D:\\renders\\shot")
    assert spec.settings["output_dir"] == "D:\\renders\\shot"


def test_job_spec_rejects_missing_render_setting() -> None:
    settings = render_settings()
    del settings["blend_sha256"]
    with pytest.raises(InvalidInput) as caught:
        JobSpec("n", "blender-render", settings=settings, submitter_node="node")
    assert "settings.blend_sha256" in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"tasks": 0, "duration": 1}, "settings.tasks"),
        ({"tasks": 1_000_001, "duration": 1}, "settings.tasks"),
        ({"tasks": 2, "duration": -1}, "settings.duration"),
        ({"tasks": 2, "duration": 3601}, "settings.duration"),
        ({"tasks": 2, "duration": float("nan")}, "settings.duration"),
        ({"tasks": 2, "duration": "1"}, "settings.duration"),
        ({"tasks": 2, "duration": 1, "fail_tasks": [2]}, "settings.fail_tasks"),
        ({"tasks": 2, "duration": 1, "fail_tasks": 1}, "settings.fail_tasks"),
        ({"tasks": 2, "duration": 1, "extra": 1}, "extra"),
    ],
)
def test_job_spec_rejects_bad_sleep_setting(
    settings: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        JobSpec("n", "sleep", settings=settings, submitter_node="node")
    assert field in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 257}, "name"),
        ({"priority": 101}, "priority"),
        ({"priority": -1}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"submitter_node": ""}, "submitter_node"),
    ],
)
def test_job_spec_rejects_bad_field(kwargs: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {
        "name": "job",
        "job_type": "sleep",
        "settings": {"tasks": 1, "duration": 0},
        "submitter_node": "node",
        **kwargs,
    }
    with pytest.raises(InvalidInput) as caught:
        JobSpec(**values)
    assert field in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"gpu": "maybe"}, "requirements.gpu"),
        ({"gpu": "require", "gpu_types": ("VULKAN",)}, "requirements.gpu_types"),
        ({"gpu": "none", "gpu_types": ("CUDA",)}, "requirements.gpu_types"),
        ({"min_blender": "four"}, "requirements.min_blender"),
        ({"min_blender": "4"}, "requirements.min_blender"),
    ],
)
def test_requirements_reject_bad_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        Requirements(**kwargs)
    assert field in str(caught.value)


def test_requirements_normalize_gpu_types() -> None:
    requirements = Requirements(gpu="require", gpu_types=("optix", "CUDA", "cuda"))
    assert requirements.gpu_types == ("CUDA", "OPTIX")
    assert Requirements(min_blender="4.2.1").min_blender == "4.2.1"


def test_job_spec_from_dict_rejects_bad_input() -> None:
    good = sleep_spec().to_dict()
    with pytest.raises(InvalidInput, match=r"job\.name"):
        JobSpec.from_dict({key: value for key, value in good.items() if key != "name"})
    with pytest.raises(InvalidInput, match="unknown keys"):
        JobSpec.from_dict({**good, "colour": "red"})
    with pytest.raises(InvalidInput, match=r"requirements\.gpu_types"):
        JobSpec.from_dict({**good, "requirements": {"gpu_types": "CUDA"}})
    with pytest.raises(InvalidInput, match="settings"):
        JobSpec.from_dict({**good, "settings": []})
