"""Training data from phantoms: a YOLO detection set (heart boxes per slice) and an
nnU-Net raw dataset (heart-region crops of each stack with labels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.nnunet_raw import write_case, write_dataset_json
from pipeline.roi import HEART_MARGIN_MM, heart_box, heart_region, to_uint8
from pipeline.volume import Geometry


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


def write_yolo_yaml(root: Path, at: Path | None = None) -> Path:
    """``data.yaml`` for the set in ``root`` (written into ``at``, default ``root``)."""
    path = (at or root) / "data.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n  0: heart\n"
    )
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
    margin = HEART_MARGIN_MM + float(rng.uniform(-8, 20))
    box = heart_region(labels, geometry.pixel_spacing, margin)
    assert box is not None, f"{case_id}: a phantom without a heart"
    write_case(image, labels, geometry, box, case_id, dataset_dir)


def write_nnunet_dataset_json(dataset_dir: Path, n_training: int) -> None:
    write_dataset_json(
        dataset_dir, n_training, "lge-node synthetic LGE phantoms (not patient data)"
    )
