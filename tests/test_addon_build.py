"""`flamenco-p2p addon build`: the extension zip, its wheels and offline errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from flamenco_p2p.addon_build import (
    ADDON_SOURCE,
    WHEEL_SHA256,
    Wheel,
    build_addon,
    default_wheel_cache,
    fetch_wheels,
    manifest_wheels,
    read_manifest,
)
from flamenco_p2p.errors import ConfigError


@pytest.fixture(scope="module")
def cached_wheels() -> Path:
    """The wheel cache, filled from PyPI on the first run only."""
    fetch_wheels()
    return default_wheel_cache()


def test_build_writes_extension_zip(cached_wheels: Path, tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    for name in WHEEL_SHA256:
        shutil.copy(cached_wheels / name, wheel_dir / name)
    target = build_addon(tmp_path / "out.zip", wheel_dir)
    with zipfile.ZipFile(target) as archive:
        names = set(archive.namelist())
        manifest = tomllib.loads(archive.read("blender_manifest.toml").decode())
    assert "__init__.py" in names
    assert "operators.py" in names
    assert not [name for name in names if "__pycache__" in name]
    for entry in manifest["wheels"]:
        assert entry.removeprefix("./") in names, entry
    sources = {path.name for path in ADDON_SOURCE.glob("*.py")}
    assert sources <= names


def test_build_offline_names_missing_wheels(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    (wheel_dir / "ifaddr-0.2.0-py3-none-any.whl").write_bytes(b"not the wheel")
    with pytest.raises(ConfigError) as caught:
        build_addon(tmp_path / "out.zip", wheel_dir)
    message = str(caught.value)
    for name in WHEEL_SHA256:
        assert name in message
    assert str(wheel_dir) in message
    assert "pip download" in message
    assert not (tmp_path / "out.zip").exists()


def test_wheel_download_arguments() -> None:
    linux = Wheel.parse(
        "zeroconf-0.148.0-cp311-cp311-manylinux2014_x86_64"
        ".manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl"
    )
    assert linux.project == "zeroconf"
    args = linux.pip_download_args()
    assert args[0] == "zeroconf==0.148.0"
    assert args[args.index("--platform") + 1] == "manylinux2014_x86_64"
    assert args[args.index("--abi") + 1] == "cp311"
    pure = Wheel.parse("blender_asset_tracer-1.23-py3-none-any.whl")
    assert pure.pip_download_args()[0] == "blender-asset-tracer==1.23"
    assert "--platform" not in pure.pip_download_args()
    with pytest.raises(ConfigError, match="not a wheel name"):
        Wheel.parse("zeroconf.tar.gz")


def test_manifest_wheels_need_pinned_hash(tmp_path: Path) -> None:
    manifest = {"wheels": ["./wheels/requests-2.0-py3-none-any.whl"]}
    with pytest.raises(ConfigError, match="no pinned SHA-256"):
        manifest_wheels(manifest)
    assert len(manifest_wheels(read_manifest())) == len(WHEEL_SHA256)


def test_cli_addon_build(cached_wheels: Path, tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "flamenco_p2p",
            "addon",
            "build",
            "--output",
            f"{tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    built = list(tmp_path.glob("flamenco_p2p_submit-*.zip"))
    assert len(built) == 1, completed.stdout
    assert str(built[0]) in completed.stdout
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "flamenco_p2p",
            "addon",
            "build",
            "--wheels",
            str(tmp_path / "none"),
            "--output",
            str(tmp_path / "x.zip"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert missing.returncode == 1
    assert "wheel folder" in missing.stderr
    assert "does not exist" in missing.stderr
