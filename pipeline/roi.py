"""The heart's region of interest: pixel boxes, and the detector's uint8 input.

Shared by inference (`pipeline.localize`) and the training-set export
(`pipeline.research.dataset`), so detector input is made the same way in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEART_MARGIN_MM = 15.0
# An adult heart (LV and RV) spans at least ~70 mm in short axis, so a region with its
# margin is never smaller than this; a smaller one means the detector saw only part of it.
MIN_REGION_MM = 100.0


@dataclass(frozen=True)
class Box:
    """Pixel box [y0, y1) x [x0, x1)."""

    y0: int
    x0: int
    y1: int
    x1: int

    def expand(self, mm: float, spacing: tuple[float, float], shape: tuple[int, int]) -> Box:
        dy, dx = round(mm / spacing[0]), round(mm / spacing[1])
        return Box(
            max(self.y0 - dy, 0),
            max(self.x0 - dx, 0),
            min(self.y1 + dy, shape[0]),
            min(self.x1 + dx, shape[1]),
        )

    def at_least(self, mm: float, spacing: tuple[float, float], shape: tuple[int, int]) -> Box:
        """Widened about its centre to ``mm`` on each side where narrower (within ``shape``)."""
        y0, y1 = _widen(self.y0, self.y1, round(mm / spacing[0]), shape[0])
        x0, x1 = _widen(self.x0, self.x1, round(mm / spacing[1]), shape[1])
        return Box(y0, x0, y1, x1)

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def _widen(lo: int, hi: int, size: int, limit: int) -> tuple[int, int]:
    if hi - lo >= size:
        return lo, hi
    size = min(size, limit)
    lo = min(max((lo + hi - size) // 2, 0), limit - size)
    return lo, lo + size


def paste(part: np.ndarray, shape: tuple[int, ...], ys: slice, xs: slice) -> np.ndarray:
    """A (z, y, x) array of ``shape``, zero except ``part`` at rows ``ys``, columns ``xs``."""
    whole = np.zeros(shape, dtype=part.dtype)
    whole[:, ys, xs] = part
    return whole


def union(boxes: list[Box]) -> Box:
    return Box(
        min(b.y0 for b in boxes),
        min(b.x0 for b in boxes),
        max(b.y1 for b in boxes),
        max(b.x1 for b in boxes),
    )


def heart_box(labels2d: np.ndarray) -> Box | None:
    """Box of LV and RV (all labels > 0) in one slice, or None without heart."""
    ys, xs = np.nonzero(labels2d)
    if ys.size == 0:
        return None
    return Box(int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)


def heart_region(
    labels: np.ndarray, spacing: tuple[float, float], margin_mm: float = HEART_MARGIN_MM
) -> Box | None:
    """One box holding the labelled heart on every slice of (z, y, x) ``labels``, widened
    by ``margin_mm``; None when nothing is labelled."""
    boxes = [b for b in (heart_box(labels[k]) for k in range(labels.shape[0])) if b]
    if not boxes:
        return None
    return union(boxes).expand(margin_mm, spacing, labels.shape[1:])


def to_uint8(volume: np.ndarray) -> np.ndarray:
    """Whole-stack percentile window to uint8: the detector's input, in training and use."""
    lo, hi = np.percentile(volume, [1.0, 99.5])
    scaled = (volume.astype(np.float32) - lo) / max(float(hi - lo), 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)
