"""A worker's outbox: the attempts it works on and the results it owes, on disk.

Each attempt has one JSON record, replaced atomically at every change of state::

    <key>.json       the record (see OutboxRecord.to_json)
    <key>.outputs/   rendered files kept until the submitting node has them
    <key>.json.tmp   a record being written; removed at load

``key`` is the first 32 hex digits of the SHA-256 of the attempt id, because the
attempt id comes from the network and must never become a path by itself.

A record is in one of three states:

- ``running``: the attempt started. Found at load, it was interrupted (the node
  died or stopped mid-render) and the manager should requeue it.
- ``delivering``: the render finished and its files wait in ``<key>.outputs/``
  for the submitting node.
- ``reporting``: the report (task_done, task_failed or task_canceled) waits for
  the manager's acknowledgement.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flamenco_p2p.render.controller import FrameOutput

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
RUNNING = "running"
DELIVERING = "delivering"
REPORTING = "reporting"
STATES = frozenset({RUNNING, DELIVERING, REPORTING})
REPORT_OPS = frozenset({"task_done", "task_failed", "task_canceled"})
RECORD_SUFFIX = ".json"
OUTPUTS_SUFFIX = ".outputs"
TMP_SUFFIX = ".tmp"
CORRUPT_SUFFIX = ".corrupt"


class CorruptRecord(ValueError):
    """An outbox record does not parse or lacks a field."""


@dataclass(frozen=True, slots=True)
class PendingReport:
    """A result message for the manager: its operation and body."""

    op: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """The saved state of one attempt."""

    attempt_id: str
    worker_id: str
    state: str
    assignment: dict[str, Any]
    outputs: tuple[FrameOutput, ...] = ()
    report: PendingReport | None = None
    saved: float = field(default_factory=time.time)

    @property
    def interrupted(self) -> bool:
        """True when the attempt was running and never reached a result."""
        return self.state == RUNNING

    def to_json(self) -> dict[str, Any]:
        """Return the record as a JSON-compatible map.

        Output paths are not stored: a kept output lives in the record's
        outputs folder under its file name.
        """
        return {
            "version": RECORD_VERSION,
            "attempt_id": self.attempt_id,
            "worker_id": self.worker_id,
            "state": self.state,
            "assignment": self.assignment,
            "outputs": [
                {
                    "frame": output.frame,
                    "name": Path(output.path).name,
                    "size": output.size,
                    "sha256": output.sha256,
                }
                for output in self.outputs
            ],
            "report": (
                None
                if self.report is None
                else {"op": self.report.op, "body": self.report.body}
            ),
            "saved": self.saved,
        }


def attempt_key(attempt_id: str) -> str:
    """Return the file name stem of an attempt's record."""
    return hashlib.sha256(attempt_id.encode()).hexdigest()[:32]


