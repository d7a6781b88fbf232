"""Who made an output and where it goes: algorithm identification, equipment, and the
series a radiologist will see in the study (descriptions, numbers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from pipeline import __version__

if TYPE_CHECKING:
    from pipeline.models import ModelBundle

MANUFACTURER = "lge-node"
MODEL_NAME = "lge-node LGE scar quantification"
DISCLAIMER = "RESEARCH ONLY - NOT FOR CLINICAL USE"
SYNTHETIC_NOTE = "model trained on synthetic phantoms"


@dataclass(frozen=True)
class Algorithm:
    """What produced the labels. ``kind``: AUTOMATIC (a model), MANUAL (supplied labels)."""

    name: str = "lge-node YOLOv8+nnU-Net"
    version: str = __version__
    kind: str = "AUTOMATIC"
    synthetic_trained: bool = True

    @classmethod
    def of_models(cls, bundle: ModelBundle) -> Algorithm:
        """The pipeline with the models of ``bundle`` (its version, how it was trained)."""
        return cls(version=bundle.version, synthetic_trained=bundle.synthetic_trained)

    @property
    def label(self) -> str:
        """Name as shown to users (LO, 64 chars), saying when it is a phantom-trained demo."""
        suffix = " (synthetic-trained demo)" if self.synthetic_trained else ""
        return f"{self.name}{suffix}"[:64]


@dataclass(frozen=True)
class SeriesPlacement:
    description: str
    number: int


SEG_SERIES = SeriesPlacement("LGE scar SEG", 9901)
SR_SERIES = SeriesPlacement("LGE scar report", 9902)
OVERLAY_SERIES = SeriesPlacement("LGE scar overlay", 9903)

SOFTWARE_VERSIONS = f"lge-node {__version__}"
DEVICE_SERIAL = "LGENODE-1"


def copy_character_set(source: Dataset, target: Dataset) -> None:
    """Outputs keep the source's character set, so names read back as they were sent
    (highdicom copies patient/study text but leaves the character set to us)."""
    charset = source.get("SpecificCharacterSet")
    if charset:
        target.SpecificCharacterSet = charset
