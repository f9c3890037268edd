"""Streaming the farm state from the server to its standbys.

The server serves its change log to standbys that pull it (:class:`LogSource`).
A pull names the last entry that the standby has applied. That acknowledges the
entries up to it, and lets the server check that the two logs still agree. A standby
(:class:`Standby`) applies each batch to its own SQLite file, so that it can take
over with everything that was acknowledged.

A change that a client sees acknowledged waits in :meth:`LogSource.wait_replicated`
until one standby has it, or until no standby is online to wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq.asyncio

from flamenco_p2p.blobs import BlobStore
from flamenco_p2p.errors import BlobError, FarmUnavailable, InvalidInput, ProtocolError
from flamenco_p2p.protocol.codec import MAX_STR_LEN
from flamenco_p2p.protocol.schema import Int, List, Map, Optional, Str
from flamenco_p2p.roles.manager import fetch_blob
from flamenco_p2p.store import replica
from flamenco_p2p.store.farmstore import FarmStore
from flamenco_p2p.store.replica import Change, LogPosition, Term
from flamenco_p2p.transport import DealerLink, RemoteError

logger = logging.getLogger(__name__)

PULL_WAIT = 1.0
"""Seconds that the server keeps a pull open while it has no new entries."""

ACK_TIMEOUT = 2.0
"""Seconds that a change waits for a standby before the server replies to its client."""

STANDBY_ONLINE_FOR = 3.0
"""A standby that has not pulled for this many seconds is not waited for."""

LOG_KEEP = 200_000
"""Change log entries kept; a standby further behind gets a snapshot."""

MERGE_TASKS_PER_CALL = 500

# The server's replies to repl_pull arrive as plain maps; a standby checks them
# with these before it applies anything.
_CHANGE = Map(
    {
        "seq": Int(1, 2**53),
        "epoch": Int(0, 2**53),
        "holder": Str(max_len=32),
        "table": Str(max_len=32),
        "op": Str(max_len=1),
        "key": Str(max_len=1000),
        "row": Optional(Str(max_len=MAX_STR_LEN)),
    }
)
_TERM = Map(
    {
        "epoch": Int(0, 2**53),
        "holder": Str(max_len=32),
        "first": Int(0, 2**53),
        "last": Int(0, 2**53),
    }
)
PULL_REPLY = Map(
    {
        "status": Str(max_len=16),
        "changes": List(_CHANGE, max_len=1000),
        "terms": List(_TERM, max_len=1000),
    }
)
SNAPSHOT_REPLY = Map(
    {
        "sha256": Str(max_len=64, min_len=64, hex=True),
        "size": Int(0, 2**40),
        "seq": Int(0, 2**53),
        "epoch": Int(0, 2**53),
        "holder": Str(max_len=32),
    }
)


class Signal:
    """Wakes every coroutine that waits, each time it fires; safe to fire from
    synchronous code."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def fire(self) -> None:
        """Wake the current waiters."""
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        """Wait for the next fire()."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)


@dataclass(slots=True)
class StandbyState:
    """The server's record of one standby."""

    node_id: str
    acked: int
    last_pull: float
    lagging: bool = False


