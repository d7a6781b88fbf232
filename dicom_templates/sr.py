"""TID 1500 Measurement Report (Comprehensive 3D SR) of the LGE quantification.

Every measurement group carries image coordinates, because web viewers (OHIF) open an SR
measurement on the image its first SCOORD references and fail on groups without one:

- outline groups (TID 1411, Image Region POLYLINEs on every slice, largest slice first)
  for the infarct, the MVO and the LV myocardium, infarct first;
- the same findings (same Tracking UID) as groups that reference their SEG segments, with
  the numbers (myocardium volume, mass; infarct volume, mass, % of LV; MVO volume, % LV);
- infarct core and grey zone and the infarct by each reference intensity method, each
  naming its method (with its parameter), tracked as the infarct;
- one outline group per AHA segment (finding site from CID 3717) with infarct %, mean
  and maximum transmurality, MVO volume and, where it applies, "non-viable";
- the number of non-viable segments (the criterion as its method) and quality control
  (reliability, flags, intended use), tracked as the myocardium.

A finding without pixels (no MVO, no infarct) is reported under the finding that
contains it. Values are rounded to what a reader uses (metrics.json keeps full
precision); the algorithm is identified once per group; the private coding scheme is
declared; the node is the device observer.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes

from dicom_templates import codes
from dicom_templates.identity import (
    DEVICE_SERIAL,
    MANUFACTURER,
    MODEL_NAME,
    SR_SERIES,
    Algorithm,
    character_set,
    copy_character_set,
)
from dicom_templates.regions import image_regions
from dicom_templates.seg import (
    INFARCT_SEGMENT,
    MVO_SEGMENT,
    MYOCARDIUM_SEGMENT,
    segment_masks,
)
from dicom_templates.uids import derived_uid, new_uid
from pipeline.quantify import Metrics, aha_segments
from pipeline.volume import Volume

DEVICE_UID = derived_uid("device", MANUFACTURER, DEVICE_SERIAL)


# Decimals per unit as written in the SR (metrics.json keeps full precision).
DECIMALS = {"cm3": 1, "g": 1, "%": 1, "{segments}": 0}
MVO_DECIMALS = 2  # MVO is often well under 1 ml
TRANSMURALITY_DECIMALS = 0


def _measure(
    name: hd.sr.CodedConcept,
    value: float,
    unit: hd.sr.CodedConcept,
    decimals: int | None = None,
) -> hd.sr.Measurement:
    places = DECIMALS[unit.value] if decimals is None else decimals
    return hd.sr.Measurement(name=name, value=round(float(value), places), unit=unit)


def _coding_scheme() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = codes.PRIVATE_SCHEME
    item.CodingSchemeName = codes.PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = codes.PRIVATE_SCHEME_ORGANIZATION
    return item


@dataclass(frozen=True)
class _Tracked:
    """A tracked finding: its identifier and, when it has pixels, its outline."""

    uid: str
    label: str
    regions: list[hd.sr.ImageRegion]

    @property
    def identifier(self) -> hd.sr.TrackingIdentifier:
        return hd.sr.TrackingIdentifier(uid=self.uid, identifier=self.label)


def build_sr(
    volume: Volume,
    seg: Dataset,
    labels: np.ndarray,
    metrics: Metrics,
    algorithm: Algorithm,
    predecessor: Dataset | None = None,
    series_instance_uid: str | None = None,
    reader_seg: Dataset | None = None,
) -> Dataset:
    """The measurement report for ``metrics`` of ``labels``, whose segments are in ``seg``.

    ``predecessor``: the report this one supersedes. ``reader_seg``: the SEG a reader
    edited, whose labels these are; listed as evidence."""
    alg = hd.sr.AlgorithmIdentification(name=algorithm.label, version=algorithm.version)
    observer = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=dcm_codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=DEVICE_UID,
                name="lge-node",
                manufacturer_name=MANUFACTURER,
                model_name=MODEL_NAME,
                serial_number=DEVICE_SERIAL,
            ),
        )
    )
    source_series = hd.sr.SourceSeriesForSegmentation(volume.series_instance_uid)
    masks = segment_masks(labels)

    def tracked(label: str, mask: np.ndarray, parent: _Tracked | None) -> _Tracked:
        # A finding without pixels (no MVO) is reported under the finding that contains
        # it, so that every group has image coordinates a viewer can open it on.
        regions = image_regions(volume, mask)
        if not regions and parent is not None:
            return parent
        return _Tracked(new_uid(), label, regions)

    myocardium = tracked(MYOCARDIUM_SEGMENT.label, masks[..., 0], None)
    infarct = tracked(INFARCT_SEGMENT.label, masks[..., 1], myocardium)
    mvo = tracked(MVO_SEGMENT.label, masks[..., 2], infarct)

    def outline_group(
        finding: _Tracked,
        finding_type: hd.sr.CodedConcept,
        category: hd.sr.CodedConcept,
        sites: list[hd.sr.FindingSite] | None = None,
        measurements: list[hd.sr.Measurement] | None = None,
        evaluations: list[hd.sr.QualitativeEvaluation] | None = None,
    ) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=finding.identifier,
            referenced_regions=finding.regions,
            finding_type=finding_type,
            finding_category=category,
            finding_sites=sites or [hd.sr.FindingSite(codes.HEART)],
            algorithm_id=alg,
            measurements=measurements,
            qualitative_evaluations=evaluations,
        )

    def segment_group(
        spec, finding: _Tracked, finding_type, category, measurements
    ) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=finding.identifier,
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID,
                sop_instance_uid=seg.SOPInstanceUID,
                segment_number=spec.number,
                source_series=source_series,
            ),
            finding_type=finding_type,
            finding_category=category,
            finding_sites=[hd.sr.FindingSite(codes.HEART)],
            algorithm_id=alg,
            measurements=measurements,
        )

    m = metrics

    def group(
        finding: _Tracked,
        finding_type: hd.sr.CodedConcept,
        measurements: list[hd.sr.Measurement],
        method: hd.sr.CodedConcept | None = None,
        evaluations: list[hd.sr.QualitativeEvaluation] | None = None,
        sites: list[hd.sr.FindingSite] | None = None,
    ) -> hd.sr.MeasurementsAndQualitativeEvaluations:
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=finding.identifier,
            finding_type=finding_type,
            finding_category=codes.MORPHOLOGICALLY_ABNORMAL,
            finding_sites=sites or [hd.sr.FindingSite(codes.HEART)],
            method=method,
            algorithm_id=alg,
            measurements=measurements or None,
            qualitative_evaluations=evaluations or None,
        )

    # Outline groups first: a viewer opens the report on the first measurement.
    outlined: set[str] = set()
    groups: list = []
    # The infarct leads: the reader lands on its largest slice with its numbers.
    for f, ftype, category in (
        (infarct, codes.INFARCT, codes.MORPHOLOGICALLY_ABNORMAL),
        (mvo, codes.MVO, codes.MORPHOLOGICALLY_ABNORMAL),
        (myocardium, codes.LV_MYOCARDIUM, codes.ANATOMICAL_STRUCTURE),
    ):
        if f.regions and f.uid not in outlined:
            groups.append(outline_group(f, ftype, category))
            outlined.add(f.uid)
    groups += [
        segment_group(
            MYOCARDIUM_SEGMENT,
            myocardium,
            codes.LV_MYOCARDIUM,
            codes.ANATOMICAL_STRUCTURE,
            [
                _measure(codes.VOLUME, m.myocardium_ml, codes.CM3),
                _measure(codes.MASS, m.myocardium_mass_g, codes.GRAM),
            ],
        ),
        segment_group(
            INFARCT_SEGMENT,
            infarct,
            codes.INFARCT,
            codes.MORPHOLOGICALLY_ABNORMAL,
            [
                _measure(codes.VOLUME, m.scar_ml, codes.CM3),
                _measure(codes.MASS, m.scar_mass_g, codes.GRAM),
                _measure(codes.PERCENT_OF_LV, m.scar_percent, codes.PERCENT),
            ],
        ),
        segment_group(
            MVO_SEGMENT,
            mvo,
            codes.MVO,
            codes.MORPHOLOGICALLY_ABNORMAL,
            [
                _measure(codes.VOLUME, m.mvo_ml, codes.CM3, MVO_DECIMALS),
                _measure(codes.PERCENT_OF_LV, m.mvo_percent, codes.PERCENT),
            ],
        ),
    ]
    c = m.composition
    if c is not None:
        groups += [
            group(infarct, codes.INFARCT_CORE, [
                _measure(codes.VOLUME, c.core_ml, codes.CM3),
                _measure(codes.PERCENT_OF_LV, c.core_percent, codes.PERCENT),
            ], codes.METHOD_FWHM),
            group(infarct, codes.GREY_ZONE, [
                _measure(codes.VOLUME, c.grey_zone_ml, codes.CM3),
                _measure(codes.PERCENT_OF_LV, c.grey_zone_percent, codes.PERCENT),
            ], codes.method_grey_zone(c.grey_zone_sd)),
        ]  # fmt: skip
    for r in m.reference:
        method = {"FWHM": codes.METHOD_FWHM, "EWA": codes.METHOD_EWA}.get(r.method)
        if r.method == "nSD" and r.parameter is not None:
            method = codes.method_nsd(r.parameter)
        groups.append(group(infarct, codes.INFARCT, [
            _measure(codes.VOLUME, r.scar_ml, codes.CM3),
            _measure(codes.PERCENT_OF_LV, r.scar_percent, codes.PERCENT),
        ], method))  # fmt: skip
    nonviable = set(m.nonviable_segments)
    aha_map = m.segment_map
    if aha_map is None or aha_map.shape != labels.shape:  # metrics made without the map
        aha_map, _ = aha_segments(labels, volume.geometry)
    for s in m.segments:
        measurements = [
            _measure(codes.SEGMENT_SCAR_PERCENT, s.scar_percent, codes.PERCENT),
            _measure(
                codes.TRANSMURALITY, s.transmurality_percent, codes.PERCENT,
                TRANSMURALITY_DECIMALS,
            ),
            _measure(
                codes.MAX_TRANSMURALITY, s.max_transmurality_percent, codes.PERCENT,
                TRANSMURALITY_DECIMALS,
            ),
            _measure(codes.VOLUME, s.mvo_ml, codes.CM3, MVO_DECIMALS),
        ]  # fmt: skip
        evaluations = (
            [hd.sr.QualitativeEvaluation(codes.VIABILITY, codes.NONVIABLE)]
            if s.id in nonviable
            else None
        )
        site = [hd.sr.FindingSite(codes.AHA_SEGMENTS[s.id])]
        segment = tracked(f"AHA segment {s.id}", aha_map == s.id, None)
        if segment.regions:
            groups.append(
                outline_group(
                    segment, codes.INFARCT, codes.MORPHOLOGICALLY_ABNORMAL, site,
                    measurements, evaluations,
                )
            )  # fmt: skip
        else:  # a segment the slices do not reach: tracked as the myocardium
            groups.append(
                group(myocardium, codes.INFARCT, measurements, evaluations=evaluations, sites=site)
            )
    groups.append(
        group(
            myocardium,
            codes.SUMMARY,
            [_measure(codes.NONVIABLE_SEGMENTS, len(nonviable), codes.SEGMENTS)],
            codes.method_nonviable(m.nonviable_percent),
        )
    )
    flags = [
        hd.sr.QualitativeEvaluation(codes.QC_FLAG, codes.qc_flag_code(f)) for f in m.qc.flags
    ] or [hd.sr.QualitativeEvaluation(codes.QC_FLAG, codes.QC_NONE)]
    reliability = (
        [_measure(codes.RELIABILITY, m.qc.reliability, codes.UNITLESS, 2)]
        if m.qc.reliability is not None
        else None
    )
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=myocardium.identifier,
            finding_type=codes.QUALITY_CONTROL,
            algorithm_id=alg,
            measurements=reliability,
            qualitative_evaluations=[
                *flags,
                hd.sr.QualitativeEvaluation(
                    codes.SEGMENTATION_REVIEW,
                    codes.READER_EDITED if algorithm.reader_edited else codes.NOT_REVIEWED,
                ),
                hd.sr.QualitativeEvaluation(codes.INTENDED_USE, codes.RESEARCH_ONLY),
            ],
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=observer,
        procedure_reported=codes.PROCEDURE_CARDIAC_MRI,
        imaging_measurements=groups,
    )
    return _document(
        report, [*volume.datasets, seg, *([reader_seg] if reader_seg is not None else [])],
        algorithm, predecessor, series_instance_uid,
    )  # fmt: skip


def _document(
    report: hd.sr.MeasurementReport,
    evidence: list[Dataset],
    algorithm: Algorithm,
    predecessor: Dataset | None,
    series_instance_uid: str | None,
    check_content: bool = False,
) -> Dataset:
    """The Comprehensive 3D SR document holding ``report``.

    highdicom's document constructor deep-copies the content tree and reads it back to
    check that every image it references is in ``evidence``: half the time of a job's
    report, for the hundreds of outline items. Here every reference is made from the
    evidence, and nothing else the constructor sets depends on the content's items; so
    it is given the root container without them, and they are attached to the result.
    ``check_content``: the constructor's whole path instead (the tests compare both)."""
    root = report[0]
    content = root
    if not check_content:
        content = Dataset()
        for element in root:
            if element.keyword != "ContentSequence":
                content.add(element)
        content.ContentSequence = []
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=content,
        series_instance_uid=series_instance_uid or new_uid(),
        series_number=SR_SERIES.of(algorithm).number,
        sop_instance_uid=new_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # nobody has verified it: a draft for the reader
        previous_versions=[predecessor] if predecessor is not None else None,
        performed_procedure_codes=[codes.PROCEDURE_CARDIAC_MRI],
        series_description=SR_SERIES.of(algorithm).description,
        specific_character_set=character_set(evidence[0]),
    )
    # A plain data set: highdicom's view of the content would be the root alone.
    document = Dataset(sr)
    document.file_meta = sr.file_meta
    document.ContentSequence = root.ContentSequence
    copy_character_set(evidence[0], document)
    document.CodingSchemeIdentificationSequence = [_coding_scheme()]
    return document
