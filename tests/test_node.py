"""The node with real peers: DCMTK as the scanner, a real Orthanc as the PACS.

One node and one Orthanc serve this module (a node start loads the models); the fault
tests that kill or starve the node have their own in test_node_faults.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from node.store.storage import uid_hash
from tests.dicom_tools import dsr_numbers
from tests.node_harness import ROOT, NodeProcess, copy_study, echoscu, reports_for, storescu
from tests.orthanc import Orthanc, free_port

pytestmark = pytest.mark.timeout(600)

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR3D = "1.2.840.10008.5.1.4.1.1.88.34"
SC = "1.2.840.10008.5.1.4.1.1.7"
VOLUME, PERCENT = "118565006", "PCTLVMYO"


PEERS = [
    {"ae_title": "ORTHANC"},
    {"ae_title": "SCANNER"},
    {"ae_title": "ECHOSCU"},
    {"ae_title": "STORESCU"},
    {"ae_title": "FARAWAY", "address": "10.9.9.9"},
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """Orthanc (knows the node as modality "lge") and the node (returns results to it)."""
    work = tmp_path_factory.mktemp("site")
    node_port = free_port()
    pacs = Orthanc(work / "orthanc", modalities={"lge": ["LGE_NODE", "127.0.0.1", node_port]})
    pacs_entry = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                  "port": pacs.dicom_port}  # fmt: skip
    node = NodeProcess(work / "node", destinations=[pacs_entry], allowed_peers=PEERS,
                       port=node_port, dicom={"force_ae_title": "LGE_FORCE"})  # fmt: skip
    with pacs, node:
        yield node, pacs


def _sr_numbers(ds: pydicom.Dataset, tmp: Path) -> dict[str, dict[str, float]]:
    path = tmp / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return dsr_numbers(path)


def test_echo_and_unknown_peers_are_rejected_with_a_reason(site) -> None:
    node, _ = site
    assert echoscu(node.port, aet="ECHOSCU").returncode == 0
    stranger = echoscu(node.port, aet="STRANGER")
    assert stranger.returncode != 0
    assert "Association Rejected" in stranger.stderr or "rejected" in stranger.stderr.lower()
    faraway = echoscu(node.port, aet="FARAWAY")  # allowed only from 10.9.9.9
    assert faraway.returncode != 0

    def both_recorded() -> list[str] | None:
        reasons = [m for m, _, _ in node.events("association_rejected")]
        return reasons if len(reasons) >= 2 else None

    reasons = node.wait_for(both_recorded, 30, "both rejections recorded")
    assert any("'STRANGER' is not in access.allowed_peers" in m for m in reasons)
    assert any("'FARAWAY' is not allowed from 127.0.0.1" in m for m in reasons)
    assert "association_rejected" in node.log()
    assert echoscu(node.port, aet="ECHOSCU").returncode == 0  # still serving


def test_orthanc_round_trip_results_land_in_the_study_and_match_the_truth(
    site, psir_classic, tmp_path: Path
) -> None:
    """The PACS sends a study (REST /modalities/lge/store); SEG, SR and overlays come back
    into the same study, and the SR's numbers agree with the phantom's truth."""
    node, pacs = site
    case = psir_classic
    files = sorted((case.out_dir / "dicom").glob("*.dcm"))
    ids = pacs.upload(files)
    ds0 = pydicom.dcmread(files[0], stop_before_pixels=True)
    study_uid, series_uid = str(ds0.StudyInstanceUID), str(ds0.SeriesInstanceUID)
    job = pacs.post("/modalities/lge/store", {"Resources": ids, "Synchronous": True})
    assert job is not None
    node.wait_done(series_uid)

    series = pacs.study_series(study_uid)
    by_modality = {s["MainDicomTags"]["Modality"]: s for s in series}
    assert {"MR", "SEG", "SR"} <= set(by_modality)
    descriptions = {s["MainDicomTags"].get("SeriesDescription") for s in series}
    assert {"LGE scar SEG", "LGE scar report", "LGE scar overlay", "LGE scar summary",
            "LGE scar report (PDF)"} <= descriptions  # fmt: skip
    seg = pydicom.dcmread(io.BytesIO(pacs.file(by_modality["SEG"]["Instances"][0])))
    assert seg.SOPClassUID == SEG
    assert seg.StudyInstanceUID == study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert "research only" in seg.ContentDescription
    assert "synthetic" in seg.SegmentSequence[0].SegmentAlgorithmName
    (sr,) = reports_for(pacs, study_uid, series_uid)
    numbers = _sr_numbers(sr, tmp_path)
    truth = case.truth
    myo = numbers["LV myocardium"][VOLUME]
    scar = numbers["Infarct (scar)"][VOLUME]
    assert myo == pytest.approx(truth.myocardium_ml, rel=0.15)
    assert scar == pytest.approx(truth.scar_ml, rel=0.3, abs=1.0)
    assert numbers["Infarct (scar)"][PERCENT] == pytest.approx(truth.scar_percent, abs=3.0)
    overlays = [
        s for s in series if s["MainDicomTags"].get("SeriesDescription") == "LGE scar overlay"
    ]
    assert len(overlays[0]["Instances"]) == len(files)  # one per slice
    # the node knew who sent the study, and the operator view shows the job
    status = subprocess.run(
        [sys.executable, "-m", "node.cli", "status", "--config", str(node.config_path), "--json"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    snap = json.loads(status.stdout)
    row = next(r for r in snap["series"] if r["series_uid"] == series_uid)
    assert (row["state"], row["calling_ae"]) == ("done", "ORTHANC")
    assert any(j["series_uid"] == series_uid and j["state"] == "done" for j in snap["jobs"])
    assert snap["sends"][0]["destination"] == "pacs" and snap["sends"][0]["pending"] == 0


def test_storage_paths_are_hashed_and_duplicates_are_harmless(site, psir_classic) -> None:
    node, _ = site
    files = sorted((psir_classic.out_dir / "dicom").glob("*.dcm"))
    ds0 = pydicom.dcmread(files[0], stop_before_pixels=True)
    series_uid = str(ds0.SeriesInstanceUID)
    storescu(node.port, files)  # (already held if the round-trip test ran: harmless)
    node.wait_done(series_uid)
    jobs_before = node.jobs(series_uid)
    storescu(node.port, files)  # the same instances again
    time.sleep(2.5)  # > stable_age: a re-run would have been queued by now
    assert node.query("SELECT n_instances FROM series WHERE series_uid = ?", series_uid)[0][
        0
    ] == len(files)
    assert node.jobs(series_uid) == jobs_before
    received = node.query(
        "SELECT i.path FROM instances i JOIN series s ON s.id = i.series_fk"
        " WHERE s.origin = 'received'"
    )
    assert received
    for (path,) in received:
        rel = Path(path).relative_to(node.data_dir)
        assert not any(uid in str(rel) for uid in (series_uid, str(ds0.StudyInstanceUID)))
        assert rel.parts[0] == "instances" and Path(path).exists()
    assert (
        Path(
            node.query("SELECT path FROM instances WHERE sop_uid = ?", str(ds0.SOPInstanceUID))[0][
                0
            ]
        ).name
        == f"{uid_hash(str(ds0.SOPInstanceUID))}.dcm"
    )


def test_selection_processes_lge_prefers_psir_and_records_why_others_are_skipped(
    site, phantom_factory, tmp_path: Path
) -> None:
    node, _ = site
    psir = phantom_factory(seed=23, kind="psir", mvo=False)
    mag = phantom_factory(seed=23, kind="magnitude", mvo=False)  # same study, same slices
    psir_files = sorted((psir.out_dir / "dicom").glob("*.dcm"))
    mag_files = sorted((mag.out_dir / "dicom").glob("*.dcm"))
    study = str(pydicom.dcmread(psir_files[0]).StudyInstanceUID)
    # A cine and a TI scout of the same visit (copies of the stack under other names).
    _, cine_uid, cine = copy_study(
        psir.out_dir / "dicom", tmp_path / "cine", StudyInstanceUID=study,
        SeriesDescription="SAX cine retro", SeriesNumber=300,
    )  # fmt: skip
    _, scout_uid, scout = copy_study(
        mag.out_dir / "dicom", tmp_path / "scout", StudyInstanceUID=study,
        SeriesDescription="IR prep", SeriesNumber=900,
    )  # fmt: skip
    for i, path in enumerate(scout):  # one position, many TIs: a TI scout
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = pydicom.dcmread(scout[0]).ImagePositionPatient
        ds.InversionTime = str(150 + 25 * i)
        ds.save_as(path, enforce_file_format=True)
    storescu(node.port, psir_files + mag_files + cine + scout)
    psir_uid = str(pydicom.dcmread(psir_files[0]).SeriesInstanceUID)
    mag_uid = str(pydicom.dcmread(mag_files[0]).SeriesInstanceUID)
    node.wait_done(psir_uid)
    node.wait_for(
        lambda: all(node.series_state(u)[0] == "skipped" for u in (mag_uid, cine_uid, scout_uid)),
        30, "the three other series to be skipped",
    )  # fmt: skip
    assert "psir preferred" in node.series_state(mag_uid)[1]
    assert "matches exclude pattern /cine/" in node.series_state(cine_uid)[1]
    assert "inversion times at one slice position: a TI scout" in node.series_state(scout_uid)[1]
    assert node.jobs(mag_uid) == [] and node.jobs(cine_uid) == []


def test_late_instances_trigger_a_rerun_whose_report_supersedes_the_first(
    site, phantom_factory, tmp_path: Path
) -> None:
    node, pacs = site
    case = phantom_factory(seed=31, kind="magnitude")
    study, series, files = copy_study(case.out_dir / "dicom", tmp_path / "s")
    storescu(node.port, files[:-2])
    node.wait_done(series)
    storescu(node.port, files[-2:])  # the scanner sends two more slices later
    node.wait_for(lambda: len(node.jobs(series)) == 2 and node.jobs(series)[1][1] == "done",
                  120, "a second job")  # fmt: skip
    node.wait_done(series)
    reports = reports_for(pacs, study, series)
    assert len(reports) == 2
    first, second = sorted(reports, key=lambda d: (d.ContentDate, d.ContentTime, d.InstanceNumber))
    pred = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert pred.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    segs = [s for s in pacs.study_series(study) if s["MainDicomTags"]["Modality"] == "SEG"]
    frames = sorted(
        int(pydicom.dcmread(io.BytesIO(pacs.file(i)), stop_before_pixels=True).NumberOfFrames)
        for s in segs for i in s["Instances"]
    )  # fmt: skip
    assert frames[-1] > frames[0]  # the re-run covers the late slices


def test_ten_concurrent_associations_each_with_a_study_are_all_processed(
    site, psir_classic, tmp_path: Path
) -> None:
    node, pacs = site
    copies = [copy_study(psir_classic.out_dir / "dicom", tmp_path / f"c{i}") for i in range(10)]
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda c: storescu(node.port, c[2], check=False), copies))
    assert [r.returncode for r in results] == [0] * 10, [r.stderr for r in results]
    for _, series, _ in copies:
        node.wait_done(series, timeout=240)
    for study, series, _ in copies:
        kinds = {s["MainDicomTags"]["Modality"] for s in pacs.study_series(study)}
        assert {"SEG", "SR", "DOC"} <= kinds  # DOC: the PDF report
        assert node.query("SELECT n_instances FROM series WHERE series_uid = ?", series)[0][0] == 14


def test_garbage_and_truncated_data_are_recorded_and_the_node_keeps_serving(
    site, psir_classic, tmp_path: Path
) -> None:
    node, _ = site
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: lge\r\n\r\n" + bytes(range(256)) * 4)
        with contextlib.suppress(OSError):
            sock.recv(1024)
    node.wait_for(lambda: node.events("connection_dropped"), 20, "the garbage to be recorded")

    # A file cut in the middle of its pixel data, sent by a real DICOM peer as it is.
    src = sorted((psir_classic.out_dir / "dicom").glob("*.dcm"))[0]
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    whole = tmp_path / "whole.dcm"
    ds.save_as(whole, enforce_file_format=True)
    data = whole.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 3000])
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="LGE_NODE")
    assert assoc.is_established
    status = assoc.send_c_store(cut)
    assoc.release()
    assert status.Status != 0x0000
    refused = node.events("instance_refused")
    assert any("cannot be decoded" in m or "unusable" in m for m, _, _ in refused), refused
    assert not node.query("SELECT 1 FROM instances WHERE sop_uid = ?", str(ds.SOPInstanceUID))
    # A UID crafted to climb out of the storage folder is refused; nothing is written.
    ds.SOPInstanceUID = "1.2.3/../../../../etc/passwd"
    evil = tmp_path / "evil.dcm"
    ds.save_as(evil, enforce_file_format=True)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="LGE_NODE")
    status = assoc.send_c_store(evil)
    assoc.release()
    assert status.Status != 0x0000
    assert any("is not a valid UID" in m for m, _, _ in node.events("instance_refused"))
    assert echoscu(node.port, aet="ECHOSCU").returncode == 0


def test_unusable_series_fails_once_with_its_reason_and_files_are_kept(
    site, psir_classic, tmp_path: Path
) -> None:
    node, _ = site
    _, series, files = copy_study(psir_classic.out_dir / "dicom", tmp_path / "mixed")
    ds = pydicom.dcmread(files[3])  # one slice turned 90 degrees: mixed orientations
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(files[3], enforce_file_format=True)
    storescu(node.port, files)
    node.wait_for(lambda: (node.series_state(series) or ("",))[0] == "failed", 60, "failure")
    ((_, state, attempts, error),) = node.jobs(series)
    assert state == "failed" and attempts == 1  # not retried: the data will not change
    assert "not a usable LGE series" in error and "orientation" in error.lower()
    assert len(node.query(
        "SELECT i.path FROM instances i JOIN series s ON s.id = i.series_fk"
        " WHERE s.series_uid = ?", series)) == len(files)  # fmt: skip


def test_non_image_objects_are_stored_and_ignored_not_refused(
    site, psir_classic, tmp_path: Path
) -> None:
    """PACS routing may push anything (here: a SEG of images the node never analysed,
    so not a reader's correction); it is kept, not processed."""
    from dicom_templates.identity import Algorithm
    from dicom_templates.seg import build_seg
    from pipeline.series import load_series

    node, _ = site
    _, series, files = copy_study(psir_classic.out_dir / "dicom", tmp_path / "unseen")
    volume = load_series(files)
    ds = build_seg(volume, psir_classic.labels, Algorithm(kind="MANUAL"), False)
    path = tmp_path / "seg.dcm"
    ds.save_as(path, enforce_file_format=True)
    # DCMTK storescu does not propose SEG by default; pynetdicom is the sending peer here.
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="LGE_NODE")
    assert assoc.is_established
    assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()
    node.wait_for(
        lambda: (node.series_state(str(ds.SeriesInstanceUID)) or ("",))[0] == "skipped", 30,
        "the SEG series to be skipped",
    )  # fmt: skip
    reason = node.series_state(str(ds.SeriesInstanceUID))[1]
    assert f"references series {series}, which the node has not analysed" in reason


def test_a_study_sent_to_the_force_ae_title_is_processed_regardless(
    site, psir_classic, tmp_path: Path
) -> None:
    """ "Send to AI" from the PACS: the second AE title overrides the selection rules."""
    node, _ = site
    _, skipped, files = copy_study(psir_classic.out_dir / "dicom", tmp_path / "n",
                                   SeriesDescription="SAX cine")  # fmt: skip
    _, forced, forced_files = copy_study(psir_classic.out_dir / "dicom", tmp_path / "f",
                                         SeriesDescription="SAX cine")  # fmt: skip
    storescu(node.port, files)
    storescu(node.port, forced_files, aec="LGE_FORCE")
    node.wait_done(forced)
    assert "processed regardless" in node.series_state(forced)[1]
    node.wait_for(lambda: (node.series_state(skipped) or ("",))[0] == "skipped", 30, "skip")
