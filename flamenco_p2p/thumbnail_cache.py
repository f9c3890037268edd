"""The newest frame of each job submitted through this node, as a small JPEG.

A thumbnail is made in a worker thread after each frame arrives. Frames that
arrive while one is being made replace each other, so a fast job costs at most
one conversion at a time, always of its newest frame.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from flamenco_p2p.outputs import safe_path_component

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".exr", ".tif", ".tiff", ".bmp", ".webp", ".tga"}
)
MAX_THUMBNAIL_BYTES = 4 * 1024 * 1024


class Thumbnails:
    """Makes and keeps one thumbnail per job in a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._newest: dict[str, Path] = {}
        self._running: dict[str, asyncio.Task[None]] = {}

    def path(self, job_id: str) -> Path:
        """Where the job's thumbnail is kept."""
        return self.folder / (safe_path_component(job_id) + ".jpg")

    def frame_arrived(self, job_id: str, frame: Path) -> None:
        """Note a delivered output; images become the job's thumbnail."""
        if frame.suffix.lower() not in IMAGE_SUFFIXES:
            return
        self._newest[job_id] = frame
        if job_id not in self._running:
            self._running[job_id] = asyncio.get_running_loop().create_task(
                self._convert(job_id), name=f"thumbnail-{job_id}"
            )

    async def _convert(self, job_id: str) -> None:
        from flamenco_p2p.thumbnails import ThumbnailError, write_thumbnail

        try:
            while job_id in self._newest:
                frame = self._newest.pop(job_id)
                try:
                    await asyncio.to_thread(write_thumbnail, frame, self.path(job_id))
                except (ThumbnailError, OSError) as exc:
                    logger.warning(
                        "no thumbnail for job %s from %s: %s", job_id, frame, exc
                    )
        finally:
            self._running.pop(job_id, None)

    def read(self, job_id: str) -> bytes | None:
        """Return the job's thumbnail, or None when no frame arrived yet."""
        path = self.path(job_id)
        try:
            if path.stat().st_size > MAX_THUMBNAIL_BYTES:
                return None
            return path.read_bytes()
        except OSError:
            return None

    async def close(self) -> None:
        """Wait for conversions in progress."""
        tasks = list(self._running.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
