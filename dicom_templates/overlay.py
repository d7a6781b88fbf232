"""Secondary-capture overlays for viewers without SEG support.

One RGB image per slice: the LGE image, windowed, with LV myocardium (green), infarct
(yellow) and MVO (cyan) outlined, a legend and the disclaimer burned in; plus a summary
page with an AHA bullseye of transmurality and the key numbers. Text uses matplotlib's
bundled DejaVu font (nothing is fetched). BurnedInAnnotation is YES; every object gets
fresh UIDs (source UIDs are never reused).
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import highdicom as hd
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Wedge
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from skimage.measure import find_contours

from dicom_templates.identity import (
    DERIVED_MODALITY,
    DISCLAIMER,
    MANUFACTURER,
    OVERLAY_SERIES,
    SUMMARY_SERIES,
    SYNTHETIC_NOTE,
    Algorithm,
    SeriesPlacement,
    character_set,
    copy_character_set,
)
from dicom_templates.seg import INFARCT_SEGMENT, MVO_SEGMENT, MYOCARDIUM_SEGMENT
from dicom_templates.uids import new_uid
from pipeline.labels import mvo_mask, myocardium_mask, scar_mask
from pipeline.qc import SIGNALS
from pipeline.quantify import QC_FLAGS, Metrics
from pipeline.volume import Volume

MIN_SIDE = 512  # upsample small matrices so outlines and text stay legible
BAND_MIN = 84  # pixels of the text band below each overlay
SUMMARY_SIDE = 768
TEXT_PX = 11  # 8 pt at 100 dpi, the size the summary page and PDF use for small print
OUTLINE_PX = 2
ORANGE = (255, 165, 0)
WHITE = (255, 255, 255)


def _rgb(color: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(c / 255 for c in color)  # type: ignore[return-value]


def _render(fig: plt.Figure) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="raw", dpi=fig.dpi)
    plt.close(fig)
    w, h = fig.canvas.get_width_height()
    return np.frombuffer(buf.getvalue(), dtype=np.uint8).reshape(h, w, 4)[..., :3].copy()


def window_for(image: np.ndarray, myo: np.ndarray) -> tuple[float, float]:
    """Display window from the heart region, so bright fat elsewhere does not wash it out."""
    region = image[myo] if myo.sum() > 20 else image
    lo = float(np.percentile(image, 1))
    hi = float(np.percentile(region, 99.5)) if myo.sum() > 20 else float(np.percentile(image, 99.5))
    return lo, max(hi, lo + 1)


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    """matplotlib's bundled DejaVu Sans, so nothing is fetched and pages match the PDF."""
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size)


def draw_outline(canvas: np.ndarray, mask: np.ndarray, factor: int, rgb: tuple[int, ...]) -> None:
    """Anti-aliased outline of ``mask`` on the ``factor``-times upsampled ``canvas``, along
    the same 0.5 iso-line matplotlib's contour draws (sub-pixel, not the pixel staircase)."""
    shift = 4  # OpenCV's fixed-point sub-pixel bits
    for c in find_contours(np.pad(mask.astype(np.float32), 1), 0.5):
        # padded (row, col) -> source pixel index -> upsampled pixel centre
        xy = (c[:, ::-1] - 1.0 + 0.5) * factor - 0.5
        pts = np.round(xy * (1 << shift)).astype(np.int32)
        cv2.polylines(canvas, [pts], False, rgb, OUTLINE_PX, cv2.LINE_AA, shift)


def draw_outlines(canvas: np.ndarray, labels: np.ndarray, factor: int) -> None:
    """LV myocardium, infarct and MVO of ``labels`` outlined in their segment colours."""
    for mask, spec in (
        (myocardium_mask(labels), MYOCARDIUM_SEGMENT),
        (scar_mask(labels), INFARCT_SEGMENT),
        (mvo_mask(labels), MVO_SEGMENT),
    ):
        if mask.any():
            draw_outline(canvas, mask, factor, spec.color_rgb)


