"""``lge-node retrieve``: the node pulls LGE series from a real Orthanc (C-FIND, then
C-MOVE or C-GET of only the LGE series) and returns results to it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from tests.dcmqrscp import DcmQrScp
from tests.node_harness import ROOT, NodeProcess, copy_study, storescu
from tests.orthanc import Orthanc, free_port

pytestmark = pytest.mark.timeout(600)


STABLE_AGE_S = 600.0


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("retrieve")
    node_port = free_port()
    dead_port = free_port()  # a modality the PACS knows, where nothing listens
    pacs = Orthanc(
        work / "orthanc",
        modalities={"lge": ["LGE_NODE", "127.0.0.1", node_port],
                    "broken": ["LGE_BROKEN", "127.0.0.1", dead_port]},
        extra={"DicomAlwaysAllowFind": True},
    )  # fmt: skip
    entry = {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs.dicom_port}
    # stable_age is long: what this node processes, it processes because it knew the
    # series was complete (the retrieve's count, or the headers), not because it waited.
    node = NodeProcess(
        work / "node", destinations=[{"name": "pacs", **entry}], port=node_port,
        stable_age_s=STABLE_AGE_S,
        pacs=[{"name": "orthanc", **entry, "retry_delay_s": 1.0},
              {"name": "orthanc-get", **entry, "method": "get", "retry_delay_s": 1.0}],
    )  # fmt: skip
    with pacs, node:
        yield node, pacs, work


def _retrieve(node: NodeProcess, *args: str, config: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "retrieve", "--config",
         str(config or node.config_path), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, COLUMNS="200"),
    )  # fmt: skip


def _upload_study(pacs: Orthanc, src: Path, work: Path, name: str) -> tuple[str, str, str]:
    """An LGE series and a cine series of one study, stored in the PACS."""
    study, lge, files = copy_study(src, work / name)
    _, cine, cine_files = copy_study(src, work / f"{name}-cine", StudyInstanceUID=study,
                                     SeriesDescription="SAX cine", SeriesNumber=400)  # fmt: skip
    pacs.upload(files + cine_files)
    return study, lge, cine


def test_retrieve_moves_only_the_lge_series_and_results_return(site, psir_classic) -> None:
    node, pacs, work = site
    study, lge, cine = _upload_study(pacs, psir_classic.out_dir / "dicom", work, "a")
    proc = _retrieve(node, "--pacs", "orthanc", "--study", study)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = " ".join(proc.stdout.split())
    assert "matches exclude pattern /cine/" in text
    assert "LGE PSIR SAX: 14 received, 0 failed" in text
    node.wait_done(lge)
    assert node.series_state(cine) is None  # never moved
    assert node.query("SELECT calling_ae FROM series WHERE series_uid = ?", lge) == [("ORTHANC",)]
    kinds = {s["MainDicomTags"]["Modality"] for s in pacs.study_series(study)}
    assert {"MR", "SEG", "SR", "DOC"} <= kinds


def test_retrieve_by_c_get(site, phantom_factory) -> None:
    node, pacs, work = site
    case = phantom_factory(seed=31, kind="magnitude")
    study, lge, _ = _upload_study(pacs, case.out_dir / "dicom", work, "g")
    proc = _retrieve(node, "--pacs", "orthanc-get", "--study", study)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    node.wait_done(lge)
    # done although stable_age is far off: the C-GET's count completed the series
    held = node.query("SELECT n_instances FROM series WHERE series_uid = ?", lge)[0][0]
    assert node.query("SELECT instances, source FROM expectations WHERE series_uid = ?",
                      lge) == [(held, "GET from orthanc-get")]  # fmt: skip


def test_a_pushed_series_whose_headers_give_its_size_is_processed_without_waiting(
    site, psir_classic
) -> None:
    """ImagesInAcquisition agreed by every instance of one acquisition: judged once the
    last arrives. The same series without the hint waits for stable_age (600 s here)."""
    node, _, work = site
    src = psir_classic.out_dir / "dicom"
    _, hinted, files = copy_study(src, work / "hinted", ImagesInAcquisition=14,
                                  AcquisitionNumber=1)  # fmt: skip
    _, plain, plain_files = copy_study(src, work / "plain")
    storescu(node.port, files[:13] + plain_files)
    time.sleep(3.0)  # indexed by now, and nothing judged: 13 of 14, and no hint
    assert node.series_state(hinted)[0] == "receiving"
    storescu(node.port, files[13:])
    node.wait_done(hinted, timeout=60)
    assert node.series_state(plain)[0] == "receiving"
    assert node.log().count("study_complete") >= 1


def test_unknown_study_and_refused_move_give_clear_messages(
    site, tmp_path: Path, psir_classic
) -> None:
    node, pacs, _ = site
    proc = _retrieve(node, "--pacs", "orthanc", "--study", "1.2.3.4.5.6.7.8.9")
    assert proc.returncode == 1
    assert "has no study matching 1.2.3.4.5.6.7.8.9" in " ".join(proc.stderr.split())
    # A node AE title the PACS does not know: the PACS refuses to move to it. (This
    # Orthanc answers C-FIND from anyone, so only the move is refused.)
    stranger = tmp_path / "stranger.toml"
    stranger.write_text(node.config_path.read_text().replace('"LGE_NODE"', '"NOT_KNOWN"'))
    # A study the PACS holds (the node's index may hold studies pushed to it directly).
    study, _, _ = _upload_study(pacs, psir_classic.out_dir / "dicom", tmp_path, "s")
    proc = _retrieve(node, "--pacs", "orthanc", "--study", study, config=stranger)
    assert proc.returncode == 1
    said = " ".join(proc.stderr.split())
    assert "the C-MOVE of series" in said and "know the node as a modality" in said
    proc = _retrieve(node, "--pacs", "nowhere", "--study", study)
    assert proc.returncode == 1 and "no PACS named 'nowhere'" in " ".join(proc.stderr.split())


def test_an_instance_the_node_refuses_fails_the_move_with_a_clear_record(
    site, psir_classic
) -> None:
    """Two instances in the PACS carry UIDs the node refuses (leading zeros). Orthanc
    stops a C-MOVE at the first failed sub-operation: the retrieve says so, and both the
    node's refusal and the failed retrieve are recorded for the operator."""
    node, pacs, work = site
    study, _, files = copy_study(psir_classic.out_dir / "dicom", work / "partial")
    for path in files[-2:]:
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".007"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(path, enforce_file_format=True)
    pacs.upload(files)
    proc = _retrieve(node, "--pacs", "orthanc", "--study", study)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    said = " ".join(proc.stderr.split())
    assert "retrieve failed" in said and "C-MOVE of series" in said
    assert any("is not a valid UID" in m for m, _, _ in node.events("instance_refused"))
    assert any("C-MOVE of series" in m for m, _, _ in node.events("retrieve_failed"))


