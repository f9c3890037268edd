"""JPEG thumbnails of rendered frames, for the HTTP API's job previews.

make_thumbnail() reads a frame from a job's output folder and returns a small
JPEG. Pillow decodes PNG, JPEG, TIFF, BMP, WebP, Targa and SGI files. The OpenEXR
package decodes OpenEXR files, whose linear scene values are tone-mapped to sRGB
by clipping to 0..1 and applying the sRGB transfer curve. Transparent areas are
composited over a dark grey. Every problem with the source file raises
ThumbnailError with the file's path in the message.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import OpenEXR  # type: ignore[import-not-found]
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

# Maximum width and height of a thumbnail, in pixels.
MAX_SIZE = 640
# Maximum source image size, in pixels (width x height). At this size an RGB
# frame decodes to 300 MiB in Pillow, which a preview is not worth.
MAX_PIXELS = 100_000_000
# Maximum decoded size of an OpenEXR file, in bytes. The OpenEXR 3.x File API
# decodes every channel of every part, so a multilayer file with many passes
# costs far more memory than its colour channels alone.
MAX_EXR_DECODED_BYTES = 2 * 1024**3
# Colour that transparent areas are composited over, in sRGB.
BACKGROUND = (32, 32, 32)

# Pillow formats that Blender can write. Limiting Image.open to these keeps
# Pillow's rarely used decoders away from files that other nodes sent.
PILLOW_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP", "TGA", "SGI")
EXR_MAGIC = b"\x76\x2f\x31\x01"
# Leading bytes of Pillow formats, so that a damaged file of a known format is
# reported as unreadable and not as "not an image". Targa has no signature.
SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"BM": "BMP",
    b"RIFF": "WebP",
    b"\x01\xda": "SGI",
}
# Bytes read to tell the format, enough for the longest signature.
MAGIC_LENGTH = 8
# The decoded size bound assumes 4 bytes per sample (FLOAT and UINT), because
# the header-only read of the OpenEXR package does not expose pixel types.
EXR_BYTES_PER_SAMPLE = 4
# Blender names the colour of a multilayer file "<view layer>.Combined.<RGBA>".
COMBINED_LAYER = "Combined"
# Grey channel names: Y is OpenEXR's luminance, V is what Blender writes for a
# BW (greyscale) OpenEXR output in Blender 5.0.1.
GREY_CHANNELS = ("Y", "V")
ALPHA_CHANNEL = "A"

Float32Array = npt.NDArray[np.float32]
# Channel names by layer name and then by the last component of the name, so
# "ViewLayer.Combined.R" is layers["ViewLayer.Combined"]["R"].
Layers = dict[str, dict[str, str]]
# Colour channel names (three for RGB, one for grey) and the alpha name or None.
ChannelChoice = tuple[tuple[str, ...], str | None]


class ThumbnailError(ValueError):
    """A source file that cannot be turned into a thumbnail."""


def make_thumbnail(source: Path, max_size: int = MAX_SIZE, quality: int = 85) -> bytes:
    """Decode the image at source and return it as JPEG bytes.

    The result is at most max_size pixels on either side, with the source's
    aspect ratio, and is never larger than the source. quality is the JPEG
    quality, 1 to 100. Raises ThumbnailError when the source is missing, not an
    image, unreadable, has no colour channels, is over MAX_PIXELS or, for
    OpenEXR, decodes to over MAX_EXR_DECODED_BYTES. Raises ValueError for an
    invalid max_size or quality.
    """
    if max_size < 1:
        raise ValueError(f"invalid max_size {max_size}; give at least 1 pixel")
    if not 1 <= quality <= 100:
        raise ValueError(f"invalid JPEG quality {quality}; give 1 to 100")
    path = Path(source)
    magic = read_magic(path)
    if magic.startswith(EXR_MAGIC):
        image = load_exr(path, max_size)
    else:
        image = load_with_pillow(path, max_size, magic)
    image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_thumbnail(source: Path, target: Path, max_size: int = MAX_SIZE) -> Path:
    """Write the thumbnail of source to target atomically and return target.

    The JPEG goes to a temporary file in target's folder, which is created if
    missing, and then replaces target, so readers see either the old file or the
    whole new one. Raises ThumbnailError for a bad source and OSError when target
    cannot be written.
    """
    data = make_thumbnail(source, max_size)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            # Without the sync, a crash soon after os.replace can leave an empty
            # target on file systems that reorder metadata and data writes.
            os.fsync(file.fileno())
        os.replace(temp_name, target)
    except BaseException:
        remove_temp_file(Path(temp_name))
        raise
    return target


def remove_temp_file(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("cannot remove temporary thumbnail '%s': %s", path, exc)


def read_magic(path: Path) -> bytes:
    """Return the first bytes of path, raising ThumbnailError if it has none."""
    try:
        with path.open("rb") as file:
            magic = file.read(MAGIC_LENGTH)
    except FileNotFoundError as exc:
        raise ThumbnailError(f"thumbnail source '{path}' not found") from exc
    except IsADirectoryError as exc:
        raise ThumbnailError(
            f"thumbnail source '{path}' is a directory, not an image file"
        ) from exc
    except OSError as exc:
        raise ThumbnailError(f"cannot read thumbnail source '{path}': {exc}") from exc
    if not magic:
        raise ThumbnailError(f"thumbnail source '{path}' is empty")
    return magic


def check_pixel_count(path: Path, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ThumbnailError(
            f"image '{path}' is too large for a thumbnail: {width}x{height} pixels, "
            f"over the limit of {MAX_PIXELS} pixels"
        )


# Pillow formats (PNG, JPEG, TIFF, BMP, WebP, ...)


def load_with_pillow(path: Path, max_size: int, magic: bytes) -> Image.Image:
    """Decode path with Pillow into an RGB image, alpha composited over BACKGROUND."""
    try:
        with Image.open(path, formats=PILLOW_FORMATS) as image:
            check_pixel_count(path, image.width, image.height)
            if image.format == "JPEG":
                # JPEG can decode at 1/2, 1/4 or 1/8 scale, which is far faster
                # for a large frame. Twice the thumbnail size keeps the final
                # resampling sharp.
                width, height = fit_size(image.width, image.height, max_size)
                image.draft(None, (2 * width, 2 * height))
            return convert_to_rgb(image)
    except ThumbnailError:
        raise
    except UnidentifiedImageError as exc:
        known = [
            name for prefix, name in SIGNATURES.items() if magic.startswith(prefix)
        ]
        if known:
            raise ThumbnailError(
                f"image '{path}' is unreadable: it starts like a {known[0]} file, "
                "but Pillow cannot decode it, so it may be truncated or damaged"
            ) from exc
        raise ThumbnailError(
            f"file '{path}' is not an image in a supported format "
            f"({', '.join(PILLOW_FORMATS)} or OpenEXR)"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow 13 warns above Image.MAX_IMAGE_PIXELS (89,478,485 by default)
        # and raises above twice that. The warning reaches this handler only
        # where warnings are turned into errors, so by default an image between
        # that limit and MAX_PIXELS decodes with a DecompressionBombWarning.
        raise ThumbnailError(
            f"image '{path}' is too large for a thumbnail: {exc}"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow's decoders report truncated or corrupt data with any of these
        # types, depending on the format.
        raise ThumbnailError(f"image '{path}' is unreadable: {exc}") from exc


def fit_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """Return (width, height) scaled down to fit max_size, aspect ratio kept."""
    scale = min(1.0, max_size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def convert_to_rgb(image: Image.Image) -> Image.Image:
    """Return image as RGB, with alpha composited over BACKGROUND."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's own conversion of these modes to "L" clips at 255 instead of
        # scaling. A 32-bit "I" image is read as 16-bit data too, because that is
        # what Pillow returns for 16-bit greyscale PNG and TIFF files.
        values = np.asarray(image, dtype=np.float32)
        grey = np.clip(values / 257.0, 0.0, 255.0)
        return Image.fromarray(np.rint(grey).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        # NOTE: float TIFFs are taken as display values in 0..1, not as linear
        # scene values, because no transfer function is stored with them.
        values = finite_or_zero(np.asarray(image, dtype=np.float32))
        grey = np.clip(values, 0.0, 1.0) * 255.0
        return Image.fromarray(np.rint(grey).astype(np.uint8), "L").convert("RGB")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# OpenEXR


@dataclass(frozen=True)
class ExrSelection:
    """The channels of one OpenEXR part that make up the thumbnail."""

    part_index: int
    colour: tuple[str, ...]  # three names for RGB, one for grey
    alpha: str | None


def load_exr(path: Path, max_size: int) -> Image.Image:
    """Decode an OpenEXR file into an sRGB image, alpha composited over BACKGROUND."""
    headers = read_exr_headers(path)
    selection = select_exr_channels(path, headers)
    pixels = read_exr_pixels(path, selection)
    height, width = pixels[0].shape
    # Averaging in linear light before tone mapping gives the right brightness,
    # and shrinking first keeps the per-pixel maths cheap for large frames.
    factor = max(1, max(width, height) // (2 * max_size))
    planes = [shrink(finite_or_zero(plane), factor) for plane in pixels]
    if selection.alpha is not None:
        alpha = np.clip(planes.pop(), 0.0, 1.0)
    else:
        alpha = np.ones_like(planes[0])
    # OpenEXR colour is premultiplied by alpha, so the background is added with
    # the weight 1 - alpha, in linear light.
    background = srgb_to_linear(BACKGROUND[0] / 255.0)
    encoded = [linear_to_srgb(plane + background * (1.0 - alpha)) for plane in planes]
    stacked = np.rint(np.stack(encoded, axis=-1) * 255.0).astype(np.uint8)
    if stacked.shape[-1] == 1:
        return Image.fromarray(stacked[..., 0], "L").convert("RGB")
    return Image.fromarray(stacked, "RGB")


def read_exr_headers(path: Path) -> list[dict[str, Any]]:
    """Return the header of each part of an OpenEXR file, checking its size."""
    try:
        exr_file = OpenEXR.File(str(path), header_only=True)
        headers: list[dict[str, Any]] = [part.header for part in exr_file.parts]
    except (RuntimeError, ValueError, OSError) as exc:
        raise ThumbnailError(
            f"OpenEXR file '{path}' is unreadable or truncated: {exc}"
        ) from exc
    if not headers:
        raise ThumbnailError(f"OpenEXR file '{path}' is unreadable or truncated")
    decoded_bytes = 0
    for header in headers:
        width, height = data_window_size(header)
        check_pixel_count(path, width, height)
        for channel in header["channels"]:
            samples = (width // channel.xSampling) * (height // channel.ySampling)
            decoded_bytes += samples * EXR_BYTES_PER_SAMPLE
    if decoded_bytes > MAX_EXR_DECODED_BYTES:
        raise ThumbnailError(
            f"OpenEXR file '{path}' is too large for a thumbnail: about "
            f"{decoded_bytes // 1024**2} MiB decoded, over the limit of "
            f"{MAX_EXR_DECODED_BYTES // 1024**2} MiB"
        )
    return headers


def data_window_size(header: dict[str, Any]) -> tuple[int, int]:
    """Return (width, height) of a part's data window, whose bounds are inclusive."""
    low, high = header["dataWindow"]
    return int(high[0]) - int(low[0]) + 1, int(high[1]) - int(low[1]) + 1


def select_exr_channels(path: Path, headers: list[dict[str, Any]]) -> ExrSelection:
    """Choose the part and channels to show, raising ThumbnailError if none fit.

    RGB in any part wins over grey in any part, and an earlier part wins over a
    later one. Within a part, RGB of a Blender Combined pass comes first, then
    plain R, G, B, then RGB of any other layer. Grey comes from a Y or V channel
    of the top-level or a Combined layer, or else from a part's only channel
    besides alpha. Layers are tried in alphabetical order, which is how OpenEXR
    stores channel names.
    """
    names_seen: list[str] = []
    candidates: list[tuple[int, Layers]] = []
    for index, header in enumerate(headers):
        names_seen.extend(channel.name for channel in header["channels"])
        if header.get("type") in (OpenEXR.deepscanline, OpenEXR.deeptile):
            continue
        # Chroma-subsampled channels decode to smaller arrays than the image.
        names = [
            channel.name
            for channel in header["channels"]
            if channel.xSampling == 1 and channel.ySampling == 1
        ]
        candidates.append((index, group_layers(names)))
    for choose in (choose_rgb, choose_grey):
        for index, layers in candidates:
            chosen = choose(layers)
            if chosen is not None:
                colour, alpha = chosen
                return ExrSelection(part_index=index, colour=colour, alpha=alpha)
    raise ThumbnailError(
        f"OpenEXR file '{path}' has no colour channels (R, G, B, Y or V); "
        f"its channels are {sorted(set(names_seen))}"
    )


def group_layers(names: Sequence[str]) -> Layers:
    layers: Layers = {}
    for name in names:
        layer, _, suffix = name.rpartition(".")
        layers.setdefault(layer, {})[suffix] = name
    return layers


def ordered_layers(layers: Layers) -> list[str]:
    return sorted(layers, key=lambda layer: (layer_rank(layer), layer))


def choose_rgb(layers: Layers) -> ChannelChoice | None:
    for layer in ordered_layers(layers):
        channels = layers[layer]
        if all(suffix in channels for suffix in "RGB"):
            colour = (channels["R"], channels["G"], channels["B"])
            return colour, channels.get(ALPHA_CHANNEL)
    return None


def choose_grey(layers: Layers) -> ChannelChoice | None:
    # Other layers are passes such as Normal or Vector, where Y is a vector
    # component and not a grey value.
    for layer in ordered_layers(layers):
        if layer_rank(layer) > 1:
            continue
        channels = layers[layer]
        for suffix in GREY_CHANNELS:
            if suffix in channels:
                return (channels[suffix],), channels.get(ALPHA_CHANNEL)
    others = [
        (layer, name)
        for layer, channels in layers.items()
        for suffix, name in channels.items()
        if suffix != ALPHA_CHANNEL
    ]
    if len(others) == 1:
        layer, name = others[0]
        return (name,), layers[layer].get(ALPHA_CHANNEL)
    return None


def layer_rank(layer: str) -> int:
    if layer == COMBINED_LAYER or layer.endswith("." + COMBINED_LAYER):
        return 0
    if not layer:
        return 1
    return 2


def read_exr_pixels(path: Path, selection: ExrSelection) -> list[Float32Array]:
    """Return the selected channels as float32 arrays, colour first, alpha last."""
    names = [*selection.colour]
    if selection.alpha is not None:
        names.append(selection.alpha)
    try:
        exr_file = OpenEXR.File(str(path), separate_channels=True)
        # A file with damaged pixel data reads as a file with no parts, after
        # the library prints a warning on stderr.
        if selection.part_index >= len(exr_file.parts):
            raise ThumbnailError(f"OpenEXR file '{path}' is unreadable or truncated")
        part = exr_file.parts[selection.part_index]
        width, height = part.width(), part.height()
        planes = [np.asarray(part.channels[name].pixels) for name in names]
    except ThumbnailError:
        raise
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        raise ThumbnailError(
            f"OpenEXR file '{path}' is unreadable or truncated: {exc}"
        ) from exc
    for name, plane in zip(names, planes, strict=True):
        if plane.shape != (height, width):
            raise ThumbnailError(
                f"OpenEXR file '{path}' channel {name!r} has shape {plane.shape}, "
                f"expected {(height, width)}"
            )
    return [plane.astype(np.float32, copy=False) for plane in planes]


def finite_or_zero(values: Float32Array) -> Float32Array:
    """Return values with NaN and both infinities replaced by 0."""
    return np.where(np.isfinite(values), values, np.float32(0.0))


def shrink(values: Float32Array, factor: int) -> Float32Array:
    """Return the mean of each factor x factor block of values.

    Up to factor - 1 rows and columns at the bottom and right edges are dropped,
    which is less than one pixel of the shrunk image.
    """
    if factor == 1:
        return values
    height = values.shape[0] // factor * factor
    width = values.shape[1] // factor * factor
    blocks = values[:height, :width].reshape(
        height // factor, factor, width // factor, factor
    )
    shrunk: Float32Array = blocks.mean(axis=(1, 3), dtype=np.float32)
    return shrunk


def linear_to_srgb(values: Float32Array) -> Float32Array:
    """Clip linear values to 0..1 and apply the sRGB transfer curve (IEC 61966-2-1)."""
    clipped = np.clip(values, 0.0, 1.0)
    curve = 1.055 * np.power(clipped, 1.0 / 2.4) - 0.055
    encoded: Float32Array = np.where(clipped <= 0.0031308, clipped * 12.92, curve)
    return encoded.astype(np.float32, copy=False)


def srgb_to_linear(value: float) -> float:
    """Return the linear value of an sRGB-encoded value in 0..1."""
    if value <= 0.04045:
        return value / 12.92
    return float(((value + 0.055) / 1.055) ** 2.4)
