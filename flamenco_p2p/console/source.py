"""What the console reads from and acts on: a node's API and a clock.

The console talks to a node through any object with the methods of ApiClient
below, so tests can hand it a fixed data set. Each method returns the JSON
document of its route (docs/http-api.md) and raises ApiError when it fails.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Protocol


class DataSource(Protocol):
    """The subset of ApiClient that the console uses."""

    base_url: str

    async def farm(self) -> dict[str, Any]: ...

    async def nodes(self) -> dict[str, Any]: ...

    async def jobs(
        self,
        status: str | list[str] | None = None,
        limit: int = 50,
        offset: int = 0,
        q: str | None = None,
    ) -> dict[str, Any]: ...

    async def job(self, job_id: str) -> dict[str, Any]: ...

    async def tasks(
        self,
        job_id: str,
        limit: int = 200,
        offset: int = 0,
        status: str | list[str] | None = None,
    ) -> dict[str, Any]: ...

    async def task(self, task_id: str) -> dict[str, Any]: ...

    async def task_log(
        self,
        task_id: str,
        *,
        tail: int | None = None,
        after: int | None = None,
        limit: int | None = None,
        attempt_id: str | None = None,
    ) -> dict[str, Any]: ...

    async def pause(self, job_id: str) -> dict[str, Any]: ...

    async def resume(self, job_id: str) -> dict[str, Any]: ...

    async def cancel(self, job_id: str) -> dict[str, Any]: ...

    async def requeue(self, job_id: str, scope: str = "all") -> dict[str, Any]: ...

    async def priority(self, job_id: str, priority: int) -> dict[str, Any]: ...

    async def delete(self, job_id: str) -> dict[str, Any]: ...

    async def requeue_task(self, task_id: str) -> dict[str, Any]: ...

    def events(self, job_id: str | None = None) -> AsyncIterator[tuple[str, Any]]: ...


class Clock(Protocol):
    """Time as the console sees it: a monotonic clock for rates, a wall clock
    for ages and the time zone that times are shown in."""

    def monotonic(self) -> float: ...

    def now(self) -> datetime: ...


class SystemClock:
    """The machine's clocks, with times shown in the local time zone."""

    def monotonic(self) -> float:
        """Return seconds of the monotonic clock."""
        return time.monotonic()

    def now(self) -> datetime:
        """Return the current time, aware, in the local time zone."""
        return datetime.now().astimezone()
