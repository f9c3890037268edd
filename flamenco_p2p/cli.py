"""The ``flamenco-p2p`` command line.

``init``, ``invite``, ``join``, ``run`` and ``demo`` work on this machine's data
directory. Every other command talks to a node's HTTP API (docs/http-api.md):
the local node of ``--data-dir`` by default, or the node that ``--node`` names.
docs/cli.md describes each command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import re
import sys
import time
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flamenco_p2p import __version__
from flamenco_p2p.api.client import ApiClient, ApiError, NodeUnreachable, local_api
from flamenco_p2p.config import DEFAULT_HTTP_PORT, load_config
from flamenco_p2p.errors import ConfigError, FarmError, InvalidInput
from flamenco_p2p.jobs.status import JobStatus
from flamenco_p2p.transport import RemoteError

if TYPE_CHECKING:
    from flamenco_p2p.client import NodeClient

logger = logging.getLogger("flamenco_p2p.cli")

FINAL_JOB_STATUSES = frozenset({"completed", "failed", "canceled"})
FINAL_TASK_STATUSES = frozenset({"completed", "failed", "canceled"})
EXIT_FAILED = 1
EXIT_USAGE = 2
# The name of the environment variable that contains the token, not a token.
TOKEN_ENV = "FLAMENCO_P2P_TOKEN"  # noqa: S105
STATUS_JOBS = 20
"""Jobs that ``status`` lists, newest first; ``jobs`` pages through the rest."""
TASK_PAGE = 1000
LOG_PAGE = 1000
REFRESH_EVERY = 10.0
"""Seconds without an event after which a watch reads the job again, in case an
event was lost."""
RECONNECT_FOR = 30.0
"""Seconds a watch keeps reconnecting to an event stream that broke."""
SHOWN_FAILURES = 5


class UsageError(Exception):
    """A command line that argparse accepted but that makes no sense; exit 2."""


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(
        _join_negative_frames(sys.argv[1:] if argv is None else argv)
    )
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    _replace_unencodable_output()
    if getattr(args, "uses_api", False):
        logging.basicConfig(
            level=logging.WARNING, format="flamenco-p2p: %(message)s", force=True
        )
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`status | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UsageError as exc:
        print(f"flamenco-p2p {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (FarmError, RemoteError, OSError) as exc:
        print(f"flamenco-p2p: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _replace_unencodable_output() -> None:
    """Let a terminal that cannot show a job's name print an escape, not fail."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


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
    _add_jobs(commands)
    _add_job_changes(commands)
    _add_requeue(commands)
    _add_priority(commands)
    _add_logs(commands)
    _add_token(commands)
    _add_dashboard(commands)
    _add_console(commands)
    _add_demo(commands)
    _add_addon(commands)
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


def _api_options(parser: argparse.ArgumentParser, json_help: str | None) -> None:
    """Add the options of every command that talks to a node's HTTP API.

    A command without JSON output passes json_help=None and gets no --json.
    """
    _common(parser)
    parser.add_argument(
        "--node",
        type=node_url,
        default=None,
        metavar="URL",
        help="HTTP API of the node to talk to, such as http://192.168.1.20:8888;"
        f" the port defaults to {DEFAULT_HTTP_PORT} (default: this machine's node"
        " of --data-dir)",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="farm token for changes (default: from the farm key in --data-dir,"
        f" else the environment variable {TOKEN_ENV})",
    )
    if json_help is not None:
        parser.add_argument("--json", action="store_true", help=json_help)
    parser.set_defaults(uses_api=True)


