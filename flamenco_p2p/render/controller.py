"""Asyncio controller of the render child process (flamenco_p2p/render/runner.py).

A RenderProcess owns at most one child at a time and keeps it running between
renders, so a second render of the same unchanged file skips both the Blender start
and the file load. The child runs in its own session and process group, so cancel()
and close() reach any helper process that Blender starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flamenco_p2p.errors import ConfigError, InvalidInput, RenderError
from flamenco_p2p.render.runner import ENGINES, GPU_TYPES, OVERRIDE_KEYS
from flamenco_p2p.render.validate import validate_output

logger = logging.getLogger(__name__)

RUNNER_SCRIPT = str(Path(__file__).with_name("runner.py"))
BACKEND_KINDS = ("bpy", "blender")
# Seconds to wait for the child's ready event. An estimate: importing bpy 5.0.1
# takes under a second on a warm cache, and a cold disk or a slow node takes longer.
START_TIMEOUT = 120.0
# Maximum bytes in one protocol or log line.
LINE_LIMIT = 16 << 20
# Log lines kept for error messages.
LOG_TAIL_LINES = 5
# Blender's frame limit: the hard_min and hard_max of Scene.frame_current in bpy 5.0.1.
MAX_FRAME = 1048574


@dataclass(frozen=True, slots=True)
class RenderBackend:
    """How to start Blender: the bpy module under a Python, or a Blender binary."""

    kind: str = "bpy"  # "bpy" | "blender"
    python: str = sys.executable  # interpreter with bpy, for kind "bpy"
    blender_path: str | None = None  # for kind "blender"
    allow_scripts: bool = False

    def __post_init__(self) -> None:
        if self.kind not in BACKEND_KINDS:
            raise ConfigError(
                f"invalid render backend kind {self.kind!r}; use 'bpy' or 'blender'"
            )
        if self.kind == "blender" and not self.blender_path:
            raise ConfigError(
                "render backend kind 'blender' needs blender_path, "
                "the path of the Blender executable"
            )


@dataclass(frozen=True, slots=True)
class RenderRequest:
    """One render command: which file, which frames, and where outputs go."""

    blend_path: str
    frames: tuple[int, ...]
    output_dir: str
    output_name: str  # Blender output template inside output_dir, "#" for digits
    overrides: Mapping[str, Any] = field(default_factory=dict)
    require_device: str | None = None  # None, "CPU", or a Cycles GPU type


@dataclass(frozen=True, slots=True)
class RenderEvent:
    """A progress report: ready, loaded, progress, frame_done, done or log."""

    kind: str
    frame: int | None
    fraction: float | None
    text: str


@dataclass(frozen=True, slots=True)
class FrameOutput:
    """A rendered and validated frame file."""

    frame: int
    path: str
    size: int
    sha256: str


def runner_argv(backend: RenderBackend) -> list[str]:
    """Return the argument list that starts the runner for a backend."""
    scripts_option = "--allow-scripts" if backend.allow_scripts else "--no-scripts"
    runner_options = ["--mode", backend.kind, scripts_option]
    if backend.kind == "bpy":
        return [backend.python, RUNNER_SCRIPT, *runner_options]
    assert backend.blender_path is not None  # checked in RenderBackend
    autoexec = "-y" if backend.allow_scripts else "-Y"
    return [
        backend.blender_path,
        "-b",
        "--factory-startup",
        autoexec,
        "--python-exit-code",
        "1",
        "--python",
        RUNNER_SCRIPT,
        "--",
        *runner_options,
    ]


def child_environment(scratch_dir: Path) -> dict[str, str]:
    """Return an environment that keeps Blender's config, cache and temp files in
    scratch_dir."""
    paths = {
        "BLENDER_USER_RESOURCES": scratch_dir / "blender-user",
        "XDG_CONFIG_HOME": scratch_dir / "config",
        "XDG_CACHE_HOME": scratch_dir / "cache",
        "TMPDIR": scratch_dir / "tmp",
    }
    environment = dict(os.environ)
    for name, path in paths.items():
        path.mkdir(parents=True, exist_ok=True)
        environment[name] = str(path)
    return environment


def check_request(request: RenderRequest) -> None:
    """Raise InvalidInput naming the first invalid field of a request."""
    if not request.frames:
        raise InvalidInput("render request has no frames; give at least one frame")
    for frame in request.frames:
        if isinstance(frame, bool) or not isinstance(frame, int):
            raise InvalidInput(f"invalid frame {frame!r}; frames must be integers")
        if abs(frame) > MAX_FRAME:
            raise InvalidInput(
                f"frame {frame} is outside Blender's range -{MAX_FRAME}..{MAX_FRAME}"
            )
    name = request.output_name
    if "/" in name or os.sep in name or "\0" in name or name in (".", ".."):
        raise InvalidInput(
            f"invalid output_name {name!r}; give a file name template such as "
            "'frame_####', and put directories in output_dir"
        )
    check_overrides(request.overrides)
    allowed_devices = (None, "CPU", *GPU_TYPES)
    if request.require_device not in allowed_devices:
        raise InvalidInput(
            f"invalid require_device {request.require_device!r}; "
            f"use one of {list(allowed_devices)}"
        )


def check_overrides(overrides: Mapping[str, Any]) -> None:
    """Raise InvalidInput for an unknown override key or an invalid value."""
    unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if unknown:
        raise InvalidInput(
            f"unknown override keys {unknown}; allowed keys are {list(OVERRIDE_KEYS)}"
        )
    if "engine" in overrides and overrides["engine"] not in ENGINES:
        raise InvalidInput(
            f"invalid engine override {overrides['engine']!r}; use one of "
            f"{list(ENGINES)}"
        )
    if "device" in overrides and overrides["device"] not in ("CPU", "GPU"):
        raise InvalidInput(
            f"invalid device override {overrides['device']!r}; use 'CPU' or 'GPU'"
        )
    limits = {"samples": (1, 1 << 24), "resolution_percentage": (1, 32767)}
    for key, (low, high) in limits.items():
        if key not in overrides:
            continue
        value = overrides[key]
        valid = isinstance(value, int) and not isinstance(value, bool)
        if not valid or not low <= value <= high:
            raise InvalidInput(
                f"invalid {key} override {value!r}; give an integer in {low}..{high}"
            )


def build_command(request: RenderRequest, request_id: str) -> dict[str, Any]:
    """Return the runner's render command, creating the output directory."""
    output_dir = os.path.abspath(request.output_dir)
    os.makedirs(output_dir, exist_ok=True)
    return {
        "op": "render",
        "id": request_id,
        "blend": os.path.abspath(request.blend_path),
        "frames": list(request.frames),
        "output_dir": output_dir,
        "output_name": request.output_name,
        "overrides": dict(request.overrides),
        "require_device": request.require_device,
    }


