"""The one label convention used inside the pipeline (matches EMIDEC: 0 bg, 1 cavity,
2 myocardium, 3 infarction, 4 no-reflow; 5 RV blood pool is ours and optional)."""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Label(IntEnum):
    BACKGROUND = 0
    LV_BLOOD = 1
    MYOCARDIUM = 2  # healthy myocardium
    SCAR = 3  # enhanced myocardium without MVO
    MVO = 4
    RV_BLOOD = 5


def myocardium_mask(labels: np.ndarray) -> np.ndarray:
    """LV myocardium including scar and MVO (2+3+4)."""
    return (labels >= Label.MYOCARDIUM) & (labels <= Label.MVO)


def scar_mask(labels: np.ndarray) -> np.ndarray:
    """Enhanced myocardium including MVO (3+4)."""
    return (labels == Label.SCAR) | (labels == Label.MVO)


def mvo_mask(labels: np.ndarray) -> np.ndarray:
    return labels == Label.MVO


def compose(
    myocardium: np.ndarray, scar: np.ndarray, mvo: np.ndarray, pools: np.ndarray
) -> np.ndarray:
    """Labels from the three nested masks (the SEG's segments), the inverse of taking
    `myocardium_mask`, `scar_mask` and `mvo_mask`. Blood pools come from ``pools`` (a
    label array, e.g. the model's) wherever the masks leave the pixel free; a pixel the
    masks give up becomes background. MVO implies scar implies myocardium, as drawn by
    a reader or not."""
    labels = np.where(
        (pools == Label.LV_BLOOD) | (pools == Label.RV_BLOOD), pools, Label.BACKGROUND
    ).astype(np.uint8)
    labels[myocardium | scar | mvo] = Label.MYOCARDIUM
    labels[scar | mvo] = Label.SCAR
    labels[mvo] = Label.MVO
    return labels
