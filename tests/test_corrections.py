"""Readers' corrections over DICOM: the node analyses a study and returns its SEG to the
PACS (a real Orthanc); a reader's edited SEG, stored into the PACS as a viewer does and
forwarded from there to the node (C-STORE, by `deploy/orthanc-route-seg.lua`), is
measured again. The new SR and PDF say
"reader-edited", the SR supersedes the first one, the numbers are those of the edited
labels, and the (image, labels) pair lands in an nnU-Net raw dataset."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from pipeline.labels import Label, myocardium_mask, scar_mask
from pipeline.series import load_series
from tests.dicom_tools import dciodvfy, dsr_numbers, dsrdump, reader_seg
from tests.node_harness import ROOT, NodeProcess, copy_study, reports_for, storescu
from tests.orthanc import Orthanc, free_port

pytestmark = pytest.mark.timeout(600)

VOLUME, MASS, PERCENT = "118565006", "MASSG", "PCTLVMYO"
PEERS = [{"ae_title": "ORTHANC"}, {"ae_title": "SCANNER"}]
ROUTE_SEG = ROOT / "deploy" / "orthanc-route-seg.lua"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("site")
    node_port = free_port()
    # The PACS forwards readers' SEGs with the routing script the README gives sites.
    pacs = Orthanc(
        work / "orthanc", modalities={"lge": ["LGE_NODE", "127.0.0.1", node_port]},
        extra={"LuaScripts": [str(ROUTE_SEG)]},
    )  # fmt: skip
    pacs_entry = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                  "port": pacs.dicom_port}  # fmt: skip
    node = NodeProcess(work / "node", destinations=[pacs_entry], allowed_peers=PEERS,
                       port=node_port)  # fmt: skip
    with pacs, node:
        yield node, pacs


def _store_in_pacs(pacs: Orthanc, seg: pydicom.Dataset, tmp: Path) -> None:
    """Stored into the PACS as OHIF stores it; the PACS' routing script sends it on."""
    path = tmp / f"{seg.SOPInstanceUID}.dcm"
    seg.save_as(path, enforce_file_format=True)
    pacs.upload([path])


def test_a_reader_edited_seg_is_measured_again_reported_and_kept_for_training(
    site, phantom_factory, tmp_path: Path
) -> None:
    node, pacs = site
    case = phantom_factory(seed=7, kind="psir")  # an infarct with MVO
    study, series, files = copy_study(case.out_dir / "dicom", tmp_path / "study")
    storescu(node.port, files)
    node.wait_done(series)
    (first,) = reports_for(pacs, study, series)

    # The reader's contours: the truth, with the infarct of its largest slice erased.
    volume = load_series(files)
    edited = case.labels.copy()
    k = int(np.argmax(scar_mask(edited).sum(axis=(1, 2))))
    edited[k][scar_mask(edited[k])] = Label.MYOCARDIUM
    seg = reader_seg(volume, edited)
    _store_in_pacs(pacs, seg, tmp_path)
    node.wait_done(seg.SeriesInstanceUID)
    ((_, state, _, error),) = node.jobs(seg.SeriesInstanceUID)
    assert (state, error) == ("done", "")

    reports = reports_for(pacs, study, series)
    assert len(reports) == 2
    (second,) = [r for r in reports if r.SOPInstanceUID != first.SOPInstanceUID]
    assert second.SeriesDescription == "LGE scar report (reader-edited)"
    pred = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert pred.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study_item in second.CurrentRequestedProcedureEvidenceSequence
        for series_item in study_item.ReferencedSeriesSequence
        for ref in series_item.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence  # the reader's SEG is named as evidence

    # The numbers are those of the edited labels (counted here, rounded as the SR does).
    path = tmp_path / "second.dcm"
    second.save_as(path, enforce_file_format=True)
    assert dciodvfy(path).errors == []
    numbers = dsr_numbers(path)
    voxel_ml = volume.geometry.voxel_volume_ml
    myo_ml = myocardium_mask(edited).sum() * voxel_ml
    scar_ml = scar_mask(edited).sum() * voxel_ml
    assert numbers["LV myocardium"][VOLUME] == pytest.approx(myo_ml, abs=0.051)
    assert numbers["Infarct (scar)"][VOLUME] == pytest.approx(scar_ml, abs=0.051)
    assert numbers["Infarct (scar)"][PERCENT] == pytest.approx(100 * scar_ml / myo_ml, abs=0.051)
    first_path = tmp_path / "first.dcm"
    first.save_as(first_path, enforce_file_format=True)
    assert dsr_numbers(first_path)["Infarct (scar)"][VOLUME] > numbers["Infarct (scar)"][VOLUME]
    text = dsrdump(path)
    assert "Segmentation edited by a reader" in text
    assert "reader-edited" in text and "synthetic-trained demo" in text
    assert "Automatic segmentation, not reviewed" in dsrdump(first_path)

    # The PDF, the summary, the overlays and a SEG of the edited labels came back too.
    by_description = {
        s["MainDicomTags"].get("SeriesDescription"): s for s in pacs.study_series(study)
    }
    for name in ("LGE scar report (PDF)", "LGE scar summary", "LGE scar SEG",
                 "LGE scar overlay"):  # fmt: skip
        assert f"{name} (reader-edited)" in by_description
        assert name in by_description  # the automatic results stay
    pdf_series = by_description["LGE scar report (PDF) (reader-edited)"]
    pdf = pydicom.dcmread(io.BytesIO(pacs.file(pdf_series["Instances"][0])))
    assert "reader-edited" in pdf.DocumentTitle
    assert int(pdf_series["MainDicomTags"]["SeriesNumber"]) < 9900  # listed first

    # metrics.json says where the labels came from.
    ((metrics,),) = node.query(
        "SELECT j.metrics FROM jobs j JOIN series s ON s.id = j.series_fk"
        " WHERE s.series_uid = ?", seg.SeriesInstanceUID,
    )  # fmt: skip
    doc = json.loads(metrics)
    assert doc["segmentation"]["source"] == "reader-edited"
    assert doc["segmentation"]["reader_seg_sop_instance_uid"] == seg.SOPInstanceUID
    assert doc["scar_ml"] == pytest.approx(scar_ml, rel=1e-6)

    # The training pair: nnU-Net raw layout, the edited labels on a crop of the image.
    dataset = node.data_dir / "training" / "Dataset900_LGECorrections"
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["numTraining"] == 1 and meta["labels"]["scar"] == Label.SCAR
    (label_file,) = (dataset / "labelsTr").glob("*.nii.gz")
    case_id = label_file.name.removesuffix(".nii.gz")
    image_file = dataset / "imagesTr" / f"{case_id}_0000.nii.gz"
    labels_img, image_img = sitk.ReadImage(str(label_file)), sitk.ReadImage(str(image_file))
    pair_labels = sitk.GetArrayFromImage(labels_img)
    assert scar_mask(pair_labels).sum() == scar_mask(edited).sum()
    assert myocardium_mask(pair_labels).sum() == myocardium_mask(edited).sum()
    assert image_img.GetSize() == labels_img.GetSize()
    assert image_img.GetOrigin() == pytest.approx(labels_img.GetOrigin())
    provenance = json.loads((dataset / "provenance" / f"{case_id}.json").read_text())
    assert provenance["reader_seg_sop_instance_uid"] == seg.SOPInstanceUID
    assert series not in case_id and study not in json.dumps(meta)

    # A second edit (MVO erased as well) supersedes the reader-edited report and replaces
    # the training case.
    edited2 = edited.copy()
    edited2[edited2 == Label.MVO] = Label.SCAR
    seg2 = reader_seg(volume, edited2)
    _store_in_pacs(pacs, seg2, tmp_path)
    node.wait_done(seg2.SeriesInstanceUID)
    third = next(
        r for r in reports_for(pacs, study, series)
        if r.SOPInstanceUID not in (first.SOPInstanceUID, second.SOPInstanceUID)
    )  # fmt: skip
    pred = third.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert pred.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == second.SOPInstanceUID
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == 1
    pair_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
    assert (pair_labels == Label.MVO).sum() == 0


