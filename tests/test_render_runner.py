"""Tests of RenderProcess with real bpy renders in a real child process."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from render_helpers import (
    TEST_RESOLUTION,
    EventLog,
    blender_frame_paths,
    build_demo_blend,
    has_gpu_device,
    write_fake_blender,
)

from flamenco_p2p.errors import ConfigError, InvalidInput, RenderError
from flamenco_p2p.render.controller import (
    RUNNER_SCRIPT,
    RenderBackend,
    RenderProcess,
    RenderRequest,
)
from flamenco_p2p.render.demo_scene import make_text_blend
from flamenco_p2p.render.validate import validate_output


@pytest.fixture(scope="module")
def demo_blend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_blend(tmp_path_factory.mktemp("demo"))


@pytest.fixture
async def render_process(tmp_path: Path) -> AsyncIterator[RenderProcess]:
    process = RenderProcess(RenderBackend(), tmp_path / "scratch")
    yield process
    await process.close()


def request_for(
    blend: Path, frames: tuple[int, ...], output_dir: Path, output_name: str = ""
) -> RenderRequest:
    return RenderRequest(
        blend_path=str(blend),
        frames=frames,
        output_dir=str(output_dir),
        output_name=output_name,
        overrides={},
    )


@pytest.mark.render
async def test_render_process_names_outputs_like_blender(
    render_process: RenderProcess, demo_blend: Path, tmp_path: Path
) -> None:
    cases = [
        ("", (1, 2, 3), ["0001.png", "0002.png", "0003.png"]),
        ("shot_###_v", (2,), ["shot_002_v.png"]),
        ("", (-2,), None),
        ("neg_###", (-2,), None),
    ]
    for index, (name, frames, literal) in enumerate(cases):
        output_dir = tmp_path / f"out{index}"
        events = EventLog()
        outputs = await render_process.render(
            request_for(demo_blend, frames, output_dir, name), events
        )
        expected = blender_frame_paths(tmp_path / "scratch", output_dir, name, frames)
        assert [output.path for output in outputs] == expected, name
        assert [output.frame for output in outputs] == list(frames)
        if literal is not None:
            assert [os.path.basename(p) for p in expected] == literal
        assert [e.frame for e in events.of_kind("frame_done")] == list(frames)
        assert len(events.of_kind("done")) == 1
        for output in outputs:
            info = validate_output(output.path)
            assert info.format == "PNG"
            assert info.sha256 == output.sha256
            assert info.size == output.size
            with Image.open(output.path) as image:
                assert image.size == TEST_RESOLUTION
    first_three = await render_process.render(
        request_for(demo_blend, (1, 2, 3), tmp_path / "differ"), EventLog()
    )
    assert len({output.sha256 for output in first_three}) == 3


@pytest.mark.render
async def test_render_process_negative_frame_name(
    render_process: RenderProcess, demo_blend: Path, tmp_path: Path
) -> None:
    outputs = await render_process.render(
        request_for(demo_blend, (-2,), tmp_path / "out", "f_###"), EventLog()
    )
    # bpy 5.0.1 puts the sign inside the padded width: "-002" for "###".
    assert os.path.basename(outputs[0].path) == "f_-002.png"


@pytest.mark.render
async def test_render_process_reuses_loaded_file(
    render_process: RenderProcess, demo_blend: Path, tmp_path: Path
) -> None:
    events = EventLog()
    await render_process.render(request_for(demo_blend, (1,), tmp_path / "a"), events)
    first_pid = render_process.pid
    await render_process.render(request_for(demo_blend, (2,), tmp_path / "b"), events)
    assert render_process.pid == first_pid
    assert len(events.of_kind("ready")) == 1
    assert len(events.of_kind("loaded")) == 1
    assert render_process.loaded_blend == str(demo_blend)


@pytest.mark.render
async def test_render_process_reloads_changed_file(
    render_process: RenderProcess, demo_blend: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy.blend"
    shutil.copyfile(demo_blend, copy)
    events = EventLog()
    await render_process.render(request_for(copy, (1,), tmp_path / "a"), events)
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    await render_process.render(request_for(copy, (1,), tmp_path / "b"), events)
    assert len(events.of_kind("loaded")) == 2
    assert len(events.of_kind("ready")) == 1


@pytest.mark.render
async def test_render_process_overrides_reset_between_renders(
    render_process: RenderProcess, demo_blend: Path, tmp_path: Path
) -> None:
    half = RenderRequest(
        blend_path=str(demo_blend),
        frames=(1,),
        output_dir=str(tmp_path / "half"),
        output_name="",
        overrides={"resolution_percentage": 50, "samples": 1, "engine": "CYCLES"},
    )
    [small] = await render_process.render(half, EventLog())
    [full] = await render_process.render(
        request_for(demo_blend, (1,), tmp_path / "full"), EventLog()
    )
    with Image.open(small.path) as image:
        assert image.size == (TEST_RESOLUTION[0] // 2, TEST_RESOLUTION[1] // 2)
    with Image.open(full.path) as image:
        assert image.size == TEST_RESOLUTION


@pytest.mark.render
async def test_render_process_text_blend_fails(
    render_process: RenderProcess, demo_blend: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "x.blend"
    make_text_blend(bad)
    with pytest.raises(RenderError, match="cannot open blend file") as caught:
        await render_process.render(
            request_for(bad, (1,), tmp_path / "bad"), EventLog()
        )
    assert str(bad) in str(caught.value)
    assert render_process.loaded_blend is None
    pid = render_process.pid
    outputs = await render_process.render(
        request_for(demo_blend, (1,), tmp_path / "good"), EventLog()
    )
    assert render_process.pid == pid
    assert validate_output(outputs[0].path).format == "PNG"


@pytest.mark.render
async def test_render_process_missing_blend_fails(
    render_process: RenderProcess, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.blend"
    with pytest.raises(RenderError, match=r"missing\.blend"):
        await render_process.render(
            request_for(missing, (1,), tmp_path / "out"), EventLog()
        )


@pytest.mark.render
async def test_render_process_require_cuda_fails(
    render_process: RenderProcess, demo_blend: Path, tmp_path: Path
) -> None:
    if has_gpu_device():
        pytest.skip("this node has a GPU device node, so CUDA may be available")
    request = RenderRequest(
        blend_path=str(demo_blend),
        frames=(1,),
        output_dir=str(tmp_path / "out"),
        output_name="",
        overrides={},
        require_device="CUDA",
    )
    events = EventLog()
    with pytest.raises(RenderError, match="'CUDA' is not available"):
        await render_process.render(request, events)
    assert list((tmp_path / "out").iterdir()) == []
    assert events.of_kind("frame_done") == []


@pytest.mark.render
async def test_render_process_gpu_override_without_gpu_fails(
    render_process: RenderProcess, demo_blend: Path, tmp_path: Path
) -> None:
    if has_gpu_device():
        pytest.skip("this node has a GPU device node")
    request = RenderRequest(
        blend_path=str(demo_blend),
        frames=(1,),
        output_dir=str(tmp_path / "out"),
        output_name="",
        overrides={"device": "GPU"},
    )
    with pytest.raises(RenderError, match="lists no GPU"):
        await render_process.render(request, EventLog())


@pytest.mark.render
async def test_render_process_gpu_file_falls_back_to_cpu(
    render_process: RenderProcess, tmp_path: Path
) -> None:
    if has_gpu_device():
        pytest.skip("this node has a GPU device node")
    blend = build_demo_blend(tmp_path, device="GPU")
    events = EventLog()
    outputs = await render_process.render(
        request_for(blend, (1,), tmp_path / "out"), events
    )
    assert validate_output(outputs[0].path).format == "PNG"
    log_lines = [event.text for event in events.of_kind("log")]
    assert any("renders on the CPU" in line for line in log_lines)


async def test_render_request_invalid_values_rejected(tmp_path: Path) -> None:
    process = RenderProcess(RenderBackend(), tmp_path / "scratch")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"frames": ()}, "no frames"),
        ({"frames": (True,)}, "invalid frame"),
        ({"output_name": "a/b_####"}, "invalid output_name"),
        ({"overrides": {"sample": 4}}, "unknown override keys"),
        ({"overrides": {"samples": 0}}, "invalid samples"),
        ({"overrides": {"engine": "LUXCORE"}}, "invalid engine"),
        ({"require_device": "TPU"}, "invalid require_device"),
    ]
    for fields, message in cases:
        settings: dict[str, Any] = {
            "blend_path": str(tmp_path / "x.blend"),
            "frames": (1,),
            "output_dir": str(tmp_path / "out"),
            "output_name": "",
            "overrides": {},
            **fields,
        }
        with pytest.raises(InvalidInput, match=message):
            await process.render(RenderRequest(**settings), EventLog())
    assert process.pid is None


def test_render_backend_invalid_kind_rejected() -> None:
    with pytest.raises(ConfigError, match="invalid render backend kind"):
        RenderBackend(kind="docker")
    with pytest.raises(ConfigError, match="blender_path"):
        RenderBackend(kind="blender")


@pytest.mark.render
async def test_render_process_blender_executable_mode(
    demo_blend: Path, tmp_path: Path
) -> None:
    """Run the runner through a fake "blender" script, because no Blender 5.x
    executable is installed here. The script logs its argv, checks -b and
    --factory-startup, prints a banner on stdout and runs the --python script with
    the venv's bpy, so the argv handling and the protocol are exercised."""
    executable, argv_log = write_fake_blender(tmp_path)
    for allow_scripts, autoexec in ((False, "-Y"), (True, "-y")):
        backend = RenderBackend(
            kind="blender", blender_path=str(executable), allow_scripts=allow_scripts
        )
        process = RenderProcess(backend, tmp_path / "scratch")
        events = EventLog()
        try:
            outputs = await process.render(
                request_for(demo_blend, (-3, 2), tmp_path / f"out{autoexec}"), events
            )
        finally:
            await process.close()
        assert [output.frame for output in outputs] == [-3, 2]
        assert validate_output(outputs[0].path).format == "PNG"
        assert any("fake executable" in e.text for e in events.of_kind("log"))
        argv = json.loads(argv_log.read_text().splitlines()[-1])
        assert argv[0] == str(executable)
        assert argv[1] == "-b"
        assert "--factory-startup" in argv
        separator = argv.index("--")
        assert argv.index(autoexec) < argv.index("--python") < separator
        assert argv[argv.index("--python") + 1] == RUNNER_SCRIPT
        assert argv[separator + 1 :] == [
            "--mode",
            "blender",
            "--allow-scripts" if allow_scripts else "--no-scripts",
        ]
        # Frames travel only in the JSON command, never on the command line.
        assert "-f" not in argv
        assert "-3" not in argv
