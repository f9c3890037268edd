"""Job specifications as submitted by a user, validated on construction.

A JobSpec travels between nodes as a plain dict (to_dict/from_dict) that msgpack
and JSON can encode. Construction validates and normalizes every field and raises
InvalidInput naming the field, so every JobSpec object is valid. Only the frame
spec itself is parsed later, by compile_job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from flamenco_p2p.errors import InvalidInput
from flamenco_p2p.frames import MAX_FRAMES, MAX_SPEC_LENGTH

JOB_TYPES = ("blender-render", "sleep")
"""Job types that compile_job can split into tasks."""

GPU_MODES = ("none", "prefer", "require")
GPU_TYPES = ("CUDA", "OPTIX", "HIP", "METAL", "ONEAPI")
"""Cycles device types, as Blender names them."""

ENGINES = ("CYCLES", "BLENDER_EEVEE", "BLENDER_WORKBENCH")
DEVICES = ("CPU", "GPU")

MAX_NAME_LENGTH = 256
MAX_NODE_ID_LENGTH = 128
MAX_FILE_NAME_BYTES = 255
MAX_PATH_LENGTH = 4096
MAX_CHUNK_SIZE = 1000
MAX_SLEEP_SECONDS = 3600.0

_SHA256 = re.compile(r"[0-9a-f]{64}")
_BLENDER_VERSION = re.compile(r"(\d{1,3})\.(\d{1,3})(?:\.(\d{1,3}))?")
_OVERRIDE_RANGES = {"samples": (1, 1_000_000), "resolution_percentage": (1, 1000)}
_OVERRIDE_CHOICES = {"engine": ENGINES, "device": DEVICES}
_RENDER_KEYS = frozenset(
    {
        "blend_sha256",
        "blend_size",
        "blend_name",
        "manifest_sha256",
        "blender_version",
        "frames",
        "chunk_size",
        "output_dir",
        "output_name",
        "overrides",
    }
)
_SLEEP_KEYS = frozenset({"tasks", "duration", "fail_tasks"})


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a worker needs to take a job's tasks.

    gpu is "none" (CPU only is fine), "prefer" (GPU workers first) or "require"
    (only workers with one of gpu_types, or any GPU when gpu_types is empty).
    min_blender is the oldest Blender version, like "4.2".
    """

    gpu: str = "none"
    gpu_types: tuple[str, ...] = ()
    min_blender: str | None = None

    def __post_init__(self) -> None:
        if self.gpu not in GPU_MODES:
            raise InvalidInput(
                f"requirements.gpu is {self.gpu!r}; use one of {', '.join(GPU_MODES)}"
            )
        types = _normalize_gpu_types(self.gpu_types)
        if types and self.gpu == "none":
            raise InvalidInput(
                f"requirements.gpu_types is {list(types)} but requirements.gpu is "
                "'none'; set gpu to 'prefer' or 'require', or drop gpu_types"
            )
        object.__setattr__(self, "gpu_types", types)
        if self.min_blender is not None:
            parse_blender_version(self.min_blender, "requirements.min_blender")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Requirements:
        """Build Requirements from to_dict() output; raises InvalidInput."""
        _require_mapping(data, "requirements")
        _reject_unknown_keys(data, {"gpu", "gpu_types", "min_blender"}, "requirements")
        gpu_types = data.get("gpu_types", ())
        if not isinstance(gpu_types, list | tuple):
            raise InvalidInput(
                f"requirements.gpu_types is {gpu_types!r}; give a list such as "
                '["CUDA", "OPTIX"]'
            )
        min_blender = data.get("min_blender")
        if min_blender is not None and not isinstance(min_blender, str):
            raise InvalidInput(
                f"requirements.min_blender is {min_blender!r}; give a string like '4.2'"
            )
        return cls(
            gpu=_require_str(data.get("gpu", "none"), "requirements.gpu"),
            gpu_types=tuple(gpu_types),
            min_blender=min_blender,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the requirements as plain types."""
        return {
            "gpu": self.gpu,
            "gpu_types": list(self.gpu_types),
            "min_blender": self.min_blender,
        }


def _normalize_gpu_types(gpu_types: tuple[str, ...]) -> tuple[str, ...]:
    if not isinstance(gpu_types, tuple):
        raise InvalidInput(f"requirements.gpu_types is {gpu_types!r}; give a tuple")
    normalized: list[str] = []
    for gpu_type in gpu_types:
        name = gpu_type.upper() if isinstance(gpu_type, str) else gpu_type
        if name not in GPU_TYPES:
            raise InvalidInput(
                f"requirements.gpu_types contains {gpu_type!r}; use any of "
                f"{', '.join(GPU_TYPES)}"
            )
        if name not in normalized:
            normalized.append(name)
    return tuple(sorted(normalized, key=GPU_TYPES.index))


def parse_blender_version(version: str, field_name: str) -> tuple[int, int, int]:
    """Parse "4.2" or "4.2.1" into (4, 2, 0) or (4, 2, 1); raises InvalidInput."""
    match = _BLENDER_VERSION.fullmatch(version) if isinstance(version, str) else None
    if match is None:
        raise InvalidInput(
            f"{field_name} is {version!r}; give a Blender version like '4.2' or '4.2.1'"
        )
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job as submitted, before it is split into tasks.

    settings depend on job_type (see validate_settings). submitter_node is the
    node that owns the output directory and serves the blend file.
    """

    name: str
    job_type: str
    priority: int = 50
    settings: dict[str, Any] = field(default_factory=dict)
    requirements: Requirements = field(default_factory=Requirements)
    submitter_node: str = ""

    def __post_init__(self) -> None:
        _require_text(self.name, "name", MAX_NAME_LENGTH)
        if self.job_type not in JOB_TYPES:
            known = ", ".join(JOB_TYPES)
            raise InvalidInput(
                f"job_type is {self.job_type!r}; known job types: {known}"
            )
        _require_int(self.priority, "priority", 0, 100)
        if not isinstance(self.requirements, Requirements):
            raise InvalidInput(
                f"requirements is {self.requirements!r}; give a Requirements object"
            )
        _require_text(self.submitter_node, "submitter_node", MAX_NODE_ID_LENGTH)
        settings = validate_settings(self.job_type, self.settings)
        object.__setattr__(self, "settings", settings)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """Build a JobSpec from to_dict() output; raises InvalidInput naming a field."""
        _require_mapping(data, "job")
        allowed = {
            "name",
            "job_type",
            "priority",
            "settings",
            "requirements",
            "submitter_node",
        }
        _reject_unknown_keys(data, allowed, "job")
        for key in ("name", "job_type", "submitter_node"):
            if key not in data:
                raise InvalidInput(f"job.{key} is missing")
        requirements = Requirements.from_dict(data.get("requirements", {}))
        settings = data.get("settings", {})
        _require_mapping(settings, "settings")
        return cls(
            name=data["name"],
            job_type=data["job_type"],
            priority=data.get("priority", 50),
            settings=dict(settings),
            requirements=requirements,
            submitter_node=data["submitter_node"],
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as plain dicts, lists, strings and numbers."""
        return {
            "name": self.name,
            "job_type": self.job_type,
            "priority": self.priority,
            "settings": _plain_copy(self.settings),
            "requirements": self.requirements.to_dict(),
            "submitter_node": self.submitter_node,
        }


def validate_settings(job_type: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Check the settings of job_type and return a normalized copy with defaults."""
    _require_mapping(settings, "settings")
    if job_type == "blender-render":
        return _render_settings(settings)
    if job_type == "sleep":
        return _sleep_settings(settings)
    raise InvalidInput(
        f"job_type is {job_type!r}; known job types: {', '.join(JOB_TYPES)}"
    )


def _render_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    _reject_unknown_keys(settings, _RENDER_KEYS, "settings")
    sha256 = _require_str(settings.get("blend_sha256"), "settings.blend_sha256")
    if not _SHA256.fullmatch(sha256.lower()):
        raise InvalidInput(
            f"settings.blend_sha256 is {sha256!r}; give the 64 hex digit SHA-256 "
            "of the blend file"
        )
    frames = _require_str(settings.get("frames"), "settings.frames")
    if not frames.strip() or len(frames) > MAX_SPEC_LENGTH:
        raise InvalidInput(
            f"settings.frames is {frames[:60]!r}; give a frame spec like '1-250' "
            f"of at most {MAX_SPEC_LENGTH} characters"
        )
    output_name = _require_str(settings.get("output_name", ""), "settings.output_name")
    extra: dict[str, Any] = {}
    if settings.get("manifest_sha256") is not None:
        manifest = _require_str(settings["manifest_sha256"], "settings.manifest_sha256")
        if not _SHA256.fullmatch(manifest):
            raise InvalidInput(
                f"settings.manifest_sha256 is {manifest[:80]!r}; give the 64 hex"
                " digit SHA-256 of the job's file list"
            )
        extra["manifest_sha256"] = manifest
    # The Blender version that saved the file. The add-on also sets
    # requirements.min_blender from it, which the lease query matches.
    if settings.get("blender_version") is not None:
        version = _require_str(settings["blender_version"], "settings.blender_version")
        parse_blender_version(version, "settings.blender_version")
        extra["blender_version"] = version
    return extra | {
        "blend_sha256": sha256.lower(),
        "blend_size": _require_int(
            settings.get("blend_size"), "settings.blend_size", 1
        ),
        "blend_name": _require_file_name(settings.get("blend_name")),
        "frames": frames,
        "chunk_size": _require_int(
            settings.get("chunk_size", 1), "settings.chunk_size", 1, MAX_CHUNK_SIZE
        ),
        "output_dir": _require_absolute_path(settings.get("output_dir")),
        "output_name": _check_output_name(output_name),
        "overrides": _overrides(settings.get("overrides", {})),
    }


def _sleep_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    _reject_unknown_keys(settings, _SLEEP_KEYS, "settings")
    tasks = _require_int(settings.get("tasks"), "settings.tasks", 1, MAX_FRAMES)
    duration = settings.get("duration")
    if (
        not isinstance(duration, int | float)
        or isinstance(duration, bool)
        or not math.isfinite(duration)
        or not 0 <= duration <= MAX_SLEEP_SECONDS
    ):
        raise InvalidInput(
            f"settings.duration is {duration!r}; give seconds from 0 to "
            f"{MAX_SLEEP_SECONDS:g}"
        )
    fail_tasks = settings.get("fail_tasks", [])
    if not isinstance(fail_tasks, list | tuple):
        raise InvalidInput(
            f"settings.fail_tasks is {fail_tasks!r}; give a list of task indices"
        )
    indices = [
        _require_int(index, "settings.fail_tasks[]", 0, tasks - 1)
        for index in fail_tasks
    ]
    return {
        "tasks": tasks,
        "duration": float(duration),
        "fail_tasks": sorted(set(indices)),
    }


def _overrides(overrides: Any) -> dict[str, Any]:
    _require_mapping(overrides, "settings.overrides")
    allowed = set(_OVERRIDE_CHOICES) | set(_OVERRIDE_RANGES)
    _reject_unknown_keys(overrides, allowed, "settings.overrides")
    result: dict[str, Any] = {}
    for key, choices in _OVERRIDE_CHOICES.items():
        if key in overrides:
            if overrides[key] not in choices:
                raise InvalidInput(
                    f"settings.overrides.{key} is {overrides[key]!r}; use one of "
                    f"{', '.join(choices)}"
                )
            result[key] = overrides[key]
    for key, (low, high) in _OVERRIDE_RANGES.items():
        if key in overrides:
            result[key] = _require_int(
                overrides[key], f"settings.overrides.{key}", low, high
            )
    return result


def _check_output_name(name: str) -> str:
    invalid = any(char in name for char in "/\\\x00")
    if invalid or len(name.encode()) > MAX_FILE_NAME_BYTES:
        raise InvalidInput(
            f"settings.output_name is {name!r}; give a file name template such as "
            f"'shot_####' without directories, at most {MAX_FILE_NAME_BYTES} bytes"
        )
    return name


def _require_file_name(value: Any) -> str:
    name = _require_str(value, "settings.blend_name")
    invalid = any(char in name for char in "/\\\x00") or name in ("", ".", "..")
    if invalid or len(name.encode()) > MAX_FILE_NAME_BYTES:
        raise InvalidInput(
            f"settings.blend_name is {name!r}; give the blend file's name without "
            "directories, such as 'shot.blend'"
        )
    return name


def _require_absolute_path(value: Any) -> str:
    path = _require_str(value, "settings.output_dir")
    absolute = PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute()
    if not absolute or "\x00" in path or len(path) > MAX_PATH_LENGTH:
        raise InvalidInput(
            f"settings.output_dir is {path!r}; give an absolute directory on the "
            "submitting node"
        )
    return path


def _require_mapping(value: Any, field_name: str) -> None:
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{field_name} is {value!r}; give a mapping (dict)")
    for key in value:
        if not isinstance(key, str):
            raise InvalidInput(f"{field_name} has key {key!r}; keys must be strings")


def _reject_unknown_keys(
    data: Mapping[str, Any], allowed: set[str] | frozenset[str], field_name: str
) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        known = ", ".join(sorted(allowed))
        raise InvalidInput(f"{field_name} has unknown keys {unknown}; allowed: {known}")


def _require_str(value: Any, field_name: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{field_name} is {value!r}; give a string")
    return value


def _require_text(value: Any, field_name: str, max_length: int) -> str:
    text = _require_str(value, field_name)
    if not text.strip() or len(text) > max_length or "\x00" in text:
        raise InvalidInput(
            f"{field_name} is {text[:60]!r}; give 1 to {max_length} characters"
        )
    return text


def _require_int(
    value: Any, field_name: str, low: int = 0, high: int | None = None
) -> int:
    in_range = isinstance(value, int) and value >= low
    if in_range and high is not None:
        in_range = value <= high
    if isinstance(value, bool) or not in_range:
        limit = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InvalidInput(f"{field_name} is {value!r}; give an integer {limit}")
    return int(value)


def _plain_copy(value: Any) -> Any:
    """Copy nested dicts and lists so callers cannot change a spec's settings."""
    if isinstance(value, Mapping):
        return {key: _plain_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_copy(item) for item in value]
    return value
