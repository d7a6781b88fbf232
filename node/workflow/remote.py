"""Jobs run on a host that does not share the receiving node's data folder.

A worker reads each file of a claimed job in place when its indexed path exists there
(the same host, or a shared folder) and otherwise fetches it from the node that holds
it: series over WADO-RS, a superseded job's results (a reader's correction builds on
them) from ``/api/v1/jobs/{id}/results/{name}``. The results of a job whose files were
fetched are handed back to the node holding the series (``POST /api/v1/jobs/{id}/
results``, `accept_results`), which writes them to its own folder and finishes the job
in the index with its own destinations, in one transaction. A worker host keeps only
scratch copies, never the only copy of anything.
"""

from __future__ import annotations

import io
import logging
import shutil
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom

from dicom_templates.written import WrittenObject
from node import __version__
from node.config import Config
from node.dimse.dispatch import deliveries_for
from node.http import multipart
from node.logs import event
from node.store.records import CORRECTION, Claim, JobState, StoredFile
from node.store.repository import Repository
from node.store.storage import Storage, uid_hash
from node.workflow.corrections import (
    adopt_training_pair,
    read_handed_back_pair,
    split_training_pair,
)
from node.workflow.transitions import IllegalTransition

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("node.remote")

# What a correction reads of the results it supersedes (`node.workflow.corrections`).
PREVIOUS_RESULTS = ("sr.dcm", "labels.nii.gz")
SCRATCH_MAX_AGE_S = 3600.0


class RemoteError(RuntimeError):
    """A node that holds a job's files could not give them, or take its results."""


class HandBackRefused(ValueError):
    """Results handed back for a job this node cannot finish (HTTP ``status``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class JobInputs:
    """Where a job's files can be read on this host."""

    paths: list[Path]  # the series' files, newest first
    source_paths: list[Path]  # a correction's source series
    previous: Path | None  # the superseded job's results folder
    fetched: bool  # something came from another node: results go back to it

    @classmethod
    def in_place(cls, claim: Claim) -> JobInputs:
        """Every file read where the index says it is (one host, or a shared folder)."""
        source = claim.correction.source_paths if claim.correction else []
        previous = Path(claim.previous_results) if claim.previous_results else None
        return cls([Path(p) for p in claim.paths], [Path(p) for p in source], previous, False)


