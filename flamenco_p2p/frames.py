"""Frame specifications: parse ``1-10,15,20-30x2`` into frame numbers and back.

Grammar, one part per comma, whitespace ignored anywhere::

    N           a single frame, may be negative (``-5``)
    A-B         A to B inclusive; counts down when A > B (``100-1``)
    A-BxS       every S-th frame from A towards B (``1-10x3`` = 1, 4, 7, 10)
    A:B  A:B:S  the same range written with colons
    A..B        the same range written with two dots; ``A..BxS`` takes a step

A frame that appears twice is rendered once, at its first position.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from flamenco_p2p.errors import FrameSpecError

MAX_FRAMES = 1_000_000
"""Maximum number of frames one spec may expand to, counted before duplicates drop."""

MAX_SPEC_LENGTH = 10_000
"""Maximum length of a spec string in characters."""

# Blender's frame range (MINAFRAME..MAXFRAME), the hard limits of Scene.frame_current
# in bpy 5.0.1. Blender cannot render a frame outside it.
MIN_FRAME = -1_048_574
MAX_FRAME = 1_048_574

_INT = r"-?\d+"
_PART_PATTERNS = (
    re.compile(rf"(?P<a>{_INT})"),
    re.compile(rf"(?P<a>{_INT})-(?P<b>{_INT})(?:x(?P<step>\d+))?"),
    re.compile(rf"(?P<a>{_INT}):(?P<b>{_INT})(?::(?P<step>\d+))?"),
    re.compile(rf"(?P<a>{_INT})\.\.(?P<b>{_INT})(?:x(?P<step>\d+))?"),
)
# Longer numbers are out of range anyway, and int() rejects strings over 4300 digits.
_MAX_DIGITS = 9
_WHITESPACE = re.compile(r"\s+")
_SPEC_PREVIEW_CHARS = 60


def parse_frames(spec: str) -> list[int]:
    """Expand a frame spec into frame numbers in dispatch order, each frame once.

    Raises FrameSpecError quoting the part that does not parse, or naming the
    frame count or spec length when a limit is exceeded.
    """
    if len(spec) > MAX_SPEC_LENGTH:
        preview = spec[:_SPEC_PREVIEW_CHARS] + "..."
        raise FrameSpecError(
            preview,
            preview,
            f"the spec is {len(spec)} characters long, the limit is "
            f"{MAX_SPEC_LENGTH}; split the job into several jobs",
        )
    compact = _WHITESPACE.sub("", spec)
    if not compact:
        raise FrameSpecError(spec, spec, "the spec is empty; give frames like 1-250")
    ranges = [_parse_part(spec, part) for part in compact.split(",")]
    total = sum(len(frame_range) for frame_range in ranges)
    if total > MAX_FRAMES:
        raise FrameSpecError(
            spec[:_SPEC_PREVIEW_CHARS],
            compact[:_SPEC_PREVIEW_CHARS],
            f"the spec expands to {total} frames, the limit is {MAX_FRAMES}; "
            "split the job into several jobs",
        )
    return list(dict.fromkeys(_chain(ranges)))


def _chain(ranges: Iterable[range]) -> Iterator[int]:
    for frame_range in ranges:
        yield from frame_range


def _parse_part(spec: str, part: str) -> range:
    if not part:
        raise FrameSpecError(spec, part, "empty part between commas")
    match = None
    for pattern in _PART_PATTERNS:
        match = pattern.fullmatch(part)
        if match:
            break
    if match is None:
        raise FrameSpecError(
            spec, part, "expected N, A-B, A-BxS, A:B:S or A..B with integer frames"
        )
    first = _to_frame(spec, part, match["a"])
    if "b" not in match.groupdict():
        return range(first, first + 1)
    last = _to_frame(spec, part, match["b"])
    step_text = match["step"] or "1"
    step = int(step_text) if len(step_text) <= _MAX_DIGITS else MAX_FRAMES + 1
    if step < 1:
        raise FrameSpecError(spec, part, f"step {step} must be 1 or more")
    if first <= last:
        return range(first, last + 1, step)
    return range(first, last - 1, -step)


def _to_frame(spec: str, part: str, text: str) -> int:
    frame = int(text) if len(text.lstrip("-")) <= _MAX_DIGITS else None
    if frame is None or not MIN_FRAME <= frame <= MAX_FRAME:
        raise FrameSpecError(
            spec,
            part,
            f"frame {text} is outside Blender's frame range {MIN_FRAME}..{MAX_FRAME}",
        )
    return frame


def format_frames(frames: Iterable[int]) -> str:
    """Write frames as a compact spec that parse_frames expands to the same order.

    Duplicates are dropped (first occurrence kept). Runs of consecutive frames
    become ``A-B`` and evenly spaced runs of three or more become ``A-BxS``.
    An empty input gives ``""``, which parse_frames rejects.
    """
    unique = list(dict.fromkeys(frames))
    parts: list[str] = []
    start = 0
    while start < len(unique):
        end = _run_end(unique, start)
        parts.append(_format_run(unique[start], unique[end - 1], end - start))
        start = end
    return ",".join(parts)


def _run_end(frames: list[int], start: int) -> int:
    """Return the end index (exclusive) of the arithmetic run that begins at start."""
    if start + 1 >= len(frames):
        return start + 1
    step = frames[start + 1] - frames[start]
    end = start + 2
    while end < len(frames) and frames[end] - frames[end - 1] == step:
        end += 1
    if end - start == 2 and abs(step) != 1:
        # Two frames with a gap read better as "1,5" than as "1-5x4".
        return start + 1
    return end


def _format_run(first: int, last: int, count: int) -> str:
    if count == 1:
        return str(first)
    step = abs(last - first) // (count - 1)
    if step == 1:
        return f"{first}-{last}"
    return f"{first}-{last}x{step}"
