"""The report a person reads: a two-page PDF, sent as an Encapsulated PDF object.

Page 1: who and what (patient, study, series), the key numbers with units and the method
behind each, the AHA bullseye of transmurality, QC flags with the reliability score, the
model and the research-use statement. Page 2: three representative slices (basal, mid,
apical) with the outlines, and the per-segment table. Drawn with reportlab's canvas (text
and vectors straight into the PDF: a report takes tens of milliseconds, where matplotlib
laid out each of its ~200 texts as a figure artist, ~0.45 s, on the path to the results)
and matplotlib's bundled DejaVu fonts (nothing fetched); the file is invariant (no
creation date, fixed document id), so the same result gives the same bytes.
"""

from __future__ import annotations

import functools
import io
from collections import abc
from datetime import datetime
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.font_manager import FontProperties, findfont, get_font
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from reportlab import rl_config
from reportlab.lib.pagesizes import A4
from reportlab.lib.utils import ImageReader, simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas

from dicom_templates.identity import (
    DEVICE_SERIAL,
    DISCLAIMER,
    MANUFACTURER,
    MODEL_NAME,
    PDF_SERIES,
    SOFTWARE_VERSIONS,
    SYNTHETIC_NOTE,
    Algorithm,
)
from dicom_templates.overlay import (
    APEX_RADIUS,
    BULLSEYE,
    draw_outlines,
    light,
    low_confidence_reason,
    weakest_signal,
)
from dicom_templates.uids import new_uid
from pipeline.labels import myocardium_mask
from pipeline.quantify import QC_FLAGS, Metrics
from pipeline.volume import Volume

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
PAGE_W, PAGE_H = A4  # points
# Copied from the source image so the report files under the same patient and study.
PATIENT_STUDY = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "StudyDescription", "SpecificCharacterSet",
)  # fmt: skip
FONT, BOLD = "DejaVuSans", "DejaVuSans-Bold"
DARK_RED = (0.545, 0.0, 0.0)
RULE_GREY = 0.6
BULLSEYE_CMAP = "YlOrRd"
SLICE_PX = 480  # pixels across a page-two slice: about 200 dpi at its printed size


def document_title(algorithm: Algorithm) -> str:
    edited = " (reader-edited)" if algorithm.reader_edited else ""
    return f"LGE scar quantification report{edited} - research only"


def key_rows(m: Metrics, algorithm: Algorithm) -> list[tuple[str, str, str]]:
    """(quantity, value with unit, method) as a reader sees them: rounded, named."""
    seg_method = "nnU-Net segmentation" + (", reader-edited" if algorithm.reader_edited else "")
    rows = [
        ("LV myocardium", f"{m.myocardium_ml:.0f} ml / {m.myocardium_mass_g:.0f} g", seg_method),
        ("Infarct (scar incl. MVO)",
         f"{m.scar_ml:.1f} ml / {m.scar_mass_g:.1f} g / {m.scar_percent:.1f} % LV", seg_method),
        ("MVO", f"{m.mvo_ml:.2f} ml / {m.mvo_percent:.1f} % LV", seg_method),
    ]  # fmt: skip
    c = m.composition
    if c is not None:
        rows += [
            ("Infarct core", f"{c.core_ml:.1f} ml / {c.core_percent:.1f} % LV", "FWHM + MVO"),
            ("Grey zone", f"{c.grey_zone_ml:.1f} ml / {c.grey_zone_percent:.1f} % LV "
             f"({c.grey_zone_fraction:.0f} % of infarct)",
             f"> remote + {c.grey_zone_sd:g} SD, < FWHM"),
        ]  # fmt: skip
    for r in m.reference:
        name = f"{r.parameter:g}-SD" if r.method == "nSD" and r.parameter else r.method
        rows.append((f"Scar by {name} (reference)", f"{r.scar_percent:.1f} % LV",
                     "threshold in segmented myocardium"))  # fmt: skip
    nonviable = m.nonviable_segments
    rows.append((
        f"Non-viable segments (> {m.nonviable_percent:.0f} % transmural)",
        f"{len(nonviable)} of 17" + (f": {', '.join(map(str, nonviable))}" if nonviable else ""),
        "mean transmurality per AHA segment",
    ))  # fmt: skip
    return rows


