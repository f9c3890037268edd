"""Helpers shared by the benchmarks: loopback addresses, statistics, machine facts."""

from __future__ import annotations

import ipaddress
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

NO_PROBE_TOML = '[capabilities]\ngpu_types = []\nblender_version = "5.0.1"\n'
"""Capabilities given in the config, so a node skips the bpy probe at start-up."""

FAST_TIMING = {
    "heartbeat_interval": 0.2,
    "suspect_after": 1.0,
    "dead_after": 2.0,
    "settle_time": 0.8,
    "worker_silent_after": 2.0,
}
"""The [timing] values of the test farms; a lone node elects itself in about 1 s."""


def loopback_address(text: str) -> str:
    """Return text if it is an IPv4 loopback address; raise ValueError otherwise.

    The benchmarks bind and connect only to the address this returns, so a typo
    cannot send traffic off the machine.
    """
    address = ipaddress.IPv4Address(text)
    if not address.is_loopback:
        raise ValueError(f"address {text} is not in 127.0.0.0/8; give a loopback one")
    return text


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values: Sequence[float]) -> float:
    """Return the median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


def machine_lines() -> list[str]:
    """Describe the machine and the software versions, one fact per line."""
    lines = [
        f"date: {_run(['date', '-u', '+%Y-%m-%d %H:%M UTC'])}",
        f"cpu: {_cpu_model()}, nproc {os.cpu_count()}",
        f"memory: {_memory_total()}",
        f"load average (1, 5, 15 min): {' '.join(_load_average())}",
        f"kernel: {platform.release()}",
        f"python: {sys.version.split()[0]}",
        f"pyzmq: {_version('pyzmq')} (libzmq {_libzmq_version()})",
        f"aiosqlite: {_version('aiosqlite')}",
        f"bpy: {_version('bpy')}",
    ]
    return lines


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])
                return f"{kib / 1024 / 1024:.1f} GiB total"
    except (OSError, ValueError):
        pass
    return "unknown"


def _load_average() -> list[str]:
    try:
        return [f"{value:.2f}" for value in os.getloadavg()]
    except OSError:
        return ["unknown"]


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _libzmq_version() -> str:
    import zmq

    return str(zmq.zmq_version())
