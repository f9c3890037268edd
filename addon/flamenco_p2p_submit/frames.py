"""Frame specs such as ``1-10,15,20-30x2``, parsed as the farm parses them.

The add-on runs on Blender's Python without the farm's packages, so this module
repeats the farm's grammar and limits. A test compares both parsers on many
inputs. One part per comma, whitespace ignored anywhere::

    N           a single frame, may be negative (``-5``)
    A-B         A to B inclusive; counts down when A > B (``100-1``)
    A-BxS       every S-th frame from A towards B (``1-10x3`` = 1, 4, 7, 10)
    A:B  A:B:S  the same range written with colons
    A..B        the same range written with two dots; ``A..BxS`` takes a step

A frame that appears twice is rendered once, at its first position.
"""

from __future__ import annotations

import re

MAX_FRAMES = 1_000_000
"""Maximum number of frames one spec may expand to, counted before duplicates drop."""

MAX_SPEC_LENGTH = 10_000
"""Maximum length of a spec in characters."""

# Blender's frame range (MINAFRAME..MAXFRAME in Blender 5.0).
MIN_FRAME = -1_048_574
MAX_FRAME = 1_048_574

_INT = r"-?\d+"
_PART_PATTERNS = (
    re.compile(rf"(?P<a>{_INT})"),
    re.compile(rf"(?P<a>{_INT})-(?P<b>{_INT})(?:x(?P<step>\d+))?"),
    re.compile(rf"(?P<a>{_INT}):(?P<b>{_INT})(?::(?P<step>\d+))?"),
    re.compile(rf"(?P<a>{_INT})\.\.(?P<b>{_INT})(?:x(?P<step>\d+))?"),
)
# Longer numbers are out of range anyway, and int() rejects over 4300 digits.
_MAX_DIGITS = 9
_WHITESPACE = re.compile(r"\s+")


class FrameSpecError(ValueError):
    """A frame spec that does not parse; the message quotes the part at fault."""


def parse_frames(spec: str) -> list[int]:
    """Expand a frame spec into frame numbers in render order, each frame once.

    Raises FrameSpecError quoting the part that does not parse, or naming the
    frame count or spec length when a limit is exceeded.
    """
    if len(spec) > MAX_SPEC_LENGTH:
        raise FrameSpecError(
            f"the frame spec is {len(spec)} characters long, the limit is"
            f" {MAX_SPEC_LENGTH}; split the job into several jobs"
        )
    compact = _WHITESPACE.sub("", spec)
    if not compact:
        raise FrameSpecError("the frame spec is empty; give frames like 1-250")
    ranges = [_parse_part(part) for part in compact.split(",")]
    total = sum(len(frame_range) for frame_range in ranges)
    if total > MAX_FRAMES:
        raise FrameSpecError(
            f"the frame spec expands to {total} frames, the limit is {MAX_FRAMES};"
            " split the job into several jobs"
        )
    frames: dict[int, None] = {}
    for frame_range in ranges:
        frames.update(dict.fromkeys(frame_range))
    return list(frames)


def count_frames(spec: str) -> int:
    """Return how many frames the spec renders; raises FrameSpecError."""
    return len(parse_frames(spec))


def scene_range_spec(frame_start: int, frame_end: int, frame_step: int = 1) -> str:
    """Return the spec of a scene's frame range, such as ``1-250`` or ``1-250x2``."""
    if frame_start == frame_end:
        return str(frame_start)
    step = f"x{frame_step}" if frame_step > 1 else ""
    return f"{frame_start}-{frame_end}{step}"


def _parse_part(part: str) -> range:
    if not part:
        raise FrameSpecError("the frame spec has an empty part between commas")
    match = None
    for pattern in _PART_PATTERNS:
        match = pattern.fullmatch(part)
        if match:
            break
    if match is None:
        raise FrameSpecError(
            f"frame part {part[:40]!r} is invalid; expected N, A-B, A-BxS, A:B:S or"
            " A..B with integer frames"
        )
    first = _to_frame(part, match["a"])
    if "b" not in match.groupdict():
        return range(first, first + 1)
    last = _to_frame(part, match["b"])
    step_text = match["step"] or "1"
    step = int(step_text) if len(step_text) <= _MAX_DIGITS else MAX_FRAMES + 1
    if step < 1:
        raise FrameSpecError(f"frame part {part!r} has step {step}; use 1 or more")
    if first <= last:
        return range(first, last + 1, step)
    return range(first, last - 1, -step)


def _to_frame(part: str, text: str) -> int:
    frame = int(text) if len(text.lstrip("-")) <= _MAX_DIGITS else None
    if frame is None or not MIN_FRAME <= frame <= MAX_FRAME:
        raise FrameSpecError(
            f"frame {text[:20]} in {part[:40]!r} is outside Blender's frame range"
            f" {MIN_FRAME}..{MAX_FRAME}"
        )
    return frame
