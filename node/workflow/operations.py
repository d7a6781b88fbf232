"""What an operator can ask of a running node (console, REST API): re-run a series, force
a skipped one, send a job's results again, retry a destination now, and dry-run the
selection rules on a header or a held series. Each returns what happened, or raises
`OperationRefused` with the reason the operator sees."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom

from node.config import Config
from node.dimse.dispatch import deliveries_for, delivery_of
from node.store.ingest import describe
from node.store.records import CORRECTION, JobState, ResultObject, SeriesState
from node.store.repository import Repository
from node.workflow.assembler import facts_of
from node.workflow.selector import Decision, SeriesFacts, choose, judge, reconstruction


class OperationRefused(ValueError):
    """The operation does not apply (unknown series, wrong state...): the reason says why."""


@dataclass(frozen=True)
class DryRun:
    """The selection rules' verdict, and what was judged."""

    process: bool
    kind: str
    reason: str
    series_uid: str
    description: str
    note: str = ""  # what a single header cannot tell


class Operations:
    def __init__(
        self, config: Config, repository: Repository, wake_workers: Callable[[], None],
        wake_dispatch: Callable[[], None],
    ) -> None:  # fmt: skip
        self.config = config
        self.repository = repository
        self.wake_workers = wake_workers
        self.wake_dispatch = wake_dispatch

    def rerun(self, series_uid: str) -> int:
        """A new job for a done, failed or skipped series (skipped: processed regardless of
        the rules, as the force AE title does); its report supersedes the last one."""
        series = self.repository.series_by_uid(series_uid)
        if series is None:
            raise OperationRefused(f"no series {series_uid}")
        kind: str | None = None
        if series.state == SeriesState.SKIPPED:
            if series.kind != CORRECTION and series.modality.upper() not in ("MR", ""):
                raise OperationRefused(f"series {series_uid} is {series.modality}, not MR")
            facts = facts_of(series, [])
            kind = reconstruction(facts)
        job = self.repository.requeue(
            series.id, f"requested by an operator (was {series.state}: {series.reason})"[:500],
            self.config.jobs.max_attempts, kind=kind,
        )  # fmt: skip
        if job is None:
            raise OperationRefused(
                f"series {series_uid} is {series.state}: only done, failed or skipped series "
                "can be run again (a purged one has no files)"
            )
        self.wake_workers()
        return job

    def resend(self, job_id: int, destination: str | None = None) -> int:
        """Send a finished job's objects again (to one destination, or to all that its
        sender maps to); returns the number of objects queued."""
        try:
            job = self.repository.job(job_id)
        except KeyError:
            raise OperationRefused(f"no job {job_id}") from None
        if job.state != JobState.DONE or not job.results_dir:
            raise OperationRefused(f"job {job_id} is {job.state}: it has no results to send")
        series = self.repository.series(job.series_id)
        source = series
        if series.kind == CORRECTION and series.derived_from is not None:
            source = self.repository.series(series.derived_from)
        if destination is None:
            deliveries = deliveries_for(self.config, source.calling_ae)
        else:
            deliveries = [delivery_of(d) for d in self.config.destinations if d.name == destination]
        if not deliveries:
            raise OperationRefused(
                f"no destination {destination!r}" if destination
                else f"no destination takes results from {source.calling_ae!r}"
            )  # fmt: skip
        objects = results_of(Path(job.results_dir))
        if not objects:
            raise OperationRefused(f"the results of job {job_id} are gone (purged)")
        queued = self.repository.add_sends(job_id, objects, deliveries)
        self.wake_dispatch()
        return queued

    def retry(self, destination: str) -> int:
        if destination not in {d.name for d in self.config.destinations}:
            raise OperationRefused(f"no destination {destination!r}")
        due = self.repository.retry_destination(destination)
        self.wake_dispatch()
        return due

    def dry_run_header(self, data: bytes) -> DryRun:
        """The rules on one instance's header (uploaded). A classic series' slice count is
        only known from the whole series: it is left out, and the note says so."""
        try:
            info = describe(data)
        except Exception as exc:
            raise OperationRefused(f"not a readable DICOM instance: {exc}") from exc
        multiframe = len(info.frames) > 1
        facts = SeriesFacts(
            series_uid=info.series_uid, modality=info.modality,
            description=info.series_description, sop_class_uid=info.sop_class_uid,
            image_type=info.image_type, scanning_sequence=info.scanning_sequence,
            series_number=info.series_number, frames=info.frames if multiframe else None,
        )  # fmt: skip
        decision = judge(facts, self.config.selection)
        note = "" if multiframe else (
            f"one image of a classic series: the series also needs at least "
            f"{self.config.selection.min_slices} slice positions with one TI each"
        )  # fmt: skip
        return _dry(decision, facts, note)

    def dry_run_series(self, series_uid: str) -> DryRun:
        """The rules on a held series, within its study, as the assembler would judge it
        now (the PSIR/magnitude preference included)."""
        series = self.repository.series_by_uid(series_uid)
        if series is None:
            raise OperationRefused(f"no series {series_uid}")
        study = [
            s for s in self.repository.study_series(series.study_id)
            if s.state != SeriesState.PURGED and s.origin == series.origin
        ]  # fmt: skip
        facts = [facts_of(s, self.repository.series_frames(s.id)) for s in study]
        decision = choose(facts, self.config.selection)[series_uid]
        mine = next(f for f in facts if f.series_uid == series_uid)
        return _dry(decision, mine, "")


def _dry(decision: Decision, facts: SeriesFacts, note: str) -> DryRun:
    return DryRun(
        decision.process, decision.kind, decision.reason, facts.series_uid, facts.description,
        note,
    )  # fmt: skip


def results_of(results_dir: Path) -> list[ResultObject]:
    """The DICOM objects a job wrote (SEG, SR, PDF, summary, overlays), read back."""
    objects = []
    for path in sorted(results_dir.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        number, instance = ds.get("SeriesNumber"), ds.get("InstanceNumber")
        objects.append(
            ResultObject(
                path=str(path), sop_class_uid=str(ds.SOPClassUID), sop_uid=str(ds.SOPInstanceUID),
                series_uid=str(ds.SeriesInstanceUID), modality=str(ds.get("Modality", "")),
                description=str(ds.get("SeriesDescription", "")),
                series_number=int(number) if number is not None else None,
                instance_number=int(instance) if instance is not None else None,
                transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                size=path.stat().st_size,
            )
        )  # fmt: skip
    return objects