class Outbox:
    """The records of one worker node's attempts in one directory.

    Methods do blocking file I/O with fsync; async callers run them in a thread.
    Every write replaces the whole record, so a crash leaves either the old or
    the new record, never a mix.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def record_path(self, attempt_id: str) -> Path:
        """Return the path of an attempt's record."""
        return self.directory / (attempt_key(attempt_id) + RECORD_SUFFIX)

    def outputs_dir(self, attempt_id: str) -> Path:
        """Return the folder that keeps an attempt's rendered files."""
        return self.directory / (attempt_key(attempt_id) + OUTPUTS_SUFFIX)

    def start(self, assignment: dict[str, Any]) -> OutboxRecord:
        """Save the record of an attempt that starts now.

        It is not flushed to disk, because a killed process leaves it in the page
        cache all the same. A record lost to a power cut only means that the
        manager notices the lost attempt by the worker's silence, not at once.
        """
        record = OutboxRecord(
            assignment["attempt_id"], assignment["worker_id"], RUNNING, assignment
        )
        self.save(record, durable=False)
        return record

    def keep_outputs(
        self, assignment: dict[str, Any], outputs: list[FrameOutput]
    ) -> list[FrameOutput]:
        """Move rendered files into the outbox and mark the attempt delivering.

        Returns the outputs with their new paths. The files are flushed to disk
        before the record names them, so a record never points at lost data.
        """
        folder = self.outputs_dir(assignment["attempt_id"])
        folder.mkdir(exist_ok=True)
        moved = []
        for output in outputs:
            target = folder / Path(output.path).name
            # shutil.move renames within one file system and copies across two.
            shutil.move(output.path, target)
            _fsync_file(target)
            moved.append(
                FrameOutput(output.frame, str(target), output.size, output.sha256)
            )
        _fsync_dir(folder)
        record = OutboxRecord(
            assignment["attempt_id"],
            assignment["worker_id"],
            DELIVERING,
            assignment,
            tuple(moved),
        )
        self.save(record)
        return moved

    def save_report(
        self, assignment: dict[str, Any], op: str, body: dict[str, Any]
    ) -> OutboxRecord:
        """Save the report of an attempt, then delete its kept files."""
        if op not in REPORT_OPS:
            raise ValueError(f"{op!r} is not a report operation")
        record = OutboxRecord(
            assignment["attempt_id"],
            assignment["worker_id"],
            REPORTING,
            assignment,
            report=PendingReport(op, body),
        )
        self.save(record)
        shutil.rmtree(self.outputs_dir(record.attempt_id), ignore_errors=True)
        return record

    def save(self, record: OutboxRecord, durable: bool = True) -> None:
        """Write a record atomically: a temporary file, fsync, rename, fsync.

        durable=False skips both fsyncs; the rename still makes the write atomic
        for a crash of the process.
        """
        path = self.record_path(record.attempt_id)
        tmp = path.with_name(path.name + TMP_SUFFIX)
        data = json.dumps(record.to_json(), separators=(",", ":")).encode()
        with tmp.open("wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_dir(self.directory)

    def remove(self, attempt_id: str) -> None:
        """Delete an attempt's record and kept files; a missing record is fine.

        The record goes first: a crash in between leaves an outputs folder with
        no record, which load() deletes, never a record whose files are gone.
        """
        # No fsync: a record that a power cut brings back is sent again, and the
        # server rejects a result it has already taken as stale.
        self.record_path(attempt_id).unlink(missing_ok=True)
        shutil.rmtree(self.outputs_dir(attempt_id), ignore_errors=True)

    def load(self) -> list[OutboxRecord]:
        """Read every record, oldest first, after cleaning up a crash's leftovers.

        Deletes temporary files and outputs folders without a record. A record
        that does not parse is renamed to ``*.corrupt`` and skipped. A delivering
        record whose files are missing or have the wrong size is returned as
        running, so the attempt counts as interrupted.
        """
        for tmp in self.directory.glob("*" + TMP_SUFFIX):
            tmp.unlink(missing_ok=True)
        records = []
        for path in sorted(self.directory.glob("*" + RECORD_SUFFIX)):
            try:
                record = self._read(path)
            except (OSError, CorruptRecord) as exc:
                corrupt = path.with_name(path.name + CORRUPT_SUFFIX)
                logger.error(
                    "outbox record %s is unreadable (%s): renamed to %s and skipped",
                    path,
                    exc,
                    corrupt.name,
                )
                with contextlib.suppress(OSError):
                    os.replace(path, corrupt)
                continue
            records.append(self._check_outputs(record))
        known = {attempt_key(record.attempt_id) for record in records}
        for folder in self.directory.glob("*" + OUTPUTS_SUFFIX):
            if folder.name.removesuffix(OUTPUTS_SUFFIX) not in known:
                shutil.rmtree(folder, ignore_errors=True)
        records.sort(key=lambda record: record.saved)
        return records

    def _read(self, path: Path) -> OutboxRecord:
        try:
            raw = json.loads(path.read_bytes())
        except ValueError as exc:
            raise CorruptRecord(f"invalid JSON: {exc}") from exc
        record = _record_from_json(raw, self.outputs_dir)
        if attempt_key(record.attempt_id) + RECORD_SUFFIX != path.name:
            raise CorruptRecord(
                f"attempt id {record.attempt_id!r} does not match the file name"
            )
        return record

    def _check_outputs(self, record: OutboxRecord) -> OutboxRecord:
        if record.state != DELIVERING:
            return record
        for output in record.outputs:
            path = Path(output.path)
            try:
                size = path.stat().st_size
            except OSError:
                size = -1
            if size != output.size:
                logger.warning(
                    "outbox: attempt %s lost its rendered file %s (expected %d bytes,"
                    " found %s): the attempt counts as interrupted",
                    record.attempt_id,
                    path,
                    output.size,
                    "none" if size < 0 else f"{size} bytes",
                )
                shutil.rmtree(self.outputs_dir(record.attempt_id), ignore_errors=True)
                return OutboxRecord(
                    record.attempt_id,
                    record.worker_id,
                    RUNNING,
                    record.assignment,
                    saved=record.saved,
                )
        return record


def _record_from_json(raw: Any, outputs_dir: Callable[[str], Path]) -> OutboxRecord:
    if not isinstance(raw, dict):
        raise CorruptRecord("not a JSON object")
    if raw.get("version") != RECORD_VERSION:
        raise CorruptRecord(f"unknown record version {raw.get('version')!r}")
    attempt_id = _field(raw, "attempt_id", str)
    worker_id = _field(raw, "worker_id", str)
    state = _field(raw, "state", str)
    if state not in STATES:
        raise CorruptRecord(f"unknown state {state!r}")
    assignment = _field(raw, "assignment", dict)
    saved = raw.get("saved")
    if isinstance(saved, bool) or not isinstance(saved, int | float):
        raise CorruptRecord("field 'saved' is not a number")

    folder = outputs_dir(attempt_id)
    outputs = tuple(
        _output_from_json(item, folder) for item in _field(raw, "outputs", list)
    )

    report_raw = raw.get("report")
    report = None
    if report_raw is not None:
        if not isinstance(report_raw, dict):
            raise CorruptRecord("field 'report' is not an object")
        op = _field(report_raw, "op", str)
        if op not in REPORT_OPS:
            raise CorruptRecord(f"report operation {op!r} is unknown")
        report = PendingReport(op, _field(report_raw, "body", dict))

    if (state == REPORTING) != (report is not None):
        raise CorruptRecord(f"state {state!r} does not match the report field")
    return OutboxRecord(
        attempt_id, worker_id, state, assignment, outputs, report, float(saved)
    )


def _output_from_json(item: Any, folder: Path) -> FrameOutput:
    if not isinstance(item, dict):
        raise CorruptRecord("an output is not an object")
    name = _field(item, "name", str)
    if not name or Path(name).name != name or name in (".", ".."):
        raise CorruptRecord(f"output name {name!r} is not a plain file name")
    frame = _field(item, "frame", int)
    size = _field(item, "size", int)
    sha256 = _field(item, "sha256", str)
    return FrameOutput(frame, str(folder / name), size, sha256)


def _field(raw: dict[str, Any], name: str, kind: type) -> Any:
    value = raw.get(name)
    if isinstance(value, bool) and kind is not bool:
        raise CorruptRecord(f"field {name!r} is not of type {kind.__name__}")
    if not isinstance(value, kind):
        raise CorruptRecord(f"field {name!r} is missing or not {kind.__name__}")
    return value


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once its directory is flushed (POSIX).
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
