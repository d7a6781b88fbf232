"""Synthetic LGE phantoms: deterministic, valid DICOM, truth consistent with the labels,
and images that carry the contrasts of a real LGE study."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from pipeline.labels import Label
from pipeline.research.phantom import PhantomSpec, make_phantom
from pipeline.research.phantom.anatomy import MIN_THINNED_WALL_MM, Contour, Tissue, sample_contour
from pipeline.research.phantom.render import (
    _acquisition_artifacts,
    add_noise,
    sample_case,
    tissue_signal,
)
from pipeline.research.phantom.style import (
    _BEYOND,
    RANDOMIZED,
    VARIED,
    WIDE,
    holdout_variant,
)
from tests.dicom_tools import dciodvfy

TERRITORY_SEGMENTS = {
    "LAD": {1, 2, 7, 8, 13, 14, 17},
    "LCx": {5, 6, 11, 12, 16},
    "RCA": {3, 4, 9, 10, 15},
}


def _files(case) -> dict[str, bytes]:
    root = case.out_dir
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    spec = PhantomSpec(seed=3, kind="magnitude", slices=8)
    a = make_phantom(tmp_path / "a", spec)
    b = make_phantom(tmp_path / "b", spec)
    c = make_phantom(tmp_path / "c", PhantomSpec(seed=4, kind="magnitude", slices=8))
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys()
    # NIfTI headers are written by ITK without timestamps, so even the gzip is stable.
    for name in fa:
        assert fa[name] == fb[name], f"{name} differs between two runs of the same seed"
    assert not np.array_equal(a.image, c.image)
    assert (
        pydicom.dcmread(a.files[0]).StudyInstanceUID != pydicom.dcmread(c.files[0]).StudyInstanceUID
    )


def test_truth_json_equals_counts_on_truth_labels(psir_classic) -> None:
    truth = json.loads((psir_classic.out_dir / "truth.json").read_text())
    image = sitk.ReadImage(str(psir_classic.out_dir / "truth_labels.nii.gz"))
    labels = sitk.GetArrayFromImage(image)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    myo = np.isin(labels, [2, 3, 4]).sum() * voxel_ml
    scar = np.isin(labels, [3, 4]).sum() * voxel_ml
    mvo = (labels == 4).sum() * voxel_ml
    # NIfTI stores spacing as float32: agreement to float32 precision is exact agreement.
    assert truth["myocardium_ml"] == pytest.approx(myo, rel=1e-6)
    assert truth["scar_ml"] == pytest.approx(scar, rel=1e-6)
    assert truth["mvo_ml"] == pytest.approx(mvo, rel=1e-6)
    assert truth["myocardium_mass_g"] == pytest.approx(1.05 * myo)
    assert truth["scar_mass_g"] == pytest.approx(1.05 * scar)
    assert truth["scar_percent"] == pytest.approx(100 * scar / myo)
    assert truth["mvo_percent"] == pytest.approx(100 * mvo / myo)
    assert [s["id"] for s in truth["segments"]] == list(range(1, 18))
    for s in truth["segments"]:
        assert set(s) >= {"id", "name", "scar_percent", "transmurality_percent", "mvo_ml"}
    assert sum(s["mvo_ml"] for s in truth["segments"]) == pytest.approx(mvo)
    # Volumes are plausible for an adult LV (mass 60..250 g).
    assert 55 < truth["myocardium_ml"] < 240


def test_seed_7_has_scar_and_mvo(psir_classic) -> None:
    t = psir_classic.truth
    assert 0 < t.mvo_ml < t.scar_ml < t.myocardium_ml


@pytest.mark.parametrize("seed", [7, 21, 33, 40])
def test_mvo_is_strictly_inside_scar_and_scar_grows_from_endocardium(
    phantom_factory, seed: int
) -> None:
    labels = phantom_factory(seed=seed, kind="psir", mvo=True).labels
    mvo = labels == Label.MVO
    assert mvo.any()
    # In-plane neighbours of MVO: more MVO, scar, or the LV cavity it may abut - never
    # healthy myocardium or anything outside the heart.
    ring = ndimage.binary_dilation(mvo, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]]))
    assert set(np.unique(labels[ring & ~mvo])) <= {Label.LV_BLOOD, Label.SCAR}
    # Every scar component touches the LV blood pool: infarcts grow from the subendocardium.
    scar = np.isin(labels, [Label.SCAR, Label.MVO])
    components, n = ndimage.label(scar)
    near_pool = ndimage.binary_dilation(labels == Label.LV_BLOOD, iterations=1)
    for i in range(1, n + 1):
        comp = components == i
        if comp.sum() >= 5:  # partial-volume specks at a slice's edge aside
            assert (comp & near_pool).any(), f"scar component {i} does not touch the cavity"


@pytest.mark.parametrize("territory", ["LAD", "LCx", "RCA"])
def test_infarct_lands_in_its_coronary_territory(phantom_factory, territory: str) -> None:
    case = phantom_factory(seed=5, kind="magnitude", scar=True, territory=territory, slices=10)
    segs = {s.id: s for s in case.truth.segments}
    scar_ml = {sid: s.scar_percent * s.myocardium_ml / 100 for sid, s in segs.items()}
    inside = sum(v for sid, v in scar_ml.items() if sid in TERRITORY_SEGMENTS[territory])
    assert inside > 0.75 * sum(scar_ml.values()), (territory, scar_ml)
    assert case.truth.aha.septum_source == "rv_insertion"


def test_no_scar_option_and_seeds_without_scar(phantom_factory) -> None:
    case = phantom_factory(seed=7, kind="psir", scar=False, slices=8)
    assert case.truth.scar_ml == 0 and case.truth.mvo_ml == 0
    assert all(s.scar_percent == 0 and s.transmurality_percent == 0 for s in case.truth.segments)
    drawn = [PhantomSpec(seed=s).findings() for s in range(60)]
    assert any(not scar for scar, _ in drawn), "some seeds must have no scar"
    assert any(mvo for _, mvo in drawn) and any(scar and not mvo for scar, mvo in drawn)


def test_acquisition_parameters_cover_the_specified_ranges() -> None:
    seen = [sample_case(np.random.default_rng([s, 2]), None, True, False) for s in range(40)]
    for anatomy, acq in seen:
        assert 6.0 <= anatomy.wall <= 12.0
        assert 8 <= acq.n_slices <= 14
        assert 6 <= acq.thickness <= 10 and 0 <= acq.gap <= 2
        assert 1.2 <= acq.pixel_spacing <= 2.0
        assert 160 <= acq.rows <= 256 and 160 <= acq.columns <= 256
        # An oblique short-axis plane: no patient axis is aligned with the normal.
        assert np.max(np.abs(acq.normal)) < 0.95
        assert np.all(np.linalg.norm(acq.breathing, axis=1) <= 3.0 + 1e-9)
    rotations = {
        round(float(np.degrees(np.arctan2(a.row_direction[1], a.row_direction[0]))))
        for _, a in seen
    }
    assert len(rotations) > 20  # in-plane rotation varies by seed
    territories = {an.infarct.territory for an, _ in seen}
    assert territories == {"LAD", "LCx", "RCA"}
    radii = [an.radius for an, _ in seen]
    assert np.ptp(radii) > 3  # heart size varies


def _mean(image: np.ndarray, labels: np.ndarray, label: int) -> float:
    return float(image[labels == label].mean())


def test_magnitude_contrast_looks_like_lge(magnitude_enhanced) -> None:
    img, lab = magnitude_enhanced.image, magnitude_enhanced.labels
    myo = _mean(img, lab, Label.MYOCARDIUM)
    scar = _mean(img, lab, Label.SCAR)
    blood = _mean(img, lab, Label.LV_BLOOD)
    mvo = _mean(img, lab, Label.MVO)
    assert myo < 0.3 * scar, "healthy myocardium must be nulled"
    assert blood > 2 * myo and scar > 2 * mvo
    assert img.min() >= 0, "magnitude images are non-negative"
    # Rician noise: the air outside the body is not exactly zero.
    corner = img[:, :8, :8]
    assert corner.mean() > 0 and corner.std() > 0


def test_psir_is_signed_with_nulled_myocardium(psir_classic) -> None:
    img, lab = psir_classic.image, psir_classic.labels
    scar = _mean(img, lab, Label.SCAR)
    assert abs(_mean(img, lab, Label.MYOCARDIUM)) < 0.1 * scar
    # MVO (no contrast uptake, long T1) is rendered negative in PSIR; thin cores average
    # with the bright scar around them, so the labelled voxels are only much darker.
    assert tissue_signal(np.random.default_rng(0), "psir")[Tissue.MVO] < 0
    assert _mean(img, lab, Label.MVO) < 0.3 * scar
    assert img.min() < 0
    ds = pydicom.dcmread(psir_classic.files[0])
    assert float(ds.RescaleIntercept) < 0 and float(ds.RescaleSlope) == 1


def test_partial_volume_and_bias_field(psir_classic) -> None:
    img, lab = psir_classic.image, psir_classic.labels
    # Partial volume: at the myocardium/blood border, values lie between the two means.
    border = ndimage.binary_dilation(lab == Label.LV_BLOOD) & (lab == Label.MYOCARDIUM)
    myo, blood = _mean(img, lab, Label.MYOCARDIUM), _mean(img, lab, Label.LV_BLOOD)
    assert myo < float(img[border].mean()) < blood
    # Bias: the blood pool signal differs between slices more than noise alone explains.
    per_slice = [
        img[k][lab[k] == Label.LV_BLOOD].mean()
        for k in range(len(img))
        if (lab[k] == Label.LV_BLOOD).sum() > 50
    ]
    assert np.ptp(per_slice) > 0.02 * np.mean(per_slice)


def test_headers_are_those_of_an_lge_acquisition(psir_classic) -> None:
    ds = pydicom.dcmread(psir_classic.files[0])
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert "IR" in ds.ScanningSequence and float(ds.InversionTime) > 0
    assert "LGE" in ds.SeriesDescription and "PSIR" in ds.SeriesDescription
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert ds.FrameOfReferenceUID and ds.StudyInstanceUID and ds.PatientID
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    assert not np.allclose(iop, [1, 0, 0, 0, 1, 0], atol=0.05), "not an identity orientation"
    tis = {float(pydicom.dcmread(p).InversionTime) for p in psir_classic.files}
    assert len(tis) == 1, "one TI per slice position (a TI scout has many)"


@pytest.mark.parametrize(
    ("kind", "enhanced"),
    [("psir", False), ("magnitude", False), ("psir", True), ("magnitude", True)],
)
def test_dciodvfy_reports_no_errors(phantom_factory, kind: str, enhanced: bool) -> None:
    case = phantom_factory(seed=7, kind=kind, enhanced=enhanced)
    for path in case.files[:3] if not enhanced else case.files:
        verdict = dciodvfy(path)
        assert verdict.errors == [], verdict.output
    if enhanced:
        ds = pydicom.dcmread(case.files[0])
        assert ds.SOPClassUID == pydicom.uid.EnhancedMRImageStorage
        assert int(ds.NumberOfFrames) == case.geometry.shape[0]


def test_small_infarct_keeps_the_heart_and_shrinks_the_scar(phantom_factory) -> None:
    regular = phantom_factory(seed=5, kind="psir", scar=True, mvo=False)
    small = phantom_factory(seed=5, kind="psir", small_infarct=True)
    assert small.truth.myocardium_ml == pytest.approx(regular.truth.myocardium_ml)
    assert 0.2 < small.truth.scar_ml < 2.0 < regular.truth.scar_ml
    assert small.truth.mvo_ml == 0.0


def _with_artifacts(case, **changes) -> tuple[np.ndarray, np.ndarray]:
    """(image before, image after) the acquisition artifacts of ``changes``."""
    image = case.image.astype(np.float32) / float(case.image.max())
    return image, _acquisition_artifacts(image, replace(case.acquisition, **changes))


def test_motion_ghosts_replicate_the_image_along_phase_encoding(psir_classic) -> None:
    shift = 0.25
    clean, ghosted = _with_artifacts(
        psir_classic, ghost_amplitude=0.1, ghost_shift=shift, phase_axis=0
    )
    assert np.array_equal(_with_artifacts(psir_classic)[1], clean)  # defaults: no artifact
    s = round(shift * clean.shape[1])
    expected = clean + 0.1 * (
        np.roll(clean, s, 1) + np.roll(clean, -s, 1)
        + 0.5 * (np.roll(clean, 2 * s, 1) + np.roll(clean, -2 * s, 1))
    )  # fmt: skip
    np.testing.assert_allclose(ghosted, expected, atol=1e-5)


def test_reduced_phase_resolution_drops_outer_k_space_and_rings(psir_classic) -> None:
    clean, cut = _with_artifacts(psir_classic, kspace_fraction=0.5, phase_axis=1)
    n = clean.shape[2]
    spectrum = np.abs(np.fft.fft(cut, axis=2))
    outer = np.abs(np.fft.fftfreq(n) * n) > 0.5 * n / 2 + 1e-9
    assert spectrum[:, :, outer].max() < 1e-4 * spectrum.max()
    # rows (frequency encoding) keep their resolution: unchanged after smoothing the columns
    rows = np.abs(np.fft.fft(cut, axis=1))
    assert rows[:, np.abs(np.fft.fftfreq(clean.shape[1])) > 0.3].max() > 1e-3 * rows.max()
    # Gibbs: a sharp truncation overshoots the brightest tissue
    assert cut.max() > clean.max() * 1.02


def test_multichannel_noise_floor_and_g_factor() -> None:
    zeros = np.zeros((4, 96, 96), dtype=np.float32)
    acq = replace(_blank_acquisition(), coils=4, snr=10.0, scale=1.0)
    magnitude = add_noise(np.random.default_rng(0), zeros, acq, "magnitude")
    # root-sum-of-squares of 4 channels of pure noise: chi with 8 degrees of freedom, mean
    # sigma * sqrt(2) * Gamma(4.5) / Gamma(4) = 2.74 sigma (one channel: 1.25 sigma)
    assert magnitude.mean() == pytest.approx(2.74 * 0.1, rel=0.02)
    single = add_noise(np.random.default_rng(0), zeros, replace(acq, coils=1), "magnitude")
    assert single.mean() == pytest.approx(1.2533 * 0.1, rel=0.02)
    # parallel imaging: noise amplified by the g-factor at the centre, ~1 at the corners
    psir = add_noise(np.random.default_rng(0), zeros, replace(acq, gfactor=2.0), "psir")
    assert psir[:, 44:52, 44:52].std() == pytest.approx(0.2, rel=0.1)
    assert psir[:, :6, :6].std() == pytest.approx(0.1, rel=0.15)


def _blank_acquisition():
    _, acq = sample_case(np.random.default_rng([0, 2]), 8, False, False)
    return replace(acq, rows=96, columns=96)


def test_holdout_axes_lie_beyond_every_training_range() -> None:
    """The holdout style measures generalization only if no axis overlaps training."""
    trained = (RANDOMIZED, WIDE, VARIED)
    for axis, changes in _BEYOND.items():
        for key, value in changes.items():
            if key in ("matrix_clip", "wall_clip_mm", "ghost_p", "kspace_p"):
                continue  # what lets the axis happen, not the axis itself
            pairs = (
                [
                    (getattr(value[kind], f), getattr(style.signals[kind], f))
                    for kind in value
                    for f in ("blood", "myocardium")
                    if getattr(value[kind], f) != getattr(WIDE.signals[kind], f)
                    for style in trained
                ]
                if key == "signals"
                else [(value, getattr(style, key)) for style in trained]
            )
            assert pairs, axis
            for beyond, train in pairs:
                assert beyond[0] >= train[1] or beyond[1] <= train[0], (axis, key)
    style, axes = holdout_variant(7003)
    assert len(set(axes)) == 2 and style.name == "holdout"


def _wall_mm(anatomy, theta: np.ndarray, w: float) -> np.ndarray:
    """Wall thickness around the LV at depth ``w`` (mm from the base)."""
    ws = np.full_like(theta, w)
    return anatomy.r_epi(theta, ws) - anatomy.r_endo(theta, ws)


def _one_cosine_residual(theta: np.ndarray, y: np.ndarray) -> float:
    """RMS left after the best fit of mean + one cosine (the earlier styles' wall model)."""
    basis = np.stack([np.ones_like(theta), np.cos(theta), np.sin(theta)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(np.sqrt(np.mean((y - basis @ coef) ** 2)))


def test_varied_hearts_have_irregular_walls_and_thinned_infarcts(phantom_factory) -> None:
    """The varied style's hearts are not an ellipse with a one-cosine wall: the outline and
    the wall carry higher harmonics, and a chronic infarct's wall is thinner than the remote
    wall by the drawn fraction. Earlier styles draw no contour, so their seeds stay the
    same images."""
    theta = np.linspace(-np.pi, np.pi, 360, endpoint=False)
    irregular, regular = [], []
    for seed in range(12):
        anatomy, _ = sample_case(
            np.random.default_rng([seed, 2]), None, True, False, None, WIDE,
            np.random.default_rng([seed, 5]),
        )  # fmt: skip
        assert anatomy.contour is None
        mid = 0.0  # the base plane: epicardial and cavity profiles are both 1 there
        outline = anatomy.r_epi(theta, np.full_like(theta, mid))
        assert (outline > 0).all()
        wall = _wall_mm(anatomy, theta, mid)
        clipped = (wall <= anatomy.wall_clip[0] + 1e-6) | (wall >= anatomy.wall_clip[1] - 1e-6)
        if not clipped.any():
            regular.append(_one_cosine_residual(theta, wall))
        contour = sample_contour(np.random.default_rng([seed, 7]), VARIED, infarct=False)
        assert contour.thinning == 0.0  # no infarct, nothing to thin
        varied = replace(anatomy, contour=contour)
        irregular.append(_one_cosine_residual(theta, _wall_mm(varied, theta, mid)))
        # the epicardial outline is no longer an ellipse: harmonics 3-5 move it by mm
        bumps = varied.r_epi(theta, np.full_like(theta, mid)) - outline
        assert np.ptp(bumps) > 0.5
    assert regular and max(regular) < 1e-6  # mean + one cosine, exactly
    assert np.median(irregular) > 0.3  # millimetres of wall the old model cannot draw

    # A chronic infarct thins its wall: at the core by the drawn fraction, remote not at all.
    anatomy, _ = sample_case(
        np.random.default_rng([3, 2]), None, True, False, "LAD", WIDE,
        np.random.default_rng([3, 5]),
    )  # fmt: skip
    inf = anatomy.infarct
    assert inf is not None
    mid = 0.5 * (inf.start + min(inf.end, 1.0)) * anatomy.length
    core = np.deg2rad(np.array([inf.center_deg]))
    remote = core + np.pi
    thinned = replace(anatomy, contour=Contour(thinning=0.4))
    before, after = _wall_mm(anatomy, core, mid)[0], _wall_mm(thinned, core, mid)[0]
    # the endocardium moves out by the lost thickness (scaled by the cavity's taper)
    thickness = np.clip(
        anatomy.wall + anatomy.wall_amp * np.cos(core[0] - anatomy.wall_phase), *anatomy.wall_clip
    )
    lost = thickness - max(0.6 * thickness, min(thickness, MIN_THINNED_WALL_MM))
    taper = anatomy._profile(np.array(mid / (anatomy.length - anatomy.apex_wall)))
    assert lost > 0 and before - after == pytest.approx(lost * taper, rel=1e-6)
    assert _wall_mm(thinned, remote, mid)[0] == pytest.approx(_wall_mm(anatomy, remote, mid)[0])

    # Rendered: the truth says how much the infarct thinned, and the infarct still grows
    # from the endocardium of the thinned wall (every scar component touches the pool).
    case = phantom_factory(seed=9004, kind="psir", style="varied", scar=True)
    truth = json.loads((case.out_dir / "truth.json").read_text())
    assert case.anatomy.contour is not None
    assert truth["phantom"]["infarct_thinning"] == case.anatomy.contour.thinning > 0
    scar = np.isin(case.labels, [Label.SCAR, Label.MVO])
    components, n = ndimage.label(scar)
    assert n >= 1
    near_pool = ndimage.binary_dilation(case.labels == Label.LV_BLOOD, iterations=1)
    for i in range(1, n + 1):
        assert (near_pool & (components == i)).any(), f"scar component {i} off the pool"
