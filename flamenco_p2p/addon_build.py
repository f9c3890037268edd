"""Build the Blender extension zip of the submit add-on, with its wheels.

The add-on's ``blender_manifest.toml`` lists the wheels it bundles by file name.
Each wheel is taken from a local folder (``--wheels``) or downloaded once with
``pip download`` into the user cache folder and checked against the SHA-256
pinned here, so later builds and tests work offline.
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from flamenco_p2p.errors import ConfigError

logger = logging.getLogger(__name__)

ADDON_SOURCE = Path(__file__).resolve().parent.parent / "addon" / "flamenco_p2p_submit"
MANIFEST_NAME = "blender_manifest.toml"
PYTHON_VERSION = "3.11"
"""The Python of Blender 4.2 to 5.0, which the platform wheels are built for."""

# The wheels the manifest may list, with their SHA-256 as PyPI serves them.
WHEEL_SHA256 = {
    "blender_asset_tracer-1.23-py3-none-any.whl": (
        "dd176f58ceac43621d7ae1e539604e9859b102cbb6b5106b666953f8b3683998"
    ),
    "ifaddr-0.2.0-py3-none-any.whl": (
        "085e0305cfe6f16ab12d72e2024030f5d52674afad6911bb1eee207177b8a748"
    ),
    "zeroconf-0.148.0-cp311-cp311-macosx_10_9_x86_64.whl": (
        "b923e26369e302863aa5370eff4d4d72a0b90ba85d3b9f608c62cbab78f14dc2"
    ),
    "zeroconf-0.148.0-cp311-cp311-macosx_11_0_arm64.whl": (
        "0cbffd751877b74cd64c529061e5a524ebfa59af16930330548033e307701fee"
    ),
    "zeroconf-0.148.0-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64"
    ".manylinux_2_28_x86_64.whl": (
        "b8aa15461e35169b4ec25cc45ec82750023e6c2e96ebc099a014caaf544316f7"
    ),
    "zeroconf-0.148.0-cp311-cp311-win_amd64.whl": (
        "7339a485403c75aa4f3c38ddcb68eb14f01fd5e1dc1ef75b068b185e703ea7ea"
    ),
}

# name-version-python-abi-platform.whl (PEP 427, without a build tag).
_WHEEL_NAME = re.compile(
    r"(?P<name>[^-]+)-(?P<version>[^-]+)-(?P<python>[^-]+)-(?P<abi>[^-]+)"
    r"-(?P<platform>[^-]+)\.whl"
)
_SKIPPED_PARTS = {"__pycache__"}


@dataclass(frozen=True, slots=True)
class Wheel:
    """One wheel named in the manifest."""

    file_name: str
    project: str
    version: str
    abi: str
    platform: str

    @classmethod
    def parse(cls, file_name: str) -> Wheel:
        """Split a wheel file name into its parts; raises ConfigError."""
        match = _WHEEL_NAME.fullmatch(file_name)
        if match is None:
            raise ConfigError(f"{file_name!r} in {MANIFEST_NAME} is not a wheel name")
        return cls(
            file_name,
            match["name"].replace("_", "-"),
            match["version"],
            match["abi"],
            match["platform"],
        )

    def pip_download_args(self) -> list[str]:
        """Return the pip arguments that fetch exactly this wheel."""
        args = [
            f"{self.project}=={self.version}",
            "--only-binary=:all:",
            "--no-deps",
            "--python-version",
            PYTHON_VERSION,
        ]
        if self.platform != "any":
            # The first of a compressed tag set is enough for pip to match it.
            args += ["--implementation", "cp", "--abi", self.abi]
            args += ["--platform", self.platform.split(".")[0]]
        return args


def default_wheel_cache() -> Path:
    """Return the folder that keeps downloaded wheels between builds."""
    return Path(platformdirs.user_cache_dir("flamenco-p2p")) / "addon-wheels"


def read_manifest(source: Path = ADDON_SOURCE) -> dict[str, object]:
    """Read the add-on's manifest; raises ConfigError naming the file."""
    path = source / MANIFEST_NAME
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no add-on source at {source}; run the command from a clone of the"
            " flamenco-p2p repository"
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def manifest_wheels(manifest: Mapping[str, object]) -> list[Wheel]:
    """Return the wheels the manifest lists, each with a pinned hash."""
    listed = manifest.get("wheels", [])
    if not isinstance(listed, list):
        raise ConfigError(f"wheels in {MANIFEST_NAME} must be a list of paths")
    wheels = []
    for entry in listed:
        name = str(entry).removeprefix("./wheels/")
        if name not in WHEEL_SHA256:
            raise ConfigError(
                f"{MANIFEST_NAME} lists {entry!r}, which has no pinned SHA-256 in"
                " flamenco_p2p/addon_build.py; add its hash there"
            )
        wheels.append(Wheel.parse(name))
    return wheels


