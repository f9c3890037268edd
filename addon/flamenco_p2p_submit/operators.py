"""Operators: join a farm, find farms, submit the open file, follow the job.

Network and packing steps run in a BackgroundTask while a modal operator shows
their progress in the status bar and cancels them on Esc. In background mode
(``bpy.app.background``) Blender has no event loop, so execute() runs the same
steps in the calling thread and returns when they end.
"""

import dataclasses
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bpy

from . import addresses, discovery, frames, invite, submission
from .api import FarmClient, FarmError, FarmUnreachable
from .background import BackgroundTask, Cancelled, Progress
from .packing import find_missing_files
from .properties import preferences

logger = logging.getLogger(__name__)

TIMER_SECONDS = 0.1
JOB_POLL_SECONDS = 2.0
THUMBNAIL_IMAGE = "flamenco-p2p latest frame"
_ENDED_STATUSES = frozenset({"completed", "failed", "canceled"})
SEARCH_SOURCE = "the mDNS search"


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """The node to talk to and how the add-on found its address."""

    base_url: str
    source: str


class TargetError(Exception):
    """No farm node to submit to; the message names where the add-on looked."""


def resolve_target(prefs: Any, progress: Progress | None = None) -> Target:
    """Pick the node from the typed address, the chosen farm, or a new search."""
    typed = prefs.node_address.strip()
    if typed:
        try:
            return Target(addresses.node_base_url(typed), "the typed node address")
        except addresses.AddressError as error:
            raise TargetError(f"Node Address: {error}") from None
    if prefs.farm_url:
        return Target(prefs.farm_url, "the farm chosen from the mDNS search")
    interfaces = parse_interfaces(prefs)
    if progress is not None:
        progress.update("Searching for the farm over mDNS")
    adverts = discovery.browse(
        interfaces, prefs.browse_seconds, progress.cancel if progress else None
    )
    for farm in discovery.group_farms(adverts):
        if farm.farm_id == prefs.farm_id and farm.api_url is not None:
            return Target(farm.api_url, SEARCH_SOURCE)
    raise TargetError(
        f"no node of farm {prefs.farm_name or prefs.farm_id!r} answered over mDNS on"
        f" {addresses.describe_interfaces(interfaces)} within"
        f" {prefs.browse_seconds:g} s; check that a node of the farm runs on this"
        " network and that the firewall allows mDNS (UDP port 5353), or type a"
        " node's address in the add-on preferences"
    )


def parse_interfaces(prefs: Any) -> list[str] | None:
    """Return the mDNS interface preference as a list; raises TargetError."""
    try:
        return addresses.parse_interfaces(prefs.mdns_interfaces)
    except addresses.AddressError as error:
        raise TargetError(f"mDNS Interfaces: {error}") from None


def describe_failure(error: BaseException, target: Target | None) -> str:
    """Return an error as one line for Operator.report()."""
    text = str(error)
    if isinstance(error, FarmUnreachable) and target is not None:
        text += f". The address came from {target.source}"
    return text


class FLAMENCO_P2P_OT_join(bpy.types.Operator):
    """Enter the join code that `flamenco-p2p invite` prints on a farm node"""

    bl_idname = "flamenco_p2p.join"
    bl_label = "Enter Join Code"
    bl_options = {"INTERNAL"}

    code: bpy.props.StringProperty(name="Join Code", options={"SKIP_SAVE"})

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        result: set[str] = context.window_manager.invoke_props_dialog(self, width=500)
        return result

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            credentials = invite.parse_join_code(self.code)
        except invite.JoinCodeError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        prefs = preferences(context)
        prefs.farm_name = credentials.farm_name
        prefs.farm_id = credentials.farm_id
        prefs.api_token = credentials.api_token
        if prefs.farm_url:
            found = context.window_manager.flamenco_p2p.farms
            chosen = [f for f in found if f.api_url == prefs.farm_url]
            if chosen and chosen[0].farm_id != credentials.farm_id:
                prefs.farm_url = ""
        context.preferences.is_dirty = True
        self.report({"INFO"}, f"Joined farm {credentials.farm_name!r}")
        return {"FINISHED"}


