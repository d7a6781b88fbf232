"""Write a phantom as a scanner would: MR Image Storage (one file per slice) or Enhanced
MR Image Storage (one multi-frame file), with the headers of an LGE acquisition."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    UID,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from pipeline.research.phantom.render import Acquisition

BITS_STORED = 12
PSIR_INTERCEPT = -2048.0  # PSIR is signed; stored unsigned with an offset, like scanners do
GIVEN_NAMES = ("Zoë", "Jörg", "Ana", "Chloé", "Björn", "Amélie", "Søren", "Inês")


def derived_uid(*parts: object) -> UID:
    """Phantom UIDs are a pure function of the seed, like the pixels: a study is
    reproducible UIDs included (a scanner's UIDs, not lge-node's output UIDs)."""
    return generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=["lge-node", *map(str, parts)])


IMPLEMENTATION_UID = derived_uid("implementation")


@dataclass(frozen=True)
class StudyInfo:
    """Patient/study identity of a phantom, all derived from the seed."""

    seed: int
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_uid: str
    frame_of_reference_uid: str
    study_date: str
    study_time: str
    accession: str

    @classmethod
    def from_seed(cls, seed: int) -> StudyInfo:
        rng = np.random.default_rng([seed, 99])
        date = dt.date(2026, 1, 1) + dt.timedelta(days=int(seed) % 365)
        return cls(
            seed=seed,
            patient_name=f"Phantom^{GIVEN_NAMES[seed % len(GIVEN_NAMES)]} {seed}",
            patient_id=f"LGEPH{seed:06d}",
            birth_date=f"{1940 + int(rng.integers(0, 50))}0{1 + int(rng.integers(0, 9))}15",
            sex=str(rng.choice(["M", "F"])),
            study_uid=derived_uid("study", seed),
            frame_of_reference_uid=derived_uid("for", seed),
            study_date=date.strftime("%Y%m%d"),
            study_time=f"{8 + seed % 10:02d}{seed % 60:02d}00",
            accession=f"ACC{seed:07d}",
        )


def _ds(value: float) -> str:
    """A decimal string at full DS precision (16 characters), so readers recover the
    geometry the truth was computed on."""
    return format_number_as_ds(float(value))


def stored_offset(kind: str) -> float:
    """RescaleIntercept: stored value + this = scanner value."""
    return PSIR_INTERCEPT if kind == "psir" else 0.0


def stored_pixels(image: np.ndarray, kind: str) -> np.ndarray:
    """Scanner units to stored uint16 (12 bits used)."""
    return np.clip(np.rint(image - stored_offset(kind)), 0, 2**BITS_STORED - 1).astype(np.uint16)


def _series_fields(kind: str) -> dict[str, object]:
    if kind == "psir":
        return {
            "SeriesDescription": "LGE PSIR SAX",
            "SeriesNumber": 1201,
            "SequenceName": "tfl2d1_psir",
            "ImageType": ["DERIVED", "PRIMARY", "R", "PSIR"],
        }
    return {
        "SeriesDescription": "LGE MAG SAX",
        "SeriesNumber": 1200,
        "SequenceName": "tfl2d1",
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "NORM"],
    }


def _common(ds: Dataset, info: StudyInfo, series_uid: str, kind: str, acq: Acquisition) -> None:
    """Patient, study, series, frame of reference, equipment: identical for both IODs."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = info.birth_date
    ds.PatientSex = info.sex
    ds.PatientWeight = "75"
    ds.StudyInstanceUID = info.study_uid
    ds.StudyDate = info.study_date
    ds.StudyTime = info.study_time
    ds.AccessionNumber = info.accession
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.StudyDescription = "Cardiac MRI (synthetic phantom)"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "MR"
    ds.SeriesDate = info.study_date
    ds.SeriesTime = info.study_time
    ds.BodyPartExamined = "HEART"
    ds.PatientPosition = "HFS"
    ds.ProtocolName = "LGE_SAX"
    ds.FrameOfReferenceUID = info.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "lge-node"
    ds.ManufacturerModelName = "LGE phantom (synthetic, not a patient)"
    ds.DeviceSerialNumber = "PHANTOM"
    ds.SoftwareVersions = "lge-node phantom 1"
    ds.InstitutionName = "Synthetic"
    ds.StationName = "LGEPHANTOM"
    for key, value in _series_fields(kind).items():
        if key not in ("ImageType", "SequenceName"):  # differ between the two IODs
            setattr(ds, key, value)
    ds.ContentDate = info.study_date
    ds.ContentTime = info.study_time
    ds.AcquisitionNumber = 1
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = acq.rows
    ds.Columns = acq.columns
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0