class LogSource:
    """The server side: serves pulls and tracks how far each standby got."""

    def __init__(
        self,
        store: FarmStore,
        node_id: str,
        blobs: BlobStore,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.blobs = blobs
        self.clock = clock
        self.standbys: dict[str, StandbyState] = {}
        self._changed = Signal()
        self._acked = Signal()
        self._snapshot: tuple[str, LogPosition] | None = None
        self._snapshot_lock = asyncio.Lock()
        self.last_head = 0
        """The newest entry when last read: this node's freshness for elections."""

    async def start(self) -> None:
        """Read the end of the log and prune it."""
        self.last_head = (await replica.position(self.store)).seq
        await replica.prune(self.store, LOG_KEEP)

    def notify(self) -> None:
        """Wake pulls that wait for new entries; the store calls this on commit."""
        self._changed.fire()

    async def changed(self) -> None:
        """Wait for the next committed change."""
        await self._changed.wait()

    async def head(self) -> int:
        """Return the seq of the newest entry."""
        self.last_head = (await replica.position(self.store)).seq
        return self.last_head

    async def wait_replicated(self, seq: int | None = None) -> bool:
        """Wait until a standby that is online holds entry seq (default: the newest).

        Returns True at once when no standby is online, and False (logging a
        warning) when none confirmed within ACK_TIMEOUT; the standby is then
        counted as lagging until it catches up, so one slow standby costs one
        timeout and not one per change.
        """
        # Without a standby online there is nothing to wait for, and reading the
        # head would cost a query on every acknowledged change.
        if not self._online():
            return True
        target = await self.head() if seq is None else seq
        if target == 0:
            return True
        try:
            async with asyncio.timeout(ACK_TIMEOUT):
                while self._online() and not any(
                    s.acked >= target for s in self._in_sync()
                ):
                    await self._acked.wait()
            return True
        except TimeoutError:
            for standby in self._in_sync():
                standby.lagging = True
                logger.warning(
                    "standby %s did not confirm change %d within %.1f s (it holds"
                    " %d); acknowledging with the change on this node only",
                    standby.node_id,
                    target,
                    ACK_TIMEOUT,
                    standby.acked,
                )
            return False

    def _in_sync(self) -> list[StandbyState]:
        now = self.clock()
        return [
            s
            for s in self.standbys.values()
            if not s.lagging and now - s.last_pull < STANDBY_ONLINE_FOR
        ]

    def _online(self) -> bool:
        return bool(self._in_sync())

    async def pull(
        self, node_id: str, after: int, epoch: int, holder: str, wait: float
    ) -> dict[str, Any]:
        """Serve one pull of a standby that applied the log up to entry ``after``."""
        verdict = await self._check_log(after, epoch, holder)
        if verdict is not None:
            return verdict
        await self._record_ack(node_id, after)
        changes = await replica.changes_after(self.store, after)
        if not changes and wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait, PULL_WAIT)):
                    await self._changed.wait()
            changes = await replica.changes_after(self.store, after)
        return {
            "status": "changes",
            "changes": [c.to_dict() for c in changes],
            "terms": [],
        }

    async def _check_log(
        self, after: int, epoch: int, holder: str
    ) -> dict[str, Any] | None:
        if after == 0:
            oldest = await replica.oldest_seq(self.store)
            return None if oldest <= 1 else _snapshot_verdict()
        entry = await replica.entry_at(self.store, after)
        if entry == (epoch, holder):
            return None
        if entry is None and after < await replica.oldest_seq(self.store):
            # NOTE: entries pruned here cannot be compared; a standby this far
            # behind is taken to be behind, not diverged, and gets a snapshot.
            return _snapshot_verdict()
        terms = await replica.terms(self.store)
        return {
            "status": "diverged",
            "changes": [],
            "terms": [t.to_dict() for t in terms[-1000:]],
        }

    async def _record_ack(self, node_id: str, acked: int) -> None:
        now = self.clock()
        standby = self.standbys.get(node_id)
        if standby is None:
            standby = StandbyState(node_id, acked, now)
            self.standbys[node_id] = standby
            logger.info("standby %s follows the change log from %d", node_id, acked)
        standby.acked = max(standby.acked, acked)
        standby.last_pull = now
        if standby.lagging and standby.acked >= self.last_head:
            standby.lagging = False
            logger.info("standby %s caught up at change %d", node_id, acked)
        self._acked.fire()

    async def make_snapshot(self, scratch: Path) -> dict[str, Any]:
        """Copy the database into the blob store and return its hash and end."""
        async with self._snapshot_lock:
            head = await self.head()
            if self._snapshot is not None and self._snapshot[1].seq == head:
                sha256, end = self._snapshot
                if self.blobs.has(sha256):
                    return _snapshot_reply(sha256, self.blobs.size(sha256), end)
            scratch.mkdir(parents=True, exist_ok=True)
            target = scratch / f"snapshot-{uuid.uuid4().hex}.sqlite"
            try:
                end = await replica.snapshot(self.store, target)
                sha256, size = await self.blobs.add_file(target)
            finally:
                target.unlink(missing_ok=True)
            if self._snapshot is not None and self._snapshot[0] != sha256:
                self.blobs.remove(self._snapshot[0])
            self._snapshot = (sha256, end)
        logger.info(
            "snapshot of the farm database at change %d: blob %s, %d bytes",
            end.seq,
            sha256,
            size,
        )
        return _snapshot_reply(sha256, size, end)

    async def close(self) -> None:
        """Drop the last snapshot blob."""
        if self._snapshot is not None:
            self.blobs.remove(self._snapshot[0])
            self._snapshot = None


def _snapshot_verdict() -> dict[str, Any]:
    return {"status": "snapshot", "changes": [], "terms": []}


def _snapshot_reply(sha256: str, size: int, end: LogPosition) -> dict[str, Any]:
    return {
        "sha256": sha256,
        "size": size,
        "seq": end.seq,
        "epoch": end.epoch,
        "holder": end.holder,
    }


MergeSender = Callable[[dict[str, Any]], Awaitable[Any]]


