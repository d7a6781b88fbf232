"""The job worker: claims queued jobs from the index, runs the pipeline and the output
builders, and hands the results to the outbox, one job per series at a time.

A job's results and its outbox rows are committed together, so a crash mid-job leaves
the job to run again after restart and nothing half-done is ever sent.
"""

from __future__ import annotations

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
from node.store.records import Claim
from node.store.repository import Repository
from node.store.storage import Storage
from pipeline.errors import SeriesLoadError

if TYPE_CHECKING:
    from dicom_templates.identity import Algorithm
    from pipeline.run import Pipeline

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
        self.pipeline: Pipeline | None = None
        self.algorithm: Algorithm | None = None
        self.load_error: str | None = None

    def load_models(self) -> None:
        from dicom_templates.identity import Algorithm
        from pipeline.models import ModelBundle
        from pipeline.run import Pipeline, PipelineSettings

        cfg = self.config.pipeline
        t0 = time.perf_counter()
        bundle = ModelBundle.load(cfg.model_dir, cfg.nnunet_model, cfg.yolo_weights)
        self.pipeline = Pipeline(
            bundle,
            PipelineSettings(
                device=cfg.device,
                mirroring=cfg.mirroring,
                nsd=cfg.nsd,
                grey_zone_sd=cfg.grey_zone_sd,
                nonviable_percent=cfg.nonviable_percent,
            ),
        )
        self.algorithm = Algorithm.of_models(bundle)
        event(
            log, "models_loaded", worker=self.name, model=bundle.name, version=bundle.version,
            seconds=round(time.perf_counter() - t0, 2),
        )  # fmt: skip

    def run(self) -> None:
        try:
            self.load_models()
        except Exception as exc:  # the node keeps receiving; jobs wait for a fixed config
            self.load_error = f"{type(exc).__name__}: {exc}"
            notify(self.repository, Event.MODELS_FAILED, self.load_error, worker=self.name)
            self.ready.set()
            return
        self.ready.set()
        while not self.stopping.is_set():
            claim = self.repository.claim_job()
            if claim is None:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            self.process(claim)

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def process(self, claim: Claim) -> None:
        from dicom_templates.outputs import write_outputs
        from pipeline.series import load_series

        assert self.pipeline is not None and self.algorithm is not None
        t0 = time.perf_counter()
        job_id, series = claim.job_id, claim.series
        event(
            log, "job_started", job=job_id, series=series.series_uid, attempt=claim.attempt,
            instances=series.n_instances,
        )  # fmt: skip
        out = self.storage.results_dir(series.series_uid, job_id)
        try:
            shutil.rmtree(out, ignore_errors=True)  # leftovers of an interrupted attempt
            volume = load_series([Path(p) for p in claim.paths], series.series_uid)
            result = self.pipeline.run(volume)
            predecessor = None
            if claim.previous_results is not None:
                predecessor = Path(claim.previous_results) / "sr.dcm"
                predecessor = predecessor if predecessor.exists() else None
            files = write_outputs(
                out, volume, result.labels, result.metrics, self.algorithm,
                predecessor_sr=predecessor,
            )  # fmt: skip
            objects = files.objects
            deliveries = deliveries_for(self.config, series.calling_ae)
            seconds = time.perf_counter() - t0
            self.repository.finish_job(
                job_id, str(out), files.metrics.read_text(), objects, deliveries, seconds
            )
        except SeriesLoadError as exc:
            # The data will not get better by trying again: fail now, keep the files.
            self._fail(job_id, series.series_uid, f"not a usable LGE series: {exc}", final=True)
            return
        except Exception as exc:
            self._fail(job_id, series.series_uid, f"{type(exc).__name__}: {exc}", final=False)
            log.debug("job %s traceback:\n%s", job_id, traceback.format_exc())
            return
        m = result.metrics
        event(
            log, "job_done", job=job_id, series=series.series_uid, seconds=round(seconds, 2),
            scar_ml=round(m.scar_ml, 2), scar_percent=round(m.scar_percent, 1),
            mvo_ml=round(m.mvo_ml, 2), objects=len(objects),
            destinations=",".join(d.name for d in deliveries) or "-",
        )  # fmt: skip
        if self.on_done:
            self.on_done()

    def _fail(self, job_id: int, series_uid: str, error: str, final: bool) -> None:
        again = self.repository.fail_job(job_id, error, self.config.jobs.retry_delay_s, final)
        notify(
            self.repository, Event.JOB_FAILED, error, series_uid=series_uid, job_id=job_id,
            retry=again,
        )  # fmt: skip