def collect_wheels(
    wheels: list[Wheel], wheel_dir: Path | None, cache: Path | None = None
) -> dict[str, Path]:
    """Find every wheel locally or download it into the cache.

    With wheel_dir, nothing is downloaded. Raises ConfigError naming each wheel
    that is missing or damaged, with the fix.
    """
    if wheel_dir is not None and not wheel_dir.is_dir():
        raise ConfigError(
            f"the wheel folder {wheel_dir} does not exist; give the folder that"
            " contains the wheels listed in the add-on's blender_manifest.toml"
        )
    folder = wheel_dir if wheel_dir is not None else cache or default_wheel_cache()
    folder.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    failures: list[str] = []
    for wheel in wheels:
        path = folder / wheel.file_name
        if _verified(path):
            found[wheel.file_name] = path
            continue
        if wheel_dir is not None:
            failures.append(f"{wheel.file_name}: missing or damaged in {folder}")
            continue
        failure = _download(wheel, folder)
        if failure is None and _verified(path):
            found[wheel.file_name] = path
            continue
        failures.append(
            failure or f"{wheel.file_name}: the download does not match its SHA-256"
        )
    if failures:
        fix = (
            f"put these wheels into {folder} (pip download {PYTHON_VERSION} wheels on"
            " a machine with internet access)"
            if wheel_dir is not None
            else "check the internet connection or proxy settings, or download"
            " the wheels elsewhere and pass their folder with --wheels DIR"
        )
        raise ConfigError(
            "cannot get the add-on's wheels: " + "; ".join(failures) + f". {fix}"
        )
    return found


def _verified(path: Path) -> bool:
    if not path.is_file():
        return False
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256[path.name]:
        logger.warning("wheel %s has SHA-256 %s, not the pinned one", path, digest)
        return False
    return True


def _download(wheel: Wheel, folder: Path) -> str | None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--dest",
        str(folder),
    ]
    command += wheel.pip_download_args()
    logger.info("downloading %s", wheel.file_name)
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{wheel.file_name}: pip download failed ({exc})"
    if completed.returncode != 0:
        errors = [line for line in completed.stderr.splitlines() if "ERROR" in line]
        detail = errors[-1] if errors else completed.stderr.strip()[-300:]
        return f"{wheel.file_name}: pip download failed ({detail})"
    return None


def fetch_wheels(source: Path = ADDON_SOURCE) -> dict[str, Path]:
    """Download the manifest's wheels into the user cache; raises ConfigError."""
    return collect_wheels(manifest_wheels(read_manifest(source)), None)


def build_addon(
    output: Path | None = None,
    wheel_dir: Path | None = None,
    source: Path = ADDON_SOURCE,
    cache: Path | None = None,
) -> Path:
    """Write the extension zip and return its path; raises ConfigError."""
    manifest = read_manifest(source)
    wheels = collect_wheels(manifest_wheels(manifest), wheel_dir, cache)
    target = output or Path(f"{manifest['id']}-{manifest['version']}.zip")
    if target.is_dir():
        target = target / f"{manifest['id']}-{manifest['version']}.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source)
            wanted = path.suffix in (".py", ".toml") and path.is_file()
            if wanted and not _SKIPPED_PARTS & set(relative.parts):
                archive.write(path, relative.as_posix())
        for name, path in sorted(wheels.items()):
            archive.write(path, f"wheels/{name}")
    partial.replace(target)
    logger.debug("wrote the add-on to %s with %d wheels", target, len(wheels))
    return target
