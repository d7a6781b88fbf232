"""What a radiologist sees in a real web viewer: OHIF 3.13 (npm's prebuilt dist/) reading
a real Orthanc over DICOMweb, in headless Debian chromium driven by Playwright.

Each study (classic and Enhanced MR) goes to Orthanc over C-STORE (DCMTK storescu), the
originals as the scanner and our results as the node. The test asserts what the reader
relies on: the result series are listed (PDF and summary among them), the SEG's segments
are listed and drawn on the slices that hold them, and the SR opens on an image with its
outlines and key numbers instead of an error boundary. Last, OHIF reads a study from the
node itself (its QIDO-RS and WADO-RS) after the node processed it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_templates.identity import Algorithm
from dicom_templates.outputs import write_outputs
from dicom_templates.seg import segment_masks
from pipeline.quantify import quantify
from pipeline.series import load_series
from tests.dicom_tools import run_tool
from tests.orthanc import Orthanc
from tests.system import requires
from tests.viewer_harness import (
    ORTHANC_DICOMWEB,
    OhifServer,
    viewer_available,
)

pytestmark = requires(viewer_available(), "viewer tests")

CASES = {
    "classic": {"seed": 7, "kind": "psir", "mvo": True},
    "enhanced": {"seed": 11, "kind": "magnitude", "enhanced": True, "mvo": True},
}
LOAD_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module", params=list(CASES))
def study(request, phantom_factory, tmp_path_factory):
    """(case, volume, metrics.json, OHIF url, screenshot folder) of one study in Orthanc."""
    case = phantom_factory(**CASES[request.param])
    volume = load_series(case.out_dir / "dicom")
    metrics = quantify(case.labels, volume.geometry)
    work = tmp_path_factory.mktemp(f"viewer-{request.param}")
    files = write_outputs(work / "out", volume, case.labels, metrics, Algorithm())
    shots = Path(os.environ.get("LGE_NODE_SCREENSHOTS", work / "shots")) / request.param
    shots.mkdir(parents=True, exist_ok=True)
    with Orthanc(work / "orthanc", extra=ORTHANC_DICOMWEB) as pacs:
        for aet, paths in (("SCANNER", case.files), ("LGE_NODE", files.dicom)):
            run_tool("storescu", "-R", "-aet", aet, "-aec", pacs.aet, "127.0.0.1",
                     str(pacs.dicom_port), *map(str, paths))  # fmt: skip
        with OhifServer(pacs.url) as viewer:
            yield (
                case,
                volume,
                json.loads(files.metrics.read_text()),
                viewer.study_url(volume.study_instance_uid),
                shots,
            )


class Page:
    """One OHIF page with its console errors and uncaught exceptions collected."""

    def __init__(self, browser, url: str) -> None:
        self.page = browser.new_page(viewport={"width": 1600, "height": 1000})
        self.errors: list[str] = []
        self.in_flight = 0
        self.page.on("request", lambda r: self._count(1))
        self.page.on("requestfinished", lambda r: self._count(-1))
        self.page.on("requestfailed", lambda r: self._count(-1))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on(
            "console",
            lambda m: self.errors.append(m.text) if "Error Boundary" in m.text else None,
        )
        # A returning reader: the first-visit tour has been seen.
        self.page.add_init_script(
            "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))"
        )
        self.page.goto(url)
        self.page.get_by_text("LGE scar SEG", exact=True).wait_for(timeout=LOAD_TIMEOUT_MS)
        # Let the first series finish loading, as a reader would: OHIF 3.13 throws
        # ("stack viewport has been destroyed") when a SEG is opened or an SR measurement
        # changed while the stack's images are still in flight, whatever the object.
        self.settle()

    def _count(self, delta: int) -> None:
        self.in_flight += delta

    def settle(self, quiet_ms: int = 500) -> None:
        """Wait until no request has been in flight for ``quiet_ms``."""
        quiet = 0
        for _ in range(LOAD_TIMEOUT_MS // 100):
            self.page.wait_for_timeout(100)
            quiet = quiet + 100 if self.in_flight <= 0 else 0
            if quiet >= quiet_ms:
                return
        raise TimeoutError(f"{self.in_flight} requests still in flight")

    def open_series(self, description: str) -> None:
        self.page.get_by_text(description, exact=True).first.dblclick()

    def text(self) -> str:
        return self.page.locator("body").inner_text()

    def svg_text(self) -> str:
        """Annotation labels are SVG text over the viewport canvas."""
        return "\n".join(self.page.locator("svg text").all_inner_texts())

    def close(self) -> None:
        self.page.close()


def test_result_series_are_listed_with_the_pdf_and_summary(browser, study) -> None:
    _, _, _, url, shots = study
    p = Page(browser, url)
    try:
        text = p.text()
        for description in (
            "LGE scar report (PDF)",
            "LGE scar summary",
            "LGE scar report",
            "LGE scar SEG",
            "LGE scar overlay",
        ):
            assert description in text, description
        # The report and the summary come before the per-slice overlays (series 9900,
        # 9901 < 9904 in the study browser).
        assert text.index("LGE scar summary") < text.index("LGE scar overlay")
        p.page.screenshot(path=shots / "study.png")
        assert p.errors == [], "\n".join(p.errors)
    finally:
        p.close()


def _coloured_pixels(png: bytes) -> int:
    """Pixels that are not grey: the segmentation fill and outline over an MR image. The
    margins hold the viewer's own coloured chrome (border, scroll bar, corner icons)."""
    import io

    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    h, w = rgb.shape[:2]
    inner = rgb[int(0.08 * h) : int(0.92 * h), int(0.08 * w) : int(0.92 * w)]
    return int(((inner.max(axis=2) - inner.min(axis=2)) > 60).sum())


