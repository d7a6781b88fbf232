"""Synthetic LGE studies with ground truth: test data, demo-model training data, demo input.

``make_phantom(out, PhantomSpec(seed=7))`` writes ``out/dicom/`` (the series as a scanner
would send it), ``out/truth.json`` (the metric keys of docs/ARCHITECTURE.md) and
``out/truth_labels.nii.gz`` (labels on the DICOM series' exact geometry). Everything is a
pure function of the spec.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.quantify import Metrics, quantify
from pipeline.research.phantom.anatomy import TERRITORIES, Anatomy, Tissue, sample_contour
from pipeline.research.phantom.dicom import (
    StudyInfo,
    stored_offset,
    stored_pixels,
    write_classic,
    write_enhanced,
)
from pipeline.research.phantom.render import (
    Acquisition,
    add_noise,
    render,
    sample_case,
    tissue_at_centres,
)
from pipeline.research.phantom.style import STYLES, holdout_variant, style_for
from pipeline.volume import Geometry

KINDS = ("magnitude", "psir")


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate. ``scar``/``mvo`` None means: decided by the seed."""

    seed: int = 0
    kind: str = "psir"
    enhanced: bool = False
    slices: int | None = None
    scar: bool | None = None
    mvo: bool | None = None
    territory: str | None = None  # LAD, LCx or RCA; None: drawn by the seed
    # A narrow, thin subendocardial infarct (~1-2 ml): the hard case for a segmenter,
    # drawn from its own stream so the rest of the seed's anatomy stays the same.
    small_infarct: bool = False
    # classic (the original generator), randomized (domain randomization, for training),
    # wide (randomized plus wider anatomy, lower SNR and acquisition artifacts, for
    # training) or holdout (two axes per seed beyond the wide ranges, for evaluation only)
    style: str = "classic"
    # A peri-infarct border zone of intermediate signal (grey zone), with its volume in
    # truth.json; drawn from its own stream, so the rest of the seed stays the same.
    border_zone: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {tuple(STYLES)}, got {self.style!r}")
        lo, hi = STYLES[self.style].slices
        if self.slices is not None and not lo <= self.slices <= hi:
            raise ValueError(f"slices must be within {lo}..{hi}, got {self.slices}")
        if self.scar is False and self.mvo:
            raise ValueError("MVO lies inside scar: --mvo needs a scar")
        if self.small_infarct and (self.scar is False or self.mvo):
            raise ValueError("a small infarct is a scar without MVO")
        if self.border_zone and self.scar is False:
            raise ValueError("a border zone surrounds a scar: --border-zone needs a scar")
        if self.territory is not None and self.territory not in TERRITORIES:
            raise ValueError(f"territory must be one of {TERRITORIES}, got {self.territory!r}")

    def findings(self) -> tuple[bool, bool]:
        """(scar, mvo) for this spec: forced by the options or drawn from the seed."""
        choice = np.random.default_rng([self.seed, 1])
        scar = self.scar if self.scar is not None else bool(self.mvo or choice.random() < 0.8)
        mvo = self.mvo if self.mvo is not None else bool(scar and choice.random() < 0.45)
        if self.small_infarct:
            scar, mvo = True, False
        return scar, mvo


@dataclass
class PhantomCase:
    out_dir: Path
    files: list[Path]
    image: np.ndarray  # scanner units (after rescale), as stored in the files
    labels: np.ndarray
    geometry: Geometry
    truth: Metrics
    anatomy: Anatomy
    acquisition: Acquisition
    seconds: float = 0.0
    spec: PhantomSpec = field(default_factory=PhantomSpec)


def acquisition_geometry(acq: Acquisition) -> Geometry:
    return Geometry(
        shape=(acq.n_slices, acq.rows, acq.columns),
        origin=acq.positions[0].copy(),
        row_direction=acq.row_direction.copy(),
        column_direction=acq.column_direction.copy(),
        slice_direction=acq.normal.copy(),
        pixel_spacing=(acq.pixel_spacing, acq.pixel_spacing),
        slice_spacing=acq.spacing,
        slice_thickness=acq.thickness,
    )


