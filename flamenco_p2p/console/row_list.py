"""A table for long lists that draws only the lines on screen.

Textual's DataTable renders each cell through Rich's padding and wrapping and
drops its cache whenever the screen's styles are refreshed, which happens on
every change of screen. With a screenful of 37 rows of 8 columns that is 25
to 50 ms per full redraw on a 2-core machine, and a change of screen redraws
two or three times. It also measures every cell of every row it holds, so
that filling or re-sorting a thousand rows takes 150 to 250 ms.

RowList keeps the keys of the whole list and draws each visible line as one
Rich Text of fixed-width fields (Textual's line API), caching each drawn
line until its row changes. A key press then costs a few lines, and a
screen change one cheap redraw, however long the list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

CELL_GAP = 2
"""Blank cells between two columns."""
MAX_CACHED_LINES = 512
"""Drawn lines kept; a few screenfuls, so scrolling back costs nothing."""


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a RowList: its key, header, width in cells and alignment."""

    key: str
    label: str
    width: int
    justify: Literal["left", "right"] = "left"


RowMaker = Callable[[str], Sequence[Text]]
"""Makes the cells of the row of a key, one per column, in column order."""


class RowList(ScrollView, can_focus=True):
    """A list of rows with a header line and a row cursor, drawn line by line.

    ``make_row`` builds the cells of a key's row. Call ``set_keys`` with the
    whole list and ``refresh_key`` when a row's data changes.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home,ctrl+home", "first", "First", show=False),
        Binding("end,ctrl+end", "last", "Last", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "row-list--header",
        "row-list--cursor",
        "row-list--even-row",
    }
    DEFAULT_CSS = """
    RowList {
        background: $surface;
        color: $foreground;
        & > .row-list--header {
            text-style: bold;
            background: $panel;
            color: $foreground;
        }
        & > .row-list--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
        }
        & > .row-list--even-row {
            background: $surface-lighten-1 50%;
        }
        &:focus > .row-list--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: $block-cursor-text-style;
        }
        &:dark > .row-list--even-row {
            background: $surface-darken-1 40%;
        }
    }
    """

    cursor: reactive[int] = reactive(0, always_update=True, repaint=False)
    """Position of the cursor in the whole list."""

    class Highlighted(Message):
        """The cursor moved to another row."""

        def __init__(self, row_list: RowList, key: str) -> None:
            super().__init__()
            self.row_list = row_list
            self.key = key

    class Selected(Message):
        """A row was clicked twice."""

        def __init__(self, row_list: RowList, key: str) -> None:
            super().__init__()
            self.row_list = row_list
            self.key = key

    def __init__(
        self,
        columns: Sequence[Column],
        make_row: RowMaker,
        *,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.columns = tuple(columns)
        self.make_row = make_row
        self.keys: list[str] = []
        self._index: dict[str, int] = {}
        self._versions: dict[str, int] = {}
        """A number per key that grows when its row changes, so that the
        cached line of the row is not used again."""
        self._lines: dict[tuple[Any, ...], Strip] = {}
        self._starts: list[int] = []
        width = 0
        for column in self.columns:
            self._starts.append(width)
            width += column.width + CELL_GAP
        self.line_width = width

    # The list ------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        """Rows that fit below the header, at least one.

        Before the first layout the list has no height yet, so the screen's
        height is used instead.
        """
        height = self.scrollable_content_region.height or self.app.size.height
        return max(1, height - 1)

    @property
    def top(self) -> int:
        """Position of the first row on screen."""
        return round(self.scroll_offset.y)

    @property
    def selected_key(self) -> str | None:
        """The key under the cursor, or None while the list is empty."""
        return self.keys[self.cursor] if self.keys else None

    def visible_keys(self) -> list[str]:
        """Return the keys of the rows on screen, top to bottom."""
        return self.keys[self.top : self.top + self.row_count]

    def set_keys(self, keys: Sequence[str], keep: str | None = None) -> None:
        """Show a new list, with the cursor on keep if it is in the list.

        Without keep, or when keep left the list, the cursor stays at its
        position, moved up if the list got shorter.
        """
        self.keys = list(keys)
        self._index = {key: index for index, key in enumerate(self.keys)}
        self._versions = {key: self._versions.get(key, 0) for key in self.keys}
        # The header line counts, so the last row can scroll fully into view.
        self.virtual_size = Size(self.line_width, len(self.keys) + 1)
        if keep is not None and keep in self._index:
            position = self._index[keep]
        else:
            position = self.cursor
        self.cursor = self._clamp(position)
        self.refresh()

    def position_of(self, key: str) -> int | None:
        """Return the position of key in the whole list, or None."""
        return self._index.get(key)

    def select(self, key: str) -> bool:
        """Move the cursor to key, scrolling to it; False if it is not listed."""
        position = self._index.get(key)
        if position is None:
            return False
        self.cursor = position
        return True

    def refresh_key(self, key: str) -> None:
        """Draw the row of key again if it is on screen (its data changed)."""
        if key not in self._versions:
            return
        self._versions[key] += 1
        position = self._index[key]
        if self.top <= position < self.top + self.row_count:
            self.refresh_line(position + 1)

    def cell_text(self, key: str, column: str) -> str:
        """Return the text that the row of key shows in a column, trimmed.

        This reads the drawn line, so it is the text on the screen.
        """
        index = next(i for i, c in enumerate(self.columns) if c.key == column)
        line = self._row_line(key, False, False).text
        start = self._starts[index]
        return line[start : start + self.columns[index].width].strip()

    # Moving ------------------------------------------------------------------

    def _clamp(self, position: int) -> int:
        return min(max(position, 0), max(0, len(self.keys) - 1))

    def validate_cursor(self, position: int) -> int:
        return self._clamp(position)

    def watch_cursor(self, old: int, new: int) -> None:
        rows = self.row_count
        if new < self.top:
            self.scroll_to(y=new, animate=False, immediate=True)
        elif new >= self.top + rows:
            self.scroll_to(y=new - rows + 1, animate=False, immediate=True)
        self.refresh_line(old + 1)
        self.refresh_line(new + 1)
        if self.keys:
            self.post_message(self.Highlighted(self, self.keys[new]))

    def action_move(self, rows: int) -> None:
        """Move the cursor by rows."""
        self.cursor = self._clamp(self.cursor + rows)

    def action_page(self, pages: int) -> None:
        """Move the cursor by pages of the rows on screen."""
        self.cursor = self._clamp(self.cursor + pages * self.row_count)

    def action_first(self) -> None:
        """Move the cursor to the first row."""
        self.cursor = 0

    def action_last(self) -> None:
        """Move the cursor to the last row."""
        self.cursor = self._clamp(len(self.keys) - 1)

    def action_select(self) -> None:
        """Report the row under the cursor as selected."""
        if self.keys:
            self.post_message(self.Selected(self, self.keys[self.cursor]))

    def on_click(self, event: events.Click) -> None:
        if event.y < 1:
            return
        position = self.top + event.y - 1
        if position >= len(self.keys):
            return
        if position == self.cursor and event.chain >= 2:
            self.action_select()
        self.cursor = position

    def on_resize(self, event: events.Resize) -> None:
        self._lines.clear()
        self.cursor = self.cursor

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._lines.clear()

    # Drawing -----------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        scroll_x = round(self.scroll_offset.x)
        if y == 0:
            strip = self._header_line()
        else:
            position = self.top + y - 1
            if position >= len(self.keys):
                return Strip.blank(width, self.rich_style)
            strip = self._row_line(
                self.keys[position], position == self.cursor, position % 2 == 1
            )
        return strip.crop(scroll_x, scroll_x + width)

    def _header_line(self) -> Strip:
        style = self.get_component_rich_style("row-list--header")
        cache_key = ("header", style)
        strip = self._lines.get(cache_key)
        if strip is None:
            cells = [Text(column.label) for column in self.columns]
            strip = self._draw(cells, style)
            self._lines[cache_key] = strip
        return strip

    def _row_line(self, key: str, cursor: bool, even: bool) -> Strip:
        cache_key = (key, self._versions.get(key, 0), cursor, even)
        strip = self._lines.get(cache_key)
        if strip is None:
            style = self.rich_style
            if even:
                style += self.get_component_rich_style("row-list--even-row")
            if cursor:
                style += self.get_component_rich_style("row-list--cursor")
            strip = self._draw(list(self.make_row(key)), style)
            if len(self._lines) >= MAX_CACHED_LINES:
                self._lines.clear()
            self._lines[cache_key] = strip
        return strip

    def _draw(self, cells: Sequence[Text], style: Style) -> Strip:
        """Lay cells out in their columns on one line of the given style, as
        wide as the widget if that is wider than the columns."""
        width = max(self.line_width, self.scrollable_content_region.width)
        line = Text(style=style, no_wrap=True, end="")
        for column, cell in zip(self.columns, cells, strict=True):
            text = cell.copy()
            text.truncate(column.width, overflow="ellipsis")
            padding = " " * (column.width - text.cell_len)
            if column.justify == "right":
                line.append(padding)
                line.append_text(text)
            else:
                line.append_text(text)
                line.append(padding)
            line.append(" " * CELL_GAP)
        line.append(" " * (width - self.line_width))
        return Strip(line.render(self.app.console), width)
