"""Text for the console's tables: statuses, progress bars, durations, times."""

from __future__ import annotations

import unicodedata
from datetime import datetime, tzinfo
from typing import Any

from rich.text import Text

UNKNOWN = "\u2014"
"""What a cell shows for a value that is not known: an em dash."""

SHORT_ID = 8
"""Hex digits of an id that the console shows; enough to tell nodes and jobs
apart at a glance and to find them in `flamenco-p2p jobs` output."""

STATUS_STYLES = {
    "queued": "cyan",
    "active": "bold green",
    "paused": "yellow",
    "pause-requested": "yellow",
    "completed": "green",
    "failed": "bold red",
    "soft-failed": "red",
    "cancel-requested": "magenta",
    "canceled": "magenta",
    "requeueing": "cyan",
    "lost": "red",
}

HEALTH_STYLES = {
    "alive": "green",
    "suspect": "bold yellow",
    "dead": "bold red",
    "left": "dim",
}

SERVER_MARK = "\u2605"
"""Marks the elected server: a black star."""
MANAGER_MARK = "\u25c6"
"""Marks a site's manager: a black diamond."""
SERVER_STYLE = "bold yellow"
MANAGER_STYLE = "bold cyan"

_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def plain(value: object) -> str:
    """Return text from the farm as one line that cannot move the cursor.

    Control characters, line separators and bidirectional overrides would
    rearrange the screen, so they become visible escapes.
    """
    return "".join(
        ch
        if unicodedata.category(ch) not in ("Cc", "Zl", "Zp")
        and ch not in _BIDI_CONTROLS
        else ch.encode("unicode_escape").decode("ascii")
        for ch in str(value)
    )


def short_id(value: str | None) -> str:
    """Return the first SHORT_ID characters of an id, or the em dash."""
    return value[:SHORT_ID] if value else UNKNOWN


def status_text(status: str) -> Text:
    """Return a status in its colour."""
    return Text(status, style=STATUS_STYLES.get(status, ""))


def health_text(state: str) -> Text:
    """Return a member's health state in its colour."""
    return Text(state, style=HEALTH_STYLES.get(state, ""))


def progress_bar(fraction: float, width: int = 10) -> Text:
    """Return a bar of width cells and the percentage, such as ``█████░░░░░  50%``."""
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    bar = Text("\u2588" * filled, style="green")
    bar.append("\u2591" * (width - filled), style="dim")
    bar.append(f" {fraction * 100:3.0f}%")
    return bar


def duration(seconds: float | None) -> str:
    """Return a duration such as ``42s``, ``12m 05s``, ``3h 07m`` or ``2d 04h``."""
    if seconds is None:
        return UNKNOWN
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def parse_time(value: Any) -> datetime | None:
    """Return an ISO 8601 time of the API as an aware datetime, or None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def clock_time(value: Any, zone: tzinfo | None, with_date: bool = True) -> str:
    """Return an API time in a time zone as ``12-04 21:38`` or ``21:38:59``."""
    moment = parse_time(value)
    if moment is None:
        return UNKNOWN
    local = moment.astimezone(zone)
    return local.strftime("%m-%d %H:%M" if with_date else "%H:%M:%S")


def age(value: Any, now: datetime) -> str:
    """Return how long ago an API time was, such as ``3s ago``."""
    moment = parse_time(value)
    if moment is None:
        return UNKNOWN
    return duration((now - moment).total_seconds()) + " ago"


def roles_text(roles: list[dict[str, Any]]) -> Text:
    """Return a member's roles with their epochs: ``server e3 · manager:lab e1``."""
    text = Text()
    for role in roles:
        name = str(role.get("role", ""))
        if text:
            text.append(" \u00b7 ")
        style = SERVER_STYLE if name == "server" else ""
        if name.startswith("manager:"):
            style = MANAGER_STYLE
        text.append(plain(name), style=style)
        text.append(f" e{role.get('epoch', '?')}", style="dim")
    if not text:
        text.append(UNKNOWN, style="dim")
    return text


def count_summary(counts: dict[str, int], styles: dict[str, str]) -> Text:
    """Return non-zero counts as ``2 active · 5 completed``, each in its colour."""
    text = Text()
    for name, count in counts.items():
        if not count:
            continue
        if text:
            text.append(" \u00b7 ")
        text.append(f"{count} {name}", style=styles.get(name, ""))
    if not text:
        text.append("none", style="dim")
    return text
