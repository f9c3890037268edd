"""``flamenco-p2p run``: logging, capability probing, and the node's lifetime."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import zmq

from flamenco_p2p.config import CONFIG_NAME, NodeConfig, load_node_id
from flamenco_p2p.errors import ConfigError
from flamenco_p2p.farmkey import load_farm_key

logger = logging.getLogger("flamenco_p2p.daemon")

LOCK_NAME = "node.lock"
LOG_FORMAT = "%(asctime)s %(levelname)-7s node=%(node)s %(name)s: %(message)s"


class NodeNameFilter(logging.Filter):
    """Adds the short node id to every record, so merged logs show which node
    wrote each line."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node = node_id[:8]

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        return True


def setup_logging(node_id: str, level: str, log_file: Path | None) -> None:
    """Send log records to stderr (and a file), each naming this node."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigError(
            f"invalid --log-level {level!r}; use DEBUG, INFO, WARNING or ERROR"
        )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    name_filter = NodeNameFilter(node_id)
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.addFilter(name_filter)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(numeric)
    # Library chatter at DEBUG would drown the farm's own records.
    for name in ("zeroconf", "asyncio", "aiosqlite"):
        logging.getLogger(name).setLevel(max(numeric, logging.INFO))


async def node_capabilities(config: NodeConfig) -> dict[str, Any]:
    """Probe what this node's worker can do, then apply the config's overrides."""
    caps: dict[str, Any] = {
        "cpu_cores": _cpu_cores(),
        "gpu_types": [],
        "blender_version": None,
        "tags": list(config.capabilities.tags),
    }
    override = config.capabilities
    needs_probe = config.worker_slots > 0 and (
        override.gpu_types is None or override.blender_version is None
    )
    if needs_probe:
        caps.update(await _probe(config))
    if override.cpu_cores is not None:
        caps["cpu_cores"] = override.cpu_cores
    if override.gpu_types is not None:
        caps["gpu_types"] = list(override.gpu_types)
    if override.blender_version is not None:
        caps["blender_version"] = override.blender_version
    return caps


async def _probe(config: NodeConfig) -> dict[str, Any]:
    from flamenco_p2p.errors import RenderError
    from flamenco_p2p.render.capabilities import probe_capabilities
    from flamenco_p2p.render.controller import RenderBackend

    render = config.render
    backend = RenderBackend(
        kind=render.backend,
        python=render.python or sys.executable,
        blender_path=render.blender_path,
        allow_scripts=render.allow_scripts,
    )
    try:
        found = await asyncio.to_thread(probe_capabilities, backend)
    except (RenderError, OSError) as exc:
        logger.warning("capability probe failed, advertising CPU only: %s", exc)
        return {}
    return {
        "cpu_cores": found.cpu_cores,
        "gpu_types": list(found.gpu_types),
        "blender_version": found.blender_version,
    }


def _cpu_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


async def run_daemon(config: NodeConfig, log_level: str, log_file: Path | None) -> int:
    """Run a node until SIGINT or SIGTERM; returns the exit status."""
    node_id = load_node_id(config.data_dir)
    # Fail before the slow capability probe when this node has no farm yet.
    load_farm_key(config.data_dir)
    lock_fd = lock_data_dir(config.data_dir)
    try:
        check_render_settings(config)
        setup_logging(node_id, log_level, log_file)
        return await _serve(config)
    finally:
        os.close(lock_fd)


async def _serve(config: NodeConfig) -> int:
    from flamenco_p2p.node import Node

    stop = asyncio.Event()
    received: list[str] = []
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, _on_signal, stop, received, number)
    caps = await node_capabilities(config)
    logger.info("capabilities: %s", caps)
    node = Node(config, caps)
    try:
        await node.start()
    except (OSError, zmq.ZMQError) as exc:
        logger.error("cannot start: %s; %s", exc, _bind_hint(exc, config))
        await node.stop("start failed")
        return 1
    await stop.wait()
    await node.stop(f"received {received[0]}" if received else "stop requested")
    return 0


def lock_data_dir(data_dir: Path) -> int:
    """Take the data directory's lock for this process's lifetime; returns its fd.

    Two nodes on one data directory would share one node id and one database.
    """
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise ConfigError(
            f"another node (pid {owner}) is running with data directory {data_dir};"
            " stop it first, or give this one its own --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def check_render_settings(config: NodeConfig) -> None:
    """Reject a render backend that cannot start, before the node joins the farm."""
    render = config.render
    if config.worker_slots == 0 or render.backend != "blender":
        return
    if not render.blender_path:
        raise ConfigError(
            f'{config.data_dir / CONFIG_NAME}: render.backend = "blender" needs'
            " render.blender_path, the path of the Blender executable"
        )
    if not os.access(render.blender_path, os.X_OK):
        raise ConfigError(
            f"{config.data_dir / CONFIG_NAME}: render.blender_path"
            f" {render.blender_path!r} is not an executable file; install Blender"
            " there or fix the path"
        )


def _bind_hint(exc: Exception, config: NodeConfig) -> str:
    if getattr(exc, "errno", None) == errno.EADDRNOTAVAIL:
        return (
            f"bind_address {config.bind_address} is not an address of this machine;"
            " set it to one that `ip address` lists"
        )
    return (
        f"is another node (or program) using {config.bind_address}:"
        f"{config.node_port}? Give each node its own address or ports"
    )


def _on_signal(stop: asyncio.Event, received: list[str], number: int) -> None:
    name = signal.Signals(number).name
    if stop.is_set():
        logger.warning("received %s again while stopping", name)
        return
    received.append(name)
    stop.set()