def make_phantom(out_dir: Path | str, spec: PhantomSpec, progress: bool = False) -> PhantomCase:
    """Generate one phantom study and write it with its ground truth under ``out_dir``."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    # Separate streams so that the anatomy of a seed does not change with --kind.
    scar, mvo = spec.findings()
    style = style_for(spec.style, spec.seed)
    anatomy, acq = sample_case(
        np.random.default_rng([spec.seed, 2]),
        spec.slices,
        scar,
        mvo,
        spec.territory,
        style,
        np.random.default_rng([spec.seed, 5]),
    )
    if spec.small_infarct and anatomy.infarct is not None:
        small = np.random.default_rng([spec.seed, 4])
        infarct = replace(
            anatomy.infarct,
            half_width_deg=float(small.uniform(18, 30)),
            transmurality=float(small.uniform(0.12, 0.35)),
            end=min(anatomy.infarct.end, anatomy.infarct.start + float(small.uniform(0.3, 0.5))),
        )
        anatomy = replace(anatomy, infarct=infarct)
    if spec.border_zone and anatomy.infarct is not None:
        bz = np.random.default_rng([spec.seed, 6])
        infarct = replace(
            anatomy.infarct,
            border=float(bz.uniform(0.2, 0.4)),
            border_widen=float(bz.uniform(1.2, 1.4)),
            border_signal=float(bz.uniform(0.25, 0.4)),
        )
        anatomy = replace(anatomy, infarct=infarct)
    if style.irregular:  # its own stream: a seed's other draws stay the same
        contour = sample_contour(
            np.random.default_rng([spec.seed, 7]), style, anatomy.infarct is not None
        )
        anatomy = replace(anatomy, contour=contour)
    contrast_rng = np.random.default_rng([spec.seed, 3, 0 if spec.kind == "magnitude" else 1])
    signal, labels = render(anatomy, acq, spec.kind, contrast_rng, progress, style)
    image = add_noise(contrast_rng, signal, acq, spec.kind)

    info = StudyInfo.from_seed(spec.seed)
    writer = write_enhanced if spec.enhanced else write_classic
    files = writer(out_dir / "dicom", image, acq, info, spec.kind)

    geometry = acquisition_geometry(acq)
    truth = quantify(labels, geometry)
    grey_zone_ml = 0.0
    if anatomy.infarct is not None and anatomy.infarct.border > 0:
        border = tissue_at_centres(anatomy, acq, Tissue.BORDER_ZONE)
        grey_zone_ml = float(border.sum()) * geometry.voxel_volume_ml
    sitk.WriteImage(geometry.to_sitk(labels), str(out_dir / "truth_labels.nii.gz"), True)
    document = truth.to_dict()
    document["phantom"] = {
        "seed": spec.seed,
        "kind": spec.kind,
        "enhanced": spec.enhanced,
        "scar": scar,
        "mvo": mvo,
        "small_infarct": spec.small_infarct,
        "territory": anatomy.infarct.territory if anatomy.infarct else None,
        "peak_transmurality": anatomy.infarct.transmurality if anatomy.infarct else 0.0,
        # grey zone: border-zone tissue at voxel centres (myocardium in the labels); core:
        # scar + MVO labels
        "grey_zone_ml": grey_zone_ml,
        "core_ml": truth.scar_ml,
        "border_signal_fraction": anatomy.infarct.border_signal if anatomy.infarct else 0.0,
        "style": spec.style,
        # irregular shape (varied style): how much wall a chronic infarct lost at its core
        "infarct_thinning": anatomy.contour.thinning if anatomy.contour else 0.0,
        "holdout_axes": list(holdout_variant(spec.seed)[1]) if spec.style == "holdout" else [],
        "slices": acq.n_slices,
        "matrix": [acq.rows, acq.columns],
        "stack_runs": "apex_to_base" if acq.normal @ anatomy.axis < 0 else "base_to_apex",
        "snr": acq.snr,
        "artifacts": {
            "phase_encoding": "columns" if acq.phase_axis else "rows",
            "ghost_amplitude": acq.ghost_amplitude,
            "kspace_fraction": acq.kspace_fraction,
            "coils": acq.coils,
            "gfactor": acq.gfactor,
        },
        "pixel_spacing_mm": acq.pixel_spacing,
        "slice_thickness_mm": acq.thickness,
        "slice_gap_mm": acq.gap,
        "study_instance_uid": info.study_uid,
        "note": "synthetic phantom - not patient data",
    }
    (out_dir / "truth.json").write_text(json.dumps(document, indent=2) + "\n")
    return PhantomCase(
        out_dir=out_dir,
        files=files,
        image=stored_pixels(image, spec.kind).astype(np.float32) + stored_offset(spec.kind),
        labels=labels,
        geometry=geometry,
        truth=truth,
        anatomy=anatomy,
        acquisition=acq,
        seconds=time.perf_counter() - t0,
        spec=spec,
    )


__all__ = ["KINDS", "PhantomCase", "PhantomSpec", "acquisition_geometry", "make_phantom"]
