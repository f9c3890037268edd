"""The README's demo command, run as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from flamenco_p2p.render.validate import validate_output

pytestmark = [pytest.mark.render, pytest.mark.slow]


def test_demo_renders_on_three_nodes(tmp_path: Path) -> None:
    output = tmp_path / "frames"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flamenco_p2p",
            "demo",
            "--output",
            str(output),
            "--work-dir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    names = sorted(p.name for p in output.iterdir())
    assert names == [f"frame_{f:04d}.png" for f in range(1, 13)]
    hashes = {validate_output(str(output / name)).sha256 for name in names}
    assert len(hashes) == 12
    rendered = re.findall(r"rendered frames ([\d, ]+)", result.stdout)
    assert len(rendered) == 3, result.stdout
    frames = sorted(int(f) for line in rendered for f in line.split(", "))
    assert frames == list(range(1, 13))
    assert re.search(r"wall time \d+\.\d s", result.stdout)
    assert "server (epoch" in result.stdout
    assert "manager:demo (epoch" in result.stdout
