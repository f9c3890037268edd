"""The jobs screen: every job of the farm, filtered and sorted, kept live.

The screen keeps the ids of the jobs that pass the filter in order, and a
RowList draws the rows of them that fit the screen. Events update the
cells of the rows on screen at once; a new job, a removed one or a changed
sort key puts the list in order again after SORT_DELAY, so that a burst of
events costs one sort.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.timer import Timer
from textual.widgets import Header, Input, Static

from flamenco_p2p.console.actions import JobActionScreen
from flamenco_p2p.console.format import (
    UNKNOWN,
    clock_time,
    duration,
    plain,
    progress_bar,
    short_id,
    status_text,
)
from flamenco_p2p.console.model import Job, JobFilter
from flamenco_p2p.console.row_list import Column, RowList
from flamenco_p2p.console.widgets import Banner, KeyBar

JOB_COLUMNS = (
    Column("name", "Name", 24),
    Column("status", "Status", 16),
    Column("progress", "Progress", 15),
    Column("eta", "Time left", 9),
    Column("priority", "Pri", 3, "right"),
    Column("tasks", "Tasks", 11),
    Column("created", "Created", 11),
    Column("id", "ID", 8),
)
"""The columns of the jobs table."""

SORT_DELAY = 0.2
"""Seconds that a burst of events may take before the table is re-sorted once."""
FILTER_DELAY = 0.15
"""Seconds after the last keystroke in the filter before the table is rebuilt."""
ETA_EVERY = 1.0
"""Seconds between updates of the time-left column."""


class JobsScreen(JobActionScreen):
    """Every job of the farm in one table."""

    SUB_TITLE = "Jobs"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_job", "Open"),
        Binding("slash", "focus_filter", "Find", key_display="/"),
        Binding("f", "next_status", "Status filter"),
        Binding("s", "next_order", "Sort"),
        Binding("S", "reverse_order", "Reverse sort", show=False),
        Binding("escape", "focus_table", "Back to the table", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.filter = JobFilter()
        self._sort_keys: dict[str, tuple[Any, ...]] = {}
        """The sort key of each listed job, as the list was last sorted."""
        self._sort_timer: Timer | None = None
        self._filter_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Header(icon="")
        yield Banner(classes="banner")
        with Horizontal(id="job-bar"):
            yield Input(placeholder="find by name or id (/)", id="find")
            yield Static(id="jobs-summary")
        yield RowList(JOB_COLUMNS, self._row_of, id="jobs")
        yield KeyBar()

    def on_mount(self) -> None:
        super().on_mount()
        self.table.focus()
        self.rebuild()
        self.set_interval(ETA_EVERY, self._show_estimates)

    @property
    def table(self) -> RowList:
        """The jobs table."""
        return self.query_one("#jobs", RowList)

    @property
    def listed(self) -> list[str]:
        """The ids of the jobs that pass the filter, in the table's order."""
        return self.table.keys

    def current_job(self) -> Job | None:
        job_id = self.cursor_job_id()
        return None if job_id is None else self.console.state.jobs.get(job_id)

    def cursor_job_id(self) -> str | None:
        """Return the id of the job under the cursor, or None."""
        return self.table.selected_key

    def select_job(self, job_id: str) -> bool:
        """Put the cursor on a job, scrolling to it; False if it is not listed."""
        return self.table.select(job_id)

    # Events ----------------------------------------------------------------

    def farm_event(self, kind: str, data: Any) -> None:
        if kind == "job":
            self._show_job(self.console.state.jobs.get(str(data["id"]), data))
        elif kind == "job_deleted":
            self._drop_job(str(data["id"]))

    def farm_reloaded(self) -> None:
        self.rebuild()

    def _show_job(self, job: Job) -> None:
        """Update the row of one job, and list or drop it by the filter."""
        job_id = str(job["id"])
        listed = job_id in self._sort_keys
        if not self.filter.matches(job):
            if listed:
                self._drop_job(job_id)
            return
        if not listed or self._sort_keys[job_id] != self.filter.sort_key(job):
            self._sort_soon()
        if listed:
            self.table.refresh_key(job_id)

    def _drop_job(self, job_id: str) -> None:
        if job_id not in self._sort_keys:
            return
        del self._sort_keys[job_id]
        table = self.table
        keys = [key for key in table.keys if key != job_id]
        table.set_keys(keys, keep=table.selected_key)
        self._show_summary()

    def _show_estimates(self) -> None:
        """Update the time left of the active jobs on screen, which changes
        every second."""
        jobs = self.console.state.jobs
        table = self.table
        for job_id in table.visible_keys():
            job = jobs.get(job_id)
            if job is not None and job.get("status") == "active":
                table.refresh_key(job_id)

    # Rows ------------------------------------------------------------------

    def _row_of(self, job_id: str) -> list[Text]:
        job = self.console.state.jobs.get(job_id)
        if job is None:
            return [Text("")] * (len(JOB_COLUMNS) - 1) + [Text(short_id(job_id))]
        return self._job_cells(job)

    def _job_cells(self, job: Job) -> list[Text]:
        counts = job.get("task_counts") or {}
        tasks = Text(f"{counts.get('completed', 0)}/{job.get('tasks_total', 0)}")
        failed = int(counts.get("failed", 0))
        if failed:
            tasks.append(f" {failed}!", style="bold red")
        zone = self.console.clock.now().tzinfo
        return [
            Text(plain(job.get("name", ""))),
            status_text(str(job.get("status", ""))),
            progress_bar(float(job.get("progress", 0.0)), 10),
            self._eta_cell(job),
            Text(str(job.get("priority", ""))),
            tasks,
            Text(clock_time(job.get("created"), zone), style="dim"),
            Text(short_id(str(job["id"])), style="dim"),
        ]

    def _eta_cell(self, job: Job) -> Text:
        remaining = self.console.state.remaining(str(job["id"]))
        if remaining is None:
            return Text(UNKNOWN, style="dim")
        return Text(duration(remaining))

    def rebuild(self) -> None:
        """List the jobs that pass the filter again, in order, keeping the
        cursor's job."""
        if self._sort_timer is not None:
            self._sort_timer.stop()
            self._sort_timer = None
        table = self.table
        jobs = list(filter(self.filter.matches, self.console.state.jobs.values()))
        jobs.sort(key=self.filter.sort_key, reverse=self.filter.descending)
        self._sort_keys = {str(job["id"]): self.filter.sort_key(job) for job in jobs}
        table.set_keys(list(self._sort_keys), keep=table.selected_key)
        self._show_summary()

    def _sort_soon(self) -> None:
        if self._sort_timer is None:
            self._sort_timer = self.set_timer(SORT_DELAY, self.rebuild)

    def _show_summary(self) -> None:
        arrow = "\u2193" if self.filter.descending else "\u2191"
        total = len(self.console.state.jobs)
        table = self.table
        listed = len(table.keys)
        text = Text(f"{listed:,} of {total:,} jobs", style="bold")
        if listed > table.row_count:
            last = min(listed, table.top + table.row_count)
            text.append(f"  rows {table.top + 1:,}\u2013{last:,}", style="dim")
        text.append("  status ", style="dim")
        text.append(self.filter.status)
        text.append(" (f)  sort ", style="dim")
        text.append(f"{self.filter.order} {arrow}")
        text.append(" (s, S)", style="dim")
        self.query_one("#jobs-summary", Static).update(text)

    # Keys ------------------------------------------------------------------

    def on_row_list_selected(self, event: RowList.Selected) -> None:
        self.console.open_job(event.key)

    def on_row_list_highlighted(self, event: RowList.Highlighted) -> None:
        # The summary names the rows on screen.
        self._show_summary()

    def action_open_job(self) -> None:
        """Show the job under the cursor with its tasks."""
        job_id = self.cursor_job_id()
        if job_id is not None:
            self.console.open_job(job_id)

    def action_focus_filter(self) -> None:
        """Move the focus to the find field."""
        self.query_one("#find", Input).focus()

    def action_focus_table(self) -> None:
        """Move the focus back to the table."""
        self.table.focus()

    def action_next_status(self) -> None:
        """List the jobs of the next status filter."""
        self.filter.next_status()
        self.rebuild()

    def action_next_order(self) -> None:
        """Sort by the next order: created, priority, progress, name."""
        self.filter.next_order()
        self.rebuild()

    def action_reverse_order(self) -> None:
        """Reverse the order."""
        self.filter.descending = not self.filter.descending
        self.rebuild()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter.text = event.value
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._filter_timer = self.set_timer(FILTER_DELAY, self._apply_filter)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._apply_filter()
        self.table.focus()

    def _apply_filter(self) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
            self._filter_timer = None
        self.rebuild()
