"""Render subsystem: a Blender child process, its asyncio controller, output
validation, capability probing and a demo scene.

runner.py is the child's script and imports only the standard library and bpy, so
it also runs inside a Blender executable.
"""

from __future__ import annotations

from flamenco_p2p.render.capabilities import Capabilities, probe_capabilities
from flamenco_p2p.render.controller import (
    FrameOutput,
    RenderBackend,
    RenderEvent,
    RenderProcess,
    RenderRequest,
)
from flamenco_p2p.render.demo_scene import make_demo_scene, make_text_blend
from flamenco_p2p.render.validate import OutputInfo, validate_output

__all__ = [
    "Capabilities",
    "FrameOutput",
    "OutputInfo",
    "RenderBackend",
    "RenderEvent",
    "RenderProcess",
    "RenderRequest",
    "make_demo_scene",
    "make_text_blend",
    "probe_capabilities",
    "validate_output",
]
