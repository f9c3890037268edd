"""The web dashboard in headless Chromium, against a real three-node farm.

Playwright drives the system's Chromium at /usr/bin/chromium (Debian's package)
in place of a browser that Playwright downloads. One farm serves every test of the
module, so the tests share its workers, and each test cancels the jobs it
leaves running.
Screenshots go to $FLAMENCO_TEST_ARTIFACTS (default tests/artifacts/).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from farm import LocalFarm
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    Request,
    expect,
    sync_playwright,
)

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(
    os.environ.get("FLAMENCO_TEST_ARTIFACTS", Path(__file__).parent / "artifacts")
)
TASK_PAGE_LIMIT = 200
# Long enough that a blocking job outlives any test, which cancels it at its end.
BLOCKING_SECONDS = 600
# An opener without proxies: every request of these tests goes to loopback.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Dashboard:
    """One browser page on the dashboard, with what it logged and requested."""

    page: Page
    base_url: str
    script_errors: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def open(self, fragment: str = "#/") -> None:
        """Load the dashboard and wait until its event stream is live."""
        self.page.goto(f"{self.base_url}/{fragment}")
        expect(self.page.get_by_test_id("connection")).to_have_attribute(
            "data-state", "live", timeout=15_000
        )

    def job_view(self) -> Locator:
        """Return the locator of the job page."""
        return self.page.get_by_test_id("view-job")

    def api_requests(self, path_pattern: str, method: str = "GET") -> list[Request]:
        """Return the requests of one method whose path matches the pattern."""
        return [
            r
            for r in self.requests
            if r.method == method
            and re.fullmatch(path_pattern, urllib.parse.urlsplit(r.url).path)
        ]


def cells_with_status(view: Locator, status: str) -> Locator:
    """Return the task cells of a job page that show one status."""
    return view.locator(f"[data-testid=task-cell][data-status='{status}']")


def api(
    farm: LocalFarm, method: str, path: str, body: dict[str, Any] | None = None
) -> Any:
    """Send one request with the farm token to node 0's HTTP API.

    Returns the decoded JSON reply and raises AssertionError on an error status.
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        farm.api_url(0) + path,
        data=data,
        method=method,
        headers={
            "Authorization": f"Bearer {farm.token}",
            "Content-Type": "application/json",
        },
    )
    try:
        with HTTP.open(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise AssertionError(f"{method} {path} failed: {exc.code} {detail}") from exc


def submit_sleep(
    farm: LocalFarm, name: str, tasks: int, duration: float, priority: int = 50
) -> str:
    """Submit a sleep job through the API and return its id."""
    job = {
        "name": name,
        "job_type": "sleep",
        "priority": priority,
        "settings": {"tasks": tasks, "duration": duration},
    }
    reply = api(farm, "POST", "/api/jobs", job)
    job_id: str = reply["job"]["id"]
    return job_id


def wait_for_job(
    farm: LocalFarm, job_id: str, done: Any, timeout: float = 30
) -> dict[str, Any]:
    """Poll the API until done(job) is true, and return that job."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = api(farm, "GET", f"/api/jobs/{job_id}")
        if done(job):
            return job
        time.sleep(0.2)
    raise AssertionError(
        f"job {job_id} did not reach the expected state in {timeout} s: {job}"
    )


def cancel_quietly(farm: LocalFarm, job_id: str) -> None:
    """Cancel a job that may have ended already, to free the shared workers."""
    job = api(farm, "GET", f"/api/jobs/{job_id}")
    if job["status"] not in ("completed", "failed", "canceled"):
        api(farm, "POST", f"/api/jobs/{job_id}/cancel", {})


def occupy_all_workers(farm: LocalFarm, name: str) -> str:
    """Submit a top-priority job that keeps each of the 3 workers busy."""
    job_id = submit_sleep(farm, name, 3, BLOCKING_SECONDS, priority=100)
    wait_for_job(farm, job_id, lambda j: j["task_counts"]["active"] == 3)
    return job_id


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFarm]:
    with LocalFarm(tmp_path_factory.mktemp("dashboard"), 3) as farm:
        asyncio.run(farm.wait_for_roles())
        yield farm


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"the dashboard tests need Chromium at {CHROMIUM}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--no-proxy-server"],
        )
        yield browser
        browser.close()


@pytest.fixture
def dashboard(farm: LocalFarm, browser: Browser) -> Iterator[Dashboard]:
    """A page in a fresh browser context, so that no token is stored yet."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    board = Dashboard(page, farm.api_url(0))

    def on_console(message: ConsoleMessage) -> None:
        # The browser logs every 4xx reply (a job without a frame yet, a change
        # the test expects to fail), so only script errors count.
        if message.type == "error" and "Failed to load resource" not in message.text:
            board.script_errors.append(message.text)

    def on_request(request: Request) -> None:
        # Playwright tags each listener with an attribute, which a bound
        # method of a built-in list cannot take.
        board.requests.append(request)

    page.on("console", on_console)
    page.on("pageerror", lambda error: board.script_errors.append(str(error)))
    page.on("request", on_request)
    yield board
    context.close()


def test_job_progress_and_cancel_live(farm: LocalFarm, dashboard: Dashboard) -> None:
    page = dashboard.page
    blocker = occupy_all_workers(farm, "blocker")
    short = long = None
    try:
        dashboard.open(f"#token={farm.token}")
        assert "token" not in page.url
        stored = page.evaluate("localStorage.getItem('flamenco-p2p.token')")
        assert stored == farm.token
        # A full page load would drop this variable.
        page.evaluate("window.dashboardMarker = 'kept'")

        # Farm overview: three healthy nodes, one server, every worker busy.
        rows = page.get_by_test_id("node-row")
        expect(rows).to_have_count(3)
        alive = page.locator("[data-testid=node-state][data-state=alive]")
        expect(alive).to_have_count(3)
        servers = page.locator("[data-testid=node-role][data-role=server]")
        expect(servers).to_have_count(1)
        expect(page.get_by_test_id("node-blender").first).to_have_text("5.0.1")
        expect(page.get_by_test_id("node-cpus").first).to_contain_text("CPU cores")
        expect(page.get_by_test_id("worker-task")).to_have_count(3)
        expect(page.get_by_test_id("worker-task").first).to_contain_text("sleep ")

        # A job submitted while the page is open shows up in the list.
        short = submit_sleep(farm, "short", 6, 0.5)
        row = page.locator(f"[data-testid=job-row][data-job-id='{short}']")
        expect(row).to_be_visible()
        expect(row.get_by_test_id("job-status")).to_have_text("queued")
        row.get_by_test_id("job-link").click()

        view = dashboard.job_view()
        expect(view.get_by_test_id("job-name")).to_have_text("short")
        cells = view.get_by_test_id("task-cell")
        expect(cells).to_have_count(6)
        expect(cells_with_status(view, "queued")).to_have_count(6)
        expect(view.get_by_test_id("job-progress")).to_have_attribute("value", "0")

        # The log panel of a task that has not run yet fills from log events.
        cells.first.click()
        log = view.get_by_test_id("task-log")
        expect(view.get_by_test_id("log-title")).to_have_text("sleep 0")
        expect(log.get_by_test_id("log-empty")).to_be_visible()
        # A log box lower than two lines shows whether new lines scroll into view.
        shrink = page.add_style_tag(
            content="[data-testid=task-log] { height: 1.5rem; }"
        )

        # Freeing the workers lets the short job run, and the page follows it live.
        api(farm, "POST", f"/api/jobs/{blocker}/cancel", {})
        expect(view.get_by_test_id("job-status")).to_have_text(
            "completed", timeout=30_000
        )
        expect(cells_with_status(view, "completed")).to_have_count(6)
        expect(view.get_by_test_id("job-progress")).to_have_attribute("value", "100")
        expect(view.get_by_test_id("log-task-status")).to_have_text("completed")
        # A sleep task logs one line when it starts and one when it ends.
        expect(log.get_by_test_id("log-line")).to_have_count(2, timeout=10_000)
        expect(log.get_by_test_id("log-line").last).to_have_text("slept 0.5 s")
        gap = log.evaluate("box => box.scrollHeight - box.scrollTop - box.clientHeight")
        assert log.evaluate("box => box.scrollHeight > box.clientHeight")
        assert gap <= 1
        log_loads = dashboard.api_requests(r"/api/tasks/[^/]+/log")
        assert len(log_loads) == 1, [r.url for r in log_loads]
        assert page.evaluate("window.dashboardMarker") == "kept"

        # The screenshot shows the page as people see it.
        shrink.evaluate("node => node.remove()")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-job-page.png"), full_page=True)

        # Cancel a long job with the button. Dismissing the dialog changes nothing.
        long = occupy_all_workers(farm, "long")
        page.get_by_test_id("back").click()
        long_row = page.locator(f"[data-testid=job-row][data-job-id='{long}']")
        long_row.get_by_test_id("job-link").click()
        expect(view.get_by_test_id("job-status")).to_have_text("active")
        dialog = page.get_by_test_id("confirm-dialog")
        view.get_by_test_id("action-cancel").click()
        expect(dialog).to_be_visible()
        dialog.get_by_test_id("confirm-cancel").click()
        expect(dialog).to_be_hidden()
        assert not dashboard.api_requests(rf"/api/jobs/{long}/cancel", "POST")
        view.get_by_test_id("action-cancel").click()
        dialog.get_by_test_id("confirm-ok").click()
        expect(view.get_by_test_id("job-status")).to_have_text(
            "canceled", timeout=20_000
        )
        expect(cells_with_status(view, "canceled")).to_have_count(3)
        assert len(dashboard.api_requests(rf"/api/jobs/{long}/cancel", "POST")) == 1
        assert page.evaluate("window.dashboardMarker") == "kept"
        assert not dashboard.script_errors
    finally:
        for job_id in (blocker, short, long):
            if job_id:
                cancel_quietly(farm, job_id)


def test_overview_names_farm_and_server(farm: LocalFarm, dashboard: Dashboard) -> None:
    page = dashboard.page
    dashboard.open()
    expect(page.get_by_test_id("farm-name")).to_have_text(farm.farm)
    server_row = page.locator("[data-testid=node-row]").filter(
        has=page.locator("[data-testid=node-role][data-role=server]")
    )
    server_id = server_row.get_attribute("data-node-id")
    assert server_id
    expect(page.get_by_test_id("farm-server")).to_contain_text(server_id)
    expect(page.get_by_test_id("farm-manager")).to_contain_text("lab: ")
    assert not dashboard.script_errors


def test_large_job_loads_one_task_page(farm: LocalFarm, dashboard: Dashboard) -> None:
    job_id = submit_sleep(farm, "ten thousand", 10_000, 60, priority=0)
    try:
        dashboard.open(f"#/jobs/{job_id}")
        view = dashboard.job_view()
        cells = view.get_by_test_id("task-cell")
        expect(cells).to_have_count(TASK_PAGE_LIMIT)
        total = view.get_by_test_id("task-total")
        expect(total).to_have_attribute("data-total", "10000")
        assert re.sub(r"\D", "", total.inner_text()) == "10000"
        expect(cells.first).to_have_attribute("title", re.compile(r"^sleep 0: "))

        task_requests = dashboard.api_requests(rf"/api/jobs/{job_id}/tasks")
        assert len(task_requests) == 1, [r.url for r in task_requests]
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(task_requests[0].url).query)
        assert query["limit"] == ["200"]
        assert query["offset"] == ["0"]

        view.get_by_test_id("tasks-next").click()
        expect(cells.first).to_have_attribute("title", re.compile(r"^sleep 200: "))
        expect(cells).to_have_count(TASK_PAGE_LIMIT)
        expect(view.get_by_test_id("tasks-prev")).to_be_enabled()

        task_requests = dashboard.api_requests(rf"/api/jobs/{job_id}/tasks")
        for request in task_requests:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.url).query)
            assert int(query["limit"][0]) <= TASK_PAGE_LIMIT, request.url
        offsets = [
            urllib.parse.parse_qs(urllib.parse.urlsplit(r.url).query)["offset"][0]
            for r in task_requests
        ]
        assert offsets == ["0", "200"]
        assert not dashboard.script_errors
    finally:
        cancel_quietly(farm, job_id)


