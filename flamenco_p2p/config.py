"""Node configuration: a TOML file in the data directory, with defaults for all keys."""

from __future__ import annotations

import ipaddress
import logging
import os
import tomllib
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import platformdirs

from flamenco_p2p.errors import ConfigError

logger = logging.getLogger(__name__)

CONFIG_NAME = "flamenco-p2p.toml"
NODE_ID_NAME = "node-id"
DEFAULT_MANAGER_PORT = 7777
DEFAULT_SERVER_PORT = 9999
DEFAULT_NODE_PORT = 7776
DEFAULT_HTTP_PORT = 8888
KNOWN_GPU_TYPES = ("CUDA", "OPTIX", "HIP", "METAL", "ONEAPI")


@dataclass(frozen=True, slots=True)
class Timing:
    """Membership and election timing, in seconds."""

    heartbeat_interval: float = 0.5
    suspect_after: float = 1.5
    dead_after: float = 2.5
    settle_time: float = 1.5
    worker_silent_after: float = 45.0


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """Server rules for retrying and failing tasks and for blocklisting workers.

    The defaults are those of FarmStore.open.
    """

    task_fail_workers: int = 3
    max_attempts: int = 6
    retry_same_worker_after: float = 60.0
    blocklist_threshold: int = 3
    blocklist_forget_after: float = 600.0
    job_fail_ratio: float = 0.1


@dataclass(frozen=True, slots=True)
class RenderSettings:
    """Render settings of this node's worker."""

    backend: str = "bpy"
    python: str | None = None
    blender_path: str | None = None
    allow_scripts: bool = False


