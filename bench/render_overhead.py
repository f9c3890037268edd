"""Compare a one-node farm with one plain bpy process rendering the same frames.

Builds the demo scene, then times:

- plain: one child Python process that imports bpy, opens the file and renders
  every frame with write_still, from process start until the last frame is written
  (the table also shows the time until the process exited, as "plain exit");
- farm: a `flamenco-p2p run` daemon, started as a user starts it, with one worker
  slot. It renders the same frames as a blender-render job with a given chunk size.
  The time runs from the client_submit call to the job's completion time in the
  server's store.

Both sides start cold: the farm's worker starts its render child (bpy import and
file load) on the first task, as the plain process does. The daemon's own start-up
and election are not timed. The overhead per frame is (farm - plain) / frames, and
in percent (farm - plain) / plain.

Run from the repository root:

    .venv/bin/python -m bench.render_overhead
    .venv/bin/python -m bench.render_overhead --repeats 3 --chunks 1,4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.common import (
    FAST_TIMING,
    NO_PROBE_TOML,
    loopback_address,
    machine_lines,
    median,
)
from flamenco_p2p.client import NodeClient
from flamenco_p2p.config import load_config
from flamenco_p2p.demo import create_farm, start_node
from flamenco_p2p.errors import FarmUnavailable
from flamenco_p2p.render.controller import child_environment
from flamenco_p2p.render.demo_scene import make_demo_scene
from flamenco_p2p.submission import build_render_job
from flamenco_p2p.transport import RemoteError

OVERHEAD_TARGET_PERCENT = 5.0
DAEMON_READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

# Runs under the Python with bpy. It reads its settings as JSON from stdin, because
# the Cycles add-on parses sys.argv during the bpy import. Like the farm's runner, it
# opens the file without its scripts, then calls frame_set and write_still per frame.
PLAIN_RENDER_SCRIPT = r"""
import json
import os
import sys
import time

settings = json.load(sys.stdin)
import bpy

bpy.context.preferences.filepaths.use_scripts_auto_execute = False
bpy.ops.wm.open_mainfile(filepath=settings["blend"], load_ui=False)
scene = bpy.context.scene
template = os.path.join(settings["output_dir"], "frame_####")
for frame in settings["frames"]:
    scene.frame_set(frame)
    scene.render.filepath = template
    path = scene.render.frame_path(frame=frame)
    scene.render.filepath = path
    bpy.ops.render.render(write_still=True)
    if not os.path.isfile(path):
        sys.exit(f"frame {frame}: no file at {path}")