class _BackgroundOperator(bpy.types.Operator):
    """Shared modal loop: runs a BackgroundTask and polls it on a timer."""

    def start_background(
        self, context: bpy.types.Context, name: str, work: Callable[[Progress], Any]
    ) -> set[str]:
        self._task = BackgroundTask(name, work, Progress())
        self._task.start()
        manager = context.window_manager
        self._timer = manager.event_timer_add(TIMER_SECONDS, window=context.window)
        manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        task = self._task
        assert task is not None
        if event.type == "ESC" and event.value == "PRESS":
            task.progress.cancel.set()
            _status(context, "flamenco-p2p: cancelling…")
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if not task.done:
            message, fraction = task.progress.snapshot()
            _status(context, f"flamenco-p2p: {message} ({fraction:.0%}), Esc cancels")
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        _status(context, None)
        return self.finish_reporting_bugs(context, task)

    def finish(self, context: bpy.types.Context, task: BackgroundTask[Any]) -> set[str]:
        raise NotImplementedError

    def finish_reporting_bugs(
        self, context: bpy.types.Context, task: BackgroundTask[Any]
    ) -> set[str]:
        """Call finish(), turning an unexpected exception into an error report."""
        try:
            return self.finish(context, task)
        except Exception as error:
            logger.exception("%s failed", task.name)
            self.report({"ERROR"}, f"{task.name} failed unexpectedly: {error!r}")
            return {"CANCELLED"}

    def run_blocking(
        self, context: bpy.types.Context, name: str, work: Callable[[Progress], Any]
    ) -> set[str]:
        task = BackgroundTask(name, work, Progress())
        task.run_here()
        return self.finish_reporting_bugs(context, task)


class FLAMENCO_P2P_OT_find_farms(_BackgroundOperator):
    """Search the local network for flamenco-p2p farms over mDNS"""

    bl_idname = "flamenco_p2p.find_farms"
    bl_label = "Find Farms"

    def execute(self, context: bpy.types.Context) -> set[str]:
        prefs = preferences(context)
        try:
            interfaces = parse_interfaces(prefs)
        except TargetError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        seconds = prefs.browse_seconds
        self._interfaces = interfaces

        def work(progress: Progress) -> list[discovery.FarmListing]:
            progress.update("Searching for farms over mDNS")
            adverts = discovery.browse(interfaces, seconds, progress.cancel)
            return discovery.group_farms(adverts)

        if bpy.app.background:
            return self.run_blocking(context, "find farms", work)
        return self.start_background(context, "find farms", work)

    def finish(self, context: bpy.types.Context, task: BackgroundTask[Any]) -> set[str]:
        session = context.window_manager.flamenco_p2p
        try:
            listings: list[discovery.FarmListing] = task.result()
        except (discovery.DiscoveryError, OSError) as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        prefs = preferences(context)
        session.farms.clear()
        for listing in listings:
            entry = session.farms.add()
            entry.farm_id = listing.farm_id
            known = listing.farm_id == prefs.farm_id and prefs.farm_name
            entry.label = prefs.farm_name if known else f"farm {listing.farm_id[:12]}"
            server = listing.server
            entry.server = (
                f"{server.node_id[:8]} at {server.address}" if server else "none yet"
            )
            entry.node_count = len(listing.nodes)
            entry.api_url = listing.api_url or ""
            if known and not prefs.farm_url and entry.api_url:
                prefs.farm_url = entry.api_url
        where = addresses.describe_interfaces(self._interfaces)
        session.browse_message = f"{len(listings)} farm(s) found on {where}"
        self.report({"INFO"}, session.browse_message)
        return {"FINISHED"}