class NodeClient:
    """What a worker asks of the receiving nodes, over their HTTP service."""

    def __init__(self, config: Config, repository: Repository) -> None:
        import httpx  # not imported by a node that never fetches (start-up time)

        cluster = config.cluster
        headers = {"User-Agent": f"lge-node-worker/{__version__}"}
        if cluster.token:
            headers["Authorization"] = f"Bearer {cluster.token}"
        verify: Any = True
        if cluster.ca_certificate:
            verify = ssl.create_default_context(cafile=str(cluster.ca_certificate))
        self.client = httpx.Client(headers=headers, verify=verify, timeout=cluster.timeout_s)
        self.repository = repository

    def close(self) -> None:
        self.client.close()

    def url_of(self, node: str) -> str:
        url = self.repository.node_url(node)
        if not url:
            raise RemoteError(
                f"node {node!r} holds files of this job but has no HTTP address in the index "
                "(its http.enabled, cluster.url or http.public_url)"
            )
        return url.rstrip("/")

    def _check(self, response: httpx.Response, what: str) -> None:
        if response.status_code != 200:
            text = " ".join(response.text.split())[:200]
            raise RemoteError(
                f"{what}: {response.request.url} answered {response.status_code} {text}"
            )

    def fetch_series(self, files: list[StoredFile], into: Path) -> dict[str, Path]:
        """The instance files of ``files`` (of one or more series), each from the node that
        holds it, over WADO-RS as stored; returns SOP Instance UID -> local path."""
        got: dict[str, Path] = {}
        into.mkdir(parents=True, exist_ok=True)

        def key(f: StoredFile) -> tuple[str, str, str]:
            return f.node, f.study_uid, f.series_uid

        for (node, study, series), group in groupby(sorted(files, key=key), key=key):
            wanted = {f.sop_uid for f in group}
            url = f"{self.url_of(node)}/dicom-web/studies/{study}/series/{series}"
            t0 = time.perf_counter()
            response = self.client.get(
                url, headers={"Accept": 'multipart/related; type="application/dicom"; '
                                        "transfer-syntax=*"},
            )  # fmt: skip
            self._check(response, f"series {series} from node {node!r}")
            try:
                parts = multipart.split(response.content, response.headers["content-type"])
            except (KeyError, multipart.MultipartError) as exc:
                raise RemoteError(f"series {series} from node {node!r}: {exc}") from None
            for _, data in parts:
                ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                                     specific_tags=["SOPInstanceUID"])  # fmt: skip
                sop = str(ds.SOPInstanceUID)
                if sop in wanted:
                    path = into / f"{uid_hash(sop)}.dcm"
                    path.write_bytes(data)
                    got[sop] = path
            missing = wanted - got.keys()
            if missing:
                raise RemoteError(
                    f"node {node!r} gave {len(wanted) - len(missing)} of the {len(wanted)} "
                    f"instances of series {series}"
                )
            event(
                log, "series_fetched", series=series, node=node, instances=len(wanted),
                mb=round(len(response.content) / 2**20, 2),
                seconds=round(time.perf_counter() - t0, 2),
            )  # fmt: skip
        return got

    def fetch_results(self, node: str, job_id: int, names: Iterable[str], into: Path) -> Path:
        """Files of a finished job's results (those it has) into ``into``."""
        into.mkdir(parents=True, exist_ok=True)
        base = self.url_of(node)
        for name in names:
            response = self.client.get(f"{base}/api/v1/jobs/{job_id}/results/{name}")
            if response.status_code == 404:
                continue
            self._check(response, f"result {name} of job {job_id} from node {node!r}")
            (into / name).write_bytes(response.content)
        return into

    def hand_back(
        self, node: str, job_id: int, files: list[tuple[str, Path]], seconds: float
    ) -> str:
        """Give a job's results to the node holding its series, which finishes the job;
        returns the node's results folder."""
        boundary = multipart.new_boundary()
        items = (
            ({"Content-Type": "application/octet-stream", "Content-Location": name},
             path.read_bytes())
            for name, path in files
        )  # fmt: skip
        response = self.client.post(
            f"{self.url_of(node)}/api/v1/jobs/{job_id}/results",
            params={"seconds": round(seconds, 3)},
            content=b"".join(multipart.encode(items, boundary)),
            headers={"Content-Type": f'multipart/related; type="application/octet-stream"; '
                                     f"boundary={boundary}"},
        )  # fmt: skip
        self._check(response, f"results of job {job_id} to node {node!r}")
        folder: str = response.json()["results_dir"]
        return folder


class Remote:
    """A worker's view of the files of its jobs: in place, or fetched into scratch."""

    def __init__(self, config: Config, storage: Storage, repository: Repository) -> None:
        self.config = config
        self.scratch_root = storage.root / "fetched"
        self.client = NodeClient(config, repository)

    def close(self) -> None:
        self.client.close()

    def scratch(self, job_id: int) -> Path:
        return self.scratch_root / f"job{job_id:06d}"

    def clean(self, job_id: int) -> None:
        shutil.rmtree(self.scratch(job_id), ignore_errors=True)

    def clean_stale(self) -> int:
        """Scratch folders jobs interrupted by a crash left (older than an hour)."""
        if not self.scratch_root.is_dir():
            return 0
        cutoff = time.time() - SCRATCH_MAX_AGE_S
        old = [p for p in self.scratch_root.iterdir() if p.stat().st_mtime < cutoff]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
        return len(old)

    def _here(self, f: StoredFile) -> bool:
        return self.config.cluster.fetch != "dicomweb" and Path(f.path).is_file()

    def prepare(self, claim: Claim) -> JobInputs:
        """Local paths of everything the job reads, fetched where not here."""
        source = claim.correction.source_files if claim.correction else []
        remote = [f for f in [*claim.files, *source] if f.node and not self._here(f)]
        if not remote:
            return JobInputs.in_place(claim)
        scratch = self.scratch(claim.job_id)
        shutil.rmtree(scratch, ignore_errors=True)  # leftovers of an interrupted attempt
        fetched = self.client.fetch_series(remote, scratch / "instances")

        def local(files: list[StoredFile]) -> list[Path]:
            return [fetched.get(f.sop_uid, Path(f.path)) for f in files]

        previous = None
        if claim.previous_job is not None and claim.previous_results:
            here = Path(claim.previous_results)
            if self.config.cluster.fetch != "dicomweb" and here.is_dir():
                previous = here
            elif claim.previous_node:
                previous = self.client.fetch_results(
                    claim.previous_node, claim.previous_job, PREVIOUS_RESULTS,
                    scratch / "previous",
                )  # fmt: skip
        return JobInputs(local(claim.files), local(source), previous, True)

    def hand_back(self, claim: Claim, out: Path, dicom: list[Path], seconds: float) -> str:
        """Send the results in ``out`` (DICOM objects first, in ``dicom``'s order, then
        the other files) to the node holding the series; returns its results folder."""
        ordered = [*dicom, *(p for p in sorted(out.rglob("*")) if p.is_file() and p not in dicom)]
        files = [(p.relative_to(out).as_posix(), p) for p in ordered if not p.name.startswith(".")]
        return self.client.hand_back(claim.series.node, claim.job_id, files, seconds)


