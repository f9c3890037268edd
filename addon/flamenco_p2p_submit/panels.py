"""The Farm Submit panel in the Output properties, and the farm list."""

from typing import Any

import bpy

from . import frames
from .properties import preferences


def draw_farm_choice(layout: Any, context: bpy.types.Context, prefs: Any) -> None:
    """Draw the farms found over mDNS, with a button to pick each."""
    session = context.window_manager.flamenco_p2p
    row = layout.row()
    row.operator("flamenco_p2p.find_farms", icon="VIEWZOOM")
    if session.browse_message:
        row.label(text=session.browse_message)
    for index, farm in enumerate(session.farms):
        box = layout.box()
        chosen = prefs.farm_url == farm.api_url and not prefs.node_address.strip()
        header = box.row()
        header.label(text=farm.label, icon="CHECKMARK" if chosen else "NETWORK_DRIVE")
        header.label(text=f"{farm.node_count} node(s), server {farm.server}")
        use = header.operator("flamenco_p2p.use_farm", text="Use")
        use.index = index


class FLAMENCO_P2P_PT_submit(bpy.types.Panel):
    """Submit the open file to a flamenco-p2p farm"""

    bl_idname = "FLAMENCO_P2P_PT_submit"
    bl_label = "Farm Submit"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "output"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        prefs = preferences(context)
        scene = context.scene
        settings = scene.flamenco_p2p

        target = prefs.node_address.strip() or prefs.farm_url or "found over mDNS"
        farm = prefs.farm_name or "no farm joined"
        layout.label(text=f"{farm}: {target}", icon="NETWORK_DRIVE")

        layout.prop(settings, "job_name", placeholder=_file_stem())
        scene_spec = frames.scene_range_spec(
            scene.frame_start, scene.frame_end, scene.frame_step
        )
        row = layout.row(align=True)
        row.prop(settings, "frames", placeholder=scene_spec)
        row.operator("flamenco_p2p.scene_frames", text="", icon="FILE_REFRESH")
        _draw_frame_count(layout, settings.frames.strip() or scene_spec)
        layout.prop(settings, "chunk_size")
        layout.prop(settings, "priority")
        layout.prop(settings, "output_dir", placeholder="folder of the output path")
        layout.prop(settings, "gpu")
        layout.prop(settings, "include_unsaved")
        layout.operator("flamenco_p2p.submit", icon="RENDER_ANIMATION")
        _draw_job(layout, context.window_manager.flamenco_p2p)


def _file_stem() -> str:
    name = bpy.path.basename(bpy.data.filepath)
    return name.rsplit(".", 1)[0] if name else "save the file first"


def _draw_frame_count(layout: Any, spec: str) -> None:
    row = layout.row()
    try:
        count = frames.count_frames(spec)
    except frames.FrameSpecError as error:
        row.alert = True
        row.label(text=str(error), icon="ERROR")
        return
    row.label(text=f"{count} frame{'s' if count != 1 else ''}")


def _draw_job(layout: Any, session: Any) -> None:
    if not session.job_id:
        return
    box = layout.box()
    box.label(text=f"{session.job_name}: {session.job_status}", icon="RENDER_RESULT")
    box.label(text=f"Job {session.job_id}")
    box.progress(
        factor=session.job_progress,
        text=f"{session.frames_done} of {session.frames_total} frames",
    )
    box.operator("flamenco_p2p.refresh_job", icon="FILE_REFRESH")
    image = session.thumbnail
    if image is not None and image.preview is not None:
        box.template_icon(icon_value=image.preview.icon_id, scale=8.0)


_CLASSES = (FLAMENCO_P2P_PT_submit,)


def register() -> None:
    """Register the panel."""
    for cls in _CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    """Unregister the panel."""
    for cls in reversed(_CLASSES):
        if getattr(cls, "is_registered", False):
            bpy.utils.unregister_class(cls)
