"""Three daemons on three hosts of a test LAN (network namespaces and a bridge),
finding each other by real mDNS with no seeds, and rendering a real blend file."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from farm import FAST_TIMING
from netns import NetnsLab, netns_available

from flamenco_p2p.demo import create_farm, node_argv
from flamenco_p2p.render.demo_scene import make_demo_scene
from flamenco_p2p.render.validate import validate_output

reason = netns_available()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.render,
    pytest.mark.slow,
    pytest.mark.skipif(reason is not None, reason=reason or ""),
]


def cli(
    lab: NetnsLab, index: int, data_dir: Path, *args: str, timeout: float = 60
) -> Any:
    argv = [sys.executable, "-m", "flamenco_p2p", *args, "--data-dir", str(data_dir)]
    return lab.run(index, argv, timeout=timeout)


def status(lab: NetnsLab, index: int, data_dir: Path) -> dict[str, Any] | None:
    result = cli(lab, index, data_dir, "status", "--json", timeout=30)
    if result.returncode != 0:
        return None
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_system_three_hosts_elect_and_render(tmp_path: Path) -> None:
    blend = tmp_path / "shot.blend"
    make_demo_scene(blend, frames=6)
    output = tmp_path / "frames"
    with NetnsLab(3) as lab:
        dirs = []
        for index, node in enumerate(lab.nodes):
            data_dir = tmp_path / f"node{index}"
            data_dir.mkdir()
            (data_dir / "flamenco-p2p.toml").write_text(
                f'site = "lab"\nbind_address = "{node.address}"\n'
                f'mdns_interfaces = ["{node.address}"]\n{FAST_TIMING}',
                encoding="utf-8",
            )
            dirs.append(data_dir)
        create_farm(dirs, "system")
        for index, data_dir in enumerate(dirs):
            lab.popen(index, node_argv(data_dir))
        views = _wait_for_roles(lab, dirs)
        roles = [(v["farm"]["server"], v["farm"]["managers"]) for v in views]
        assert roles[0] == roles[1] == roles[2]
        holders = {r["role"]: r for n in views[0]["nodes"] for r in n["roles"]}
        assert set(holders) == {"server", "manager:lab"}
        for view in views:
            held = [r for n in view["nodes"] for r in n["roles"]]
            assert len(held) == 2, view
        submitted = cli(
            lab,
            1,
            dirs[1],
            "submit",
            str(blend),
            "--frames",
            "1-6",
            "--output",
            str(output / "shot_####"),
            timeout=300,
        )
        logs = "\n".join((d / "node.log").read_text() for d in dirs)
        assert submitted.returncode == 0, submitted.stderr + logs[-5000:]
    names = sorted(p.name for p in output.iterdir())
    assert names == [f"shot_{f:04d}.png" for f in range(1, 7)]
    assert len({validate_output(str(output / n)).sha256 for n in names}) == 6


def _wait_for_roles(lab: NetnsLab, dirs: list[Path]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        views = [status(lab, i, d) for i, d in enumerate(dirs)]
        if all(v is not None for v in views):
            complete = [
                v
                for v in views
                if v is not None
                and [n["state"] for n in v["nodes"]].count("alive") == 3
                and v["farm"]["server"]
                and any(m["site"] == "lab" for m in v["farm"]["managers"])
            ]
            if len(complete) == 3:
                return complete
        time.sleep(0.5)
    logs = "\n".join(
        (d / "node.log").read_text()[-3000:] for d in dirs if (d / "node.log").exists()
    )
    raise AssertionError(f"no election across namespaces within 60 s\n{logs}")
