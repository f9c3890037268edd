"""Tests of JPEG thumbnails made from real image files, OpenEXR included."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import OpenEXR  # type: ignore[import-not-found]
import pytest
from PIL import Image

from flamenco_p2p import thumbnails
from flamenco_p2p.render.controller import child_environment
from flamenco_p2p.thumbnails import (
    MAX_SIZE,
    ThumbnailError,
    make_thumbnail,
    write_thumbnail,
)

RED = (200, 40, 40)
GREEN = (40, 200, 40)
BLUE = (40, 40, 200)
# Allowed difference per channel after JPEG compression, in 8-bit levels.
TOLERANCE = 6

Pixel = tuple[int, ...]
FloatArray = npt.NDArray[np.float32]


def decode(data: bytes) -> Image.Image:
    """Decode thumbnail bytes, failing unless they are a complete RGB JPEG."""
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    image.load()
    assert image.mode == "RGB"
    return image


def sample(image: Image.Image, x: float, y: float) -> Pixel:
    """Return the pixel at fractions x and y of the image's width and height."""
    column = min(image.width - 1, int(x * image.width))
    row = min(image.height - 1, int(y * image.height))
    value = image.getpixel((column, row))
    assert isinstance(value, tuple)
    return tuple(int(channel) for channel in value)


def assert_colour(actual: Pixel, expected: Pixel, tolerance: int = TOLERANCE) -> None:
    differences = [abs(a - e) for a, e in zip(actual, expected, strict=True)]
    assert max(differences) <= tolerance, f"{actual} is not close to {expected}"


def assert_fits(image: Image.Image, source_size: tuple[int, int], limit: int) -> None:
    """Check the thumbnail's size against the limit and the source's aspect ratio."""
    width, height = source_size
    assert max(image.size) == min(limit, max(width, height))
    # Rounding to whole pixels moves the short side by at most one pixel.
    assert abs(image.width * height - image.height * width) <= max(width, height)


def three_stripes(
    size: tuple[int, int], colours: Sequence[Pixel], mode: str
) -> Image.Image:
    """Return an image of three vertical stripes of solid colour."""
    image = Image.new(mode, size)
    stripe = size[0] // 3
    for index, colour in enumerate(colours):
        box = (index * stripe, 0, (index + 1) * stripe, size[1])
        image.paste(colour, box)
    return image


def srgb(linear: float) -> int:
    """Return the 8-bit sRGB code of a linear value, clipped to 0..1."""
    value = min(1.0, max(0.0, linear))
    if value <= 0.0031308:
        return round(value * 12.92 * 255)
    return round((1.055 * math.pow(value, 1 / 2.4) - 0.055) * 255)


# Linear value of the sRGB background grey (32, 32, 32).
BACKGROUND_LINEAR = ((32 / 255 + 0.055) / 1.055) ** 2.4


# Pillow formats


def test_png_rgb_colours_and_size(tmp_path: Path) -> None:
    path = tmp_path / "frame.png"
    three_stripes((900, 450), [RED, GREEN, BLUE], "RGB").save(path)
    image = decode(make_thumbnail(path))
    assert image.size == (640, 320)
    assert_colour(sample(image, 1 / 6, 0.5), RED)
    assert_colour(sample(image, 3 / 6, 0.5), GREEN)
    assert_colour(sample(image, 5 / 6, 0.5), BLUE)


def test_png_rgba_composited_over_grey(tmp_path: Path) -> None:
    path = tmp_path / "frame.png"
    colours = [(*RED, 255), (255, 255, 255, 128), (0, 200, 0, 0)]
    three_stripes((300, 100), colours, "RGBA").save(path)
    image = decode(make_thumbnail(path))
    assert image.size == (300, 100)
    assert_colour(sample(image, 1 / 6, 0.5), RED)
    half = round((255 * 128 + 32 * 127) / 255)
    assert_colour(sample(image, 3 / 6, 0.5), (half, half, half))
    assert_colour(sample(image, 5 / 6, 0.5), (32, 32, 32))


