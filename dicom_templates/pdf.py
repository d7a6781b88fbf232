"""The report a person reads: a two-page PDF, sent as an Encapsulated PDF object.

Page 1: who and what (patient, study, series), the key numbers with units and the method
behind each, the AHA bullseye of transmurality, QC flags with the reliability score, the
model and the research-use statement. Page 2: three representative slices (basal, mid,
apical) with the outlines, and the per-segment table. Drawn with matplotlib's PDF backend
and its bundled DejaVu fonts (nothing fetched); the file has no creation date, so the same
result gives the same bytes.
"""

from __future__ import annotations

import io
from collections import abc
from datetime import datetime

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.collections import LineCollection
from matplotlib.font_manager import FontProperties, findfont, get_font
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

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
from dicom_templates.overlay import draw_bullseye
from dicom_templates.seg import INFARCT_SEGMENT, MVO_SEGMENT, MYOCARDIUM_SEGMENT
from dicom_templates.uids import new_uid
from pipeline.labels import mvo_mask, myocardium_mask, scar_mask
from pipeline.quantify import QC_FLAGS, Metrics
from pipeline.volume import Volume

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
A4 = (8.27, 11.69)  # inches
# Copied from the source image so the report files under the same patient and study.
PATIENT_STUDY = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "StudyDescription", "SpecificCharacterSet",
)  # fmt: skip


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


def _text_page(fig: plt.Figure, volume: Volume, algorithm: Algorithm) -> None:
    ds = volume.datasets[0]
    fig.text(0.06, 0.965, document_title(algorithm), fontsize=14, weight="bold", va="top")
    who = (
        f"Patient: {readable_name(ds.get('PatientName', ''))}   ID: {ds.get('PatientID', '')}   "
        f"Study date: {ds.get('StudyDate', '')}\n"
        f"Series: {ds.get('SeriesNumber', '')} {ds.get('SeriesDescription', '')}   "
        f"Accession: {ds.get('AccessionNumber', '')}"
    )
    fig.text(0.06, 0.93, who, fontsize=9, va="top")
    note = f"{DISCLAIMER}. {algorithm.label} {algorithm.version}"
    if algorithm.synthetic_trained:
        note += f" - {SYNTHETIC_NOTE}; numbers are not validated on patients"
    fig.text(0.06, 0.02, note, fontsize=8, color="darkred", va="bottom", wrap=True)


def _page_one(volume: Volume, m: Metrics, algorithm: Algorithm) -> plt.Figure:
    fig = plt.figure(figsize=A4)
    _text_page(fig, volume, algorithm)
    _table(
        fig, (0.06, 0.88, 0.88), key_rows(m, algorithm), ["quantity", "value", "method"],
        [0.34, 0.33, 0.33], fontsize=7.5, row_height=0.0175,
    )  # fmt: skip
    eye = fig.add_axes((0.08, 0.2, 0.5, 0.36))
    cmap = draw_bullseye(eye, m, text_color=None, edge_color="grey", cmap_name="YlOrRd")
    bar_ax = fig.add_axes((0.6, 0.22, 0.015, 0.2))
    fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 100)), cax=bar_ax)
    fig.text(0.33, 0.575, "Mean transmurality per AHA segment (%)", ha="center", fontsize=10)
    qc = m.qc
    reliability = "n/a" if qc.reliability is None else f"{qc.reliability:.2f}"
    verdict = "LOW CONFIDENCE - check the contours" if qc.low_confidence else "no concern"
    lines = [f"QC reliability {reliability} (0-1): {verdict}"]
    if algorithm.reader_edited:
        # the model's reliability judged the model's contours, which a reader replaced
        lines = ["Contours edited by a reader: numbers recomputed", "from the edited segmentation"]
    elif qc.reliability_components:
        weakest = min(qc.reliability_components, key=lambda k: qc.reliability_components[k])
        lines.append(f"weakest signal: {weakest} ({qc.reliability_components[weakest]:.2f})")
    lines += [f"- {QC_FLAGS.get(f, f)}" for f in qc.flags] or ["no QC flags"]
    fig.text(
        0.62, 0.5, "\n".join(lines), fontsize=8.5, va="top", wrap=True,
        color="darkred" if qc.low_confidence else "black",
    )  # fmt: skip
    return fig