class Standby:
    """Keeps this node's replica of the farm database in step with the server."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        node_id: str,
        database: Path,
        blobs: BlobStore,
        node_endpoints: Callable[[str], list[str]],
    ) -> None:
        self.ctx = ctx
        self.node_id = node_id
        self.database = database
        self.blobs = blobs
        self.node_endpoints = node_endpoints
        self.store: FarmStore | None = None
        self.freshness = 0
        self.server: tuple[str, str, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._pulling = False

    async def open(self) -> None:
        """Open the replica and read how fresh it is."""
        if self.store is None:
            self.store = await FarmStore.open(self.database)
            self.freshness = (await replica.position(self.store)).seq
            logger.info(
                "replica %s contains the farm state up to change %d",
                self.database,
                self.freshness,
            )

    async def release(self) -> None:
        """Stop following and close the replica, so the server role can open it."""
        await self._stop_loop()
        if self.store is not None:
            store, self.store = self.store, None
            await store.close()

    def follow(self, endpoint: str | None, holder: str | None, epoch: int) -> None:
        """Follow the server at endpoint (node holder, epoch); None stops following."""
        target = (endpoint, holder, epoch) if endpoint and holder else None
        if target == self.server:
            return
        self.server = target
        if self._pulling and self._task is not None:
            # A pull held open by the old server would keep the new one waiting.
            self._task.cancel()
            self._task = None
        if target is not None:
            logger.info(
                "standby follows the server %s at %s (epoch %d)",
                holder,
                endpoint,
                epoch,
            )
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="standby")
        self._wake.set()

    async def _stop_loop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.server = None

    async def _run(self) -> None:
        while True:
            target = self.server
            if target is None or self.store is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            endpoint, holder, epoch = target
            link = DealerLink(self.ctx, self.node_id, endpoint, name="standby")
            try:
                await self._follow(link, target)
            except (
                FarmUnavailable,
                RemoteError,
                BlobError,
                InvalidInput,
                ProtocolError,
            ) as exc:
                logger.warning(
                    "standby: replication from %s (epoch %d) paused: %s",
                    holder,
                    epoch,
                    exc,
                )
                await asyncio.sleep(1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("standby: replication from %s failed", holder)
                await asyncio.sleep(1.0)
            finally:
                await link.close()

    async def _follow(self, link: DealerLink, target: tuple[str, str, int]) -> None:
        while self.server == target and self.store is not None:
            end = await replica.position(self.store)
            body = {
                "after": end.seq,
                "epoch": end.epoch,
                "holder": end.holder,
                "wait": PULL_WAIT,
            }
            self._pulling = True
            try:
                reply = await link.call("repl_pull", body, timeout=PULL_WAIT + 5.0)
            finally:
                self._pulling = False
            PULL_REPLY.check("repl_pull reply", reply)
            status = reply["status"]
            if status == "changes":
                changes = [Change.from_dict(c) for c in reply["changes"]]
                if changes:
                    self.freshness = (
                        await replica.apply_changes(self.store, changes)
                    ).seq
            elif status == "snapshot":
                await self._install_snapshot(link, target[1])
            elif status == "diverged":
                terms = [Term.from_dict(t) for t in reply["terms"]]
                await self._merge_back(link, terms)
                await self._install_snapshot(link, target[1])
            else:
                raise InvalidInput(f"repl_pull returned the unknown status {status!r}")

    async def _merge_back(self, link: DealerLink, theirs: list[Term]) -> None:
        """Send the jobs this replica changed after the logs split to the server."""
        assert self.store is not None
        common = replica.common_seq(await replica.terms(self.store), theirs)
        job_ids = await replica.jobs_changed_after(self.store, common)
        logger.warning(
            "replica diverged from the server after change %d: merging %d jobs"
            " into the server",
            common,
            len(job_ids),
        )
        for job_id in job_ids:
            export = await replica.export_job(self.store, job_id)
            if export is None:
                continue
            for part in _merge_parts(export):
                await link.call("repl_merge", part, timeout=30.0)
            logger.info("job %s merged into the server", job_id)

    async def _install_snapshot(self, link: DealerLink, holder: str) -> None:
        assert self.store is not None
        reply = await link.call("repl_snapshot", {}, timeout=60.0)
        SNAPSHOT_REPLY.check("repl_snapshot reply", reply)
        sha256 = reply["sha256"]
        endpoints = self.node_endpoints(holder)
        if not self.blobs.has(sha256):
            await fetch_blob(self.ctx, self.node_id, endpoints, self.blobs, sha256)
        store, self.store = self.store, None
        await store.close()
        try:
            staged = self.database.with_name(self.database.name + ".snapshot")
            await asyncio.to_thread(_copy, self.blobs.path(sha256), staged)
            replica.install_snapshot(staged, self.database)
        finally:
            self.blobs.remove(sha256)
            self.store = await FarmStore.open(self.database)
        self.freshness = (await replica.position(self.store)).seq
        logger.info(
            "replica replaced by the server's snapshot at change %d", self.freshness
        )


def _merge_parts(export: dict[str, Any]) -> list[dict[str, Any]]:
    """Split a job export into messages of bounded size; each part merges alone."""
    tasks = export["tasks"]
    parts = []
    for start in range(0, max(len(tasks), 1), MERGE_TASKS_PER_CALL):
        chunk = tasks[start : start + MERGE_TASKS_PER_CALL]
        ids = {t["id"] for t in chunk}
        parts.append(
            {
                "job": export["job"],
                "tasks": chunk,
                "attempts": [a for a in export["attempts"] if a["task_id"] in ids],
                "blocklist": export["blocklist"] if start == 0 else [],
            }
        )
    return parts


def _copy(source: Path, target: Path) -> None:
    import shutil

    shutil.copyfile(source, target)