def test_png_16_bit_grey_scaled(tmp_path: Path) -> None:
    path = tmp_path / "grey16.png"
    values = np.full((200, 1000), 40000, dtype=np.uint16)
    values[:, 500:] = 65535
    Image.fromarray(values).save(path)
    with Image.open(path) as opened:
        assert opened.mode == "I;16"
    image = decode(make_thumbnail(path))
    assert_fits(image, (1000, 200), MAX_SIZE)
    level = round(40000 / 257)
    assert_colour(sample(image, 0.25, 0.5), (level, level, level))
    assert_colour(sample(image, 0.75, 0.5), (255, 255, 255))


def write_png_16(path: Path, values: npt.NDArray[np.uint16]) -> None:
    """Write a 16-bit RGB or RGBA PNG, which Pillow itself cannot save."""
    height, width, channels = values.shape
    colour_type = {3: 2, 4: 6}[channels]
    rows = b"".join(
        b"\x00" + values[row].astype(">u2").tobytes() for row in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """Return one PNG chunk: length, type, data and CRC-32."""
    checksum = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)


def test_png_16_bit_rgba(tmp_path: Path) -> None:
    path = tmp_path / "rgba16.png"
    values = np.zeros((120, 240, 4), dtype=np.uint16)
    values[:, :120] = (65535, 32896, 0, 65535)
    values[:, 120:] = (0, 0, 65535, 0)
    write_png_16(path, values)
    image = decode(make_thumbnail(path, max_size=60))
    assert image.size == (60, 30)
    assert_colour(sample(image, 0.25, 0.5), (255, 128, 0))
    assert_colour(sample(image, 0.75, 0.5), (32, 32, 32))


def test_jpeg_large_source_shrunk(tmp_path: Path) -> None:
    path = tmp_path / "frame.jpg"
    three_stripes((3000, 2000), [RED, GREEN, BLUE], "RGB").save(path, quality=95)
    image = decode(make_thumbnail(path))
    assert image.size == (640, 427)
    assert_colour(sample(image, 1 / 6, 0.5), RED)
    assert_colour(sample(image, 3 / 6, 0.5), GREEN)
    assert_colour(sample(image, 5 / 6, 0.5), BLUE)


def test_jpeg_portrait_aspect_kept(tmp_path: Path) -> None:
    path = tmp_path / "portrait.jpg"
    Image.new("RGB", (333, 1000), GREEN).save(path)
    image = decode(make_thumbnail(path, max_size=200))
    assert image.size == (67, 200)
    assert_colour(sample(image, 0.5, 0.5), GREEN)


