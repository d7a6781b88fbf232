"""DICOMweb on a running node (real HTTP on loopback): STOW-RS in through the same intake
as C-STORE, QIDO-RS and WADO-RS over what it holds, STOW-RS as a destination. Clients:
`dicomweb-client` (PyPI) and a real Orthanc with its DICOMweb plugin, which pushes to
the node, pulls from it, and receives the node's results."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from node.http.auth import hash_password, new_token
from tests.node_harness import NodeProcess, copy_study, storescu
from tests.orthanc import Orthanc, free_port
from tests.system import requires
from tests.viewer_harness import DICOMWEB_PLUGIN, ORTHANC_DICOMWEB

pytestmark = [
    pytest.mark.timeout(600),
    requires(
        None if DICOMWEB_PLUGIN.is_file() else "orthanc-dicomweb is not installed", "DICOMweb tests"
    ),
]

GATEWAY, GATEWAY_SHA = new_token()  # a sending system: operator, recorded as GATEWAY
ORTHANC_TOKEN, ORTHANC_SHA = new_token()  # Orthanc's pushes, recorded as WEBPACS
READER, READER_SHA = new_token()  # a viewer
MAX_STOW_MB = 40


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("dicomweb")
    node_http = free_port()
    dicomweb = dict(ORTHANC_DICOMWEB["DicomWeb"])  # type: ignore[arg-type]
    dicomweb["Servers"] = {
        "lge": {
            "Url": f"http://127.0.0.1:{node_http}/dicom-web/",
            "HttpHeaders": {"Authorization": f"Bearer {ORTHANC_TOKEN}"},
        }
    }
    pacs = Orthanc(work / "orthanc", extra={**ORTHANC_DICOMWEB, "DicomWeb": dicomweb})
    tokens = [
        {"name": "gateway", "role": "operator", "sha256": GATEWAY_SHA, "ae_title": "GATEWAY"},
        {"name": "orthanc", "role": "operator", "sha256": ORTHANC_SHA, "ae_title": "WEBPACS"},
        {"name": "reader", "role": "viewer", "sha256": READER_SHA},
    ]
    users = [{"name": "ada", "role": "admin", "password_hash": hash_password("admin-pass-1")}]
    # dicomweb-client sends a Host header without the port: the node is told its URL.
    http = {"port": node_http, "tokens": tokens, "users": users, "max_stow_mb": MAX_STOW_MB,
            "public_url": f"http://127.0.0.1:{node_http}"}  # fmt: skip
    with pacs:
        destination = {
            "name": "webpacs", "protocol": "stow", "url": f"{pacs.url}/dicom-web",
            "sources": ["GATEWAY", "SCANNER"],
        }  # fmt: skip
        dead_url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
        nowhere = {"name": "deadweb", "protocol": "stow", "sources": ["NOBODY"],
                   "url": dead_url, "token": "t0ken"}  # fmt: skip
        node = NodeProcess(work / "node", destinations=[destination, nowhere], http=http)
        with node:
            yield node, pacs


def instances_in(node: NodeProcess, series: str) -> int:
    return node.query(
        "SELECT count(*) FROM instances i JOIN series s ON i.series_fk = s.id "
        "WHERE s.series_uid = ?", series,
    )[0][0]  # fmt: skip


def webpacs_unsent(node: NodeProcess) -> int:
    return node.query(
        "SELECT count(*) FROM outbox WHERE destination = 'webpacs' AND state != 'sent'"
    )[0][0]


def web(node: NodeProcess, token: str) -> DICOMwebClient:
    return DICOMwebClient(
        url=f"{node.http_url}/dicom-web", headers={"Authorization": f"Bearer {token}"}
    )


def http(node: NodeProcess, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=f"{node.http_url}/dicom-web", headers=headers, timeout=60)


def multipart(bodies: list[bytes], boundary: str = "b0undary") -> tuple[bytes, dict[str, str]]:
    out = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + b + b"\r\n"
        for b in bodies
    )
    return out + b"--" + boundary.encode() + b"--\r\n", {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
    }


@pytest.fixture(scope="module")
def stowed(site, phantom_factory, tmp_path_factory) -> tuple[str, str, list[Path]]:
    """A study stored by the gateway over STOW-RS (dicomweb-client) and processed."""
    node, _ = site
    case = phantom_factory(seed=11, kind="psir")
    study, series, files = copy_study(case.out_dir / "dicom", tmp_path_factory.mktemp("stow"))
    answer = web(node, GATEWAY).store_instances([pydicom.dcmread(f) for f in files])
    assert len(answer.ReferencedSOPSequence) == len(files)
    assert "FailedSOPSequence" not in answer
    assert str(answer.RetrieveURL).endswith(f"/dicom-web/studies/{study}")
    node.wait_done(series)
    return study, series, files


def test_stow_goes_the_c_store_way_and_results_go_out_over_stow(site, stowed) -> None:
    node, pacs = site
    study, series, files = stowed
    # Recorded as sent by the token's AE title: routing and query scope work as for C-STORE.
    [(sender,)] = node.query("SELECT calling_ae FROM series WHERE series_uid = ?", series)
    assert sender == "GATEWAY"
    assert instances_in(node, series) == len(files)
    # The STOW-RS destination delivered every result to Orthanc's DICOMweb.
    node.wait_for(lambda: webpacs_unsent(node) == 0, 60, "the outbox to empty")
    modalities = {s["MainDicomTags"].get("Modality") for s in pacs.study_series(study)}
    assert {"SEG", "SR", "DOC"} <= modalities
    sent = node.query(
        "SELECT count(*), min(o.host) FROM outbox o WHERE o.destination = 'webpacs' "
        "AND o.state = 'sent'"
    )
    assert sent[0][0] >= 5 and sent[0][1] == f"{pacs.url}/dicom-web"
    with httpx.Client(base_url=node.http_url, auth=("ada", "admin-pass-1")) as ada:
        audit = ada.get("/api/v1/audit").json()
        [row] = [a for a in audit["items"] if a["action"] == "stow" and a["user"] == "gateway"]
        assert row["outcome"] == "ok" and row["detail"] == f"{len(files)} stored, 0 refused"
        config = ada.get("/api/v1/config").text
        assert GATEWAY_SHA not in config


def test_qido_finds_what_the_node_holds(site, stowed) -> None:
    node, _ = site
    study, series, files = stowed
    client = web(node, READER)
    first = pydicom.dcmread(files[0])
    [found] = client.search_for_studies(search_filters={"PatientID": first.PatientID,
                                                        "StudyInstanceUID": study})  # fmt: skip
    hit = pydicom.Dataset.from_json(found)
    assert hit.StudyInstanceUID == study
    assert {"MR", "SEG", "SR"} <= set(hit.ModalitiesInStudy)
    assert hit.NumberOfStudyRelatedInstances > len(files)
    assert str(hit.RetrieveURL).endswith(f"/dicom-web/studies/{study}")
    wildcard = client.search_for_studies(
        search_filters={"PatientName": str(first.PatientName)[:3] + "*"}
    )
    assert study in {pydicom.Dataset.from_json(s).StudyInstanceUID for s in wildcard}
    all_series = [pydicom.Dataset.from_json(s) for s in client.search_for_series(study)]
    by_uid = {s.SeriesInstanceUID: s for s in all_series}
    assert by_uid[series].NumberOfSeriesRelatedInstances == len(files)
    assert by_uid[series].Modality == "MR"
    assert {s.Modality for s in all_series} >= {"MR", "SEG", "SR", "DOC"}
    one, two = (client.search_for_series(study, limit=1, offset=n) for n in (0, 1))
    assert len(one) == len(two) == 1 and one != two
    instances = client.search_for_instances(study, series)
    assert sorted(pydicom.Dataset.from_json(i).SOPInstanceUID for i in instances) == sorted(
        pydicom.dcmread(f).SOPInstanceUID for f in files
    )
    assert client.search_for_studies(search_filters={"PatientID": "nobody-has-this"}) == []
    with http(node, READER) as raw:
        odd = raw.get("/studies", params={"NoSuchKeyword": "x", "PatientID": first.PatientID})
        assert odd.status_code == 200 and "NoSuchKeyword" in odd.headers["warning"]
        assert raw.get("/studies", params={"limit": "many"}).status_code == 400
    with http(node, None) as anonymous:
        assert anonymous.get("/studies").status_code == 401


def test_wado_returns_the_instances_metadata_frames_and_bulk_data(site, stowed) -> None:
    node, _ = site
    study, series, files = stowed
    client = web(node, READER)
    sent = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in files}
    got = client.retrieve_series(study, series)
    assert len(got) == len(files)
    for ds in got:
        assert np.array_equal(ds.pixel_array, sent[ds.SOPInstanceUID].pixel_array)
    metadata = client.retrieve_series_metadata(study, series)
    assert len(metadata) == len(files)
    pixel = metadata[0]["7FE00010"]
    assert "BulkDataURI" in pixel and "InlineBinary" not in pixel
    sop = metadata[0]["00080018"]["Value"][0]
    [frame] = client.retrieve_instance_frames(study, series, sop, [1])
    assert frame == sent[sop].PixelData
    [bulk] = client.retrieve_bulkdata(pixel["BulkDataURI"])
    assert bulk == sent[sop].PixelData

    # The SEG, as a viewer reads it: metadata, then its pixel data through BulkDataURI.
    seg_series = [
        s for s in map(pydicom.Dataset.from_json, client.search_for_series(study))
        if s.Modality == "SEG"
    ]  # fmt: skip
    seg_uid = seg_series[0].SeriesInstanceUID
    [seg] = client.retrieve_series(study, seg_uid)
    [seg_meta] = client.retrieve_series_metadata(study, seg_uid)
    [seg_bulk] = client.retrieve_bulkdata(seg_meta["7FE00010"]["BulkDataURI"])
    assert seg_bulk == seg.PixelData
    assert seg_meta["00620002"]["Value"][0]["00620005"]["Value"]  # segment labels inline
    frames = int(seg.NumberOfFrames)
    [last] = client.retrieve_instance_frames(study, seg_uid, seg.SOPInstanceUID, [frames])
    bits = np.unpackbits(np.frombuffer(last, np.uint8), bitorder="little")
    expected = seg.pixel_array.reshape(frames, -1)[-1]
    assert np.array_equal(bits[: expected.size], expected)

    with http(node, READER) as raw:
        url = f"/studies/{study}/series/{series}/instances/{sop}"
        refused = raw.get(url, headers={"Accept": "application/pdf"})
        assert refused.status_code == 406
        assert raw.get(f"/studies/{study}/series/{series}/instances/1.2.3").status_code == 404
        assert raw.get(f"{url}/frames/99").status_code == 404
        implicit = raw.get(url, headers={"Accept": "multipart/related; type=application/dicom; "
                                         "transfer-syntax=1.2.840.10008.1.2"})  # fmt: skip
        assert implicit.status_code == 406  # not stored that way, and not transcoded to it


def test_stow_refuses_what_c_store_refuses_with_reasons(site, stowed, tmp_path: Path) -> None:
    node, _ = site
    study, _, files = stowed
    _, _, fresh = copy_study(files[0].parent, tmp_path / "fresh")
    good = fresh[0].read_bytes()
    truncated = fresh[1].read_bytes()[:-5000]
    other_content = pydicom.dcmread(files[2])
    other_content.PatientComments = "changed after sending"
    buffer = io.BytesIO()
    other_content.save_as(buffer, enforce_file_format=True)
    body, headers = multipart([good, truncated, buffer.getvalue(), b"not dicom at all"])
    with http(node, GATEWAY) as gateway:
        answer = gateway.post("/studies", content=body, headers=headers)
        assert answer.status_code == 202, answer.text
        payload = answer.json()
        assert len(payload["00081199"]["Value"]) == 1
        reasons = sorted(f["00081197"]["Value"][0] for f in payload["00081198"]["Value"])
        assert reasons == sorted([0xC000, 0x0111, 0xC000])
        warnings = answer.headers.get_list("warning")
        assert any("part 2" in w and "pixel data" in w.lower() for w in warnings), warnings
        assert any("part 3" in w and "already stored with other content" in w for w in warnings)

        # To a study's URL, an instance of another study is refused (0xA900).
        body, headers = multipart([fresh[2].read_bytes()])
        wrong = gateway.post(f"/studies/{study}", content=body, headers=headers)
        assert wrong.status_code == 409
        [failed] = wrong.json()["00081198"]["Value"]
        assert failed["00081197"]["Value"] == [0xA900]

        # Results are the node's own: nobody writes into them.
        seg = next(
            s for s in web(node, READER).search_for_series(study)
            if s["00080060"]["Value"] == ["SEG"]
        )  # fmt: skip
        forged = pydicom.dcmread(fresh[3])
        forged.StudyInstanceUID = study
        forged.SeriesInstanceUID = seg["0020000E"]["Value"][0]
        buffer = io.BytesIO()
        forged.save_as(buffer, enforce_file_format=True)
        body, headers = multipart([buffer.getvalue()])
        into_results = gateway.post("/studies", content=body, headers=headers)
        assert into_results.status_code == 409
        assert into_results.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0124]

        not_multipart = gateway.post(
            "/studies", content=good, headers={"Content-Type": "application/dicom"}
        )
        assert not_multipart.status_code == 415
        cut, headers = multipart([good])
        assert gateway.post("/studies", content=cut[:-30], headers=headers).status_code == 400
        huge = gateway.post("/studies", content=b"x" * ((MAX_STOW_MB + 1) * 2**20), headers=headers)
        assert huge.status_code == 413
    with http(node, READER) as reader:
        assert reader.post("/studies", content=body, headers=headers).status_code == 403
    with http(node, None) as anonymous:
        assert anonymous.post("/studies", content=body, headers=headers).status_code == 401
    refused = node.events("instance_refused")
    assert any("pixel data" in str(e).lower() for e in refused)
    assert node.alive()


def test_orthanc_pushes_over_stow_and_pulls_back_over_wado(
    site, phantom_factory, tmp_path: Path
) -> None:
    node, pacs = site
    case = phantom_factory(seed=12, kind="magnitude")
    study, series, files = copy_study(case.out_dir / "dicom", tmp_path / "push")
    pacs.upload(files)
    [orthanc_study] = pacs.post(
        "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study}}
    )
    pushed = pacs.post("/dicom-web/servers/lge/stow", {"Resources": [orthanc_study]})
    assert pushed is not None
    node.wait_done(series)
    [(sender,)] = node.query("SELECT calling_ae FROM series WHERE series_uid = ?", series)
    assert sender == "WEBPACS"  # Orthanc's token; not a destination source, so no results
    assert {s["MainDicomTags"].get("Modality") for s in pacs.study_series(study)} == {"MR"}

    # Orthanc finds the node's results over QIDO-RS and pulls them over WADO-RS.
    found = pacs.post("/dicom-web/servers/lge/get", {"Uri": f"/studies/{study}/series"})
    modalities = {s["00080060"]["Value"][0] for s in found}
    assert {"MR", "SEG", "SR"} <= modalities
    pacs.post("/dicom-web/servers/lge/retrieve", {"Resources": [{"Study": study}]})
    pulled = {s["MainDicomTags"].get("Modality") for s in pacs.study_series(study)}
    assert {"MR", "SEG", "SR", "DOC"} <= pulled


def test_a_stow_acknowledged_survives_a_crash(site, phantom_factory, tmp_path: Path) -> None:
    node, _ = site
    case = phantom_factory(seed=13, kind="psir")
    study, series, files = copy_study(case.out_dir / "dicom", tmp_path / "crash")
    body, headers = multipart([f.read_bytes() for f in files])
    with http(node, GATEWAY) as gateway:
        assert gateway.post(f"/studies/{study}", content=body, headers=headers).status_code == 200
    node.kill()  # at once: the indexer may not have seen them yet
    node.start()
    node.wait_done(series)
    assert instances_in(node, series) == len(files)
    [(sender,)] = node.query("SELECT calling_ae FROM series WHERE series_uid = ?", series)
    assert sender == "GATEWAY"


def test_a_stow_destination_that_is_down_keeps_its_rows_with_the_reason(site, stowed) -> None:
    node, _ = site
    _, series, _ = stowed
    with httpx.Client(base_url=node.http_url, auth=("ada", "admin-pass-1"), timeout=30) as ada:
        [job] = [j for j in ada.get(f"/api/v1/series/{series}").json()["jobs"]
                 if j["state"] == "done"][:1]  # fmt: skip
        queued = ada.post(f"/api/v1/jobs/{job['id']}/resend", params={"destination": "deadweb"})
        assert queued.status_code == 200, queued.text

        def failed() -> dict | None:
            rows = {d["name"]: d for d in ada.get("/api/v1/destinations").json()}
            dead = rows["deadweb"]
            return dead if dead["last_error"] else None

        dead = node.wait_for(failed, 60, "the dead destination to report an error")
        assert dead["protocol"] == "stow" and dead["pending"] >= 5 and dead["sent"] == 0
        assert "STOW-RS to http://127.0.0.1:" in dead["last_error"]
        assert "ConnectError" in dead["last_error"]
        webpacs = {d["name"]: d for d in ada.get("/api/v1/destinations").json()}["webpacs"]
        assert webpacs["sent"] >= 5  # the other destination is unaffected
    assert node.alive()


def test_scanner_c_store_and_stow_land_in_the_same_index(site, phantom_factory, tmp_path) -> None:
    """The same instance over C-STORE after STOW-RS is a harmless retry (one row)."""
    node, _ = site
    case = phantom_factory(seed=14, kind="psir")
    _, series, files = copy_study(case.out_dir / "dicom", tmp_path / "both")
    body, headers = multipart([f.read_bytes() for f in files[:3]])
    with http(node, GATEWAY) as gateway:
        assert gateway.post("/studies", content=body, headers=headers).status_code == 200
    storescu(node.port, files)
    node.wait_done(series)
    assert instances_in(node, series) == len(files)