def render_slice(
    image: np.ndarray,
    labels: np.ndarray,
    caption: str,
    window: tuple[float, float],
) -> tuple[np.ndarray, int]:
    """RGB uint8 of one slice with outlines; returns it and the upsampling factor.

    The image fills the top ``rows * factor`` rows unchanged in geometry; the disclaimer,
    caption and legend sit in a black band below it, centred, where viewers put no text
    of their own (their corner overlays would otherwise cover ours).

    Drawn with OpenCV and Pillow rather than matplotlib: a slice takes a few milliseconds
    instead of ~80, and a study's overlays are on the path to its results."""
    rows, cols = image.shape
    factor = int(np.ceil(MIN_SIDE / max(rows, cols)))
    h, w = rows * factor, cols * factor
    band = max(BAND_MIN, h // 6)
    lo, hi = window
    grey = np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    # Bilinear between pixel centres, as matplotlib's imshow(interpolation="bilinear").
    big = cv2.resize(grey, (w, h), interpolation=cv2.INTER_LINEAR)
    canvas = np.zeros((h + band, w, 3), dtype=np.uint8)
    canvas[:h] = np.round(big * 255).astype(np.uint8)[..., None]
    draw_outlines(canvas[:h], labels, factor)  # in the image, never in the text band
    page = Image.fromarray(canvas)
    draw = ImageDraw.Draw(page)
    font = _font(TEXT_PX)
    lines = [(DISCLAIMER, ORANGE), *((line, WHITE) for line in caption.split("\n"))]
    step = band / (len(lines) + 2)
    for i, (text, color) in enumerate(lines):
        draw.text((w / 2, h + step * (i + 1)), text, fill=color, font=font, anchor="mm")
    legend = (MYOCARDIUM_SEGMENT, INFARCT_SEGMENT, MVO_SEGMENT)
    for i, spec in enumerate(legend):
        name = {MVO_SEGMENT.label: "MVO"}.get(spec.label, spec.label.split(" (")[0])
        xy = ((0.35 + 0.15 * i) * w, h + band - step)
        draw.text(xy, "\u25a0 " + name, fill=spec.color_rgb, font=font, anchor="mm")
    return np.asarray(page), factor


@dataclass(frozen=True)
class BullseyeCell:
    """One AHA segment's place on the bullseye: an annular wedge between radii ``inner``
    and ``outer`` (the outer ring's edge is 1), from ``start`` degrees counterclockwise
    from 3 o'clock over ``width`` degrees; the apex (17) is the disc inside 0.25."""

    segment: int
    outer: float
    inner: float
    start: int
    width: int

    @property
    def middle(self) -> tuple[float, float]:
        """Where the cell's label goes (unit radius)."""
        angle = np.deg2rad(self.start + self.width / 2)
        r = (self.outer + self.inner) / 2
        return r * float(np.cos(angle)), r * float(np.sin(angle))


APEX_RADIUS = 0.25
# Rings basal 1-6, mid 7-12, apical 13-16 (outer to inner); segment 1 at the top
# (anterior), septum to the left.
BULLSEYE = tuple(
    BullseyeCell(sid, outer, inner, 90 - width // 2 + i * width if width == 90 else 60 + i * width,
                 width)
    for outer, inner, ids, width in (
        (1.0, 0.75, range(1, 7), 60),
        (0.75, 0.5, range(7, 13), 60),
        (0.5, APEX_RADIUS, range(13, 17), 90),
    )
    for i, sid in enumerate(ids)
)  # fmt: skip


def light(rgba: tuple[float, ...]) -> bool:
    """Whether a cell of this colour takes black text (else white)."""
    r, g, b = rgba[:3]
    return 0.299 * r + 0.587 * g + 0.114 * b > 0.5


def draw_bullseye(
    ax: plt.Axes,
    metrics: Metrics,
    text_color: str | None,
    edge_color: str,
    cmap_name: str = "inferno",
) -> matplotlib.colors.Colormap:
    """AHA bullseye of mean transmurality on ``ax``, laid out as `BULLSEYE`.
    ``text_color`` None: black on light cells, white on dark ones. Returns the colour
    map used."""
    ax.set_aspect("equal")
    ax.axis("off")
    cmap = plt.get_cmap(cmap_name)

    def ink(value: float) -> str:
        if text_color is not None:
            return text_color
        return "black" if light(cmap(value / 100)) else "white"

    trans = {s.id: s.transmurality_percent for s in metrics.segments}
    for cell in BULLSEYE:
        value = trans[cell.segment]
        ax.add_patch(
            Wedge((0, 0), cell.outer, cell.start, cell.start + cell.width,
                  width=cell.outer - cell.inner, facecolor=cmap(value / 100),
                  edgecolor=edge_color, lw=1.5)
        )  # fmt: skip
        ax.text(*cell.middle, f"{cell.segment}\n{value:.0f}%", ha="center", va="center",
                fontsize=9, color=ink(value))  # fmt: skip
    ax.add_patch(
        plt.Circle((0, 0), APEX_RADIUS, facecolor=cmap(trans[17] / 100), edgecolor=edge_color)
    )
    ax.text(0, 0, f"17\n{trans[17]:.0f}%", ha="center", va="center", fontsize=9,
            color=ink(trans[17]))  # fmt: skip
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    return cmap


def weakest_signal(m: Metrics) -> tuple[str, float] | None:
    """The QC component that set the reliability score, and its score (None without)."""
    components = m.qc.reliability_components
    if not components:
        return None
    weakest = min(components, key=lambda k: components[k])
    return weakest, components[weakest]


def low_confidence_reason(m: Metrics) -> str:
    """The weakest QC signal of a low-confidence result, in a reader's words ("" if none)."""
    weakest = weakest_signal(m)
    if not m.qc.low_confidence or weakest is None:
        return ""
    return SIGNALS.get(weakest[0], weakest[0])


def render_summary(metrics: Metrics, algorithm: Algorithm) -> np.ndarray:
    """The AHA bullseye of transmurality with the key numbers, as an RGB page."""
    dpi = 100
    fig = plt.figure(figsize=(SUMMARY_SIDE / dpi, SUMMARY_SIDE / dpi), dpi=dpi, facecolor="black")
    ax = fig.add_axes((0.05, 0.3, 0.6, 0.6))
    cmap = draw_bullseye(ax, metrics, text_color="cyan", edge_color="white")
    cax = fig.add_axes((0.7, 0.35, 0.03, 0.5))
    bar = fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 100)), cax=cax)
    bar.set_label("mean transmurality (%)", color="white")
    bar.ax.tick_params(colors="white")
    m = metrics
    flags = ", ".join(m.qc.flags) or "none"
    lines = [
        f"LV myocardium  {m.myocardium_ml:7.1f} ml   {m.myocardium_mass_g:7.1f} g",
        f"Infarct        {m.scar_ml:7.1f} ml   {m.scar_mass_g:7.1f} g   {m.scar_percent:5.1f} % LV",
        f"MVO            {m.mvo_ml:7.2f} ml              {m.mvo_percent:5.1f} % LV",
        f"Segments > 50% transmural: "
        f"{', '.join(str(s.id) for s in m.segments if s.transmurality_percent > 50) or 'none'}",
        f"QC flags: {flags}",
        *(f"  {f}: {QC_FLAGS[f]}" for f in m.qc.flags if f in QC_FLAGS),
        *(f"  why: {why}" for why in [low_confidence_reason(m)] if why),
    ]
    fig.text(
        0.05,
        0.26,
        "\n".join(lines),
        color="white",
        family="DejaVu Sans Mono",
        fontsize=10,
        va="top",
    )
    fig.text(
        0.05,
        0.97,
        "LGE scar quantification - AHA 17-segment transmurality",
        color="white",
        fontsize=14,
        va="top",
    )
    note = f"{DISCLAIMER}. {algorithm.label} {algorithm.version}"
    if algorithm.synthetic_trained:
        note += f"; {SYNTHETIC_NOTE}"
    fig.text(0.05, 0.03, note, color="orange", fontsize=9, va="bottom", wrap=True)
    return _render(fig)


