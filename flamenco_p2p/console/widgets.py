"""Pieces that every screen of the console shares."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Static

if TYPE_CHECKING:
    from flamenco_p2p.console.app import ConsoleApp


SCREEN_GROUP = Binding.Group("Screen", compact=True)
GLOBAL_BINDINGS: list[BindingType] = [
    Binding("1", "app.show_mode('farm')", "Farm", group=SCREEN_GROUP),
    Binding("2", "app.show_mode('jobs')", "Jobs", group=SCREEN_GROUP),
    Binding("ctrl+r", "app.refresh", "Refresh"),
    Binding("q", "app.quit", "Quit"),
    Binding("question_mark", "app.toggle_keys", "Keys", key_display="?"),
]
"""The keys of every screen but the dialogs. Screens list them after their
own change keys, so that an 80-column footer still shows them."""


class ConsoleScreen(Screen[None]):
    """A screen of the console that events and fetches keep current."""

    @property
    def console(self) -> ConsoleApp:
        """The console app that this screen belongs to."""
        return cast("ConsoleApp", self.app)

    def on_mount(self) -> None:
        self.console.add_view(self)

    def on_unmount(self) -> None:
        self.console.remove_view(self)

    def farm_event(self, kind: str, data: Any) -> None:
        """Show one event of the stream; the app has already applied it to the
        farm state."""

    def farm_reloaded(self) -> None:
        """Show the farm state again after the app fetched all of it."""


class KeyBar(Static):
    """The footer of a console screen: its keys and what they do, on one line.

    Textual's Footer mounts a widget per key and mounts them all again
    whenever the screen's bindings change, as they do on every change of
    screen or focus. That took 100 to 150 ms on a 2-core machine, and the
    next key press waited for it. This bar draws the same keys as one line of
    text. The "?" key lists every key in Textual's help panel.
    """

    DEFAULT_CSS = """
    KeyBar {
        dock: bottom;
        height: 1;
        color: $footer-foreground;
        background: $footer-background;
    }
    """

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self._show_keys()

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen: Screen[Any]) -> None:
        if screen is self.screen:
            self._show_keys()

    def _show_keys(self) -> None:
        # One entry per action, as Footer shows them; the bindings of a group
        # share the group's description, so "+ - Priority" takes one place.
        by_action: dict[str, tuple[Binding, bool, list[str]]] = {}
        for active in self.screen.active_bindings.values():
            binding = active.binding
            if not binding.show:
                continue
            entry = by_action.setdefault(binding.action, (binding, active.enabled, []))
            entry[2].append(self.app.get_key_display(binding))
        self.update(self._keys_text(sorted(by_action.values(), key=_key_order)))

    def _keys_text(self, entries: list[tuple[Binding, bool, list[str]]]) -> Text:
        key_color = self.app.get_css_variables().get("footer-key-foreground", "")
        text = Text(no_wrap=True, overflow="crop")
        index = 0
        while index < len(entries):
            binding, enabled, keys = entries[index]
            group = binding.group
            shown_keys = [keys[0]]
            description = binding.description
            if group is not None:
                while index + 1 < len(entries) and entries[index + 1][0].group == group:
                    index += 1
                    shown_keys.append(entries[index][2][0])
                if len(shown_keys) > 1:
                    description = group.description
            dim = "" if enabled else " dim"
            text.append(" ".join(shown_keys), style=f"bold {key_color}{dim}".strip())
            text.append(f" {description}  ", style=dim.strip())
            index += 1
        return text


def _key_order(entry: tuple[Binding, bool, list[str]]) -> int:
    """Sort "?" (which lists every key) first and the keys of every screen
    last, so that a narrow terminal still shows the screen's own keys."""
    action = entry[0].action
    if action == "app.toggle_keys":
        return 0
    return 2 if action.startswith("app.") else 1


class Banner(Static):
    """The connection problem, shown above every screen while there is one."""

    def on_mount(self) -> None:
        self.watch(self.app, "banner", self._show_banner)

    def _show_banner(self, text: str) -> None:
        self.update(Text(text))
        self.display = bool(text)


class ConfirmScreen(ModalScreen[bool]):
    """Asks before a change that loses work; dismisses with True to go ahead."""

    BINDINGS: ClassVar[list[BindingType]] = [
        ("y", "answer(True)", "Yes"),
        ("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, confirm_label: str) -> None:
        super().__init__()
        self.question = question
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Text(self.question), classes="question")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.confirm_label} (y)", id="yes", variant="error")
                yield Button("Keep it (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class RequeueScreen(ModalScreen[str | None]):
    """Asks which tasks of a job to run again: dismisses with "all", "failed"
    or None."""

    BINDINGS: ClassVar[list[BindingType]] = [
        ("a", "answer('all')", "All tasks"),
        ("f", "answer('failed')", "Failed tasks"),
        ("n,escape", "answer('')", "Back"),
    ]

    def __init__(self, job_name: str) -> None:
        super().__init__()
        self.job_name = job_name

    def compose(self) -> ComposeResult:
        question = Text(f"Requeue job {self.job_name}?\n\n")
        question.append(
            "All tasks: every task runs again and completed frames are rendered"
            " again.\nFailed tasks: only failed and canceled tasks run again."
        )
        with Vertical(classes="dialog"):
            yield Static(question, classes="question")
            with Horizontal(classes="buttons"):
                yield Button("All tasks (a)", id="all", variant="error")
                yield Button("Failed tasks (f)", id="failed", variant="warning")
                yield Button("Back (n)", id="back", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#back", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id if event.button.id != "back" else None)

    def action_answer(self, scope: str) -> None:
        self.dismiss(scope or None)
