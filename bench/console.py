"""Console and REST API response times with many series in the index, against Orthanc's
REST API holding the same series: both in one run, on this machine.

    uv run python bench/console.py [--series 10000] [--repeats 20]

Data: N one-image MR series, each in a study of its own with its own accession number,
indexed through the node's ingest path (`describe` + `Repository.record_batch`, as C-STORE
does) and uploaded to a real Orthanc over REST. States are spread as on a busy node (most
skipped, some done with a job, some failed). Then each question is asked R times of both
(the node's real HTTP service in this process, Orthanc over loopback), median and p95:

* the dashboard page (counts, 24 h per hour, newest 15 series) / Orthanc ``/statistics``
* the newest 50 series, and page 100 (offset 5000) / Orthanc ``/series?expand&limit=50``
* a search by accession number prefix / Orthanc ``/tools/find`` (wildcard, expanded)
* one series' page / Orthanc ``/series/{id}``
* ``/metrics`` (Prometheus)
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from rich.console import Console
from rich.progress import track
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.config import Config  # noqa: E402
from node.demo.peers import Orthanc, free_port  # noqa: E402
from node.http.auth import Authenticator, hash_password  # noqa: E402
from node.http.context import Console as Ctx  # noqa: E402
from node.http.service import HttpService  # noqa: E402
from node.store.ingest import describe  # noqa: E402
from node.store.records import Received  # noqa: E402
from node.store.repository import Repository  # noqa: E402
from node.store.storage import Storage  # noqa: E402
from node.workflow.operations import Operations  # noqa: E402


def instance(i: int, rng: random.Random) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = f"Bench^{i}", f"BENCH{i:06d}"
    ds.AccessionNumber = f"ACC{i:07d}"
    ds.StudyDate, ds.Modality = "20261124", "MR"
    ds.SeriesDescription = rng.choice(["LGE PSIR SAX", "cine SAX", "T1 map", "LGE MAG SAX"])
    ds.SeriesNumber, ds.InstanceNumber = 1 + i % 30, 1
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [1.5, 1.5], 8
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((64, 64), np.uint16).tobytes()
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def timed(call: Callable[[], httpx.Response], repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        response = call()
        times.append(time.perf_counter() - t0)
        response.raise_for_status()
    times.sort()
    return statistics.median(times) * 1000, times[int(0.95 * (len(times) - 1))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(1)
    out = Console()
    work = Path(tempfile.mkdtemp(prefix="bench-console-"))
    storage = Storage(work / "node", fsync=False)
    repository = Repository(f"sqlite:///{work / 'node' / 'index.db'}")
    blobs = [instance(i, rng) for i in track(range(args.series), description="instances")]

    t0 = time.perf_counter()
    now = time.time()
    batch: list[Received] = []
    for k, data in enumerate(track(blobs, description="node index")):
        info = describe(data)
        path = storage.instance_path(info.study_uid, info.series_uid, info.sop_uid)
        storage.write_atomic(path, data)
        batch.append(Received(info, str(path), len(data), "SCANNER", "127.0.0.1", False,
                              now - (args.series - k) * 3.0))  # fmt: skip
        if len(batch) == 500:
            repository.record_batch(batch)
            batch = []
    if batch:
        repository.record_batch(batch)
    page = repository.series_page(None, "", 0, args.series)
    uids = [r.series_uid for r in page.items]
    for n, uid in enumerate(uids):
        series = repository.series_by_uid(uid)
        assert series is not None
        if n % 20 == 0:  # 5 % processed (a job each), 1 % failed
            job = repository.enqueue(series.id, "psir", "LGE", 1)
            assert job is not None
            repository.claim_job()
            if n % 100 == 0:
                repository.fail_job(job, "bench: failed", 0.0, final=True)
            else:
                repository.finish_job(job, "", '{"scar_percent": 5.0}', [], [], 1.0)
        else:
            repository.skip_series(series.id, "description matches no include pattern")
    node_index_s = time.perf_counter() - t0

    config = Config(
        storage={"data_dir": work / "node"},
        http={"port": free_port(), "users": [
            {"name": "bench", "role": "admin", "password_hash": hash_password("bench-pass")}
        ]},
    )  # fmt: skip
    ctx = Ctx(
        config, repository, storage,
        Operations(config, repository, lambda: None, lambda: None),
        Authenticator(config.http, b"k" * 32), lambda: (True, ""), lambda: [],
    )  # fmt: skip
    service = HttpService(ctx)
    service.start()
    node = httpx.Client(base_url=f"http://127.0.0.1:{config.http.port}", timeout=60)
    login = node.post("/api/v1/login", data={"username": "bench", "password": "bench-pass"})
    login.raise_for_status()

    with Orthanc(work / "orthanc") as pacs:
        t0 = time.perf_counter()
        orthanc = httpx.Client(base_url=pacs.url, timeout=120)
        for data in track(blobs, description="Orthanc upload"):
            orthanc.post("/instances", content=data).raise_for_status()
        orthanc_index_s = time.perf_counter() - t0
        some = uids[len(uids) // 3]
        orthanc_series = orthanc.post("/tools/lookup", content=some).json()[0]["ID"]
        accession = "ACC00051"  # 10 studies share this prefix at N = 10 000
        rows = [
            ("dashboard / statistics", lambda: node.get("/"),
             lambda: orthanc.get("/statistics")),
            ("summary (API)", lambda: node.get("/api/v1/summary"), None),
            ("newest 50 series", lambda: node.get("/api/v1/series", params={"limit": 50}),
             lambda: orthanc.get("/series", params={"expand": "", "limit": 50, "since": 0})),
            ("series page 100 (offset 5000)",
             lambda: node.get("/api/v1/series", params={"limit": 50, "offset": 5000}),
             lambda: orthanc.get("/series", params={"expand": "", "limit": 50,
                                                    "since": 5000})),
            ("search accession prefix",
             lambda: node.get("/api/v1/series", params={"search": accession}),
             lambda: orthanc.post("/tools/find", json={
                 "Level": "Series", "Expand": True,
                 "Query": {"AccessionNumber": f"{accession}*"}})),
            ("series list page (HTML)", lambda: node.get("/series"), None),
            ("one series (HTML page / REST)", lambda: node.get(f"/series/{some}"),
             lambda: orthanc.get(f"/series/{orthanc_series}")),
            ("failed series (state filter)",
             lambda: node.get("/api/v1/series", params={"state": "failed"}), None),
            ("/metrics", lambda: node.get("/metrics"), None),
        ]  # fmt: skip
        table = Table(title=f"console response times, {args.series} series, "
                            f"median / p95 of {args.repeats} requests (ms)")  # fmt: skip
        table.add_column("question")
        table.add_column("lge-node", justify="right")
        table.add_column("Orthanc REST", justify="right")
        for name, ours, theirs in rows:
            m, p = timed(ours, args.repeats)
            peer = "-"
            if theirs is not None:
                pm, pp = timed(theirs, args.repeats)
                peer = f"{pm:.1f} / {pp:.1f}"
            table.add_row(name, f"{m:.1f} / {p:.1f}", peer)
    service.stop()
    out.print(table)
    out.print(f"loading {args.series} series: lge-node index {node_index_s:.0f} s "
              f"(ingest path + states), Orthanc REST upload {orthanc_index_s:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