def test_job_names_shown_exactly(farm: LocalFarm, dashboard: Dashboard) -> None:
    page = dashboard.page
    accented = "Épisode 01 \N{EN DASH} plan 3"
    markup = '<img src=x onerror="window.injected = 1"><b>plan 4</b>'
    accented_id = submit_sleep(farm, accented, 1, 0)
    markup_id = submit_sleep(farm, markup, 1, 0)

    dashboard.open()
    accented_row = page.locator(f"[data-testid=job-row][data-job-id='{accented_id}']")
    expect(accented_row.get_by_test_id("job-link")).to_have_text(accented)
    markup_row = page.locator(f"[data-testid=job-row][data-job-id='{markup_id}']")
    expect(markup_row.get_by_test_id("job-link")).to_have_text(markup)
    assert markup_row.locator("img, b").count() == 0
    assert page.evaluate("window.injected") is None

    accented_row.get_by_test_id("job-link").click()
    view = dashboard.job_view()
    expect(view.get_by_test_id("job-name")).to_have_text(accented)
    assert page.title().startswith(accented)
    name = view.get_by_test_id("job-name").evaluate("node => node.textContent")
    assert name == accented
    assert not dashboard.script_errors


def test_changes_explain_token_and_conflicts(
    farm: LocalFarm, dashboard: Dashboard
) -> None:
    page = dashboard.page
    job_id = occupy_all_workers(farm, "needs a token")
    try:
        # Without the event stream the page cannot see the cancel below, so its
        # Pause button stays enabled and the farm returns 409.
        page.route("**/api/events*", lambda route: route.abort())
        page.goto(f"{dashboard.base_url}/#/jobs/{job_id}")
        view = dashboard.job_view()
        expect(view.get_by_test_id("job-status")).to_have_text("active")
        expect(page.get_by_test_id("connection")).not_to_have_attribute(
            "data-state", "live"
        )
        expect(page.get_by_test_id("token-summary")).to_have_text("No token")

        dialog = page.get_by_test_id("confirm-dialog")
        view.get_by_test_id("action-pause").click()
        # A pause stops running tasks, so the page requests a confirmation.
        expect(dialog).to_contain_text("running tasks stop")
        dialog.get_by_test_id("confirm-ok").click()
        message = page.locator("[data-testid=message][data-kind=error]").last
        expect(message).to_contain_text("flamenco-p2p dashboard")
        assert api(farm, "GET", f"/api/jobs/{job_id}")["status"] == "active"

        page.get_by_test_id("token-input").fill(farm.token)
        page.get_by_test_id("token-save").click()
        expect(page.get_by_test_id("token-summary")).to_have_text("Token set")

        api(farm, "POST", f"/api/jobs/{job_id}/cancel", {})
        wait_for_job(farm, job_id, lambda j: j["status"] == "canceled")
        view.get_by_test_id("action-pause").click()
        dialog.get_by_test_id("confirm-ok").click()
        message = page.locator("[data-testid=message][data-kind=error]").last
        expect(message).to_contain_text("409")
        expect(message).to_contain_text("canceled")
        # After the conflict the page loads the job again.
        expect(view.get_by_test_id("job-status")).to_have_text("canceled")
        expect(view.get_by_test_id("action-pause")).to_be_disabled()
        assert not dashboard.script_errors
    finally:
        cancel_quietly(farm, job_id)