def printable(text: str) -> bool:
    """Whether the bundled DejaVu Sans has a glyph for every character (no CJK)."""
    font = get_font(findfont(FontProperties(family="DejaVu Sans")))
    return all(font.get_char_index(ord(c)) for c in text if not c.isspace())


def readable_name(value: object) -> str:
    """The patient name as the PDF can print it: whole when every glyph exists, else its
    alphabetic component group (``Yamada^Tarou`` of ``Yamada^Tarou=山田^太郎``), with
    the name's other forms left to the DICOM header (no CJK font is bundled)."""
    text = str(value or "")
    if printable(text):
        return text
    alphabetic = text.split("=")[0]
    if alphabetic and printable(alphabetic):
        return f"{alphabetic} (full name in the DICOM header)"
    return "(see header)"


@functools.cache
def _fonts() -> None:
    """DejaVu Sans, regular and bold, from matplotlib's data (once per process)."""
    # Binary streams: ASCII85 only makes a PDF 7-bit clean, at a quarter more bytes and,
    # without reportlab's optional C accelerator, most of a report's time.
    rl_config.useA85 = 0
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    pdfmetrics.registerFont(TTFont(FONT, str(folder / "DejaVuSans.ttf")))
    pdfmetrics.registerFont(TTFont(BOLD, str(folder / "DejaVuSans-Bold.ttf")))


def _at(x: float, y: float) -> tuple[float, float]:
    """Page fractions (from the bottom left, as the layout is given) to points."""
    return x * PAGE_W, y * PAGE_H


def _text(
    c: Canvas,
    x: float,
    y: float,
    text: str,
    size: float,
    *,
    bold: bool = False,
    align: str = "left",
    va: str = "baseline",
    color: tuple[float, float, float] = (0.0, 0.0, 0.0),
    wrap: float | None = None,
    leading: float = 1.2,
) -> None:
    """``text`` at page fractions (x, y); lines split at newlines and, with ``wrap``, at
    that width (a page fraction). ``va``: where y is - the top of the first line, the
    centre of the block, the bottom of the last line, or the first baseline."""
    font = BOLD if bold else FONT
    lines: list[str] = []
    for line in text.split("\n"):
        lines += simpleSplit(line, font, size, wrap * PAGE_W) if wrap and line else [line]
    step = size * leading
    ascent = 0.76 * size  # DejaVu's cap height is 0.73 em: centred on what the eye sees
    px, py = _at(x, y)
    height = ascent + step * (len(lines) - 1)
    first = {
        "top": py - ascent,
        "center": py + height / 2 - ascent,
        "bottom": py + height - ascent,
        "baseline": py,
    }[va]
    c.setFillColorRGB(*color)
    c.setFont(font, size)
    draw = {"left": c.drawString, "center": c.drawCentredString, "right": c.drawRightString}
    for i, line in enumerate(lines):
        draw[align](px, first - i * step, line)


def _text_page(c: Canvas, volume: Volume, algorithm: Algorithm) -> None:
    ds = volume.datasets[0]
    _text(c, 0.06, 0.965, document_title(algorithm), 14, bold=True, va="top")
    who = (
        f"Patient: {readable_name(ds.get('PatientName', ''))}   ID: {ds.get('PatientID', '')}   "
        f"Study date: {ds.get('StudyDate', '')}\n"
        f"Series: {ds.get('SeriesNumber', '')} {ds.get('SeriesDescription', '')}   "
        f"Accession: {ds.get('AccessionNumber', '')}"
    )
    _text(c, 0.06, 0.93, who, 9, va="top")
    note = f"{DISCLAIMER}. {algorithm.label} {algorithm.version}"
    if algorithm.synthetic_trained:
        note += f" - {SYNTHETIC_NOTE}; numbers are not validated on patients"
    _text(c, 0.06, 0.02, note, 8, va="bottom", color=DARK_RED, wrap=0.88)


