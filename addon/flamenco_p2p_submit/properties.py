"""The add-on's preferences and the properties it keeps on scenes and windows.

Submit settings live on the scene, so they are saved with the blend file.
Found farms and the running job's feedback live on the window manager, which
Blender does not save. The preferences keep the farm token, never the farm key.
"""

import bpy

from . import addresses

_PACKAGE = __package__ or __name__.rpartition(".")[0]

GPU_ITEMS = [
    ("none", "Any", "Render on any worker, with or without a GPU"),
    ("prefer", "Prefer GPU", "Give the job to GPU workers first"),
    ("require", "Require GPU", "Render only on workers with a GPU"),
]


class FLAMENCO_P2P_FoundFarm(bpy.types.PropertyGroup):
    """One farm that mDNS discovery found."""

    farm_id: bpy.props.StringProperty(name="Farm ID")
    label: bpy.props.StringProperty(name="Farm")
    server: bpy.props.StringProperty(name="Server Node")
    node_count: bpy.props.IntProperty(name="Nodes")
    api_url: bpy.props.StringProperty(name="API Address")


class FLAMENCO_P2P_Session(bpy.types.PropertyGroup):
    """Runtime state: found farms and the feedback of the last submitted job."""

    farms: bpy.props.CollectionProperty(type=FLAMENCO_P2P_FoundFarm)
    browse_message: bpy.props.StringProperty()
    missing_files: bpy.props.StringProperty()
    job_id: bpy.props.StringProperty(name="Job ID")
    job_name: bpy.props.StringProperty(name="Job")
    job_status: bpy.props.StringProperty(name="Status")
    job_url: bpy.props.StringProperty()
    job_progress: bpy.props.FloatProperty(
        name="Progress", min=0.0, max=1.0, subtype="FACTOR"
    )
    frames_done: bpy.props.IntProperty()
    frames_total: bpy.props.IntProperty()
    uploaded_bytes: bpy.props.IntProperty()
    thumbnail: bpy.props.PointerProperty(type=bpy.types.Image)


class FLAMENCO_P2P_SubmitSettings(bpy.types.PropertyGroup):
    """The submit panel's settings, saved with the scene."""

    job_name: bpy.props.StringProperty(
        name="Job Name", description="Name of the job; empty uses the file name"
    )
    frames: bpy.props.StringProperty(
        name="Frames",
        description="Frames to render, such as 1-250, 1-100x2 or 1,5,10-20;"
        " empty renders the scene's frame range",
        # Updates the value, and so the panel's frame count, at each keystroke.
        options={"TEXTEDIT_UPDATE"},
    )
    chunk_size: bpy.props.IntProperty(
        name="Chunk Size",
        description="Frames per task; one worker renders a task's frames in a row",
        default=1,
        min=1,
        max=1000,
    )
    priority: bpy.props.IntProperty(
        name="Priority",
        description="Higher priority jobs get workers first",
        default=50,
        min=0,
        max=100,
    )
    output_dir: bpy.props.StringProperty(
        name="Output Folder",
        description="Folder on the receiving farm node where the frames arrive;"
        " empty uses the folder of the scene's output path",
        subtype="DIR_PATH",
    )
    gpu: bpy.props.EnumProperty(name="GPU", items=GPU_ITEMS, default="none")
    include_unsaved: bpy.props.BoolProperty(
        name="Include Unsaved Changes",
        description="Submit a copy of the open file with its unsaved changes."
        " Off submits the file as saved on disk. Blender's saves of one scene"
        " differ in a few bytes, so each copy uploads the blend file again, while"
        " an unchanged saved file uploads nothing twice",
        default=True,
    )


class FLAMENCO_P2P_Preferences(bpy.types.AddonPreferences):
    """The add-on preferences: the farm's address and its API token."""

    bl_idname = _PACKAGE

    farm_name: bpy.props.StringProperty(name="Farm")
    farm_id: bpy.props.StringProperty(name="Farm ID")
    api_token: bpy.props.StringProperty(
        name="Token",
        description="The farm's HTTP API token, derived from the join code",
        subtype="PASSWORD",
    )
    farm_url: bpy.props.StringProperty(
        name="Chosen Farm Node",
        description="HTTP API of the node picked from the farms found over mDNS",
    )
    node_address: bpy.props.StringProperty(
        name="Node Address",
        description="A farm node's host or IP address, optionally with :port"
        " (default 8888); use it when mDNS is blocked. Overrides the found farm",
    )
    mdns_interfaces: bpy.props.StringProperty(
        name="mDNS Interfaces",
        description="IPv4 addresses of this machine's interfaces to search,"
        " separated by commas; empty searches every interface",
    )
    browse_seconds: bpy.props.FloatProperty(
        name="Search Time",
        description="Seconds to listen for farm nodes",
        default=2.0,
        min=0.5,
        max=30.0,
        unit="TIME_ABSOLUTE",
    )

    def draw(self, context: bpy.types.Context) -> None:
        from .panels import draw_farm_choice

        layout = self.layout
        box = layout.box()
        if self.api_token:
            box.label(text=f"Farm: {self.farm_name}  (id {self.farm_id[:12]}…)")
        else:
            box.label(text="No farm joined yet", icon="ERROR")
        box.operator("flamenco_p2p.join", icon="KEY_HLT")
        draw_farm_choice(layout, context, self)
        layout.prop(self, "node_address")
        layout.prop(self, "mdns_interfaces")
        layout.prop(self, "browse_seconds")
        try:
            addresses.parse_interfaces(self.mdns_interfaces)
        except addresses.AddressError as error:
            layout.label(text=str(error), icon="ERROR")


def preferences(context: bpy.types.Context) -> FLAMENCO_P2P_Preferences:
    """Return the add-on's preferences."""
    prefs: FLAMENCO_P2P_Preferences = context.preferences.addons[_PACKAGE].preferences
    return prefs


_CLASSES = (
    FLAMENCO_P2P_FoundFarm,
    FLAMENCO_P2P_Session,
    FLAMENCO_P2P_SubmitSettings,
    FLAMENCO_P2P_Preferences,
)


def register() -> None:
    """Register the property groups and attach them to scenes and windows."""
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.flamenco_p2p = bpy.props.PointerProperty(
        type=FLAMENCO_P2P_SubmitSettings
    )
    bpy.types.WindowManager.flamenco_p2p = bpy.props.PointerProperty(
        type=FLAMENCO_P2P_Session
    )


def unregister() -> None:
    """Detach and unregister what register() added."""
    for owner in (bpy.types.WindowManager, bpy.types.Scene):
        if hasattr(owner, "flamenco_p2p"):
            del owner.flamenco_p2p
    for cls in reversed(_CLASSES):
        if getattr(cls, "is_registered", False):
            bpy.utils.unregister_class(cls)