def node_url(text: str) -> str:
    """Return a node's API base URL from --node; an argparse type."""
    value = text.strip()
    if "://" not in value:
        value = "http://" + value
    invalid = argparse.ArgumentTypeError(
        f"{text!r} is not a node address; give http://HOST:PORT, such as"
        f" http://192.168.1.20:{DEFAULT_HTTP_PORT}"
    )
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        raise invalid from None
    extra = parts.path not in ("", "/") or parts.query or parts.fragment
    if parts.scheme not in ("http", "https") or not parts.hostname or extra:
        raise invalid
    if parts.username is not None:
        raise invalid
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port or DEFAULT_HTTP_PORT}"


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """Return an argparse type that takes integers from low to high."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{text!r} is invalid; give an integer from {low} to {high}"
            )
        return value

    return parse


def _job_statuses(text: str) -> list[str]:
    """Parse --status: one job status, or several separated by commas."""
    known = [status.value for status in JobStatus]
    values = [part.strip() for part in text.split(",") if part.strip()]
    for value in values:
        if value not in known:
            raise argparse.ArgumentTypeError(
                f"job status {value!r} is unknown; give {', '.join(known)}"
            )
    if not values:
        raise argparse.ArgumentTypeError("give a job status, such as failed")
    return values


def _sleep_spec(text: str) -> tuple[int, float]:
    """Parse --sleep TASKS:SECONDS."""
    tasks, _colon, seconds = text.partition(":")
    try:
        parsed = (int(tasks), float(seconds))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is invalid; give TASKS:SECONDS, such as 4:1.5"
        ) from None
    return parsed


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
        help="submit a blend file, a job file or a sleep job to the farm",
        description="Submit a job. Give a .blend file with --frames and --output,"
        " a job file (--job), or a sleep job that tests the farm (--sleep).",
    )
    _api_options(submit, "print the job as JSON when it is submitted or has ended")
    submit.add_argument(
        "file",
        type=Path,
        nargs="?",
        help="the .blend file to render; with --job, the blend file of a"
        " blender-render job file",
    )
    submit.add_argument(
        "--frames",
        help="frames, such as 1-250 or 1-10,20; write --frames=-5--1 when the"
        " spec starts with a minus sign",
    )
    submit.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="frames per task, 1 to 1000 (default: 1)",
    )
    submit.add_argument(
        "--output",
        help="output directory, or a Blender output path such as out/shot_####;"
        " it is a path on the node that takes the submission",
    )
    submit.add_argument(
        "--job",
        type=Path,
        default=None,
        metavar="FILE",
        help="a JSON job file: name, job_type, priority, settings, requirements",
    )
    submit.add_argument(
        "--sleep",
        type=_sleep_spec,
        default=None,
        metavar="TASKS:SECONDS",
        help="submit a sleep job of TASKS tasks that each wait SECONDS; it renders"
        " nothing and tests the farm",
    )
    submit.add_argument(
        "--name",
        default=None,
        help="job name (default: the file name, or the job file's name)",
    )
    submit.add_argument(
        "--priority",
        type=_int_in(0, 100),
        default=None,
        help="0 to 100; higher runs first (default: 50, or the job file's)",
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
        default=None,
        help="whether the job needs a GPU worker (default: none, or the job file's)",
    )
    waiting = submit.add_mutually_exclusive_group()
    waiting.add_argument(
        "--wait",
        dest="wait",
        action="store_true",
        default=True,
        help="show progress until the job ends (the default)",
    )
    waiting.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="return after submitting (default: wait)",
    )
    submit.set_defaults(handler=_submit)


def _add_status(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        formatter_class=HelpFormatter,
        help="show the farm: nodes, roles, running tasks and the newest jobs",
    )
    _api_options(status, 'print {"farm", "nodes", "jobs"} as JSON')
    status.set_defaults(handler=_status)


def _add_jobs(commands: Any) -> None:
    jobs = commands.add_parser(
        "jobs",
        formatter_class=HelpFormatter,
        help="list jobs, newest first",
    )
    _api_options(jobs, "print the page of jobs as JSON")
    jobs.add_argument(
        "--status",
        type=_job_statuses,
        action="append",
        default=None,
        help="only jobs in this status; repeat it or separate statuses with commas",
    )
    jobs.add_argument(
        "--search",
        default=None,
        metavar="TEXT",
        help="only jobs whose name contains TEXT, ignoring case",
    )
    jobs.add_argument(
        "--limit", type=_int_in(1, 1000), default=50, help="jobs per page, 1 to 1000"
    )
    jobs.add_argument(
        "--offset", type=_int_in(0, 2**53), default=0, help="jobs to skip"
    )
    jobs.set_defaults(handler=_jobs)


JOB_CHANGES = {
    "cancel": "cancel a job; its running tasks stop",
    "pause": "pause a job; running tasks stop and wait, no new tasks start",
    "resume": "queue a paused job again",
    "delete": "forget a completed, failed or canceled job (its frames stay)",
}


def _add_job_changes(commands: Any) -> None:
    for name, text in JOB_CHANGES.items():
        change = commands.add_parser(name, formatter_class=HelpFormatter, help=text)
        _api_options(change, "print the API's reply as JSON")
        change.add_argument("job_id", help="the id that submit printed")
        change.set_defaults(handler=_change_job, action=name)


def _add_requeue(commands: Any) -> None:
    requeue = commands.add_parser(
        "requeue",
        formatter_class=HelpFormatter,
        help="run a job's tasks, its failed tasks or one task again",
        description="Run tasks again: every task of JOB_ID, its failed and"
        " canceled tasks with --failed, or one task with --task TASK_ID.",
    )
    _api_options(requeue, "print the API's reply as JSON")
    requeue.add_argument("job_id", nargs="?", help="the id that submit printed")
    requeue.add_argument(
        "--failed",
        action="store_true",
        help="only the failed and canceled tasks; the job may still be running",
    )
    requeue.add_argument(
        "--task",
        default=None,
        metavar="TASK_ID",
        help="requeue only this task; `flamenco-p2p logs JOB_ID --json` lists"
        " the task ids",
    )
    requeue.set_defaults(handler=_requeue)


def _add_priority(commands: Any) -> None:
    priority = commands.add_parser(
        "priority",
        formatter_class=HelpFormatter,
        help="change a job's priority",
    )
    _api_options(priority, "print the API's reply as JSON")
    priority.add_argument("job_id", help="the id that submit printed")
    priority.add_argument(
        "priority", type=_int_in(0, 100), help="0 to 100; higher runs first"
    )
    priority.set_defaults(handler=_priority)


def _add_logs(commands: Any) -> None:
    logs = commands.add_parser(
        "logs",
        aliases=["log"],
        formatter_class=HelpFormatter,
        help="print the log of a job's tasks or of one task",
    )
    _api_options(
        logs,
        "print the log as JSON; with --follow, one JSON object per log line",
    )
    logs.add_argument(
        "id", metavar="ID", help="a job id (every task, or --task N) or a task id"
    )
    logs.add_argument(
        "--task",
        type=_int_in(0, 2**31),
        default=None,
        metavar="N",
        help="only the task with this index (from 0) of the job",
    )
    logs.add_argument(
        "--tail",
        type=_int_in(1, 10_000),
        default=None,
        metavar="LINES",
        help="only the last LINES lines of each task; with --follow, the lines to"
        " start with (default: every line)",
    )
    logs.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing new lines until the task (or the job) ends",
    )
    logs.set_defaults(handler=_logs)


def _add_token(commands: Any) -> None:
    token = commands.add_parser(
        "token",
        formatter_class=HelpFormatter,
        help="print the farm token that HTTP API changes need",
    )
    _common(token)
    token.add_argument("--json", action="store_true", help='print {"token"} as JSON')
    token.set_defaults(handler=_token)


def _add_dashboard(commands: Any) -> None:
    dashboard = commands.add_parser(
        "dashboard",
        formatter_class=HelpFormatter,
        help="print the dashboard's address, with the farm token in its fragment",
    )
    _api_options(dashboard, 'print {"url"} as JSON')
    dashboard.set_defaults(handler=_dashboard)


def _add_console(commands: Any) -> None:
    console = commands.add_parser(
        "console",
        formatter_class=HelpFormatter,
        help="watch and steer the farm in a terminal application; without a"
        " farm token it is read-only",
    )
    _api_options(console, None)
    console.set_defaults(handler=_console)


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


def _add_addon(commands: Any) -> None:
    addon = commands.add_parser(
        "addon",
        formatter_class=HelpFormatter,
        help="build the Blender add-on that finds the farm and submits jobs",
    )
    actions = addon.add_subparsers(dest="addon_command", metavar="ACTION")
    actions.required = True
    build = actions.add_parser(
        "build",
        formatter_class=HelpFormatter,
        help="write the extension zip, with the wheels it needs, for Blender 4.2+",
    )
    build.add_argument(
        "--output",
        default=None,
        help="zip file or folder to write (default:"
        " flamenco_p2p_submit-VERSION.zip here)",
    )
    build.add_argument(
        "--wheels",
        type=Path,
        default=None,
        metavar="DIR",
        help="take the wheels from this folder and download nothing (default:"
        " download once into the user cache folder)",
    )
    build.set_defaults(handler=_addon_build)


# Commands ----------------------------------------------------------------------


def _addon_build(args: argparse.Namespace) -> int:
    from flamenco_p2p.addon_build import build_addon

    logging.basicConfig(level=logging.INFO, format="flamenco-p2p: %(message)s")
    output = Path(args.output) if args.output else None
    if output is not None and args.output.endswith(("/", os.sep)):
        output.mkdir(parents=True, exist_ok=True)
    path = build_addon(output, args.wheels)
    print(
        f"wrote {path}; install it in Blender with Edit > Preferences > Get"
        " Extensions > Install from Disk"
    )
    return 0


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


# The HTTP API ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiTarget:
    """The node a command talks to, the token for changes and where it came from."""

    url: str
    token: str | None
    token_source: str


def api_target(args: argparse.Namespace) -> ApiTarget:
    """Return the node and token of a command's --node, --token and --data-dir."""
    config = load_config(args.data_dir, args.config)
    local: tuple[str, str] | None = None
    if args.node is None or not args.token:
        try:
            local = local_api(config)
        except ConfigError:
            # No node runs on a data directory without a farm key, so without
            # one only another node (--node) can be reached.
            if args.node is None:
                raise
    if args.node is not None:
        url: str = args.node
    else:
        assert local is not None
        url = local[0]
    if args.token:
        return ApiTarget(url, args.token, "--token")
    if local is not None:
        return ApiTarget(url, local[1], f"the farm key in {config.data_dir}")
    from_env = os.environ.get(TOKEN_ENV) or None
    return ApiTarget(url, from_env, TOKEN_ENV if from_env else "")


