"""Split a JobSpec into the tasks that workers run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flamenco_p2p.errors import InvalidInput
from flamenco_p2p.frames import format_frames, parse_frames
from flamenco_p2p.jobs.spec import JOB_TYPES, JobSpec


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task of a compiled job; index is its dispatch position, from 0."""

    index: int
    name: str
    frames: tuple[int, ...]
    payload: dict[str, Any]


def compile_job(spec: JobSpec) -> list[TaskSpec]:
    """Split spec into tasks in dispatch order.

    Raises FrameSpecError for a frame spec that does not parse and InvalidInput
    for an unknown job type.
    """
    if spec.job_type == "blender-render":
        return _compile_render(spec.settings)
    if spec.job_type == "sleep":
        return _compile_sleep(spec.settings)
    raise InvalidInput(
        f"job_type is {spec.job_type!r}; known job types: {', '.join(JOB_TYPES)}"
    )


def _compile_render(settings: dict[str, Any]) -> list[TaskSpec]:
    """Chunk the frames, in the order the frame spec lists them."""
    frames = parse_frames(settings["frames"])
    chunk_size: int = settings["chunk_size"]
    chunks = [
        frames[start : start + chunk_size]
        for start in range(0, len(frames), chunk_size)
    ]
    return [
        TaskSpec(
            index=index,
            name=f"render {format_frames(chunk)}",
            frames=tuple(chunk),
            payload={"chunk": index, "chunks": len(chunks)},
        )
        for index, chunk in enumerate(chunks)
    ]


def _compile_sleep(settings: dict[str, Any]) -> list[TaskSpec]:
    failing = set(settings["fail_tasks"])
    duration: float = settings["duration"]
    return [
        TaskSpec(
            index=index,
            name=f"sleep {index}",
            frames=(),
            payload={"duration": duration, "fail": index in failing},
        )
        for index in range(settings["tasks"])
    ]
