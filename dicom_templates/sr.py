"""TID 1500 Measurement Report (Comprehensive 3D SR) of the LGE quantification.

Content: volumetric groups that reference the SEG segments (LV myocardium: volume, mass;
infarct: volume, mass, % of LV myocardium; MVO: volume, % of LV myocardium); one group
per AHA segment (finding site from CID 3717) with infarct %, mean transmurality and MVO
volume; a quality-control group holding the QC flags and the intended-use statement; the
node as device observer and the model in every measurement's algorithm identification.
"""

from __future__ import annotations

import highdicom as hd
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
from dicom_templates.seg import INFARCT_SEGMENT, MVO_SEGMENT, MYOCARDIUM_SEGMENT
from dicom_templates.uids import derived_uid, new_uid
from pipeline.quantify import Metrics
from pipeline.volume import Volume

DEVICE_UID = derived_uid("device", MANUFACTURER, DEVICE_SERIAL)


def _measure(
    name: hd.sr.CodedConcept,
    value: float,
    unit: hd.sr.CodedConcept,
    alg: hd.sr.AlgorithmIdentification,
) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=alg)


def build_sr(
    volume: Volume,
    seg: Dataset,
    metrics: Metrics,
    algorithm: Algorithm,
    predecessor: Dataset | None = None,
    series_instance_uid: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The measurement report for ``metrics``, whose segments are in ``seg``."""
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

    def segment_group(
        spec, finding_type, category, measurements
    ) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(), identifier=spec.label),
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
    groups: list = [
        segment_group(
            MYOCARDIUM_SEGMENT,
            codes.LV_MYOCARDIUM,
            codes.ANATOMICAL_STRUCTURE,
            [
                _measure(codes.VOLUME, m.myocardium_ml, codes.CM3, alg),
                _measure(codes.MASS, m.myocardium_mass_g, codes.GRAM, alg),
            ],
        ),
        segment_group(
            INFARCT_SEGMENT,
            codes.INFARCT,
            codes.MORPHOLOGICALLY_ABNORMAL,
            [
                _measure(codes.VOLUME, m.scar_ml, codes.CM3, alg),
                _measure(codes.MASS, m.scar_mass_g, codes.GRAM, alg),
                _measure(codes.PERCENT_OF_LV, m.scar_percent, codes.PERCENT, alg),
            ],
        ),
        segment_group(
            MVO_SEGMENT,
            codes.MVO,
            codes.MORPHOLOGICALLY_ABNORMAL,
            [
                _measure(codes.VOLUME, m.mvo_ml, codes.CM3, alg),
                _measure(codes.PERCENT_OF_LV, m.mvo_percent, codes.PERCENT, alg),
            ],
        ),
    ]
    for s in m.segments:
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=new_uid(), identifier=f"AHA segment {s.id}"
                ),
                finding_type=codes.INFARCT,
                finding_category=codes.MORPHOLOGICALLY_ABNORMAL,
                finding_sites=[hd.sr.FindingSite(codes.AHA_SEGMENTS[s.id])],
                algorithm_id=alg,
                measurements=[
                    _measure(codes.SEGMENT_SCAR_PERCENT, s.scar_percent, codes.PERCENT, alg),
                    _measure(codes.TRANSMURALITY, s.transmurality_percent, codes.PERCENT, alg),
                    _measure(codes.VOLUME, s.mvo_ml, codes.CM3, alg),
                ],
            )
        )
    flags = [
        hd.sr.QualitativeEvaluation(codes.QC_FLAG, codes.qc_flag_code(f)) for f in m.qc.flags
    ] or [hd.sr.QualitativeEvaluation(codes.QC_FLAG, codes.QC_NONE)]
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(), identifier="QC"),
            finding_type=codes.QUALITY_CONTROL,
            algorithm_id=alg,
            qualitative_evaluations=[
                *flags,
                hd.sr.QualitativeEvaluation(codes.INTENDED_USE, codes.RESEARCH_ONLY),
            ],
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=observer,
        procedure_reported=codes.PROCEDURE_CARDIAC_MRI,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*volume.datasets, seg],
        content=report,
        series_instance_uid=series_instance_uid or new_uid(),
        series_number=SR_SERIES.number,
        sop_instance_uid=new_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # nobody has verified it: a draft for the reader
        previous_versions=[predecessor] if predecessor is not None else None,
        performed_procedure_codes=[codes.PROCEDURE_CARDIAC_MRI],
        series_description=SR_SERIES.description,
        specific_character_set=character_set(volume.datasets[0]),
    )
    copy_character_set(volume.datasets[0], sr)
    return sr