def _page_one(c: Canvas, volume: Volume, m: Metrics, algorithm: Algorithm) -> None:
    _text_page(c, volume, algorithm)
    _table(
        c, (0.06, 0.88, 0.88), key_rows(m, algorithm), ["quantity", "value", "method"],
        [0.34, 0.33, 0.33], fontsize=7.5, row_height=0.0175,
    )  # fmt: skip
    _bullseye(c, m, (0.08, 0.2, 0.5, 0.36))
    _colour_bar(c, (0.6, 0.22, 0.015, 0.2))
    _text(c, 0.33, 0.575, "Mean transmurality per AHA segment (%)", 10, align="center")
    qc = m.qc
    reliability = "n/a" if qc.reliability is None else f"{qc.reliability:.2f}"
    verdict = "LOW CONFIDENCE - check the contours" if qc.low_confidence else "no concern"
    lines = [f"QC reliability {reliability} (0-1): {verdict}"]
    if algorithm.reader_edited:
        # the model's reliability judged the model's contours, which a reader replaced
        lines = ["Contours edited by a reader: numbers recomputed", "from the edited segmentation"]
    elif weakest := weakest_signal(m):
        lines.append(f"weakest signal: {weakest[0]} ({weakest[1]:.2f})")
        if why := low_confidence_reason(m):
            lines.append(f"- {why}")
    lines += [f"- {QC_FLAGS.get(f, f)}" for f in qc.flags] or ["no QC flags"]
    colour = DARK_RED if qc.low_confidence else (0.0, 0.0, 0.0)
    _text(c, 0.62, 0.5, "\n".join(lines), 8.5, va="top", color=colour, wrap=0.32)


def _bullseye(c: Canvas, m: Metrics, box: tuple[float, float, float, float]) -> None:
    """The AHA bullseye of mean transmurality in ``box`` (page fractions), laid out as
    the summary page's (`dicom_templates.overlay.BULLSEYE`). Black text on light cells,
    white on dark ones."""
    cmap = matplotlib.colormaps[BULLSEYE_CMAP]
    x0, y0 = _at(box[0], box[1])
    w, h = box[2] * PAGE_W, box[3] * PAGE_H
    scale = min(w, h) / 2.1  # points per unit radius, the axes' -1.05..1.05
    cx, cy = x0 + w / 2, y0 + h / 2
    trans = {s.id: s.transmurality_percent for s in m.segments}
    c.setStrokeColorRGB(0.5, 0.5, 0.5)
    c.setLineWidth(1.5)

    def label(x: float, y: float, sid: int) -> None:
        ink = 0.0 if light(cmap(trans[sid] / 100)) else 1.0
        c.setFillColorRGB(ink, ink, ink)
        c.setFont(FONT, 9)
        c.drawCentredString(x, y + 1.2, str(sid))
        c.drawCentredString(x, y - 9.6, f"{trans[sid]:.0f}%")

    for cell in BULLSEYE:
        ro, ri = cell.outer * scale, cell.inner * scale
        end = np.deg2rad(cell.start + cell.width)
        path = c.beginPath()
        path.arc(cx - ro, cy - ro, cx + ro, cy + ro, startAng=cell.start, extent=cell.width)
        path.lineTo(cx + ri * np.cos(end), cy + ri * np.sin(end))
        path.arcTo(cx - ri, cy - ri, cx + ri, cy + ri, startAng=cell.start + cell.width,
                   extent=-cell.width)  # fmt: skip
        path.close()
        c.setFillColorRGB(*cmap(trans[cell.segment] / 100)[:3])
        c.drawPath(path, stroke=1, fill=1)
        mx, my = cell.middle
        label(cx + mx * scale, cy + my * scale, cell.segment)
    c.setFillColorRGB(*cmap(trans[17] / 100)[:3])
    c.circle(cx, cy, APEX_RADIUS * scale, stroke=1, fill=1)
    label(cx, cy, 17)


