"""`lge-node demo`: the whole product on one machine, over real DICOM.

A synthetic LGE study is made, the node starts (in this process), a receiving peer
starts (Orthanc when installed, else a pynetdicom storage SCP), the study is sent to the
node with a DICOM client (DCMTK storescu when installed, else pynetdicom), and the demo
waits until the node has processed it and the peer has confirmed every result.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.config import Config, Destination
from node.demo.peers import Orthanc, free_port, orthanc_binary, system_tool


@dataclass
class DemoResult:
    study_uid: str
    series_uid: str
    metrics: dict[str, Any]
    results_dir: Path
    peer: str  # how to look at what the peer received
    sender: str
    console: str  # the operator console's URL and the demo login
    seconds: dict[str, float] = field(default_factory=dict)
    truth: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _storage_scp(folder: Path, ae_title: str, port: int) -> Iterator[None]:
    """A bare pynetdicom storage SCP: the fallback peer when Orthanc is not installed."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    folder.mkdir(parents=True, exist_ok=True)

    def on_store(event: Any) -> int:
        sop = str(event.request.AffectedSOPInstanceUID)
        (folder / f"{sop}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title=ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        yield
    finally:
        server.shutdown()


def _send(files: list[Path], port: int, ae_title: str) -> str:
    """Send like a scanner would; returns the client used."""
    storescu = system_tool("storescu")
    if storescu:
        subprocess.run(
            [storescu, "-aet", "SCANNER", "-aec", ae_title, "127.0.0.1", str(port),
             *[str(f) for f in files]],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        return "DCMTK storescu"
    import pydicom
    from pynetdicom import AE

    ae = AE(ae_title="SCANNER")
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        raise RuntimeError("the node refused the demo association")
    try:
        for f in files:
            status = assoc.send_c_store(f)
            if not status or status.Status != 0x0000:
                raise RuntimeError(f"C-STORE of {f.name} failed")
    finally:
        assoc.release()
    return "pynetdicom C-STORE SCU"


def run_demo(
    workdir: Path, seed: int = 7, progress: Callable[[str], None] = lambda _: None,
    use_orthanc: bool | None = None, timeout_s: float = 300.0,
    hold: Callable[[str, str], None] | None = None,
) -> DemoResult:  # fmt: skip
    """Run the demo in ``workdir``; ``hold(peer, console)``, if given, runs before
    tear-down."""
    from node.http.auth import hash_password
    from node.server import Node
    from node.store.records import JobState
    from pipeline.research.phantom import PhantomSpec, make_phantom

    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    workdir.mkdir(parents=True, exist_ok=True)
    progress("making a synthetic LGE study")
    case = make_phantom(workdir / "study", PhantomSpec(seed=seed, kind="psir"))
    files = sorted((workdir / "study" / "dicom").glob("*.dcm"))
    seconds["phantom"] = time.perf_counter() - t0

    node_port = free_port()
    orthanc = (orthanc_binary() is not None) if use_orthanc is None else use_orthanc
    peer_port = free_port()
    if orthanc:
        pacs: Orthanc | None = Orthanc(
            workdir / "orthanc", modalities={"lge": ["LGE_NODE", "127.0.0.1", node_port]},
            dicom_port=peer_port,
        )  # fmt: skip
        peer_cm: Any = pacs
        peer_ae = "ORTHANC"
    else:
        pacs = None
        peer_cm = _storage_scp(workdir / "received", "DEMO_PACS", peer_port)
        peer_ae = "DEMO_PACS"
    # The console gets a throw-away admin for this run only (printed, never stored as text).
    http_port, password = free_port(), secrets.token_urlsafe(9)
    config = Config(
        dicom={"ae_title": "LGE_NODE", "bind_address": "127.0.0.1", "port": node_port},
        storage={"data_dir": workdir / "node", "stable_age_s": 2.0},
        destinations=[Destination(name="pacs", ae_title=peer_ae, host="127.0.0.1",
                                  port=peer_port)],
        dispatch={"retry_initial_s": 1.0, "retry_max_s": 5.0},
        http={"port": http_port, "users": [
            {"name": "demo", "role": "admin", "password_hash": hash_password(password)}
        ]},
    )  # fmt: skip
    console = f"http://127.0.0.1:{http_port}/ (user demo, password {password})"
    progress("starting the node and the receiving peer")
    node = Node(config)
    with peer_cm:
        node.start()
        try:
            node.wait_ready()
            if node.workers[0].load_error:
                raise RuntimeError(f"models did not load: {node.workers[0].load_error}")
            seconds["start"] = time.perf_counter() - t0 - seconds["phantom"]
            progress(f"sending {len(files)} images to the node over DICOM")
            t_send = time.perf_counter()
            sender = _send(files, node_port, "LGE_NODE")
            progress("waiting for the node (series quiet for 2 s, then processing)")
            series_uid = _uids(files[0])[1]
            deadline = time.monotonic() + timeout_s
            while True:
                job, pending = node.repository.latest_result(series_uid)
                if job is not None and job.state == JobState.FAILED:
                    raise RuntimeError(f"the job failed: {job.error}")
                if job is not None and pending == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no result within {timeout_s:.0f} s; see lge-node status")
                time.sleep(0.2)
            assert job is not None
            seconds["send_to_results_delivered"] = time.perf_counter() - t_send
            study_uid = _uids(files[0])[0]
            if pacs is not None:
                study = pacs.post(
                    "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}
                )
                peer = f"Orthanc {pacs.url}/app/explorer.html#study?uuid={study[0]}"
                peer += f" (DICOM {peer_ae}@127.0.0.1:{peer_port})"
            else:
                peer = f"storage SCP folder {workdir / 'received'}"
            if hold is not None:
                hold(peer, console)
        finally:
            node.stop()
    seconds["total"] = time.perf_counter() - t0
    return DemoResult(
        study_uid=study_uid,
        series_uid=series_uid,
        metrics=json.loads(job.metrics),
        results_dir=Path(job.results_dir),
        peer=peer,
        sender=sender,
        console=console,
        seconds=seconds,
        truth=case.truth.to_dict(),
    )


def _uids(path: Path) -> tuple[str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
