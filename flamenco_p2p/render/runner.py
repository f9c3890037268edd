"""Render child process: reads JSON commands on stdin and writes JSON events.

The controller (flamenco_p2p/render/controller.py) starts this script in one of two
ways. With ``python runner.py --mode bpy ...`` it runs under an interpreter that has
the ``bpy`` module. With ``blender -b --factory-startup --python runner.py --
--mode blender ...`` it runs inside a Blender executable, where only Blender's Python
standard library is available. So this file imports nothing but the standard library
and ``bpy``, and it must not import flamenco_p2p.

Protocol, one JSON object per line:

* Commands on stdin: ``{"op": "render", "id", "blend", "frames", "output_dir",
  "output_name", "overrides", "require_device"}`` and ``{"op": "quit"}``.
* Events on the private protocol stream: ``ready`` (``blender_version``),
  ``loaded`` (``blend``), ``progress`` (``frame``, ``fraction``, ``text``),
  ``frame_done`` (``frame``, ``path``), ``done`` and ``error`` (``message``).
  Every event of a render carries the command's ``id``.

Blender writes its log to file descriptor 1, so before ``bpy`` is imported the runner
duplicates fd 1 for its protocol stream and points fd 1 at fd 2 (the log pipe).
Inside a Blender executable, Blender has already written its banner to fd 1, and the
controller reads lines that are not JSON events as log lines.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

ENGINES = ("CYCLES", "BLENDER_EEVEE", "BLENDER_WORKBENCH")
GPU_TYPES = ("OPTIX", "CUDA", "HIP", "METAL", "ONEAPI")
OVERRIDE_KEYS = ("engine", "samples", "resolution_percentage", "device")
# Cycles reports progress in render_stats strings such as
# "Remaining: 00:03.65 | Mem: 4M | Sample 1/16" (measured with bpy 5.0.1).
SAMPLE_PATTERN = re.compile(r"Sample (\d+)/(\d+)")
# Minimum seconds between two progress events for the same frame.
PROGRESS_INTERVAL = 0.25


class CommandError(Exception):
    """A render command failed; the message is sent to the controller as is."""


class EventStream:
    """Thread-safe writer of JSON event lines on the protocol file descriptor."""

    def __init__(self, fd: int) -> None:
        # The stream lives as long as the process, so no context manager.
        self._file = open(fd, "w", encoding="utf-8", closefd=True)  # noqa: SIM115
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event line and flush it."""
        line = json.dumps({"event": event, **fields}, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()


class ProgressReporter:
    """Turns Cycles render_stats strings into rate-limited progress events."""

    def __init__(self, stream: EventStream) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._request_id: str | None = None
        self._frame: int | None = None
        self._last_sent = 0.0

    def start_frame(self, request_id: str, frame: int) -> None:
        """Attribute the next stats strings to this request and frame."""
        with self._lock:
            self._request_id = request_id
            self._frame = frame
            self._last_sent = 0.0
        self._stream.emit(
            "progress", id=request_id, frame=frame, fraction=0.0, text="started"
        )

    def stop(self) -> None:
        """Drop stats strings until the next start_frame."""
        with self._lock:
            self._request_id = None
            self._frame = None

    def on_stats(self, text: object = "", *_args: object) -> None:
        """Handle one render_stats call, which Blender makes from its render thread."""
        match = SAMPLE_PATTERN.search(str(text))
        if match is None:
            return
        done, total = int(match.group(1)), int(match.group(2))
        now = time.monotonic()
        with self._lock:
            if self._request_id is None or now - self._last_sent < PROGRESS_INTERVAL:
                return
            self._last_sent = now
            request_id, frame = self._request_id, self._frame
        fraction = min(1.0, done / total) if total > 0 else 0.0
        self._stream.emit(
            "progress", id=request_id, frame=frame, fraction=fraction, text=str(text)
        )


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the runner options, which follow ``--`` inside a Blender executable."""
    start = argv.index("--") + 1 if "--" in argv else 1
    argv = argv[start:]
    parser = argparse.ArgumentParser(prog="runner.py")
    parser.add_argument("--mode", choices=("bpy", "blender"), default="bpy")
    scripts = parser.add_mutually_exclusive_group()
    scripts.add_argument("--allow-scripts", dest="allow_scripts", action="store_true")
    scripts.add_argument("--no-scripts", dest="allow_scripts", action="store_false")
    return parser.parse_args(argv)


def move_stdout() -> int:
    """Return a private duplicate of fd 1 and point fd 1 at fd 2 (Blender's log)."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    return protocol_fd


class Runner:
    """Executes render commands with bpy and keeps the last blend file loaded."""

    def __init__(self, bpy: Any, stream: EventStream, allow_scripts: bool) -> None:
        self.bpy = bpy
        self.stream = stream
        self.allow_scripts = allow_scripts
        self.progress = ProgressReporter(stream)
        # (real path, mtime_ns, size) of the open file, or None.
        self.loaded_key: tuple[str, int, int] | None = None
        self.loaded_path: str | None = None
        # Scene settings as saved in the file, restored before each render's
        # overrides so that one request's overrides never leak into the next.
        self.saved_settings: dict[str, Any] = {}

    def install_handlers(self) -> None:
        """Register the progress handler so that it survives open_mainfile."""
        progress = self.progress

        # persistent() sets an attribute on its argument, which a bound method
        # does not allow, so the handler is a plain function.
        def on_render_stats(*args: object) -> None:
            progress.on_stats(*args)

        handler = self.bpy.app.handlers.persistent(on_render_stats)
        self.bpy.app.handlers.render_stats.append(handler)

    def serve(self, commands: Iterable[str]) -> None:
        """Run commands from the stream until ``quit`` or end of input."""
        self.stream.emit("ready", blender_version=self.bpy.app.version_string)
        for line in commands:
            if not line.strip():
                continue
            if not self.handle_line(line):
                return

    def handle_line(self, line: str) -> bool:
        """Run one command line; return False when the runner should exit."""
        try:
            command = json.loads(line)
        except json.JSONDecodeError as exc:
            self.stream.emit("error", id=None, message=f"invalid command JSON: {exc}")
            return True
        if not isinstance(command, dict):
            self.stream.emit("error", id=None, message="command is not a JSON object")
            return True
        op = command.get("op")
        if op == "quit":
            return False
        if op != "render":
            self.stream.emit(
                "error", id=command.get("id"), message=f"unknown command op {op!r}"
            )
            return True
        self.run_render(command)
        return True

    def run_render(self, command: dict[str, Any]) -> None:
        """Render every frame of one command, reporting an error event on failure."""
        request_id = command.get("id")
        try:
            self.render_frames(command)
        except CommandError as exc:
            self.report_error(request_id, str(exc))
        except Exception as exc:  # the runner must outlive a bad request
            self.report_error(request_id, f"render failed: {type(exc).__name__}: {exc}")
        else:
            self.stream.emit("done", id=request_id)
        finally:
            self.progress.stop()

    def report_error(self, request_id: object, message: str) -> None:
        """Send an error event that also names the blend file still open, if any."""
        self.stream.emit(
            "error", id=request_id, message=message, loaded=self.loaded_path
        )

    def render_frames(self, command: dict[str, Any]) -> None:
        """Open the file if needed, apply overrides and render each frame."""
        request_id = str(command["id"])
        self.open_blend(str(command["blend"]), request_id)
        scene = self.bpy.context.scene
        self.apply_overrides(scene, dict(command.get("overrides") or {}))
        self.select_device(scene, command.get("require_device"), command)
        template = os.path.join(str(command["output_dir"]), str(command["output_name"]))
        for frame in command["frames"]:
            self.render_frame(scene, request_id, int(frame), template)

    def render_frame(
        self, scene: Any, request_id: str, frame: int, template: str
    ) -> None:
        """Render one frame to the path that Blender's frame_path gives."""
        scene.frame_set(frame)
        scene.render.filepath = template
        path = scene.render.frame_path(frame=frame)
        # write_still does not expand "#", so the expanded path goes in directly.
        scene.render.filepath = path
        self.progress.start_frame(request_id, frame)
        self.bpy.ops.render.render(write_still=True)
        self.progress.stop()
        if not os.path.isfile(path):
            raise CommandError(
                f"Blender finished frame {frame} but wrote no file at '{path}'; "
                "check the scene's output format and that output_dir is writable"
            )
        self.stream.emit(
            "progress", id=request_id, frame=frame, fraction=1.0, text="finished"
        )
        self.stream.emit("frame_done", id=request_id, frame=frame, path=path)

    def open_blend(self, blend: str, request_id: str) -> None:
        """Open the blend file unless the same unchanged file is already open."""
        try:
            stat = os.stat(blend)
        except OSError as exc:
            raise CommandError(
                f"cannot open blend file '{blend}': {exc.strerror}; "
                "check that the path exists and is readable"
            ) from exc
        key = (os.path.realpath(blend), stat.st_mtime_ns, stat.st_size)
        if key == self.loaded_key:
            return
        self.loaded_key = None
        self.loaded_path = None
        filepaths = self.bpy.context.preferences.filepaths
        filepaths.use_scripts_auto_execute = self.allow_scripts
        try:
            self.bpy.ops.wm.open_mainfile(filepath=blend, load_ui=False)
        except RuntimeError as exc:
            reason = str(exc).strip().removeprefix("Error: ").strip()
            raise CommandError(
                f"cannot open blend file '{blend}': {reason}; "
                "check that it is a .blend file saved by this Blender version or older"
            ) from exc
        self.loaded_key = key
        self.loaded_path = blend
        self.saved_settings = self.read_settings(self.bpy.context.scene)
        self.stream.emit("loaded", id=request_id, blend=blend)

    @staticmethod
    def read_settings(scene: Any) -> dict[str, Any]:
        """Return the scene settings that overrides may change."""
        return {
            "engine": scene.render.engine,
            "samples": scene.cycles.samples,
            "resolution_percentage": scene.render.resolution_percentage,
            "device": scene.cycles.device,
        }

    def apply_overrides(self, scene: Any, overrides: dict[str, Any]) -> None:
        """Restore the file's settings, then apply this request's overrides."""
        unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
        if unknown:
            raise CommandError(
                f"unknown override keys {unknown}; "
                f"allowed keys are {list(OVERRIDE_KEYS)}"
            )
        settings = {**self.saved_settings, **overrides}
        engine = str(settings["engine"])
        if engine not in ENGINES:
            raise CommandError(f"invalid engine {engine!r}; use one of {list(ENGINES)}")
        device = str(settings["device"])
        if device not in ("CPU", "GPU"):
            raise CommandError(f"invalid device {device!r}; use 'CPU' or 'GPU'")
        scene.render.engine = engine
        scene.cycles.samples = int(settings["samples"])
        scene.render.resolution_percentage = int(settings["resolution_percentage"])
        scene.cycles.device = device

    def select_device(
        self, scene: Any, require_device: object, command: dict[str, Any]
    ) -> None:
        """Pick the Cycles device, raising when a requested GPU type is missing."""
        if require_device == "CPU":
            scene.cycles.device = "CPU"
            return
        if require_device is None:
            self.select_default_device(scene, command)
            return
        device_type = str(require_device)
        if device_type not in GPU_TYPES:
            raise CommandError(
                f"invalid require_device {device_type!r}; "
                f"use null, 'CPU' or one of {list(GPU_TYPES)}"
            )
        if scene.render.engine != "CYCLES":
            raise CommandError(
                f"require_device {device_type!r} needs the CYCLES engine, but the "
                f"scene uses {scene.render.engine!r}; add the override engine=CYCLES"
            )
        if not self.cycles_devices(device_type):
            raise CommandError(
                f"required device type {device_type!r} is not available on this node "
                f"(Cycles lists: {self.visible_gpu_types() or 'CPU only'}); "
                "send the task to a node that has it"
            )
        self.enable_gpu(scene, device_type)

    def select_default_device(self, scene: Any, command: dict[str, Any]) -> None:
        """Use a GPU when the scene asks for one and Cycles lists one.

        The override device=GPU fails without a GPU. A file saved with device GPU
        falls back to the CPU with a log line, so artists' files render on CPU
        nodes.
        """
        if scene.render.engine != "CYCLES" or scene.cycles.device != "GPU":
            return
        visible = self.visible_gpu_types()
        if visible:
            self.enable_gpu(scene, visible[0])
            return
        overrides = command.get("overrides") or {}
        if overrides.get("device") == "GPU":
            raise CommandError(
                f"request {command.get('id')!r} sets device=GPU but Cycles lists no "
                "GPU on this node; render with device=CPU or on a node with a GPU"
            )
        print(
            f"flamenco-p2p runner: request {command.get('id')!r}: the file asks for "
            "a GPU but Cycles lists none, so it renders on the CPU",
            file=sys.stderr,
            flush=True,
        )
        scene.cycles.device = "CPU"

    @staticmethod
    def cycles_devices(device_type: str) -> list[tuple[Any, ...]]:
        """Return the devices of one type that Cycles lists."""
        import _cycles  # exists only once bpy has loaded Cycles

        # available_devices(type) also lists the CPU, so filter on the type field.
        return [
            d for d in _cycles.available_devices(device_type) if d[1] == device_type
        ]

    def visible_gpu_types(self) -> list[str]:
        """Return the GPU types for which Cycles lists at least one device."""
        return [kind for kind in GPU_TYPES if self.cycles_devices(kind)]

    def enable_gpu(self, scene: Any, device_type: str) -> None:
        """Point Cycles at the devices of one type and render on the GPU."""
        preferences = self.bpy.context.preferences.addons["cycles"].preferences
        preferences.compute_device_type = device_type
        preferences.refresh_devices()
        enabled = 0
        for device in preferences.devices:
            device.use = device.type == device_type
            enabled += int(device.use)
        if enabled == 0:
            raise CommandError(
                f"Cycles preferences list no {device_type!r} device to enable; "
                "check the GPU driver on this node"
            )
        scene.cycles.device = "GPU"


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the worker that started it dies.

    The runner lives in its own session so that the worker can kill its whole
    group; without this, a worker killed with SIGKILL would leave Blender
    rendering on its own. Other systems have no such call, so it is skipped.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:
        # The parent died before prctl took effect.
        os._exit(1)


def main() -> None:
    """Start the runner: move stdout, import bpy and serve commands."""
    die_with_parent()
    options = parse_args(sys.argv)
    protocol_fd = move_stdout()
    if options.mode == "bpy":
        # The Cycles add-on parses sys.argv during import, so hand it a clean one.
        sys.argv = sys.argv[:1]
    import bpy  # must follow the fd 1 move

    stream = EventStream(protocol_fd)
    runner = Runner(bpy, stream, allow_scripts=options.allow_scripts)
    runner.install_handlers()
    runner.serve(sys.stdin)


if __name__ == "__main__":
    main()