def test_a_seg_the_node_cannot_apply_is_skipped_or_failed_with_its_reason(
    site, phantom_factory, tmp_path: Path
) -> None:
    node, pacs = site
    case = phantom_factory(seed=7, kind="psir")
    # 1. A SEG of a series the node never saw: stored, skipped, the reason recorded.
    _, series, files = copy_study(case.out_dir / "dicom", tmp_path / "unseen")
    stranger = reader_seg(load_series(files), case.labels)
    path = tmp_path / "stranger.dcm"
    stranger.save_as(path, enforce_file_format=True)
    storescu(node.port, path, aet="ORTHANC", extra=["-R"])  # SEG: a context of its own
    node.wait_for(
        lambda: (node.series_state(stranger.SeriesInstanceUID) or ("",))[0] == "skipped",
        60, "the SEG of an unseen series skipped",
    )  # fmt: skip
    reason = node.series_state(stranger.SeriesInstanceUID)[1]
    assert f"references series {series}, which the node has not analysed" in reason

    # 2. A SEG that claims an analysed series but segments other images (its frames
    # reference instances that are not in it): the correction fails once, with why.
    study2, series2, files2 = copy_study(case.out_dir / "dicom", tmp_path / "analysed")
    storescu(node.port, files2)
    node.wait_done(series2)
    foreign = reader_seg(load_series(files), case.labels)  # frames of the unseen copy
    foreign.StudyInstanceUID = study2
    foreign.ReferencedSeriesSequence[0].SeriesInstanceUID = series2
    path = tmp_path / "foreign.dcm"
    foreign.save_as(path, enforce_file_format=True)
    storescu(node.port, path, aet="ORTHANC", extra=["-R"])  # SEG: a context of its own
    node.wait_for(
        lambda: (node.series_state(foreign.SeriesInstanceUID) or ("",))[0] == "failed",
        60, "the misfit SEG's correction failed",
    )  # fmt: skip
    ((_, state, attempts, error),) = node.jobs(foreign.SeriesInstanceUID)
    assert (state, attempts) == ("failed", 1)  # trying again cannot help
    assert error.startswith(f"reader's SEG not usable: the SEG does not fit series {series2}")
    assert len(reports_for(pacs, study2, series2)) == 1  # no report from it

    # 3. A SEG without our segments (another tool's, e.g. of the RV): skipped.
    other = reader_seg(load_series(files2), case.labels)
    for item in other.SegmentSequence:
        item.SegmentedPropertyTypeCodeSequence[0].CodeValue = "53085002"  # right ventricle
        item.SegmentLabel = "RV"
    path = tmp_path / "other.dcm"
    other.save_as(path, enforce_file_format=True)
    storescu(node.port, path, aet="ORTHANC", extra=["-R"])  # SEG: a context of its own
    node.wait_for(
        lambda: (node.series_state(other.SeriesInstanceUID) or ("",))[0] == "skipped",
        60, "the SEG without our segments skipped",
    )  # fmt: skip
    assert (
        "without LV myocardium, infarct or MVO segments"
        in node.series_state(other.SeriesInstanceUID)[1]
    )
    assert node.jobs(other.SeriesInstanceUID) == []