@dataclass(frozen=True, slots=True)
class CapabilityOverride:
    """Capabilities set by hand instead of probed (for tests and odd hardware)."""

    cpu_cores: int | None = None
    gpu_types: tuple[str, ...] | None = None
    blender_version: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything a node needs to run; see docs/configuration.md for each key."""

    data_dir: Path
    site: str = "default"
    bind_address: str = "127.0.0.1"
    mdns: bool = True
    mdns_interfaces: tuple[str, ...] = ()
    seeds: tuple[str, ...] = ()
    node_port: int = DEFAULT_NODE_PORT
    manager_port: int = DEFAULT_MANAGER_PORT
    server_port: int = DEFAULT_SERVER_PORT
    http_port: int = DEFAULT_HTTP_PORT
    can_manage: bool = True
    can_serve: bool = True
    priority: int = 50
    worker_slots: int = 1
    render: RenderSettings = field(default_factory=RenderSettings)
    capabilities: CapabilityOverride = field(default_factory=CapabilityOverride)
    timing: Timing = field(default_factory=Timing)
    failures: FailurePolicy = field(default_factory=FailurePolicy)

    @property
    def database_path(self) -> Path:
        """The SQLite file that holds the farm state while this node is the server."""
        return self.data_dir / "farm.sqlite"

    @property
    def blob_dir(self) -> Path:
        """The content-addressed store of job files."""
        return self.data_dir / "blobs"


def default_data_dir() -> Path:
    """Return the per-user data directory that platformdirs picks on this OS."""
    return Path(platformdirs.user_data_dir("flamenco-p2p", appauthor=False))


def load_config(data_dir: Path | None, config_file: Path | None = None) -> NodeConfig:
    """Read the TOML config of a data directory; a missing file means all defaults."""
    data_dir = (data_dir or default_data_dir()).expanduser().resolve()
    path = config_file or data_dir / CONFIG_NAME
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    elif config_file is not None:
        raise ConfigError(f"config file {path} not found; create it or drop --config")
    return config_from_dict(raw, data_dir, source=str(path))


def config_from_dict(raw: dict[str, Any], data_dir: Path, source: str) -> NodeConfig:
    """Build a validated NodeConfig from parsed TOML."""
    reader = _Reader(raw, source)
    reader.check_keys(raw, "", KNOWN_KEYS[""])
    for table_name, keys in KNOWN_KEYS.items():
        if table_name:
            reader.check_keys(reader.table(table_name), table_name, keys)
    ports = reader.table("ports")
    roles = reader.table("roles")
    worker = reader.table("worker")
    render = reader.table("render")
    caps = reader.table("capabilities")
    timing = reader.table("timing")
    failures = reader.table("failures")
    config = NodeConfig(
        data_dir=data_dir,
        site=reader.text(raw, "site", "default"),
        bind_address=_ipv4(reader.text(raw, "bind_address", "127.0.0.1"), source),
        mdns=reader.boolean(raw, "mdns", True),
        mdns_interfaces=tuple(reader.texts(raw, "mdns_interfaces")),
        seeds=tuple(reader.texts(raw, "seeds")),
        node_port=reader.port(ports, "node", DEFAULT_NODE_PORT),
        manager_port=reader.port(ports, "manager", DEFAULT_MANAGER_PORT),
        server_port=reader.port(ports, "server", DEFAULT_SERVER_PORT),
        http_port=reader.port(ports, "http", DEFAULT_HTTP_PORT),
        can_manage=reader.boolean(roles, "manager", True),
        can_serve=reader.boolean(roles, "server", True),
        priority=reader.integer(roles, "priority", 50, 0, 1000),
        worker_slots=reader.integer(worker, "slots", 1, 0, 64),
        render=RenderSettings(
            backend=reader.choice(render, "backend", "bpy", ("bpy", "blender")),
            python=reader.optional_text(render, "python"),
            blender_path=reader.optional_text(render, "blender_path"),
            allow_scripts=reader.boolean(render, "allow_scripts", False),
        ),
        capabilities=_capabilities(reader, caps),
        timing=_timing(reader, timing),
        failures=_failures(reader, failures),
    )
    _check_ports(config, source)
    return config


def _capabilities(reader: _Reader, caps: dict[str, Any]) -> CapabilityOverride:
    gpu_types: tuple[str, ...] | None = None
    if "gpu_types" in caps:
        gpu_types = tuple(t.upper() for t in reader.texts(caps, "gpu_types"))
        unknown = sorted(set(gpu_types) - set(KNOWN_GPU_TYPES))
        if unknown:
            raise ConfigError(
                f"{reader.source}: capabilities.gpu_types has unknown types {unknown};"
                f" use any of {', '.join(KNOWN_GPU_TYPES)}"
            )
    cores = (
        reader.integer(caps, "cpu_cores", 0, 0, 4096) if "cpu_cores" in caps else None
    )
    return CapabilityOverride(
        cpu_cores=cores,
        gpu_types=gpu_types,
        blender_version=reader.optional_text(caps, "blender_version"),
        tags=tuple(reader.texts(caps, "tags")),
    )


def _timing(reader: _Reader, table: dict[str, Any]) -> Timing:
    base = Timing()
    values = {
        name: reader.number(table, name, getattr(base, name), 0.01, 3600.0)
        for name in Timing.__dataclass_fields__
    }
    timing = Timing(**values)
    if not timing.heartbeat_interval < timing.suspect_after < timing.dead_after:
        raise ConfigError(
            f"{reader.source}: timing needs heartbeat_interval < suspect_after <"
            f" dead_after, got {timing.heartbeat_interval}, {timing.suspect_after},"
            f" {timing.dead_after}"
        )
    return timing


def _failures(reader: _Reader, table: dict[str, Any]) -> FailurePolicy:
    base = FailurePolicy()
    return FailurePolicy(
        task_fail_workers=reader.integer(
            table, "task_fail_workers", base.task_fail_workers, 1, 100
        ),
        max_attempts=reader.integer(table, "max_attempts", base.max_attempts, 1, 1000),
        retry_same_worker_after=reader.number(
            table, "retry_same_worker_after", base.retry_same_worker_after, 0, 86_400
        ),
        blocklist_threshold=reader.integer(
            table, "blocklist_threshold", base.blocklist_threshold, 1, 1000
        ),
        blocklist_forget_after=reader.number(
            table,
            "blocklist_forget_after",
            base.blocklist_forget_after,
            0,
            2_592_000,
        ),
        job_fail_ratio=reader.fraction(table, "job_fail_ratio", base.job_fail_ratio),
    )


def _check_ports(config: NodeConfig, source: str) -> None:
    numbers = (
        config.node_port,
        config.manager_port,
        config.server_port,
        config.http_port,
    )
    if len(set(numbers)) != len(numbers):
        raise ConfigError(
            f"{source}: ports.node, ports.manager, ports.server and ports.http must"
            f" differ, got {', '.join(str(n) for n in numbers)}"
        )


def _ipv4(text: str, source: str) -> str:
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError as exc:
        raise ConfigError(
            f"{source}: bind_address {text!r} is not an IPv4 address; use one of this"
            " machine's addresses, such as 192.168.1.20, or 127.0.0.1 for one machine"
        ) from exc
    if address.is_unspecified or address.is_multicast:
        raise ConfigError(
            f"{source}: bind_address {text!r} must be one interface's address, not a"
            " wildcard or multicast address"
        )
    return text


KNOWN_KEYS: dict[str, frozenset[str]] = {
    "": frozenset(
        {
            "site",
            "bind_address",
            "mdns",
            "mdns_interfaces",
            "seeds",
            "ports",
            "roles",
            "worker",
            "render",
            "capabilities",
            "timing",
            "failures",
        }
    ),
    "ports": frozenset({"node", "manager", "server", "http"}),
    "roles": frozenset({"manager", "server", "priority"}),
    "worker": frozenset({"slots"}),
    "render": frozenset({"backend", "python", "blender_path", "allow_scripts"}),
    "capabilities": frozenset({"cpu_cores", "gpu_types", "blender_version", "tags"}),
    "timing": frozenset(Timing.__dataclass_fields__),
    "failures": frozenset(FailurePolicy.__dataclass_fields__),
}


class _Reader:
    """Typed access to TOML values with errors that name the key and the file."""

    def __init__(self, raw: dict[str, Any], source: str) -> None:
        self.raw = raw
        self.source = source

    def check_keys(
        self, table: dict[str, Any], name: str, known: frozenset[str]
    ) -> None:
        unknown = sorted(set(table) - known)
        if not unknown:
            return
        where = f"[{name}]" if name else "the top level"
        hint = ""
        if not name and "farm" in unknown:
            hint = (
                "; the farm comes from the farm key now (`flamenco-p2p init` or `join`)"
            )
        raise ConfigError(
            f"{self.source}: unknown key {unknown[0]!r} in {where}; known keys are"
            f" {', '.join(sorted(known))}{hint}"
        )

    def table(self, name: str) -> dict[str, Any]:
        value = self.raw.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.source}: [{name}] must be a table")
        return value

    def _fail(self, key: str, value: object, expected: str) -> ConfigError:
        return ConfigError(
            f"{self.source}: {key} = {value!r} is invalid; expected {expected}"
        )

    def text(self, table: dict[str, Any], key: str, default: str) -> str:
        value = table.get(key, default)
        if not isinstance(value, str) or not value or len(value) > 200:
            raise self._fail(key, value, "a non-empty string of at most 200 characters")
        return value

    def optional_text(self, table: dict[str, Any], key: str) -> str | None:
        if key not in table:
            return None
        return self.text(table, key, "")

    def texts(self, table: dict[str, Any], key: str) -> list[str]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(key, value, "a list of strings")
        return list(value)

    def boolean(self, table: dict[str, Any], key: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, value, "true or false")
        return value

    def integer(
        self, table: dict[str, Any], key: str, default: int, low: int, high: int
    ) -> int:
        value = table.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not low <= value <= high
        ):
            raise self._fail(key, value, f"an integer from {low} to {high}")
        return value

    def number(
        self, table: dict[str, Any], key: str, default: float, low: float, high: float
    ) -> float:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, value, "a number of seconds")
        if not low <= float(value) <= high:
            raise self._fail(key, value, f"a number from {low} to {high}")
        return float(value)

    def fraction(self, table: dict[str, Any], key: str, default: float) -> float:
        value = table.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= 1
        ):
            raise self._fail(key, value, "a number from 0 to 1, such as 0.1 for 10 %")
        return float(value)

    def port(self, table: dict[str, Any], key: str, default: int) -> int:
        return self.integer(table, key, default, 1, 65535)

    def choice(
        self, table: dict[str, Any], key: str, default: str, options: tuple[str, ...]
    ) -> str:
        value = table.get(key, default)
        if value not in options:
            raise self._fail(key, value, f"one of {', '.join(options)}")
        return str(value)


def load_node_id(data_dir: Path) -> str:
    """Return the node id stored in the data directory, creating it on first run."""
    path = data_dir / NODE_ID_NAME
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read node id file {path}: {exc}") from exc
    if _is_node_id(text):
        return text
    if text:
        raise ConfigError(
            f"node id file {path} contains {text[:40]!r}, not 32 hex digits; delete"
            " it to get a new id"
        )
    node_id = uuid.uuid4().hex
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(node_id + "\n", encoding="ascii")
    os.replace(tmp, path)
    logger.info("created node id %s in %s", node_id, path)
    return node_id


def _is_node_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def with_overrides(config: NodeConfig, **changes: Any) -> NodeConfig:
    """Return a copy of the config with some fields replaced (command-line options)."""
    return replace(config, **changes)
