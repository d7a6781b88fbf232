"""The node as a Q/R SCP: DCMTK findscu / movescu / getscu and Orthanc pull its results."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from tests.dicom_tools import require_tool
from tests.node_harness import NodeProcess, copy_study, storescu
from tests.orthanc import Orthanc, free_port

pytestmark = pytest.mark.timeout(600)

SOURCES = 14  # the phantom series
RESULTS = 4 + SOURCES  # SEG, SR, PDF report, summary page + one overlay per slice


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory, psir_classic):
    """A node that has processed one study; a storescp "workstation" and Orthanc as
    the configured move destinations."""
    work = tmp_path_factory.mktemp("qr")
    sink_port, node_port = free_port(), free_port()
    (work / "sink").mkdir()
    sink = subprocess.Popen(
        [require_tool("storescp"), "-aet", "WORKSTATION", "-od", str(work / "sink"),
         str(sink_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    pacs = Orthanc(work / "orthanc", modalities={"lge": ["LGE_NODE", "127.0.0.1", node_port]})
    dests = [
        {"name": "ws", "ae_title": "WORKSTATION", "host": "127.0.0.1", "port": sink_port,
         "sources": ["NOBODY"]},  # a move destination only: no results pushed there
        {"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs.dicom_port,
         "sources": ["NOBODY"]},
    ]  # fmt: skip
    peers = [
        {"ae_title": "SCANNER", "query": "own"},  # sees what it sent
        {"ae_title": "WS"},  # a reading workstation: everything
        {"ae_title": "ORTHANC"},
        {"ae_title": "OTHERSITE", "query": "own"},  # sent nothing: sees nothing
        {"ae_title": "STOREONLY", "query": "none"},
    ]
    node = NodeProcess(work / "node", destinations=dests, port=node_port, allowed_peers=peers)
    with pacs, node:
        study, series, files = copy_study(psir_classic.out_dir / "dicom", work / "study")
        storescu(node.port, files)
        node.wait_done(series)
        yield node, pacs, work, study, series
    sink.terminate()
    sink.wait()


def _dcmtk(
    tool: str, node: NodeProcess, keys: dict[str, str], out: Path, *extra: str, aet: str = "WS"
):
    out.mkdir(parents=True, exist_ok=True)
    args = [require_tool(tool), "-S", "-aet", aet, "-aec", "LGE_NODE", *extra]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}" if v is not None else k]
    return subprocess.run(
        [*args, "127.0.0.1", str(node.port)], capture_output=True, text=True, timeout=120,
        cwd=out,
    )  # fmt: skip


def test_findscu_at_study_series_and_image_level(held, tmp_path: Path) -> None:
    node, _, _, study, _series = held
    proc = _dcmtk("findscu", node, {"QueryRetrieveLevel": "STUDY", "PatientID": "LGEPH*",
                                   "StudyInstanceUID": "", "ModalitiesInStudy": "",
                                   "NumberOfStudyRelatedInstances": ""},
                  tmp_path / "s", "-X")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    answers = [pydicom.dcmread(p) for p in sorted((tmp_path / "s").glob("rsp*.dcm"))]
    mine = [a for a in answers if a.StudyInstanceUID == study]
    assert len(mine) == 1
    assert {"MR", "SEG", "SR"} <= set(mine[0].ModalitiesInStudy)
    assert int(mine[0].NumberOfStudyRelatedInstances) == SOURCES + RESULTS

    proc = _dcmtk("findscu", node, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": study,
                                   "SeriesInstanceUID": "", "SeriesDescription": "",
                                   "Modality": ""}, tmp_path / "r", "-X")  # fmt: skip
    series_answers = [pydicom.dcmread(p) for p in (tmp_path / "r").glob("rsp*.dcm")]
    assert {a.SeriesDescription for a in series_answers} == {
        "LGE PSIR SAX",
        "LGE scar SEG",
        "LGE scar report",
        "LGE scar overlay",
        "LGE scar summary",
        "LGE scar report (PDF)",
    }
    seg = next(a for a in series_answers if a.Modality == "SEG").SeriesInstanceUID
    proc = _dcmtk("findscu", node, {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": study,
                                   "SeriesInstanceUID": seg, "SOPInstanceUID": "",
                                   "SOPClassUID": ""}, tmp_path / "i", "-X")  # fmt: skip
    (image,) = [pydicom.dcmread(p) for p in (tmp_path / "i").glob("rsp*.dcm")]
    assert image.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"


def test_malformed_identifier_gets_a_failure_status(held, tmp_path: Path) -> None:
    node, *_ = held
    proc = _dcmtk("findscu", node, {"QueryRetrieveLevel": "PATIENTS", "PatientID": "*"},
                  tmp_path, "-v")  # fmt: skip
    said = proc.stderr.replace(" ", "").lower()
    assert "(error:datasetdoesnotmatchsopclass)" in said, proc.stderr  # 0xA900
    assert any("is not STUDY, SERIES or IMAGE" in m for m, _, _ in node.events("find_refused"))


def test_movescu_to_a_configured_destination_only(held, tmp_path: Path) -> None:
    node, _, work, study, _series = held
    keys = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study}
    ok = _dcmtk("movescu", node, keys, tmp_path / "m", "-aem", "WORKSTATION")
    assert ok.returncode == 0, ok.stderr
    received = list((work / "sink").glob("*"))
    assert len(received) == SOURCES + RESULTS
    refused = _dcmtk("movescu", node, keys, tmp_path / "x", "-aem", "EVIL")
    assert "refused:movedestinationunknown" in refused.stderr.replace(" ", "").lower()
    assert any("'EVIL' is not a configured destination" in m
               for m, _, _ in node.events("move_refused"))  # fmt: skip


def test_getscu_pulls_the_report(held, tmp_path: Path) -> None:
    node, _, _, study, _ = held
    sr_series = node.query("SELECT series_uid FROM series WHERE modality = 'SR'")[0][0]
    keys = {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": study,
            "SeriesInstanceUID": sr_series}  # fmt: skip
    proc = _dcmtk("getscu", node, keys, tmp_path / "g", "-od", str(tmp_path / "g"))
    assert proc.returncode == 0, proc.stderr
    (sr,) = [pydicom.dcmread(p) for p in (tmp_path / "g").glob("SR*")]
    assert sr.SeriesInstanceUID == sr_series and sr.Modality == "SR"


def test_orthanc_queries_and_retrieves_results_from_the_node(held) -> None:
    _node, pacs, _, study, _ = held
    query = pacs.post("/modalities/lge/query", {
        "Level": "Series", "Query": {"StudyInstanceUID": study, "Modality": "SEG"}})  # fmt: skip
    answers = pacs.get(f"/queries/{query['ID']}/answers?expand")
    assert len(answers) == 1
    pacs.post(f"/queries/{query['ID']}/retrieve", {"TargetAet": "ORTHANC", "Synchronous": True})
    kinds = {s["MainDicomTags"]["Modality"] for s in pacs.study_series(study)}
    assert kinds == {"SEG"}


def _study_answers(node: NodeProcess, out: Path, aet: str) -> tuple[int, list[str]]:
    proc = _dcmtk("findscu", node, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "",
                                   "PatientName": ""}, out, "-X", aet=aet)  # fmt: skip
    return proc.returncode, [
        str(pydicom.dcmread(p).StudyInstanceUID) for p in sorted(out.glob("rsp*.dcm"))
    ]


def test_each_peer_sees_only_its_scope(held, tmp_path: Path) -> None:
    """Any allowed peer could once C-FIND/C-GET every study from every sender. Now a
    peer with query = "own" sees the studies it sent (with their results), one that sent
    nothing sees nothing, and one with query = "none" is refused 0x0124 with a reason."""
    node, _, _, study, _series = held
    code, studies = _study_answers(node, tmp_path / "scanner", "SCANNER")
    assert code == 0 and studies == [study]
    code, studies = _study_answers(node, tmp_path / "other", "OTHERSITE")
    assert code == 0 and studies == []
    _dcmtk("getscu", node, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study},
                 tmp_path / "otherget", aet="OTHERSITE")  # fmt: skip
    assert not list((tmp_path / "otherget").glob("*")), "out-of-scope study retrieved"
    proc = _dcmtk("findscu", node, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""},
                  tmp_path / "none", "-X", "-v", aet="STOREONLY")  # fmt: skip
    assert not list((tmp_path / "none").glob("rsp*.dcm"))
    assert "Status: 0x124" in proc.stderr  # refused, not authorized
    assert any("'STOREONLY' may not query" in m for m, _, _ in node.events("find_refused"))


def test_an_association_to_another_called_ae_title_is_rejected(held) -> None:
    """The called AE title was not checked: anything was accepted as LGE_NODE."""
    from tests.node_harness import echoscu

    node = held[0]
    assert echoscu(node.port, aet="WS", aec="NOT_THE_NODE").returncode != 0
    assert echoscu(node.port, aet="WS").returncode == 0
    node.wait_for(
        lambda: any("called AE title 'NOT_THE_NODE'" in m
                    for m, _, _ in node.events("association_rejected")),
        30, "the rejection recorded",
    )  # fmt: skip