def _colour_bar(c: Canvas, box: tuple[float, float, float, float]) -> None:
    """The bullseye's colour scale, 0-100 %, with ticks every 20."""
    cmap = matplotlib.colormaps[BULLSEYE_CMAP]
    x0, y0 = _at(box[0], box[1])
    w, h = box[2] * PAGE_W, box[3] * PAGE_H
    steps = 64
    for i in range(steps):
        c.setFillColorRGB(*cmap((i + 0.5) / steps)[:3])
        # overlapping by a hair, so no seams show between the bands
        c.rect(x0, y0 + h * i / steps, w, h / steps + 0.3, stroke=0, fill=1)
    c.setStrokeColorRGB(0, 0, 0)
    c.setLineWidth(0.8)
    c.rect(x0, y0, w, h, stroke=1, fill=0)
    c.setFillColorRGB(0, 0, 0)
    c.setFont(FONT, 10)
    for value in range(0, 101, 20):
        y = y0 + h * value / 100
        c.line(x0 + w, y, x0 + w + 3.5, y)
        c.drawString(x0 + w + 6, y - 3.6, str(value))


def representative_slices(m: Metrics) -> list[tuple[str, int]]:
    """The middle slice of the basal, mid and apical levels (those that exist)."""
    out = []
    for level in ("basal", "mid", "apical"):
        ks = m.aha.levels.get(level) or []
        if ks:
            out.append((level, int(ks[len(ks) // 2])))
    return out


def _slice_picture(
    image: np.ndarray, labels: np.ndarray, window: tuple[float, float]
) -> Image.Image:
    """One heart crop, windowed, pixels kept square and sharp, with the outlines drawn
    anti-aliased along the masks' 0.5 iso-lines (as the overlays draw them)."""
    factor = max(1, int(np.ceil(SLICE_PX / max(image.shape))))
    lo, hi = window
    grey = np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    grey8 = np.round(grey * 255).astype(np.uint8)
    big = np.repeat(np.repeat(grey8, factor, axis=0), factor, axis=1)
    canvas = np.ascontiguousarray(np.repeat(big[..., None], 3, axis=2))
    draw_outlines(canvas, labels, factor)
    return Image.fromarray(canvas)


def _page_two(
    c: Canvas, volume: Volume, labels: np.ndarray, m: Metrics, algorithm: Algorithm
) -> None:
    _text_page(c, volume, algorithm)
    picks = representative_slices(m)
    heart = myocardium_mask(labels).any(axis=0)
    ys, xs = np.nonzero(heart) if heart.any() else (np.array([0, heart.shape[0] - 1]),
                                                    np.array([0, heart.shape[1] - 1]))  # fmt: skip
    margin = max(8, int(0.4 * max(np.ptp(ys), np.ptp(xs))))
    y0, x0 = max(int(ys.min()) - margin, 0), max(int(xs.min()) - margin, 0)
    box = np.s_[y0 : int(ys.max()) + margin + 1, x0 : int(xs.max()) + margin + 1]
    # windowed on the heart crops, so scar stands out from the blood pool
    crops = np.stack([volume.array[k][box] for _, k in picks]) if picks else volume.array
    window = (float(np.percentile(crops, 1)), float(np.percentile(crops, 99.8)))
    for i, (level, k) in enumerate(picks):
        left, bottom, side = 0.06 + i * 0.3, 0.6, 0.28
        crop = volume.array[k][box]
        picture = _slice_picture(crop, labels[k][box], window)
        # fitted into the square, aspect kept (an image's pixels are square here)
        w_pt, h_pt = side * PAGE_W, side * PAGE_H
        rows, cols = crop.shape
        fit = min(w_pt / cols, h_pt / rows)
        iw, ih = cols * fit, rows * fit
        px, py = _at(left, bottom)
        ix, iy = px + (w_pt - iw) / 2, py + (h_pt - ih) / 2
        c.drawImage(ImageReader(picture), ix, iy, iw, ih)
        _text(c, left + side / 2, (iy + ih + 6) / PAGE_H, f"{level} (slice {k + 1})", 9,
              align="center")  # fmt: skip
    _text(c, 0.06, 0.585, "outlines: LV myocardium green, infarct yellow, MVO cyan", 8)
    cells = [
        (str(s.id), s.name, f"{s.scar_percent:.0f}", f"{s.transmurality_percent:.0f}",
         f"{s.max_transmurality_percent:.0f}", f"{s.mvo_ml:.2f}",
         "non-viable" if s.id in m.nonviable_segments else "")
        for s in m.segments
    ]  # fmt: skip
    _table(
        c, (0.06, 0.56, 0.88), cells,
        ["AHA", "segment", "scar %", "mean transm. %", "max transm. %", "MVO ml", ""],
        [0.06, 0.26, 0.1, 0.16, 0.15, 0.1, 0.14], fontsize=8, row_height=0.0175,
    )  # fmt: skip


def _table(
    c: Canvas,
    where: tuple[float, float, float],
    rows: abc.Sequence[abc.Sequence[str]],
    header: abc.Sequence[str],
    widths: abc.Sequence[float],
    fontsize: float,
    row_height: float,
) -> None:
    """A ruled table at (left, top, width) in page fractions: a bold header row, one
    text per cell, grey rules between rows."""
    left, top, width = where
    x = left
    for col, fraction in enumerate(widths):
        _text(c, x + 0.004, top - row_height / 2, header[col], fontsize, bold=True, va="center")
        for i, row in enumerate(rows):
            if row[col]:
                _text(c, x + 0.004, top - row_height * (i + 1.5), row[col], fontsize, va="center")
        x += fraction * width
    c.setStrokeColorRGB(RULE_GREY, RULE_GREY, RULE_GREY)
    c.setLineWidth(0.5)
    for i in range(len(rows) + 2):
        c.line(*_at(left, top - row_height * i), *_at(left + width, top - row_height * i))


def render_report(
    volume: Volume, labels: np.ndarray, metrics: Metrics, algorithm: Algorithm
) -> bytes:
    """The two-page PDF as bytes."""
    _fonts()
    buf = io.BytesIO()
    c = Canvas(buf, pagesize=A4, invariant=True)
    c.setTitle(document_title(algorithm))
    c.setCreator(SOFTWARE_VERSIONS)
    _page_one(c, volume, metrics, algorithm)
    c.showPage()
    _page_two(c, volume, labels, metrics, algorithm)
    c.showPage()
    c.save()
    return buf.getvalue()


def build_pdf(
    volume: Volume, document: bytes, algorithm: Algorithm, now: datetime | None = None
) -> Dataset:
    """An Encapsulated PDF instance (PS3.3 A.45.1) in a new series of the source study."""
    now = now or datetime.now()
    src = volume.datasets[0]
    ds = Dataset()
    for keyword in PATIENT_STUDY:
        if keyword in src:
            setattr(ds, keyword, src[keyword].value)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "ReferringPhysicianName", "StudyDate", "StudyTime", "StudyID",
                    "AccessionNumber"):  # fmt: skip
        if keyword not in ds:
            setattr(ds, keyword, "")  # type 2: present, may be empty
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = new_uid()
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = new_uid()
    placement = PDF_SERIES.of(algorithm)
    ds.SeriesNumber, ds.SeriesDescription = placement.number, placement.description
    ds.InstanceNumber = 1
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.DeviceSerialNumber = DEVICE_SERIAL
    ds.SoftwareVersions = SOFTWARE_VERSIONS
    ds.ConversionType = "SYN"  # made by software, not scanned
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # the report names the patient
    ds.DocumentTitle = document_title(algorithm)
    concept = Dataset()
    concept.CodeValue = "18748-4"
    concept.CodingSchemeDesignator = "LN"
    concept.CodeMeaning = "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = Sequence([concept])
    sources = []
    for ref in volume.datasets:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.SOPClassUID
        item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
        sources.append(item)
    ds.SourceInstanceSequence = Sequence(sources)
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    payload = document + (b"\0" if len(document) % 2 else b"")  # OB: even length
    ds.EncapsulatedDocument = payload
    ds.EncapsulatedDocumentLength = len(document)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds
