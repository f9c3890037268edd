"""The console app: a live view of a farm for its administrators.

One worker follows the node's event stream. After each ``hello`` (a new
connection) and each ``reset`` it fetches the farm, its members and every job
again, and in between it applies each event to the farm state and hands it to
the screens, which update their rows in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from textual.app import App
from textual.logging import TextualHandler
from textual.reactive import reactive
from textual.screen import ModalScreen

from flamenco_p2p.api.client import ApiError, NodeUnreachable
from flamenco_p2p.console.farm_screen import FarmScreen
from flamenco_p2p.console.format import plain
from flamenco_p2p.console.job_screen import JobScreen
from flamenco_p2p.console.jobs_screen import JobsScreen
from flamenco_p2p.console.model import FarmState, Job
from flamenco_p2p.console.source import Clock, DataSource, SystemClock
from flamenco_p2p.console.widgets import ConsoleScreen

logger = logging.getLogger(__name__)

JOB_PAGE = 1000
"""Jobs per request while fetching every job; the API's maximum limit."""
RETRY_FIRST = 0.5
RETRY_MAX = 5.0
"""Seconds between attempts to reach the node: doubling from RETRY_FIRST to
RETRY_MAX, so a restarted node is seen within about five seconds."""
FARM_EVERY = 5.0
"""Seconds between fetches of the farm summary on member changes."""
YIELD_EVERY = 50
"""Events applied in a row before the worker lets the screen redraw."""


