"""Series completion and selection: a study whose series have been quiet for
``stable_age`` seconds is judged (like Orthanc's StableAge or mercure's series trigger),
or at once when every series holds the instances it is expected to (a retrieve's count,
a multi-frame object, ImagesInAcquisition agreed by all): each newly complete series
gets a job or is skipped with its reason recorded. A received
SEG that edits one of the node's segmentations gets a correction job
(`node.workflow.corrections`)."""

from __future__ import annotations

import logging

from node.config import Config
from node.logs import event
from node.store.records import CORRECTION, Origin, SeriesRecord, SeriesState
from node.store.repository import Repository
from node.workflow.corrections import is_seg, recognise
from node.workflow.selector import Decision, SeriesFacts, choose

log = logging.getLogger("node.assembler")


def facts_of(series: SeriesRecord, frames: list[tuple[str | None, float | None]]) -> SeriesFacts:
    return SeriesFacts(
        series_uid=series.series_uid,
        modality=series.modality,
        description=series.description,
        sop_class_uid=series.sop_class_uid,
        image_type=series.image_type,
        scanning_sequence=series.scanning_sequence,
        series_number=series.series_number,
        frames=frames,
        n_instances=series.n_instances,
        forced=series.forced,
    )


class Assembler:
    def __init__(self, config: Config, repository: Repository) -> None:
        self.config = config
        self.repository = repository

    def check(self) -> int:
        """Judge every quiet study, and every study whose series all hold the instances
        they are expected to (`Repository.complete_studies`); returns the jobs queued."""
        quiet = self.repository.quiet_studies(self.config.storage.stable_age_s)
        complete = [s for s in self.repository.complete_studies() if s not in quiet]
        for study_id in complete:
            event(log, "study_complete", study=study_id, judged="without waiting stable_age")
        queued = 0
        for study_id in quiet + complete:
            queued += self._judge_study(study_id)
        return queued

    def _judge_study(self, study_id: int) -> int:
        repo = self.repository
        # Series judged earlier take part, so a late magnitude series still defers to
        # the PSIR series of the same acquisition that was processed before.
        judged = [
            s for s in repo.study_series(study_id)
            if s.state != SeriesState.PURGED and s.origin != Origin.RESULT
        ]  # fmt: skip
        facts = [facts_of(s, repo.series_frames(s.id)) for s in judged]
        decisions = choose(facts, self.config.selection)
        queued = 0
        for s in judged:
            if s.state != SeriesState.RECEIVING or not repo.holds(s):
                continue  # judged already, or by the node that holds its files
            decision = decisions[s.series_uid]
            source_id = None
            if is_seg(s) and self.config.corrections.enabled:
                recognition = recognise(s, repo)
                source_id = recognition.source.id if recognition.source else None
                kind = CORRECTION if source_id is not None else ""
                decision = Decision(source_id is not None, kind, recognition.reason)
            if decision.process:
                job_id = repo.enqueue(
                    s.id, decision.kind, decision.reason, self.config.jobs.max_attempts,
                    source_id=source_id,
                )  # fmt: skip
                if job_id is not None:
                    queued += 1
                    event(
                        log, "series_queued", series=s.series_uid, job=job_id,
                        instances=s.n_instances, kind=decision.kind, reason=decision.reason,
                    )  # fmt: skip
            elif repo.skip_series(s.id, decision.reason, decision.kind):
                event(
                    log, "series_skipped", series=s.series_uid, instances=s.n_instances,
                    reason=decision.reason,
                )  # fmt: skip
        return queued
