"""The event feed of one node's HTTP API.

One pump per node follows the server's event feed (a long poll over the server
port) and hands each event to every connected browser or tool. The node adds
``nodes`` events of its own when members, roles or workers change, and
``reset`` when it cannot tell what changed (a new server, a full queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from flamenco_p2p.transport import RemoteError

logger = logging.getLogger(__name__)

PULL_WAIT = 5.0
RETRY_AFTER = 1.0
NODES_EVERY = 1.0
QUEUE_LIMIT = 2000
# An "after" past any log's end: the server answers with a reset and its head,
# which is where a pump that just started goes on from.
FROM_HEAD = 2**53
JOB_EVENTS = frozenset({"task", "tasks", "log"})


@dataclass(eq=False, slots=True)
class Subscriber:
    """One open event stream; job_id narrows task and log events to one job."""

    job_id: str | None
    queue: asyncio.Queue[tuple[str, Any]] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_LIMIT)
    )

    def offer(self, kind: str, data: Any) -> None:
        """Queue an event; a subscriber that fell too far behind gets a reset."""
        if kind in JOB_EVENTS and self.job_id and data.get("job_id") != self.job_id:
            return
        try:
            self.queue.put_nowait((kind, data))
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(("reset", {}))


class EventHub:
    """Follows the server's events and fans them out to subscribers."""

    def __init__(
        self,
        call_server: Callable[..., Awaitable[Any]],
        nodes_view: Callable[[], Awaitable[dict[str, Any]]],
        membership_fingerprint: Callable[[], str],
    ) -> None:
        self.call_server = call_server
        self.nodes_view = nodes_view
        self.membership_fingerprint = membership_fingerprint
        self.subscribers: set[Subscriber] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._nodes_wanted = asyncio.Event()
        self._watched = asyncio.Event()
        self.ready = asyncio.Event()
        """Set while the feed follows the server from a known change."""

    def start(self) -> None:
        """Start following the server and watching the members."""
        self._tasks = [
            asyncio.create_task(self._pump(), name="api-events"),
            asyncio.create_task(self._watch_nodes(), name="api-nodes"),
        ]

    async def close(self) -> None:
        """Stop; open streams end when their handlers see the queue close."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self.broadcast("closing", {})

    def subscribe(self, job_id: str | None) -> Subscriber:
        """Open a stream of events."""
        subscriber = Subscriber(job_id)
        self.subscribers.add(subscriber)
        self._watched.set()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Close a stream."""
        self.subscribers.discard(subscriber)
        if not self.subscribers:
            self._watched.clear()

    def broadcast(self, kind: str, data: Any) -> None:
        """Offer one event to every subscriber."""
        for subscriber in list(self.subscribers):
            subscriber.offer(kind, data)

    async def _pump(self) -> None:
        # Nodes follow the server only while someone watches, so that an idle
        # farm of many nodes does not wake every node on each change.
        while True:
            await self._watched.wait()
            try:
                await self._follow()
            finally:
                self.ready.clear()

    async def _follow(self) -> None:
        after = FROM_HEAD
        epoch: int | None = None
        while self.subscribers:
            try:
                reply = await self.call_server(
                    "events_pull",
                    {"after": after, "wait": PULL_WAIT},
                    timeout=PULL_WAIT + 5.0,
                    wait_for_server=PULL_WAIT,
                )
            except RemoteError as exc:
                logger.debug("event feed: %s; trying again", exc)
                await asyncio.sleep(RETRY_AFTER)
                continue
            if reply["reset"] or reply["epoch"] != epoch:
                if epoch is not None:
                    logger.info(
                        "event feed starts over at change %d of server epoch %d",
                        reply["head"],
                        reply["epoch"],
                    )
                    self.broadcast("reset", {})
                epoch = reply["epoch"]
                after = reply["head"]
                self.ready.set()
                continue
            after = reply["head"]
            self._deliver(reply["events"])

    def _deliver(self, events: list[dict[str, Any]]) -> None:
        from flamenco_p2p.api.views import job_out, task_out
        from flamenco_p2p.node_client import utc_timestamps

        for event in events:
            kind = event["type"]
            if kind in ("workers", "task"):
                self._nodes_wanted.set()
            if kind == "workers":
                continue
            data = utc_timestamps(event["data"])
            if kind == "job":
                data = job_out(data)
            elif kind == "task":
                data = task_out(data)
            self.broadcast(kind, data)

    async def _watch_nodes(self) -> None:
        """Send a nodes event when members, roles or workers change, once a second
        at most."""
        last_view = ""
        last_members = self.membership_fingerprint()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(NODES_EVERY):
                    await self._nodes_wanted.wait()
            members = self.membership_fingerprint()
            if not self._nodes_wanted.is_set() and members == last_members:
                continue
            self._nodes_wanted.clear()
            last_members = members
            if not self.subscribers:
                continue
            try:
                view = await self.nodes_view()
            except RemoteError as exc:
                logger.debug("nodes view: %s", exc)
                continue
            text = json.dumps(view, sort_keys=True)
            if text != last_view:
                last_view = text
                self.broadcast("nodes", view)
            await asyncio.sleep(NODES_EVERY)
