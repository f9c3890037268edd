"""Config files, node ids and their error messages."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from flamenco_p2p.config import CONFIG_NAME, FailurePolicy, load_config, load_node_id
from flamenco_p2p.errors import ConfigError
from flamenco_p2p.store import FarmStore


def write(data_dir: Path, text: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / CONFIG_NAME).write_text(text, encoding="utf-8")


def test_config_defaults_without_file(tmp_path: Path) -> None:
    config = load_config(tmp_path)
    assert config.manager_port == 7777
    assert config.server_port == 9999
    assert config.worker_slots == 1
    assert config.render.allow_scripts is False
    assert config.data_dir == tmp_path.resolve()


def test_config_reads_every_section(tmp_path: Path) -> None:
    write(
        tmp_path,
        'site = "office"\nbind_address = "127.0.0.5"\n'
        'seeds = ["10.0.0.2:7776"]\n[ports]\nmanager = 17777\nserver = 19999\n'
        "[roles]\nserver = false\npriority = 90\n[worker]\nslots = 3\n"
        '[render]\nbackend = "blender"\nblender_path = "/opt/blender/blender"\n'
        'allow_scripts = true\n[capabilities]\ngpu_types = ["cuda"]\n'
        "[timing]\ndead_after = 9\n",
    )
    config = load_config(tmp_path)
    assert config.site == "office"
    assert config.seeds == ("10.0.0.2:7776",)
    assert config.manager_port == 17777
    assert config.can_serve is False
    assert config.priority == 90
    assert config.worker_slots == 3
    assert config.render.backend == "blender"
    assert config.render.allow_scripts is True
    assert config.capabilities.gpu_types == ("CUDA",)
    assert config.timing.dead_after == 9.0


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("site = 3\n", "site"),
        ('farm = "old"\n', "farm key"),
        ("[worker]\nslot = 2\n", "'slot'"),
        ('bind_address = "0.0.0.0"\n', "bind_address"),
        ('bind_address = "my-laptop"\n', "bind_address"),
        ("[ports]\nmanager = 70000\n", "manager"),
        ("[ports]\nmanager = 9999\n", "ports.manager"),
        ("[worker]\nslots = -1\n", "slots"),
        ('[render]\nbackend = "cinema4d"\n', "backend"),
        ('[capabilities]\ngpu_types = ["VOODOO"]\n', "VOODOO"),
        ("[timing]\nsuspect_after = 10\n", "suspect_after"),
        ("failures = 3\n", "[failures]"),
        ("[failures]\nmax_atempts = 4\n", "'max_atempts'"),
        ("[failures]\nmax_attempts = 0\n", "max_attempts"),
        ("[failures]\ntask_fail_workers = true\n", "task_fail_workers"),
        ("[failures]\nblocklist_threshold = 2.5\n", "blocklist_threshold"),
        ("[failures]\nretry_same_worker_after = -1\n", "retry_same_worker_after"),
        ('[failures]\nblocklist_forget_after = "10m"\n', "blocklist_forget_after"),
        ("[failures]\njob_fail_ratio = 1.5\n", "job_fail_ratio"),
        ("[failures]\njob_fail_ratio = nan\n", "job_fail_ratio"),
        ("farm = \n", "cannot read"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert named in str(caught.value)


def test_config_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path, tmp_path / "nope.toml")


def test_node_id_created_once(tmp_path: Path) -> None:
    first = load_node_id(tmp_path)
    second = load_node_id(tmp_path)
    assert first == second
    assert len(first) == 32
    assert (tmp_path / "node-id").read_text().strip() == first


def test_node_id_corrupt_file_rejected(tmp_path: Path) -> None:
    (tmp_path / "node-id").write_text("hello\n")
    with pytest.raises(ConfigError, match="delete it"):
        load_node_id(tmp_path)


def test_config_reads_failures(tmp_path: Path) -> None:
    write(
        tmp_path,
        "[failures]\ntask_fail_workers = 2\nmax_attempts = 4\n"
        "retry_same_worker_after = 30\nblocklist_threshold = 5\n"
        "blocklist_forget_after = 120.5\njob_fail_ratio = 0.25\n",
    )
    failures = load_config(tmp_path).failures
    assert failures.task_fail_workers == 2
    assert failures.max_attempts == 4
    assert failures.retry_same_worker_after == 30.0
    assert failures.blocklist_threshold == 5
    assert failures.blocklist_forget_after == 120.5
    assert failures.job_fail_ratio == 0.25


def test_config_failures_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path).failures == FailurePolicy()


def test_failure_defaults_match_store() -> None:
    parameters = inspect.signature(FarmStore.open).parameters
    for name in FailurePolicy.__dataclass_fields__:
        assert getattr(FailurePolicy(), name) == parameters[name].default, name


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("[failures]\njob_fail_ratio = 1.5\n", ("1.5", "from 0 to 1")),
        ("[failures]\nmax_attempts = 0\n", ("0", "integer from 1 to 1000")),
        (
            "[failures]\nretry_same_worker_after = -1\n",
            ("-1", "number from 0 to 86400"),
        ),
    ],
)
def test_config_failures_error_shows_fix(
    tmp_path: Path, text: str, parts: tuple[str, ...]
) -> None:
    write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    for part in parts:
        assert part in str(caught.value)
