"""DICOM outputs: valid (dciodvfy), readable back (highdicom, DCMTK dsrdump), equal to the
metrics, placed in the source study, and accepted by a real PACS (Orthanc, C-STORE)."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_templates import codes
from dicom_templates.identity import Algorithm
from dicom_templates.outputs import OutputFiles, write_outputs
from dicom_templates.seg import segment_masks
from pipeline.quantify import quantify
from pipeline.research.phantom import PhantomCase
from pipeline.series import load_series
from tests.dicom_tools import dciodvfy, dsr_numbers, dsrdump, run_tool
from tests.orthanc import Orthanc

ALGORITHM = Algorithm()  # identifies as the synthetic-trained demo model


def _write(case: PhantomCase, out: Path, **kwargs) -> tuple[OutputFiles, object]:
    volume = load_series(case.out_dir / "dicom")
    metrics = quantify(case.labels, volume.geometry)
    return write_outputs(out, volume, case.labels, metrics, ALGORITHM, **kwargs), volume


CASES = {
    "classic-psir-mvo": {"seed": 7, "kind": "psir"},
    "enhanced-magnitude-mvo": {"seed": 11, "kind": "magnitude", "enhanced": True, "mvo": True},
    "classic-magnitude-no-mvo": {"seed": 5, "kind": "magnitude", "scar": True, "mvo": False},
    "enhanced-psir-no-scar": {"seed": 8, "kind": "psir", "enhanced": True, "scar": False},
}


@pytest.fixture(scope="module", params=list(CASES))
def written(request, phantom_factory, tmp_path_factory):
    case = phantom_factory(**CASES[request.param])
    files, volume = _write(case, tmp_path_factory.mktemp(request.param))
    return case, files, volume


def test_every_object_passes_dciodvfy(written) -> None:
    _, files, _ = written
    for path in files.dicom:
        verdict = dciodvfy(path)
        assert verdict.errors == [], f"{path.name}:\n{verdict.output}"
        # The only warnings allowed are for our documented private coding scheme.
        others = [w for w in verdict.warnings if "99LGENODE" not in w]
        assert others == [], f"{path.name}: {others}"


def test_seg_reads_back_frame_by_frame_against_the_right_source_slice(written) -> None:
    case, files, volume = written
    seg = hd.seg.segread(files.seg)
    assert seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [
        "LV myocardium",
        "Infarct (scar)",
        "Microvascular obstruction",
    ]
    n = volume.array.shape[0]
    assert int(seg.NumberOfFrames) == 3 * n, "empty frames must not be omitted"
    expected = segment_masks(case.labels)
    for k, frame in enumerate(volume.frames):
        if frame.frame_number is None:
            got = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[frame.sop_instance_uid], segment_numbers=[1, 2, 3]
            )[0]
        else:
            got = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=frame.sop_instance_uid,
                source_frame_numbers=[frame.frame_number],
                segment_numbers=[1, 2, 3],
            )[0]
        np.testing.assert_array_equal(got.astype(bool), expected[k], err_msg=f"slice {k}")
    # Every SEG frame sits at the position of the source slice it derives from.
    positions = {tuple(np.round(volume.geometry.slice_position(k), 3)) for k in range(n)}
    for item in seg.PerFrameFunctionalGroupsSequence:
        ipp = item.PlanePositionSequence[0].ImagePositionPatient
        assert tuple(np.round(np.array(ipp, dtype=float), 3)) in positions


def test_sr_numbers_equal_metrics_json(written) -> None:
    _, files, volume = written
    metrics = json.loads(files.metrics.read_text())
    # DCMTK decodes the SR in its declared character set: the name survives intact.
    assert f"Patient             : {volume.datasets[0].PatientName} (" in dsrdump(files.sr)
    groups = dsr_numbers(files.sr)
    vol, mass, pct = "118565006", "118538004", "PCTLVMYO"
    # A finding without pixels has no outline of its own: it is reported under the
    # finding that contains it, so that a viewer can open every group on an image.
    inf_key = "Infarct (scar)" if metrics["scar_ml"] > 0 else "LV myocardium / Infarct"
    mvo_key = (
        "Microvascular obstruction"
        if metrics["mvo_ml"] > 0
        else f"{inf_key.split(' / ')[0]} / Microvascular obstruction"
    )
    myo, inf, mvo = groups["LV myocardium"], groups[inf_key], groups[mvo_key]

    # Rounded as a reader uses them; metrics.json keeps full precision.
    def shown(value: float, decimals: int = 1) -> float:
        return pytest.approx(round(value, decimals), abs=1e-9)

    assert myo[vol] == shown(metrics["myocardium_ml"])
    assert myo[mass] == shown(metrics["myocardium_mass_g"])
    assert inf[vol] == shown(metrics["scar_ml"])
    assert inf[mass] == shown(metrics["scar_mass_g"])
    assert inf[pct] == shown(metrics["scar_percent"])
    assert mvo[vol] == shown(metrics["mvo_ml"], 2)
    assert mvo[pct] == shown(metrics["mvo_percent"])
    for s in metrics["segments"]:
        site = codes.AHA_SEGMENTS[s["id"]].value
        (g,) = [g for g in groups.values() if g.get("site") == site]
        assert g["PCTSEGMYO"] == shown(s["scar_percent"])
        assert g["TRANSMURAL"] == shown(s["transmurality_percent"], 0)
        assert g["MAXTRANSMURAL"] == shown(s["max_transmurality_percent"], 0)
        assert g[vol] == shown(s["mvo_ml"], 2)
    (summary,) = [v for k, v in groups.items() if k.startswith("LV myocardium / Summary by")]
    assert summary["NONVIABLESEGS"] == len(metrics["nonviable_segments"])


def test_sr_names_methods_once_per_group_and_declares_its_codes(psir_classic, tmp_path) -> None:
    """With what the pipeline adds (references, composition, reliability): every number
    names its method, the algorithm appears once per group, not per number, and the
    private coding scheme is declared."""
    from pipeline.reference import composition, reference_scar

    volume = load_series(psir_classic.out_dir / "dicom")
    metrics = quantify(psir_classic.labels, volume.geometry)
    metrics.reference = reference_scar(volume.array, psir_classic.labels, volume.geometry)
    metrics.composition = composition(volume.array, psir_classic.labels, volume.geometry)
    metrics.qc.reliability = 0.834
    files = write_outputs(tmp_path, volume, psir_classic.labels, metrics, ALGORITHM)
    groups = dsr_numbers(files.sr)
    vol, pct = "118565006", "PCTLVMYO"
    infarct = "Infarct (scar) / "
    fwhm = "Full width at half maximum"
    assert groups[f"{infarct}Infarct core by {fwhm}"][vol] == pytest.approx(
        round(metrics.composition.core_ml, 1), abs=1e-9
    )
    grey = f"{infarct}Peri-infarct grey zone by Between 2-SD and FWHM thresholds"
    assert groups[grey][pct] == pytest.approx(
        round(metrics.composition.grey_zone_percent, 1), abs=1e-9
    )
    names = {
        "nSD": "5 standard deviations above remote myocardium",
        "FWHM": fwhm,
        "EWA": "Weighted intensity (EWA)",
    }
    for r in metrics.reference:
        assert groups[f"{infarct}Infarct by {names[r.method]}"][pct] == pytest.approx(
            round(r.scar_percent, 1), abs=1e-9
        )
    assert groups["LV myocardium / Quality control"]["RELIABILITY"] == 0.83
    text = dsrdump(files.sr)
    methods = [line for line in text.splitlines() if "Measurement Method" in line]
    assert any("Full width at half maximum" in line for line in methods)
    assert any("EWA" in line for line in methods)
    n_groups = text.count('"Tracking Identifier")=')
    assert text.count('"Algorithm Name")=') == n_groups
    sr = pydicom.dcmread(files.sr)
    (scheme,) = sr.CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == codes.PRIVATE_SCHEME
    assert scheme.CodingSchemeName and scheme.CodingSchemeResponsibleOrganization
    verdict = dciodvfy(files.sr)
    assert verdict.errors == [], verdict.output


def test_no_scar_case_reports_zero(phantom_factory, tmp_path: Path) -> None:
    files, _ = _write(phantom_factory(**CASES["enhanced-psir-no-scar"]), tmp_path)
    groups = dsr_numbers(files.sr)
    assert "Infarct (scar)" not in groups and "Microvascular obstruction" not in groups
    assert groups["LV myocardium / Infarct"]["118565006"] == 0
    assert groups["LV myocardium / Microvascular obstruction"]["118565006"] == 0
    assert groups["LV myocardium"]["118565006"] > 50
    # The SEG is still complete: every frame of every segment, the empty ones empty.
    seg = pydicom.dcmread(files.seg)
    n_slices = int(seg.NumberOfFrames) // 3
    pixels = seg.pixel_array
    for number, non_empty in ((1, True), (2, False), (3, False)):
        frames = [
            i
            for i, f in enumerate(seg.PerFrameFunctionalGroupsSequence)
            if f.SegmentIdentificationSequence[0].ReferencedSegmentNumber == number
        ]
        assert len(frames) == n_slices
        assert bool(pixels[frames].any()) == non_empty


def test_placement_identity_and_character_set(written) -> None:
    _, files, volume = written
    src = volume.datasets[0]
    seg, sr = pydicom.dcmread(files.seg), pydicom.dcmread(files.sr)
    scs = [pydicom.dcmread(p) for p in files.overlays]
    summary, pdf = pydicom.dcmread(files.summary), pydicom.dcmread(files.pdf)
    source_uids = {str(d.SOPInstanceUID) for d in volume.datasets} | {src.SeriesInstanceUID}
    for ds, description in [
        (seg, "LGE scar SEG"),
        (sr, "LGE scar report"),
        (summary, "LGE scar summary"),
        (pdf, "LGE scar report (PDF)"),
        *((sc, "LGE scar overlay") for sc in scs),
    ]:
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.SeriesDescription == description
        assert ds.SeriesInstanceUID not in source_uids
        assert ds.SOPInstanceUID not in source_uids
        assert ds.SpecificCharacterSet == src.SpecificCharacterSet
        assert str(ds.PatientName) == str(src.PatientName)  # "Phantom^Inês 7" etc.
        assert ds.PatientID == src.PatientID
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert len({sc.SeriesInstanceUID for sc in scs}) == 1
    assert summary.SeriesInstanceUID not in {sc.SeriesInstanceUID for sc in scs}
    assert len(scs) == volume.array.shape[0]
    assert all(sc.BurnedInAnnotation == "YES" for sc in [*scs, summary])
    # Listed in this order by series number: PDF, summary, SEG, SR, then the overlays;
    # derived images are MR, not OT (which OHIF plays as cine over the burned-in text).
    numbers = [int(d.SeriesNumber) for d in (pdf, summary, seg, sr, scs[0])]
    assert numbers == sorted(numbers)
    assert {sc.Modality for sc in [*scs, summary]} == {"MR"}
    # Each overlay names the image (and frame) it was drawn on.
    for k, sc in enumerate(scs):
        source = sc.SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == volume.frames[k].sop_instance_uid
        assert source.get("ReferencedFrameNumber") == volume.frames[k].frame_number
    assert seg.ContentCreatorName.family_name == "lge-node"
    # The model is identified, and says it is a synthetic-trained demo.
    alg = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert "synthetic-trained demo" in alg.AlgorithmName and alg.AlgorithmVersion


def test_overlays_show_the_segments_where_they_are(written) -> None:
    case, files, _ = written
    green = np.array([0, 200, 0])
    yellow = np.array([255, 200, 0])

    def count(pixels: np.ndarray, color: np.ndarray) -> int:
        return int((np.abs(pixels.astype(int) - color).sum(axis=-1) < 60).sum())

    for k, path in enumerate(files.overlays):
        px = pydicom.dcmread(path).pixel_array
        factor = px.shape[1] // case.labels.shape[2]
        image_band = px[: case.labels.shape[1] * factor]  # text and legend sit below it
        myo = np.isin(case.labels[k], [2, 3, 4])
        if myo.sum() <= 10:
            assert count(image_band, green) == 0, f"slice {k}: outline without myocardium"
            continue
        ys, xs = np.nonzero(myo)
        y0, y1 = (ys.min() - 2) * factor, (ys.max() + 3) * factor
        x0, x1 = (xs.min() - 2) * factor, (xs.max() + 3) * factor
        heart = px[max(y0, 0) : y1, max(x0, 0) : x1]
        assert count(heart, green) > 20, f"slice {k}: myocardium outline missing"
        outside = image_band.copy()
        outside[max(y0, 0) : y1, max(x0, 0) : x1] = 0
        assert count(outside, green) == 0, f"slice {k}: outline away from the heart"
        if np.isin(case.labels[k], [3, 4]).sum() > 30:
            assert count(heart, yellow) > 10, f"slice {k}: infarct outline missing"


def test_reprocessing_makes_new_instances_pointing_to_the_predecessor(
    psir_classic, tmp_path: Path
) -> None:
    first, _ = _write(psir_classic, tmp_path / "run1")
    second, _ = _write(psir_classic, tmp_path / "run2", predecessor_sr=first.sr)
    old, new = pydicom.dcmread(first.sr), pydicom.dcmread(second.sr)
    assert new.SOPInstanceUID != old.SOPInstanceUID
    assert pydicom.dcmread(second.seg).SOPInstanceUID != pydicom.dcmread(first.seg).SOPInstanceUID
    ref = new.PredecessorDocumentsSequence[0]
    assert ref.StudyInstanceUID == old.StudyInstanceUID
    series = ref.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == old.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old.SOPInstanceUID
    assert dciodvfy(second.sr).errors == []


def test_orthanc_accepts_all_outputs_over_c_store_under_the_original_study(
    written, tmp_path: Path
) -> None:
    case, files, volume = written
    with Orthanc(tmp_path / "orthanc") as pacs:
        sources = [str(p) for p in case.files]
        # DCMTK storescu as the scanner (source) and as the node's sender (results).
        run_tool(
            "storescu",
            "-aet",
            "SCANNER",
            "-aec",
            pacs.aet,
            "127.0.0.1",
            str(pacs.dicom_port),
            *sources,
        )
        run_tool(
            "storescu",
            "-R",  # propose the files' own SOP classes (SEG is not in DCMTK's default list)
            "-aet",
            "LGE_NODE",
            "-aec",
            pacs.aet,
            "127.0.0.1",
            str(pacs.dicom_port),
            *map(str, files.dicom),
        )
        studies = pacs.get("/studies?expand")
        assert len(studies) == 1, "outputs must land in the source study"
        study = studies[0]
        assert study["MainDicomTags"]["StudyInstanceUID"] == volume.study_instance_uid
        assert study["PatientMainDicomTags"]["PatientName"] == str(volume.datasets[0].PatientName)
        series = {
            s["MainDicomTags"].get("SeriesDescription"): s
            for s in pacs.get(f"/studies/{study['ID']}/series?expand")
        }
        assert {"LGE scar SEG", "LGE scar report", "LGE scar overlay", "LGE scar summary",
                "LGE scar report (PDF)"} <= set(series)  # fmt: skip
        assert len(series["LGE scar overlay"]["Instances"]) == len(files.overlays)
        seg_instance = series["LGE scar SEG"]["Instances"][0]
        tags = pacs.get(f"/instances/{seg_instance}/simplified-tags")
        assert tags["SOPClassUID"] == pydicom.uid.SegmentationStorage


CHARACTER_SETS = {
    "latin1": ("ISO_IR 100", "Müller^Zoë"),
    "utf8": ("ISO_IR 192", "Wang^XiaoDong=王^小東"),
    "gb18030": ("GB18030", "Wang^XiaoDong=王^小东"),
    "japanese": ("\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    "japanese-katakana": ("ISO 2022 IR 13\\ISO 2022 IR 87", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"),
    "korean": ("\\ISO 2022 IR 149", "Hong^Gildong=洪^吉洞=홍^길동"),
}


@pytest.mark.parametrize("name", list(CHARACTER_SETS))
def test_character_sets_survive_seg_sr_sc_and_a_pacs(
    name: str, psir_classic: PhantomCase, tmp_path: Path
) -> None:
    """A Japanese study (ISO 2022 IR 87 with an empty first value) once failed to
    process. Every output carries the source's Specific Character Set as sent and the
    patient's name intact, and Orthanc (C-STORE) reads the same name from each."""
    charset, patient = CHARACTER_SETS[name]
    src = tmp_path / "src"
    src.mkdir()
    for f in psir_classic.files:
        ds = pydicom.dcmread(f)
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
        ds.PatientName = patient
        ds.save_as(src / f.name, enforce_file_format=True)
    volume = load_series(src)
    assert str(volume.datasets[0].PatientName) == patient
    metrics = quantify(psir_classic.labels, volume.geometry)
    files = write_outputs(tmp_path / "out", volume, psir_classic.labels, metrics, ALGORITHM)
    for path in files.dicom:
        ds = pydicom.dcmread(path)
        assert ds.SpecificCharacterSet == volume.datasets[0].SpecificCharacterSet, path.name
        assert str(ds.PatientName) == patient, path.name
    with Orthanc(tmp_path / "orthanc") as pacs:
        run_tool("storescu", "-aet", "SCANNER", "-aec", pacs.aet, "127.0.0.1",
                 str(pacs.dicom_port), str(src / psir_classic.files[0].name))  # fmt: skip
        (source_id,) = pacs.get("/instances")
        as_sent = pacs.get(f"/instances/{source_id}/simplified-tags")["PatientName"]
        run_tool("storescu", "-R", "-aet", "LGE_NODE", "-aec", pacs.aet, "127.0.0.1",
                 str(pacs.dicom_port), *map(str, files.dicom))  # fmt: skip
        instances = [i for i in pacs.get("/instances") if i != source_id]
        assert len(instances) == len(files.dicom)
        for iid in instances:  # the PACS reads our outputs as it reads the scanner's image
            assert pacs.get(f"/instances/{iid}/simplified-tags")["PatientName"] == as_sent
        if name != "japanese-katakana":
            assert as_sent == patient
        # else: Orthanc decodes only the first of two ISO 2022 code elements (half-width
        # katakana, then kanji); the bytes we write are the scanner's (checked above)


