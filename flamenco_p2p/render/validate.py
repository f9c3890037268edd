"""Checks that a rendered output file exists, is complete and decodes as an image.

PNG, JPEG and TIFF (and any other format that Pillow reads) are decoded in full by
Pillow. Pillow cannot decode OpenEXR, so an EXR file is checked structurally
instead: the magic number, the version field, every header attribute, the required
attributes, and the chunk offset table, whose entries must all point inside the file.
That catches truncated and garbled files but not damaged compressed pixel data.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from flamenco_p2p.errors import RenderError

EXR_MAGIC = b"\x76\x2f\x31\x01"
HASH_CHUNK_BYTES = 1 << 20
# Scan lines per chunk for OpenEXR compression codes 0-9 (NONE, RLE, ZIPS, ZIP, PIZ,
# PXR24, B44, B44A, DWAA, DWAB) as the OpenEXR library defines them. ZIP, which
# Blender 5.0.1 writes by default, was checked against its output.
EXR_LINES_PER_CHUNK = {
    0: 1,
    1: 1,
    2: 1,
    3: 16,
    4: 32,
    5: 16,
    6: 32,
    7: 32,
    8: 32,
    9: 256,
}
EXR_REQUIRED_ATTRIBUTES = frozenset(
    {
        "channels",
        "compression",
        "dataWindow",
        "displayWindow",
        "lineOrder",
        "pixelAspectRatio",
        "screenWindowCenter",
        "screenWindowWidth",
    }
)
EXR_FLAG_TILED = 0x200
EXR_FLAG_LONG_NAMES = 0x400
EXR_FLAG_DEEP = 0x800
EXR_FLAG_MULTIPART = 0x1000
# Pillow errors for files that are not images or are cut short.
PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


@dataclass(frozen=True, slots=True)
class OutputInfo:
    """A validated output file: its size in bytes, SHA-256 (hex) and format."""

    path: str
    size: int
    sha256: str
    format: str  # Blender's name for it: "PNG", "JPEG", "TIFF", "OPEN_EXR", ...


def validate_output(path: str) -> OutputInfo:
    """Check one output file and return its size, hash and format.

    Raises RenderError naming the path when the file is missing, empty, not an image,
    or truncated.
    """
    size = file_size(path)
    with open(path, "rb") as file:
        head = file.read(len(EXR_MAGIC))
    if head == EXR_MAGIC:
        check_exr(path)
        image_format = "OPEN_EXR"
    else:
        image_format = decode_with_pillow(path)
    return OutputInfo(
        path=path, size=size, sha256=file_sha256(path), format=image_format
    )


def file_size(path: str) -> int:
    """Return the size of a non-empty regular file, raising RenderError otherwise."""
    try:
        stat = os.stat(path)
    except FileNotFoundError as exc:
        raise RenderError(
            f"output file '{path}' is missing: Blender did not write it; "
            "check the output directory and the scene's output format"
        ) from exc
    except OSError as exc:
        raise RenderError(f"cannot read output file '{path}': {exc.strerror}") from exc
    if not os.path.isfile(path):
        raise RenderError(f"output path '{path}' is not a regular file")
    if stat.st_size == 0:
        raise RenderError(
            f"output file '{path}' is empty; the render or the disk write failed"
        )
    return stat.st_size


def file_sha256(path: str) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def decode_with_pillow(path: str) -> str:
    """Verify and fully decode an image with Pillow and return its format name."""
    # NOTE: Pillow raises DecompressionBombError above 2 * Image.MAX_IMAGE_PIXELS
    # (about 179 million pixels by default), so larger renders fail validation.
    try:
        with Image.open(path) as image:
            image_format = str(image.format)
            image.verify()
        # verify() leaves the image unusable, so decoding needs a second open.
        with Image.open(path) as image:
            image.load()
    except (*PILLOW_ERRORS, Image.DecompressionBombError) as exc:
        raise RenderError(
            f"output file '{path}' is not a valid image: {exc}; "
            "the file is truncated or corrupt, so render the frame again"
        ) from exc
    return image_format


def check_exr(path: str) -> None:
    """Check an OpenEXR file's headers and chunk offsets, raising RenderError."""
    # The whole file is read because the offset table can point anywhere in it.
    data = Path(path).read_bytes()
    try:
        ExrChecker(data).check()
    except (ValueError, struct.error) as exc:
        raise RenderError(
            f"output file '{path}' is not a valid OpenEXR file: {exc}; "
            "the file is truncated or corrupt, so render the frame again"
        ) from exc


