"""The keys that change a job, shared by the jobs screen and the job screen."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from textual.binding import Binding, BindingType

from flamenco_p2p.console.format import plain
from flamenco_p2p.console.model import Job
from flamenco_p2p.console.widgets import (
    GLOBAL_BINDINGS,
    ConfirmScreen,
    ConsoleScreen,
    RequeueScreen,
)

PRIORITY_STEP = 10
"""How far one press of + or - moves a job's priority (0 to 100)."""
PRIORITY_GROUP = Binding.Group("Priority", compact=True)


class JobActionScreen(ConsoleScreen):
    """A screen with a current job that the change keys act on."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "pause", "Pause"),
        Binding("r", "resume", "Resume"),
        Binding("c", "cancel_job", "Cancel"),
        Binding("R", "requeue", "Requeue"),
        Binding(
            "plus,equals_sign",
            f"priority({PRIORITY_STEP})",
            "Priority up",
            key_display="+",
            group=PRIORITY_GROUP,
        ),
        Binding(
            "minus",
            f"priority({-PRIORITY_STEP})",
            "Priority down",
            key_display="-",
            group=PRIORITY_GROUP,
        ),
        Binding("delete", "delete_job", "Delete", show=False),
        *GLOBAL_BINDINGS,
    ]

    def current_job(self) -> Job | None:
        """Return the job that the keys act on, or None."""
        return None

    def _job(self) -> Job | None:
        job = self.current_job()
        if job is None:
            self.notify("No job is selected.", severity="warning", timeout=3)
        return job

    def action_pause(self) -> None:
        """Pause the job, after a confirmation while its tasks run.

        A pause stops the running tasks, which lose their work and render
        again when the job resumes.
        """
        job = self._job()
        if job is None:
            return
        source = self.console.source

        running = int((job.get("task_counts") or {}).get("active", 0))
        if not running:
            self.console.change_job("Pause", job, lambda: source.pause(job["id"]))
            return
        question = (
            f"Pause job {plain(job['name'])}?\n\nIts {running} running"
            f" task{'s' if running != 1 else ''} stop and their work is lost;"
            " they render again when the job resumes."
        )
        self._change_after_confirming(
            "Pause", job, lambda: source.pause(job["id"]), question
        )

    def action_resume(self) -> None:
        """Queue a paused job again."""
        if (job := self._job()) is not None:
            source = self.console.source
            self.console.change_job("Resume", job, lambda: source.resume(job["id"]))

    def action_cancel_job(self) -> None:
        """Cancel the job, after a confirmation."""
        job = self._job()
        if job is None:
            return
        source = self.console.source
        question = (
            f"Cancel job {plain(job['name'])}?\n\nRunning tasks stop and their"
            " work is lost; no more tasks start. A requeue can run the job again."
        )
        self._change_after_confirming(
            "Cancel", job, lambda: source.cancel(job["id"]), question
        )

    def action_requeue(self) -> None:
        """Run the job's tasks again: all of them, after a confirmation, or the
        failed ones."""
        job = self._job()
        if job is None:
            return
        source = self.console.source

        def answered(scope: str | None) -> None:
            if scope is not None:
                self.console.change_job(
                    f"Requeue ({scope} tasks)",
                    job,
                    lambda: source.requeue(job["id"], scope),
                )

        self.app.push_screen(RequeueScreen(plain(job["name"])), answered)

    def action_priority(self, step: int) -> None:
        """Raise or lower the job's priority by step, within 0 to 100."""
        job = self._job()
        if job is None:
            return
        job_id = str(job["id"])
        wanted = self.console.wanted_priority
        base = wanted.get(job_id, int(job.get("priority", 50)))
        priority = min(100, max(0, base + step))
        if priority == base:
            self.notify(f"The priority is already {base}.", timeout=3)
            return
        wanted[job_id] = priority
        source = self.console.source

        def finished() -> None:
            if wanted.get(job_id) == priority:
                del wanted[job_id]

        self.console.change_job(
            f"Priority {priority}",
            job,
            lambda: source.priority(job_id, priority),
            finished=finished,
        )

    def action_delete_job(self) -> None:
        """Forget a finished job, after a confirmation."""
        job = self._job()
        if job is None:
            return
        source = self.console.source
        question = (
            f"Delete job {plain(job['name'])}?\n\nThe farm forgets the job, its"
            " tasks and their logs; rendered frames stay where they are."
        )
        self._change_after_confirming(
            "Delete", job, lambda: source.delete(job["id"]), question
        )

    def _change_after_confirming(
        self,
        verb: str,
        job: Job,
        call: Callable[[], Awaitable[dict[str, Any]]],
        question: str,
    ) -> None:
        """Ask question in a dialog, and send the change only if confirmed."""

        def confirmed(answer: bool | None) -> None:
            if answer:
                self.console.change_job(verb, job, call)

        confirm_label = f"{verb} the job"
        self.app.push_screen(ConfirmScreen(question, confirm_label), confirmed)