print("BENCH_FRAMES_DONE", time.time(), flush=True)
"""


def plain_render(
    python: str, blend: Path, frames: int, out_dir: Path
) -> tuple[float, float]:
    """Render every frame in one bpy child process.

    Returns the seconds from the start until the last frame was written, and until
    the process exited. The first is the baseline, because the farm's time also
    ends at the last frame while its render child keeps running.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "blend": str(blend),
        "frames": list(range(1, frames + 1)),
        "output_dir": str(out_dir),
    }
    scratch = out_dir.parent / (out_dir.name + "-scratch")
    started_wall = time.time()
    started = time.perf_counter()
    result = subprocess.run(
        [python, "-c", PLAIN_RENDER_SCRIPT],
        input=json.dumps(settings),
        capture_output=True,
        text=True,
        env=child_environment(scratch),
        cwd=scratch,
        timeout=1800,
        check=False,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise RuntimeError(
            f"plain bpy render failed with status {result.returncode}: {tail}"
        )
    written = sorted(out_dir.glob("frame_*"))
    if len(written) != frames:
        raise RuntimeError(f"plain render wrote {len(written)} of {frames} frames")
    done = [
        line.split()[1]
        for line in result.stdout.splitlines()
        if line.startswith("BENCH_FRAMES_DONE ")
    ]
    if not done:
        raise RuntimeError("plain render printed no BENCH_FRAMES_DONE line")
    return float(done[-1]) - started_wall, seconds


def write_daemon_config(data_dir: Path, address: str) -> None:
    """Create the farm as a user does, then write a one-node config.

    The config has one slot, no mDNS and no capability probe.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    create_farm([data_dir], "bench-render")
    timing = "".join(f"{key} = {value}\n" for key, value in FAST_TIMING.items())
    text = (
        'site = "bench"\n'
        f'bind_address = "{address}"\nmdns = false\nseeds = []\n\n'
        "[worker]\nslots = 1\n\n"
        f"{NO_PROBE_TOML}\n[timing]\n{timing}"
    )
    (data_dir / "flamenco-p2p.toml").write_text(text, encoding="utf-8")


def stop_daemon(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the daemon, then SIGKILL whatever is left of its process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


async def wait_for_port(
    address: str, port: int, process: subprocess.Popen[bytes]
) -> None:
    """Wait until the daemon accepts TCP connections on its node port.

    NodeClient raises FarmUnavailable at once when nothing listens yet.
    """
    deadline = time.monotonic() + DAEMON_READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited with status {process.returncode}")
        try:
            _reader, writer = await asyncio.open_connection(address, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise TimeoutError(
        f"daemon did not listen on {address}:{port} within {DAEMON_READY_TIMEOUT} s"
    )


async def wait_for_roles(client: NodeClient, process: subprocess.Popen[bytes]) -> None:
    """Wait until the node reports a server and a manager for its site."""
    deadline = time.monotonic() + DAEMON_READY_TIMEOUT
    last: Any = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited with status {process.returncode}")
        try:
            status = await client.call("client_status", {}, timeout=5)
        except (FarmUnavailable, RemoteError) as exc:
            last = exc
        else:
            last = status["roles"]
            if status["roles"].get("server") and status["roles"].get("manager:bench"):
                return
        await asyncio.sleep(0.2)
    raise TimeoutError(
        f"no manager and server within {DAEMON_READY_TIMEOUT} s; last: {last}"
    )


async def submit_and_wait(
    client: NodeClient, job: dict[str, Any], blend: Path, timeout: float
) -> float:
    """Submit the job and return seconds from submit to the job's completion.

    The end time is the job's `updated` time in the server's store (time.time() on
    the same machine), so the 50 ms polling interval does not add to the result.
    """
    submitted = time.time()
    result = await client.call(
        "client_submit", {"job": job, "blend_path": str(blend)}, timeout=60
    )
    job_id = result["job_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = await client.call("client_job", {"job_id": job_id}, timeout=20)
        status = view["job"]["status"]
        if status == "completed":
            return float(view["job"]["updated"]) - submitted
        if status in ("failed", "canceled"):
            raise RuntimeError(f"job {job_id} ended {status}: {view['job']['error']}")
        await asyncio.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not complete within {timeout} s")


async def farm_render(
    root: Path, address: str, blend: Path, frames: int, chunk: int, timeout: float
) -> float:
    """Run one daemon, render the frames as one job, stop it; return the job time."""
    data_dir = root / "node"
    write_daemon_config(data_dir, address)
    out_dir = root / "out"
    job, _warnings = build_render_job(
        blend=blend,
        frames=f"1-{frames}",
        chunk=chunk,
        output=str(out_dir / "frame_####"),
        cwd=blend.parent,
        name=f"bench chunk {chunk}",
    )
    config = load_config(data_dir)
    process = start_node(data_dir)
    try:
        await wait_for_port(config.bind_address, config.node_port, process)
        async with NodeClient.for_config(config, timeout=20) as client:
            await wait_for_roles(client, process)
            seconds = await submit_and_wait(client, job, blend, timeout)
    finally:
        stop_daemon(process)
    written = sorted(out_dir.glob("frame_*"))
    if len(written) != frames:
        raise RuntimeError(f"farm run wrote {len(written)} of {frames} frames")
    return seconds


def print_table(
    timings: dict[str, list[float]], frames: int, plain_label: str
) -> list[str]:
    """Print the results table and return the summary parts.

    The overhead columns compare medians. The min columns show the fastest run of
    each kind, which varies less than the median on a machine shared with others.
    """
    plain = median(timings[plain_label])
    plain_min = min(timings[plain_label])
    print(
        f"\n{'run':<12} {'runs':>4} {'median s':>9} {'min s':>7} {'s/frame':>8}"
        f" {'overhead s':>10} {'ms/frame':>9} {'overhead':>9} {'min overhead':>12}"
    )
    parts = []
    for label, values in timings.items():
        seconds = median(values)
        extra = seconds - plain
        percent = 100 * extra / plain
        min_percent = 100 * (min(values) - plain_min) / plain_min
        print(
            f"{label:<12} {len(values):>4} {seconds:>9.2f} {min(values):>7.2f}"
            f" {seconds / frames:>8.3f} {extra:>10.2f} {1000 * extra / frames:>9.0f}"
            f" {percent:>8.1f}% {min_percent:>11.1f}%"
        )
        if label not in (plain_label, "plain exit"):
            parts.append(
                f"{label} {percent:+.1f}% ({1000 * extra / frames:+.0f} ms/frame)"
            )
    return parts


async def run_all(args: argparse.Namespace, root: Path) -> None:
    """Build the scene, then alternate plain and farm runs for each repeat."""
    blend = root / "scene" / "demo.blend"
    width, height = args.resolution
    make_demo_scene(
        blend,
        frames=args.frames,
        resolution=(width, height),
        samples=args.samples,
        python=args.python,
    )
    print(
        f"scene: {args.frames} frames, {width}x{height}, {args.samples} samples,"
        f" Cycles CPU; repeats {args.repeats}; chunk sizes {args.chunks}"
    )
    timings: dict[str, list[float]] = defaultdict(list)
    run = 0
    for repeat in range(args.repeats):
        run += 1
        seconds, exited = plain_render(
            args.python, blend, args.frames, root / f"plain-{repeat}" / "out"
        )
        timings["plain bpy"].append(seconds)
        timings["plain exit"].append(exited)
        print(
            f"repeat {repeat + 1}: plain bpy {seconds:.2f} s to the last frame,"
            f" {exited:.2f} s to process exit",
            flush=True,
        )
        for chunk in args.chunks:
            run += 1
            address = loopback_address(f"{args.address_prefix}.{10 + run}")
            seconds = await farm_render(
                root / f"farm-{repeat}-{chunk}",
                address,
                blend,
                args.frames,
                chunk,
                args.timeout,
            )
            timings[f"farm chunk {chunk}"].append(seconds)
            print(
                f"repeat {repeat + 1}: farm chunk {chunk} {seconds:.2f} s", flush=True
            )
    parts = print_table(timings, args.frames, "plain bpy")
    plain = median(timings["plain bpy"])
    print(
        f"\nsummary: plain bpy {plain:.2f} s for {args.frames} frames;"
        f" farm overhead {'; '.join(parts)} (target < {OVERHEAD_TARGET_PERCENT:g}%)"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=12, help="frames (default 12)")
    parser.add_argument(
        "--resolution",
        type=int,
        nargs=2,
        default=[320, 180],
        metavar=("WIDTH", "HEIGHT"),
        help="pixels (default 320 180)",
    )
    parser.add_argument(
        "--samples", type=int, default=16, help="Cycles samples (default 16)"
    )
    parser.add_argument(
        "--chunks",
        default="1,4",
        help="farm chunk sizes in frames per task, comma-separated (default 1,4)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of each configuration; the table shows medians (default 1)",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="Python with bpy for the plain run and the scene (default: this one)",
    )
    parser.add_argument(
        "--address-prefix",
        default="127.88.1",
        help="first three octets of the loopback addresses the daemons bind"
        " (default 127.88.1)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds one farm job may take (default 900)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary folder with the scene, frames and logs",
    )
    args = parser.parse_args(argv)
    try:
        args.chunks = [int(part) for part in args.chunks.split(",") if part.strip()]
    except ValueError:
        parser.error(f"invalid --chunks {args.chunks!r}; give sizes such as 1,4")
    if not args.chunks or min(args.chunks) < 1:
        parser.error("--chunks needs sizes of at least 1")
    if args.frames < 1 or args.samples < 1 or args.repeats < 1:
        parser.error("--frames, --samples and --repeats must be at least 1")
    loopback_address(f"{args.address_prefix}.10")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the results."""
    args = parse_args(argv)
    for line in machine_lines():
        print(line)
    root = Path(tempfile.mkdtemp(prefix="bench-render-"))
    try:
        asyncio.run(run_all(args, root))
    finally:
        if args.keep:
            print(f"files in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
