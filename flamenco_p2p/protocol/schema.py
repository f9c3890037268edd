"""A small declarative schema language for validating decoded message bodies."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flamenco_p2p.errors import ProtocolError


@dataclass(frozen=True, slots=True)
class Str:
    """A string of bounded length, optionally of lowercase hex digits only."""

    max_len: int = 256
    min_len: int = 0
    hex: bool = False

    def check(self, path: str, value: Any) -> Any:
        if not isinstance(value, str):
            raise _wrong(path, value, "a string")
        if not self.min_len <= len(value) <= self.max_len:
            raise ProtocolError(
                f"{path}: length {len(value)} is outside"
                f" {self.min_len}..{self.max_len}",
                path,
            )
        if self.hex and value.strip("0123456789abcdef"):
            raise ProtocolError(f"{path}: {value[:40]!r} is not lowercase hex", path)
        return value


@dataclass(frozen=True, slots=True)
class Int:
    """An integer in a closed range; booleans are rejected."""

    low: int = -(2**53)
    high: int = 2**53

    def check(self, path: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(path, value, "an integer")
        if not self.low <= value <= self.high:
            raise ProtocolError(
                f"{path}: {value} is outside {self.low}..{self.high}", path
            )
        return value


@dataclass(frozen=True, slots=True)
class Float:
    """A finite number in a closed range; integers are accepted."""

    low: float = -1e15
    high: float = 1e15

    def check(self, path: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong(path, value, "a number")
        if not math.isfinite(value) or not self.low <= value <= self.high:
            raise ProtocolError(
                f"{path}: {value} is outside {self.low}..{self.high}", path
            )
        return float(value)


@dataclass(frozen=True, slots=True)
class Bool:
    """A boolean."""

    def check(self, path: str, value: Any) -> Any:
        if not isinstance(value, bool):
            raise _wrong(path, value, "true or false")
        return value


@dataclass(frozen=True, slots=True)
class Bin:
    """A byte string of bounded length."""

    max_len: int

    def check(self, path: str, value: Any) -> Any:
        if not isinstance(value, bytes):
            raise _wrong(path, value, "bytes")
        if len(value) > self.max_len:
            raise ProtocolError(
                f"{path}: {len(value)} bytes is over {self.max_len}", path
            )
        return value


@dataclass(frozen=True, slots=True)
class List:
    """A list of items that all match one schema."""

    item: Check
    max_len: int = 1000

    def check(self, path: str, value: Any) -> Any:
        if not isinstance(value, list):
            raise _wrong(path, value, "a list")
        if len(value) > self.max_len:
            raise ProtocolError(
                f"{path}: {len(value)} items is over {self.max_len}", path
            )
        return [self.item.check(f"{path}[{i}]", v) for i, v in enumerate(value)]


@dataclass(frozen=True, slots=True)
class Optional:
    """A value that may be nil."""

    inner: Check

    def check(self, path: str, value: Any) -> Any:
        return None if value is None else self.inner.check(path, value)


@dataclass(frozen=True, slots=True)
class Plain:
    """Any tree of plain values (maps with string keys, lists, scalars), bounded.

    Used for nested settings that a later layer validates field by field.
    """

    max_items: int = 200
    max_depth: int = 4

    def check(self, path: str, value: Any) -> Any:
        budget = [self.max_items]
        _check_plain(path, value, self.max_depth, budget)
        return value


@dataclass(frozen=True, slots=True)
class Map:
    """A map with named fields; unknown keys are rejected, missing required ones too."""

    fields: Mapping[str, Check]
    optional: frozenset[str] = frozenset()

    def check(self, path: str, value: Any) -> Any:
        if not isinstance(value, dict):
            raise _wrong(path, value, "a map")
        unknown = [k for k in value if k not in self.fields]
        if unknown:
            raise ProtocolError(f"{path}: unknown field {str(unknown[0])[:40]!r}", path)
        result: dict[str, Any] = {}
        for name, schema in self.fields.items():
            field_path = f"{path}.{name}" if path else name
            if name not in value:
                if name in self.optional:
                    continue
                raise ProtocolError(f"{field_path}: missing", field_path)
            result[name] = schema.check(field_path, value[name])
        return result


Check = Str | Int | Float | Bool | Bin | List | Optional | Plain | Map


def _check_plain(path: str, value: Any, depth: int, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise ProtocolError(f"{path}: too many nested values", path)
    if isinstance(value, dict):
        if depth <= 0:
            raise ProtocolError(f"{path}: nested too deep", path)
        for key, item in value.items():
            if not isinstance(key, str) or len(key) > 64:
                raise ProtocolError(f"{path}: keys must be strings of at most 64", path)
            _check_plain(f"{path}.{key}", item, depth - 1, budget)
    elif isinstance(value, list):
        if depth <= 0:
            raise ProtocolError(f"{path}: nested too deep", path)
        for i, item in enumerate(value):
            _check_plain(f"{path}[{i}]", item, depth - 1, budget)
    elif isinstance(value, str):
        if len(value) > 4096:
            raise ProtocolError(f"{path}: string of {len(value)} is over 4096", path)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(f"{path}: {value} is not a finite number", path)
    elif value is not None and not isinstance(value, bool | int | float):
        raise _wrong(path, value, "a plain value")


def _wrong(path: str, value: Any, expected: str) -> ProtocolError:
    return ProtocolError(
        f"{path}: expected {expected}, got {type(value).__name__}", path
    )
