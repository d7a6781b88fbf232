"""Who made an output and where it goes: algorithm identification, equipment, and the
series a radiologist will see in the study (descriptions, numbers)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from highdicom import SpecificCharacterSetValues
from pydicom.dataset import Dataset

from pipeline import __version__
from pipeline.instance import listed

if TYPE_CHECKING:
    from pipeline.models import ModelBundle

MANUFACTURER = "lge-node"
MODEL_NAME = "lge-node LGE scar quantification"
DISCLAIMER = "RESEARCH ONLY - NOT FOR CLINICAL USE"
SYNTHETIC_NOTE = "model trained on synthetic phantoms"


@dataclass(frozen=True)
class Algorithm:
    """What produced the labels. ``kind``: AUTOMATIC (a model), SEMIAUTOMATIC (the model's
    labels as a reader edited them), MANUAL (supplied labels)."""

    name: str = "lge-node YOLOv8+nnU-Net"
    version: str = __version__
    kind: str = "AUTOMATIC"
    synthetic_trained: bool = True
    reader_edited: bool = False
    model: str = "default"  # its name in the node's model registry
    model_title: str = ""  # what its manifest calls it

    @classmethod
    def of_models(cls, bundle: ModelBundle, registry_name: str | None = None) -> Algorithm:
        """The pipeline with the models of ``bundle`` (its version, how it was trained);
        named after the registry entry when the node has several models."""
        algorithm = cls(
            version=bundle.version, synthetic_trained=bundle.synthetic_trained,
            model_title=bundle.name,
        )  # fmt: skip
        if registry_name:
            algorithm = replace(algorithm, name=f"lge-node {registry_name}", model=registry_name)
        return algorithm

    def edited(self) -> Algorithm:
        """The same algorithm, its labels corrected by a reader (SEG algorithm type
        SEMIAUTOMATIC: "calculated segmentation with user assistance")."""
        return replace(self, kind="SEMIAUTOMATIC", reader_edited=True)

    @property
    def label(self) -> str:
        """Name as shown to users (LO, 64 chars), saying when a reader edited the labels and
        when it is a phantom-trained demo."""
        edited = ", reader-edited" if self.reader_edited else ""
        suffix = " (synthetic-trained demo)" if self.synthetic_trained else ""
        return f"{self.name}{edited}{suffix}"[:64]


@dataclass(frozen=True)
class SeriesPlacement:
    description: str
    number: int

    def of(self, algorithm: Algorithm) -> SeriesPlacement:
        """Where ``algorithm``'s output goes: reader-edited results say so and are listed
        before the automatic ones they supersede."""
        if not algorithm.reader_edited:
            return self
        return SeriesPlacement(f"{self.description} (reader-edited)"[:64], self.number - 100)


# Viewers list series by number: the PDF report and the summary page first, then the
# SEG and SR, then the per-slice overlays.
PDF_SERIES = SeriesPlacement("LGE scar report (PDF)", 9900)
SUMMARY_SERIES = SeriesPlacement("LGE scar summary", 9901)
SEG_SERIES = SeriesPlacement("LGE scar SEG", 9902)
SR_SERIES = SeriesPlacement("LGE scar report", 9903)
OVERLAY_SERIES = SeriesPlacement("LGE scar overlay", 9904)
# Derived images keep the source's modality: "OT" makes some viewers (OHIF) play a
# series as cine, which would hide the burned-in text under the cine controls.
DERIVED_MODALITY = "MR"
# SEG ContentCreatorName (PN): the node, not a person. The "^" makes it a family-name
# component (a PN without one is the retired form dciodvfy warns about).
CONTENT_CREATOR = "lge-node^"

SOFTWARE_VERSIONS = f"lge-node {__version__}"
DEVICE_SERIAL = "LGENODE-1"


def character_set(source: Dataset) -> str | list[str] | None:
    """The source's Specific Character Set as highdicom's constructors accept it.

    A multi-valued set may leave value 1 empty, meaning the default repertoire (PS3.3
    C.12.1.1.2: ``\\ISO 2022 IR 87`` is how Japanese studies usually arrive); highdicom
    rejects the empty string, so it is given the equivalent defined term, ISO 2022 IR 6.
    `copy_character_set` then writes the source's value back exactly as it was sent.
    """
    value = source.get("SpecificCharacterSet")
    if not value:
        return None
    values = [str(v).strip() for v in (listed(value) or [value])]
    if len(values) > 1 and values[0] == "":
        values[0] = "ISO 2022 IR 6"
    known = {v.value for v in SpecificCharacterSetValues}
    if not all(v in known for v in values):
        # highdicom does not list every defined term (ISO 2022 IR 149, Korean): it gets
        # none, and `copy_character_set` sets the source's (pydicom encodes with it)
        return None
    return values if len(values) > 1 else values[0]


def copy_character_set(source: Dataset, target: Dataset) -> None:
    """Outputs keep the source's character set, so names read back as they were sent
    (highdicom copies patient/study text but leaves the character set to us)."""
    charset = source.get("SpecificCharacterSet")
    if charset:
        target.SpecificCharacterSet = charset