class ExrChecker:
    """Walks an OpenEXR file's headers and offset tables, raising ValueError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def check(self) -> None:
        """Check the whole structure except the compressed pixel data."""
        self.position = len(EXR_MAGIC)
        (version_field,) = self.unpack("<I")
        if version_field & 0xFF != 2:
            raise ValueError(f"unsupported OpenEXR version {version_field & 0xFF}")
        max_name = 255 if version_field & EXR_FLAG_LONG_NAMES else 31
        headers = self.read_headers(version_field, max_name)
        tables = [self.read_offsets(header, version_field) for header in headers]
        table_end = self.position
        for part, offsets in enumerate(tables):
            self.check_offsets(part, offsets, table_end, version_field)

    def unpack(self, layout: str) -> tuple[int, ...]:
        """Read a struct layout at the current position."""
        width = struct.calcsize(layout)
        if self.position + width > len(self.data):
            raise ValueError(f"file ends inside the header at byte {self.position}")
        values = struct.unpack_from(layout, self.data, self.position)
        self.position += width
        return values

    def read_name(self, max_name: int) -> str:
        """Read a NUL-terminated attribute name or type name."""
        end = self.data.find(b"\0", self.position, self.position + max_name + 1)
        if end < 0:
            raise ValueError(f"unterminated name at byte {self.position}")
        name = self.data[self.position : end].decode("ascii", errors="replace")
        self.position = end + 1
        return name

    def read_headers(self, version_field: int, max_name: int) -> list[dict[str, bytes]]:
        """Read one header, or every part's header in a multi-part file."""
        headers = [self.read_header(max_name)]
        if version_field & EXR_FLAG_MULTIPART:
            while self.data[self.position : self.position + 1] != b"\0":
                headers.append(self.read_header(max_name))
            self.position += 1
        return headers

    def read_header(self, max_name: int) -> dict[str, bytes]:
        """Read attributes up to the empty name that ends a header."""
        attributes: dict[str, bytes] = {}
        while True:
            name = self.read_name(max_name)
            if not name:
                break
            self.read_name(max_name)
            (length,) = self.unpack("<i")
            if length < 0 or self.position + length > len(self.data):
                raise ValueError(f"attribute {name!r} has invalid size {length}")
            attributes[name] = self.data[self.position : self.position + length]
            self.position += length
        missing = sorted(EXR_REQUIRED_ATTRIBUTES - set(attributes))
        if missing:
            raise ValueError(f"header lacks required attributes {missing}")
        return attributes

    def read_offsets(self, header: dict[str, bytes], version_field: int) -> list[int]:
        """Read one part's chunk offset table."""
        count = chunk_count(header, version_field)
        if self.position + 8 * count > len(self.data):
            raise ValueError(f"file ends inside the offset table of {count} chunks")
        offsets = list(struct.unpack_from(f"<{count}Q", self.data, self.position))
        self.position += 8 * count
        return offsets

    def check_offsets(
        self, part: int, offsets: list[int], table_end: int, version_field: int
    ) -> None:
        """Check that every chunk starts after the tables and the last one fits."""
        size = len(self.data)
        for offset in offsets:
            if not table_end <= offset < size:
                raise ValueError(
                    f"part {part} chunk offset {offset} is outside the file "
                    f"({size} bytes), so the file is truncated"
                )
        if not offsets or version_field & EXR_FLAG_DEEP:
            return
        # A chunk starts with its coordinates and then its data size in bytes.
        multipart = 4 if version_field & EXR_FLAG_MULTIPART else 0
        coordinates = 16 if version_field & EXR_FLAG_TILED else 4
        last = max(offsets) + multipart + coordinates
        if last + 4 > size:
            raise ValueError(f"part {part} last chunk header is cut off")
        (data_size,) = struct.unpack_from("<i", self.data, last)
        if data_size < 0 or last + 4 + data_size > size:
            raise ValueError(
                f"part {part} last chunk needs {data_size} bytes but the file "
                f"ends after {size - last - 4}, so the file is truncated"
            )


def chunk_count(header: dict[str, bytes], version_field: int) -> int:
    """Return the number of chunks in one part, from chunkCount or the layout."""
    if "chunkCount" in header:
        (count,) = struct.unpack("<i", header["chunkCount"][:4])
        if count < 0:
            raise ValueError(f"invalid chunkCount {count}")
        return int(count)
    xmin, ymin, xmax, ymax = struct.unpack("<4i", header["dataWindow"][:16])
    if xmax < xmin or ymax < ymin:
        raise ValueError(f"invalid dataWindow {(xmin, ymin, xmax, ymax)}")
    width, height = xmax - xmin + 1, ymax - ymin + 1
    if version_field & EXR_FLAG_TILED or "tiles" in header:
        if "tiles" not in header:
            raise ValueError("tiled file lacks the tiles attribute")
        return tiled_chunk_count(header["tiles"], width, height)
    compression = header["compression"][0]
    lines = EXR_LINES_PER_CHUNK.get(compression)
    if lines is None:
        raise ValueError(f"unknown OpenEXR compression code {compression}")
    return math.ceil(int(height) / lines)


def tiled_chunk_count(tiles: bytes, width: int, height: int) -> int:
    """Return the tile count of a single-level tiled part."""
    tile_width, tile_height, mode = struct.unpack("<IIB", tiles[:9])
    if mode & 0x0F != 0 or tile_width == 0 or tile_height == 0:
        # TODO: count mipmap and ripmap levels. Until then such files fail
        # validation unless their header has a chunkCount attribute.
        raise ValueError("mipmapped or ripmapped tiled OpenEXR files are not checked")
    return math.ceil(width / int(tile_width)) * math.ceil(height / int(tile_height))