def _with_api(
    args: argparse.Namespace,
    command: Callable[[ApiClient], Awaitable[int]],
    *,
    changes: bool = False,
) -> int:
    """Run one command against the API of the node that args name.

    ``changes`` marks a command that needs the farm token.
    """
    target = api_target(args)
    if changes:
        _require_token(target)

    async def run() -> int:
        async with ApiClient(target.url, target.token) as api:
            return await command(api)

    try:
        return asyncio.run(run())
    except ApiError as exc:
        if exc.status != 401:
            raise
        raise FarmError(
            f"{target.url} rejected the farm token from {target.token_source} as"
            " wrong; use the token that `flamenco-p2p token` prints on a machine of"
            " this farm"
        ) from exc


def _require_token(target: ApiTarget) -> None:
    if target.token is None:
        raise FarmError(
            f"no farm token for {target.url}: pass --token or set {TOKEN_ENV}"
            " (`flamenco-p2p token` prints it on a machine of the farm)"
        )


def print_json(document: Any) -> None:
    """Print one JSON document on stdout, UTF-8 as it is."""
    print(json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True))


# Submit ------------------------------------------------------------------------


def _submit(args: argparse.Namespace) -> int:
    job, blend = build_submission(args)
    return _with_api(
        args, lambda api: _submit_async(api, args, job, blend), changes=True
    )


def build_submission(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None]:
    """Return the job map that args describe and the blend file to upload, if any.

    Raises UsageError for options that do not fit together and InvalidInput (or
    FrameSpecError) for a value that is wrong; no request is sent then.
    """
    kinds = [args.file is not None and args.job is None, args.job, args.sleep]
    if sum(1 for kind in kinds if kind) != 1:
        raise UsageError(
            "give one of: a blend file (with --frames and --output), --job FILE or"
            " --sleep TASKS:SECONDS"
        )
    render_only = {
        "--frames": args.frames,
        "--chunk": args.chunk,
        "--output": args.output,
        "--engine": args.engine,
        "--samples": args.samples,
        "--resolution": args.resolution,
    }
    if args.job is not None or args.sleep is not None:
        given = [name for name, value in render_only.items() if value is not None]
        if given:
            raise UsageError(
                f"{given[0]} applies to a blend file only; a job file or sleep job"
                " sets its own settings"
            )
    if args.sleep is not None:
        return _sleep_job(args), None
    if args.job is not None:
        return _job_file(args)
    missing = [name for name in ("--frames", "--output") if render_only[name] is None]
    if missing:
        raise UsageError(f"{missing[0]} is required to render a blend file")
    return _render_job(args)


