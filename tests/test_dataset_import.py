"""``lge-node dataset import``: labelled studies from EMIDEC-layout NIfTI, any NIfTI pairs
with a label map, and DICOM series with SEG objects become an nnU-Net raw dataset and a
YOLO set; unusable cases are all named, and then nothing is written.

The EMIDEC data itself cannot be downloaded here (and is CC BY-NC-SA): phantoms are
written in its layout instead."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from pipeline.labels import Label, myocardium_mask, scar_mask
from pipeline.volume import Geometry
from tests.dicom_tools import reader_seg
from tests.test_cli import lge_node

SEEDS = (3, 4, 5)


@pytest.fixture(scope="module")
def phantoms(phantom_factory) -> list:
    return [phantom_factory(seed=s, kind="psir" if s % 2 else "magnitude") for s in SEEDS]


def write_nifti(path: Path, array: np.ndarray, geometry: Geometry) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(geometry.to_sitk(array), str(path), True)


def emidec_tree(root: Path, phantoms: list) -> dict[str, object]:
    """Phantoms as EMIDEC cases (no RV label: EMIDEC has none)."""
    cases = {}
    for case in phantoms:
        name = f"Case_P{case.spec.seed:03d}"
        labels = np.where(case.labels == Label.RV_BLOOD, 0, case.labels).astype(np.uint8)
        write_nifti(root / name / "Images" / f"{name}.nii.gz", case.image.astype(np.float32),
                    case.geometry)  # fmt: skip
        write_nifti(root / name / "Contours" / f"{name}.nii.gz", labels, case.geometry)
        cases[name] = case
    return cases


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_emidec_layout_becomes_an_nnunet_and_a_yolo_set(tmp_path: Path, phantoms) -> None:
    cases = emidec_tree(tmp_path / "emidec", phantoms)
    out = tmp_path / "dataset"
    run = lge_node("dataset", "import", str(tmp_path / "emidec"), str(out),
                   "--licence", "CC BY-NC-SA 4.0", "--folds", "3", columns=200)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "3 cases imported" in run.stdout and "Case_P003" in run.stdout

    raw = out / "nnunet"
    doc = json.loads((raw / "dataset.json").read_text())
    assert doc["numTraining"] == 3 and doc["labels"]["myocardium"] == 2
    assert "CC BY-NC-SA 4.0" in doc["description"]
    splits = json.loads((raw / "splits_final.json").read_text())
    assert len(splits) == 3
    assert sorted(c for s in splits for c in s["val"]) == sorted(cases)  # each once
    for s in splits:
        assert not set(s["train"]) & set(s["val"])
    summary = json.loads((out / "summary.json").read_text())
    card = json.loads((out / "dataset_card.json").read_text())
    assert card["licence"] == "CC BY-NC-SA 4.0" and card["cases"] == 3
    for row in summary["cases"]:
        case = cases[row["case_id"]]
        crop_labels = read(raw / "labelsTr" / f"{row['case_id']}.nii.gz")
        crop_image = read(raw / "imagesTr" / f"{row['case_id']}_0000.nii.gz")
        # The heart-region crop holds every labelled myocardium voxel, with its image.
        truth = myocardium_mask(case.labels)
        assert myocardium_mask(crop_labels).sum() == truth.sum()
        assert set(np.unique(crop_labels)) <= {0, 1, 2, 3, 4}
        assert crop_image.shape == crop_labels.shape
        ml = case.geometry.voxel_volume_ml
        assert row["label_ml"]["scar"] + row["label_ml"]["mvo"] == pytest.approx(
            scar_mask(case.labels).sum() * ml, abs=0.02
        )
        # YOLO: one label file per slice, a box on every slice with myocardium
        split = row["split"]
        boxes = sorted((out / "yolo" / "labels" / split).glob(f"{row['case_id']}_*.txt"))
        assert len(boxes) == case.image.shape[0]
        lv = (case.labels > 0) & (case.labels != Label.RV_BLOOD)  # what EMIDEC labels
        with_heart = [k for k in range(lv.shape[0]) if lv[k].any()]
        assert [k for k, b in enumerate(boxes) if b.read_text().strip()] == with_heart
    assert (out / "yolo" / "data.yaml").is_file()

    # Same seed, same set: the import is reproducible.
    again = tmp_path / "again"
    assert lge_node("dataset", "import", str(tmp_path / "emidec"), str(again), "--licence",
                    "CC BY-NC-SA 4.0", "--folds", "3").returncode == 0  # fmt: skip
    for name in sorted(p.name for p in (raw / "labelsTr").iterdir()):
        assert np.array_equal(read(raw / "labelsTr" / name), read(again / "nnunet/labelsTr" / name))


def test_unusable_cases_are_all_named_and_nothing_is_written(tmp_path: Path, phantoms) -> None:
    src = tmp_path / "emidec"
    cases = emidec_tree(src, phantoms)
    names = sorted(cases)
    (src / names[0] / "Contours" / f"{names[0]}.nii.gz").unlink()  # missing labels
    bad = read(src / names[1] / "Contours" / f"{names[1]}.nii.gz")
    bad[bad == 4] = 7
    bad[0, 0, 0] = 7
    write_nifti(src / names[1] / "Contours" / f"{names[1]}.nii.gz", bad,
                cases[names[1]].geometry)  # fmt: skip
    g = cases[names[2]].geometry
    shifted = Geometry(g.shape, g.origin, g.row_direction, g.column_direction,
                       g.slice_direction, (g.pixel_spacing[0] * 1.5, g.pixel_spacing[1]),
                       g.slice_spacing)  # fmt: skip
    contours = read(src / names[2] / "Contours" / f"{names[2]}.nii.gz")
    write_nifti(src / names[2] / "Contours" / f"{names[2]}.nii.gz", contours, shifted)

    out = tmp_path / "dataset"
    run = lge_node("dataset", "import", str(src), str(out), columns=400)
    assert run.returncode == 2
    message = " ".join(run.stderr.split())
    assert "3 of 3 cases cannot be imported" in message
    assert f"{names[0]}: " in message and "is missing" in message
    assert "unknown label values [7]" in message
    assert "not on the image's grid" in message and "spacing" in message
    assert not out.exists()

    # A fourth, good case: --skip-invalid imports the usable ones and lists the rest.
    extra = tmp_path / "extra"
    emidec_tree(extra, phantoms[:2])
    for folder in extra.iterdir():
        folder.rename(src / folder.name.replace("Case_P", "Case_Q"))
        for sub in ("Images", "Contours"):
            f = src / folder.name.replace("Case_P", "Case_Q") / sub / f"{folder.name}.nii.gz"
            f.rename(f.with_name(f.name.replace("Case_P", "Case_Q")))
    run = lge_node("dataset", "import", str(src), str(out), "--skip-invalid", columns=400)
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(c["case_id"] for c in summary["cases"]) == ["Case_Q003", "Case_Q004"]
    assert sorted(summary["skipped"]) == names
    assert "skipped" in run.stdout


def test_nifti_pairs_with_a_label_map(tmp_path: Path, phantoms) -> None:
    """Another convention (myocardium 10, scar 20, MVO 30, LV 40, RV 50 dropped), mapped."""
    ours_to_theirs = {1: 40, 2: 10, 3: 20, 4: 30, 5: 50}
    for case in phantoms[:2]:
        theirs = np.zeros_like(case.labels, dtype=np.int16)
        for ours, value in ours_to_theirs.items():
            theirs[case.labels == ours] = value
        name = f"heart{case.spec.seed}"
        write_nifti(tmp_path / "img" / f"{name}_0000.nii.gz", case.image.astype(np.float32),
                    case.geometry)  # fmt: skip
        write_nifti(tmp_path / "lab" / f"{name}.nii.gz", theirs, case.geometry)
    out = tmp_path / "dataset"
    mapping = "0:background,10:myocardium,20:scar,30:mvo,40:lv_blood_pool,50:ignore"
    run = lge_node("dataset", "import", str(tmp_path / "img"), str(out), "--format", "nifti",
                   "--labels", str(tmp_path / "lab"), "--label-map", mapping)  # fmt: skip
    assert run.returncode == 0, run.stderr
    for case in phantoms[:2]:
        labels = read(out / "nnunet" / "labelsTr" / f"heart{case.spec.seed}.nii.gz")
        assert (labels == Label.MVO).sum() == (case.labels == Label.MVO).sum()
        assert (labels == Label.SCAR).sum() == (case.labels == Label.SCAR).sum()
        assert (labels == Label.LV_BLOOD).sum() == (case.labels == Label.LV_BLOOD).sum()
        assert not (labels == Label.RV_BLOOD).any()  # 'ignore' reads as background

    bad_map = "0:background,10:muscle"
    run = lge_node("dataset", "import", str(tmp_path / "img"), str(out), "--format", "nifti",
                   "--labels", str(tmp_path / "lab"), "--label-map", bad_map)  # fmt: skip
    assert run.returncode == 2 and "'muscle' is none of" in " ".join(run.stderr.split())


def test_dicom_series_with_a_reader_seg(tmp_path: Path, phantoms) -> None:
    """A folder as a PACS exports it: the images and a SEG of another vendor on them."""
    from pipeline.series import load_series

    folder = tmp_path / "export"
    for case in phantoms[:2]:
        volume = load_series(case.out_dir / "dicom")
        seg = reader_seg(volume, case.labels)
        target = folder / f"study{case.spec.seed}"
        target.mkdir(parents=True)
        for f in case.files:
            (target / f.name).write_bytes(f.read_bytes())
        seg.save_as(target / "seg.dcm", enforce_file_format=True)
    assert pydicom.dcmread(folder / f"study{SEEDS[0]}" / "seg.dcm").Modality == "SEG"
    out = tmp_path / "dataset"
    run = lge_node("dataset", "import", str(folder), str(out), "--format", "dicom", columns=200)
    assert run.returncode == 0, run.stderr
    assert "the area the myocardium encloses" in run.stdout  # the SEG has no blood pools
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["cases"]) == 2
    by_volume = {myocardium_mask(c.labels).sum(): c for c in phantoms[:2]}
    for row in summary["cases"]:
        labels = read(out / "nnunet" / "labelsTr" / f"{row['case_id']}.nii.gz")
        case = by_volume[myocardium_mask(labels).sum()]  # KeyError: a myocardium lost
        # The derived cavity is the phantom's LV blood pool, near enough to train on.
        derived, truth = (labels == Label.LV_BLOOD).sum(), (case.labels == Label.LV_BLOOD).sum()
        assert abs(derived - truth) / truth < 0.1
        assert (labels == Label.MVO).sum() == (case.labels == Label.MVO).sum()

    # A SEG without its images is named, not skipped silently.
    for f in (folder / f"study{SEEDS[0]}").glob("*.dcm"):
        if f.name != "seg.dcm":
            f.unlink()
    run = lge_node("dataset", "import", str(folder), str(out), "--format", "dicom", columns=400)
    assert run.returncode == 2
    assert "the images of series" in " ".join(run.stderr.split())


def test_import_train_then_analyze_with_the_new_model(tmp_path: Path, phantoms) -> None:
    """Bring your own data end to end on CPU, shrunk to minutes: import, train a demo-size
    model (the accuracy is not the point), and run the pipeline with it; the model card
    carries the data's licence."""
    from pipeline.models import ModelBundle

    emidec_tree(tmp_path / "emidec", phantoms)
    dataset, model = tmp_path / "dataset", tmp_path / "model"
    assert lge_node("dataset", "import", str(tmp_path / "emidec"), str(dataset), "--licence",
                    "CC BY-NC-SA 4.0").returncode == 0  # fmt: skip
    run = lge_node("train", "--dataset", str(dataset), "--out", str(model), "--work",
                   str(tmp_path / "work"), "--epochs", "1", "--iterations", "2",
                   "--yolo-epochs", "1")  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["synthetic_trained"] is False
    assert manifest["training_data"]["licence"] == "CC BY-NC-SA 4.0"
    assert manifest["training_data"]["cases"] == 3
    assert "CC BY-NC-SA 4.0" in (model / "MODEL_CARD.md").read_text()
    bundle = ModelBundle.load(model)
    assert bundle.folds == ("all",) and bundle.nnunet_folder.parent.name == "Dataset502_LGEImported"

    study = tmp_path / "results"
    run = lge_node("analyze", str(phantoms[0].out_dir / "dicom"), "--out", str(study),
                   "--model-dir", str(model), "--no-dicom")  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((study / "metrics.json").read_text())
    # Not trained on phantoms: the outputs no longer call it a synthetic-trained demo.
    assert metrics["algorithm"]["synthetic_trained"] is False
    # A one-epoch model segments badly; its QC must say so.
    assert metrics["qc"]["low_confidence"] is True

    run = lge_node("train", "--dataset", str(dataset), "--out", str(model), "--folds", "9")
    # three cases: the import made three folds, not the five asked for
    assert run.returncode == 2 and "the dataset has 3 folds" in " ".join(run.stderr.split())