def patient_orientation(volume: Volume) -> tuple[str, str]:
    """Dominant patient direction letters of the image rows and columns (e.g. L, P)."""
    letters = (("R", "L"), ("A", "P"), ("F", "H"))  # LPS: negative, positive

    def letter(v: np.ndarray) -> str:
        axis = int(np.argmax(np.abs(v)))
        return letters[axis][int(v[axis] > 0)]

    g = volume.geometry
    return letter(g.row_direction), letter(g.column_direction)


def _sc(
    ref: Dataset,
    pixels: np.ndarray,
    series_uid: str,
    placement: SeriesPlacement,
    number: int,
    spacing: tuple | None,
    orientation: tuple[str, str],
) -> hd.sc.SCImage:
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=placement.number,
        sop_instance_uid=new_uid(),
        instance_number=number,
        manufacturer=MANUFACTURER,
        pixel_spacing=spacing,
        patient_orientation=orientation,
        series_description=placement.description,
        specific_character_set=character_set(ref),
    )
    sc.Modality = DERIVED_MODALITY
    sc.BurnedInAnnotation = "YES"
    sc.BodyPartExamined = "HEART"  # unpaired: no Laterality needed
    sc.ImageType = ["DERIVED", "SECONDARY"]
    copy_character_set(ref, sc)
    return sc


