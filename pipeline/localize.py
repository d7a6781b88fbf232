"""Heart localization with an ultralytics YOLO detector, slice by slice, combined into one
region of interest for the stack (the LGE-CMRnet approach)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import runtime
from pipeline.roi import HEART_MARGIN_MM, MIN_REGION_MM, Box, to_uint8, union
from pipeline.volume import Volume

OUTLIER_MM = 45.0  # a box this far from the stack's median centre is a false positive


@dataclass
class Localization:
    roi: Box
    boxes: list[Box | None]  # per slice, after borrowing
    confidences: list[float]  # per slice, 0 where the detector found nothing
    borrowed: list[int] = field(default_factory=list)  # slices that took a neighbour's box
    found: bool = True

    @property
    def confidence(self) -> float:
        detected = [c for c in self.confidences if c > 0]
        return float(np.mean(detected)) if detected else 0.0


DETECT_BATCH = 8  # slices per detector call


class HeartLocator:
    def __init__(
        self, weights: Path, conf: float = 0.25, imgsz: int = 256, device: str = "cpu"
    ) -> None:
        runtime.prepare()
        from ultralytics import YOLO

        runtime.set_threads()
        self.model = YOLO(str(weights), task="detect")
        self.conf = conf
        self.imgsz = imgsz
        self.device = device  # "cpu" or "cuda" (ultralytics picks the GPU)

    def detect(self, volume: Volume) -> tuple[list[Box | None], list[float]]:
        u8 = to_uint8(volume.array)
        boxes: list[Box | None] = []
        confs: list[float] = []
        # Bounded chunks: ultralytics keeps every image of a call and its intermediate
        # tensors (~3.6 MB per 256^2 slice at once), so memory per job stays flat
        # whatever the number of slices.
        for start in range(0, u8.shape[0], DETECT_BATCH):
            chunk = u8[start : start + DETECT_BATCH]
            images = [np.repeat(sl[..., None], 3, axis=-1) for sl in chunk]
            results = self.model.predict(
                images, imgsz=self.imgsz, conf=self.conf, device=self.device, verbose=False
            )
            self._collect(results, boxes, confs)
        return boxes, confs

    @staticmethod
    def _collect(results: list, boxes: list[Box | None], confs: list[float]) -> None:
        for r in results:
            if len(r.boxes) == 0:
                boxes.append(None)
                confs.append(0.0)
                continue
            best = int(r.boxes.conf.argmax())
            x0, y0, x1, y1 = r.boxes.xyxy[best].tolist()
            boxes.append(
                Box(int(np.floor(y0)), int(np.floor(x0)), int(np.ceil(y1)), int(np.ceil(x1)))
            )
            confs.append(float(r.boxes.conf[best]))

    def locate(self, volume: Volume) -> Localization:
        boxes, confs = self.detect(volume)
        return combine(boxes, confs, volume)


def combine(boxes: list[Box | None], confs: list[float], volume: Volume) -> Localization:
    """Drop outlier boxes, let empty slices borrow from neighbours, union with a margin."""
    g = volume.geometry
    shape = volume.array.shape[1:]
    centres = {
        k: np.array(
            [(b.y0 + b.y1) / 2 * g.pixel_spacing[0], (b.x0 + b.x1) / 2 * g.pixel_spacing[1]]
        )
        for k, b in enumerate(boxes)
        if b is not None
    }
    if centres:
        median = np.median(np.stack(list(centres.values())), axis=0)
        for k, c in centres.items():
            if np.linalg.norm(c - median) > OUTLIER_MM:
                boxes[k], confs[k] = None, 0.0
    found = [k for k, b in enumerate(boxes) if b is not None]
    if not found:
        whole = Box(0, 0, shape[0], shape[1])
        return Localization(whole, [whole] * len(boxes), confs, list(range(len(boxes))), False)
    borrowed = []
    filled = list(boxes)
    for k, b in enumerate(boxes):
        if b is None:
            nearest = min(found, key=lambda j: abs(j - k))
            filled[k] = boxes[nearest]
            borrowed.append(k)
    roi = (
        union([b for b in boxes if b is not None])
        .expand(HEART_MARGIN_MM, g.pixel_spacing, shape)
        .at_least(MIN_REGION_MM, g.pixel_spacing, shape)
    )
    return Localization(roi, filled, confs, borrowed, True)