def accept_results(
    config: Config, storage: Storage, repository: Repository, job_id: int,
    files: list[tuple[str, bytes]], seconds: float,
) -> Path:  # fmt: skip
    """Results of a running job, handed back by a worker on another host: written to this
    node's results folder, indexed and queued for this node's destinations with the job
    marked done (one transaction). `HandBackRefused` when this node cannot take them."""
    try:
        record = repository.job(job_id)
    except KeyError:
        raise HandBackRefused(404, f"no job {job_id}") from None
    series = repository.series(record.series_id)
    if record.state != JobState.RUNNING:
        raise HandBackRefused(409, f"job {job_id} is {record.state}, not running")
    if not repository.holds(series):
        raise HandBackRefused(409, f"the series of job {job_id} is held by node {series.node!r}")
    files, pair_files = split_training_pair(files)
    by_name = dict(files)
    if "metrics.json" not in by_name:
        raise HandBackRefused(400, "the results hold no metrics.json")
    pair = None
    if pair_files:
        if series.kind != CORRECTION:
            raise HandBackRefused(400, "a training pair comes only with a reader's correction")
        try:
            pair = read_handed_back_pair(pair_files)
        except ValueError as exc:
            raise HandBackRefused(400, f"training pair not usable: {exc}") from None
    folder = storage.results_dir(series.series_uid, job_id)
    objects = []
    # Every name and header is checked before anything is written: a refused hand-back
    # leaves the folder as it was.
    for name, data in files:
        try:
            path = storage.result_file(folder, name)
            if name.endswith(".dcm"):
                ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                objects.append(WrittenObject.of(ds, str(path), len(data)))
        except Exception as exc:  # a bad name, a cut-off or non-DICOM part, no UIDs
            raise HandBackRefused(400, f"result {name!r} not usable: {exc}") from None
    storage.place_results(folder, files)
    if pair is not None:
        adopt_training_pair(storage, config.training_dataset, pair, folder)
        event(log, "training_pair_adopted", job=job_id, training_case=pair.case_id)
    # Results of a reader's correction go where the corrected series' results went.
    calling_ae = series.calling_ae
    if series.kind == CORRECTION and series.derived_from is not None:
        calling_ae = repository.series(series.derived_from).calling_ae
    deliveries = deliveries_for(config, calling_ae)
    try:
        repository.finish_job(
            job_id, str(folder), by_name["metrics.json"].decode(), objects, deliveries, seconds
        )
    except IllegalTransition as exc:  # stalled and re-queued meanwhile
        raise HandBackRefused(409, str(exc)) from None
    event(
        log, "results_handed_back", job=job_id, series=series.series_uid, files=len(files),
        objects=len(objects), destinations=",".join(d.name for d in deliveries) or "-",
    )  # fmt: skip
    return folder