def _source_image(volume: Volume, k: int) -> Dataset:
    """A Source Image Sequence item for slice ``k`` (its frame, for enhanced MR)."""
    frame = volume.frames[k]
    item = Dataset()
    item.ReferencedSOPClassUID = frame.sop_class_uid
    item.ReferencedSOPInstanceUID = frame.sop_instance_uid
    if frame.frame_number is not None:
        item.ReferencedFrameNumber = frame.frame_number
    purpose = Dataset()
    purpose.CodeValue = "121322"
    purpose.CodingSchemeDesignator = "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item


@dataclass(frozen=True)
class OverlayPages:
    """The drawn overlay pages: one RGB image per slice (slice order), upsampled by
    ``factor``, and the summary page. Plain arrays, so another process can draw them."""

    slices: list[np.ndarray]
    factor: int
    summary: np.ndarray


def render_overlays(
    volume: Volume, labels: np.ndarray, metrics: Metrics, algorithm: Algorithm
) -> OverlayPages:
    """Draw every overlay page of ``volume`` (pixels only; `overlay_objects` wraps them)."""
    window = window_for(volume.array, myocardium_mask(labels))
    n = volume.array.shape[0]
    slices, factor = [], 1
    for k in range(n):
        caption = f"{algorithm.label}\nslice {k + 1} of {n}"
        pixels, factor = render_slice(volume.array[k], labels[k], caption, window)
        slices.append(pixels)
    return OverlayPages(slices, factor, render_summary(metrics, algorithm))


def overlay_objects(
    volume: Volume, pages: OverlayPages, algorithm: Algorithm
) -> tuple[list[hd.sc.SCImage], hd.sc.SCImage]:
    """One SC per slice (slice order) in the overlay series, each referencing its source
    image; and the summary page (bullseye and key numbers) in a series of its own."""
    series_uid = new_uid()
    placement = OVERLAY_SERIES.of(algorithm)
    ref = volume.datasets[0]
    orientation = patient_orientation(volume)
    ps = volume.geometry.pixel_spacing
    spacing = (ps[0] / pages.factor, ps[1] / pages.factor)
    out = []
    for k, pixels in enumerate(pages.slices):
        sc = _sc(ref, pixels, series_uid, placement, k + 1, spacing, orientation)
        if volume.frames:
            sc.SourceImageSequence = [_source_image(volume, k)]
            sc.DerivationDescription = "LGE image with segmentation outlines burned in"
        out.append(sc)
    summary = _sc(ref, pages.summary, new_uid(), SUMMARY_SERIES.of(algorithm), 1, None, orientation)
    summary.PatientOrientation = ""  # a report page has no anatomical orientation
    return out, summary
