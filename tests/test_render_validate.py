"""Tests of output validation with real image files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from PIL import Image
from render_helpers import EventLog, build_demo_blend

from flamenco_p2p.errors import RenderError
from flamenco_p2p.render.controller import RenderBackend, RenderProcess, RenderRequest
from flamenco_p2p.render.validate import validate_output


def write_image(path: Path, image_format: str) -> Path:
    """Write a 32x16 gradient image in a Pillow format and return its path."""
    image = Image.new("RGB", (32, 16))
    image.putdata([(x * 8, y * 16, 128) for y in range(16) for x in range(32)])
    image.save(path, format=image_format)
    return path


def truncate(source: Path, target: Path, keep: float) -> Path:
    """Copy the first fraction `keep` of source to target."""
    size = source.stat().st_size
    return truncate_to(source, target, int(size * keep))


def truncate_to(source: Path, target: Path, count: int) -> Path:
    """Copy the first count bytes of source to target."""
    with source.open("rb") as file:
        target.write_bytes(file.read(count))
    return target


@pytest.mark.parametrize(
    ("image_format", "suffix"), [("PNG", "png"), ("JPEG", "jpg"), ("TIFF", "tif")]
)
def test_validate_output_good_image(
    tmp_path: Path, image_format: str, suffix: str
) -> None:
    path = write_image(tmp_path / f"good.{suffix}", image_format)
    info = validate_output(str(path))
    assert info.format == image_format
    assert info.size == path.stat().st_size
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.path == str(path)


def test_validate_output_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.png"
    with pytest.raises(RenderError, match="is missing") as caught:
        validate_output(str(path))
    assert str(path) in str(caught.value)


def test_validate_output_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(RenderError, match="is empty") as caught:
        validate_output(str(path))
    assert str(path) in str(caught.value)


def test_validate_output_directory(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="not a regular file"):
        validate_output(str(tmp_path))


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_validate_output_truncated_png(tmp_path: Path, keep: float) -> None:
    good = write_image(tmp_path / "good.png", "PNG")
    path = truncate(good, tmp_path / "cut.png", keep)
    with pytest.raises(RenderError, match="not a valid image") as caught:
        validate_output(str(path))
    assert str(path) in str(caught.value)


def test_validate_output_truncated_jpeg(tmp_path: Path) -> None:
    good = write_image(tmp_path / "good.jpg", "JPEG")
    path = truncate(good, tmp_path / "cut.jpg", 0.5)
    with pytest.raises(RenderError, match="not a valid image"):
        validate_output(str(path))


def test_validate_output_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(RenderError, match="not a valid image") as caught:
        validate_output(str(path))
    assert str(path) in str(caught.value)


def test_validate_output_exr_magic_with_garbage(tmp_path: Path) -> None:
    path = tmp_path / "fake.exr"
    path.write_bytes(b"\x76\x2f\x31\x01" + os.urandom(512))
    with pytest.raises(RenderError, match="not a valid OpenEXR file"):
        validate_output(str(path))


@pytest.mark.render
async def test_validate_output_blender_exr(tmp_path: Path) -> None:
    blend = build_demo_blend(tmp_path, frames=2, file_format="OPEN_EXR")
    process = RenderProcess(RenderBackend(), tmp_path / "scratch")
    try:
        [output] = await process.render(
            RenderRequest(
                blend_path=str(blend),
                frames=(1,),
                output_dir=str(tmp_path / "out"),
                output_name="",
                overrides={},
            ),
            EventLog(),
        )
    finally:
        await process.close()
    assert output.path.endswith("0001.exr")
    assert validate_output(output.path).format == "OPEN_EXR"

    good = Path(output.path)
    for keep in (0.2, 0.5, 0.9, 0.99):
        cut = truncate(good, tmp_path / f"cut{keep}.exr", keep)
        with pytest.raises(RenderError, match="not a valid OpenEXR file"):
            validate_output(str(cut))
    header_only = truncate_to(good, tmp_path / "header.exr", 8)
    with pytest.raises(RenderError, match="not a valid OpenEXR file"):
        validate_output(str(header_only))