def _render_job(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    from flamenco_p2p.submission import build_render_job

    blend = args.file.expanduser().resolve()
    job, warnings = build_render_job(
        blend=blend,
        frames=args.frames,
        chunk=1 if args.chunk is None else args.chunk,
        output=args.output,
        cwd=Path.cwd(),
        name=args.name,
        priority=50 if args.priority is None else args.priority,
        engine=args.engine,
        samples=args.samples,
        resolution=args.resolution,
        gpu=args.gpu or "none",
    )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return job, blend


def _sleep_job(args: argparse.Namespace) -> dict[str, Any]:
    tasks, seconds = args.sleep
    return {
        "name": args.name or f"sleep {tasks}x{seconds:g}s",
        "job_type": "sleep",
        "priority": 50 if args.priority is None else args.priority,
        "settings": {"tasks": tasks, "duration": seconds},
        "requirements": {
            "gpu": args.gpu or "none",
            "gpu_types": [],
            "min_blender": None,
        },
    }


def _job_file(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None]:
    path: Path = args.job
    try:
        job = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(
            f"job file {str(path)!r} not found; check the path"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(
            f"job file {str(path)!r} is not JSON in UTF-8: {exc}"
        ) from exc
    if not isinstance(job, dict):
        raise InvalidInput(
            f"job file {str(path)!r} must contain a JSON object with name,"
            " job_type, priority, settings and requirements"
        )
    if args.name is not None:
        job["name"] = args.name
    job.setdefault("name", path.stem)
    if args.priority is not None:
        job["priority"] = args.priority
    if args.gpu is not None:
        job["requirements"] = {**(job.get("requirements") or {}), "gpu": args.gpu}
    blend: Path | None = None
    if args.file is not None:
        if job.get("job_type") != "blender-render":
            raise UsageError(
                f"job file {str(path)!r} is a {job.get('job_type')!r} job, which"
                " takes no blend file"
            )
        blend = args.file.expanduser().resolve()
        if not blend.is_file():
            raise InvalidInput(f"blend file {str(blend)!r} not found; check the path")
    elif job.get("job_type") == "blender-render":
        settings = job.get("settings")
        if not isinstance(settings, dict) or "blend_sha256" not in settings:
            raise UsageError(
                f"job file {str(path)!r} is a blender-render job without"
                " settings.blend_sha256; give its blend file too:"
                f" flamenco-p2p submit --job {path} FILE.blend"
            )
    return job, blend


async def _submit_async(
    api: ApiClient, args: argparse.Namespace, job: dict[str, Any], blend: Path | None
) -> int:
    if blend is not None:
        uploaded = await api.upload_blend(blend)
        settings = job.setdefault("settings", {})
        if isinstance(settings, dict):
            settings.update(
                blend_sha256=uploaded["sha256"],
                blend_size=uploaded["size"],
                blend_name=uploaded["name"],
            )
    created: dict[str, Any] = (await api.submit(job))["job"]
    job_id = created["id"]
    if not args.json:
        print(job_id)
        sys.stdout.flush()
    if not args.wait:
        if args.json:
            print_json({"job": created})
        return 0
    try:
        final = await watch_job(api, created)
    except asyncio.CancelledError:
        print(
            f"\nstopped watching; job {job_id} keeps running. Watch it with"
            f" `flamenco-p2p status`, stop it with `flamenco-p2p cancel {job_id}`",
            file=sys.stderr,
        )
        raise
    print(f"job {job_id} {final['status']}", file=sys.stderr)
    if final["status"] != "completed":
        failed = await api.tasks(job_id, status="failed", limit=SHOWN_FAILURES)
        print_failures(final, failed["tasks"], failed["total"])
    if args.json:
        print_json({"job": final})
    return 0 if final["status"] == "completed" else EXIT_FAILED


def print_failures(
    job: dict[str, Any], tasks: Sequence[dict[str, Any]], total: int | None = None
) -> None:
    """Print why a job and its tasks failed, and where to read more.

    ``total`` is how many tasks failed in all, when ``tasks`` is only the first few.
    """
    if job.get("error"):
        print(f"  {printable(job['error'])}", file=sys.stderr)
    failed = [t for t in tasks if t.get("error") and t["error"] != job.get("error")]
    for task in failed[:SHOWN_FAILURES]:
        print(
            f"  task {task['index']} ({printable(task['name'])}):"
            f" {printable(task['error'])}",
            file=sys.stderr,
        )
    more = max(len(failed), total or 0) - SHOWN_FAILURES
    if more > 0:
        print(f"  ... and {more} more tasks", file=sys.stderr)
    if failed:
        print(
            f"  its log: flamenco-p2p logs {job['id']} --task {failed[0]['index']}",
            file=sys.stderr,
        )


class EventFeed:
    """A node's event stream, read in the background into a queue.

    A stream that breaks or ends is opened again. Each new connection starts
    with a ``hello`` event, after which the reader fetches again what it shows.
    After RECONNECT_FOR seconds without a connection, get raises the last error.
    """

    def __init__(self, api: ApiClient, job_id: str | None) -> None:
        self.api = api
        self.job_id = job_id
        self.queue: asyncio.Queue[tuple[str, Any] | Exception] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventFeed:
        self._task = asyncio.create_task(self._read(), name="cli-events")
        self._task.add_done_callback(self._finished)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def get(self, timeout: float) -> tuple[str, Any] | None:
        """Return the next event, or None when none came within timeout seconds."""
        try:
            async with asyncio.timeout(timeout):
                item = await self.queue.get()
        except TimeoutError:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    def _finished(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.queue.put_nowait(
                FarmError(f"reading the event stream failed: {task.exception()}")
            )

    async def _read(self) -> None:
        connected = time.monotonic()
        failures = 0
        while True:
            try:
                async with contextlib.aclosing(self.api.events(self.job_id)) as events:
                    async for event in events:
                        connected = time.monotonic()
                        failures = 0
                        self.queue.put_nowait(event)
                problem = "the node closed the event stream"
            except NodeUnreachable as exc:
                problem = str(exc)
                if time.monotonic() - connected > RECONNECT_FOR:
                    self.queue.put_nowait(exc)
                    return
            except ApiError as exc:
                # An error reply will not change when the request is sent again.
                self.queue.put_nowait(exc)
                return
            failures += 1
            # One warning per outage; the retries that follow go to debug.
            level = logging.WARNING if failures == 1 else logging.DEBUG
            logger.log(level, "%s; connecting again", problem)
            await asyncio.sleep(1.0)


async def watch_job(api: ApiClient, job: dict[str, Any]) -> dict[str, Any]:
    """Show a job's progress from the event stream until it ends; returns the job."""
    job_id = job["id"]
    bar = ProgressBar(sys.stderr)
    bar.show(job)
    async with EventFeed(api, job_id) as feed:
        while job["status"] not in FINAL_JOB_STATUSES:
            event = await feed.get(REFRESH_EVERY)
            kind, data = event or ("refresh", {})
            if kind == "job" and data["id"] == job_id:
                job = data
            elif kind == "job_deleted" and data["id"] == job_id:
                bar.close()
                raise FarmError(f"job {job_id} was deleted while it ran")
            elif kind in ("hello", "reset", "refresh"):
                job = await _reread_job(api, job)
            bar.show(job)
    bar.close()
    # Job events lack a few fields of the job that GET returns (progress).
    return await _reread_job(api, job)


async def _reread_job(api: ApiClient, job: dict[str, Any]) -> dict[str, Any]:
    """Fetch a job again; keep the old view while the node cannot be reached."""
    try:
        return await api.job(job["id"])
    except NodeUnreachable as exc:
        logger.info("cannot read job %s again: %s", job["id"], exc)
        return job


async def wait_for_job(
    client: NodeClient, job_id: str, timeout: float | None = None
) -> dict[str, Any]:
    """Show a progress bar until the job ends; returns the last job view.

    This polls a node's port over ZeroMQ; the demo uses it. The CLI watches jobs
    through the HTTP API with watch_job.
    """
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
        done, total, unit = progress_counts(job)
        width = 30
        filled = width * done // max(total, 1)
        text = (
            f"[{'#' * filled}{'.' * (width - filled)}] {percent(job)}"
            f"  {done}/{total} {unit}  {job['status']}"
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


def progress_counts(job: dict[str, Any]) -> tuple[int, int, str]:
    """Return (done, total, unit): frames for a render, tasks for other jobs."""
    if job.get("frames_total"):
        return int(job.get("frames_done") or 0), int(job["frames_total"]), "frames"
    counts = job.get("task_counts") or {}
    total = int(job.get("tasks_total") or sum(counts.values()))
    return int(counts.get("completed", 0)), total, "tasks"


def percent(job: dict[str, Any]) -> str:
    """Return a job's progress in percent, rounded down so 100% means done."""
    if "progress" in job:
        value = float(job["progress"])
    else:
        done, total, _unit = progress_counts(job)
        value = done / total if total else 0.0
    return f"{int(value * 100 + 1e-9)}%"


# Status and jobs ---------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    return _with_api(args, lambda api: _status_async(api, args))


async def _status_async(api: ApiClient, args: argparse.Namespace) -> int:
    # Both wait a few seconds for the server when the farm has none: in parallel.
    farm, nodes_reply = await asyncio.gather(api.farm(), api.nodes())
    nodes = nodes_reply["nodes"]
    jobs: dict[str, Any] | None = None
    jobs_error = ""
    if farm.get("server_reachable", True):
        try:
            jobs = await api.jobs(limit=STATUS_JOBS)
        except ApiError as exc:
            if exc.status != 503:
                raise
            jobs_error = exc.message
    else:
        jobs_error = (
            "the farm has no reachable server yet; wait for the election, or check"
            " that the nodes below are alive"
        )
    if args.json:
        print_json({"farm": farm, "nodes": nodes, "jobs": jobs})
    else:
        print(format_status(farm, nodes, jobs, jobs_error))
    return 0


def format_status(
    farm: dict[str, Any],
    nodes: list[dict[str, Any]],
    jobs: dict[str, Any] | None,
    jobs_error: str = "",
) -> str:
    """Return the farm's status as text for people."""
    lines = [
        f"farm {printable(farm['farm'])} (id {farm['farm_id']}), seen from node"
        f" {farm['node_id']}",
        _counts_line(farm),
        "",
        "NODES",
        *format_table(
            ["NODE", "STATE", "SITE", "ADDRESS", "ROLES", "WORKERS", "CAPABILITIES"],
            [_node_row(node) for node in nodes],
        ),
    ]
    busy = [
        worker
        for node in nodes
        for worker in node.get("workers", [])
        if worker.get("current_task")
    ]
    lines += ["", "RUNNING"]
    if busy:
        lines += format_table(
            ["WORKER", "JOB", "TASK", "PROGRESS"],
            [
                [
                    worker["worker_id"],
                    worker["current_task"]["job_id"],
                    printable(worker["current_task"]["name"]),
                    f"{int(float(worker['current_task']['progress'] or 0) * 100)}%",
                ]
                for worker in busy
            ],
        )
    else:
        lines.append("  no task is running")
    lines += ["", "JOBS"]
    if jobs is None:
        lines.append(f"  unavailable: {jobs_error}")
    elif not jobs["jobs"]:
        lines.append("  none")
    else:
        lines += format_jobs(jobs["jobs"])
        more = jobs["total"] - len(jobs["jobs"])
        if more > 0:
            lines.append(
                f"  ... and {more} older; `flamenco-p2p jobs --offset"
                f" {len(jobs['jobs'])}` lists them"
            )
    return "\n".join(lines)


def _counts_line(farm: dict[str, Any]) -> str:
    counts = farm.get("counts") or {}
    parts = []
    for name in ("nodes", "workers", "jobs"):
        values = counts.get(name) or {}
        text = ", ".join(f"{n} {state}" for state, n in values.items() if n)
        parts.append(f"{name}: {text or 'none'}")
    return "; ".join(parts)


def _node_row(node: dict[str, Any]) -> list[str]:
    roles = ", ".join(f"{r['role']} (epoch {r['epoch']})" for r in node["roles"])
    states: dict[str, int] = {}
    for worker in node.get("workers", []):
        states[worker["status"]] = states.get(worker["status"], 0) + 1
    workers = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    caps = node.get("capabilities") or {}
    gpus = ",".join(caps.get("gpu_types") or []) or "no GPU"
    capabilities = (
        f"cpu {caps.get('cpu_cores', '?')}, {gpus},"
        f" blender {caps.get('blender_version') or '-'}"
    )
    name = node["node_id"] + (" (this node)" if node.get("this_node") else "")
    return [
        name,
        node["state"],
        printable(node["site"]),
        node["address"],
        roles or "-",
        workers or f"{node.get('worker_slots', 0)} slots",
        capabilities,
    ]


def format_jobs(jobs: list[dict[str, Any]]) -> list[str]:
    """Return a table of jobs, with each job's error on a line of its own."""
    rows = []
    for job in jobs:
        done, total, unit = progress_counts(job)
        rows.append(
            [
                job["id"],
                job["status"],
                percent(job),
                f"{done}/{total} {unit}",
                str(job["priority"]),
                printable(job["name"]),
            ]
        )
    lines = format_table(["ID", "STATUS", "PROGRESS", "DONE", "PRIORITY", "NAME"], rows)
    result = lines[:1]
    for job, line in zip(jobs, lines[1:], strict=True):
        result.append(line)
        if job.get("error"):
            result.append(f"      {printable(job['error'])}")
    return result


def _jobs(args: argparse.Namespace) -> int:
    return _with_api(args, lambda api: _jobs_async(api, args))


async def _jobs_async(api: ApiClient, args: argparse.Namespace) -> int:
    statuses = [value for values in args.status or [] for value in values]
    page = await api.jobs(
        status=statuses, limit=args.limit, offset=args.offset, q=args.search
    )
    if args.json:
        print_json(page)
        return 0
    if not page["jobs"]:
        print("no jobs" if not page["total"] else f"no jobs past {args.offset}")
        return 0
    print("\n".join(format_jobs(page["jobs"])))
    shown = len(page["jobs"])
    if shown < page["total"]:
        first = args.offset + 1
        print(
            f"jobs {first} to {args.offset + shown} of {page['total']};"
            f" --offset {args.offset + shown} shows the next page"
        )
    return 0


# Changing jobs and tasks ---------------------------------------------------------


def _change_job(args: argparse.Namespace) -> int:
    return _with_api(args, lambda api: _change_job_async(api, args), changes=True)


async def _change_job_async(api: ApiClient, args: argparse.Namespace) -> int:
    action: Callable[[str], Awaitable[dict[str, Any]]] = getattr(api, args.action)
    reply = await action(args.job_id)
    if args.json:
        print_json(reply)
    elif args.action == "delete":
        print(f"job {reply['deleted']} deleted")
    else:
        print(describe_change(reply["job"]))
    return 0


def describe_change(job: dict[str, Any]) -> str:
    """Return one line with a job's status after a change."""
    text = f"job {job['id']} {job['status']}"
    running = (job.get("task_counts") or {}).get("active", 0)
    if job["status"] in ("cancel-requested", "pause-requested"):
        text += f": {running} running tasks are stopping"
    return text


def _requeue(args: argparse.Namespace) -> int:
    if (args.job_id is None) == (args.task is None):
        raise UsageError("give a JOB_ID, or --task TASK_ID for one task")
    if args.task is not None and args.failed:
        raise UsageError("--failed applies to a job; --task requeues one task")
    return _with_api(args, lambda api: _requeue_async(api, args), changes=True)


async def _requeue_async(api: ApiClient, args: argparse.Namespace) -> int:
    if args.task is not None:
        reply = await api.requeue_task(args.task)
        if args.json:
            print_json(reply)
        else:
            task = reply["task"]
            print(
                f"task {task['index']} ({printable(task['name'])}) {task['status']};"
                f" {describe_change(reply['job'])}"
            )
        return 0
    reply = await api.requeue(args.job_id, "failed" if args.failed else "all")
    if args.json:
        print_json(reply)
    else:
        job = reply["job"]
        done, total, unit = progress_counts(job)
        print(f"{describe_change(job)}, {done}/{total} {unit} done")
    return 0


def _priority(args: argparse.Namespace) -> int:
    return _with_api(args, lambda api: _priority_async(api, args), changes=True)


async def _priority_async(api: ApiClient, args: argparse.Namespace) -> int:
    reply = await api.priority(args.job_id, args.priority)
    if args.json:
        print_json(reply)
    else:
        print(f"job {reply['job']['id']} has priority {reply['job']['priority']}")
    return 0


# Logs ----------------------------------------------------------------------------


@dataclass(slots=True)
class LogTarget:
    """The job and tasks whose log a logs command prints."""

    job: dict[str, Any]
    tasks: list[dict[str, Any]]
    single: bool
    """Whether one task was asked for (by task id or --task), not a whole job."""


def _logs(args: argparse.Namespace) -> int:
    return _with_api(args, lambda api: _logs_async(api, args))


async def _logs_async(api: ApiClient, args: argparse.Namespace) -> int:
    target = await find_log_target(api, args.id, args.task)
    if args.follow:
        await follow_logs(api, target, args.json, args.tail)
        return 0
    documents = []
    for task in target.tasks:
        if args.tail is not None:
            reply = await api.task_log(task["id"], tail=args.tail)
            lines, last_id = reply["lines"], reply["last_id"]
        else:
            lines, last_id = await read_log(api, task["id"], after=0)
        if args.json:
            documents.append({"task": task, "lines": lines, "last_id": last_id})
            continue
        print(
            f"== task {task['index']} ({printable(task['name'])}), {task['status']},"
            f" worker {task.get('worker_id') or '-'}"
        )
        if task.get("error"):
            print(f"error: {printable(task['error'])}")
        print_log_lines(lines, several_attempts=task.get("attempts", 0) > 1)
    if args.json:
        if target.single:
            print_json(documents[0])
        else:
            print_json({"job": target.job, "tasks": documents})
    return 0


async def find_log_target(api: ApiClient, item_id: str, index: int | None) -> LogTarget:
    """Find the job and the tasks whose log to print.

    item_id is a job id (every task, or the task of index) or a task id.
    """
    try:
        job = await api.job(item_id)
    except ApiError as exc:
        if exc.status != 404 or index is not None:
            raise
        try:
            reply = await api.task(item_id)
        except ApiError as task_exc:
            if task_exc.status != 404:
                raise
            raise FarmError(
                f"no job or task has id {item_id!r}; `flamenco-p2p jobs` lists the"
                " job ids, `flamenco-p2p logs JOB_ID` the tasks of one"
            ) from task_exc
        task = reply["task"]
        return LogTarget(await api.job(task["job_id"]), [task], single=True)
    if index is None:
        return LogTarget(job, await all_tasks(api, item_id), single=False)
    page = await api.tasks(item_id, offset=index, limit=1)
    if not page["tasks"] or page["tasks"][0]["index"] != index:
        raise FarmError(
            f"job {item_id} has no task {index}; it has tasks 0 to {page['total'] - 1}"
        )
    return LogTarget(job, page["tasks"], single=True)


async def all_tasks(api: ApiClient, job_id: str) -> list[dict[str, Any]]:
    """Return every task of a job, in order, a page at a time."""
    tasks: list[dict[str, Any]] = []
    while True:
        page = await api.tasks(job_id, offset=len(tasks), limit=TASK_PAGE)
        tasks += page["tasks"]
        if not page["tasks"] or len(tasks) >= page["total"]:
            return tasks


async def read_log(
    api: ApiClient, task_id: str, after: int
) -> tuple[list[dict[str, Any]], int]:
    """Return a task's log lines after line id ``after``, and the last line id."""
    lines: list[dict[str, Any]] = []
    while True:
        reply = await api.task_log(task_id, after=after, limit=LOG_PAGE)
        lines += reply["lines"]
        after = reply["last_id"]
        if len(reply["lines"]) < LOG_PAGE:
            return lines, after


def print_log_lines(
    lines: Sequence[dict[str, Any]],
    *,
    several_attempts: bool = False,
    prefix: str = "",
    attempt: list[str | None] | None = None,
) -> None:
    """Print log lines; each attempt of a task that ran more than once gets a head.

    ``attempt`` carries the attempt of the last line printed between calls.
    """
    current = attempt if attempt is not None else [None]
    for line in lines:
        if several_attempts and line.get("attempt_id") != current[0]:
            print(f"{prefix}-- attempt {line.get('attempt_id')}")
        current[0] = line.get("attempt_id")
        print(prefix + printable(line["line"], keep="\t"))


class LogFollower:
    """Prints new log lines of some tasks, each line once, from the event stream."""

    def __init__(self, api: ApiClient, target: LogTarget, as_json: bool) -> None:
        self.api = api
        self.target = target
        self.as_json = as_json
        self.tasks = {task["id"]: task for task in target.tasks}
        self.last_ids = dict.fromkeys(self.tasks, 0)
        self.attempts: dict[str, list[str | None]] = {t: [None] for t in self.tasks}
        # Tasks that had ended when their log was last read: their log is
        # complete until a task event shows that they run again.
        self.settled: set[str] = set()

    def print_lines(self, task_id: str, lines: Sequence[dict[str, Any]]) -> None:
        """Print the lines that are newer than those printed before."""
        fresh = [line for line in lines if line["id"] > self.last_ids[task_id]]
        if not fresh:
            return
        self.last_ids[task_id] = fresh[-1]["id"]
        if self.as_json:
            for line in fresh:
                document = {"task_id": task_id, **line}
                print(json.dumps(document, ensure_ascii=False, sort_keys=True))
        else:
            task = self.tasks[task_id]
            print_log_lines(
                fresh,
                several_attempts=task.get("attempts", 0) > 1
                or len({line.get("attempt_id") for line in fresh}) > 1,
                prefix="" if self.target.single else f"[task {task['index']}] ",
                attempt=self.attempts[task_id],
            )
        sys.stdout.flush()

    async def print_tails(self, lines: int) -> None:
        """Print the last lines of each task's log, as a start."""
        for task_id in self.tasks:
            reply = await self.api.task_log(task_id, tail=lines)
            self.print_lines(task_id, reply["lines"])

    async def catch_up(self) -> None:
        """Fetch and print every line that the stream may have missed."""
        for task_id, task in self.tasks.items():
            if task_id in self.settled:
                continue
            final = task["status"] in FINAL_TASK_STATUSES
            lines, _last = await read_log(self.api, task_id, self.last_ids[task_id])
            self.print_lines(task_id, lines)
            if final:
                self.settled.add(task_id)

    def update_task(self, task: dict[str, Any]) -> None:
        """Take a task's new status from a task event."""
        self.tasks[task["id"]] = {**self.tasks[task["id"]], **task}
        if task["status"] not in FINAL_TASK_STATUSES:
            self.settled.discard(task["id"])

    def done(self) -> bool:
        """Return whether the task, or with several tasks the job, has ended."""
        if self.target.single:
            task = next(iter(self.tasks.values()))
            return task["status"] in FINAL_TASK_STATUSES
        return self.target.job["status"] in FINAL_JOB_STATUSES

    async def reread(self) -> None:
        """Fetch the statuses of the job and of the tasks again."""
        job_id = self.target.job["id"]
        self.target.job = await self.api.job(job_id)
        if self.target.single:
            task_id = next(iter(self.tasks))
            fresh = [(await self.api.task(task_id))["task"]]
        else:
            fresh = await all_tasks(self.api, job_id)
        for task in fresh:
            if task["id"] in self.tasks:
                self.update_task(task)


async def follow_logs(
    api: ApiClient, target: LogTarget, as_json: bool, tail: int | None = None
) -> None:
    """Print the tasks' log lines, then new ones as they come, until they end.

    With ``tail``, only the last ``tail`` lines of each task come first.
    """
    follower = LogFollower(api, target, as_json)
    if tail is not None:
        await follower.print_tails(tail)
    async with EventFeed(api, target.job["id"]) as feed:
        # Lines logged after the stream opened come as events. Those logged
        # before come from catch_up, which the stream's first event (hello)
        # starts.
        while True:
            event = await feed.get(REFRESH_EVERY)
            kind, data = event or ("refresh", {})
            if kind == "log" and data["task_id"] in follower.tasks:
                follower.print_lines(data["task_id"], data["lines"])
            elif kind == "task" and data["id"] in follower.tasks:
                follower.update_task(data)
            elif kind == "job" and data["id"] == target.job["id"]:
                target.job = data
            elif kind == "job_deleted" and data["id"] == target.job["id"]:
                raise FarmError(f"job {target.job['id']} was deleted")
            elif kind in ("hello", "reset", "refresh"):
                await _reread_quietly(follower)
                await follower.catch_up()
            if follower.done():
                # The last lines may still be on their way as events.
                await follower.catch_up()
                return


async def _reread_quietly(follower: LogFollower) -> None:
    try:
        await follower.reread()
    except NodeUnreachable as exc:
        logger.info("cannot read the followed tasks again: %s", exc)


# Token and dashboard -----------------------------------------------------------


def _token(args: argparse.Namespace) -> int:
    from flamenco_p2p.farmkey import load_farm_key

    config = load_config(args.data_dir, args.config)
    # The token grants changes to the farm: it goes to stdout only, never to a log.
    token = load_farm_key(config.data_dir).api_token
    if args.json:
        print_json({"token": token})
    else:
        print(token)
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    target = api_target(args)
    _require_token(target)
    # The browser keeps the fragment to itself, so the token never reaches a
    # server log or a proxy.
    url = f"{target.url}/#token={target.token}"
    if args.json:
        print_json({"url": url})
    else:
        print(url)
    return 0


def _console(args: argparse.Namespace) -> int:
    from flamenco_p2p.console import run_console

    target = api_target(args)
    return run_console(target.url, target.token)


# Text for people ---------------------------------------------------------------

_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str, keep: str = "") -> str:
    """Return text with the characters that would move or recolour a terminal
    escaped: control characters, line separators and bidirectional overrides.

    Every other character, accents and dashes included, stays as it is.
    """
    return "".join(
        ch
        if ch in keep
        or (
            unicodedata.category(ch) not in ("Cc", "Zl", "Zp")
            and ch not in _BIDI_CONTROLS
        )
        else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def display_width(text: str) -> int:
    """Return how many terminal columns text takes: wide characters take two."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Return rows as lines of left-aligned columns, the headers first."""
    table = [list(headers), *[list(row) for row in rows]]
    widths = [max(display_width(row[i]) for row in table) for i in range(len(headers))]
    lines = []
    for row in table:
        cells = [
            cell + " " * (width - display_width(cell))
            for cell, width in zip(row, widths, strict=True)
        ]
        lines.append(("  " + "  ".join(cells)).rstrip())
    return lines


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