class ConsoleApp(App[int]):
    """The console: a farm screen, a jobs screen and a screen per job.

    ``source`` is an ApiClient (or an object with its methods) of the node to
    watch, and ``clock`` the time source for estimates and ages.
    """

    CSS_PATH = "console.tcss"
    TITLE = "flamenco-p2p console"
    MODES: ClassVar[dict[str, Any]] = {"farm": FarmScreen, "jobs": JobsScreen}
    DEFAULT_MODE = "farm"

    banner: reactive[str] = reactive("")
    """The connection problem that the screens show, or "" while connected."""

    def __init__(self, source: DataSource, clock: Clock | None = None) -> None:
        super().__init__()
        self.source = source
        self.clock: Clock = clock or SystemClock()
        self.state = FarmState(self.clock)
        self.loaded = asyncio.Event()
        """Set once the first fetch of the whole farm has been shown."""
        self.read_only = getattr(source, "token", "") is None
        self._views: list[ConsoleScreen] = []
        self._log_redirect = _LogRedirect()
        self._farm_fetched = 0.0
        self._failures = 0
        self.wanted_priority: dict[str, int] = {}
        """Priorities sent but not yet confirmed, by job id, so that pressing
        + twice in a row raises a priority twice."""

    # Life cycle -------------------------------------------------------------

    def on_mount(self) -> None:
        self._log_redirect.install()
        self.title = f"flamenco-p2p console \u2014 {self.source.base_url}"
        if self.read_only:
            self.title += " (read-only: no farm token)"
        self.run_worker(self._follow_events(), name="events", group="events")

    def on_unmount(self) -> None:
        self._log_redirect.remove()
        gc.unfreeze()

    def add_view(self, view: ConsoleScreen) -> None:
        """Start handing events to a screen."""
        self._views.append(view)

    def remove_view(self, view: ConsoleScreen) -> None:
        """Stop handing events to a screen."""
        with contextlib.suppress(ValueError):
            self._views.remove(view)

    # The event stream --------------------------------------------------------

    async def _follow_events(self) -> None:
        """Follow the node's events for as long as the app runs, reconnecting
        with backoff after each failure."""
        delay = RETRY_FIRST
        while True:
            try:
                await self._read_stream()
            except NodeUnreachable as exc:
                problem, unreachable = exc.message, True
            except ApiError as exc:
                problem, unreachable = f"HTTP {exc.status}: {exc.message}", False
            else:
                problem, unreachable = "the node closed the event stream", True
            if not self._failures:
                # The stream worked until now, so the backoff starts over.
                delay = RETRY_FIRST
            self._show_problem(problem, unreachable, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.0))
            delay = min(delay * 2, RETRY_MAX)

    async def _read_stream(self) -> None:
        applied = 0
        async for kind, data in self.source.events():
            if kind in ("hello", "reset"):
                await self.reload()
                self._connected()
                continue
            self.apply_event(kind, data)
            applied += 1
            if applied % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    def _show_problem(self, problem: str, unreachable: bool, delay: float) -> None:
        self._failures += 1
        url = self.source.base_url
        prefix = f"cannot reach {url}" if unreachable else f"{url} failed"
        self.banner = f"{prefix}: {problem}; retrying in {delay:g} s"
        # The first failure of a run is worth a warning; the retries are not.
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        logger.log(level, "%s: %s; retrying in %g s", prefix, problem, delay)

    def _connected(self) -> None:
        if self._failures:
            logger.info("connected to %s again", self.source.base_url)
        self._failures = 0
        self.banner = ""

    def apply_event(self, kind: str, data: Any) -> None:
        """Apply one event of the stream to the farm state and the screens."""
        try:
            if kind == "job":
                self.state.set_job(data)
            elif kind == "job_deleted":
                self.state.remove_job(data["id"])
            elif kind == "nodes":
                self.state.nodes = list(data["nodes"])
                self._fetch_farm_soon()
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("ignored a malformed %r event: %r (%s)", kind, exc, data)
            return
        for view in list(self._views):
            try:
                view.farm_event(kind, data)
            except Exception:
                # One screen that fails to show an event must not end the
                # stream, which every other screen depends on.
                logger.exception("%s failed to show a %r event", view, kind)

    def _fetch_farm_soon(self) -> None:
        now = self.clock.monotonic()
        if now - self._farm_fetched < FARM_EVERY:
            return
        self._farm_fetched = now
        self.run_worker(self._fetch_farm(), group="farm", exclusive=True)

    async def _fetch_farm(self) -> None:
        try:
            self.state.farm = await self.source.farm()
        except ApiError as exc:
            logger.debug("fetching the farm summary failed: %s", exc)
            return
        for view in list(self._views):
            view.farm_event("farm", self.state.farm)

    # Fetching ---------------------------------------------------------------

    async def reload(self) -> None:
        """Fetch the farm, its members and every job, and show them again."""
        farm, nodes = await asyncio.gather(self.source.farm(), self.source.nodes())
        self.state.farm = farm
        self.state.nodes = list(nodes["nodes"])
        self._farm_fetched = self.clock.monotonic()
        jobs = await self._fetch_jobs()
        # The jobs that this fetch replaces may be frozen: let them go.
        gc.unfreeze()
        self.state.replace_jobs(jobs)
        for view in list(self._views):
            view.farm_reloaded()
        self._freeze_objects()
        self.loaded.set()

    def _freeze_objects(self) -> None:
        """Keep the garbage collector from walking the objects that exist now.

        A full collection walks every object of the process: with a thousand
        jobs and the screens, that takes 30 to 60 ms on a 2-core machine, and a
        key press that comes meanwhile waits. The fetched farm state and the
        widgets change little until the next fetch, so they are frozen
        (gc.freeze), and collections walk only what comes after them.
        """
        gc.collect()
        gc.freeze()

    async def _fetch_jobs(self) -> list[Job]:
        """Fetch every job, JOB_PAGE at a time."""
        found, total = await self._fetch_job_pages()
        if len(found) < total:
            # A job deleted between two pages shifts the later ones, so a job
            # may have been skipped, and no event after hello would bring it.
            logger.debug("fetched %d of %d jobs; fetching again", len(found), total)
            found, total = await self._fetch_job_pages()
        return list(found.values())

    async def _fetch_job_pages(self) -> tuple[dict[str, Job], int]:
        found: dict[str, Job] = {}
        offset = 0
        while True:
            page = await self.source.jobs(limit=JOB_PAGE, offset=offset)
            for job in page["jobs"]:
                found[job["id"]] = job
            total = int(page["total"])
            offset += JOB_PAGE
            if offset >= total or not page["jobs"]:
                return found, total

    async def _reload_on_request(self) -> None:
        try:
            await self.reload()
        except ApiError as exc:
            self.notify(exc.message, title="Refresh failed", severity="error")
            return
        self.notify("Fetched the farm and its jobs again.", timeout=2)

    # Changes ----------------------------------------------------------------

    def change_job(
        self,
        verb: str,
        job: Job,
        call: Callable[[], Awaitable[dict[str, Any]]],
        finished: Callable[[], None] | None = None,
    ) -> None:
        """Send one change of a job in the background and show its outcome.

        ``verb`` names the change in messages ("Pause", "Cancel"). A rejected
        change, such as a 409 for a job in the wrong status, becomes an error
        notification with the node's reason. ``finished`` runs after either.
        """
        name = plain(job.get("name", job.get("id")))
        self.run_worker(self._send(verb, name, call, finished), group="changes")

    def change_task(
        self, task: dict[str, Any], call: Callable[[], Awaitable[dict[str, Any]]]
    ) -> None:
        """Send a requeue of one task in the background and show its outcome."""
        name = plain(task.get("name", task.get("id")))
        self.run_worker(self._send("Requeue", name, call, None), group="changes")

    async def _send(
        self,
        verb: str,
        name: str,
        call: Callable[[], Awaitable[dict[str, Any]]],
        finished: Callable[[], None] | None,
    ) -> None:
        try:
            reply = await call()
        except ApiError as exc:
            logger.info("%s of %s failed: %s", verb, name, exc.message)
            status = f"HTTP {exc.status}" if exc.status else "no reply"
            self.notify(
                exc.message,
                title=f"{verb} {name} failed ({status})",
                severity="error",
                timeout=8,
            )
            return
        finally:
            if finished is not None:
                finished()
        # The reply shows the change at once; its events follow.
        for kind in ("task", "job"):
            if isinstance(reply.get(kind), dict):
                self.apply_event(kind, reply[kind])
        if "deleted" in reply:
            self.apply_event("job_deleted", {"id": reply["deleted"]})
        self.notify(f"{verb}: {name}", timeout=3)

    # Actions ----------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Screen switches stay off while a dialog waits for a reply.
        return not (action == "show_mode" and isinstance(self.screen, ModalScreen))

    def delay_update(self, delay: float = 0.05) -> None:
        """Skip the pause in screen updates: switch screens at once.

        Textual's switch_mode delays updates for 50 ms to hide a half-drawn
        screen. The console's screens are drawn in one frame, and 50 ms is
        half of what a key press may take to show its effect.
        """

    def action_show_mode(self, mode: str) -> None:
        """Show the farm or the jobs screen."""
        self.switch_mode(mode)

    def action_refresh(self) -> None:
        """Fetch everything again."""
        self.run_worker(self._reload_on_request(), group="reload", exclusive=True)

    def action_toggle_keys(self) -> None:
        """Show or hide the panel that lists every key."""
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def open_job(self, job_id: str) -> None:
        """Show one job with its tasks on top of the jobs screen."""
        if self.current_mode != "jobs":
            self.switch_mode("jobs")
        self.push_screen(JobScreen(job_id))


class _LogRedirect:
    """Sends log records to Textual's log while the app runs.

    A handler that writes to the terminal would draw over the screen, so the
    root logger's handlers for stderr and stdout are set aside and put back
    when the app ends.
    """

    def __init__(self) -> None:
        self.handler = TextualHandler(stderr=False)
        self.handler.setFormatter(
            logging.Formatter("%(levelname)s %(name)s: %(message)s")
        )
        self._set_aside: list[logging.Handler] = []

    def install(self) -> None:
        root = logging.getLogger()
        for handler in list(root.handlers):
            # A plain StreamHandler writes to a terminal stream in practice
            # (files get a FileHandler). Its stream cannot be compared with
            # sys.stderr here, because Textual has replaced sys.stderr.
            if type(handler) is logging.StreamHandler:
                root.removeHandler(handler)
                self._set_aside.append(handler)
        root.addHandler(self.handler)

    def remove(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        for handler in self._set_aside:
            root.addHandler(handler)
        self._set_aside = []