class FLAMENCO_P2P_OT_use_farm(bpy.types.Operator):
    """Submit to this farm"""

    bl_idname = "flamenco_p2p.use_farm"
    bl_label = "Use Farm"
    bl_options = {"INTERNAL"}

    index: bpy.props.IntProperty(min=0)

    def execute(self, context: bpy.types.Context) -> set[str]:
        farms = context.window_manager.flamenco_p2p.farms
        if self.index >= len(farms) or not farms[self.index].api_url:
            self.report({"ERROR"}, "that farm serves no HTTP API; search again")
            return {"CANCELLED"}
        prefs = preferences(context)
        prefs.farm_url = farms[self.index].api_url
        if farms[self.index].farm_id != prefs.farm_id:
            self.report(
                {"WARNING"}, "this is not the farm of your join code; enter its code"
            )
        return {"FINISHED"}


class FLAMENCO_P2P_OT_scene_frames(bpy.types.Operator):
    """Set the frames to the scene's frame range"""

    bl_idname = "flamenco_p2p.scene_frames"
    bl_label = "Scene Range"
    bl_options = {"INTERNAL", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = context.scene
        scene.flamenco_p2p.frames = frames.scene_range_spec(
            scene.frame_start, scene.frame_end, scene.frame_step
        )
        return {"FINISHED"}


class FLAMENCO_P2P_OT_submit(_BackgroundOperator):
    """Pack the open file with its textures and libraries and render it on the farm"""

    bl_idname = "flamenco_p2p.submit"
    bl_label = "Submit to Farm"

    allow_missing: bpy.props.BoolProperty(
        name="Submit with Missing Files",
        description="Submit even when files the scene needs are missing",
        options={"SKIP_SAVE"},
    )

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.scene is not None

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if self.allow_missing or not bpy.data.filepath:
            return self.execute(context)
        original = Path(bpy.data.filepath)
        blend = file_to_pack(context.scene)
        try:
            missing = find_missing_files(blend, original.parent)
        finally:
            if blend != original:
                blend.unlink(missing_ok=True)
        if not missing:
            return self.execute(context)
        context.window_manager.flamenco_p2p.missing_files = "\n".join(
            str(path) for path in missing
        )
        self.allow_missing = True
        result: set[str] = context.window_manager.invoke_props_dialog(
            self, width=600, title="Missing Files", confirm_text="Submit Anyway"
        )
        return result

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        listed = context.window_manager.flamenco_p2p.missing_files.splitlines()
        layout.label(text="These files are missing and will not be rendered:")
        for path in listed[:20]:
            layout.label(text=path, icon="ERROR")
        if len(listed) > 20:
            layout.label(text=f"… and {len(listed) - 20} more")

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            request = self.prepare(context)
        except (TargetError, frames.FrameSpecError, ValueError) as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        # The thread must not read bpy data, so it gets a plain copy of the prefs.
        prefs_snapshot = _PrefsSnapshot.of(preferences(context))
        bpy_filepath = bpy.data.filepath
        found: dict[str, Target] = {}
        self._found_target = found

        def work(progress: Progress) -> submission.SubmitResult:
            try:
                target = found["target"] = resolve_target(prefs_snapshot, progress)
                ready = dataclasses.replace(request, base_url=target.base_url)
                return submission.run_submission(ready, progress)
            finally:
                if request.blend != Path(bpy_filepath):
                    request.blend.unlink(missing_ok=True)

        if bpy.app.background:
            return self.run_blocking(context, "submit", work)
        return self.start_background(context, "submit", work)

    def prepare(self, context: bpy.types.Context) -> submission.SubmitRequest:
        """Check the settings and pick the file to pack.

        That is a copy with the unsaved changes, saved beside the open file, or
        the file as saved on disk.
        """
        if not bpy.data.filepath:
            raise ValueError(
                "save the blend file first: the farm renders a saved file and finds"
                " its textures relative to it"
            )
        prefs = preferences(context)
        if not prefs.api_token:
            raise ValueError(
                "enter the farm's join code first (Preferences > Add-ons >"
                " flamenco-p2p Submit > Enter Join Code)"
            )
        options = job_options(context.scene)
        original = Path(bpy.data.filepath)
        blend = file_to_pack(context.scene)
        return submission.SubmitRequest(
            blend=blend,
            blend_name=original.name,
            project=original.parent,
            options=options,
            base_url="",
            token=prefs.api_token,
            allow_missing=self.allow_missing,
        )

    def finish(self, context: bpy.types.Context, task: BackgroundTask[Any]) -> set[str]:
        target = self._found_target.get("target")
        try:
            result: submission.SubmitResult = task.result()
        except Cancelled:
            self.report({"WARNING"}, "Submission cancelled; nothing was submitted")
            return {"CANCELLED"}
        except (FarmError, TargetError, submission.MissingFilesError) as error:
            self.report({"ERROR"}, describe_failure(error, target))
            return {"CANCELLED"}
        except (discovery.DiscoveryError, OSError) as error:
            self.report({"ERROR"}, f"Submission failed: {error}")
            return {"CANCELLED"}
        session = context.window_manager.flamenco_p2p
        assert target is not None
        session.job_url = target.base_url
        if target.source == SEARCH_SOURCE:
            preferences(context).farm_url = target.base_url
        session.uploaded_bytes = min(result.uploaded_bytes, 2**31 - 1)
        apply_job(session, result.job)
        if not bpy.app.background:
            start_job_polling()
        self.report(
            {"INFO"},
            f"Submitted job {result.job.get('id')}: uploaded {result.uploaded_blobs}"
            f" of {result.total_blobs} files ({result.uploaded_bytes} bytes)",
        )
        return {"FINISHED"}


class FLAMENCO_P2P_OT_refresh_job(bpy.types.Operator):
    """Fetch the job's progress and latest frame from the farm now"""

    bl_idname = "flamenco_p2p.refresh_job"
    bl_label = "Refresh Job"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return bool(context.window_manager.flamenco_p2p.job_id)

    def execute(self, context: bpy.types.Context) -> set[str]:
        session = context.window_manager.flamenco_p2p
        try:
            job, thumbnail = fetch_job(session.job_url, session.job_id)
        except FarmError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        apply_job(session, job)
        if thumbnail is not None:
            apply_thumbnail(session, thumbnail)
        return {"FINISHED"}


@dataclasses.dataclass(frozen=True, slots=True)
class _PrefsSnapshot:
    node_address: str
    farm_url: str
    farm_id: str
    farm_name: str
    mdns_interfaces: str
    browse_seconds: float

    @classmethod
    def of(cls, prefs: Any) -> "_PrefsSnapshot":
        return cls(
            prefs.node_address,
            prefs.farm_url,
            prefs.farm_id,
            prefs.farm_name,
            prefs.mdns_interfaces,
            prefs.browse_seconds,
        )


def file_to_pack(scene: bpy.types.Scene) -> Path:
    """Return the saved file, or a copy with the unsaved changes saved beside it.

    The copy sits in the same folder, so its relative paths resolve the same.
    """
    original = Path(bpy.data.filepath)
    if not (scene.flamenco_p2p.include_unsaved and bpy.data.is_dirty):
        return original
    copy = original.with_name(f".{original.stem}.flamenco-p2p.blend")
    bpy.ops.wm.save_as_mainfile(
        filepath=str(copy), copy=True, check_existing=False, compress=True
    )
    return copy


def job_options(scene: bpy.types.Scene) -> submission.JobOptions:
    """Read the submit panel's settings, with the defaults filled in."""
    settings = scene.flamenco_p2p
    frame_spec = settings.frames.strip() or frames.scene_range_spec(
        scene.frame_start, scene.frame_end, scene.frame_step
    )
    frames.parse_frames(frame_spec)
    output_dir, output_name = output_location(scene)
    name = settings.job_name.strip() or Path(bpy.data.filepath).stem
    return submission.JobOptions(
        name=name,
        frames=frame_spec,
        chunk_size=settings.chunk_size,
        priority=settings.priority,
        output_dir=output_dir,
        output_name=output_name,
        gpu=settings.gpu,
        blender_version="{}.{}.{}".format(*bpy.app.version),
    )


def output_location(scene: bpy.types.Scene) -> tuple[str, str]:
    """Return the absolute output folder and the frame name template."""
    render_path = scene.render.filepath
    folder, _, name = render_path.replace("\\", "/").rpartition("/")
    chosen = scene.flamenco_p2p.output_dir.strip() or (folder + "/" if folder else "")
    absolute = bpy.path.abspath(chosen) if chosen else ""
    if not absolute or not Path(absolute).is_absolute():
        raise ValueError(
            f"the output folder {chosen!r} is not an absolute folder; choose one in"
            " the Farm Submit panel, or save the file so that // paths resolve"
        )
    return str(Path(absolute)), name


def fetch_job(base_url: str, job_id: str) -> tuple[dict[str, Any], bytes | None]:
    """Return the job and its latest frame's JPEG (None before the first)."""
    client = FarmClient(base_url)
    return client.job(job_id), client.thumbnail(job_id)


def apply_job(session: Any, job: dict[str, Any]) -> None:
    """Show a job's state in the panel."""
    session.job_id = str(job.get("id", ""))
    session.job_name = str(job.get("name", ""))
    session.job_status = str(job.get("status", ""))
    session.job_progress = float(job.get("progress") or 0.0)
    session.frames_done = int(job.get("frames_done") or 0)
    session.frames_total = int(job.get("frames_total") or 0)


def apply_thumbnail(session: Any, jpeg: bytes) -> None:
    """Load the latest frame into an image data-block that the panel shows."""
    path = Path(tempfile.gettempdir()) / f"flamenco-p2p-{session.job_id}.jpg"
    path.write_bytes(jpeg)
    image = bpy.data.images.get(THUMBNAIL_IMAGE)
    if image is None:
        image = bpy.data.images.load(str(path), check_existing=False)
        image.name = THUMBNAIL_IMAGE
    else:
        image.filepath = str(path)
        image.reload()
    session.thumbnail = image
    if not bpy.app.background:
        image.preview_ensure()
        image.preview.reload()


_poll_task: BackgroundTask[tuple[dict[str, Any], bytes | None]] | None = None


def start_job_polling() -> None:
    """Follow the current job on a timer until it ends."""
    if not bpy.app.timers.is_registered(_poll_job):
        bpy.app.timers.register(_poll_job, first_interval=JOB_POLL_SECONDS)


def _poll_job() -> float | None:
    global _poll_task  # noqa: PLW0603
    session = bpy.context.window_manager.flamenco_p2p
    if _poll_task is None:
        base_url, job_id = session.job_url, session.job_id
        _poll_task = BackgroundTask(
            "poll job", lambda _progress: fetch_job(base_url, job_id), Progress()
        )
        _poll_task.start()
        return TIMER_SECONDS
    if not _poll_task.done:
        return TIMER_SECONDS
    task, _poll_task = _poll_task, None
    try:
        job, thumbnail = task.result()
    except FarmError as error:
        logger.warning("could not follow job %s: %s", session.job_id, error)
        return JOB_POLL_SECONDS * 5
    apply_job(session, job)
    if thumbnail is not None:
        apply_thumbnail(session, thumbnail)
    for area in bpy.context.screen.areas if bpy.context.screen else ():
        area.tag_redraw()
    if session.job_status in _ENDED_STATUSES:
        return None
    return JOB_POLL_SECONDS


def _status(context: bpy.types.Context, text: str | None) -> None:
    if context.workspace is not None:
        context.workspace.status_text_set(text)


_CLASSES = (
    FLAMENCO_P2P_OT_join,
    FLAMENCO_P2P_OT_find_farms,
    FLAMENCO_P2P_OT_use_farm,
    FLAMENCO_P2P_OT_scene_frames,
    FLAMENCO_P2P_OT_submit,
    FLAMENCO_P2P_OT_refresh_job,
)


def register() -> None:
    """Register the operators."""
    for cls in _CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    """Stop following a job and unregister the operators."""
    if bpy.app.timers.is_registered(_poll_job):
        bpy.app.timers.unregister(_poll_job)
    for cls in reversed(_CLASSES):
        if getattr(cls, "is_registered", False):
            bpy.utils.unregister_class(cls)