def test_the_pdf_report_reads_as_a_report(written) -> None:
    """Two pages; the key numbers as a reader sees them (rounded, with units and method),
    the QC verdict, the model and the research-use statement; the DICOM object carries
    exactly that PDF in the source study, in a series listed before the overlays."""
    from pypdf import PdfReader

    from dicom_templates.identity import OVERLAY_SERIES, PDF_SERIES

    case, files, volume = written
    reader = PdfReader(files.pdf.parent / "report.pdf")
    assert len(reader.pages) == 2
    text = " ".join(page.extract_text() for page in reader.pages)
    m = quantify(case.labels, volume.geometry)
    for expected in (
        f"{m.myocardium_ml:.0f} ml",
        f"{m.scar_percent:.1f} % LV",
        f"{m.mvo_ml:.2f} ml",
        "nnU-Net segmentation",
        "RESEARCH ONLY",
        "synthetic",
        ALGORITHM.version,
        "Non-viable segments",
        "basal inferoseptal",
    ):
        assert expected in text, expected
    ds = pydicom.dcmread(files.pdf)
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    stored = bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)]
    assert stored == (files.pdf.parent / "report.pdf").read_bytes()
    assert ds.StudyInstanceUID == volume.datasets[0].StudyInstanceUID
    assert ds.PatientID == volume.datasets[0].PatientID
    assert ds.SeriesNumber == PDF_SERIES.number < OVERLAY_SERIES.number
    assert {r.ReferencedSOPInstanceUID for r in ds.SourceInstanceSequence} == {
        d.SOPInstanceUID for d in volume.datasets
    }