def _file_meta(sop_class: UID, sop_instance: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "LGENODE_1"
    return meta


def _window(stored: np.ndarray, kind: str) -> tuple[float, float]:
    real = stored.astype(float) + stored_offset(kind)
    lo, hi = np.percentile(real, [1, 99.5])
    return float(round((lo + hi) / 2)), float(round(max(hi - lo, 1)))


def write_classic(
    out_dir: Path, image: np.ndarray, acq: Acquisition, info: StudyInfo, kind: str
) -> list[Path]:
    """One MR Image Storage file per slice; returns the paths in slice order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stored = stored_pixels(image, kind)
    series_uid = derived_uid("series", info.seed, kind, "classic")
    center, width = _window(stored, kind)
    fields = _series_fields(kind)
    paths = []
    for k in range(acq.n_slices):
        sop_uid = derived_uid("image", info.seed, kind, "classic", k)
        ds = Dataset()
        ds.file_meta = _file_meta(MRImageStorage, sop_uid)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        _common(ds, info, series_uid, kind, acq)
        ds.ImageType = fields["ImageType"]
        ds.SequenceName = fields["SequenceName"]
        ds.InstanceNumber = acq.n_slices - k if acq.reverse_instances else k + 1
        ds.AcquisitionTime = info.study_time
        ds.ImagePositionPatient = [_ds(v) for v in acq.positions[k]]
        ds.ImageOrientationPatient = [_ds(v) for v in (*acq.row_direction, *acq.column_direction)]
        ds.SliceLocation = _ds(acq.positions[k] @ acq.normal)
        ds.PixelSpacing = [_ds(acq.pixel_spacing)] * 2
        ds.SliceThickness = _ds(acq.thickness)
        ds.SpacingBetweenSlices = _ds(acq.spacing)
        # MR acquisition: segmented inversion-recovery gradient echo, ECG triggered.
        ds.ScanningSequence = ["GR", "IR"]
        ds.SequenceVariant = ["SK", "SP", "MP"]
        ds.ScanOptions = ["CG"]  # cardiac gating (TriggerTime is conditional on it)
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "750"
        ds.EchoTime = "3.2"
        ds.InversionTime = f"{acq.inversion_time:.0f}"
        ds.EchoTrainLength = 1
        ds.FlipAngle = "25"
        ds.NumberOfAverages = "1"
        ds.ImagingFrequency = "63.68"
        ds.ImagedNucleus = "1H"
        ds.MagneticFieldStrength = "1.5"
        ds.TriggerTime = "420"
        ds.CardiacNumberOfImages = 1
        ds.HeartRate = 70
        ds.PixelBandwidth = "465"
        ds.ReceiveCoilName = "Body18"
        ds.InPlanePhaseEncodingDirection = "ROW"
        ds.PatientOrientation = ""
        if kind == "psir":
            ds.RescaleIntercept = f"{PSIR_INTERCEPT:.0f}"
            ds.RescaleSlope = "1"
            ds.RescaleType = "US"
        ds.WindowCenter = f"{center:.0f}"
        ds.WindowWidth = f"{width:.0f}"
        ds.LossyImageCompression = "00"
        ds.PixelData = stored[k].tobytes()
        ds["PixelData"].VR = "OW"
        path = out_dir / f"IM_{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _item(**kwargs: object) -> Dataset:
    item = Dataset()
    for key, value in kwargs.items():
        setattr(item, key, value)
    return item


def write_enhanced(
    out_dir: Path, image: np.ndarray, acq: Acquisition, info: StudyInfo, kind: str
) -> list[Path]:
    """One Enhanced MR Image Storage file holding the stack as frames."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stored = stored_pixels(image, kind)
    series_uid = derived_uid("series", info.seed, kind, "enhanced")
    sop_uid = derived_uid("image", info.seed, kind, "enhanced")
    ds = Dataset()
    ds.file_meta = _file_meta(EnhancedMRImageStorage, sop_uid)
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = sop_uid
    _common(ds, info, series_uid, kind, acq)
    # Enhanced PSIR is reconstructed from the acquired data (as vendors write it): ORIGINAL.
    ds.ImageType = ["ORIGINAL", "PRIMARY", "CARDIAC", "NONE"]
    ds.InstanceNumber = 1
    ds.AcquisitionDateTime = info.study_date + info.study_time
    ds.AcquisitionDuration = 12.0 * acq.n_slices
    ds.ContentQualification = "RESEARCH"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = "1.5"
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.ImageComments = "Synthetic LGE phantom - not a patient, not for clinical use"
    ds.PixelPresentation = "MONOCHROME"
    ds.PresentationLUTShape = "IDENTITY"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE" if kind == "magnitude" else "REAL"
    ds.AcquisitionContrast = "T1"
    ds.LossyImageCompression = "00"
    ds.NumberOfFrames = acq.n_slices
    ds.AcquisitionContextSequence = Sequence()
    # Cardiac synchronisation: LGE is ECG-triggered, mid-diastole.
    ds.CardiacSynchronizationTechnique = "PROSPECTIVE"
    ds.CardiacSignalSource = "ECG"
    ds.CardiacRRIntervalSpecified = 857.0
    ds.CardiacBeatRejectionTechnique = "NONE"
    ds.LowRRValue = 700
    ds.HighRRValue = 1000
    ds.IntervalsAcquired = 12 * acq.n_slices
    ds.IntervalsRejected = 0
    ds.RespiratoryMotionCompensationTechnique = "BREATH_HOLD"
    ds.RespiratorySignalSource = "NONE"
    # MR Pulse Sequence module (required for ORIGINAL images; harmless for derived PSIR).
    ds.PulseSequenceName = "LGE_IR_GRE"
    ds.MRAcquisitionType = "2D"
    ds.EchoPulseSequence = "GRADIENT"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.SegmentedKSpaceTraversal = "PARTIAL"
    ds.NumberOfKSpaceTrajectories = 1

    dim_uid = derived_uid("dimension", info.seed, kind)
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=dim_uid)])
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = Sequence(
        [
            _item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=0x00209057,  # InStackPositionNumber
                FunctionalGroupPointer=0x00209111,  # FrameContentSequence
                DimensionDescriptionLabel="In-stack position",
            ),
        ]
    )

    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence(
        [
            _item(
                PixelSpacing=[_ds(acq.pixel_spacing)] * 2,
                SliceThickness=_ds(acq.thickness),
                SpacingBetweenSlices=_ds(acq.spacing),
            )
        ]
    )
    shared.PlaneOrientationSequence = Sequence(
        [
            _item(
                ImageOrientationPatient=[
                    _ds(v) for v in (*acq.row_direction, *acq.column_direction)
                ]
            )
        ]
    )
    shared.FrameAnatomySequence = Sequence(
        [
            _item(
                FrameLaterality="U",
                AnatomicRegionSequence=Sequence(
                    [_item(CodeValue="80891009", CodingSchemeDesignator="SCT", CodeMeaning="Heart")]
                ),
            )
        ]
    )
    shared.PixelValueTransformationSequence = Sequence(
        [
            _item(
                RescaleIntercept=f"{stored_offset(kind):.0f}",
                RescaleSlope="1",
                RescaleType="US",
            )
        ]
    )
    center, width = _window(stored, kind)
    shared.FrameVOILUTSequence = Sequence(
        [_item(WindowCenter=f"{center:.0f}", WindowWidth=f"{width:.0f}")]
    )
    shared.MRImageFrameTypeSequence = Sequence(
        [
            _item(
                FrameType=ds.ImageType,
                PixelPresentation="MONOCHROME",
                VolumetricProperties="VOLUME",
                VolumeBasedCalculationTechnique="NONE",
                ComplexImageComponent=ds.ComplexImageComponent,
                AcquisitionContrast="T1",
            )
        ]
    )
    shared.MRTimingAndRelatedParametersSequence = Sequence(
        [
            _item(
                RepetitionTime=750.0,
                FlipAngle=25.0,
                EchoTrainLength=1,
                RFEchoTrainLength=0,
                GradientEchoTrainLength=1,
                SpecificAbsorptionRateSequence=Sequence(
                    [
                        _item(
                            SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                            SpecificAbsorptionRateValue=0.5,
                        )
                    ]
                ),
                GradientOutputType="DB_DT",
                GradientOutput=20.0,
                OperatingModeSequence=Sequence(
                    [
                        _item(OperatingModeType=t, OperatingMode="IEC_NORMAL")
                        for t in ("STATIC FIELD", "RF", "GRADIENT")
                    ]
                ),
            )
        ]
    )
    shared.MRFOVGeometrySequence = Sequence(
        [
            _item(
                InPlanePhaseEncodingDirection="ROW",
                MRAcquisitionFrequencyEncodingSteps=acq.columns,
                MRAcquisitionPhaseEncodingStepsInPlane=acq.rows,
                PercentSampling=100.0,
                PercentPhaseFieldOfView=100.0,
            )
        ]
    )
    shared.MREchoSequence = Sequence([_item(EffectiveEchoTime=3.2)])
    shared.MRModifierSequence = Sequence(
        [
            _item(
                InversionRecovery="YES",
                InversionTimes=[round(acq.inversion_time, 1)],
                FlowCompensation="NONE",
                T2Preparation="NO",
                SpectrallySelectedExcitation="NONE",
                SpatialPresaturation="NONE",
                PartialFourier="NO",
                ParallelAcquisition="NO",
            )
        ]
    )
    shared.MRImagingModifierSequence = Sequence(
        [
            _item(
                MagnetizationTransfer="NONE",
                BloodSignalNulling="NO",
                Tagging="NONE",
                TransmitterFrequency=63.68,
                PixelBandwidth=465.0,
            )
        ]
    )
    shared.MRReceiveCoilSequence = Sequence(
        [
            _item(
                ReceiveCoilName="Body18",
                ReceiveCoilManufacturerName="lge-node",
                ReceiveCoilType="MULTICOIL",
                QuadratureReceiveCoil="NO",
                MultiCoilDefinitionSequence=Sequence(
                    [_item(MultiCoilElementName="Body18", MultiCoilElementUsed="YES")]
                ),
            )
        ]
    )
    shared.MRTransmitCoilSequence = Sequence(
        [
            _item(
                TransmitCoilName="Body",
                TransmitCoilManufacturerName="lge-node",
                TransmitCoilType="BODY",
            )
        ]
    )
    shared.MRAveragesSequence = Sequence([_item(NumberOfAverages=1.0)])
    shared.MRSpatialSaturationSequence = Sequence()
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    per_frame = []
    for k in range(acq.n_slices):
        frame = Dataset()
        frame.FrameContentSequence = Sequence(
            [
                _item(
                    FrameAcquisitionNumber=k + 1,
                    FrameAcquisitionDateTime=info.study_date + info.study_time,
                    FrameReferenceDateTime=info.study_date + info.study_time,
                    FrameAcquisitionDuration=12000.0,
                    StackID="1",
                    InStackPositionNumber=k + 1,
                    DimensionIndexValues=[k + 1],
                )
            ]
        )
        frame.PlanePositionSequence = Sequence(
            [_item(ImagePositionPatient=[_ds(v) for v in acq.positions[k]])]
        )
        frame.CardiacSynchronizationSequence = Sequence(
            [_item(NominalCardiacTriggerDelayTime=420.0, RRIntervalTimeNominal=857.0)]
        )
        per_frame.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    path = out_dir / "ENHANCED_MR.dcm"
    ds.save_as(path, enforce_file_format=True)
    return [path]
