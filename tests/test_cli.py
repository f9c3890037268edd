"""The flamenco-p2p command line, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from farm import LocalFarm

from flamenco_p2p.render.demo_scene import make_demo_scene

CLI = [sys.executable, "-m", "flamenco_p2p"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_cli_help_lists_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("run", "submit", "status", "cancel", "demo"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("spec", "quoted"),
    [
        ("", "''"),
        ("1-", "'1-'"),
        ("a-b", "'a-b'"),
        ("1-10x0", "'1-10x0'"),
        ("--5", "'--5'"),
    ],
)
def test_cli_submit_bad_frames_quotes_part(
    tmp_path: Path, spec: str, quoted: str
) -> None:
    blend = tmp_path / "a.blend"
    blend.write_bytes(b"BLENDER-v300")
    result = run(
        "submit",
        str(blend),
        f"--frames={spec}",
        "--output",
        str(tmp_path / "out/"),
        "--data-dir",
        str(tmp_path / "node"),
    )
    assert result.returncode == 1
    assert quoted in result.stderr
    assert "frame" in result.stderr


def test_cli_submit_missing_file(tmp_path: Path) -> None:
    result = run(
        "submit",
        str(tmp_path / "nope.blend"),
        "--frames",
        "1",
        "--output",
        str(tmp_path),
        "--data-dir",
        str(tmp_path / "node"),
    )
    assert result.returncode == 1
    assert "nope.blend" in result.stderr
    assert "not found" in result.stderr


def test_cli_submit_warns_about_template(tmp_path: Path) -> None:
    blend = tmp_path / "a.blend"
    blend.write_bytes(b"BLENDER-v300")
    result = run(
        "submit",
        str(blend),
        "--frames",
        "1-12000",
        "--output",
        str(tmp_path / "out" / "shot_"),
        "--data-dir",
        str(tmp_path / "node"),
        timeout=90,
    )
    assert "warning:" in result.stderr
    assert "shot_" in result.stderr
    assert "#" in result.stderr


def test_cli_status_without_node_says_how(tmp_path: Path) -> None:
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "flamenco-p2p.toml").write_text(
        'bind_address = "127.103.0.9"\n'
    )
    result = run("status", "--data-dir", str(tmp_path / "node"), timeout=90)
    assert result.returncode == 1
    assert "flamenco-p2p init" in result.stderr
    assert run("init", "--data-dir", str(tmp_path / "node")).returncode == 0
    result = run("status", "--data-dir", str(tmp_path / "node"), timeout=90)
    assert result.returncode == 1
    assert "flamenco-p2p run" in result.stderr


def test_cli_invite_join_round_trip(tmp_path: Path) -> None:
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    created = run("init", "--farm", "Studio B", "--data-dir", first)
    assert created.returncode == 0
    assert "Studio B" in created.stdout
    code = run("invite", "--data-dir", first).stdout.strip()
    assert code.startswith("fp1-")
    joined = run("join", code, "--data-dir", second)
    assert joined.returncode == 0, joined.stderr
    key_a = (tmp_path / "a" / "farm.key").read_text()
    key_b = (tmp_path / "b" / "farm.key").read_text()
    assert key_a == key_b
    assert (tmp_path / "b" / "farm.key").stat().st_mode & 0o777 == 0o600
    again = run("init", "--data-dir", second)
    assert again.returncode == 1
    assert "--force" in again.stderr
    changed = "b" if code[-1] == "a" else "a"
    typo = run("join", code[:-1] + changed, "--data-dir", str(tmp_path / "c"))
    assert typo.returncode == 1
    assert "copy it again" in typo.stderr


@pytest.mark.render
@pytest.mark.slow
async def test_cli_submit_and_status_on_farm(tmp_path: Path) -> None:
    blend = tmp_path / "shot.blend"
    make_demo_scene(blend, frames=3)
    with LocalFarm(tmp_path / "farm", 2) as farm:
        await farm.wait_for_roles()
        data_dir = str(farm.nodes[1].data_dir)
        submitted = run(
            "submit",
            str(blend),
            "--frames",
            "1-3",
            "--chunk",
            "2",
            "--output",
            str(tmp_path / "out" / "shot_#"),
            "--data-dir",
            data_dir,
            timeout=240,
        )
        assert submitted.returncode == 0, submitted.stderr + farm.logs()
        job_id = submitted.stdout.strip()
        assert len(job_id) == 32
        assert "3/3 frames" in submitted.stderr
        assert "completed" in submitted.stderr
        status = run("status", "--data-dir", data_dir)
    assert status.returncode == 0, status.stderr
    assert "server (epoch" in status.stdout
    assert "manager:lab (epoch" in status.stdout
    assert "blender 5.0.1" in status.stdout
    assert job_id in status.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "shot_1.png",
        "shot_2.png",
        "shot_3.png",
    ]


def test_cli_submit_warns_about_non_blend(tmp_path: Path) -> None:
    text = tmp_path / "x.blend"
    text.write_text("not a blend file\n")
    result = run(
        "submit",
        str(text),
        "--frames",
        "1",
        "--output",
        str(tmp_path / "out/"),
        "--data-dir",
        str(tmp_path / "node"),
    )
    assert "does not start like a blend file" in result.stderr
    folder = run(
        "submit",
        str(tmp_path),
        "--frames",
        "1",
        "--output",
        str(tmp_path / "out/"),
        "--data-dir",
        str(tmp_path / "node"),
    )
    assert folder.returncode == 1
    assert "is a folder" in folder.stderr


def test_cli_run_rejects_missing_blender(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    assert run("init", "--data-dir", str(data_dir)).returncode == 0
    (data_dir / "flamenco-p2p.toml").write_text(
        '[render]\nbackend = "blender"\nblender_path = "/nope/blender"\n'
    )
    result = run("run", "--data-dir", str(data_dir))
    assert result.returncode == 1
    assert "/nope/blender" in result.stderr
    assert "not an executable" in result.stderr


def test_cli_second_run_on_same_data_dir_rejected(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    assert run("init", "--data-dir", str(data_dir)).returncode == 0
    (data_dir / "flamenco-p2p.toml").write_text(
        'bind_address = "127.103.0.7"\nmdns = false\n'
        '[capabilities]\ngpu_types = []\nblender_version = "5.0.1"\n'
    )
    first = subprocess.Popen(
        [*CLI, "run", "--data-dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (data_dir / "node.lock").exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)
        second = run("run", "--data-dir", str(data_dir))
        assert second.returncode == 1
        assert f"pid {first.pid}" in second.stderr
        assert "own --data-dir" in second.stderr
    finally:
        first.terminate()
        first.wait(30)
