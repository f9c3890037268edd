"""Blender output file names, computed without Blender.

frame_path() reproduces ``scene.render.frame_path(frame=n)`` of bpy 5.0.1 for image
formats on POSIX systems; tests/test_outputs_bpy.py compares the two on many paths.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import PurePosixPath

from flamenco_p2p.errors import InvalidInput

DEFAULT_FRAME_DIGITS = 4
"""Digits Blender appends when the file name has no ``#``."""

# Extensions that Blender replaces by the output format's extension instead of
# appending to them (``shot_####.jpg`` with PNG output gives ``shot_0001.png``).
# Checked against bpy 5.0.1 in tests/test_outputs_bpy.py.
KNOWN_IMAGE_EXTENSIONS = frozenset(
    {
        ".png", ".tga", ".bmp", ".jpg", ".jpeg", ".sgi", ".rgb", ".rgba",
        ".tif", ".tiff", ".tx", ".jp2", ".j2c", ".hdr", ".dds", ".dpx",
        ".cin", ".exr", ".psd", ".pdd", ".psb", ".webp",
    }
)  # fmt: skip

# Second spellings that Blender keeps for a format (``.jpeg`` stays with JPEG output).
_EXTENSION_ALIASES: Mapping[str, tuple[str, ...]] = {
    ".jpg": (".jpg", ".jpeg"),
    ".tif": (".tif", ".tiff"),
}

_UNSAFE_CHARS = re.compile(r'[/\\:*?"<>|\x00-\x1f]')
_MAX_NAME_BYTES = 255
_MAX_KEPT_SUFFIX_BYTES = 32
_TEMPLATE_PART = re.compile(r"\{\{|\}\}|\{[^{}]*\}|[{}]")
_REDUNDANT_SEPARATORS = re.compile(r"/(?:\.?/)+")


def frame_path(
    template: str,
    frame: int,
    blend_dir: str | None = None,
    extension: str = ".png",
    variables: Mapping[str, str] | None = None,
) -> str:
    """Compute the file that Blender writes for frame when render.filepath is template.

    ``//`` makes the path relative to blend_dir. The last run of ``#`` in the file
    name becomes the frame number, zero-padded like C's ``%.*d``. A file name
    without ``#`` gets 4 digits appended. extension is the output format's
    extension (``""`` when use_file_extension is off). variables fills Blender's
    ``{name}`` path templates. Raises InvalidInput for a ``//`` template without
    blend_dir and for template expressions that variables cannot fill.
    """
    # NOTE: Blender cuts paths at 1024 bytes (FILE_MAX); longer results differ.
    path = _expand_variables(template, variables or {})
    blend_relative = path.startswith("//")
    path = _unify_separators(path)
    if blend_relative:
        if blend_dir is None:
            raise InvalidInput(
                f"output template {template!r} is relative to the blend file (//); "
                "pass blend_dir or use an absolute path"
            )
        path = normalize_path(blend_dir).rstrip("/") + "/" + path[2:]
    path = normalize_path(path)
    path = _insert_frame(path, frame)
    if extension:
        path = _ensure_extension(path, extension)
    return path


def _expand_variables(template: str, variables: Mapping[str, str]) -> str:
    """Fill ``{name}`` expressions and unescape ``{{`` and ``}}`` like Blender 5.0."""

    def replace(match: re.Match[str]) -> str:
        text = match.group()
        if text in ("{{", "}}"):
            return text[0]
        name = text[1:-1]
        if len(text) >= 2 and name in variables:
            return variables[name]
        known = ", ".join(sorted(variables)) or "none"
        raise InvalidInput(
            f"output template {template!r} uses {text!r}, which is not a known path "
            f"template variable (known here: {known}); write a literal brace as "
            "{{ or }}"
        )

    if "{" not in template and "}" not in template:
        return template
    return _TEMPLATE_PART.sub(replace, template)


def _unify_separators(path: str) -> str:
    """Turn backslashes into slashes and ``C:\\`` into ``/c/`` like Blender on POSIX.

    A UNC prefix (``\\\\`` or ``\\\\?\\``) keeps its backslashes.
    """
    drive = path[:1]
    if (
        drive.isascii()
        and drive.isalpha()
        and path[1:2] == ":"
        and path[2:3] in ("\\", "/")
    ):
        path = "/" + drive.lower() + path[2:]
    prefix_len = 0
    if path.startswith("\\\\"):
        prefix_len = 4 if path[2:4] == "?\\" else 2
    return path[:prefix_len] + path[prefix_len:].replace("\\", "/")


def normalize_path(path: str) -> str:
    """Remove ``.``, ``..`` and repeated slashes like Blender's BLI_path_normalize.

    Unlike os.path.normpath, a trailing slash stays (it means "directory, no file
    name"), a final ``.`` stays as a file name and a leading ``//`` stays.
    """
    prefix = ""
    rest = path
    if rest.startswith("//"):
        prefix = "//"
        rest = rest[2:].lstrip("/")
    absolute = rest.startswith("/")
    relative = bool(rest) and not absolute
    rest = _REDUNDANT_SEPARATORS.sub("/", rest)
    if relative and len(rest) > 2 and rest.startswith("./"):
        rest = rest[2:]
    rest = _collapse_parents(rest[1:] if absolute else rest)
    if absolute:
        rest = "/" + _strip_leading_parents(rest)
    elif relative and not rest and not prefix:
        rest = "."
    return prefix + rest