def test_seg_segments_are_listed_and_drawn_on_their_slices(browser, study) -> None:
    case, volume, _, url, shots = study
    p = Page(browser, url)
    try:
        # The panel first: opening it resizes the viewport, which must not race the SEG.
        p.page.locator("[data-cy=panelSegmentation-btn]").click()
        p.page.wait_for_timeout(1000)
        p.open_series("LGE scar SEG")
        p.page.get_by_role("button", name="Yes").click(timeout=LOAD_TIMEOUT_MS)
        for label in ("LV myocardium", "Infarct (scar)", "Microvascular obstruction"):
            p.page.get_by_text(label, exact=True).first.wait_for(timeout=LOAD_TIMEOUT_MS)
        p.settle()
        # Which stored frame the viewport shows at each index, as (SOP UID, frame).
        refs = p.page.evaluate(
            """() => {
              const s = window.services;
              const id = s.viewportGridService.getActiveViewportId();
              const vp = s.cornerstoneViewportService.getCornerstoneViewport(id);
              return vp.getImageIds().map(i => {
                const m = i.match(/instances\\/([^/]+)(?:\\/frames\\/(\\d+))?/);
                return [m[1], m[2] ? Number(m[2]) : null];
              });
            }"""
        )
        slice_of = {(f.sop_instance_uid, f.frame_number): k for k, f in enumerate(volume.frames)}
        truth = segment_masks(case.labels).any(axis=-1).reshape(len(volume.frames), -1).sum(1)
        viewport = p.page.locator("canvas.cornerstone-canvas").first
        current = """() => {
          const s = window.services;
          const id = s.viewportGridService.getActiveViewportId();
          return s.cornerstoneViewportService.getCornerstoneViewport(id).getCurrentImageIdIndex();
        }"""
        # Scroll as a reader does (arrow keys over the viewport), top to bottom.
        viewport.hover()
        for _ in range(len(refs)):
            if p.page.evaluate(current) == 0:
                break
            p.page.keyboard.press("ArrowUp")
            p.page.wait_for_timeout(150)
        drawn, expected = [], []
        for step in range(len(refs)):
            index = p.page.evaluate(current)
            assert index == step
            uid, frame = refs[index]
            k = slice_of[(uid, frame if volume.is_multiframe else None)]
            p.page.wait_for_timeout(300)
            drawn.append(_coloured_pixels(viewport.screenshot()))
            expected.append(int(truth[k]))
            if truth[k] == truth.max():
                (shots / "seg.png").write_bytes(p.page.screenshot())
            p.page.keyboard.press("ArrowDown")
            p.page.wait_for_timeout(150)
        drawn_a, expected_a = np.array(drawn), np.array(expected)
        # Drawn where the labels are, in proportion; nothing where there are none.
        assert np.corrcoef(drawn_a, expected_a)[0, 1] > 0.9, (drawn, expected)
        if (expected_a == 0).any():
            assert drawn_a[expected_a == 0].max() < 0.05 * drawn_a.max(), (drawn, expected)
        assert p.errors == [], "\n".join(p.errors)
    finally:
        p.close()


