"""Training data from phantoms: a YOLO detection set (heart boxes per slice) and an
nnU-Net raw dataset (heart-region crops of each stack with labels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.roi import HEART_MARGIN_MM, Box, to_uint8, union
from pipeline.volume import Geometry


def heart_box(labels2d: np.ndarray) -> Box | None:
    """Box of LV and RV (all labels > 0) in one slice, or None without heart."""
    ys, xs = np.nonzero(labels2d)
    if ys.size == 0:
        return None
    return Box(int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)


def crop_geometry(geometry: Geometry, box: Box) -> Geometry:
    origin = geometry.index_to_patient(np.array([0, box.y0, box.x0], dtype=float))
    return Geometry(
        shape=(geometry.shape[0], box.y1 - box.y0, box.x1 - box.x0),
        origin=origin,
        row_direction=geometry.row_direction,
        column_direction=geometry.column_direction,
        slice_direction=geometry.slice_direction,
        pixel_spacing=geometry.pixel_spacing,
        slice_spacing=geometry.slice_spacing,
        slice_thickness=geometry.slice_thickness,
    )


def export_yolo_case(
    image: np.ndarray, labels: np.ndarray, stem: str, images_dir: Path, labels_dir: Path
) -> int:
    """One PNG and one label file per slice (empty label file: no heart). Returns count."""
    import cv2  # ultralytics' own dependency

    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    u8 = to_uint8(image)
    rows, cols = image.shape[1:]
    for k in range(image.shape[0]):
        cv2.imwrite(str(images_dir / f"{stem}_{k:02d}.png"), u8[k])
        box = heart_box(labels[k])
        line = ""
        if box is not None:
            cx, cy = (box.x0 + box.x1) / 2 / cols, (box.y0 + box.y1) / 2 / rows
            w, h = (box.x1 - box.x0) / cols, (box.y1 - box.y0) / rows
            line = f"0 {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n"
        (labels_dir / f"{stem}_{k:02d}.txt").write_text(line)
    return image.shape[0]


def write_yolo_yaml(root: Path) -> Path:
    path = root / "data.yaml"
    path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: heart\n")
    return path


def export_nnunet_case(
    image: np.ndarray,
    labels: np.ndarray,
    geometry: Geometry,
    case_id: str,
    dataset_dir: Path,
    rng: np.random.Generator,
) -> None:
    """The heart region (union of per-slice boxes, a jittered margin like a detector's:
    wider than the detector's own error, so an imprecise box on unfamiliar images still
    gives the segmenter a crop it knows)."""
    boxes = [b for b in (heart_box(labels[k]) for k in range(labels.shape[0])) if b]
    margin = HEART_MARGIN_MM + float(rng.uniform(-8, 20))
    box = union(boxes).expand(margin, geometry.pixel_spacing, labels.shape[1:])
    sub = crop_geometry(geometry, box)
    ys, xs = box.slices
    for folder, array, name in (
        ("imagesTr", image[:, ys, xs].astype(np.float32), f"{case_id}_0000.nii.gz"),
        ("labelsTr", labels[:, ys, xs].astype(np.uint8), f"{case_id}.nii.gz"),
    ):
        (dataset_dir / folder).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sub.to_sitk(array), str(dataset_dir / folder / name), True)


def write_nnunet_dataset_json(dataset_dir: Path, n_training: int) -> None:
    doc = {
        "channel_names": {"0": "LGE"},  # not "CT": per-image z-score normalisation
        "labels": {
            "background": 0,
            "lv_blood_pool": 1,
            "myocardium": 2,
            "scar": 3,
            "mvo": 4,
            "rv_blood_pool": 5,
        },
        "numTraining": n_training,
        "file_ending": ".nii.gz",
        "description": "lge-node synthetic LGE phantoms (not patient data)",
    }
    (dataset_dir / "dataset.json").write_text(json.dumps(doc, indent=2))