def _collapse_parents(path: str) -> str:
    """Cancel each ``..`` against the directory before it; unmatched ones go first."""
    parts = path.split("/")
    ends_with_slash = len(parts) > 1 and parts[-1] == ""
    if ends_with_slash:
        parts.pop()
    parents: list[str] = []
    kept: list[str] = []
    last_cancelled = False
    for part in parts:
        last_cancelled = part == ".." and bool(kept)
        if part != "..":
            kept.append(part)
        elif kept:
            kept.pop()
        else:
            parents.append(part)
    # "a/b/.." leaves "a/", but an unmatched final ".." stays the file name.
    joined = "/".join(parents + kept)
    if joined and (ends_with_slash or last_cancelled):
        return joined + "/"
    return joined


def _strip_leading_parents(path: str) -> str:
    while path == ".." or path.startswith("../"):
        path = path[3:]
    return path


def _insert_frame(path: str, frame: int) -> str:
    slash = max(path.rfind("/"), path.rfind("\\"))
    directory, name = path[: slash + 1], path[slash + 1 :]
    if "#" not in name:
        name += "#" * DEFAULT_FRAME_DIGITS
    end = name.rindex("#") + 1
    start = end
    while start > 0 and name[start - 1] == "#":
        start -= 1
    return directory + name[:start] + format_frame(frame, end - start) + name[end:]


def format_frame(frame: int, digits: int) -> str:
    """Format frame like C's ``%.*d``: at least digits digits, sign not counted."""
    sign = "-" if frame < 0 else ""
    return sign + str(abs(frame)).zfill(digits)


def _ensure_extension(path: str, extension: str) -> str:
    accepted = _EXTENSION_ALIASES.get(extension.lower(), (extension.lower(),))
    lowered = path.lower()
    if any(lowered.endswith(suffix) for suffix in accepted):
        return path
    if any(lowered.endswith(suffix) for suffix in KNOWN_IMAGE_EXTENSIONS):
        return path[: _extension_start(path)] + extension
    return path.rstrip(".") + extension


def _extension_start(path: str) -> int:
    """Return where the file name's extension starts, like os.path.splitext."""
    start = len(path)
    seen_name = False
    for index, char in enumerate(path):
        if char in "/\\":
            start, seen_name = len(path), False
        elif char != ".":
            seen_name = True
        elif seen_name:
            start = index
    return start


def split_output(
    output: str, cwd: str, blend_dir: str | None = None
) -> tuple[str, str]:
    """Split the CLI's ``--output`` value into (absolute directory, file name template).

    A value that ends in a slash or names an existing directory is a directory,
    with template ``""`` (Blender's default: 4-digit frame numbers). Otherwise the
    last component is the template. Relative values are relative to cwd; a value
    starting with ``//`` is relative to blend_dir, as in Blender.
    """
    if not output or "\x00" in output:
        raise InvalidInput(
            f"output {output!r} is empty or contains NUL; give a directory such as "
            "./render/ or a template such as ./render/shot_####"
        )
    path = _absolute_output(output, cwd, blend_dir)
    directory, template = os.path.split(path)
    if template in ("", ".", "..") or os.path.isdir(path):
        return os.path.normpath(path), ""
    return os.path.normpath(directory), template


def _absolute_output(output: str, cwd: str, blend_dir: str | None) -> str:
    if output.startswith("//"):
        if blend_dir is None:
            raise InvalidInput(
                f"output {output!r} is relative to the blend file (//); "
                "give a path relative to the current directory or an absolute one"
            )
        return os.path.join(blend_dir, output[2:])
    return os.path.join(cwd, os.path.expanduser(output))


def template_warnings(template: str, last_frame_digits: int) -> list[str]:
    """List problems with a file name template that Blender accepts but users regret.

    last_frame_digits is the number of digits of the largest absolute frame number.
    """
    name = PurePosixPath(template.replace("\\", "/")).name if template else ""
    warnings: list[str] = []
    runs = re.findall(r"#+", name)
    if not runs:
        warnings.append(
            f"output template {template!r} has no '#': Blender appends the frame "
            f"number with {DEFAULT_FRAME_DIGITS} digits; add #### where it goes"
        )
        digits = DEFAULT_FRAME_DIGITS
    else:
        digits = len(runs[-1])
        if len(runs) > 1:
            warnings.append(
                f"output template {template!r} has {len(runs)} runs of '#': only the "
                "last one becomes the frame number, the others stay as '#'"
            )
    if digits < last_frame_digits:
        warnings.append(
            f"output template {template!r} pads frame numbers to {digits} digits but "
            f"the last frame has {last_frame_digits}: file names will not sort in "
            f"frame order; use {'#' * last_frame_digits}"
        )
    return warnings


def safe_path_component(name: str) -> str:
    """Make name usable as one file or directory name on Linux, macOS and Windows.

    Replaces ``/ \\ : * ? " < > |``, NUL and other control characters by ``_``,
    shortens the result to 255 UTF-8 bytes (keeping a short extension), and turns
    ``""``, ``.`` and ``..`` into underscores.
    """
    cleaned = _UNSAFE_CHARS.sub("_", name)
    if cleaned in ("", ".", ".."):
        return "_" * max(1, len(cleaned))
    if len(cleaned.encode()) <= _MAX_NAME_BYTES:
        return cleaned
    stem, dot, suffix = cleaned.rpartition(".")
    kept_suffix = dot + suffix
    if not stem or len(kept_suffix.encode()) > _MAX_KEPT_SUFFIX_BYTES:
        stem, kept_suffix = cleaned, ""
    budget = _MAX_NAME_BYTES - len(kept_suffix.encode())
    shortened = stem.encode()[:budget].decode(errors="ignore") + kept_suffix
    return shortened if shortened not in (".", "..") else "_"
