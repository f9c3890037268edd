"""Shared fixtures: bpy's side files kept in a temporary home, and leak checks."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="flamenco-p2p-tests-"))
# bpy (and Blender children) write preferences, caches and temporary files under
# these; pointing them at a throwaway folder keeps the user's own Blender setup
# untouched and every run starting from the same state.
for _name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "BLENDER_USER_RESOURCES"):
    os.environ[_name] = str(_HOME / _name.lower())


def _children() -> set[int]:
    """Return the pids of this process's direct children (Linux only)."""
    me = os.getpid()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[1] == str(me) and fields[0] != "Z":
            found.add(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail a test that leaves a child process running."""
    before = _children()
    yield
    leaked = _children() - before
    assert not leaked, f"test left child processes running: {sorted(leaked)}"
