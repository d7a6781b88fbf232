"""Faults a PACS administrator will meet: the PACS down, the node killed (SIGKILL) while
receiving and while processing, TLS, retention. Real processes, real sockets."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE

from node.store.storage import Storage
from tests.dicom_tools import require_tool
from tests.node_harness import NodeProcess, copy_study, echoscu, reports_for, storescu
from tests.orthanc import Orthanc, free_port

pytestmark = pytest.mark.timeout(600)

# What one processed series sends back besides one overlay per slice: SEG, SR, the PDF
# report and the summary page.
RESULTS_PER_STUDY = 4


def _pacs_entry(pacs: Orthanc) -> dict:
    return {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs.dicom_port}


def test_pacs_down_results_wait_and_are_delivered_when_it_is_back(
    tmp_path: Path, psir_classic
) -> None:
    pacs = Orthanc(tmp_path / "orthanc")  # configured, not started: the PACS is down
    with NodeProcess(tmp_path / "node", destinations=[_pacs_entry(pacs)]) as node:
        study, series, files = copy_study(psir_classic.out_dir / "dicom", tmp_path / "s")
        storescu(node.port, files)
        node.wait_for(lambda: (node.series_state(series) or ("",))[0] == "done", 120, "job")
        node.wait_for(
            lambda: node.query("SELECT min(attempts) FROM outbox")[0][0] >= 2, 60,
            "at least two failed send attempts",
        )  # fmt: skip
        (error,) = node.query("SELECT DISTINCT last_error FROM outbox")[0]
        assert "cannot associate with ORTHANC@127.0.0.1" in error
        assert node.unsent() == RESULTS_PER_STUDY + len(files)
        with pacs:
            node.wait_done(series, timeout=60)
            assert len(reports_for(pacs, study, series)) == 1
            kinds = {s["MainDicomTags"]["Modality"] for s in pacs.study_series(study)}
            assert {"SEG", "SR", "DOC"} <= kinds
        assert "send_failed" in node.log() and "results_sent" in node.log()


def test_sigkill_while_receiving_and_while_processing_loses_nothing_and_sends_once(
    tmp_path: Path, psir_classic, phantom_factory
) -> None:
    """Kill -9 in the middle of an association, restart, and again in the middle of a
    job: every completely received series is processed exactly once and delivered."""
    with Orthanc(tmp_path / "orthanc") as pacs:
        node = NodeProcess(tmp_path / "node", destinations=[_pacs_entry(pacs)], stable_age_s=3.0)
        node.start()
        # Series A arrives completely; series B is half sent when the node dies.
        study_a, series_a, files_a = copy_study(psir_classic.out_dir / "dicom", tmp_path / "a")
        other = phantom_factory(seed=31, kind="magnitude")
        _, series_b, files_b = copy_study(other.out_dir / "dicom", tmp_path / "b")
        storescu(node.port, files_a)
        ae = AE(ae_title="SCANNER")
        first = pydicom.dcmread(files_b[0], stop_before_pixels=True)
        ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="LGE_NODE")
        assert assoc.is_established
        for path in files_b[:5]:
            assert assoc.send_c_store(path).Status == 0x0000
        node.kill()  # mid-association, before A was quiet for stable_age
        assoc.abort()
        assert node.jobs(series_a) == []
        node.start()
        storescu(node.port, files_b)  # the scanner's retry: the whole series again
        node.wait_done(series_a)
        node.wait_done(series_b)
        assert [j[1] for j in node.jobs(series_a)] == ["done"]
        assert len(reports_for(pacs, study_a, series_a)) == 1
        assert node.query("SELECT n_instances FROM series WHERE series_uid = ?", series_b)[0][
            0
        ] == len(files_b)

        # Now die while a job runs.
        study_c, series_c, files_c = copy_study(psir_classic.out_dir / "dicom", tmp_path / "c")
        storescu(node.port, files_c)
        node.wait_for(
            lambda: [j for j in node.jobs(series_c) if j[1] == "running"], 60, "job C running"
        )
        node.kill()
        node.start()
        node.wait_done(series_c)
        ((_, state, attempts, _),) = node.jobs(series_c)
        assert (state, attempts) == ("done", 2)  # the same job, run again after restart
        assert len(reports_for(pacs, study_c, series_c)) == 1
        assert "jobs_recovered=1" in node.log()
        node.stop()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "node.key", tmp_path / "node.crt"
    subprocess.run(
        [require_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


def test_dicom_tls_with_a_self_signed_certificate(tmp_path: Path, psir_classic) -> None:
    key, cert = _self_signed(tmp_path)
    tls = {"enabled": True, "certificate": str(cert), "private_key": str(key)}
    with NodeProcess(tmp_path / "node", tls=tls) as node:
        # DCMTK over TLS, trusting the node's certificate (client key: the same pair).
        args = ["+tls", str(key), str(cert), "+cf", str(cert)]
        ok = echoscu(node.port, extra=args)
        assert ok.returncode == 0, ok.stderr
        _, series, files = copy_study(psir_classic.out_dir / "dicom", tmp_path / "s")
        storescu(node.port, files, extra=args)
        node.wait_for(lambda: (node.series_state(series) or ("",))[0] == "done", 120, "job")
        # Plain TCP to the TLS port gets no association.
        assert echoscu(node.port).returncode != 0


def test_results_go_over_parallel_associations_each_object_once(
    tmp_path: Path, psir_classic
) -> None:
    """A destination with ``associations = 3`` gets a study's results over three
    associations at once (DCMTK storescp forking one process per association)."""
    sink_port = free_port()
    sink_dir = tmp_path / "sink"
    sink_dir.mkdir()
    sink_log = (tmp_path / "sink.log").open("w")
    sink = subprocess.Popen(
        [require_tool("storescp"), "-v", "--fork", "-aet", "SINK", "-od", str(sink_dir),
         str(sink_port)],
        stdout=sink_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        dest = {"name": "sink", "ae_title": "SINK", "host": "127.0.0.1", "port": sink_port,
                "associations": 3}  # fmt: skip
        with NodeProcess(tmp_path / "node", destinations=[dest]) as node:
            _, series, files = copy_study(psir_classic.out_dir / "dicom", tmp_path / "s")
            storescu(node.port, files)
            node.wait_done(series)
            sent = node.query("SELECT sop_uid FROM outbox WHERE sent_at IS NOT NULL")
        expected = RESULTS_PER_STUDY + len(files)
        assert len(sent) == expected
        stored = sorted(
            pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in sink_dir.iterdir()
        )
        assert stored == sorted(uid for (uid,) in sent), "each object once"
        associations = (tmp_path / "sink.log").read_text().count("Association Received")
        assert associations == 3, f"{associations} associations for one round"
    finally:
        sink.terminate()
        sink.wait(10)
        sink_log.close()


def test_retention_purges_delivered_and_skipped_keeps_failed(tmp_path: Path, psir_classic) -> None:
    sink_port = free_port()
    sink_dir = tmp_path / "sink"
    sink_dir.mkdir()
    sink = subprocess.Popen(
        [require_tool("storescp"), "-aet", "SINK", "-od", str(sink_dir), str(sink_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        dest = {"name": "sink", "ae_title": "SINK", "host": "127.0.0.1", "port": sink_port}
        storage = {"retention_hours": 4 / 3600, "purge_interval_s": 1.0}  # 4 s
        with NodeProcess(tmp_path / "node", destinations=[dest], storage=storage) as node:
            _, done_uid, done = copy_study(psir_classic.out_dir / "dicom", tmp_path / "d")
            _, skip_uid, skip = copy_study(
                psir_classic.out_dir / "dicom", tmp_path / "k", SeriesDescription="cine"
            )
            _, bad_uid, bad = copy_study(psir_classic.out_dir / "dicom", tmp_path / "b")
            ds = pydicom.dcmread(bad[2])
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
            ds.save_as(bad[2], enforce_file_format=True)
            storescu(node.port, done + skip + bad)
            # Not wait_done: with a 4 s retention the series may be purged the moment its
            # results are delivered, so its state can skip past "done" between two polls.
            node.wait_for(
                lambda: node.query("SELECT count(*) FROM jobs WHERE state='done'")[0][0] == 1
                and node.unsent() == 0,
                120, "results delivered",
            )  # fmt: skip
            results = Path(node.query("SELECT results_dir FROM jobs WHERE state='done'")[0][0])
            # Rows are marked purged first, files go right after the commit.
            node.wait_for(
                lambda: not results.exists() and all(
                    (node.series_state(u) or ("",))[0] == "purged" for u in (done_uid, skip_uid)
                ),
                60, "retention",
            )  # fmt: skip
            held = node.query(
                "SELECT s.series_uid, count(i.id) FROM series s LEFT JOIN instances i"
                " ON i.series_fk = s.id GROUP BY s.id"
            )
            counts = dict(held)
            assert counts[done_uid] == 0 and counts[skip_uid] == 0
            assert node.series_state(bad_uid)[0] == "failed" and counts[bad_uid] == len(bad)
            files = list((node.data_dir / "instances").rglob("*.dcm"))
            assert len(files) == len(bad)  # only the failed series' files remain
            # delivered before purge
            assert len(list(sink_dir.iterdir())) == RESULTS_PER_STUDY + len(done)
            assert echoscu(node.port).returncode == 0
    finally:
        sink.terminate()
        sink.wait()


def test_instances_left_as_temp_files_by_a_power_loss_are_restored(
    tmp_path: Path, psir_classic
) -> None:
    """An instance is fsync'ed under a temp name, then renamed and acknowledged; a power
    loss can lose the rename. At start-up a complete temp file is put in place and
    indexed, a cut-off one removed, so the acknowledged series is processed whole."""
    node = NodeProcess(tmp_path / "node")
    storage = Storage(node.data_dir)
    study, series, files = copy_study(psir_classic.out_dir / "dicom", tmp_path / "s")
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        final = storage.instance_path(study, series, str(ds.SOPInstanceUID))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.4242.{i:x}.tmp")
        tmp.write_bytes(path.read_bytes())
    # A 15th instance, cut off in its pixel data: never acknowledged, must not appear.
    extra = pydicom.dcmread(files[0])
    extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    extra.save_as(buffer, enforce_file_format=True)
    final = storage.instance_path(study, series, str(extra.SOPInstanceUID))
    final.with_name(f".{final.name}.4243.0.tmp").write_bytes(buffer.getvalue()[:-3000])
    with node:
        node.wait_done(series, timeout=180)
        assert "temp_files_restored=14" in node.log()
        assert "temp_files_removed=1" in node.log()
        assert node.query(
            "SELECT COUNT(*) FROM instances i JOIN series s ON i.series_fk = s.id "
            "WHERE s.series_uid = ?", series
        ) == [(14,)]  # fmt: skip
        assert [j[1] for j in node.jobs(series)] == ["done"]
    assert not list(storage.instances.rglob(".*.tmp"))


def test_a_header_value_too_big_for_the_index_stops_neither_ingest_nor_restart(
    tmp_path: Path, psir_classic
) -> None:
    """An InstanceNumber of 20 digits (not a valid IS, beyond any integer column) once
    stopped the indexer for good and then the node's start-up. Now the instance is
    stored and indexed without the unusable number, the next instances are indexed too,
    the series is processed, and a restart is clean."""
    node = NodeProcess(tmp_path / "node")
    _study, series, files = copy_study(psir_classic.out_dir / "dicom", tmp_path / "s")
    poisoned = pydicom.dcmread(files[0])
    poisoned["InstanceNumber"].value = "99999999999999999999"  # 20 digits, as sent
    poisoned.save_as(files[0], enforce_file_format=True)
    with node:
        storescu(node.port, files[:1])
        storescu(node.port, files[1:])  # after it: must be indexed as well
        node.wait_done(series, timeout=180)
        count = "SELECT COUNT(*) FROM instances i JOIN series s ON i.series_fk = s.id "
        assert node.query(count + "WHERE s.series_uid = ?", series) == [(len(files),)]
        assert node.query(
            "SELECT instance_number FROM instances WHERE sop_uid = ?", str(poisoned.SOPInstanceUID)
        ) == [(None,)]  # fmt: skip
        assert node.stop() == 0
        node.start()  # the restart that used to fail with OverflowError
        assert node.alive() and echoscu(node.port).returncode == 0
        assert node.query(count + "WHERE s.series_uid = ?", series) == [(len(files),)]
        assert [j[1] for j in node.jobs(series)] == ["done"]


def test_a_row_the_index_refuses_is_quarantined_not_lost_and_the_rest_is_indexed(
    tmp_path: Path, psir_classic
) -> None:
    """Defence in depth below the header checks: if the database refuses one instance's
    row, that instance alone is set aside (file moved to quarantine/, event recorded),
    and the others of the same batch are indexed."""
    from dataclasses import replace

    from node.store.ingest import Indexer, Journal, describe
    from node.store.records import Received
    from node.store.repository import Repository

    storage = Storage(tmp_path / "data")
    repo = Repository(f"sqlite:///{tmp_path / 'data' / 'index.db'}")
    received = []
    for f in sorted((psir_classic.out_dir / "dicom").glob("*.dcm"))[:3]:
        data = f.read_bytes()
        info = describe(data)
        path = storage.instance_path(info.study_uid, info.series_uid, info.sop_uid)
        storage.write_atomic(path, data)
        received.append(Received(info, str(path), len(data), "SCANNER", "127.0.0.1", False, 0.0))
    # A value no integer column holds: what a header check that lets one through would give.
    received[1] = replace(received[1], info=replace(received[1].info, instance_number=2**70))
    indexer = Indexer(repo, Journal(storage.root / "ingest.journal"), lambda r, o: None,
                      storage=storage)  # fmt: skip
    indexer.start()
    for r in received:
        indexer.submit(r)
    assert indexer.flush(30)
    indexer.stop()
    assert repo.known_paths() == {received[0].path, received[2].path}
    assert not Path(received[1].path).exists()
    (kept,) = (storage.root / "quarantine").iterdir()
    assert kept.read_bytes() == (sorted((psir_classic.out_dir / "dicom").glob("*.dcm"))[1]
                                 .read_bytes())  # fmt: skip
    (ev,) = [e for e in repo.snapshot().events if e.kind == "instance_not_indexed"]
    assert "cannot be indexed" in ev.message and "quarantine" in ev.message
    repo.close()