def test_a_low_confidence_report_says_why_in_a_readers_words(phantom_factory) -> None:
    """A flagged result names its weakest QC signal and what it means for the contours;
    a trusted one carries no such line."""
    import io

    from pypdf import PdfReader

    from dicom_templates.overlay import low_confidence_reason
    from dicom_templates.pdf import render_report

    case = phantom_factory(seed=7, kind="psir")
    volume = load_series(case.out_dir / "dicom")
    m = quantify(case.labels, volume.geometry)
    m.qc.reliability, m.qc.low_confidence = 0.27, True
    m.qc.reliability_components = {"focal_thinning": 0.27, "ring": 0.94, "self_agreement": 1.0}
    pdf = render_report(volume, case.labels, m, ALGORITHM)
    text = " ".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)
    text = " ".join(text.split())  # the column wraps lines
    assert "LOW CONFIDENCE" in text and "weakest signal: focal_thinning (0.27)" in text
    assert "scar as bright as the blood pool may have been called blood pool" in text
    # a chronic infarct thins the wall for real: the reader is told so, not only "missed"
    assert "unless the wall is truly thinned there (a chronic infarct)" in text
    m.qc.reliability, m.qc.low_confidence = 0.94, False
    m.qc.reliability_components = {"focal_thinning": 0.94, "ring": 1.0}
    assert low_confidence_reason(m) == ""


