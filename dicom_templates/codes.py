"""Coded concepts used in SEG and SR, in one place.

Standard codes where they exist (SNOMED CT, DCM, UCUM, CID 3717 for AHA segments). No
standard code was found for microvascular obstruction, for scar extent as a percentage of
LV myocardium, or for transmurality; those use the private coding scheme ``99LGENODE``
(documented in the README's conformance section).
"""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

PRIVATE_SCHEME = "99LGENODE"


def private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


# Segmented property categories and types
ANATOMICAL_STRUCTURE = CodedConcept("91723000", "SCT", "Anatomical Structure")
MORPHOLOGICALLY_ABNORMAL = CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")
LV_MYOCARDIUM = CodedConcept("49848007", "SCT", "Left ventricle myocardium")
INFARCT = CodedConcept("55641003", "SCT", "Infarct")
MVO = private("MVO", "Microvascular obstruction")
LV_BLOOD_POOL = private("LVBP", "Left ventricle blood pool")
RV_BLOOD_POOL = private("RVBP", "Right ventricle blood pool")
HEART = CodedConcept("80891009", "SCT", "Heart")

# Measurements
VOLUME = CodedConcept("118565006", "SCT", "Volume")
MASS = CodedConcept("118538004", "SCT", "Mass")  # not 4147007, a lesion "mass"
PERCENT_OF_LV = private("PCTLVMYO", "Percent of left ventricle myocardium")
SEGMENT_SCAR_PERCENT = private("PCTSEGMYO", "Infarct percent of segment myocardium")
TRANSMURALITY = private("TRANSMURAL", "Mean transmural extent of infarct")
MAX_TRANSMURALITY = private("MAXTRANSMURAL", "Maximum transmural extent of infarct")
NONVIABLE_SEGMENTS = private("NONVIABLESEGS", "Number of non-viable AHA segments")
NONVIABLE = private("NONVIABLE", "Non-viable segment")
VIABILITY = private("VIABILITY", "Segment viability")
INFARCT_CORE = private("INFCORE", "Infarct core")
GREY_ZONE = private("GREYZONE", "Peri-infarct grey zone")
SUMMARY = private("SUMMARY", "Summary")
# Methods (TID 1419 row "Measurement Method"): the segmentation, and the intensity methods
METHOD_MODEL = private("DLSEG", "Deep-learning segmentation")
METHOD_FWHM = private("FWHM", "Full width at half maximum")
METHOD_EWA = private("EWA", "Weighted intensity (EWA)")


def method_nsd(n: float) -> CodedConcept:
    """n-SD threshold; the n is part of the code so a reader sees which."""
    return private(f"NSD{n:g}", f"{n:g} standard deviations above remote myocardium")


def method_grey_zone(n: float) -> CodedConcept:
    return private(f"GZ{n:g}SDFWHM", f"Between {n:g}-SD and FWHM thresholds")


def method_nonviable(percent: float) -> CodedConcept:
    return private(f"NONVIAB{percent:g}", f"Non-viable: infarct > {percent:g} % transmural")


# Units (UCUM)
CM3 = CodedConcept("cm3", "UCUM", "cubic centimeter")
GRAM = CodedConcept("g", "UCUM", "gram")
PERCENT = CodedConcept("%", "UCUM", "percent")
SEGMENTS = CodedConcept("{segments}", "UCUM", "segments")
UNITLESS = CodedConcept("1", "UCUM", "no units")

# Report
PROCEDURE_CARDIAC_MRI = CodedConcept("241620005", "SCT", "Magnetic resonance imaging of heart")
QUALITY_CONTROL = private("QC", "Quality control")
QC_FLAG = private("QCFLAG", "Quality control flag")
QC_NONE = private("QCNONE", "No quality control flags")
RELIABILITY = private("RELIABILITY", "QC reliability score (0-1)")
SEGMENTATION_REVIEW = private("SEGREVIEW", "Segmentation review")
NOT_REVIEWED = private("AUTOMATIC", "Automatic segmentation, not reviewed by a reader")
READER_EDITED = private("READEREDIT", "Segmentation edited by a reader")
INTENDED_USE = private("USE", "Intended use")
RESEARCH_ONLY = private("RESEARCH", "Research only, not for clinical use")
ALGORITHM_FAMILY = codes.cid7162.ArtificialIntelligence

# AHA 17-segment model, CID 3717, by segment id.
AHA_SEGMENTS: dict[int, CodedConcept] = {
    sid: CodedConcept(code.value, code.scheme_designator, code.meaning)
    for sid, code in {
        1: codes.SCT.LeftVentricleBasalAnteriorSegment,
        2: codes.SCT.LeftVentricleBasalAnteroseptalSegment,
        3: codes.SCT.LeftVentricleBasalInferoseptalSegment,
        4: codes.SCT.LeftVentricleBasalInferiorSegment,
        5: codes.SCT.LeftVentricleBasalInferolateralSegment,
        6: codes.SCT.LeftVentricleBasalAnterolateralSegment,
        7: codes.SCT.LeftVentricleMidAnteriorSegment,
        8: codes.SCT.LeftVentricleMidAnteroseptalSegment,
        9: codes.SCT.LeftVentricleMidInferoseptalSegment,
        10: codes.SCT.LeftVentricleMidInferiorSegment,
        11: codes.SCT.LeftVentricleMidInferolateralSegment,
        12: codes.SCT.LeftVentricleMidAnterolateralSegment,
        13: codes.SCT.LeftVentricleApicalAnteriorSegment,
        14: codes.SCT.LeftVentricleApicalSeptalSegment,
        15: codes.SCT.LeftVentricleApicalInferiorSegment,
        16: codes.SCT.LeftVentricleApicalLateralSegment,
        17: codes.SCT.ApexOfLeftVentricle,
    }.items()
}


# Declared in every SR's Coding Scheme Identification Sequence (PS3.3 C.12.1.1.4).
PRIVATE_SCHEME_NAME = "lge-node private codes"
PRIVATE_SCHEME_ORGANIZATION = "lge-node project (README, Conformance notes)"


def qc_flag_code(flag: str) -> CodedConcept:
    """A QC flag identifier (e.g. ``septum_fallback``) as a private code."""
    return private(flag.upper()[:16], flag.replace("_", " "))
