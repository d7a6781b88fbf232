"""Selection rules, on the facts the index (or a C-FIND response) provides."""

from __future__ import annotations

import pytest
from pydicom.uid import EnhancedMRImageStorage as ENHANCED_MR_IMAGE_STORAGE
from pydicom.uid import MRImageStorage as MR_IMAGE_STORAGE

from node.config import SelectionSection
from node.workflow.selector import SeriesFacts, choose, judge

STACK = [(f"0.0\\0.0\\{z:.1f}", 300.0) for z in range(0, 100, 10)]  # 10 positions, one TI


def facts(uid: str = "1.1", **kw) -> SeriesFacts:
    base = dict(
        series_uid=uid, modality="MR", description="LGE PSIR SAX", sop_class_uid=MR_IMAGE_STORAGE,
        image_type="DERIVED\\PRIMARY\\R\\PSIR", scanning_sequence="GR\\IR", series_number=1201,
        frames=STACK,
    )  # fmt: skip
    base.update(kw)
    return SeriesFacts(**base)


CFG = SelectionSection()


@pytest.mark.parametrize(
    "description",
    ["LGE PSIR SAX", "de_sax_psir", "Delayed Enhancement SA", "PSIR_SAX_MOCO",
     "late gad short axis", "MDE SAX", "Viability", "Del Enh SAX"],
)  # fmt: skip
def test_vendor_lge_descriptions_are_processed(description: str) -> None:
    assert judge(facts(description=description, image_type=""), CFG).process


@pytest.mark.parametrize(
    ("description", "why"),
    [("SAX cine retro", "cine"), ("TI scout", "scout"), ("localizer", "loc"),
     ("LGE 3-plane loc", "loc"), ("MOLLI T1 map", "molli"), ("Look-Locker TI", "look")],
)  # fmt: skip
def test_non_lge_descriptions_are_skipped_with_the_pattern(description: str, why: str) -> None:
    d = judge(facts(description=description), CFG)
    assert not d.process and "exclude pattern" in d.reason and why in d.reason.lower()


def test_ti_scout_is_recognised_by_many_inversion_times_at_one_position() -> None:
    frames = [("0.0\\0.0\\0.0", 100.0 + 25 * i) for i in range(12)]
    d = judge(facts(description="IR prep", frames=frames), CFG)
    assert not d.process and "12 inversion times at one slice position" in d.reason


def test_too_few_positions_is_not_a_stack() -> None:
    d = judge(facts(frames=STACK[:2]), CFG)
    assert not d.process and "2 slice position(s)" in d.reason


def test_unnamed_ir_stack_with_one_ti_per_position_is_lge_when_enabled() -> None:
    unnamed = facts(description="sa_tfl2d1", image_type="ORIGINAL\\PRIMARY\\M")
    assert judge(unnamed, CFG).process
    assert "one TI per position" in judge(unnamed, CFG).reason
    off = SelectionSection(use_inversion_time=False)
    assert not judge(unnamed, off).process
    no_ti = facts(description="sa_tfl2d1", frames=[(p, None) for p, _ in STACK])
    assert not judge(no_ti, CFG).process


def test_other_modalities_and_objects_are_skipped() -> None:
    assert "modality CT is not MR" in judge(facts(modality="CT"), CFG).reason
    seg = facts(sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4")
    assert "not an MR image" in judge(seg, CFG).reason
    assert judge(facts(sop_class_uid=ENHANCED_MR_IMAGE_STORAGE), CFG).process


def test_forced_series_skip_the_description_rules_but_not_the_modality() -> None:
    assert judge(facts(description="SAX cine", forced=True), CFG).process
    assert not judge(facts(modality="CT", forced=True), CFG).process


def test_psir_is_preferred_over_the_magnitude_of_the_same_acquisition() -> None:
    psir = facts("1.1")
    mag = facts("1.2", description="LGE MAG SAX", image_type="M", series_number=1200)
    lax = [(f"9\\9\\{z}", 300.0) for z in range(5)]
    other = facts("1.3", description="LGE MAG 2CH", image_type="M", frames=lax, series_number=1500)
    d = choose([psir, mag, other], CFG)
    assert d["1.1"].process and d["1.1"].kind == "psir"
    assert not d["1.2"].process and "psir preferred" in d["1.2"].reason
    assert d["1.3"].process  # a different acquisition (other positions) is kept
    assert [u for u, x in choose([psir, mag], SelectionSection(prefer="magnitude")).items()
            if x.process] == ["1.2"]  # fmt: skip
    assert all(x.process for x in choose([psir, mag], SelectionSection(prefer="both")).values())


def test_without_positions_series_numbers_pair_the_reconstructions() -> None:
    """C-FIND gives no per-frame positions: Siemens numbers MAG/PSIR N and N+1."""
    psir = facts("1.1", frames=None, series_number=1201)
    mag = facts("1.2", frames=None, description="LGE MAG", image_type="M", series_number=1200)
    far = facts("1.3", frames=None, description="LGE MAG LAX", image_type="M", series_number=1700)
    d = choose([psir, mag, far], CFG)
    assert [d[u].process for u in ("1.1", "1.2", "1.3")] == [True, False, True]
