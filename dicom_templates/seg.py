"""DICOM Segmentation (highdicom) of LV myocardium, infarct and MVO on the source series.

BINARY segments, because the clinical concepts overlap (myocardium includes the infarct,
which includes MVO: the SR's volumes refer to exactly these segments), and because binary
SEG is what PACS viewers (OHIF, Weasis, 3D Slicer, most vendors) display reliably; label-map
SEG is newer and less supported, and fractional adds nothing to a thresholded network
output. Every source frame gets a SEG frame, empty or not (``omit_empty_frames=False``):
viewers that pair frames by index rather than by position then cannot show a segment on
the wrong slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.seg import SegmentAlgorithmTypeValues, SegmentationTypeValues
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from dicom_templates import codes
from dicom_templates.identity import (
    CONTENT_CREATOR,
    DEVICE_SERIAL,
    MANUFACTURER,
    MODEL_NAME,
    SEG_SERIES,
    SOFTWARE_VERSIONS,
    Algorithm,
    character_set,
    copy_character_set,
)
from dicom_templates.uids import new_uid
from pipeline.labels import Label, mvo_mask, myocardium_mask, scar_mask
from pipeline.volume import Volume


@dataclass(frozen=True)
class SegmentSpec:
    number: int
    label: str
    category: hd.sr.CodedConcept
    type: hd.sr.CodedConcept
    color_rgb: tuple[int, int, int]


MYOCARDIUM_SEGMENT = SegmentSpec(
    1, "LV myocardium", codes.ANATOMICAL_STRUCTURE, codes.LV_MYOCARDIUM, (0, 200, 0)
)
INFARCT_SEGMENT = SegmentSpec(
    2, "Infarct (scar)", codes.MORPHOLOGICALLY_ABNORMAL, codes.INFARCT, (255, 200, 0)
)
MVO_SEGMENT = SegmentSpec(
    3, "Microvascular obstruction", codes.MORPHOLOGICALLY_ABNORMAL, codes.MVO, (0, 180, 255)
)
LV_POOL_SEGMENT = SegmentSpec(
    4, "LV blood pool", codes.ANATOMICAL_STRUCTURE, codes.LV_BLOOD_POOL, (200, 0, 0)
)
RV_POOL_SEGMENT = SegmentSpec(
    5, "RV blood pool", codes.ANATOMICAL_STRUCTURE, codes.RV_BLOOD_POOL, (150, 0, 150)
)


def segment_specs(include_blood_pools: bool = False) -> list[SegmentSpec]:
    specs = [MYOCARDIUM_SEGMENT, INFARCT_SEGMENT, MVO_SEGMENT]
    return [*specs, LV_POOL_SEGMENT, RV_POOL_SEGMENT] if include_blood_pools else specs


def segment_masks(labels: np.ndarray, include_blood_pools: bool = False) -> np.ndarray:
    """(z, y, x, n_segments) bool masks in the order of `segment_specs`."""
    masks = [myocardium_mask(labels), scar_mask(labels), mvo_mask(labels)]
    if include_blood_pools:
        masks += [labels == Label.LV_BLOOD, labels == Label.RV_BLOOD]
    return np.stack(masks, axis=-1)


def build_seg(
    volume: Volume,
    labels: np.ndarray,
    algorithm: Algorithm,
    include_blood_pools: bool = False,
    series_instance_uid: str | None = None,
) -> hd.seg.Segmentation:
    """A SEG referencing every frame of ``volume``'s source series, in its study."""
    if labels.shape != volume.array.shape:
        raise ValueError(f"labels {labels.shape} do not match the volume {volume.array.shape}")
    masks = segment_masks(labels, include_blood_pools).astype(np.uint8)
    if volume.is_multiframe:
        # One enhanced source: SEG frames follow the source's frame order, not slice order.
        order = np.argsort([f.frame_number or 0 for f in volume.frames])
        masks = masks[order]
        sources = [volume.datasets[0]]
    else:
        sources = volume.datasets  # slice order, one per SEG frame
    family = codes.ALGORITHM_FAMILY
    algorithm_type = SegmentAlgorithmTypeValues[algorithm.kind]
    identification = (
        None
        if algorithm.kind == "MANUAL"
        else hd.AlgorithmIdentificationSequence(
            name=algorithm.label, family=family, version=algorithm.version
        )
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=spec.number,
            segment_label=spec.label,
            segmented_property_category=spec.category,
            segmented_property_type=spec.type,
            algorithm_type=algorithm_type,
            algorithm_identification=identification,
            tracking_uid=new_uid(),
            tracking_id=spec.label,
            anatomic_regions=[codes.HEART],
            display_color=hd.color.CIELabColor.from_rgb(*spec.color_rgb),
        )
        for spec in segment_specs(include_blood_pools)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=masks,
        segmentation_type=SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or new_uid(),
        series_number=SEG_SERIES.of(algorithm).number,
        sop_instance_uid=new_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=SOFTWARE_VERSIONS,
        device_serial_number=DEVICE_SERIAL,
        content_label="LGESCAR",
        content_description=f"{algorithm.label}; research only"[:64],
        series_description=SEG_SERIES.of(algorithm).description,
        omit_empty_frames=False,
        specific_character_set=character_set(volume.datasets[0]),
        content_creator_name=CONTENT_CREATOR,
    )
    copy_character_set(volume.datasets[0], seg)
    return seg


