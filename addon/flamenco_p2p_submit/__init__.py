"""flamenco-p2p Submit: find a flamenco-p2p farm and render the open file on it.

Blender imports this package and calls register(). The modules that need bpy
are imported there, so plain Python can import the package and its bpy-free
modules (frame specs, discovery, HTTP client, packing, upload planning).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

# Modules in dependency order. On a second load (Blender's script reload, or
# disable and enable) each is reloaded, so edited code takes effect.
_PLAIN_MODULES = (
    "addresses",
    "invite",
    "frames",
    "background",
    "discovery",
    "api",
    "upload",
    "packing",
    "submission",
)
_BPY_MODULES = ("properties", "operators", "panels")


def _load(name: str) -> ModuleType:
    full_name = f"{__name__}.{name}"
    loaded = sys.modules.get(full_name)
    if loaded is not None:
        return importlib.reload(loaded)
    return importlib.import_module(full_name)


def register() -> None:
    """Register the add-on's classes and properties with Blender."""
    for name in _PLAIN_MODULES:
        _load(name)
    for name in _BPY_MODULES:
        _load(name).register()


def unregister() -> None:
    """Remove what register() added; safe to call after a failed register()."""
    for name in reversed(_BPY_MODULES):
        module = sys.modules.get(f"{__name__}.{name}")
        if module is not None:
            module.unregister()
