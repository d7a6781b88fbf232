"""Scale-out on a shared PostgreSQL index with procrastinate: two receiving nodes and two
worker processes (`lge-node worker`), each with its own data folder, a real PostgreSQL
and a real Orthanc. Workers share no files with the nodes: they fetch each series over
WADO-RS from the node that received it and hand the results back to it. Studies from
two senders are each processed exactly once by whichever worker is free; a worker
killed mid-job loses nothing - another one finishes the job; a PostgreSQL outage loses
nothing acknowledged."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import SimpleITK as sitk
from pynetdicom import AE

from tests.cluster_harness import TOKEN, WorkerProcess, receiver
from tests.dicom_tools import reader_seg
from tests.node_harness import NodeProcess, copy_study, reports_for, storescu
from tests.orthanc import Orthanc

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def cluster(postgres, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("scale")
    with Orthanc(work / "orthanc") as pacs:
        destination = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                       "port": pacs.dicom_port}  # fmt: skip
        nodes = [receiver(work, name, postgres.url, destination) for name in ("east", "west")]
        with nodes[0], nodes[1]:
            workers = [WorkerProcess(nodes[0], work / f"worker-{i}", f"worker-{i}")
                       for i in (1, 2)]  # fmt: skip
            for w in workers:
                w.start()
            try:
                yield nodes, workers, pacs
            finally:
                for w in workers:
                    w.stop()


def _done_jobs(node: NodeProcess, series: str) -> list[tuple]:
    return node.query(
        "SELECT j.id, j.attempts FROM jobs j JOIN series s ON j.series_fk = s.id "
        "WHERE s.series_uid = ? AND j.state = 'done'", series,
    )  # fmt: skip


def test_ten_studies_from_two_senders_to_two_nodes_are_each_processed_once(
    cluster, phantom_factory, tmp_path: Path
) -> None:
    nodes, workers, pacs = cluster
    case = phantom_factory(seed=7, kind="psir")
    sent = []  # (receiving node, study, series)
    for i in range(10):
        node, sender = (nodes[0], "SCANNER_A") if i % 2 == 0 else (nodes[1], "SCANNER_B")
        study, series, files = copy_study(case.out_dir / "dicom", tmp_path / f"s{i}")
        storescu(node.port, files, aet=sender)
        sent.append((node, study, series))
    for node, _, series in sent:
        node.wait_done(series, timeout=600)
    started = [j for w in workers for j in w.jobs_started()]
    assert len(started) == len(set(started))  # no job ran twice
    for node, study, series in sent:
        [(job_id, _)] = _done_jobs(node, series)  # exactly once
        assert job_id in started
        # The results live in the receiving node's folder, recorded as held by it, and
        # went out to Orthanc from there.
        [(results_dir, holder)] = node.query(
            "SELECT j.results_dir, s.node FROM jobs j JOIN series s ON j.series_fk = s.id "
            "WHERE j.id = ?", job_id,
        )  # fmt: skip
        assert holder == node.workdir.name
        assert Path(results_dir).is_relative_to(node.data_dir)
        assert (Path(results_dir) / "seg.dcm").is_file()
        assert node.unsent(series) == 0
        modalities = {s["MainDicomTags"].get("Modality") for s in pacs.study_series(study)}
        assert {"SEG", "SR"} <= modalities
    for node in nodes:
        assert "job_started" not in node.log()  # receive-only: the workers did the jobs
        assert "results_handed_back" in node.log()
    # The workers fetched over WADO-RS and kept nothing once done.
    assert sum(w.log().count("series_fetched") for w in workers) >= len(sent)
    for w in workers:
        assert not list(w.data_dir.glob("fetched/*/instances/*.dcm"))
        assert not list(w.data_dir.glob("results/*/*/*.dcm"))


def test_a_readers_correction_is_applied_by_a_worker_on_another_host(
    cluster, phantom_factory, tmp_path: Path
) -> None:
    """A reader's SEG sent to the node holding its series: a worker with its own data
    folder fetches the series, the SEG and the superseded results, and hands back the
    reader-edited results and the training pair, which joins the holding node's dataset
    (a site's corrections gather where its data is, not on whichever worker ran them)."""
    import numpy as np

    from pipeline.labels import Label, scar_mask
    from pipeline.series import load_series

    nodes, workers, pacs = cluster
    node = nodes[1]
    case = phantom_factory(seed=7, kind="psir")
    study, series, files = copy_study(case.out_dir / "dicom", tmp_path / "study")
    storescu(node.port, files, aet="SCANNER_B")
    node.wait_done(series, timeout=600)

    edited = case.labels.copy()
    k = int(np.argmax(scar_mask(edited).sum(axis=(1, 2))))
    edited[k][scar_mask(edited[k])] = Label.MYOCARDIUM
    seg = reader_seg(load_series(files), edited)
    viewer = AE("SCANNER_B")  # a viewer storing the reader's SEG (storescu offers no SEG)
    viewer.add_requested_context(seg.SOPClassUID, seg.file_meta.TransferSyntaxUID)
    assoc = viewer.associate("127.0.0.1", node.port, ae_title="LGE_NODE")
    assert assoc.is_established
    assert assoc.send_c_store(seg).Status == 0
    assoc.release()
    node.wait_done(seg.SeriesInstanceUID, timeout=600)
    ((_, state, _, error),) = node.jobs(seg.SeriesInstanceUID)
    assert (state, error) == ("done", "")
    assert any("correction_applied" in w.log() for w in workers)
    assert "training_pair_adopted" in node.log()

    descriptions = [r.SeriesDescription for r in reports_for(pacs, study, series)]
    assert sorted(descriptions) == ["LGE scar report", "LGE scar report (reader-edited)"]
    dataset = node.data_dir / "training" / "Dataset900_LGECorrections"
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == 1
    (notes,) = (dataset / "provenance").glob("*.json")
    provenance = json.loads(notes.read_text())
    assert provenance["reader_seg_sop_instance_uid"] == seg.SOPInstanceUID
    assert Path(provenance["results"]).is_relative_to(node.data_dir)
    (labels_file,) = (dataset / "labelsTr").glob("*.nii.gz")
    pair = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_file)))
    assert scar_mask(pair).sum() == scar_mask(edited).sum()
    for w in workers:
        assert not (w.data_dir / "training").exists()
        assert not list(w.data_dir.glob("fetched/*/instances/*.dcm"))