@pytest.mark.parametrize(
    ("name", "printed"),
    [
        ("Müller^Zoë", "Müller^Zoë"),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Yamada^Tarou (full name in the DICOM header)"),
        ("=洪^吉洞", "(see header)"),
        ("ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎", "(see header)"),  # half-width katakana: no glyphs either
    ],
)
def test_the_pdf_prints_names_it_has_glyphs_for(name: str, printed: str) -> None:
    """No CJK font is bundled: the PDF prints the alphabetic form, never tofu boxes."""
    from dicom_templates.pdf import printable, readable_name

    assert readable_name(name) == printed
    assert printable(readable_name(name))


def test_dcmqi_reads_the_seg_without_warnings_voxel_for_voxel(written, tmp_path: Path) -> None:
    """dcmqi (what 3D Slicer's QuantitativeReporting uses) converts each segment back to
    an image on the source geometry: no warnings, no voxel different from the labels."""
    import subprocess
    import sys

    import SimpleITK as sitk

    case, files, volume = written
    tool = Path(sys.executable).parent / "segimage2itkimage"
    proc = subprocess.run(
        [str(tool), "--inputDICOM", str(files.seg), "--outputDirectory", str(tmp_path),
         "--outputType", "nrrd"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert "warn" not in output.lower(), output
    expected = segment_masks(case.labels)
    reference = volume.geometry.to_sitk(np.zeros(volume.array.shape, np.uint8))
    for number in (1, 2, 3):
        image = sitk.ReadImage(str(tmp_path / f"{number}.nrrd"))
        on_source = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor)
        got = sitk.GetArrayFromImage(on_source) > 0
        assert int((got != expected[..., number - 1]).sum()) == 0, number


def test_a_reader_edited_seg_reads_back_to_the_edited_labels(written) -> None:
    """The start of a correction: a reader erases part of the infarct and stores the SEG
    from another tool (segments in another order, new UIDs); reading it onto the source
    frames and composing labels gives exactly the edited labels, blood pools kept."""
    from pydicom.uid import generate_uid

    from dicom_templates.seg import build_seg, read_seg_masks
    from pipeline.labels import Label, compose

    case, files, volume = written
    edited = case.labels.copy()
    scar_slices = [k for k in range(edited.shape[0]) if (edited[k] == Label.SCAR).any()]
    for k in scar_slices[: max(1, len(scar_slices) // 2)]:
        edited[k][edited[k] == Label.SCAR] = Label.MYOCARDIUM  # "not scar" on these slices
    seg = build_seg(volume, edited, ALGORITHM)
    # Another tool's SEG: segments renumbered in reverse, so only their codes identify them.
    order = list(reversed(seg.SegmentSequence))
    renumber = {int(s.SegmentNumber): i + 1 for i, s in enumerate(order)}
    for s in order:
        s.SegmentNumber = renumber[int(s.SegmentNumber)]
    seg.SegmentSequence = order
    for f in seg.PerFrameFunctionalGroupsSequence:
        ref = f.SegmentIdentificationSequence[0]
        ref.ReferencedSegmentNumber = renumber[int(ref.ReferencedSegmentNumber)]
    seg.SOPInstanceUID = generate_uid()
    masks = read_seg_masks(seg, volume)
    labels = compose(masks[..., 0], masks[..., 1], masks[..., 2], pools=case.labels)
    assert np.array_equal(labels, edited)
    with pytest.raises(ValueError, match="not a Segmentation"):
        read_seg_masks(pydicom.dcmread(files.sr), volume)
    # A SEG that also segments an image the series does not hold is refused, not read
    # with that image's contours silently dropped.
    seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[
        0
    ].ReferencedSOPInstanceUID = generate_uid()
    with pytest.raises(ValueError, match=r"1 of the \d+ images the SEG segments are not in"):
        read_seg_masks(seg, volume)


def test_labels_are_kept_on_the_source_geometry(written) -> None:
    """labels.nii.gz (what a correction is merged into) equals the labels, with the
    source's geometry, so a reader's SEG and the model's blood pools line up."""
    import SimpleITK as sitk

    from pipeline.volume import Geometry

    case, files, volume = written
    image = sitk.ReadImage(str(files.labels))
    assert np.array_equal(sitk.GetArrayFromImage(image), case.labels)
    assert Geometry.from_sitk(image).mismatch(volume.geometry, tol_mm=1e-3) is None


def test_reader_edited_outputs_say_so_everywhere_and_stay_valid(psir_classic, tmp_path) -> None:
    """The results of a reader's correction: every object valid, every series and the
    algorithm marked reader-edited, SEG segments SEMIAUTOMATIC, listed before the automatic
    series, the reader's SEG in the SR's evidence, the source of the labels in metrics.json."""
    from dicom_templates.outputs import ReaderEdit

    first, _ = _write(psir_classic, tmp_path / "first")
    reader_seg = pydicom.dcmread(first.seg)
    reader_seg.SOPInstanceUID = pydicom.uid.generate_uid()  # as another tool stores it
    edited, _ = _write(
        psir_classic, tmp_path / "edited", predecessor_sr=first.sr,
        reader_edit=ReaderEdit(reader_seg, "ORTHANC"),
    )  # fmt: skip
    automatic = {pydicom.dcmread(p, stop_before_pixels=True).SeriesNumber for p in first.dicom}
    for path in edited.dicom:
        verdict = dciodvfy(path)
        assert verdict.errors == [], f"{path.name}:\n{verdict.output}"
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SeriesDescription.endswith("(reader-edited)"), path.name
        assert ds.SeriesNumber < min(automatic)
    seg = pydicom.dcmread(edited.seg)
    for segment in seg.SegmentSequence:
        assert segment.SegmentAlgorithmType == "SEMIAUTOMATIC"
        assert "reader-edited" in segment.SegmentAlgorithmName
    sr = pydicom.dcmread(edited.sr)
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert reader_seg.SOPInstanceUID in evidence
    pred = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert (
        pred.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        == pydicom.dcmread(first.sr).SOPInstanceUID
    )
    assert "Segmentation edited by a reader" in dsrdump(edited.sr)
    assert "reader-edited" in pydicom.dcmread(edited.pdf).DocumentTitle
    doc = json.loads(edited.metrics.read_text())
    assert doc["segmentation"] == {
        "source": "reader-edited",
        "reader_seg_sop_instance_uid": reader_seg.SOPInstanceUID,
        "reader_seg_series_instance_uid": reader_seg.SeriesInstanceUID,
        "received_from": "ORTHANC",
    }
    assert json.loads(first.metrics.read_text())["segmentation"] == {"source": "automatic"}


def test_pages_drawn_in_the_drawing_process_are_the_ones_drawn_here_even_after_it_dies(
    psir_classic, tmp_path: Path
) -> None:
    """The worker's drawing process (overlays, PDF, wrapped as DICOM and written) gives
    the same objects as drawing in the worker's thread; killed, the job still gets every
    page and the next job a new one."""
    import os
    import signal
    import time

    from node.workflow.drawing import DrawingProcess

    def pages(files: OutputFiles) -> list[np.ndarray]:
        return [pydicom.dcmread(p).pixel_array for p in (files.summary, *files.overlays)]

    def pdf_text(files: OutputFiles) -> list[str]:
        from pypdf import PdfReader

        return [page.extract_text() for page in PdfReader(files.pdf.parent / "report.pdf").pages]

    # What differs between two runs on the same labels: new UIDs and the clock.
    fresh = {
        "SOPInstanceUID", "SeriesInstanceUID", "InstanceCreationTime", "ContentTime",
        "TimeOfSecondaryCapture", "AcquisitionDateTime", "ContributingEquipmentSequence",
    }  # fmt: skip

    def headers(files: OutputFiles) -> list[dict[str, object]]:
        """Every attribute of the drawn objects but the fresh ones: the references to
        each source image, patient and study among them."""
        out = []
        for path in (files.pdf, files.summary, *files.overlays):
            ds = pydicom.dcmread(path)
            out.append({e.keyword: e.value for e in ds if e.keyword not in fresh})
        return out

    here, _ = _write(psir_classic, tmp_path / "here")
    drawing = DrawingProcess()
    drawing.start()
    try:
        there, _ = _write(psir_classic, tmp_path / "there", drawing=drawing)
        drawn_here, drawn_there = pages(here), pages(there)
        assert len(drawn_there) == len(drawn_here) == 1 + len(here.overlays)
        assert all(np.array_equal(a, b) for a, b in zip(drawn_here, drawn_there, strict=True))
        assert pdf_text(there) == pdf_text(here)
        assert len(pdf_text(here)) == 2
        # drawn from the source headers without their pixels, wrapped and written there
        assert headers(there) == headers(here)
        assert [o.path for o in there.objects[:2]] == [str(there.seg), str(there.sr)]
        (pid,) = drawing.pids
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        again, _ = _write(psir_classic, tmp_path / "again", drawing=drawing)
        assert all(np.array_equal(a, b) for a, b in zip(drawn_here, pages(again), strict=True))
        _write(psir_classic, tmp_path / "next", drawing=drawing)
        assert drawing.pids and drawing.pids != [pid], "a new drawing process"
    finally:
        drawing.shutdown()


def test_the_drawing_process_ends_when_its_worker_is_killed(tmp_path: Path) -> None:
    """A node killed outright (SIGKILL, OOM) leaves no drawing process behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import time\n"
        "from node.workflow.drawing import DrawingProcess\n"
        "d = DrawingProcess()\n"
        "d.start()\n"
        "while not d.pids: time.sleep(0.05)\n"
        "print(d.pids[0], flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(child, 0)  # it runs
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(child, signal.SIGKILL)
    raise AssertionError(f"drawing process {child} outlived its worker")


def test_the_sr_document_is_the_one_highdicom_builds_checking_the_whole_content(
    psir_classic, tmp_path: Path
) -> None:
    """The report's document is built from its root container alone, the items attached
    after (highdicom would copy and re-read hundreds of outline items). Built the full
    way from the same content, with a predecessor and a reader's SEG among the evidence,
    it must be the same document: every attribute but the new UID and the clock, and
    every referenced image must be in the evidence (which the full way checks)."""
    from dicom_templates.seg import build_seg
    from dicom_templates.sr import _document, build_sr

    first, _ = _write(psir_classic, tmp_path / "run1")
    volume = load_series(psir_classic.out_dir / "dicom")
    metrics = quantify(psir_classic.labels, volume.geometry)
    edited = ALGORITHM.edited()
    seg = build_seg(volume, psir_classic.labels, edited)
    reader_seg = pydicom.dcmread(first.seg)
    predecessor = pydicom.dcmread(first.sr)
    quick = build_sr(
        volume, seg, psir_classic.labels, metrics, edited, predecessor=predecessor,
        reader_seg=reader_seg,
    )  # fmt: skip
    root = pydicom.Dataset()
    for keyword in ("ValueType", "ConceptNameCodeSequence", "ContinuityOfContent",
                    "ContentTemplateSequence", "ContentSequence"):  # fmt: skip
        setattr(root, keyword, quick[keyword].value)
    full = _document(
        [root], [*volume.datasets, seg, reader_seg], edited, predecessor,
        quick.SeriesInstanceUID, check_content=True,
    )  # fmt: skip
    clock = {"SOPInstanceUID", "ContentDate", "ContentTime", "InstanceCreationDate",
             "InstanceCreationTime", "ContributionDateTime"}  # fmt: skip

    def differences(a: pydicom.Dataset, b: pydicom.Dataset, at: str = "") -> list[str]:
        if {e.keyword for e in a} != {e.keyword for e in b}:
            return [f"{at}: {sorted({e.keyword for e in a} ^ {e.keyword for e in b})}"]
        found = []
        for e in a:
            if e.keyword in clock:
                continue
            other = b[e.tag]
            if e.VR == "SQ":
                if len(e.value) != len(other.value):
                    found.append(f"{at}{e.keyword}: {len(e.value)} vs {len(other.value)} items")
                for i, (x, y) in enumerate(zip(e.value, other.value, strict=False)):
                    found += differences(x, y, f"{at}{e.keyword}[{i}].")
            elif e != other:
                found.append(f"{at}{e.keyword}: {e.value!r} vs {other.value!r}")
        return found

    assert differences(quick, full) == []
    assert full.file_meta.TransferSyntaxUID == quick.file_meta.TransferSyntaxUID
    assert quick.file_meta.MediaStorageSOPInstanceUID == quick.SOPInstanceUID
    with pytest.raises(ValueError, match="No evidence"):  # the check the full way makes
        _document([root], [*volume.datasets, reader_seg], edited, None, None, True)


def test_the_sr_outlines_aha_segments_from_the_map_the_metrics_carry(psir_classic) -> None:
    """The per-segment outlines come from the segment map measured with the metrics; a
    report from metrics without it traces the segments again: the same outlines."""
    from dataclasses import replace

    from dicom_templates.seg import build_seg
    from dicom_templates.sr import build_sr
    from pipeline.quantify import aha_segments

    volume = load_series(psir_classic.out_dir / "dicom")
    labels = psir_classic.labels
    metrics = quantify(labels, volume.geometry)
    assert metrics.segment_map is not None
    assert np.array_equal(metrics.segment_map, aha_segments(labels, volume.geometry)[0])
    assert "segment_map" not in metrics.to_dict()
    seg = build_seg(volume, labels, ALGORITHM)

    def outlines(sr: pydicom.Dataset) -> list[tuple[str, list[float]]]:
        found = []
        for item in sr.iterall():
            if item.keyword == "ContentSequence":
                for c in item.value:
                    if c.ValueType == "SCOORD":
                        found.append((c.GraphicType, [float(v) for v in c.GraphicData]))
        return found

    with_map = outlines(build_sr(volume, seg, labels, metrics, ALGORITHM))
    traced = outlines(build_sr(volume, seg, labels, replace(metrics, segment_map=None), ALGORITHM))
    assert len(with_map) > 17 and with_map == traced
