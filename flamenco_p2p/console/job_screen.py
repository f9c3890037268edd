"""The job screen: one job's details, a page of its tasks, and the attempts
and log of the task under the cursor, which follows live while it runs."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.timer import Timer
from textual.widgets import Header, Log, Static

from flamenco_p2p.api.client import ApiError
from flamenco_p2p.console.actions import JobActionScreen
from flamenco_p2p.console.format import (
    STATUS_STYLES,
    UNKNOWN,
    clock_time,
    count_summary,
    duration,
    parse_time,
    plain,
    progress_bar,
    short_id,
    status_text,
)
from flamenco_p2p.console.model import Job
from flamenco_p2p.console.row_list import Column, RowList
from flamenco_p2p.console.widgets import Banner, ConfirmScreen, KeyBar

logger = logging.getLogger(__name__)

TASK_PAGE = 200
"""Tasks per page of the tasks table."""
LOG_TAIL = 200
"""Log lines fetched when a task is selected; later lines come from events."""
LOG_KEEP = 1000
"""Log lines the log view keeps: as many as a node keeps of each task."""
SELECT_DELAY = 0.15
"""Seconds the cursor must rest on a task before its attempts and log are
fetched, so that scrolling through tasks sends no requests."""
PAGE_DELAY = 0.3
"""Seconds that a burst of ``tasks`` events may take before the page is fetched
again once."""

TASK_COLUMNS = (
    Column("index", "#", 5, "right"),
    Column("status", "Status", 11),
    Column("attempts", "Att", 3, "right"),
    Column("progress", "Progress", 10),
    Column("name", "Name", 14),
    Column("worker", "Worker", 8),
)
REQUEUE_ASKS = frozenset({"completed"})
"""Task statuses whose requeue throws finished work away, so it is confirmed."""


class JobScreen(JobActionScreen):
    """One job, its tasks TASK_PAGE at a time, and the selected task."""

    SUB_TITLE = "Job"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding(
            "left_square_bracket",
            "page(-1)",
            "Page",
            key_display="[",
            group=Binding.Group("Page"),
        ),
        Binding(
            "right_square_bracket",
            "page(1)",
            "Page",
            key_display="]",
            group=Binding.Group("Page"),
        ),
        Binding("t", "requeue_task", "Requeue task"),
    ]

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.page = 0
        self.total_tasks: int | None = None
        self.selected_task: str | None = None
        self._tasks: dict[str, dict[str, Any]] = {}
        self._select_timer: Timer | None = None
        self._page_timer: Timer | None = None
        self._last_log_id = 0
        self._log_ready = False
        self._log_backlog: list[dict[str, Any]] = []
        self._log_attempt: str | None = None
        self._leaving = False
        """Set when the screen starts to close, after which nothing may touch
        its widgets: Textual removes them before the screen itself."""

    def compose(self) -> ComposeResult:
        yield Header(icon="")
        yield Banner(classes="banner")
        yield Static(id="job-details")
        with Horizontal(id="job-body"):
            with Vertical(id="tasks-pane"):
                yield Static(id="tasks-page")
                yield RowList(TASK_COLUMNS, self._task_row, id="tasks")
            with Vertical(id="task-pane"):
                yield Static(id="task-title")
                yield Static(id="attempts")
                yield Log(id="log", max_lines=LOG_KEEP, auto_scroll=True)
        yield KeyBar()

    def on_mount(self) -> None:
        if self._leaving:
            # Escape came before the screen was mounted.
            return
        super().on_mount()
        self.tasks_table.focus()
        self._show_details()
        self._show_page_label()
        self.query_one("#task-title", Static).update(
            Text("Select a task to see its attempts and log.", style="dim")
        )
        self._fetch_page()

    def current_job(self) -> Job | None:
        return self.console.state.jobs.get(self.job_id)

    @property
    def tasks_table(self) -> RowList:
        """The table of the page of tasks."""
        return self.query_one("#tasks", RowList)

    # Events ----------------------------------------------------------------

    def farm_event(self, kind: str, data: Any) -> None:
        if self._leaving:
            return
        if kind == "job" and data.get("id") == self.job_id:
            self._show_details()
        elif kind == "job_deleted" and data.get("id") == self.job_id:
            self.notify("The job was deleted.", severity="warning", timeout=5)
            self.leave()
        elif kind == "task" and data.get("job_id") == self.job_id:
            self._show_task(data)
        elif kind == "tasks" and data.get("job_id") == self.job_id:
            if self._page_timer is None:
                self._page_timer = self.set_timer(PAGE_DELAY, self._fetch_page)
        elif kind == "log" and data.get("task_id") == self.selected_task:
            self._add_log_lines(list(data.get("lines", [])), data.get("attempt_id"))

    def farm_reloaded(self) -> None:
        if self._leaving:
            return
        if self.job_id not in self.console.state.jobs:
            self.notify("The job is gone from the farm.", severity="warning")
            self.leave()
            return
        self._show_details()
        self._fetch_page()
        if self.selected_task is not None:
            self.run_worker(
                self._catch_up_log(self.selected_task), group="log", exclusive=True
            )

    # Details ---------------------------------------------------------------

    def _show_details(self) -> None:
        job = self.current_job()
        details = self.query_one("#job-details", Static)
        if job is None:
            details.update(Text(f"Job {self.job_id}: not known yet", style="dim"))
            return
        zone = self.console.clock.now().tzinfo
        text = Text()
        text.append(plain(job.get("name", "")), style="bold")
        text.append("  ")
        text.append_text(status_text(str(job.get("status", ""))))
        text.append(f"  priority {job.get('priority')}")
        text.append(f"  {plain(job.get('job_type', ''))}", style="dim")
        text.append(f"  created {clock_time(job.get('created'), zone)}", style="dim")
        text.append("\n")
        text.append_text(progress_bar(float(job.get("progress", 0.0)), 20))
        counts = job.get("task_counts") or {}
        text.append(
            f"  {counts.get('completed', 0):,}/{job.get('tasks_total', 0):,} tasks"
        )
        if job.get("frames_total"):
            text.append(f"  {job['frames_done']:,}/{job['frames_total']:,} frames")
        remaining = self.console.state.remaining(self.job_id)
        text.append("  time left ", style="dim")
        text.append(duration(remaining) if remaining is not None else UNKNOWN)
        text.append("\n")
        text.append_text(count_summary(counts, STATUS_STYLES))
        text.append(f"  id {job['id']}", style="dim")
        if job.get("error"):
            text.append("\nerror: ", style="bold red")
            text.append(plain(job["error"]))
        details.update(text)

    # Tasks -----------------------------------------------------------------

    def _fetch_page(self) -> None:
        if self._page_timer is not None:
            self._page_timer.stop()
            self._page_timer = None
        self.run_worker(self._load_page(self.page), group="page", exclusive=True)

    async def _load_page(self, page: int) -> None:
        try:
            reply = await self.console.source.tasks(
                self.job_id, limit=TASK_PAGE, offset=page * TASK_PAGE
            )
        except ApiError as exc:
            self.notify(exc.message, title="Fetching tasks failed", severity="error")
            return
        if self._leaving:
            return
        self.total_tasks = int(reply["total"])
        self._fill_tasks(list(reply["tasks"]))
        self._show_page_label()

    def _fill_tasks(self, tasks: list[dict[str, Any]]) -> None:
        """Replace the rows with one page of tasks, keeping the cursor's row."""
        self._tasks = {str(task["id"]): task for task in tasks}
        table = self.tasks_table
        for task_id in self._tasks:
            # A fetched task may differ from the one drawn before.
            table.refresh_key(task_id)
        table.set_keys(list(self._tasks))

    def _show_task(self, task: dict[str, Any]) -> None:
        """Update the row of a task on this page, and the panel if it is selected."""
        task_id = str(task["id"])
        if task_id not in self._tasks:
            return
        previous = self._tasks[task_id]
        self._tasks[task_id] = task
        self.tasks_table.refresh_key(task_id)
        if task_id == self.selected_task and (
            previous.get("status") != task.get("status")
            or previous.get("attempt_id") != task.get("attempt_id")
        ):
            self.run_worker(
                self._load_attempts(task_id), group="attempts", exclusive=True
            )

    def _task_row(self, task_id: str) -> list[Text]:
        task = self._tasks.get(task_id)
        if task is None:
            return [Text("") for _column in TASK_COLUMNS]
        return self._task_cells(task)

    def _task_cells(self, task: dict[str, Any]) -> list[Text]:
        attempts = int(task.get("attempts", 0))
        failures = int(task.get("failures", 0))
        attempt_text = Text(str(attempts))
        if failures:
            attempt_text.stylize("bold red")
        return [
            Text(str(task.get("index", ""))),
            status_text(str(task.get("status", ""))),
            attempt_text,
            progress_bar(float(task.get("progress") or 0.0), 5),
            Text(plain(task.get("name", ""))),
            Text(short_id(task.get("worker_id")), style="dim"),
        ]

    def _show_page_label(self) -> None:
        label = self.query_one("#tasks-page", Static)
        if self.total_tasks is None:
            label.update(Text("Tasks: fetching\u2026", style="dim"))
            return
        pages = max(1, -(-self.total_tasks // TASK_PAGE))
        first = self.page * TASK_PAGE + 1 if self.total_tasks else 0
        last = min(self.total_tasks, (self.page + 1) * TASK_PAGE)
        text = Text(f"Tasks {first:,}\u2013{last:,} of {self.total_tasks:,}")
        text.append(f"  page {self.page + 1}/{pages} ([ ])", style="dim")
        label.update(text)

    def action_page(self, step: int) -> None:
        """Show the previous or the next page of tasks."""
        if self.total_tasks is None:
            return
        pages = max(1, -(-self.total_tasks // TASK_PAGE))
        page = min(max(self.page + step, 0), pages - 1)
        if page == self.page:
            return
        self.page = page
        self.tasks_table.cursor = 0
        self._show_page_label()
        self._fetch_page()

    def action_back(self) -> None:
        """Go back to the jobs screen."""
        self.leave()

    def leave(self) -> None:
        """Leave the screen, after stopping its fetches, timers and events.

        A reply or an event that came while Textual removes the widgets would
        find none of them, so nothing may reach the widgets from here on.
        """
        if self._leaving:
            return
        self._leaving = True
        self.console.remove_view(self)
        self.workers.cancel_node(self)
        for timer in (self._select_timer, self._page_timer):
            if timer is not None:
                timer.stop()
        self.dismiss()

    # The selected task -----------------------------------------------------

    def on_row_list_highlighted(self, event: RowList.Highlighted) -> None:
        if event.row_list.id != "tasks":
            return
        task_id = event.key
        if task_id == self.selected_task:
            return
        if self._select_timer is not None:
            self._select_timer.stop()
        self._select_timer = self.set_timer(
            SELECT_DELAY, lambda: self.select_task(task_id)
        )

    def select_task(self, task_id: str) -> None:
        """Show a task's attempts and log, and follow the log from now on."""
        self._select_timer = None
        if self._leaving or task_id == self.selected_task:
            return
        self.selected_task = task_id
        self._log_ready = False
        self._log_backlog = []
        self._log_attempt = None
        self._last_log_id = 0
        log = self.query_one("#log", Log)
        log.clear()
        task = self._tasks.get(task_id, {"id": task_id})
        title = Text("Task ", style="dim")
        title.append(plain(task.get("name", task_id)), style="bold")
        title.append(f"  {task_id}", style="dim")
        self.query_one("#task-title", Static).update(title)
        self.run_worker(self._load_attempts(task_id), group="attempts", exclusive=True)
        self.run_worker(self._load_log(task_id), group="log", exclusive=True)

    async def _load_attempts(self, task_id: str) -> None:
        try:
            reply = await self.console.source.task(task_id)
        except ApiError as exc:
            self.notify(exc.message, title="Fetching the task failed", severity="error")
            return
        if self._leaving or task_id != self.selected_task:
            return
        attempts = list(reply.get("attempts", []))
        text = Text()
        for number, attempt in enumerate(attempts, start=1):
            if number > 1:
                text.append("\n")
            text.append_text(self._attempt_line(number, attempt))
        if not attempts:
            text.append("No attempts yet.", style="dim")
        self.query_one("#attempts", Static).update(text)

    def _attempt_line(self, number: int, attempt: dict[str, Any]) -> Text:
        """Return one attempt: number, status, node, start, run time and error."""
        clock = self.console.clock
        started = parse_time(attempt.get("started"))
        ended = parse_time(attempt.get("ended"))
        took = UNKNOWN
        if started is not None:
            until = ended if ended is not None else clock.now()
            took = duration((until - started).total_seconds())
        text = Text(f"{number}. ", style="dim")
        text.append_text(status_text(str(attempt.get("status", ""))))
        text.append(f" on {short_id(attempt.get('node_id'))}")
        start = clock_time(attempt.get("started"), clock.now().tzinfo, with_date=False)
        text.append(f" at {start}, {took}", style="dim")
        if attempt.get("error"):
            text.append(f": {plain(attempt['error'])}", style="red")
        return text

    async def _load_log(self, task_id: str) -> None:
        """Show the last LOG_TAIL lines, then the lines that came meanwhile."""
        try:
            reply = await self.console.source.task_log(task_id, tail=LOG_TAIL)
        except ApiError as exc:
            self.notify(exc.message, title="Fetching the log failed", severity="error")
            return
        if self._leaving or task_id != self.selected_task:
            return
        self._write_log(list(reply.get("lines", [])))
        self._last_log_id = max(self._last_log_id, int(reply.get("last_id") or 0))
        self._log_ready = True
        backlog, self._log_backlog = self._log_backlog, []
        self._write_log(backlog)

    async def _catch_up_log(self, task_id: str) -> None:
        """Fetch the lines that the events missed while the console was away."""
        after = self._last_log_id
        try:
            reply = await self.console.source.task_log(
                task_id, after=after, limit=LOG_KEEP
            )
        except ApiError as exc:
            logger.debug("catching up on the log of %s failed: %s", task_id, exc)
            return
        if not self._leaving and task_id == self.selected_task:
            self._write_log(list(reply.get("lines", [])))

    def _add_log_lines(
        self, lines: list[dict[str, Any]], attempt_id: str | None
    ) -> None:
        for line in lines:
            line.setdefault("attempt_id", attempt_id)
        if not self._log_ready:
            # The fetch of the tail has not come back yet: its reply and these
            # lines may overlap, so they wait and are deduplicated by id.
            self._log_backlog.extend(lines)
            return
        self._write_log(lines)

    def _write_log(self, lines: list[dict[str, Any]]) -> None:
        """Append the lines newer than the last one shown, marking each attempt."""
        zone = self.console.clock.now().tzinfo
        out: list[str] = []
        for line in lines:
            line_id = int(line.get("id", 0))
            if line_id <= self._last_log_id:
                continue
            attempt = line.get("attempt_id")
            if attempt and attempt != self._log_attempt:
                self._log_attempt = attempt
                out.append(f"\u2500\u2500 attempt {short_id(attempt)} \u2500\u2500")
            stamp = clock_time(line.get("created"), zone, with_date=False)
            out.append(f"{stamp} {plain(line.get('line', ''))}")
            self._last_log_id = max(self._last_log_id, line_id)
        if out:
            self.query_one("#log", Log).write_lines(out)

    # Keys ------------------------------------------------------------------

    def action_requeue_task(self) -> None:
        """Run the task under the cursor again; a completed one after a
        confirmation."""
        task_id = self.tasks_table.selected_key
        task = None if task_id is None else self._tasks.get(task_id)
        if task is None:
            return
        source = self.console.source

        def send() -> None:
            assert task is not None
            self.console.change_task(task, lambda: source.requeue_task(task["id"]))

        if task.get("status") not in REQUEUE_ASKS:
            send()
            return
        question = (
            f"Requeue task {plain(task.get('name', task['id']))}?\n\nIt is"
            " completed; it runs again and its frames are rendered again."
        )
        self.app.push_screen(
            ConfirmScreen(question, "Requeue the task"),
            lambda confirmed: send() if confirmed else None,
        )