def test_a_worker_killed_mid_job_is_replaced_by_another(
    cluster, phantom_factory, tmp_path: Path
) -> None:
    (node, _), workers, _ = cluster
    case = phantom_factory(seed=8, kind="psir")
    _, series, files = copy_study(case.out_dir / "dicom", tmp_path / "kill")
    before = {w.name: len(w.jobs_started()) for w in workers}
    storescu(node.port, files)

    def runner() -> WorkerProcess | None:
        return next((w for w in workers if len(w.jobs_started()) > before[w.name]), None)

    victim = node.wait_for(runner, 120, "a worker to start the job")
    victim.kill()
    survivor = next(w for w in workers if w is not victim)
    node.wait_done(series, timeout=300)
    [(job_id, attempts)] = _done_jobs(node, series)
    assert attempts == 2  # the lost attempt counts
    assert job_id in survivor.jobs_started()
    assert "job_stalled" in survivor.log()
    victim.start()  # back for the other tests
    time.sleep(0.1)


def test_a_postgresql_outage_loses_nothing_acknowledged(
    cluster, postgres, phantom_factory, tmp_path: Path
) -> None:
    """The index goes away for 20 s while a scanner sends: every instance is acknowledged
    (files and journal are on disk), and once PostgreSQL is back the study is indexed,
    processed once and delivered, by workers that waited instead of exiting."""
    (node, _), workers, pacs = cluster
    case = phantom_factory(seed=9, kind="psir")
    study, series, files = copy_study(case.out_dir / "dicom", tmp_path / "outage")
    postgres.stop("immediate")
    try:
        storescu(node.port, files)  # raises unless every C-STORE got Success
        time.sleep(20)
    finally:
        postgres.start()
    node.wait_done(series, timeout=300)
    assert len(_done_jobs(node, series)) == 1
    count = node.query(
        "SELECT count(*) FROM instances i JOIN series s ON i.series_fk = s.id "
        "WHERE s.series_uid = ?", series,
    )  # fmt: skip
    assert count == [(len(files),)]
    assert {"SEG", "SR"} <= {s["MainDicomTags"].get("Modality") for s in pacs.study_series(study)}
    # The workers waited it out (procrastinate's pool reconnects) instead of exiting.
    assert all(w.proc is not None and w.proc.poll() is None for w in workers)
    assert any("Connection refused" in w.log() for w in workers)  # they did notice
    assert node.alive()


def test_the_hand_back_api_takes_results_only_for_a_running_job_it_holds(
    cluster, phantom_factory, tmp_path: Path
) -> None:
    """What a worker may ask of a node, and what it is refused: results for a job that is
    not running (a stalled attempt handing back late), names that leave the folder,
    callers without the token."""
    (node, _), _, _ = cluster
    case = phantom_factory(seed=7, kind="psir")
    _, series, files = copy_study(case.out_dir / "dicom", tmp_path / "api")
    storescu(node.port, files)
    node.wait_done(series, timeout=300)
    [(job_id, results_dir)] = node.query(
        "SELECT j.id, j.results_dir FROM jobs j JOIN series s ON j.series_fk = s.id "
        "WHERE j.state = 'done' AND s.series_uid = ?", series,
    )  # fmt: skip
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{node.http_url}/api/v1/jobs/{job_id}/results"
    got = httpx.get(f"{url}/seg.dcm", headers=auth, timeout=30)
    assert got.status_code == 200
    assert got.content == (Path(results_dir) / "seg.dcm").read_bytes()
    assert httpx.get(f"{url}/..%2F..%2Findex.db", headers=auth, timeout=30).status_code in (
        400, 404,
    )  # fmt: skip
    assert httpx.get(f"{url}/seg.dcm", timeout=30).status_code == 401
    body = b"--b\r\nContent-Location: metrics.json\r\n\r\n{}\r\n--b--\r\n"
    late = httpx.post(
        url, content=body, timeout=30,
        headers={**auth, "Content-Type": 'multipart/related; type="application/octet-stream"; '
                                         "boundary=b"},
    )  # fmt: skip
    assert late.status_code == 409 and "not running" in late.json()["detail"]
    assert (Path(results_dir) / "seg.dcm").is_file()  # the done job's results untouched
    refused = node.query(
        "SELECT outcome FROM audit WHERE action = 'hand_back' AND target = ?", f"job {job_id}"
    )
    assert ("refused",) in refused
