"""The console against real daemons on loopback, driven by Textual's Pilot.

Each test runs the console app in a headless terminal of 120 by 40 cells,
attached to a node of a LocalFarm through the real ApiClient, and checks what
the screens show against what the HTTP API returns.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from farm import LocalFarm
from test_console_snapshots import JOB_LIGHTING, FixedFarm
from textual import events
from textual.logging import TextualHandler
from textual.pilot import Pilot
from textual.widgets import DataTable, Log, Static

from flamenco_p2p.api.client import ApiClient
from flamenco_p2p.cli import api_target, build_parser
from flamenco_p2p.console.app import ConsoleApp
from flamenco_p2p.console.farm_screen import FarmScreen
from flamenco_p2p.console.format import MANAGER_MARK, SERVER_MARK
from flamenco_p2p.console.job_screen import JobScreen
from flamenco_p2p.console.jobs_screen import JobsScreen
from flamenco_p2p.console.row_list import RowList
from flamenco_p2p.console.widgets import Banner, ConfirmScreen

pytestmark = pytest.mark.slow

SIZE = (120, 40)
NO_WORKERS = "[worker]\nslots = 0\n"
MANY_JOBS = 1000
BIG_JOB_TASKS = 10_000
KEY_BUDGET = 0.1
"""Seconds from a key press until the screen shows its effect."""


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFarm]:
    with LocalFarm(tmp_path_factory.mktemp("console-farm"), 3, mdns=False) as running:
        asyncio.run(running.wait_for_roles())
        yield running


@pytest.fixture(scope="module")
def crowded_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFarm]:
    """One node without workers, holding MANY_JOBS small jobs and one job of
    BIG_JOB_TASKS tasks, all queued for good."""
    with LocalFarm(
        tmp_path_factory.mktemp("console-crowded"),
        1,
        mdns=False,
        per_node_config={0: NO_WORKERS},
    ) as running:
        asyncio.run(running.wait_for_roles())
        asyncio.run(fill_farm(running))
        yield running


async def fill_farm(farm: LocalFarm) -> None:
    started = time.perf_counter()
    async with ApiClient(farm.api_url(0), farm.token) as api:
        gate = asyncio.Semaphore(16)

        async def submit(index: int) -> None:
            async with gate:
                await api.submit(sleep_job(f"crowd {index:04d}", 1, 1.0))

        await asyncio.gather(*(submit(index) for index in range(MANY_JOBS)))
        await api.submit(sleep_job("big job", BIG_JOB_TASKS, 1.0))
    print(
        f"\nsubmitted {MANY_JOBS} jobs and one of {BIG_JOB_TASKS} tasks"
        f" in {time.perf_counter() - started:.1f} s"
    )


@pytest.fixture
async def api(farm: LocalFarm) -> AsyncIterator[ApiClient]:
    async with ApiClient(farm.api_url(0), farm.token) as client:
        yield client


def sleep_job(name: str, tasks: int, duration: float) -> dict[str, Any]:
    return {
        "name": name,
        "job_type": "sleep",
        "settings": {"tasks": tasks, "duration": duration},
    }


async def until(
    pilot: Pilot[Any], condition: Callable[[], bool], timeout: float, what: str
) -> float:
    """Let the app run until condition holds; returns the seconds it took."""
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > timeout:
            raise AssertionError(f"after {timeout} s: {what}")
        await pilot.pause(0.05)
    return time.perf_counter() - started


class DisplayClock:
    """Times from a key press to the first frame that shows its effect.

    Textual has no public hook for "a frame was drawn", so this wraps
    App._display, which the compositor calls with every rendered screen
    update. The headless driver then drops the frame. Each
    frame checks the condition of the key being timed: the first frame for
    which it holds was rendered from the changed state.
    """

    def __init__(self, app: ConsoleApp) -> None:
        self.frames: list[float] = []
        self.timings: dict[str, float] = {}
        self.traces: dict[str, str] = {}
        """The frames drawn while each key was timed, for failure messages."""
        self._app = app
        self._display = app._display
        self._done: Callable[[], bool] | None = None
        self._shown: float | None = None

        def display(screen: Any, renderable: Any) -> None:
            self._display(screen, renderable)
            if renderable is None:
                return
            now = time.perf_counter()
            self.frames.append(now)
            if self._done is not None and self._shown is None and self._done():
                self._shown = now

        app._display = display  # type: ignore[method-assign]

    async def press(
        self,
        label: str,
        key: str,
        done: Callable[[], bool],
        character: str | None = None,
        timeout: float = 10.0,
    ) -> float:
        """Press key; returns the seconds until a frame is drawn with done() true.

        The seconds and the frames drawn are kept under label. pilot.press
        would add three idle waits of at least 20 ms each, so the key goes
        straight to the app's message queue, as the driver sends it.
        """
        self._done = done
        self._shown = None
        started = time.perf_counter()
        if character is None and len(key) == 1:
            character = key
        self._app.post_message(events.Key(key, character))
        try:
            while self._shown is None:
                if time.perf_counter() - started > timeout:
                    raise AssertionError(
                        f"after {timeout} s, no frame showed the effect of {key!r}"
                    )
                await asyncio.sleep(0.001)
        finally:
            self._done = None
        shown = self._shown - started
        self.timings[label] = shown
        self.traces[label] = "frames at " + ", ".join(
            f"{(frame - started) * 1000:.1f}"
            for frame in self.frames
            if frame >= started
        )
        return shown


def cell(table: DataTable[Any], row: str, column: str) -> str:
    value = table.get_cell(row, column)
    return str(getattr(value, "plain", value))


def jobs_table(app: ConsoleApp) -> RowList:
    screen = app.screen
    assert isinstance(screen, JobsScreen), screen
    return screen.table


def top_task(tasks: RowList) -> str:
    return tasks.visible_keys()[0]


def cursor_at(table: RowList, row: int) -> bool:
    return table.cursor == row


def has_row(app: ConsoleApp, job_id: str) -> bool:
    """Return whether the jobs screen lists a job and shows its row."""
    screen = app.screen
    return (
        isinstance(screen, JobsScreen)
        and job_id in screen.listed
        and job_id in screen.table.visible_keys()
    )


async def test_farm_screen_shows_roles(farm: LocalFarm, api: ApiClient) -> None:
    async with ApiClient(farm.api_url(1), farm.token) as source:
        app = ConsoleApp(source)
        async with app.run_test(size=SIZE) as pilot:
            await asyncio.wait_for(app.loaded.wait(), 30)
            await pilot.pause()
            farm_view = await api.farm()
            members = (await api.nodes())["nodes"]
            table = app.screen.query_one("#nodes", DataTable)

            assert table.row_count == 3
            server = farm_view["server"]["node_id"]
            managers = {m["node_id"] for m in farm_view["managers"]}
            assert managers
            for member in members:
                node_id = member["node_id"]
                mark = cell(table, node_id, "mark")
                assert (SERVER_MARK in mark) == (node_id == server), mark
                assert (MANAGER_MARK in mark) == (node_id in managers), mark
                assert cell(table, node_id, "state") == "alive"
                roles = cell(table, node_id, "roles")
                for role in member["roles"]:
                    assert f"{role['role']} e{role['epoch']}" in roles
                assert cell(table, node_id, "node") == node_id[:8]
            summary = str(app.screen.query_one("#farm-summary").render())
            assert farm_view["farm"] in summary
            assert f"Server {server[:8]}" in summary


async def test_job_progress_without_keys(farm: LocalFarm, api: ApiClient) -> None:
    async with ApiClient(farm.api_url(1), farm.token) as source:
        app = ConsoleApp(source)
        async with app.run_test(size=SIZE) as pilot:
            await asyncio.wait_for(app.loaded.wait(), 30)
            await pilot.press("2")
            job = (await api.submit(sleep_job("console progress", 6, 0.5)))["job"]

            await until(
                pilot, lambda: has_row(app, job["id"]), 10, "the job has no row"
            )
            table = jobs_table(app)
            await until(
                pilot,
                lambda: table.cell_text(job["id"], "progress").endswith("100%"),
                60,
                "the job's progress never reached 100 %",
            )
            await until(
                pilot,
                lambda: table.cell_text(job["id"], "status") == "completed",
                10,
                "the job never showed as completed",
            )
            assert (await api.job(job["id"]))["status"] == "completed"


async def test_cancel_key_confirms(farm: LocalFarm, api: ApiClient) -> None:
    async with ApiClient(farm.api_url(1), farm.token) as source:
        app = ConsoleApp(source)
        notes: list[tuple[str, str, str]] = []
        notify = app.notify

        def record(message: str, **kwargs: Any) -> None:
            notes.append(
                (message, str(kwargs.get("title", "")), kwargs.get("severity", ""))
            )
            notify(message, **kwargs)

        app.notify = record  # type: ignore[method-assign]
        async with app.run_test(size=SIZE) as pilot:
            await asyncio.wait_for(app.loaded.wait(), 30)
            await pilot.press("2")
            job = (await api.submit(sleep_job("console cancel", 30, 5.0)))["job"]
            await until(
                pilot, lambda: has_row(app, job["id"]), 10, "the job has no row"
            )
            table = jobs_table(app)
            screen = app.screen
            assert isinstance(screen, JobsScreen)
            assert screen.select_job(job["id"])
            await pilot.pause()

            await pilot.press("c")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("n")
            assert isinstance(app.screen, JobsScreen)
            await asyncio.sleep(0.5)
            assert (await api.job(job["id"]))["status"] == "active"

            await pilot.press("c")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            deadline = time.monotonic() + 30
            while (await api.job(job["id"]))["status"] != "canceled":
                assert time.monotonic() < deadline, "the job was never canceled"
                await pilot.pause(0.1)
            await until(
                pilot,
                lambda: table.cell_text(job["id"], "status") == "canceled",
                10,
                "the console never showed the job as canceled",
            )

            # Pausing a canceled job is a conflict, which the node explains.
            await pilot.press("p")
            await until(
                pilot,
                lambda: any("HTTP 409" in title for _m, title, _s in notes),
                10,
                f"no notification of the 409 reply: {notes}",
            )
            message, _title, severity = next(n for n in notes if "HTTP 409" in n[1])
            assert severity == "error"
            assert "canceled" in message


async def test_priority_and_pause_keys(farm: LocalFarm, api: ApiClient) -> None:
    async with ApiClient(farm.api_url(0), farm.token) as source:
        app = ConsoleApp(source)
        async with app.run_test(size=SIZE) as pilot:
            await asyncio.wait_for(app.loaded.wait(), 30)
            await pilot.press("2")
            job = (await api.submit(sleep_job("console keys", 20, 5.0)))["job"]
            start = int(job["priority"])
            await until(
                pilot, lambda: has_row(app, job["id"]), 10, "the job has no row"
            )
            screen = app.screen
            assert isinstance(screen, JobsScreen)
            assert screen.select_job(job["id"])

            await pilot.press("plus", "plus", "minus")
            deadline = time.monotonic() + 10
            while (await api.job(job["id"]))["priority"] != start + 10:
                assert time.monotonic() < deadline, "the priority never settled"
                await pilot.pause(0.1)
            await until(
                pilot,
                lambda: (
                    screen.table.cell_text(job["id"], "priority") == str(start + 10)
                ),
                10,
                "the console never showed the new priority",
            )

            await until(
                pilot,
                lambda: (
                    (app.state.jobs[job["id"]].get("task_counts") or {}).get(
                        "active", 0
                    )
                    > 0
                ),
                20,
                "no task of the job started",
            )
            # A pause stops running tasks, so the console requests a confirmation.
            await pilot.press("p")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("n")
            assert isinstance(app.screen, JobsScreen)
            assert (await api.job(job["id"]))["status"] == "active"
            await pilot.press("p", "y")
            deadline = time.monotonic() + 20
            while (await api.job(job["id"]))["status"] not in ("paused",):
                assert time.monotonic() < deadline, "the job was never paused"
                await pilot.pause(0.2)
            await pilot.press("r")
            deadline = time.monotonic() + 20
            while (await api.job(job["id"]))["status"] in ("paused",):
                assert time.monotonic() < deadline, "the job was never resumed"
                await pilot.pause(0.2)
            await api.cancel(job["id"])


async def test_task_log_follows_live(farm: LocalFarm, api: ApiClient) -> None:
    async with ApiClient(farm.api_url(1), farm.token) as source:
        app = ConsoleApp(source)
        async with app.run_test(size=SIZE) as pilot:
            await asyncio.wait_for(app.loaded.wait(), 30)
            await pilot.press("2")
            job = (await api.submit(sleep_job("console log", 1, 4.0)))["job"]
            await until(
                pilot, lambda: has_row(app, job["id"]), 10, "the job has no row"
            )
            screen = app.screen
            assert isinstance(screen, JobsScreen)
            assert screen.select_job(job["id"])
            await pilot.press("enter")
            job_screen = app.screen
            assert isinstance(job_screen, JobScreen)
            await until(
                pilot,
                lambda: job_screen.tasks_table.selected_key is not None,
                10,
                "the job screen shows no task",
            )
            log = job_screen.query_one("#log", Log)

            def log_text() -> str:
                return "\n".join(str(line) for line in log.lines)

            await until(
                pilot,
                lambda: "sleeping 4 s on" in log_text(),
                15,
                "the log of the running task never showed its first line",
            )
            assert "slept 4 s" not in log_text()
            # The last line is written after the console showed the first one,
            # so only the event stream can bring it.
            await until(
                pilot,
                lambda: "slept 4 s" in log_text(),
                15,
                f"the log never showed the task's last line: {log_text()!r}",
            )
            assert log_text().count("sleeping 4 s on") == 1


async def test_jobs_screen_sorts_and_filters() -> None:
    app = ConsoleApp(FixedFarm())
    async with app.run_test(size=SIZE) as pilot:
        await asyncio.wait_for(app.loaded.wait(), 10)
        await pilot.press("2")
        screen = app.screen
        assert isinstance(screen, JobsScreen)
        table = screen.table

        def column(name: str) -> list[str]:
            return [table.cell_text(key, name) for key in table.visible_keys()]

        await pilot.press("s")
        assert screen.filter.order == "priority"
        priorities = [int(text) for text in column("priority")]
        assert len(priorities) == 6
        assert priorities == sorted(priorities, reverse=True)
        await pilot.press("S")
        assert [int(text) for text in column("priority")] == sorted(priorities)

        await pilot.press("f")
        assert screen.filter.status == "unfinished"
        statuses = column("status")
        assert sorted(statuses) == ["active", "paused", "queued"]

        await pilot.press("slash", *"smoke")
        await until(pilot, lambda: len(table.keys) == 0, 5, "smoke still listed")
        await pilot.press(*["backspace"] * 5, *"shot", "enter")
        await until(
            pilot,
            # Still by priority, lowest first: 50, then 70.
            lambda: column("name") == ["shot-020 \u00e9clairage", "shot-010 lighting"],
            5,
            f"the find field did not list the unfinished shots: {column('name')}",
        )
        summary = str(screen.query_one("#jobs-summary", Static).render())
        assert summary.startswith("2 of 6 jobs")


class SlowFarm(FixedFarm):
    """FixedFarm whose replies about tasks come REPLY_DELAY seconds late."""

    REPLY_DELAY = 0.5

    async def tasks(
        self,
        job_id: str,
        limit: int = 200,
        offset: int = 0,
        status: str | list[str] | None = None,
    ) -> dict[str, Any]:
        await asyncio.sleep(self.REPLY_DELAY)
        return await super().tasks(job_id, limit, offset, status)

    async def task_log(
        self,
        task_id: str,
        *,
        tail: int | None = None,
        after: int | None = None,
        limit: int | None = None,
        attempt_id: str | None = None,
    ) -> dict[str, Any]:
        await asyncio.sleep(self.REPLY_DELAY)
        return await super().task_log(
            task_id, tail=tail, after=after, limit=limit, attempt_id=attempt_id
        )


async def test_job_screen_closes_amid_events() -> None:
    app = ConsoleApp(SlowFarm())
    async with app.run_test(size=SIZE) as pilot:
        await asyncio.wait_for(app.loaded.wait(), 10)
        app.open_job(JOB_LIGHTING)
        await until(
            pilot,
            lambda: isinstance(app.screen, JobScreen) and app.screen.is_mounted,
            5,
            "the job screen never opened",
        )
        job_screen = app.screen
        assert isinstance(job_screen, JobScreen)
        task_id = JOB_LIGHTING + "-0000008"
        await until(
            pilot,
            lambda: task_id in job_screen.tasks_table.keys,
            5,
            "the page of tasks never came",
        )
        assert job_screen.tasks_table.select(task_id)
        await until(
            pilot,
            lambda: job_screen.selected_task == task_id,
            5,
            "the task under the cursor was never selected",
        )
        log = job_screen.query_one("#log", Log)
        await until(pilot, lambda: log.line_count > 0, 5, "the log never came")
        task = await app.source.task(task_id)

        # pilot.press would wait for the widgets of the closing screen, which
        # Textual stops, so the key goes to the app's queue directly. Events
        # keep coming while Textual removes the screen's widgets.
        app.post_message(events.Key("escape", None))
        line = 100
        started = time.monotonic()
        while job_screen.is_attached:
            assert time.monotonic() - started < 5, "the job screen never closed"
            line += 1
            app.apply_event("task", task["task"])
            app.apply_event(
                "log",
                {
                    "task_id": task_id,
                    "attempt_id": "bb00000000000000000000000000000b",
                    "lines": [{"id": line, "created": None, "line": "late"}],
                },
            )
            app.apply_event("tasks", {"job_id": JOB_LIGHTING})
            await asyncio.sleep(0.001)
        # A page fetch from the "tasks" events may still be on its way.
        await asyncio.sleep(SlowFarm.REPLY_DELAY * 2)
        assert isinstance(app.screen, JobsScreen)
        await pilot.press("1")
        assert isinstance(app.screen, FarmScreen)
    # run_test re-raises any error that the app met while it ran.


async def test_log_records_stay_off_the_terminal() -> None:
    root = logging.getLogger()
    terminal = logging.StreamHandler(sys.stderr)
    root.addHandler(terminal)
    records: list[logging.LogRecord] = []
    try:
        app = ConsoleApp(FixedFarm())
        async with app.run_test(size=SIZE) as pilot:
            await asyncio.wait_for(app.loaded.wait(), 10)
            assert terminal not in root.handlers
            handlers = [h for h in root.handlers if isinstance(h, TextualHandler)]
            assert len(handlers) == 1

            def record(entry: logging.LogRecord) -> bool:
                records.append(entry)
                return True

            handlers[0].addFilter(record)
            logging.getLogger("flamenco_p2p.console.test").warning("node lost")
            await pilot.pause()
        assert [r.getMessage() for r in records] == ["node lost"]
        assert terminal in root.handlers
        assert not any(isinstance(h, TextualHandler) for h in root.handlers)
    finally:
        root.removeHandler(terminal)


async def test_banner_until_node_returns(tmp_path: Path) -> None:
    with LocalFarm(tmp_path, 3, mdns=False) as farm:
        await farm.wait_for_roles()
        url = farm.api_url(1)
        async with ApiClient(url, farm.token) as source:
            app = ConsoleApp(source)
            async with app.run_test(size=SIZE) as pilot:
                await asyncio.wait_for(app.loaded.wait(), 30)
                await pilot.press("2")
                banner = app.screen.query_one(Banner)
                assert not banner.display

                await asyncio.to_thread(farm.kill, 1, signal.SIGKILL)
                await until(
                    pilot,
                    lambda: app.banner.startswith(f"cannot reach {url}: "),
                    20,
                    "no banner after the node stopped",
                )
                await pilot.pause()
                assert banner.display
                assert "retrying" in app.banner

                farm.start(1)
                await until(
                    pilot, lambda: app.banner == "", 60, "the banner never went away"
                )
                assert not banner.display
                async with ApiClient(farm.api_url(0), farm.token) as api:
                    job = (await api.submit(sleep_job("after the restart", 1, 0.1)))[
                        "job"
                    ]
                await until(
                    pilot,
                    lambda: has_row(app, job["id"]),
                    20,
                    "the job submitted after the restart never appeared",
                )


async def test_keys_fast_with_many_jobs(crowded_farm: LocalFarm) -> None:
    async with ApiClient(crowded_farm.api_url(0), crowded_farm.token) as source:
        app = ConsoleApp(source)
        async with app.run_test(size=SIZE) as pilot:
            started = time.perf_counter()
            await asyncio.wait_for(app.loaded.wait(), 60)
            loaded = time.perf_counter() - started
            assert len(app.state.jobs) == MANY_JOBS + 1
            await pilot.pause()
            clock = DisplayClock(app)

            def on_jobs_screen() -> bool:
                """Whether the jobs screen is up with a screenful of rows."""
                screen = app.screen
                if not isinstance(screen, JobsScreen):
                    return False
                table = screen.table
                return len(table.visible_keys()) == table.row_count > 20

            await clock.press("2: switch to the jobs screen", "2", on_jobs_screen)
            table = jobs_table(app)
            screen = app.screen
            assert isinstance(screen, JobsScreen)
            assert len(screen.listed) == MANY_JOBS + 1
            assert table.row_count < 40
            for row in range(1, 6):
                await clock.press(
                    f"down #{row}", "down", functools.partial(cursor_at, table, row)
                )
            await clock.press("pagedown", "pagedown", lambda: screen.table.cursor > 5)
            await clock.press("end", "end", lambda: screen.table.cursor == MANY_JOBS)
            assert screen.cursor_job_id() == screen.listed[-1]
            assert screen.cursor_job_id() == table.visible_keys()[-1]
            await clock.press("home", "home", lambda: screen.table.cursor == 0)
            await clock.press(
                "s: sort by priority", "s", lambda: screen.filter.order == "priority"
            )
            await clock.press(
                "f: filter unfinished", "f", lambda: screen.filter.status != "all"
            )
            assert len(screen.listed) == MANY_JOBS + 1
            await clock.press(
                "1: switch to the farm screen",
                "1",
                lambda: isinstance(app.screen, FarmScreen),
            )
            await clock.press("2: back to the jobs screen", "2", on_jobs_screen)

            big = next(j for j in app.state.jobs.values() if j["name"] == "big job")
            assert screen.select_job(big["id"])
            await pilot.pause()
            await clock.press(
                "enter: open the big job",
                "enter",
                lambda: isinstance(app.screen, JobScreen),
            )
            job_screen = app.screen
            assert isinstance(job_screen, JobScreen)
            tasks = job_screen.tasks_table
            first_page = await until(
                pilot, lambda: len(tasks.keys) == 200, 10, "no tasks"
            )
            assert job_screen.total_tasks == BIG_JOB_TASKS
            await pilot.pause()
            await clock.press("down in the tasks", "down", lambda: tasks.cursor == 1)
            first = top_task(tasks)
            await clock.press(
                "]: next page of tasks",
                "right_square_bracket",
                lambda: top_task(tasks) != first,
                character="]",
            )
            assert tasks.cell_text(f"{big['id']}-0000200", "index") == "200"
            await clock.press("escape: back to the jobs", "escape", on_jobs_screen)

    width = max(len(name) for name in clock.timings)
    print(f"\nfirst fetch of every job: {loaded * 1000:.1f} ms")
    print(f"first page of tasks after enter: {first_page * 1000:.1f} ms more")
    for name, seconds in clock.timings.items():
        print(f"{name:<{width}}  {seconds * 1000:7.1f} ms  {clock.traces[name]}")
    slow = {
        name: round(seconds * 1000, 1)
        for name, seconds in clock.timings.items()
        if seconds >= KEY_BUDGET
    }
    assert not slow, f"keys slower than {KEY_BUDGET * 1000:.0f} ms: {slow}"


def test_console_command_finds_node(
    farm: LocalFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLAMENCO_P2P_TOKEN", raising=False)
    parser = build_parser()
    data_dir = str(farm.nodes[2].data_dir)

    local = parser.parse_args(["console", "--data-dir", data_dir])
    assert local.handler is not None
    target = api_target(local)
    assert (target.url, target.token) == (farm.api_url(2), farm.token)

    other = parser.parse_args(
        ["console", "--data-dir", data_dir, "--node", "127.0.0.1:9", "--token", "t"]
    )
    target = api_target(other)
    assert (target.url, target.token) == ("http://127.0.0.1:9", "t")

    nowhere = str(farm.nodes[2].data_dir.parent / "none")
    stranger = parser.parse_args(
        ["console", "--data-dir", nowhere, "--node", "127.0.0.1:9"]
    )
    assert api_target(stranger).token is None
    monkeypatch.setenv("FLAMENCO_P2P_TOKEN", "from-env")
    assert api_target(stranger).token == "from-env"

    with pytest.raises(SystemExit):
        parser.parse_args(["console", "--json"])