def test_polling_fetches_new_lge_studies_once_across_restarts(
    tmp_path: Path, phantom_factory
) -> None:
    node_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", modalities={"lge": ["LGE_NODE", "127.0.0.1", node_port]})
    entry = {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs.dicom_port}
    poll = {"name": "orthanc", **entry, "poll_minutes": 0.05, "poll_days": 3650}
    node = NodeProcess(tmp_path / "node", destinations=[{"name": "pacs", **entry}],
                       port=node_port, pacs=[poll])  # fmt: skip
    case = phantom_factory(seed=23, kind="psir", mvo=False)
    with pacs:
        study, lge, _ = _upload_study(pacs, case.out_dir / "dicom", tmp_path, "p")
        node.start()
        node.wait_done(lge, timeout=180)
        node.wait_for(lambda: node.query("SELECT outcome FROM polled_studies"), 30, "poll row")
        node.stop()
        node.start()  # the schedule and what was seen survive the restart
        time.sleep(8)  # > two poll intervals
        node.stop()
    assert node.query("SELECT study_uid, outcome FROM polled_studies") == [
        (study, "fetched 1 LGE series")
    ]
    assert node.log().count("series_retrieved") == 1
    assert node.log().count("study_polled") == 1
    assert [j[1] for j in node.jobs(lge)] == ["done"]

    # Polling switched off in the config: the stored schedule goes with it.
    assert node.query("SELECT id FROM apscheduler_jobs") == [("poll-orthanc",)]
    text = node.config_path.read_text()
    node.config_path.write_text(text.replace("poll_minutes = 0.05", ""))
    node.start()
    node.wait_for(lambda: not node.query("SELECT id FROM apscheduler_jobs"), 30, "no poll job")
    node.stop()


def test_partial_move_is_recorded_and_only_the_failed_instance_retried(
    tmp_path: Path, psir_classic
) -> None:
    """DCMTK's dcmqrscp as the PACS: it goes on past a failed sub-operation and names the
    failed instance. One file is hidden from it for the first attempt; the retrieve
    records the partial move, waits, asks for that one instance again (IMAGE level), and
    the node processes the complete series once."""
    node_port = free_port()
    study, lge, files = copy_study(psir_classic.out_dir / "dicom", tmp_path / "study")
    hidden, parked = files[3], tmp_path / "parked.dcm"
    hidden_uid = str(pydicom.dcmread(hidden, stop_before_pixels=True).SOPInstanceUID)
    with DcmQrScp(tmp_path / "dcmqrscp", files, {"LGE_NODE": ("127.0.0.1", node_port)}) as pacs:
        entry = {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port}
        node = NodeProcess(
            tmp_path / "node", port=node_port, stable_age_s=6.0,
            pacs=[{"name": "dcmqr", **entry, "retry_delay_s": 2.0}],
        )  # fmt: skip
        with node:
            hidden.rename(parked)
            proc = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "retrieve", "--config",
                 str(node.config_path), "--pacs", "dcmqr", "--study", study],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env=dict(os.environ, COLUMNS="200"),
            )  # fmt: skip
            node.wait_for(lambda: "No such file" in pacs.log(), 60, "the failed sub-operation")
            parked.rename(hidden)  # back before the retry
            out, _ = proc.communicate(timeout=120)
            said = " ".join(out.split())
            assert proc.returncode == 0, out
            assert "the PACS returns no SeriesDescription: judged on arrival" in said
            assert "attempt 1 (series): 13 completed, 1 failed" in said
            assert "retrying the 1 failed instance(s) in 2 s" in said
            assert "attempt 2 (1 failed instance(s)): 14 completed, 0 failed" in said
            # The retry asked for the one instance, not the series again: 13 + 1 stores.
            qr_log = pacs.log()
            assert qr_log.count("Move SCP Request Identifiers") == 2
            assert "[IMAGE]" in qr_log.split("Move SCP Request Identifiers")[2]
            assert hidden_uid in qr_log.split("Move SCP Request Identifiers")[2]
            assert qr_log.count("Store SCU RQ") == 14
            (message, _, _), *_ = node.events("retrieve_partial")
            assert "complete after a retry" in message and "13 completed, 1 failed" in message
            node.wait_done(lge, timeout=180)
            assert node.query(
                "SELECT COUNT(*) FROM instances i JOIN series s ON i.series_fk = s.id "
                "WHERE s.series_uid = ?", lge
            ) == [(14,)]  # fmt: skip
            assert [j[1] for j in node.jobs(lge)] == ["done"]  # one job, on all 14