def describe_exit(returncode: int) -> str:
    """Return a readable cause for a child's exit status."""
    if returncode < 0:
        number = -returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by {name} (status {128 + number} in a shell)"
    return f"exited with status {returncode}"


class RenderProcess:
    """A reusable render child process with cancellation.

    One render runs at a time; concurrent render() calls wait for each other.
    """

    def __init__(
        self, backend: RenderBackend, scratch_dir: Path, *, stop_grace: float = 3.0
    ) -> None:
        self._backend = backend
        self._scratch_dir = Path(scratch_dir)
        self._stop_grace = stop_grace
        self._process: asyncio.subprocess.Process | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._loaded: str | None = None
        self._blender_version: str | None = None
        self._lock = asyncio.Lock()
        self._on_event: Callable[[RenderEvent], None] | None = None
        self._log_tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._stop_reason: str | None = None
        self._request_ids = itertools.count(1)
        # False while the child is starting or rendering, when an error leaves it
        # in an unknown state and it must be stopped.
        self._child_idle = True

    @property
    def loaded_blend(self) -> str | None:
        """Path of the blend file open in the child, or None."""
        return self._loaded

    @property
    def pid(self) -> int | None:
        """Process id of the running child, which is also its process group id."""
        process = self._process
        if process is None or process.returncode is not None:
            return None
        return process.pid

    @property
    def blender_version(self) -> str | None:
        """Blender version that the child reported when it started, or None."""
        return self._blender_version

    async def render(
        self, request: RenderRequest, on_event: Callable[[RenderEvent], None]
    ) -> list[FrameOutput]:
        """Render the request's frames and return the validated outputs in order.

        Starts the child if none is running. Raises InvalidInput for an invalid
        request, and RenderError naming the file for a failed open, render or output.
        After cancel() or close() the in-flight call raises RenderError whose message
        contains "canceled" or "closed", never asyncio.CancelledError. If the caller
        cancels the task running render(), the child is stopped and
        asyncio.CancelledError propagates.
        """
        check_request(request)
        async with self._lock:
            self._stop_reason = None
            self._on_event = on_event
            try:
                return await self._render_locked(request, on_event)
            except BaseException:
                if not self._child_idle:
                    # The child may be mid-frame, so its state is unknown.
                    await self._stop_child(signal.SIGTERM)
                raise
            finally:
                self._on_event = None

    async def cancel(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after stop_grace) and wait for it."""
        self._stop_reason = "canceled"
        logger.info("render process %s: cancel requested", self.pid)
        await self._stop_child(signal.SIGTERM)

    async def close(self) -> None:
        """Ask the child to quit, and stop it if it has not exited in stop_grace."""
        self._stop_reason = "closed"
        process = self._process
        if process is None:
            return
        if process.returncode is None and process.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                process.stdin.write(b'{"op": "quit"}\n')
                await process.stdin.drain()
                process.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), self._stop_grace)
        await self._stop_child(signal.SIGTERM)
        logger.info("render process %s closed", process.pid)

    async def _render_locked(
        self, request: RenderRequest, on_event: Callable[[RenderEvent], None]
    ) -> list[FrameOutput]:
        request_id = f"r{next(self._request_ids)}"
        command = build_command(request, request_id)
        process = await self._send_command(command, request, on_event)
        logger.info(
            "render process %d: request %s renders '%s' frames %s",
            process.pid,
            request_id,
            request.blend_path,
            list(request.frames),
        )
        return await self._collect(process, request, request_id, on_event)

    async def _send_command(
        self,
        command: dict[str, Any],
        request: RenderRequest,
        on_event: Callable[[RenderEvent], None],
    ) -> asyncio.subprocess.Process:
        """Send a command, starting the child, or restarting it once if it died."""
        line = (json.dumps(command) + "\n").encode()
        for attempt in (1, 2):
            process = await self._ensure_started(request, on_event)
            assert process.stdin is not None
            self._child_idle = False
            try:
                process.stdin.write(line)
                await process.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                logger.warning(
                    "render process %d: stdin closed before request %s (attempt %d)",
                    process.pid,
                    command["id"],
                    attempt,
                )
                await self._stop_child(signal.SIGTERM)
                continue
            return process
        raise RenderError(
            f"render process for '{request.blend_path}' closed its input twice; "
            "check the log events for the cause"
        )

    async def _collect(
        self,
        process: asyncio.subprocess.Process,
        request: RenderRequest,
        request_id: str,
        on_event: Callable[[RenderEvent], None],
    ) -> list[FrameOutput]:
        """Read events for one request until done or error."""
        outputs: list[FrameOutput] = []
        current_frame: int | None = None
        while True:
            message = await self._next_message(process, on_event)
            if message is None:
                raise await self._exit_error(process, request, current_frame)
            if message.get("id") != request_id:
                logger.warning(
                    "render process %d: ignored event %r for request %r during %s",
                    process.pid,
                    message.get("event"),
                    message.get("id"),
                    request_id,
                )
                continue
            kind = message.get("event")
            if kind == "loaded":
                self._loaded = str(message["blend"])
                on_event(RenderEvent("loaded", None, None, self._loaded))
            elif kind == "progress":
                current_frame = int(message["frame"])
                fraction = float(message["fraction"])
                text = str(message.get("text", ""))
                on_event(RenderEvent("progress", current_frame, fraction, text))
            elif kind == "frame_done":
                output = await self._validate(message)
                outputs.append(output)
                on_event(RenderEvent("frame_done", output.frame, 1.0, output.path))
            elif kind == "done":
                self._child_idle = True
                self._check_complete(request, outputs)
                on_event(RenderEvent("done", None, 1.0, ""))
                return outputs
            elif kind == "error":
                self._child_idle = True
                self._loaded = message.get("loaded")
                logger.warning(
                    "render process %d: request %s failed: %s",
                    process.pid,
                    request_id,
                    message.get("message"),
                )
                raise RenderError(str(message.get("message")))

    async def _validate(self, message: Mapping[str, Any]) -> FrameOutput:
        frame = int(message["frame"])
        info = await asyncio.to_thread(validate_output, str(message["path"]))
        return FrameOutput(
            frame=frame, path=info.path, size=info.size, sha256=info.sha256
        )

    @staticmethod
    def _check_complete(request: RenderRequest, outputs: list[FrameOutput]) -> None:
        rendered = [output.frame for output in outputs]
        if rendered != list(request.frames):
            raise RenderError(
                f"render of '{request.blend_path}' reported frames {rendered} "
                f"but the request asked for {list(request.frames)}"
            )

    async def _next_message(
        self,
        process: asyncio.subprocess.Process,
        on_event: Callable[[RenderEvent], None],
    ) -> dict[str, Any] | None:
        """Return the next JSON event from stdout, or None at end of file.

        Lines that are not JSON events (Blender's banner in an executable) are
        passed on as log events.
        """
        assert process.stdout is not None
        while True:
            try:
                raw = await process.stdout.readline()
            except ValueError as exc:
                raise RenderError(
                    f"render process {process.pid} sent a line over {LINE_LIMIT} "
                    f"bytes: {exc}"
                ) from exc
            if not raw:
                return None
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            message = parse_event(line)
            if message is not None:
                return message
            if line:
                self._record_log(line)
                on_event(RenderEvent("log", None, None, line))

    async def _ensure_started(
        self, request: RenderRequest, on_event: Callable[[RenderEvent], None]
    ) -> asyncio.subprocess.Process:
        process = self._process
        if process is not None and process.returncode is None:
            return process
        if process is not None:
            logger.warning(
                "render process %d %s; starting a new one",
                process.pid,
                describe_exit(process.returncode or 0),
            )
            await self._stop_child(signal.SIGTERM)
        return await self._start(request, on_event)

    async def _start(
        self, request: RenderRequest, on_event: Callable[[RenderEvent], None]
    ) -> asyncio.subprocess.Process:
        argv = runner_argv(self._backend)
        environment = child_environment(self._scratch_dir)
        self._log_tail.clear()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=environment,
                cwd=self._scratch_dir,
                start_new_session=True,
                limit=LINE_LIMIT,
            )
        except OSError as exc:
            raise RenderError(
                f"cannot start Blender with {argv[0]!r}: {exc}; check the render "
                "backend's python or blender_path"
            ) from exc
        self._process = process
        self._child_idle = False
        self._log_task = asyncio.create_task(self._read_log(process))
        logger.info("render process %d started: %s", process.pid, argv)
        if self._stop_reason is not None:
            raise RenderError(f"render of '{request.blend_path}' {self._stop_reason}")
        await self._wait_ready(process, request, on_event)
        return process

    async def _wait_ready(
        self,
        process: asyncio.subprocess.Process,
        request: RenderRequest,
        on_event: Callable[[RenderEvent], None],
    ) -> None:
        try:
            message = await asyncio.wait_for(
                self._next_message(process, on_event), START_TIMEOUT
            )
        except TimeoutError as exc:
            raise RenderError(
                f"render process {process.pid} sent no ready event in "
                f"{START_TIMEOUT:.0f} s; check the log events"
            ) from exc
        if message is None:
            raise await self._exit_error(process, request, None)
        if message.get("event") != "ready":
            raise RenderError(
                f"render process {process.pid} sent {message!r} before ready"
            )
        self._blender_version = str(message.get("blender_version"))
        logger.info(
            "render process %d ready: Blender %s", process.pid, self._blender_version
        )
        self._child_idle = True
        on_event(RenderEvent("ready", None, None, self._blender_version))

    async def _exit_error(
        self,
        process: asyncio.subprocess.Process,
        request: RenderRequest,
        frame: int | None,
    ) -> RenderError:
        """Wait for a child whose stdout closed and describe why it stopped."""
        try:
            returncode = await asyncio.wait_for(process.wait(), self._stop_grace)
        except TimeoutError:
            await self._stop_child(signal.SIGKILL)
            returncode = await process.wait()
        if self._log_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._log_task), 1.0)
        await self._stop_child(signal.SIGKILL)
        if self._stop_reason is not None:
            return RenderError(f"render of '{request.blend_path}' {self._stop_reason}")
        where = f" at frame {frame}" if frame is not None else ""
        tail = " | ".join(self._log_tail) or "no log output"
        logger.error(
            "render process %d %s while rendering '%s'%s",
            process.pid,
            describe_exit(returncode),
            request.blend_path,
            where,
        )
        return RenderError(
            f"Blender process {process.pid} {describe_exit(returncode)} while "
            f"rendering '{request.blend_path}'{where}; last log lines: {tail}"
        )

    async def _read_log(self, process: asyncio.subprocess.Process) -> None:
        """Forward the child's stderr (Blender's log) as log events."""
        assert process.stderr is not None
        while True:
            try:
                raw = await process.stderr.readline()
            except ValueError:
                # readline() has dropped the over-long line from its buffer.
                logger.warning("render process %d: dropped a log line", process.pid)
                continue
            if not raw:
                return
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not line:
                continue
            self._record_log(line)
            on_event = self._on_event
            if on_event is None:
                logger.debug("render process %d log: %s", process.pid, line)
            else:
                on_event(RenderEvent("log", None, None, line))

    def _record_log(self, line: str) -> None:
        self._log_tail.append(line)

    async def _stop_child(self, first_signal: signal.Signals) -> None:
        """Signal the child's process group, escalate to SIGKILL, and reap it."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            signal_group(process.pid, first_signal)
            try:
                await asyncio.wait_for(process.wait(), self._stop_grace)
            except TimeoutError:
                logger.warning(
                    "render process %d ignored %s for %.1f s; sending SIGKILL",
                    process.pid,
                    first_signal.name,
                    self._stop_grace,
                )
                signal_group(process.pid, signal.SIGKILL)
                await process.wait()
        # Helpers that Blender started may outlive the group leader. The group id
        # stays reserved while any member lives, so this reaches only them.
        signal_group(process.pid, signal.SIGKILL)
        if self._process is process:
            self._process = None
            self._loaded = None
        await self._finish_log_task()
        logger.info(
            "render process %d stopped: %s",
            process.pid,
            describe_exit(process.returncode or 0),
        )

    async def _finish_log_task(self) -> None:
        task, self._log_task = self._log_task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(task, 1.0)
        except TimeoutError:
            logger.warning("render log reader did not finish after the child exited")


def signal_group(process_group: int, number: signal.Signals) -> None:
    """Send a signal to a process group that may already be gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process_group, number)


def parse_event(line: str) -> dict[str, Any] | None:
    """Return the event object in a protocol line, or None for other output."""
    if not line.startswith('{"event"'):
        return None
    try:
        message = json.loads(line)
    except json.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None
