"""Work that runs in a thread while Blender's UI stays responsive.

A modal operator starts a BackgroundTask, reads its Progress on a timer to show
it in the status bar, and sets its cancel event when the artist presses Esc.
The work itself must not touch bpy: Blender's data is not thread-safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")


class Cancelled(Exception):
    """The artist stopped the work, with Esc or a Cancel button."""


class Progress:
    """A step's description and completed fraction, shared between threads."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        self._message = ""
        self._fraction = 0.0

    def update(self, message: str, fraction: float | None = None) -> None:
        """Set the current step; fraction runs from 0 to 1 when given."""
        with self._lock:
            self._message = message
            if fraction is not None:
                self._fraction = min(1.0, max(0.0, fraction))

    def snapshot(self) -> tuple[str, float]:
        """Return the current message and fraction."""
        with self._lock:
            return self._message, self._fraction


class BackgroundTask(Generic[ResultT]):
    """One function run in a daemon thread, with its result or its exception."""

    def __init__(
        self, name: str, work: Callable[[Progress], ResultT], progress: Progress
    ) -> None:
        self.name = name
        self.progress = progress
        self._work = work
        self._result: ResultT | None = None
        self._error: BaseException | None = None
        self._ran_here = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def run_here(self) -> None:
        """Run the work in the calling thread instead, as background mode needs."""
        self._ran_here = True
        self._run()

    @property
    def done(self) -> bool:
        """Whether the work has returned or raised."""
        if self._ran_here:
            return True
        return not self._thread.is_alive() and self._thread.ident is not None

    def result(self) -> ResultT:
        """Return the work's result or raise its exception; call once done."""
        if self._error is not None:
            raise self._error
        assert self._result is not None, f"{self.name} has not finished"
        return self._result

    def _run(self) -> None:
        try:
            self._result = self._work(self.progress)
        except BaseException as error:  # handed to the main thread by result()
            logger.debug("%s ended with %r", self.name, error)
            self._error = error