def representative_slices(m: Metrics) -> list[tuple[str, int]]:
    """The middle slice of the basal, mid and apical levels (those that exist)."""
    out = []
    for level in ("basal", "mid", "apical"):
        ks = m.aha.levels.get(level) or []
        if ks:
            out.append((level, int(ks[len(ks) // 2])))
    return out


def _page_two(volume: Volume, labels: np.ndarray, m: Metrics, algorithm: Algorithm) -> plt.Figure:
    fig = plt.figure(figsize=A4)
    _text_page(fig, volume, algorithm)
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
        ax = fig.add_axes((0.06 + i * 0.3, 0.6, 0.28, 0.28))
        ax.imshow(volume.array[k][box], cmap="gray", vmin=window[0], vmax=window[1])
        for mask, spec in ((myocardium_mask(labels[k][box]), MYOCARDIUM_SEGMENT),
                           (scar_mask(labels[k][box]), INFARCT_SEGMENT),
                           (mvo_mask(labels[k][box]), MVO_SEGMENT)):  # fmt: skip
            if mask.any():
                color = tuple(c / 255 for c in spec.color_rgb)
                ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=0.8)
        ax.set_title(f"{level} (slice {k + 1})", fontsize=9)
        ax.axis("off")
    fig.text(0.06, 0.585, "outlines: LV myocardium green, infarct yellow, MVO cyan", fontsize=8)
    cells = [
        (str(s.id), s.name, f"{s.scar_percent:.0f}", f"{s.transmurality_percent:.0f}",
         f"{s.max_transmurality_percent:.0f}", f"{s.mvo_ml:.2f}",
         "non-viable" if s.id in m.nonviable_segments else "")
        for s in m.segments
    ]  # fmt: skip
    _table(
        fig, (0.06, 0.56, 0.88), cells,
        ["AHA", "segment", "scar %", "mean transm. %", "max transm. %", "MVO ml", ""],
        [0.06, 0.26, 0.1, 0.16, 0.15, 0.1, 0.14], fontsize=8, row_height=0.0175,
    )  # fmt: skip
    return fig


def _table(
    fig: plt.Figure,
    where: tuple[float, float, float],
    rows: abc.Sequence[abc.Sequence[str]],
    header: abc.Sequence[str],
    widths: abc.Sequence[float],
    fontsize: float,
    row_height: float,
) -> None:
    """A ruled table at (left, top, width) in figure coordinates: one text per cell,
    the rules one collection. matplotlib's own table lays out every cell as a patch and
    a text of its own, clipped and measured again at every draw: half of a report."""
    left, top, width = where
    x = left
    for c, fraction in enumerate(widths):
        fig.text(x + 0.004, top - row_height / 2, header[c], fontsize=fontsize,
                 weight="bold", va="center")  # fmt: skip
        for i, row in enumerate(rows):
            if row[c]:
                fig.text(x + 0.004, top - row_height * (i + 1.5), row[c], fontsize=fontsize,
                         va="center")  # fmt: skip
        x += fraction * width
    rules = [[(left, top - row_height * i), (left + width, top - row_height * i)]
             for i in range(len(rows) + 2)]  # fmt: skip
    fig.add_artist(LineCollection(rules, colors="0.6", linewidths=0.5,
                                  transform=fig.transFigure))  # fmt: skip


def render_report(
    volume: Volume, labels: np.ndarray, metrics: Metrics, algorithm: Algorithm
) -> bytes:
    """The two-page PDF as bytes."""
    buf = io.BytesIO()
    meta = {"Title": document_title(algorithm), "Creator": SOFTWARE_VERSIONS, "CreationDate": None}
    with PdfPages(buf, metadata=meta) as pdf:
        for fig in (_page_one(volume, metrics, algorithm),
                    _page_two(volume, labels, metrics, algorithm)):  # fmt: skip
            pdf.savefig(fig)
            plt.close(fig)
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
