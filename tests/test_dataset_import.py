"""``lge-node dataset import``: labelled studies from EMIDEC-layout NIfTI, any NIfTI pairs
with a label map, and DICOM series with SEG objects become an nnU-Net raw dataset and a
YOLO set; unusable cases are all named, and then nothing is written.

The EMIDEC data itself cannot be downloaded here (and is CC BY-NC-SA): phantoms are
written in its layout instead."""

from __future__ import annotations

import json
from dataclasses import dataclass
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
    # What else lies in an export: a text file, a transfer cut off in its header.
    (folder / "README.txt").write_text("exported by the PACS\n")
    (folder / "cut.dcm").write_bytes(phantoms[0].files[0].read_bytes()[:300])
    out = tmp_path / "dataset"
    run = lge_node("dataset", "import", str(folder), str(out), "--format", "dicom", columns=200)
    assert run.returncode == 0, run.stderr
    assert "the area the myocardium encloses" in run.stdout  # the SEG has no blood pools
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["cases"]) == 2
    assert sorted(Path(p).name for p in summary["skipped"]) == ["README.txt", "cut.dcm"]
    assert all("not a readable DICOM object" in why for why in summary["skipped"].values())
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


@dataclass
class OwnModels:
    """Two models trained on imported data: one on an EMIDEC-layout set (every case), one
    on a DICOM + SEG set (fold 0 of its splits)."""

    emidec_set: Path
    dicom_set: Path
    emidec_model: Path
    dicom_model: Path
    train_log: str


def dicom_seg_export(folder: Path, phantoms: list) -> None:
    """A folder as a PACS exports it: each study's images and a reader's SEG on them."""
    from pipeline.series import load_series

    for case in phantoms:
        volume = load_series(case.out_dir / "dicom")
        target = folder / f"study{case.spec.seed}"
        target.mkdir(parents=True)
        for f in case.files:
            (target / f.name).write_bytes(f.read_bytes())
        reader_seg(volume, case.labels).save_as(target / "seg.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def own_models(tmp_path_factory, phantoms, phantom_factory) -> OwnModels:
    """Import, then train demo-size models shrunk to a minute each (one epoch of two
    iterations: the accuracy is not the point, the path from data to a served model is)."""
    root = tmp_path_factory.mktemp("own")
    emidec_tree(root / "emidec", phantoms)
    others = [phantom_factory(seed=s, kind="psir" if s % 2 else "magnitude") for s in (6, 7, 8)]
    dicom_seg_export(root / "export", others)
    sets = OwnModels(root / "emidec_set", root / "dicom_set", root / "emidec_model",
                     root / "dicom_model", "")  # fmt: skip
    for args in (
        ("dataset", "import", str(root / "emidec"), str(sets.emidec_set), "--licence",
         "CC BY-NC-SA 4.0"),
        ("dataset", "import", str(root / "export"), str(sets.dicom_set), "--format", "dicom",
         "--licence", "site data, internal use"),
    ):  # fmt: skip
        run = lge_node(*args)
        assert run.returncode == 0, run.stderr
    logs = []
    for dataset, model, folds in ((sets.emidec_set, sets.emidec_model, "all"),
                                  (sets.dicom_set, sets.dicom_model, "0")):  # fmt: skip
        run = lge_node("train", "--dataset", str(dataset), "--out", str(model), "--work",
                       str(root / f"work_{model.name}"), "--epochs", "1", "--iterations", "2",
                       "--yolo-epochs", "1", "--folds", folds)  # fmt: skip
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        logs.append(run.stdout)
    sets.train_log = "\n".join(logs)
    return sets


def test_import_train_then_analyze_with_the_new_model(
    tmp_path: Path, phantoms, own_models: OwnModels
) -> None:
    """Bring your own data end to end on CPU: the trained model folder loads, the pipeline
    runs with it, and the model card carries the data's licence."""
    from pipeline.models import ModelBundle

    model = own_models.emidec_model
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["synthetic_trained"] is False
    assert manifest["training_data"]["licence"] == "CC BY-NC-SA 4.0"
    assert manifest["training_data"]["cases"] == 3
    assert "CC BY-NC-SA 4.0" in (model / "MODEL_CARD.md").read_text()
    bundle = ModelBundle.load(model)
    assert bundle.folds == ("all",) and bundle.nnunet_folder.parent.name == "Dataset502_LGEImported"
    assert ModelBundle.load(own_models.dicom_model).folds == ("0",)

    study = tmp_path / "results"
    run = lge_node("analyze", str(phantoms[0].out_dir / "dicom"), "--out", str(study),
                   "--model-dir", str(model), "--no-dicom")  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((study / "metrics.json").read_text())
    # Not trained on phantoms: the outputs no longer call it a synthetic-trained demo.
    assert metrics["algorithm"]["synthetic_trained"] is False
    # A one-epoch model segments badly; its QC must say so.
    assert metrics["qc"]["low_confidence"] is True

    run = lge_node("train", "--dataset", str(own_models.emidec_set), "--out", str(model),
                   "--folds", "9")  # fmt: skip
    # three cases: the import made three folds, not the five asked for
    assert run.returncode == 2 and "the dataset has 3 folds" in " ".join(run.stderr.split())


def test_evaluate_any_model_on_any_labelled_set_side_by_side(
    tmp_path: Path, own_models: OwnModels
) -> None:
    """The same tables as for phantoms, on an imported set, on the cases each model never
    trained on, and two models compared case by case."""
    from pipeline.runtime import BUNDLED_MODELS

    out = tmp_path / "eval"
    run = lge_node("evaluate", "--dataset", str(own_models.dicom_set), "--model",
                   str(own_models.emidec_model), "--model", str(BUNDLED_MODELS), "--out",
                   str(out), columns=200)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    where = out / own_models.dicom_set.name
    for name in (own_models.emidec_model.name, BUNDLED_MODELS.name):
        summary = json.loads((where / name / "summary.json").read_text())
        assert summary["cases"] == 3  # neither model trained on this set: every case
        assert summary["classes"]["myocardium"]["n_scored"] == 3
        assert (where / name / "bland_altman.png").is_file()
        assert (where / name / "worst_scar_cases.png").is_file()
    comparison = json.loads((where / "comparison.json").read_text())
    paired = comparison["paired_against_first"][BUNDLED_MODELS.name]["myocardium"]
    assert paired["n"] == 3 and paired["better"] + paired["worse"] == 3
    # The phantom-trained demo segments phantoms far better than a one-epoch model.
    assert paired["mean_difference"] > 0.2
    assert (where / "comparison.png").is_file()
    assert "side by side" in run.stdout

    # A model trained on fold 0 of this set is scored on fold 0's validation case only.
    run = lge_node("evaluate", "--dataset", str(own_models.dicom_set), "--model",
                   str(own_models.dicom_model), "--out", str(tmp_path / "own"),
                   columns=200)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    splits = json.loads((own_models.dicom_set / "nnunet" / "splits_final.json").read_text())
    cases = json.loads((tmp_path / "own" / own_models.dicom_set.name / "cases.json").read_text())
    assert [c["case"] for c in cases] == splits[0]["val"]
    assert "validation cases of fold 0" in " ".join(run.stdout.split())

    # A model trained on every case of a set has nothing left to be scored on there.
    run = lge_node("evaluate", "--dataset", str(own_models.emidec_set), "--model",
                   str(own_models.emidec_model), "--out", str(tmp_path / "none"),
                   columns=200)  # fmt: skip
    assert run.returncode == 2
    assert "trained on every case of this dataset" in " ".join(run.stderr.split())


def test_the_node_serves_imported_models_by_rule_and_learns_from_its_archive(
    tmp_path: Path, phantoms, own_models: OwnModels
) -> None:
    """A registry of three models, chosen per series by sender and reconstruction; every
    output names its model; a reader's edit is credited to the model it edits; and the
    node's own archive imports as training data: the reader's SEG is learnt from, the
    node's automatic SEG is not."""
    import shutil

    from pipeline.series import load_series
    from tests.node_harness import NodeProcess, copy_study, storescu

    pipeline = {
        "models": {"emidec": {"model_dir": str(own_models.emidec_model)},
                   "site": {"model_dir": str(own_models.dicom_model)}, "demo": {}},
        "default_model": "demo",
        "model_rules": [{"model": "emidec", "calling_ae": ["SCANNER_A"]},
                        {"model": "site", "reconstruction": "magnitude"}],
    }  # fmt: skip
    expected = {}
    with NodeProcess(tmp_path / "node", pipeline=pipeline) as node:
        sent = []
        for case, aet, model in ((phantoms[0], "SCANNER_A", "emidec"),
                                 (phantoms[1], "SCANNER_B", "site"),
                                 (phantoms[2], "SCANNER_B", "demo")):  # fmt: skip
            assert case.spec.kind == ("magnitude" if model == "site" else "psir")
            _, series, files = copy_study(case.out_dir / "dicom", tmp_path / str(case.spec.seed))
            storescu(node.port, files, aet=aet)
            expected[series] = model
            sent.append((series, files, case))
        results = {}
        for series, model in expected.items():
            node.wait_done(series)
            ((job, state, _, error),) = node.jobs(series)
            assert (state, error) == ("done", "")
            ((where, metrics),) = node.query(
                "SELECT results_dir, metrics FROM jobs WHERE id = ?", job
            )
            results[series] = Path(where)
            algorithm = json.loads(metrics)["algorithm"]
            assert algorithm["model"] == model
            seg = pydicom.dcmread(Path(where) / "seg.dcm")
            names = {s.SegmentAlgorithmName for s in seg.SegmentSequence}
            suffix = " (synthetic-trained demo)" if model == "demo" else ""
            assert names == {f"lge-node {model}{suffix}"}, names
            sr = pydicom.dcmread(Path(where) / "sr.dcm")
            texts = {str(e.value) for e in sr.iterall() if e.keyword == "TextValue"}
            assert f"lge-node {model}{suffix}" in texts
        assert "model rule 1" in node.log() and "model rule 2" in node.log()

        # A reader edits two results; each edit is credited to the model it edits.
        for (_, files, case), name in (
            (sent[0], "lge-node emidec, reader-edited"),
            (sent[2], "lge-node demo, reader-edited (synthetic-trained demo)"),
        ):
            seg = reader_seg(load_series(files), case.labels)
            path = tmp_path / f"edit{case.spec.seed}.dcm"
            seg.save_as(path, enforce_file_format=True)
            storescu(node.port, path, aet="VIEWER", extra=["-R"])
            node.wait_done(seg.SeriesInstanceUID)
            ((job, state, _, error),) = node.jobs(seg.SeriesInstanceUID)
            assert (state, error) == ("done", "")
            ((metrics,),) = node.query("SELECT metrics FROM jobs WHERE id = ?", job)
            assert json.loads(metrics)["algorithm"]["name"] == name

    # The archive as training data, with one of the node's own automatic SEGs in it.
    archive = tmp_path / "archive"
    shutil.copytree(node.data_dir / "instances", archive)
    shutil.copyfile(results[sent[1][0]] / "seg.dcm", archive / "node_output_seg.dcm")
    out = tmp_path / "from_node"
    run = lge_node("dataset", "import", str(archive), str(out), "--format", "dicom",
                   columns=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["cases"]) == 2  # the reader's edits
    (why,) = summary["skipped"].values()
    assert "an automatic segmentation (lge-node site)" in why
    edited = {int(myocardium_mask(phantoms[i].labels).sum()) for i in (0, 2)}
    imported = {
        int(myocardium_mask(read(out / "volumes" / "labels" / f"{c['case_id']}.nii.gz")).sum())
        for c in summary["cases"]
    }
    assert imported == edited