def spec_of(segment: Dataset) -> SegmentSpec | None:
    """Which of our segments a SEG segment is: by its property type code, else its label
    (an editor may renumber segments; the codes are what it keeps)."""
    specs = segment_specs(include_blood_pools=True)
    types = segment.get("SegmentedPropertyTypeCodeSequence") or []
    if types:
        code = (types[0].CodeValue, types[0].CodingSchemeDesignator)
        for spec in specs:
            if code == (spec.type.value, spec.type.scheme_designator):
                return spec
    label = str(segment.get("SegmentLabel", "")).strip().lower()
    return next((spec for spec in specs if spec.label.lower() == label), None)


def read_seg_masks(seg: Dataset, volume: Volume, include_blood_pools: bool = False) -> np.ndarray:
    """(z, y, x, 3) masks of myocardium, infarct and MVO from a SEG on ``volume``'s
    frames, in `segment_specs` order: the inverse of `build_seg`, for a SEG a reader
    edited; (z, y, x, 5) with the LV and RV blood pools after them when asked for.
    A segment the SEG lacks is empty; frames are matched by source reference.
    ValueError when it is not a SEG, has none of our segments, or segments images that
    are not in ``volume``."""
    if seg.get("SOPClassUID") != SegmentationStorage:
        raise ValueError("not a Segmentation object")
    parsed = hd.seg.Segmentation.from_dataset(seg, copy=True)
    numbers: dict[int, int] = {}  # our index -> the SEG's segment number
    for segment in parsed.SegmentSequence:
        spec = spec_of(segment)
        if spec is not None and spec.number <= (5 if include_blood_pools else 3):
            numbers[spec.number - 1] = int(segment.SegmentNumber)
    if not numbers:
        raise ValueError("the SEG has none of the segments LV myocardium, infarct, MVO")
    # A frame of an image the volume lacks would be dropped without a word (and one that
    # references none of its images would read as empty): refuse it instead.
    ours = {f.sop_instance_uid for f in volume.frames}
    referenced = {str(sop) for _, _, sop in parsed.get_source_image_uids()}
    foreign = referenced - ours
    if foreign or not referenced:
        raise ValueError(
            f"{len(foreign)} of the {len(referenced)} images the SEG segments are not in "
            f"series {volume.series_instance_uid}"
        )
    masks = np.zeros((*volume.array.shape, 5 if include_blood_pools else 3), dtype=bool)
    wanted = sorted(numbers.values())
    for k, frame in enumerate(volume.frames):
        if frame.frame_number is None:
            pixels = parsed.get_pixels_by_source_instance(
                source_sop_instance_uids=[frame.sop_instance_uid],
                segment_numbers=wanted,
                assert_missing_frames_are_empty=True,
            )[0]
        else:
            pixels = parsed.get_pixels_by_source_frame(
                source_sop_instance_uid=frame.sop_instance_uid,
                source_frame_numbers=[frame.frame_number],
                segment_numbers=wanted,
                assert_missing_frames_are_empty=True,
            )[0]
        for index, number in numbers.items():
            masks[k, ..., index] = pixels[..., wanted.index(number)] > 0
    return masks
