"""Exceptions raised by flamenco-p2p.

The tree, by what the caller can do next::

    FarmError
    ├── ConfigError          fix the config file or the command-line option
    ├── InvalidInput         fix the submitted value (frames, template, job settings)
    │   └── FrameSpecError
    ├── ProtocolError        a peer sent a message that does not decode or validate
    │   └── VersionMismatch
    ├── StateError           the change is not allowed in the current state
    │   ├── InvalidTransition
    │   ├── NotFound
    │   └── StaleAttempt     a result for an attempt that is no longer current
    ├── RenderError          Blender failed to open or render a file
    ├── BlobError            a blob is missing or failed its hash check
    └── FarmUnavailable      no node, manager or server answered; retry later
"""

from __future__ import annotations


class FarmError(Exception):
    """Base of every error that flamenco-p2p raises on purpose."""


class ConfigError(FarmError):
    """The configuration is invalid; the message names the key and the fix."""


class InvalidInput(FarmError):
    """A submitted value is invalid; the message quotes it."""


class FrameSpecError(InvalidInput):
    """A frame specification does not parse."""

    def __init__(self, spec: str, part: str, reason: str) -> None:
        self.spec = spec
        self.part = part
        self.reason = reason
        super().__init__(f"invalid frame spec part {part!r} in {spec!r}: {reason}")


class ProtocolError(FarmError):
    """A message failed to decode or validate."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class VersionMismatch(ProtocolError):
    """A peer speaks a newer protocol version than this node."""


class StateError(FarmError):
    """The requested change is not allowed in the current state."""


class InvalidTransition(StateError):
    """A job or task status change that the state machine does not allow."""

    def __init__(self, kind: str, item_id: str, current: str, requested: str) -> None:
        self.kind = kind
        self.item_id = item_id
        self.current = current
        self.requested = requested
        super().__init__(
            f"{kind} {item_id} cannot go from '{current}' to '{requested}'"
        )


class NotFound(StateError):
    """A job, task, attempt or blob id is unknown."""


class StaleAttempt(StateError):
    """A result names an attempt that is no longer the task's current attempt."""


class RenderError(FarmError):
    """Blender could not open the file, render it, or write a valid output."""


class BlobError(FarmError):
    """A blob is missing, truncated, or does not match its SHA-256."""


class FarmUnavailable(FarmError):
    """No node, manager or server responded in time."""
