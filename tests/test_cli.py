"""The flamenco-p2p command line, run as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from farm import LocalFarm

from flamenco_p2p.cli import (
    display_width,
    format_status,
    format_table,
    node_url,
    printable,
)
from flamenco_p2p.render.demo_scene import make_demo_scene

CLI = [sys.executable, "-m", "flamenco_p2p"]
# The en dash is on purpose: names come back exactly as given.
UNICODE_NAME = "\u00c9pisode 01 \u2013 plan 3"
FAST_FAILURES = "[failures]\nmax_attempts = 1\n"


def run(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "FLAMENCO_P2P_TOKEN"}
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
        env={**clean, **(env or {})},
    )


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFarm]:
    root = tmp_path_factory.mktemp("cli-farm")
    with LocalFarm(root, 2, extra_config=FAST_FAILURES, mdns=False) as running:
        asyncio.run(running.wait_for_roles())
        yield running


class Cli:
    """Runs commands against one node of the farm through its --data-dir."""

    def __init__(self, farm: LocalFarm, index: int = 0) -> None:
        self.farm = farm
        self.data_dir = str(farm.nodes[index].data_dir)

    def __call__(
        self, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return run(*args, "--data-dir", self.data_dir, timeout=timeout)

    def json(self, *args: str) -> Any:
        result = self(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def submit_sleep(self, spec: str, *extra: str) -> str:
        result = self("submit", "--sleep", spec, "--no-wait", *extra)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            job = self.json("jobs", "--limit", "1000")["jobs"]
            found = next(j for j in job if j["id"] == job_id)
            if found["status"] in statuses:
                return found
            assert time.monotonic() < deadline, found
            time.sleep(0.2)

    def wait_active(self, job_id: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            job = self.wait_status(job_id, {"active", "queued"})
            if job["task_counts"]["active"]:
                return
            assert time.monotonic() < deadline, job
            time.sleep(0.2)


@pytest.fixture
def cli(farm: LocalFarm) -> Cli:
    return Cli(farm)


# Without a farm -------------------------------------------------------------


def test_cli_help_lists_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    commands = (
        "run",
        "submit",
        "status",
        "jobs",
        "cancel",
        "pause",
        "resume",
        "requeue",
        "priority",
        "delete",
        "logs",
        "token",
        "dashboard",
        "demo",
    )
    for command in commands:
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


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["submit"], "give one of"),
        (["submit", "--sleep", "2:1", "--frames", "1"], "--frames applies to"),
        (["submit", "x.blend", "--sleep", "2:1"], "give one of"),
        (["submit", "x.blend", "--output", "out/"], "--frames is required"),
        (["submit", "--sleep", "two"], "TASKS:SECONDS"),
        (["submit", "--sleep", "2:1", "--wait", "--no-wait"], "not allowed"),
        (["submit", "--sleep", "2:1", "--priority", "101"], "0 to 100"),
        (["jobs", "--status", "nope"], "'nope' is unknown"),
        (["jobs", "--limit", "0"], "1 to 1000"),
        (["status", "--node", "http://host/path"], "not a node address"),
        (["status", "--node", "ftp://host"], "not a node address"),
        (["requeue"], "give a JOB_ID"),
        (["requeue", "a" * 32, "--task", "b"], "give a JOB_ID"),
        (["requeue", "--task", "b", "--failed"], "--failed applies to a job"),
        (["logs", "a" * 32, "--task", "-1"], "0 to"),
        (["priority", "a" * 32, "high"], "0 to 100"),
    ],
)
def test_cli_usage_errors_exit_2(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    result = run(*args, "--data-dir", str(tmp_path / "node"))
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert result.stdout == ""


def test_cli_status_without_node_says_how(tmp_path: Path) -> None:
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "flamenco-p2p.toml").write_text(
        'bind_address = "127.103.0.9"\n'
    )
    result = run("status", "--data-dir", str(tmp_path / "node"), timeout=90)
    assert result.returncode == 1
    assert "flamenco-p2p init" in result.stderr
    assert run("init", "--data-dir", str(tmp_path / "node")).returncode == 0
    for command in ("status", "jobs", "logs"):
        extra = ["a" * 32] if command == "logs" else []
        result = run(command, *extra, "--data-dir", str(tmp_path / "node"))
        assert result.returncode == 1
        assert "http://127.103.0.9:8888" in result.stderr
        assert "connection refused" in result.stderr
        assert "flamenco-p2p run" in result.stderr
        assert "--node" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_cli_token_and_dashboard_of_data_dir(tmp_path: Path) -> None:
    from flamenco_p2p.farmkey import load_farm_key

    data_dir = tmp_path / "node"
    assert run("init", "--data-dir", str(data_dir)).returncode == 0
    (data_dir / "flamenco-p2p.toml").write_text('bind_address = "127.103.0.8"\n')
    token = load_farm_key(data_dir).api_token
    printed = run("token", "--data-dir", str(data_dir))
    assert printed.returncode == 0
    assert printed.stdout == token + "\n"
    assert json.loads(run("token", "--json", "--data-dir", str(data_dir)).stdout) == {
        "token": token
    }
    dashboard = run("dashboard", "--data-dir", str(data_dir))
    assert dashboard.returncode == 0
    assert dashboard.stdout == f"http://127.103.0.8:8888/#token={token}\n"
    other = run(
        "dashboard", "--node", "10.0.0.5", "--json", "--data-dir", str(data_dir)
    )
    assert json.loads(other.stdout) == {"url": f"http://10.0.0.5:8888/#token={token}"}
    missing = run("token", "--data-dir", str(tmp_path / "empty"))
    assert missing.returncode == 1
    assert "flamenco-p2p init" in missing.stderr


def test_cli_change_without_token_says_how(tmp_path: Path) -> None:
    result = run(
        "cancel",
        "a" * 32,
        "--node",
        "127.103.0.7:8888",
        "--data-dir",
        str(tmp_path / "empty"),
    )
    assert result.returncode == 1
    assert "no farm token for http://127.103.0.7:8888" in result.stderr
    assert "--token" in result.stderr
    assert "FLAMENCO_P2P_TOKEN" in result.stderr


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


def test_cli_node_url_forms() -> None:
    assert node_url("10.0.0.5") == "http://10.0.0.5:8888"
    assert node_url("10.0.0.5:9000") == "http://10.0.0.5:9000"
    assert node_url("http://farm.lan:8888/") == "http://farm.lan:8888"
    assert node_url("https://farm.lan") == "https://farm.lan:8888"
    assert node_url("[::1]:8888") == "http://[::1]:8888"


def test_cli_text_keeps_names_and_escapes_controls() -> None:
    assert printable(UNICODE_NAME) == UNICODE_NAME
    assert printable("a\x1b[31mb\nc\u2028d\u202ee") == (
        "a\\x1b[31mb\\nc\\u2028d\\u202ee"
    )
    assert printable("col\tumn", keep="\t") == "col\tumn"
    assert display_width("\u6e32\u67d3") == 4
    assert display_width("e\u0301") == 1
    lines = format_table(["NAME", "N"], [[UNICODE_NAME, "1"], ["\u6e32\u67d3", "22"]])
    assert lines == [
        "  NAME                 N",
        f"  {UNICODE_NAME}  1",
        "  \u6e32\u67d3                 22",
    ]


# On a farm ------------------------------------------------------------------


def test_cli_submit_sleep_job_and_wait(cli: Cli) -> None:
    result = cli("submit", "--sleep", "3:0.2", "--name", UNICODE_NAME, timeout=90)
    assert result.returncode == 0, result.stderr + cli.farm.logs()
    job_id = result.stdout.strip()
    assert len(job_id) == 32
    assert "3/3 tasks" in result.stderr
    assert "100%" in result.stderr
    assert f"job {job_id} completed" in result.stderr
    jobs = cli("jobs")
    assert jobs.returncode == 0, jobs.stderr
    row = next(line for line in jobs.stdout.splitlines() if job_id in line)
    assert row.split()[1:4] == ["completed", "100%", "3/3"]
    assert row.endswith(UNICODE_NAME)
    assert jobs.stdout.splitlines()[0].split() == [
        "ID",
        "STATUS",
        "PROGRESS",
        "DONE",
        "PRIORITY",
        "NAME",
    ]


def test_cli_submit_json_prints_one_document(cli: Cli) -> None:
    result = cli("submit", "--sleep", "1:0", "--json", timeout=90)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["job"]["status"] == "completed"
    assert document["job"]["progress"] == 1.0
    queued = cli("submit", "--sleep", "1:0", "--no-wait", "--json")
    assert json.loads(queued.stdout)["job"]["job_type"] == "sleep"


def test_cli_submit_ctrl_c_keeps_job(cli: Cli) -> None:
    clean = {k: v for k, v in os.environ.items() if k != "FLAMENCO_P2P_TOKEN"}
    argv = [*CLI, "submit", "--sleep", "1:30", "--data-dir", cli.data_dir]
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env=clean,
    ) as process:
        assert process.stdout is not None
        job_id = process.stdout.readline().strip()
        cli.wait_active(job_id)
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=30)
    try:
        assert process.returncode == 130
        assert f"stopped watching; job {job_id} keeps running" in err
        assert f"flamenco-p2p cancel {job_id}" in err
        assert cli.wait_status(job_id, {"active"})["status"] == "active"
    finally:
        assert cli("cancel", job_id).returncode == 0


def test_cli_submit_failing_job_prints_failures(cli: Cli, tmp_path: Path) -> None:
    job_file = tmp_path / "failing.json"
    job_file.write_text(
        json.dumps(
            {
                "job_type": "sleep",
                "priority": 60,
                "settings": {"tasks": 3, "duration": 0.1, "fail_tasks": [1]},
            }
        )
    )
    result = cli("submit", "--job", str(job_file), timeout=90)
    assert result.returncode == 1, result.stderr
    job_id = result.stdout.strip()
    assert f"job {job_id} failed" in result.stderr
    assert "task 1 (sleep 1): sleep task" in result.stderr
    assert f"flamenco-p2p logs {job_id} --task 1" in result.stderr

    job = cli.json("jobs", "--status", "failed")["jobs"]
    found = next(j for j in job if j["id"] == job_id)
    assert found["name"] == "failing"
    assert found["priority"] == 60

    logs = cli("logs", job_id, "--task", "1")
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    assert lines[0].startswith("== task 1 (sleep 1), failed, worker ")
    assert lines[1].startswith("error: sleep task")
    assert lines[2].startswith("sleeping 0.1 s on ")
    assert lines[3] == "slept 0.1 s"
    alias = cli("log", job_id, "--task", "1")
    assert alias.stdout == logs.stdout

    everything = cli("logs", job_id)
    assert [
        line[:13] for line in everything.stdout.splitlines() if line[:3] == "== "
    ] == [
        "== task 0 (sl",
        "== task 1 (sl",
        "== task 2 (sl",
    ]
    missing = cli("logs", job_id, "--task", "9")
    assert missing.returncode == 1
    assert f"job {job_id} has no task 9; it has tasks 0 to 2" in missing.stderr


def test_cli_logs_by_task_id_tail_and_json(cli: Cli) -> None:
    job_id = cli.submit_sleep("1:0.1")
    cli.wait_status(job_id, {"completed"})
    document = cli.json("logs", job_id)
    assert document["job"]["id"] == job_id
    task = document["tasks"][0]["task"]
    lines = [line["line"] for line in document["tasks"][0]["lines"]]
    assert lines[-1] == "slept 0.1 s"
    by_task = cli("logs", task["id"])
    assert by_task.returncode == 0, by_task.stderr
    assert by_task.stdout.splitlines()[0].startswith("== task 0 (sleep 0), completed")
    tail = cli("logs", task["id"], "--tail", "1")
    assert tail.stdout.splitlines()[1:] == ["slept 0.1 s"]
    followed = cli("logs", task["id"], "--follow", "--tail", "1")
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == "slept 0.1 s\n"
    single = cli.json("logs", task["id"], "--tail", "1")
    assert [line["line"] for line in single["lines"]] == ["slept 0.1 s"]
    assert single["task"]["id"] == task["id"]
    unknown = cli("logs", "f" * 32)
    assert unknown.returncode == 1
    assert f"no job or task has id {'f' * 32!r}" in unknown.stderr


def test_cli_logs_follow_until_job_ends(cli: Cli) -> None:
    job_id = cli.submit_sleep("2:1.5")
    started = time.monotonic()
    result = cli("logs", job_id, "--follow", timeout=60)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started > 1.0
    lines = result.stdout.splitlines()
    for index in (0, 1):
        assert any(line.startswith(f"[task {index}] sleeping 1.5 s") for line in lines)
        assert f"[task {index}] slept 1.5 s" in lines
    assert len(lines) == 4, lines


def test_cli_logs_follow_one_task_as_json_lines(cli: Cli) -> None:
    job_id = cli.submit_sleep("2:1")
    result = cli("logs", job_id, "--task", "1", "--follow", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    documents = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["line"] for d in documents][-1] == "slept 1 s"
    assert len({d["task_id"] for d in documents}) == 1
    assert [d["id"] for d in documents] == sorted({d["id"] for d in documents})


def test_cli_status_human_and_json(cli: Cli, farm: LocalFarm) -> None:
    job_id = cli.submit_sleep("1:20", "--name", UNICODE_NAME)
    try:
        cli.wait_active(job_id)
        status = cli("status")
        assert status.returncode == 0, status.stderr
        text = status.stdout
        assert f"farm {farm.farm} (id " in text
        assert "server (epoch" in text
        assert "manager:lab (epoch" in text
        assert "blender 5.0.1" in text
        assert "(this node)" in text
        running = text.split("RUNNING")[1].split("JOBS")[0]
        assert job_id in running
        assert "sleep 0" in running
        jobs = text.split("JOBS")[1]
        row = next(line for line in jobs.splitlines() if job_id in line)
        assert "active" in row
        assert row.endswith(UNICODE_NAME)
        document = cli.json("status")
        assert set(document) == {"farm", "nodes", "jobs"}
        assert document["farm"]["farm"] == farm.farm
        assert len(document["nodes"]) == 2
        assert job_id in [j["id"] for j in document["jobs"]["jobs"]]
    finally:
        assert cli("cancel", job_id).returncode == 0


def test_cli_pause_resume_cancel_with_conflicts(cli: Cli) -> None:
    job_id = cli.submit_sleep("2:30")
    try:
        cli.wait_active(job_id)
        paused = cli("pause", job_id)
        assert paused.returncode == 0, paused.stderr
        assert paused.stdout.startswith(f"job {job_id} pause")
        cli.wait_status(job_id, {"paused"})
        resumed = cli("resume", job_id)
        assert resumed.returncode == 0, resumed.stderr
        assert resumed.stdout.split()[2] in ("queued", "active")
        again = cli("resume", job_id)
        assert again.returncode == 1
        assert again.stderr.startswith("flamenco-p2p: error: job ")
        assert "only a paused job can be resumed" in again.stderr

        priority = cli("priority", job_id, "90")
        assert priority.stdout == f"job {job_id} has priority 90\n"
    finally:
        canceled = cli("cancel", job_id)
    assert canceled.returncode == 0, canceled.stderr
    assert canceled.stdout.split()[:2] == ["job", job_id]
    assert canceled.stdout.split()[2].rstrip(":") in ("canceled", "cancel-requested")

    cli.wait_status(job_id, {"canceled"})
    conflict = cli("pause", job_id)
    assert conflict.returncode == 1
    assert f"job {job_id} is canceled" in conflict.stderr

    requeued = cli("requeue", job_id)
    assert requeued.returncode == 0, requeued.stderr
    assert "0/2 tasks done" in requeued.stdout
    assert cli("cancel", job_id).returncode == 0
    document = cli.json("cancel", job_id)
    assert document["job"]["id"] == job_id


def test_cli_requeue_failed_and_one_task(cli: Cli, tmp_path: Path) -> None:
    job_file = tmp_path / "job.json"
    job_file.write_text(
        json.dumps(
            {
                "name": "requeue me",
                "job_type": "sleep",
                "settings": {"tasks": 2, "duration": 0.1, "fail_tasks": [0]},
            }
        )
    )
    assert cli("submit", "--job", str(job_file), timeout=90).returncode == 1
    job = cli.json("jobs", "--search", "requeue me")["jobs"][0]
    assert job["status"] == "failed"

    failed = cli("requeue", job["id"], "--failed")
    assert failed.returncode == 0, failed.stderr
    assert failed.stdout.startswith(f"job {job['id']} ")

    cli.wait_status(job["id"], {"failed"})
    finished = {"completed", "failed", "canceled"}
    deadline = time.monotonic() + 30
    while True:
        second = cli.json("logs", job["id"], "--task", "1")["task"]
        if second["status"] in finished:
            break
        assert time.monotonic() < deadline, second
        time.sleep(0.2)
    one = cli("requeue", "--task", second["id"])
    assert one.returncode == 0, one.stderr
    assert one.stdout.startswith("task 1 (sleep 1) queued; job ")

    cli.wait_status(job["id"], {"failed"})
    deleted = cli("delete", job["id"])
    assert deleted.stdout == f"job {job['id']} deleted\n"
    gone = cli("requeue", job["id"])
    assert gone.returncode == 1
    assert "not found" in gone.stderr


def test_cli_requeue_running_task_conflicts(cli: Cli) -> None:
    job_id = cli.submit_sleep("1:30")
    try:
        cli.wait_active(job_id)
        task_id = cli.json("logs", job_id)["tasks"][0]["task"]["id"]
        result = cli("requeue", "--task", task_id)
        assert result.returncode == 1
        assert f"task {task_id} is active" in result.stderr
        delete = cli("delete", job_id)
        assert delete.returncode == 1
        assert "cancel it first" in delete.stderr
    finally:
        assert cli("cancel", job_id).returncode == 0


def test_cli_jobs_filter_and_pages(cli: Cli) -> None:
    ids = [cli.submit_sleep("1:0", "--name", f"paged {n}") for n in range(3)]
    for job_id in ids:
        cli.wait_status(job_id, {"completed"})
    page = cli("jobs", "--search", "paged", "--limit", "2")
    assert page.returncode == 0, page.stderr
    lines = page.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ids[::-1][:2]
    assert lines[3] == "jobs 1 to 2 of 3; --offset 2 shows the next page"
    rest = cli.json("jobs", "--search", "paged", "--limit", "2", "--offset", "2")
    assert [j["id"] for j in rest["jobs"]] == ids[:1]
    assert rest["total"] == 3
    none = cli("jobs", "--search", "paged", "--status", "paused,canceled")
    assert none.stdout == "no jobs\n"


def test_cli_node_option_reaches_other_node(cli: Cli, farm: LocalFarm) -> None:
    other_id = (farm.nodes[1].data_dir / "node-id").read_text().strip()
    status = cli("status", "--node", farm.api_url(1))
    assert status.returncode == 0, status.stderr
    assert f"seen from node {other_id}" in status.stdout
    this_node = next(
        line for line in status.stdout.splitlines() if "(this node)" in line
    )
    assert other_id in this_node
    job_id = cli.submit_sleep("1:30")
    try:
        cli.wait_active(job_id)
        elsewhere = run(
            "pause",
            job_id,
            "--node",
            farm.api_url(1).removeprefix("http://"),
            "--data-dir",
            str(farm.root / "no-such-node"),
            env={"FLAMENCO_P2P_TOKEN": farm.token},
        )
        assert elsewhere.returncode == 0, elsewhere.stderr
        assert elsewhere.stdout.startswith(f"job {job_id} pause")
    finally:
        assert cli("cancel", job_id, "--node", farm.api_url(1)).returncode == 0


def test_cli_wrong_token_rejected(cli: Cli, farm: LocalFarm) -> None:
    job_id = cli.submit_sleep("1:0")
    cli.wait_status(job_id, {"completed"})
    for token_args, env, source in [
        (["--token", "wrong"], {}, "--token"),
        ([], {"FLAMENCO_P2P_TOKEN": "wrong"}, "FLAMENCO_P2P_TOKEN"),
    ]:
        result = run(
            "delete",
            job_id,
            *token_args,
            "--node",
            farm.api_url(0),
            "--data-dir",
            str(farm.root / "no-such-node"),
            env=env,
        )
        assert result.returncode == 1
        assert f"{farm.api_url(0)} rejected the farm token from {source}" in (
            result.stderr
        )
        assert "flamenco-p2p token" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert job_id in cli("jobs").stdout


def test_cli_status_without_server(tmp_path: Path) -> None:
    no_server = "[roles]\nserver = false\n"
    with LocalFarm(tmp_path, 1, per_node_config={0: no_server}, mdns=False) as farm:
        data_dir = str(farm.nodes[0].data_dir)
        deadline = time.monotonic() + 30
        while True:
            # Each reply takes some seconds: the node waits for a server first.
            result = run("status", "--json", "--data-dir", data_dir)
            if result.returncode == 0:
                break
            assert time.monotonic() < deadline, result.stderr
            time.sleep(0.3)
    document = json.loads(result.stdout)
    assert document["jobs"] is None
    assert document["farm"]["server"] is None
    assert document["farm"]["server_reachable"] is False
    text = format_status(document["farm"], document["nodes"], None, "no server")
    assert text.endswith("JOBS\n  unavailable: no server")


@pytest.mark.render
def test_cli_submit_blend_and_status_on_farm(cli: Cli, tmp_path: Path) -> None:
    blend = tmp_path / "shot.blend"
    make_demo_scene(blend, frames=3)
    submitted = cli(
        "submit",
        str(blend),
        "--frames",
        "1-3",
        "--chunk",
        "2",
        "--output",
        str(tmp_path / "out" / "shot_#"),
        timeout=240,
    )
    assert submitted.returncode == 0, submitted.stderr + cli.farm.logs()
    job_id = submitted.stdout.strip()
    assert len(job_id) == 32
    assert "3/3 frames" in submitted.stderr
    assert "completed" in submitted.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "shot_1.png",
        "shot_2.png",
        "shot_3.png",
    ]
    job = cli.json("jobs", "--search", "shot.blend")["jobs"][0]
    assert job["id"] == job_id
    assert job["frames_done"] == 3

    # The same blend file again, from a job file: the node has it already.
    again = cli(
        "submit",
        "--job",
        str(_job_file_of(job, tmp_path)),
        str(blend),
        "--no-wait",
    )
    assert again.returncode == 0, again.stderr
    cli.wait_status(again.stdout.strip(), {"completed"}, timeout=120)
    settings = job["settings"]
    uploaded = (
        f"blob {settings['blend_sha256']} ({settings['blend_size']} bytes) uploaded"
    )
    assert cli.farm.nodes[0].log_text().count(uploaded) == 1


def _job_file_of(job: dict[str, Any], folder: Path) -> Path:
    """Write a job file that renders job's frames again into folder/again."""
    settings = {
        key: job["settings"][key] for key in ("frames", "chunk_size", "overrides")
    }
    settings["output_dir"] = str(folder / "again")
    settings["output_name"] = "frame_#"
    path = folder / "again.json"
    path.write_text(
        json.dumps(
            {"name": "again", "job_type": "blender-render", "settings": settings}
        )
    )
    return path
