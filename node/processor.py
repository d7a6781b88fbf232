"""The job worker: takes queued jobs from the index, runs the pipeline and the output
builders, and hands the results to the outbox, one job per series at a time.

A job's results and its outbox rows are committed together, so a crash mid-job leaves
the job to run again after restart and nothing half-done is ever sent.
"""

from __future__ import annotations

import fnmatch
import logging
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pydicom

from node.config import Config
from node.index import Delivery, Index, ResultObject
from node.logs import event
from node.storage import Storage
from pipeline.errors import SeriesLoadError

log = logging.getLogger("node.processor")


def deliveries_for(config: Config, calling_ae: str) -> list[Delivery]:
    """Destinations whose ``sources`` patterns match the AE title the study came from."""
    return [
        Delivery(d.name, d.ae_title, d.host, d.port)
        for d in config.destinations
        if any(fnmatch.fnmatchcase(calling_ae, pattern) for pattern in d.sources)
    ]


def result_object(path: Path) -> ResultObject:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ResultObject(
        path=str(path), sop_class_uid=str(ds.SOPClassUID), sop_uid=str(ds.SOPInstanceUID),
        series_uid=str(ds.SeriesInstanceUID), modality=str(ds.get("Modality", "")),
        description=str(ds.get("SeriesDescription", "")),
        series_number=int(ds.SeriesNumber) if ds.get("SeriesNumber") is not None else None,
        instance_number=int(ds.InstanceNumber) if ds.get("InstanceNumber") is not None else None,
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID), size=path.stat().st_size,
    )  # fmt: skip


class Worker(threading.Thread):
    """One worker thread with its own models loaded."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        index: Index,
        wake: threading.Event,
        on_done: Callable[[], None] | None = None,
        name: str = "worker-1",
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.config = config
        self.storage = storage
        self.index = index
        self.wake = wake
        self.on_done = on_done
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.pipeline = None
        self.algorithm = None
        self.load_error: str | None = None

    def load_models(self) -> None:
        from dicom_templates.identity import Algorithm
        from pipeline.models import ModelBundle
        from pipeline.run import Pipeline, PipelineSettings

        cfg = self.config.pipeline
        t0 = time.perf_counter()
        bundle = ModelBundle.load(cfg.model_dir, cfg.nnunet_model, cfg.yolo_weights)
        self.pipeline = Pipeline(
            bundle, PipelineSettings(device=cfg.device, mirroring=cfg.mirroring, nsd=cfg.nsd)
        )
        self.algorithm = Algorithm(
            name="lge-node YOLOv8+nnU-Net",
            version=bundle.version,
            synthetic_trained=bundle.synthetic_trained,
        )
        event(
            log, "models_loaded", worker=self.name, model=bundle.name, version=bundle.version,
            seconds=round(time.perf_counter() - t0, 2),
        )  # fmt: skip

    def run(self) -> None:
        try:
            self.load_models()
        except Exception as exc:  # the node keeps receiving; jobs wait for a fixed config
            self.load_error = f"{type(exc).__name__}: {exc}"
            event(log, "models_failed", logging.ERROR, worker=self.name, error=self.load_error)
            self.index.record_event("models_failed", self.load_error)
            self.ready.set()
            return
        self.ready.set()
        while not self.stopping.is_set():
            claim = self.index.claim_job()
            if claim is None:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            self.process(*claim)

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def process(self, job_id: int, series_id: int) -> None:
        from dicom_templates.outputs import write_outputs
        from pipeline.series import load_series

        assert self.pipeline is not None and self.algorithm is not None
        t0 = time.perf_counter()
        series = self.index.series(series_id)
        job = self.index.job(job_id)
        event(
            log, "job_started", job=job_id, series=series.series_uid, attempt=job.attempts,
            instances=series.n_instances,
        )  # fmt: skip
        out = self.storage.results_dir(series.series_uid, job_id)
        try:
            shutil.rmtree(out, ignore_errors=True)  # leftovers of an interrupted attempt
            paths = self.index.series_paths(series_id)
            volume = load_series([Path(p) for p in paths], series.series_uid)
            result = self.pipeline.run(volume)
            previous = self.index.previous_results(job_id)
            predecessor = Path(previous) / "sr.dcm" if previous else None
            if predecessor is not None and not predecessor.exists():
                predecessor = None
            files = write_outputs(
                out, volume, result.labels, result.metrics, self.algorithm,
                predecessor_sr=predecessor,
            )  # fmt: skip
            objects = [result_object(path) for path in files.dicom]
            deliveries = deliveries_for(self.config, series.calling_ae)
            seconds = time.perf_counter() - t0
            self.index.finish_job(
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
        again = self.index.fail_job(job_id, error, self.config.jobs.retry_delay_s, final)
        event(
            log, "job_failed", logging.ERROR, job=job_id, series=series_uid, error=error,
            retry=again,
        )  # fmt: skip
        self.index.record_event("job_failed", error, "ERROR", series_uid=series_uid, job_id=job_id)
