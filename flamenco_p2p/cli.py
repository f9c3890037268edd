"""The ``flamenco-p2p`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from flamenco_p2p import __version__
from flamenco_p2p.client import NodeClient
from flamenco_p2p.config import NodeConfig, load_config
from flamenco_p2p.errors import FarmError
from flamenco_p2p.transport import RemoteError

logger = logging.getLogger("flamenco_p2p.cli")

FINAL_JOB_STATUSES = frozenset({"completed", "failed", "canceled"})
EXIT_FAILED = 1
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(
        _join_negative_frames(sys.argv[1:] if argv is None else argv)
    )
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`status | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (FarmError, RemoteError, OSError) as exc:
        print(f"flamenco-p2p: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _join_negative_frames(argv: list[str]) -> list[str]:
    """Turn ``--frames -3--1`` into ``--frames=-3--1``.

    argparse reads a value that starts with a minus sign as an option, but a
    frame spec may start with a negative frame.
    """
    joined: list[str] = []
    values = iter(argv)
    for arg in values:
        if arg == "--frames":
            value = next(values, None)
            if value is not None and re.match(r"-\d", value):
                joined.append(f"--frames={value}")
                continue
            joined.append(arg)
            if value is not None:
                joined.append(value)
            continue
        joined.append(arg)
    return joined


class HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default when it has one and its help does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="flamenco-p2p",
        description="A Blender render farm whose machines find and organise"
        " each other.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_init(commands)
    _add_invite(commands)
    _add_join(commands)
    _add_run(commands)
    _add_submit(commands)
    _add_status(commands)
    _add_cancel(commands)
    _add_log(commands)
    _add_demo(commands)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="node data directory (default: the per-user data directory)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config file (default: flamenco-p2p.toml in the data directory)",
    )


def _add_init(commands: Any) -> None:
    init = commands.add_parser(
        "init",
        formatter_class=HelpFormatter,
        help="create a new farm with a random farm key",
    )
    _common(init)
    init.add_argument("--farm", default="default", help="farm name")
    init.add_argument(
        "--force", action="store_true", help="replace this node's existing farm key"
    )
    init.set_defaults(handler=_init)


def _add_invite(commands: Any) -> None:
    invite = commands.add_parser(
        "invite",
        formatter_class=HelpFormatter,
        help="print the join code that lets another machine join this farm",
    )
    _common(invite)
    invite.set_defaults(handler=_invite)


def _add_join(commands: Any) -> None:
    join = commands.add_parser(
        "join",
        formatter_class=HelpFormatter,
        help="join a farm with a code from `invite`",
    )
    _common(join)
    join.add_argument("code", help="the join code, fp1-...")
    join.add_argument(
        "--force", action="store_true", help="replace this node's existing farm key"
    )
    join.set_defaults(handler=_join)


def _add_run(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        formatter_class=HelpFormatter,
        help="run this machine's node until stopped",
    )
    _common(run)
    run.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR"
    )
    run.add_argument(
        "--log-file", type=Path, default=None, help="also log to this file"
    )
    run.set_defaults(handler=_run)


def _add_submit(commands: Any) -> None:
    submit = commands.add_parser(
        "submit",
        formatter_class=HelpFormatter,
        help="submit a blend file to the farm",
    )
    _common(submit)
    submit.add_argument("file", type=Path, help="the .blend file to render")
    submit.add_argument(
        "--frames",
        required=True,
        help="frames, such as 1-250 or 1-10,20; write --frames=-5--1 when the"
        " spec starts with a minus sign",
    )
    submit.add_argument(
        "--chunk", type=int, default=1, help="frames per task, 1 to 1000"
    )
    submit.add_argument(
        "--output",
        required=True,
        help="output directory, or a Blender output path such as out/shot_####",
    )
    submit.add_argument(
        "--name", default=None, help="job name (default: the file name)"
    )
    submit.add_argument(
        "--priority", type=int, default=50, help="0 to 100; higher runs first"
    )
    submit.add_argument(
        "--engine",
        default=None,
        help="CYCLES, BLENDER_EEVEE or BLENDER_WORKBENCH (default: the file's)",
    )
    submit.add_argument(
        "--samples", type=int, default=None, help="render samples (default: the file's)"
    )
    submit.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="resolution percentage, 1 to 1000 (default: the file's)",
    )
    submit.add_argument(
        "--gpu",
        choices=("none", "prefer", "require"),
        default="none",
        help="whether the job needs a GPU worker",
    )
    submit.add_argument(
        "--no-wait", action="store_true", help="return after submitting"
    )
    submit.set_defaults(handler=_submit)


def _add_status(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        formatter_class=HelpFormatter,
        help="list nodes, roles and jobs",
    )
    _common(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_status)


def _add_cancel(commands: Any) -> None:
    cancel = commands.add_parser(
        "cancel",
        formatter_class=HelpFormatter,
        help="cancel a job",
    )
    _common(cancel)
    cancel.add_argument("job_id", help="the id that submit printed")
    cancel.set_defaults(handler=_cancel)


def _add_log(commands: Any) -> None:
    log = commands.add_parser(
        "log",
        formatter_class=HelpFormatter,
        help="print the render log of a job's tasks",
    )
    _common(log)
    log.add_argument("job_id", help="the id that submit printed")
    log.add_argument(
        "--task", type=int, default=None, help="only the task with this index (from 0)"
    )
    log.set_defaults(handler=_log)


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        formatter_class=HelpFormatter,
        help="render the demo animation on three local nodes",
    )
    demo.add_argument(
        "--frames", type=int, default=12, help="number of frames to render, 1 to 250"
    )
    demo.add_argument(
        "--output",
        type=Path,
        default=Path("demo-output"),
        help="where the frames go",
    )
    demo.add_argument("--work-dir", type=Path, default=None, help="keep node data here")
    demo.add_argument(
        "--timeout", type=float, default=900, help="give up after this many seconds"
    )
    demo.set_defaults(handler=_demo)


# Commands ----------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    from flamenco_p2p.farmkey import new_farm_key, save_farm_key

    config = load_config(args.data_dir, args.config)
    farm_key = new_farm_key(args.farm)
    path = save_farm_key(config.data_dir, farm_key, replace=args.force)
    print(f"created farm {farm_key.farm!r}; its key is in {path}")
    print("on each other machine, run:  flamenco-p2p join CODE")
    print("with the code that `flamenco-p2p invite` prints here.")
    return 0


def _invite(args: argparse.Namespace) -> int:
    from flamenco_p2p.farmkey import load_farm_key

    config = load_config(args.data_dir, args.config)
    farm_key = load_farm_key(config.data_dir)
    # The code is the farm key itself: it goes to stdout only, never to a log.
    print(farm_key.invite_code())
    return 0


def _join(args: argparse.Namespace) -> int:
    from flamenco_p2p.farmkey import parse_invite, save_farm_key

    config = load_config(args.data_dir, args.config)
    farm_key = parse_invite(args.code)
    path = save_farm_key(config.data_dir, farm_key, replace=args.force)
    print(f"joined farm {farm_key.farm!r}; its key is in {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from flamenco_p2p.daemon import run_daemon

    config = load_config(args.data_dir, args.config)
    return asyncio.run(run_daemon(config, args.log_level, args.log_file))


def _submit(args: argparse.Namespace) -> int:
    config = load_config(args.data_dir, args.config)
    return asyncio.run(_submit_async(config, args))


async def _submit_async(config: NodeConfig, args: argparse.Namespace) -> int:
    from flamenco_p2p.submission import build_render_job

    blend = args.file.expanduser().resolve()
    job, warnings = build_render_job(
        blend=blend,
        frames=args.frames,
        chunk=args.chunk,
        output=args.output,
        cwd=Path.cwd(),
        name=args.name,
        priority=args.priority,
        engine=args.engine,
        samples=args.samples,
        resolution=args.resolution,
        gpu=args.gpu,
    )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    async with NodeClient.for_config(config) as client:
        result = await client.call(
            "client_submit", {"job": job, "blend_path": str(blend)}, timeout=150
        )
        job_id = result["job_id"]
        print(job_id)
        sys.stdout.flush()
        if args.no_wait:
            return 0
        try:
            final = await wait_for_job(client, job_id)
        except asyncio.CancelledError:
            print(
                f"\nstopped watching; job {job_id} keeps rendering. Watch it with"
                f" `flamenco-p2p status`, stop it with `flamenco-p2p cancel {job_id}`",
                file=sys.stderr,
            )
            raise
    print(f"job {job_id} {final['status']}", file=sys.stderr)
    if final["status"] != "completed":
        print_failures(final)
    return 0 if final["status"] == "completed" else EXIT_FAILED


def print_failures(job: dict[str, Any]) -> None:
    """Print why a job and its tasks failed, and where to read more."""
    if job.get("error"):
        print(f"  {job['error']}", file=sys.stderr)
    failed = [
        t
        for t in job.get("tasks", [])
        if t.get("error") and t["error"] != job.get("error")
    ]
    for task in failed[:5]:
        print(
            f"  task {task['index']} ({task['name']}): {task['error']}", file=sys.stderr
        )
    if len(failed) > 5:
        print(f"  ... and {len(failed) - 5} more tasks", file=sys.stderr)
    if failed:
        print(
            f"  Blender's output: flamenco-p2p log {job['id']} --task"
            f" {failed[0]['index']}",
            file=sys.stderr,
        )


async def wait_for_job(
    client: NodeClient, job_id: str, timeout: float | None = None
) -> dict[str, Any]:
    """Show a progress bar until the job ends; returns the last job view."""
    started = time.monotonic()
    bar = ProgressBar(sys.stderr)
    while True:
        view = await client.call("client_job", {"job_id": job_id})
        job = view["job"]
        bar.show(job)
        if job["status"] in FINAL_JOB_STATUSES:
            bar.close()
            return {**job, "tasks": view["tasks"]}
        if timeout is not None and time.monotonic() - started > timeout:
            bar.close()
            raise FarmError(f"job {job_id} did not finish within {timeout:g} s")
        await asyncio.sleep(0.5)


class ProgressBar:
    """A one-line progress bar on a terminal, or a line per change elsewhere."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.last = ""

    def show(self, job: dict[str, Any]) -> None:
        """Draw the job's progress."""
        total = max(int(job.get("frames_total") or 0), 1)
        done = int(job.get("frames_done") or 0)
        width = 30
        filled = width * done // total
        text = (
            f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} frames"
            f"  {job['status']}"
        )
        if text == self.last:
            return
        self.last = text
        if self.tty:
            self.stream.write("\r" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()


def _status(args: argparse.Namespace) -> int:
    config = load_config(args.data_dir, args.config)
    status = asyncio.run(_call(config, "client_status", {}))
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(format_status(status))
    return 0


async def _call(config: NodeConfig, op: str, body: dict[str, Any]) -> Any:
    async with NodeClient.for_config(config) as client:
        return await client.call(op, body)


def format_status(status: dict[str, Any]) -> str:
    """Return the status as a table for people."""
    lines = [f"farm {status['farm']}, seen from node {status['node_id']}", "", "NODES"]
    for node in status["nodes"]:
        held = [f"{r['role']} (epoch {r['epoch']})" for r in node["roles"]]
        if node.get("worker_slots"):
            held.insert(0, f"worker ({node['worker_slots']} slots)")
        roles = ", ".join(held) or "no role"
        caps = node["capabilities"]
        gpus = ",".join(caps.get("gpu_types") or []) or "no GPU"
        lines.append(
            f"  {node['node_id']}  {node['state']:<7} site {node['site']:<10}"
            f" {node['address']:<15} cpu {caps.get('cpu_cores', '?')}, {gpus},"
            f" blender {caps.get('blender_version') or '-'}"
            f"  {roles}{'  (this node)' if node['this_node'] else ''}"
        )
    foreign = status.get("foreign") or []
    if foreign:
        lines += ["", "FOREIGN (seen over mDNS, other farm key: refused)"]
        for node in foreign:
            lines.append(
                f"  {node['node_id']}  {node['address']:<15} farm id {node['farm_id']}"
            )
    lines += ["", "JOBS"]
    if status.get("server_error"):
        lines.append(f"  unavailable: {status['server_error']}")
    for job in status.get("jobs", []):
        lines.append(
            f"  {job['id']}  {job['status']:<16} {job.get('frames_done', 0)}/"
            f"{job.get('frames_total', 0)} frames  {job['name']}"
        )
        if job.get("error"):
            lines.append(f"      {job['error']}")
    if not status.get("jobs") and not status.get("server_error"):
        lines.append("  none")
    return "\n".join(lines)


def _cancel(args: argparse.Namespace) -> int:
    config = load_config(args.data_dir, args.config)
    result = asyncio.run(_call(config, "client_cancel", {"job_id": args.job_id}))
    print(f"job {args.job_id}: cancel requested, {result['stopping']} tasks stopping")
    return 0


def _log(args: argparse.Namespace) -> int:
    config = load_config(args.data_dir, args.config)
    return asyncio.run(_log_async(config, args.job_id, args.task))


async def _log_async(config: NodeConfig, job_id: str, index: int | None) -> int:
    async with NodeClient.for_config(config) as client:
        view = await client.call("client_job", {"job_id": job_id})
        tasks = [t for t in view["tasks"] if index is None or t["index"] == index]
        if not tasks:
            raise FarmError(
                f"job {job_id} has no task {index}; it has tasks 0 to"
                f" {len(view['tasks']) - 1}"
            )
        for task in tasks:
            result = await client.call("client_task_log", {"task_id": task["id"]})
            print(
                f"== task {task['index']} ({task['name']}), {task['status']},"
                f" worker {task.get('worker_id') or '-'}"
            )
            if task.get("error"):
                print(f"error: {task['error']}")
            for line in result["lines"]:
                print(line)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from flamenco_p2p.demo import run_demo

    return run_demo(
        frames=args.frames,
        output=args.output.resolve(),
        work_dir=args.work_dir,
        timeout=args.timeout,
    )


if __name__ == "__main__":
    sys.exit(main())
