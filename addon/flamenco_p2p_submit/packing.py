"""Packing a blend file with everything it needs, with blender-asset-tracer (BAT).

BAT 1.23 follows the file's references: images, linked libraries and their own
references, caches and sequences. It copies each file into a target folder at
its path relative to the project folder. Where a file moves, it rewrites the
references in the copied blend files. Files outside the project go to
``_outside_project/...``. BAT is imported only when packing starts, because it
comes from a bundled wheel that Blender installs with the add-on.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .background import Cancelled

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PackResult:
    """A packed job folder and the files that could not be packed."""

    root: Path
    blend_relative: str
    missing: tuple[Path, ...]


def find_missing_files(blend: Path, project: Path | None = None) -> list[Path]:
    """Return the files the blend file refers to that do not exist, sorted.

    Follows linked libraries too. Copies nothing.
    """
    from blender_asset_tracer import pack

    project = project or blend.parent
    with pack.Packer(
        blend, project, str(project / "_unused_target"), noop=True
    ) as packer:
        packer.strategise()
        return sorted(packer.missing_files)


def pack_blend(
    blend: Path,
    project: Path,
    target: Path,
    blend_name: str,
    cancel: threading.Event | None = None,
) -> PackResult:
    """Copy the blend file and its dependencies into target; raises Cancelled.

    The packed blend file is renamed to blend_name, so a copy saved under a
    temporary name arrives with the artist's file name. Missing files are
    skipped and listed in the result.
    """
    from blender_asset_tracer import pack
    from blender_asset_tracer.pack import progress

    target.mkdir(parents=True, exist_ok=True)
    with pack.Packer(blend, project, str(target)) as packer:

        class Watcher(progress.Callback):  # type: ignore[misc]
            """Stops BAT between files once the artist cancels."""

            def _check(self) -> None:
                if cancel is not None and cancel.is_set():
                    packer.abort("cancelled by the artist")

            def trace_asset(self, filename: Path) -> None:
                self._check()

            def transfer_file(self, src: Path, dst: Any) -> None:
                self._check()

        packer.progress_cb = Watcher()
        try:
            packer.strategise()
            packer.execute()
        except pack.Aborted:
            raise Cancelled("packing was cancelled") from None
        output = Path(packer.output_path)
        missing = tuple(sorted(packer.missing_files))
    relative = output.relative_to(target)
    renamed = relative.with_name(blend_name)
    if renamed != relative:
        output.replace(target / renamed)
    for path in missing:
        logger.warning("missing file not packed: %s", path)
    return PackResult(target, renamed.as_posix(), missing)