def test_palette_image(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    three_stripes((660, 220), [RED, GREEN, BLUE], "RGB").quantize(colors=3).save(path)
    with Image.open(path) as opened:
        assert opened.mode == "P"
    image = decode(make_thumbnail(path, max_size=330))
    assert image.size == (330, 110)
    assert_colour(sample(image, 1 / 6, 0.5), RED)
    assert_colour(sample(image, 3 / 6, 0.5), GREEN)
    assert_colour(sample(image, 5 / 6, 0.5), BLUE)


def test_palette_transparency_over_grey(tmp_path: Path) -> None:
    path = tmp_path / "palette-alpha.png"
    image = Image.new("P", (100, 50), 0)
    image.putpalette([*RED, *BLUE])
    image.paste(1, (50, 0, 100, 50))
    image.save(path, transparency=1)
    thumbnail = decode(make_thumbnail(path))
    assert_colour(sample(thumbnail, 0.25, 0.5), RED)
    assert_colour(sample(thumbnail, 0.75, 0.5), (32, 32, 32))


@pytest.mark.parametrize(
    ("image_format", "suffix", "mode"),
    [
        ("TIFF", "tif", "RGB"),
        ("TIFF", "tif", "RGBA"),
        ("BMP", "bmp", "RGB"),
        ("WEBP", "webp", "RGB"),
        ("PNG", "png", "LA"),
        ("PNG", "png", "1"),
    ],
)
def test_other_formats_and_modes(
    tmp_path: Path, image_format: str, suffix: str, mode: str
) -> None:
    path = tmp_path / f"frame.{suffix}"
    source = three_stripes((150, 100), [RED, GREEN, BLUE], "RGB")
    source.convert(mode).save(path, format=image_format, lossless=True)
    expected = source.convert(mode).convert("RGB")
    image = decode(make_thumbnail(path))
    # A source smaller than max_size keeps its size.
    assert image.size == (150, 100)
    for x in (1 / 6, 3 / 6, 5 / 6):
        assert_colour(sample(image, x, 0.5), sample(expected, x, 0.5))


def test_float_tiff_display_values(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    values = np.full((40, 80), 0.5, dtype=np.float32)
    values[:, 40:] = np.nan
    Image.fromarray(values).save(path)
    with Image.open(path) as opened:
        assert opened.mode == "F"
    image = decode(make_thumbnail(path))
    assert_colour(sample(image, 0.25, 0.5), (128, 128, 128))
    assert_colour(sample(image, 0.75, 0.5), (0, 0, 0))


def test_jpeg_quality_changes_size(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    noise = np.random.default_rng(7).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    small = make_thumbnail(path, quality=20)
    large = make_thumbnail(path, quality=95)
    assert len(small) < len(large)
    decode(small)


@pytest.mark.parametrize(
    ("max_size", "quality"), [(0, 85), (-5, 85), (64, 0), (64, 101)]
)
def test_invalid_arguments(tmp_path: Path, max_size: int, quality: int) -> None:
    path = tmp_path / "frame.png"
    Image.new("RGB", (10, 10)).save(path)
    with pytest.raises(ValueError, match="invalid") as caught:
        make_thumbnail(path, max_size=max_size, quality=quality)
    assert not isinstance(caught.value, ThumbnailError)


# OpenEXR


def write_exr(path: Path, channels: Mapping[str, npt.NDArray[np.generic]]) -> Path:
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, channels).write(str(path))
    return path


def stripes(values: list[float], shape: tuple[int, int]) -> FloatArray:
    """Return a float32 plane of vertical stripes, one per value, left to right."""
    width = shape[1]
    plane = np.zeros(shape, dtype=np.float32)
    stripe = width // len(values)
    for index, value in enumerate(values):
        plane[:, index * stripe : (index + 1) * stripe] = value
    return plane


EXR_SHAPE = (64, 96)
# Three stripes: linear grey 0.5, values above 1 with a 0.214 green, and NaN
# and infinities next to a plain blue.
EXR_RED = [0.5, 4.0, math.nan]
EXR_GREEN = [0.5, 0.214, math.inf]
EXR_BLUE = [0.5, 0.0, 1.0]
EXR_EXPECTED = [(188, 188, 188), (255, 127, 0), (0, 0, 255)]


def colour_planes(dtype: type[np.generic]) -> dict[str, npt.NDArray[np.generic]]:
    return {
        "R": stripes(EXR_RED, EXR_SHAPE).astype(dtype),
        "G": stripes(EXR_GREEN, EXR_SHAPE).astype(dtype),
        "B": stripes(EXR_BLUE, EXR_SHAPE).astype(dtype),
    }


def assert_exr_stripes(image: Image.Image, expected: Sequence[Pixel]) -> None:
    for index, colour in enumerate(expected):
        assert_colour(sample(image, (2 * index + 1) / 6, 0.5), colour)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float", "half"])
def test_exr_rgb_tone_mapped(tmp_path: Path, dtype: type[np.generic]) -> None:
    path = write_exr(tmp_path / "frame.exr", colour_planes(dtype))
    data = make_thumbnail(path)
    image = decode(data)
    assert image.size == (96, 64)
    assert_exr_stripes(image, EXR_EXPECTED)
    assert srgb(0.5) == 188


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float", "half"])
def test_exr_rgba_composited_over_grey(tmp_path: Path, dtype: type[np.generic]) -> None:
    planes = colour_planes(dtype)
    # Premultiplied colour: opaque, half covered (0.5 * 0.5) and transparent.
    planes["R"] = stripes([0.5, 0.25, 0.0], EXR_SHAPE).astype(dtype)
    planes["G"] = stripes([0.5, 0.25, 0.0], EXR_SHAPE).astype(dtype)
    planes["B"] = stripes([0.5, 0.25, 0.0], EXR_SHAPE).astype(dtype)
    planes["A"] = stripes([1.0, 0.5, 0.0], EXR_SHAPE).astype(dtype)
    path = write_exr(tmp_path / "alpha.exr", planes)
    image = decode(make_thumbnail(path))
    half = srgb(0.25 + 0.5 * BACKGROUND_LINEAR)
    assert_exr_stripes(image, [(188, 188, 188), (half, half, half), (32, 32, 32)])


def test_exr_blender_multilayer_names(tmp_path: Path) -> None:
    # Premultiplied colour, so the transparent stripe is 0.
    grey = stripes([0.5, 0.5, 0.0], EXR_SHAPE)
    red = stripes([1.0, 1.0, 1.0], EXR_SHAPE)
    zero = np.zeros(EXR_SHAPE, dtype=np.float32)
    channels: dict[str, npt.NDArray[np.generic]] = {
        # Sorted before ViewLayer.Combined, and must still lose to it.
        "AOV.DiffCol.R": red,
        "AOV.DiffCol.G": zero,
        "AOV.DiffCol.B": zero,
        "ViewLayer.Combined.R": grey,
        "ViewLayer.Combined.G": grey,
        "ViewLayer.Combined.B": grey,
        "ViewLayer.Combined.A": stripes([1.0, 1.0, 0.0], EXR_SHAPE),
        "ViewLayer.Depth.Z": red * 30.0,
        "ViewLayer.Normal.X": zero,
        "ViewLayer.Normal.Y": red,
        "ViewLayer.Normal.Z": zero,
        # A second view layer. The first view layer in name order wins.
        "ZLayer.Combined.R": zero,
        "ZLayer.Combined.G": red,
        "ZLayer.Combined.B": zero,
    }
    path = write_exr(tmp_path / "multilayer.exr", channels)
    image = decode(make_thumbnail(path))
    assert_exr_stripes(image, [(188, 188, 188), (188, 188, 188), (32, 32, 32)])


def test_exr_plain_rgb_before_other_layers(tmp_path: Path) -> None:
    planes = colour_planes(np.float32)
    ones = np.ones(EXR_SHAPE, dtype=np.float32)
    channels = {**planes, "diffuse.R": ones, "diffuse.G": ones, "diffuse.B": ones}
    path = write_exr(tmp_path / "layers.exr", channels)
    assert_exr_stripes(decode(make_thumbnail(path)), EXR_EXPECTED)


def test_exr_layer_rgb_without_combined(tmp_path: Path) -> None:
    planes = colour_planes(np.float16)
    channels = {f"beauty.{name}": plane for name, plane in planes.items()}
    channels["depth.Z"] = np.ones(EXR_SHAPE, dtype=np.float16)
    path = write_exr(tmp_path / "beauty.exr", channels)
    assert_exr_stripes(decode(make_thumbnail(path)), EXR_EXPECTED)


@pytest.mark.parametrize("name", ["Y", "V", "Z", "ViewLayer.Combined.V"])
def test_exr_single_channel_as_grey(tmp_path: Path, name: str) -> None:
    plane = stripes([0.5, 2.0, math.nan], EXR_SHAPE)
    path = write_exr(tmp_path / "grey.exr", {name: plane})
    image = decode(make_thumbnail(path))
    assert_exr_stripes(image, [(188, 188, 188), (255, 255, 255), (0, 0, 0)])


def test_exr_grey_with_alpha(tmp_path: Path) -> None:
    channels = {
        "Y": stripes([0.5, 0.0, 0.0], EXR_SHAPE),
        "A": stripes([1.0, 0.0, 0.0], EXR_SHAPE),
    }
    path = write_exr(tmp_path / "grey-alpha.exr", channels)
    image = decode(make_thumbnail(path))
    assert_exr_stripes(image, [(188, 188, 188), (32, 32, 32), (32, 32, 32)])


def test_exr_multipart_first_part_with_colour(tmp_path: Path) -> None:
    depth = {"Z": np.ones(EXR_SHAPE, dtype=np.float32)}
    white = dict.fromkeys("RGB", np.ones(EXR_SHAPE, dtype=np.float16))
    contents = [
        ("depth", depth),
        ("beauty", colour_planes(np.float16)),
        ("white", white),
    ]
    parts = []
    for name, channels in contents:
        # Each part needs a header of its own, which carries the part's name.
        header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
        parts.append(OpenEXR.Part(header, channels, name))
    path = tmp_path / "parts.exr"
    OpenEXR.File(parts).write(str(path))
    assert_exr_stripes(decode(make_thumbnail(path)), EXR_EXPECTED)


def test_exr_large_averaged_in_linear_light(tmp_path: Path) -> None:
    # A one-pixel checkerboard of 0 and 1 averages to linear 0.5 (sRGB 188).
    # Averaging the sRGB codes 0 and 255 instead would give about 128.
    rows, columns = np.indices((768, 1024))
    board = ((rows + columns) % 2).astype(np.float16)
    path = write_exr(tmp_path / "board.exr", {"R": board, "G": board, "B": board})
    image = decode(make_thumbnail(path, max_size=64))
    assert image.size == (64, 48)
    assert_colour(sample(image, 0.5, 0.5), (188, 188, 188), tolerance=3)


def test_exr_in_non_ascii_folder(tmp_path: Path) -> None:
    folder = tmp_path / "Épisode 01"
    folder.mkdir()
    path = write_exr(folder / "scène finale.exr", colour_planes(np.float16))
    assert_exr_stripes(decode(make_thumbnail(path)), EXR_EXPECTED)


@pytest.mark.parametrize(
    "names",
    [
        ["ViewLayer.Depth.Z", "ViewLayer.Normal.X", "ViewLayer.Normal.Y"],
        ["A"],
        ["X", "Z"],
    ],
)
def test_exr_without_colour_channels(tmp_path: Path, names: list[str]) -> None:
    plane = np.ones(EXR_SHAPE, dtype=np.float32)
    path = write_exr(tmp_path / "passes.exr", dict.fromkeys(names, plane))
    with pytest.raises(ThumbnailError, match="no colour channels") as caught:
        make_thumbnail(path)
    assert str(path) in str(caught.value)
    assert names[0] in str(caught.value)


def test_exr_truncated(tmp_path: Path) -> None:
    noise = np.random.default_rng(3).random(EXR_SHAPE, dtype=np.float32)
    good = write_exr(tmp_path / "good.exr", {"R": noise, "G": noise, "B": noise})
    data = good.read_bytes()
    for keep in (0.02, 0.5, 0.9):
        path = tmp_path / f"cut-{keep}.exr"
        path.write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(ThumbnailError, match="unreadable") as caught:
            make_thumbnail(path)
        assert str(path) in str(caught.value)


def test_exr_magic_with_garbage(tmp_path: Path) -> None:
    path = tmp_path / "fake.exr"
    path.write_bytes(b"\x76\x2f\x31\x01" + bytes(range(256)) * 4)
    with pytest.raises(ThumbnailError, match="unreadable") as caught:
        make_thumbnail(path)
    assert str(path) in str(caught.value)


def test_exr_over_pixel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_exr(tmp_path / "frame.exr", colour_planes(np.float16))
    monkeypatch.setattr(thumbnails, "MAX_PIXELS", 96 * 64 - 1)
    with pytest.raises(ThumbnailError, match="too large") as caught:
        make_thumbnail(path)
    assert str(path) in str(caught.value)
    assert "96x64" in str(caught.value)


def test_exr_over_decoded_size_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_exr(tmp_path / "frame.exr", colour_planes(np.float16))
    # Three channels of 96 x 64 samples at 4 bytes each, minus one byte.
    monkeypatch.setattr(thumbnails, "MAX_EXR_DECODED_BYTES", 3 * 96 * 64 * 4 - 1)
    with pytest.raises(ThumbnailError, match="too large") as caught:
        make_thumbnail(path)
    assert str(path) in str(caught.value)


# Bad input


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is a text file, not an image\n", encoding="utf-8")
    with pytest.raises(ThumbnailError, match="not an image") as caught:
        make_thumbnail(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_png(tmp_path: Path, keep: float) -> None:
    good = tmp_path / "good.png"
    noise = np.random.default_rng(5).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(good)
    data = good.read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ThumbnailError, match="unreadable") as caught:
        make_thumbnail(path)
    assert str(path) in str(caught.value)


def test_png_header_only(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (50, 50), RED).save(good)
    path = tmp_path / "header.png"
    # The 8-byte signature and the 25-byte IHDR chunk, with no image data.
    path.write_bytes(good.read_bytes()[:33])
    with pytest.raises(ThumbnailError, match="unreadable") as caught:
        make_thumbnail(path)
    assert str(path) in str(caught.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ThumbnailError, match="is empty") as caught:
        make_thumbnail(path)
    assert str(path) in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.exr"
    with pytest.raises(ThumbnailError, match="not found") as caught:
        make_thumbnail(path)
    assert str(path) in str(caught.value)


def test_directory_as_source(tmp_path: Path) -> None:
    with pytest.raises(ThumbnailError, match="directory") as caught:
        make_thumbnail(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_unsupported_pillow_format(tmp_path: Path) -> None:
    path = tmp_path / "frame.gif"
    Image.new("RGB", (20, 20), RED).save(path)
    with pytest.raises(ThumbnailError, match="not an image in a supported format"):
        make_thumbnail(path)


def test_png_decompression_bomb(tmp_path: Path) -> None:
    # The header claims 400 megapixels, over Pillow's own bomb limit, and the
    # image data is one compressed row.
    path = tmp_path / "bomb.png"
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 60001))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(ThumbnailError, match="too large") as caught:
        make_thumbnail(path)
    assert str(path) in str(caught.value)


def test_png_over_pixel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "frame.png"
    Image.new("RGB", (40, 30), RED).save(path)
    monkeypatch.setattr(thumbnails, "MAX_PIXELS", 40 * 30 - 1)
    with pytest.raises(ThumbnailError, match="too large") as caught:
        make_thumbnail(path)
    assert "40x30" in str(caught.value)
    monkeypatch.setattr(thumbnails, "MAX_PIXELS", 40 * 30)
    decode(make_thumbnail(path))


# write_thumbnail


def test_write_thumbnail_creates_folder(tmp_path: Path) -> None:
    source = tmp_path / "frame.png"
    three_stripes((1280, 720), [RED, GREEN, BLUE], "RGB").save(source)
    target = tmp_path / "cache" / "job 1" / "last.jpg"
    assert write_thumbnail(source, target, max_size=320) == target
    image = decode(target.read_bytes())
    assert image.size == (320, 180)
    assert_colour(sample(image, 1 / 6, 0.5), RED)
    assert os.listdir(target.parent) == ["last.jpg"]


def test_write_thumbnail_replaces_atomically(tmp_path: Path) -> None:
    source = tmp_path / "frame.png"
    Image.new("RGB", (64, 64), GREEN).save(source)
    target = tmp_path / "last.jpg"
    target.write_bytes(b"old thumbnail")
    with target.open("rb") as old:
        write_thumbnail(source, target)
        # A reader that opened the old file still reads all of it, so the new
        # file was renamed over the old one, not written into it.
        assert old.read() == b"old thumbnail"
    assert_colour(sample(decode(target.read_bytes()), 0.5, 0.5), GREEN)
    assert sorted(os.listdir(tmp_path)) == ["frame.png", "last.jpg"]


def test_write_thumbnail_bad_source_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "notes.png"
    source.write_text("not an image", encoding="utf-8")
    target = tmp_path / "out" / "last.jpg"
    with pytest.raises(ThumbnailError):
        write_thumbnail(source, target)
    assert not target.exists()
    assert not target.parent.exists() or os.listdir(target.parent) == []


def test_write_thumbnail_failed_rename_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "frame.png"
    Image.new("RGB", (64, 64), GREEN).save(source)
    target = tmp_path / "out" / "last.jpg"

    def failing_replace(src: str | Path, dst: str | Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        write_thumbnail(source, target)
    monkeypatch.undo()
    assert os.listdir(target.parent) == []


# Real Blender output

# Runs under a Python with bpy and renders one frame of a flat scene three
# times: single-layer RGBA half float, multilayer RGBA float, and BW half float.
# The left half of the frame is an emission plane of linear colour
# (0.2, 0.5, 1.0). The right half is transparent film, or black in BW.
RENDER_SCRIPT = r"""
import json, os, sys
settings = json.load(sys.stdin)
import bpy

bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = 1
scene.cycles.use_denoising = False
scene.cycles.use_adaptive_sampling = False
scene.render.resolution_x, scene.render.resolution_y = 64, 48
scene.render.resolution_percentage = 100
scene.render.film_transparent = True

material = bpy.data.materials.new("Emitter")
nodes = material.node_tree.nodes
nodes.remove(nodes["Principled BSDF"])
emission = nodes.new("ShaderNodeEmission")
emission.inputs["Color"].default_value = (0.2, 0.5, 1.0, 1.0)
emission.inputs["Strength"].default_value = 1.0
material.node_tree.links.new(
    emission.outputs["Emission"], nodes["Material Output"].inputs["Surface"]
)
bpy.ops.mesh.primitive_plane_add(size=10.0, location=(-5.0, 0.0, 0.0))
bpy.context.object.data.materials.append(material)

camera_data = bpy.data.cameras.new("Camera")
camera_data.type = "ORTHO"
camera_data.ortho_scale = 8.0
camera = bpy.data.objects.new("Camera", camera_data)
scene.collection.objects.link(camera)
scene.camera = camera
camera.location = (0.0, 0.0, 5.0)

settings_list = [
    ("IMAGE", "OPEN_EXR", "16", "RGBA", "single"),
    ("MULTI_LAYER_IMAGE", "OPEN_EXR_MULTILAYER", "32", "RGBA", "multilayer"),
    ("IMAGE", "OPEN_EXR", "16", "BW", "bw"),
]
image_settings = scene.render.image_settings
for media_type, file_format, depth, colour_mode, name in settings_list:
    image_settings.media_type = media_type
    image_settings.file_format = file_format
    image_settings.color_depth = depth
    image_settings.color_mode = colour_mode
    scene.render.filepath = os.path.join(settings["dir"], name)
    bpy.ops.render.render(write_still=True)
print("RENDERED", flush=True)
# bpy 5.0.1 can crash while shutting down, so exit once the files are written.
os._exit(0)
"""


@pytest.mark.render
@pytest.mark.skipif(
    importlib.util.find_spec("bpy") is None, reason="needs the bpy extra"
)
def test_blender_exr_thumbnails(tmp_path: Path) -> None:
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", RENDER_SCRIPT],
        input=json.dumps({"dir": str(output_dir)}),
        capture_output=True,
        text=True,
        env=child_environment(tmp_path / "scratch"),
        cwd=tmp_path,
        timeout=240,
        check=False,
    )
    assert "RENDERED" in result.stdout, result.stdout[-800:] + result.stderr[-800:]

    multilayer = OpenEXR.File(str(output_dir / "multilayer.exr"), header_only=True)
    names = [channel.name for channel in multilayer.parts[0].header["channels"]]
    assert "ViewLayer.Combined.R" in names

    emitter = (srgb(0.2), srgb(0.5), srgb(1.0))
    for name in ("single", "multilayer"):
        image = decode(make_thumbnail(output_dir / f"{name}.exr", max_size=32))
        assert image.size == (32, 24)
        assert_colour(sample(image, 0.1, 0.5), emitter)
        assert_colour(sample(image, 0.9, 0.5), (32, 32, 32))

    # Blender writes BW as one channel, which contains the Rec. 709 luminance.
    luminance = srgb(0.2126 * 0.2 + 0.7152 * 0.5 + 0.0722 * 1.0)
    image = decode(make_thumbnail(output_dir / "bw.exr", max_size=32))
    assert_colour(sample(image, 0.1, 0.5), (luminance, luminance, luminance))
    assert_colour(sample(image, 0.9, 0.5), (0, 0, 0))
