"""The job worker: claims queued jobs from the index, runs the pipeline and the output
builders, and hands the results to the outbox, one job per series at a time.

A job's results and its outbox rows are committed together, so a crash mid-job leaves
the job to run again after restart and nothing half-done is ever sent.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from node.config import Config
from node.dimse.dispatch import deliveries_for
from node.events import Event, notify
from node.logs import event
from node.metrics import JOB_SECONDS
from node.store.records import Claim
from node.store.repository import Repository
from node.store.storage import Storage
from node.workflow.corrections import HANDED_BACK, CorrectionError, correct
from node.workflow.drawing import DrawingProcess
from node.workflow.remote import JobInputs, Remote
from pipeline.errors import SeriesLoadError

if TYPE_CHECKING:
    from dicom_templates.outputs import OutputFiles
    from node.workflow.registry import Models
    from pipeline.quantify import Metrics

log = logging.getLogger("node.worker")


class Worker(threading.Thread):
    """One worker thread with its own models loaded."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        repository: Repository,
        wake: threading.Event,
        on_done: Callable[[], None] | None = None,
        name: str = "worker-1",
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.config = config
        self.storage = storage
        self.repository = repository
        self.wake = wake
        self.on_done = on_done
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.models: Models | None = None
        self.load_error: str | None = None
        # procrastinate hands jobs over when the index is shared (`node.store.jobqueue`);
        # otherwise the worker polls the index.
        self.distributed = config.distributed
        # Files not on this host are fetched from the node holding them (`remote`).
        self.remote = Remote(config, storage, repository) if config.distributed else None
        # Overlays and the PDF are drawn beside the SEG/SR encoding (`node.workflow.drawing`).
        self.drawing = DrawingProcess()

    def load_models(self) -> None:
        from node.workflow.registry import Models

        t0 = time.perf_counter()
        self.drawing.start()
        self.models = Models(self.config.pipeline)
        # The models and libraries now loaded live as long as the process: out of the
        # collector's sight, a full collection (pynetdicom asks for one every ~30 s of
        # its server loop, the interpreter after enough allocations) stops every thread
        # for milliseconds instead of tenths of a second.
        gc.freeze()
        for loaded in self.models.loaded.values():
            bundle = loaded.pipeline.bundle
            event(
                log, "model_loaded", worker=self.name, model=loaded.name, title=bundle.name,
                version=bundle.version, folds=",".join(bundle.folds),
            )  # fmt: skip
        event(
            log, "models_loaded", worker=self.name, models=",".join(self.models.loaded),
            default=self.config.pipeline.default, seconds=round(time.perf_counter() - t0, 2),
        )  # fmt: skip

    def run(self) -> None:
        try:
            self._serve()
        finally:
            self.drawing.shutdown(wait=False, cancel_futures=True)

    def _serve(self) -> None:
        try:
            self.load_models()
        except Exception as exc:  # the node keeps receiving; jobs wait for a fixed config
            self.load_error = f"{type(exc).__name__}: {exc}"
            notify(self.repository, Event.MODELS_FAILED, self.load_error, worker=self.name)
            self.ready.set()
            return
        self.ready.set()
        if self.distributed:
            from node.store.jobqueue import Procrastinate

            engine = Procrastinate(self.config.database_url)
            engine.run_worker(self.run_job, self.stopping, self.name, self.repository.requeue_lost)
            return
        while not self.stopping.is_set():
            claim = self.repository.claim_job()
            if claim is None:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            self.process(claim)

    def run_job(self, job_id: int) -> None:
        """One job an engine handed over (skipped if it is no longer queued)."""
        claim = self.repository.claim_job(job_id=job_id)
        if claim is None:
            event(log, "job_not_queued", job=job_id)
            return
        self.process(claim)

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def process(self, claim: Claim) -> None:
        assert self.models is not None
        t0 = time.perf_counter()
        job_id, series = claim.job_id, claim.series
        kind = "correction" if claim.correction else "analysis"
        event(
            log, "job_started", job=job_id, series=series.series_uid, attempt=claim.attempt,
            instances=series.n_instances, kind=kind,
        )  # fmt: skip
        out = self.storage.results_dir(series.series_uid, job_id)
        inputs: JobInputs | None = None
        try:
            shutil.rmtree(out, ignore_errors=True)  # leftovers of an interrupted attempt
            inputs = self._inputs(claim)
            if claim.correction is not None:
                files, metrics, calling_ae = self._correct(claim, inputs, out)
            else:
                files, metrics = self._analyse(claim, inputs, out)
                calling_ae = series.calling_ae
            objects = files.objects
            seconds = time.perf_counter() - t0
            if inputs.fetched:  # the holding node keeps the results and finishes the job
                assert self.remote is not None
                where = self.remote.hand_back(claim, out, files.dicom, seconds)
                shutil.rmtree(out, ignore_errors=True)
                destinations = f"by node {series.node} from {where}"
            else:
                deliveries = deliveries_for(self.config, calling_ae)
                self.repository.finish_job(
                    job_id, str(out), files.metrics.read_text(), objects, deliveries, seconds
                )
                destinations = ",".join(d.name for d in deliveries) or "-"
        except CorrectionError as exc:
            self._fail(job_id, series.series_uid, f"reader's SEG not usable: {exc}", final=True)
            return
        except SeriesLoadError as exc:
            # The data will not get better by trying again: fail now, keep the files.
            self._fail(job_id, series.series_uid, f"not a usable LGE series: {exc}", final=True)
            return
        except Exception as exc:
            self._fail(job_id, series.series_uid, f"{type(exc).__name__}: {exc}", final=False)
            log.debug("job %s traceback:\n%s", job_id, traceback.format_exc())
            return
        finally:
            if self.remote is not None and inputs is not None and inputs.fetched:
                self.remote.clean(job_id)
        JOB_SECONDS.labels(kind).observe(seconds)
        m = metrics
        event(
            log, "job_done", job=job_id, series=series.series_uid, kind=kind,
            seconds=round(seconds, 2), scar_ml=round(m.scar_ml, 2),
            scar_percent=round(m.scar_percent, 1), mvo_ml=round(m.mvo_ml, 2),
            objects=len(objects), destinations=destinations,
        )  # fmt: skip
        if self.on_done:
            self.on_done()

    def _inputs(self, claim: Claim) -> JobInputs:
        """Where the job's files are read: in place, or fetched from their node."""
        return self.remote.prepare(claim) if self.remote else JobInputs.in_place(claim)

    def _analyse(self, claim: Claim, inputs: JobInputs, out: Path) -> tuple[OutputFiles, Metrics]:
        """The model's segmentation of the claimed series."""
        from dicom_templates.outputs import write_outputs
        from pipeline.series import load_series

        assert self.models is not None
        volume = load_series(inputs.paths, claim.series.series_uid)
        model, choice = self.models.for_series(volume.datasets[0], claim.series.calling_ae)
        if len(self.models.loaded) > 1:
            event(
                log, "model_chosen", job=claim.job_id, series=claim.series.series_uid,
                model=model.name, reason=choice.reason,
            )  # fmt: skip
        result = model.pipeline.run(volume)
        previous = inputs.previous
        predecessor = previous / "sr.dcm" if previous else None
        files = write_outputs(
            out, volume, result.labels, result.metrics, model.algorithm,
            predecessor_sr=predecessor if predecessor and predecessor.exists() else None,
            drawing=self.drawing,
        )  # fmt: skip
        return files, result.metrics

    def _correct(
        self, claim: Claim, inputs: JobInputs, out: Path
    ) -> tuple[OutputFiles, Metrics, str]:
        """A reader's SEG applied to the series it edits; results go where that series'
        results went."""
        assert self.models is not None and claim.correction is not None
        source = claim.correction.source
        # The edited labels are credited to the model whose results the reader edited.
        model = self.models.get(_model_of(inputs.previous))
        # A fetched job's training pair goes back with its results, to the node holding
        # the series, so that a site's corrections gather where its data is.
        dataset = out / HANDED_BACK if inputs.fetched else self.config.training_dataset
        corrected = correct(
            inputs.paths[0], inputs.source_paths, claim.correction.source, inputs.previous,
            model.pipeline.settings, model.algorithm, out, dataset,
            received_from=claim.series.calling_ae, drawing=self.drawing,
        )  # fmt: skip
        event(
            log, "correction_applied", job=claim.job_id, series=claim.series.series_uid,
            source=source.series_uid, training_case=corrected.case_id,
        )  # fmt: skip
        return corrected.files, corrected.metrics, source.calling_ae

    def _fail(self, job_id: int, series_uid: str, error: str, final: bool) -> None:
        again = self.repository.fail_job(job_id, error, self.config.jobs.retry_delay_s, final)
        notify(
            self.repository, Event.JOB_FAILED, error, series_uid=series_uid, job_id=job_id,
            retry=again,
        )  # fmt: skip


def _model_of(results: Path | None) -> str | None:
    """The registry name of the model that produced ``results`` (its metrics.json)."""
    path = results / "metrics.json" if results else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("algorithm", {}).get("model")
    except (OSError, ValueError, AttributeError):
        return None