def test_sr_opens_on_an_image_with_its_key_numbers(browser, study) -> None:
    """The SR viewport opens on the first measurement's image with its outline drawn;
    its arrows step through the measurements, each shown on its own slice with labels."""
    _, _, metrics, url, shots = study
    p = Page(browser, url)
    try:
        p.open_series("LGE scar report")
        # OHIF prints a measured value as value.toFixed(2) with its UCUM unit.
        expected = {
            f"Percent of left ventricle myocardium: {round(metrics['scar_percent'], 1):.2f} %",
            f"Mass: {round(metrics['scar_mass_g'], 1):.2f} g",
            f"Mass: {round(metrics['myocardium_mass_g'], 1):.2f} g",
            f"Volume: {round(metrics['mvo_ml'], 2):.2f} cm3",
            f"Number of non-viable AHA segments: {len(metrics['nonviable_segments']):.2f}",
        }
        labels = p.page.locator("svg text")
        labels.first.wait_for(timeout=LOAD_TIMEOUT_MS)
        p.settle()
        p.page.screenshot(path=shots / "sr.png")
        seen: set[str] = set()
        for _ in range(40):  # more than the report's measurements
            shown = labels.all_text_contents()
            seen.update(shown)
            if all(any(e in label for label in seen) for e in expected):
                break
            p.page.locator("[data-cy=viewport-action-arrows-right]").first.click()
            # At a reader's pace: OHIF 3.13 re-creates the viewport for each measurement
            # and throws if the next click lands while its images are still loading.
            p.settle()
        missing = [e for e in expected if not any(e in label for label in seen)]
        assert missing == [], (missing, sorted(seen))
        assert "Something went wrong" not in p.text(), p.errors
        assert p.errors == [], "\n".join(p.errors)
    finally:
        p.close()


def test_ohif_reads_the_node_itself_over_dicomweb(browser, phantom_factory, tmp_path) -> None:
    """The node as OHIF's data source: a study sent to it over C-STORE, processed, then
    read by OHIF through the node's own QIDO-RS and WADO-RS (a token added by the proxy
    that serves OHIF, as a site's reverse proxy would)."""
    from node.http.auth import new_token
    from tests.node_harness import NodeProcess, storescu

    token, sha = new_token()
    case = phantom_factory(**CASES["classic"])
    tokens = [{"name": "ohif", "role": "viewer", "sha256": sha}]
    with NodeProcess(tmp_path / "node", http={"tokens": tokens}) as node:
        storescu(node.port, case.files)
        series = str(pydicom.dcmread(case.files[0]).SeriesInstanceUID)
        node.wait_done(series)
        [(results,)] = node.query(
            "SELECT j.results_dir FROM jobs j JOIN series s ON j.series_fk = s.id "
            "WHERE s.series_uid = ? AND j.state = 'done'", series,
        )  # fmt: skip
        metrics = json.loads((Path(results) / "metrics.json").read_text())
        study = str(pydicom.dcmread(case.files[0]).StudyInstanceUID)
        with OhifServer(node.http_url, headers={"Authorization": f"Bearer {token}"}) as viewer:
            p = Page(browser, viewer.study_url(study))
            try:
                for description in ("LGE scar report (PDF)", "LGE scar summary", "LGE scar SEG"):
                    assert description in p.text(), description
                p.open_series("LGE scar report")
                wanted = f"{round(metrics['scar_percent'], 1):.2f} %"
                labels = p.page.locator("svg text")
                labels.first.wait_for(timeout=LOAD_TIMEOUT_MS)
                p.settle()
                shown = " ".join(labels.all_text_contents())
                assert f"Percent of left ventricle myocardium: {wanted}" in shown, shown
                p.page.locator("[data-cy=panelSegmentation-btn]").click()
                p.page.wait_for_timeout(1000)
                p.open_series("LGE scar SEG")
                p.page.get_by_role("button", name="Yes").click(timeout=LOAD_TIMEOUT_MS)
                p.page.get_by_text("Infarct (scar)", exact=True).first.wait_for(
                    timeout=LOAD_TIMEOUT_MS
                )
                p.settle()
                assert p.errors == [], "\n".join(p.errors)
            finally:
                p.close()
        paths = [path for path, _ in viewer.requests]
        failed = [(path, status) for path, status in viewer.requests if status != 200]
        assert failed == [], failed
        # Series metadata, image frames, the PDF through its BulkDataURI, the SEG whole.
        for kind in ("/metadata", "/frames/", "/bulk/00420011"):
            assert any(kind in path for path in paths), kind
        assert any(path.rsplit("/", 2)[-2] == "instances" for path in paths)
