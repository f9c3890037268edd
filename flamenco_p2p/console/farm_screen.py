"""The farm screen: the farm's roles and counts, and one row per member."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.timer import Timer
from textual.widgets import DataTable, Header, Static

from flamenco_p2p.console.format import (
    HEALTH_STYLES,
    MANAGER_MARK,
    MANAGER_STYLE,
    SERVER_MARK,
    SERVER_STYLE,
    STATUS_STYLES,
    UNKNOWN,
    age,
    count_summary,
    health_text,
    plain,
    progress_bar,
    roles_text,
    short_id,
)
from flamenco_p2p.console.widgets import GLOBAL_BINDINGS, Banner, ConsoleScreen, KeyBar

NODE_COLUMNS = (
    ("mark", "", 2),
    ("node", "Node", 8),
    ("site", "Site", 10),
    ("state", "Health", 7),
    ("roles", "Roles", 28),
    ("workers", "Busy", 4),
    ("task", "Current task", 26),
    ("gpus", "GPUs", 16),
    ("cores", "CPU", 3),
    ("blender", "Blender", 7),
    ("seen", "Seen", 8),
    ("address", "Address", 15),
)
"""Key, header and width of each column of the members table."""

AGES_EVERY = 1.0
"""Seconds between updates of the "seen" column."""
SUMMARY_DELAY = 0.25
"""Seconds that a burst of job events may take before the counts are redrawn,
so that a thousand events redraw them once, not a thousand times."""


class FarmScreen(ConsoleScreen):
    """The farm's name, server, managers and counts, its members, and the
    details of the member under the cursor."""

    SUB_TITLE = "Farm"
    BINDINGS: ClassVar[list[BindingType]] = GLOBAL_BINDINGS

    def __init__(self) -> None:
        super().__init__()
        self._cells: dict[str, tuple[str, ...]] = {}
        self._summary_timer: Timer | None = None
        self._cursor_node: str | None = None

    def compose(self) -> ComposeResult:
        yield Header(icon="")
        yield Banner(classes="banner")
        yield Static(id="farm-summary")
        yield DataTable(id="nodes", cursor_type="row", zebra_stripes=True)
        yield Static(id="node-details")
        yield KeyBar()

    def on_mount(self) -> None:
        super().on_mount()
        table = self.query_one("#nodes", DataTable)
        for key, label, width in NODE_COLUMNS:
            table.add_column(label, key=key, width=width)
        self.farm_reloaded()
        self.set_interval(AGES_EVERY, self._show_nodes)

    def farm_event(self, kind: str, data: Any) -> None:
        if kind == "nodes":
            self._show_nodes()
            self._show_summary()
        elif kind in ("job", "job_deleted", "farm") and self._summary_timer is None:
            self._summary_timer = self.set_timer(SUMMARY_DELAY, self._show_summary)

    def farm_reloaded(self) -> None:
        self._show_nodes()
        self._show_summary()

    # Members ---------------------------------------------------------------

    def _show_nodes(self) -> None:
        """Update the members table in place: changed cells, new and gone rows."""
        table = self.query_one("#nodes", DataTable)
        nodes = self.console.state.nodes
        seen = set()
        for node in nodes:
            node_id = str(node["node_id"])
            seen.add(node_id)
            cells = self._node_cells(node)
            texts = tuple(cell.plain for cell in cells)
            if node_id not in self._cells:
                table.add_row(*cells, key=node_id)
            else:
                old = self._cells[node_id]
                keys = [key for key, _label, _width in NODE_COLUMNS]
                for key, cell, text, before in zip(
                    keys, cells, texts, old, strict=True
                ):
                    if text != before:
                        table.update_cell(node_id, key, cell)
            self._cells[node_id] = texts
        for node_id in set(self._cells) - seen:
            table.remove_row(node_id)
            del self._cells[node_id]
        self._show_node_details()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is not None:
            self._cursor_node = str(event.row_key.value)
            self._show_node_details()

    def _show_node_details(self) -> None:
        """Show every field of the member under the cursor, which the table's
        columns may not fit."""
        state = self.console.state
        nodes = {str(node["node_id"]): node for node in state.nodes}
        node = nodes.get(self._cursor_node or "")
        if node is None and state.nodes:
            node = state.nodes[0]
        details = self.query_one("#node-details", Static)
        if node is None:
            details.update(Text("No members known yet.", style="dim"))
            return
        details.update(self._node_details(node))

    def _node_details(self, node: dict[str, Any]) -> Text:
        now = self.console.state.clock.now()
        text = Text()
        text.append("Node ", style="dim")
        text.append(str(node["node_id"]), style="bold")
        text.append(f"  site {plain(node.get('site', ''))}", style="dim")
        text.append(f"  {plain(node.get('address', ''))}  ")
        text.append_text(health_text(str(node.get("state", ""))))
        text.append(f", seen {age(node.get('last_seen'), now)}", style="dim")
        if node.get("this_node"):
            text.append("  (the console's node)", style="dim")
        text.append("\nRoles ", style="dim")
        text.append_text(roles_text(list(node.get("roles", []))))
        capabilities = node.get("capabilities") or {}
        gpus = ", ".join(plain(gpu) for gpu in capabilities.get("gpu_types", []))
        tags = ", ".join(plain(tag) for tag in capabilities.get("tags", []))
        text.append("\nMachine ", style="dim")
        text.append(
            f"{capabilities.get('cpu_cores', UNKNOWN)} CPU cores"
            f" \u00b7 GPUs {gpus or 'none'}"
            f" \u00b7 Blender {plain(capabilities.get('blender_version') or UNKNOWN)}"
            f" \u00b7 tags {tags or 'none'}"
        )
        for worker in node.get("workers", []):
            slot = str(worker.get("worker_id", "")).rpartition(".")[2]
            text.append(f"\nWorker {slot} ", style="dim")
            text.append(plain(worker.get("status", "")) + " ")
            task = worker.get("current_task")
            if task:
                text.append_text(self._task_cell([worker]))
        return text

    def _node_cells(self, node: dict[str, Any]) -> list[Text]:
        state = self.console.state
        server = state.server()
        roles = list(node.get("roles", []))
        role_names = {str(role.get("role", "")) for role in roles}
        is_server = server is not None and server["node_id"] == node["node_id"]
        is_manager = any(name.startswith("manager:") for name in role_names)
        mark = Text()
        if is_server:
            mark.append(SERVER_MARK, style=SERVER_STYLE)
        if is_manager:
            mark.append(MANAGER_MARK, style=MANAGER_STYLE)
        node_style = ""
        if is_server:
            node_style = SERVER_STYLE
        elif is_manager:
            node_style = MANAGER_STYLE
        capabilities = node.get("capabilities") or {}
        gpus = ", ".join(plain(gpu) for gpu in capabilities.get("gpu_types", []))
        workers = list(node.get("workers", []))
        busy = [w for w in workers if w.get("current_task")]
        return [
            mark,
            Text(short_id(node["node_id"]), style=node_style),
            Text(plain(node.get("site", ""))),
            health_text(str(node.get("state", ""))),
            roles_text(roles),
            Text(f"{len(busy)}/{node.get('worker_slots', len(workers))}"),
            self._task_cell(busy),
            Text(gpus or "none", style="" if gpus else "dim"),
            Text(str(capabilities.get("cpu_cores", UNKNOWN)), justify="right"),
            Text(plain(capabilities.get("blender_version") or UNKNOWN)),
            Text(age(node.get("last_seen"), state.clock.now()), style="dim"),
            Text(plain(node.get("address", ""))),
        ]

    def _task_cell(self, busy: list[dict[str, Any]]) -> Text:
        """Return the first running task of a member with its progress bar."""
        if not busy:
            return Text("idle", style="dim")
        task = busy[0]["current_task"]
        job_name = self.console.state.job_name(str(task.get("job_id")))
        text = progress_bar(float(task.get("progress") or 0.0), 6)
        text.append(" ")
        if job_name:
            text.append(plain(job_name) + " \u203a ", style="bold")
        text.append(plain(task.get("name", "")))
        if len(busy) > 1:
            text.append(f" +{len(busy) - 1}", style="dim")
        return text

    # Summary ---------------------------------------------------------------

    def _show_summary(self) -> None:
        if self._summary_timer is not None:
            self._summary_timer.stop()
            self._summary_timer = None
        self.query_one("#farm-summary", Static).update(self._summary())

    def _summary(self) -> Text:
        state = self.console.state
        farm = state.farm or {}
        text = Text()
        text.append("Farm ", style="dim")
        text.append(plain(farm.get("farm", UNKNOWN)), style="bold")
        text.append(f"  id {short_id(farm.get('farm_id'))}", style="dim")
        text.append("  attached to ", style="dim")
        text.append(short_id(farm.get("node_id")))
        text.append(f" at {self.console.source.base_url}\n", style="dim")

        server = state.server()
        text.append(f"{SERVER_MARK} Server ", style=SERVER_STYLE)
        if server is None:
            text.append("none elected", style="bold red")
        else:
            text.append(short_id(server["node_id"]), style=SERVER_STYLE)
            text.append(f" e{server.get('epoch')}", style="dim")
        text.append(f"   {MANAGER_MARK} Managers ", style=MANAGER_STYLE)
        managers = state.managers()
        if not managers:
            text.append("none", style="bold red")
        for index, manager in enumerate(managers):
            if index:
                text.append(" \u00b7 ")
            text.append(plain(manager["site"]) + " ")
            text.append(short_id(manager["node_id"]), style=MANAGER_STYLE)
            text.append(f" e{manager.get('epoch')}", style="dim")
        text.append("\n")

        health: dict[str, int] = {}
        workers: dict[str, int] = {}
        for node in state.nodes:
            name = str(node.get("state"))
            health[name] = health.get(name, 0) + 1
            for worker in node.get("workers", []):
                status = str(worker.get("status"))
                workers[status] = workers.get(status, 0) + 1
        text.append("Nodes ", style="dim")
        text.append_text(count_summary(health, HEALTH_STYLES))
        text.append("   Workers ", style="dim")
        text.append_text(count_summary(workers, {}))
        text.append("\nJobs ", style="dim")
        text.append_text(count_summary(state.job_counts(), STATUS_STYLES))
        text.append("\nTasks ", style="dim")
        tasks = _task_counts(state.jobs.values())
        text.append_text(count_summary(tasks, STATUS_STYLES))
        if farm.get("server_reachable") is False:
            text.append(
                "\nThe node cannot reach the farm's server: jobs are not current.",
                style="bold red",
            )
        return text


def _task_counts(jobs: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs:
        for status, count in (job.get("task_counts") or {}).items():
            counts[status] = counts.get(status, 0) + int(count)
    return counts
