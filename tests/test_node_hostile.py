"""Hostile peers and a failing machine, against ``lge-node serve`` on loopback: each test
reproduces a failure found by trying (issue: hardening) and asserts what a PACS
administrator relies on instead. Real processes, real sockets, DCMTK as the peer."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.dicom_tools import require_tool
from tests.node_harness import NodeProcess, echoscu

pytestmark = pytest.mark.timeout(300)

NO_WORKERS = {"workers": 0}  # receive-only: these tests need no models loaded
ALLOWED = [{"ae_title": "SCANNER"}, {"ae_title": "ECHOSCU"}, {"ae_title": "FINDSCU"}]


def findscu(port: int, aet: str, timeout_s: int = 90) -> subprocess.CompletedProcess:
    """A C-FIND at STUDY level for every patient name (what a snooping peer would ask)."""
    return subprocess.run(
        [require_tool("findscu"), "-v", "-aet", aet, "-aec", "LGE_NODE", "-S", "-to", "5",
         "-ta", str(timeout_s), "-td", str(timeout_s),
         "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=*", "-k", "StudyInstanceUID",
         "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=timeout_s + 30, check=False,
    )  # fmt: skip


def test_access_control_holds_while_the_index_is_locked_and_the_rejection_is_recorded_later(
    tmp_path: Path, psir_classic
) -> None:
    """The index held under an exclusive lock by another process for longer than the
    node's busy timeout once let an unknown AE associate, echo and C-FIND patient names.
    Access decisions must not wait for the database: the stranger is rejected at once,
    allowed peers keep being answered, and the rejection reaches the index when it is
    free again."""
    node = NodeProcess(tmp_path / "node", allowed_peers=ALLOWED, wait_models=False, jobs=NO_WORKERS)
    with node:
        from tests.node_harness import storescu

        storescu(node.port, sorted((psir_classic.out_dir / "dicom").glob("*.dcm"))[:2])
        node.wait_for(lambda: node.query("SELECT COUNT(*) FROM instances") == [(2,)], 60,
                      "instances indexed")  # fmt: skip
        lock = sqlite3.connect(node.data_dir / "index.db", timeout=1, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            t0 = time.monotonic()
            stranger = echoscu(node.port, aet="STRANGER", extra=["-ta", "90"])
            elapsed = time.monotonic() - t0
            assert stranger.returncode != 0
            assert "reject" in stranger.stderr.lower()
            assert elapsed < 10, f"the rejection waited {elapsed:.0f} s for the index"
            snoop = findscu(node.port, "SNOOPER")
            assert snoop.returncode != 0 and "reject" in snoop.stderr.lower()
            assert "Phantom" not in snoop.stdout + snoop.stderr  # no patient name leaked
            assert echoscu(node.port, aet="ECHOSCU").returncode == 0  # allowed: answered
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        node.wait_for(
            lambda: {m.split("'")[1] for m, _, _ in node.events("association_rejected")}
            >= {"STRANGER", "SNOOPER"},
            60, "the rejections recorded once the index is free",
        )  # fmt: skip
        assert node.alive()


def _send_raw(port: int, files: list[Path], aet: str = "SCANNER") -> list[int | None]:
    """C-STORE each file's bytes exactly as they are on disk (pynetdicom's chunked mode:
    no decoding, no re-encoding, no padding), all in one association; the status of each
    (None: no response, the association was gone)."""
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import MRImageStorage

    _config.STORE_SEND_CHUNKED_DATASET = True
    strict_uid = _config.VALIDATORS["UI"]
    _config.VALIDATORS["UI"] = lambda value: (True, "")  # a careless sender
    try:
        ae = AE(ae_title=aet)
        ae.add_requested_context(MRImageStorage, ["1.2.840.10008.1.2.1"])
        assoc = ae.associate("127.0.0.1", port, ae_title="LGE_NODE")
        assert assoc.is_established
        statuses: list[int | None] = []
        for f in files:
            if not assoc.is_established:
                statuses.append(None)
                continue
            status = assoc.send_c_store(f)
            statuses.append(int(status.Status) if "Status" in status else None)
        if assoc.is_established:
            assoc.release()
        return statuses
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        _config.VALIDATORS["UI"] = strict_uid


def _pixel_offset(data: bytes) -> int:
    i = data.rfind(b"\xe0\x7f\x10\x00OW")
    assert i > 0
    return i


def test_images_without_whole_pixel_data_are_refused_and_a_bad_uid_fails_only_its_instance(
    tmp_path: Path, psir_classic
) -> None:
    """Once acknowledged: an MR image without Pixel Data and one whose Pixel Data has an
    odd length one byte short of the image. A 200-character SOP Instance UID aborted the
    whole association, so the instances after it were lost to the sender's retry logic.
    Each bad instance now gets a failure status of its own, with a recorded reason, and
    the instances around it in the same association are stored."""
    import pydicom
    from pydicom.uid import generate_uid

    src = sorted((psir_classic.out_dir / "dicom").glob("*.dcm"))
    work = tmp_path / "files"
    work.mkdir()

    def variant(name: str, i: int, edit) -> Path:  # type: ignore[no-untyped-def]
        ds = pydicom.dcmread(src[i])
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        edit(ds)
        path = work / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path

    good_first = variant("good_first", 0, lambda ds: None)
    no_pixels = variant("no_pixels", 1, lambda ds: delattr(ds, "PixelData"))
    odd = variant("odd", 2, lambda ds: None)
    data = odd.read_bytes()
    at = _pixel_offset(data)
    length = int.from_bytes(data[at + 8 : at + 12], "little")
    # one byte short and odd, as a broken sender writes it (pydicom itself would pad)
    odd.write_bytes(data[: at + 8] + (length - 1).to_bytes(4, "little") + data[at + 12 : -1])
    long_uid = "1.2." + ".".join(["123456789"] * 20)[:196]
    too_long = variant("too_long", 3, lambda ds: None)
    ds = pydicom.dcmread(too_long)
    ds.SOPInstanceUID = long_uid
    ds.file_meta.MediaStorageSOPInstanceUID = long_uid
    ds.save_as(too_long, enforce_file_format=True)
    good_last = variant("good_last", 4, lambda ds: None)

    node = NodeProcess(tmp_path / "node", wait_models=False, jobs=NO_WORKERS)
    with node:
        statuses = _send_raw(node.port, [good_first, no_pixels, odd, too_long, good_last])
        assert statuses[0] == 0x0000 and statuses[4] == 0x0000, statuses
        for s in statuses[1:4]:
            assert s is not None and s != 0x0000 and (s & 0xF000) in (0xA000, 0xC000), statuses
        node.wait_for(lambda: node.query("SELECT COUNT(*) FROM instances") == [(2,)], 60,
                      "the two good instances indexed")  # fmt: skip
        reasons = " | ".join(m for m, _, _ in node.events("instance_refused"))
        assert "no Pixel Data" in reasons
        assert "odd" in reasons
        assert "SOPInstanceUID" in reasons or "Affected SOP Instance UID" in reasons
        assert echoscu(node.port).returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real, small filesystem (tmpfs) for the data folder; resizable while mounted."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()

    def mount(size_mb: int, remount: bool = False) -> None:
        opts = f"{'remount,' if remount else ''}size={size_mb}m"
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mountpoint)],
                              capture_output=True, text=True, check=False)  # fmt: skip
        if done.returncode != 0:
            if remount:
                raise AssertionError(done.stderr)
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")

    yield mountpoint, mount
    subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)


def _studies(psir_classic, tmp_path: Path, n: int) -> list[Path]:  # type: ignore[no-untyped-def]
    from tests.node_harness import copy_study

    files: list[Path] = []
    for i in range(n):
        files += copy_study(psir_classic.out_dir / "dicom", tmp_path / f"copy{i}")[2]
    return files


def test_a_full_disk_refuses_with_out_of_resources_leaves_no_temp_file_and_recovers(
    tmp_path: Path, psir_classic, small_disk
) -> None:
    """On a full disk the node answered 0xA700 but left temporary files behind. Now: no
    temp file outlives a refused store, the node keeps serving, and once there is space
    again the same instances are stored and indexed."""
    disk, mount = small_disk
    mount(3)
    files = _studies(psir_classic, tmp_path, 4)  # 56 instances, ~5 MB: more than fits
    storage = {"data_dir": str(disk / "data"), "min_free_mb": 0}
    node = NodeProcess(tmp_path / "node", wait_models=False, jobs=NO_WORKERS, storage=storage)
    node.data_dir = disk / "data"
    with node:
        statuses = _send_raw(node.port, files)
        refused = [f for f, s in zip(files, statuses, strict=True) if s != 0x0000]
        assert refused, "the small disk should have filled up"
        assert all(s == 0xA700 for s in statuses if s != 0x0000), statuses
        assert not list((disk / "data").rglob("*.tmp")), "temp files left behind"
        assert echoscu(node.port).returncode == 0
        # The reason is logged at once; the index, itself on the full disk, records it as
        # soon as there is room again (nothing is dropped meanwhile).
        logged = [ln for ln in node.log().splitlines() if "node.events instance_refused " in ln]
        assert logged and all("status=0xA700" in ln for ln in logged)
        assert any("No space left on device" in ln or "disk" in ln for ln in logged)
        mount(64, remount=True)
        node.wait_for(
            lambda: len(node.events("instance_refused")) == len(refused), 60,
            "every refusal recorded once the disk has room",
        )  # fmt: skip
        reasons = " | ".join(m for m, _, _ in node.events("instance_refused"))
        assert "No space left on device" in reasons or "disk" in reasons.lower()
        assert set(_send_raw(node.port, refused)) == {0x0000}
        node.wait_for(
            lambda: node.query("SELECT COUNT(*) FROM instances") == [(len(files),)], 90,
            "every instance indexed once there is space",
        )  # fmt: skip


def test_below_the_free_space_floor_stores_are_refused_before_anything_is_written(
    tmp_path: Path, psir_classic, small_disk
) -> None:
    """``storage.min_free_mb``: refused with 0xA700 and a reason naming the setting while
    the disk still has room for the index and the jobs already accepted."""
    disk, mount = small_disk
    mount(8)
    files = _studies(psir_classic, tmp_path, 5)  # 70 instances, ~6 MB
    storage = {"data_dir": str(disk / "data"), "min_free_mb": 4}
    node = NodeProcess(tmp_path / "node", wait_models=False, jobs=NO_WORKERS, storage=storage)
    node.data_dir = disk / "data"
    with node:
        statuses = _send_raw(node.port, files)
        assert 0x0000 in statuses and 0xA700 in statuses, statuses
        stored = statuses.count(0x0000)
        node.wait_for(lambda: node.query("SELECT COUNT(*) FROM instances") == [(stored,)], 60,
                      "what was acknowledged is indexed")  # fmt: skip
        reasons = [m for m, _, _ in node.events("instance_refused")]
        assert reasons and all("storage.min_free_mb" in m for m in reasons)
        import shutil

        assert shutil.disk_usage(disk).free > 3 * 2**20  # the floor held
        assert echoscu(node.port).returncode == 0


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _associate_rq(calling: str = "SCANNER", called: str = "LGE_NODE") -> bytes:
    """A well-formed A-ASSOCIATE-RQ (Verification) as pynetdicom encodes it."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    primitive.presentation_context_definition_list = [build_context("1.2.840.10008.1.1")]
    primitive.presentation_context_definition_list[0].context_id = 1
    item = MaximumLengthNotification()
    item.maximum_length_received = 16384
    primitive.user_information = [item]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def _closed_by_peer(sock: socket.socket, within: float) -> float | None:
    """Seconds until the node closed ``sock`` (None: still open after ``within``)."""
    t0 = time.monotonic()
    sock.settimeout(0.5)
    while time.monotonic() - t0 < within:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - t0
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - t0
    return None


def _echo_from(port: int, source: str) -> bool:
    from pynetdicom import AE

    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = 15
    assoc = ae.associate("127.0.0.1", port, ae_title="LGE_NODE", bind_address=(source, 0))
    if not assoc.is_established:
        return False
    ok = int(assoc.send_c_echo().Status) == 0
    assoc.release()
    return ok


def test_idle_and_drip_feeding_connections_neither_pile_up_nor_lock_out_other_peers(
    tmp_path: Path,
) -> None:
    """200 idle TCP connections (never a PDU) once made the node refuse a legitimate
    peer (threads 15 -> 121); peers drip-feeding an A-ASSOCIATE-RQ one byte at a time
    stayed for 4x the network timeout. Now one address gets at most its share of
    connections, the rest are closed at accept, a drip-feeder is cut off at the
    negotiation deadline, and a peer from another address is served throughout."""
    dicom = {"max_connections_per_address": 20, "negotiation_timeout_s": 3}
    node = NodeProcess(tmp_path / "node", wait_models=False, jobs=NO_WORKERS, dicom=dicom)
    with node:
        assert node.proc is not None
        threads_before = _status(node.proc.pid, "Threads")
        idle = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", node.port))
            idle.append(s)
        rq = _associate_rq()
        drips = []
        for _ in range(11):
            s = socket.socket()
            s.bind(("127.0.0.3", 0))
            s.connect(("127.0.0.1", node.port))
            drips.append(s)

        def drip() -> None:
            for i in range(len(rq)):
                for s in drips:
                    with contextlib.suppress(OSError):
                        s.send(rq[i : i + 1])
                time.sleep(0.5)

        dripper = threading.Thread(target=drip, daemon=True)
        t0 = time.monotonic()
        dripper.start()
        assert _echo_from(node.port, "127.0.0.2"), "a legitimate peer was locked out"
        threads_during = _status(node.proc.pid, "Threads")
        # pynetdicom runs two threads per connection: 20 idle + 11 drip + 1 peer admitted,
        # not 200 + 11 + 1
        admitted = 20 + 11 + 1
        assert threads_during - threads_before <= 2 * admitted + 12, (
            threads_before,
            threads_during,
        )
        closed = [_closed_by_peer(s, 15) for s in drips]
        assert all(c is not None for c in closed), "a drip-feeding peer was not cut off"
        assert time.monotonic() - t0 < 10  # negotiation deadline 3 s, not 4x the timeout
        # every idle connection is gone: beyond the share at accept, the rest at the deadline
        assert all(_closed_by_peer(s, 5) is not None for s in idle)
        for s in idle + drips:
            s.close()
        assert _echo_from(node.port, "127.0.0.1")
        reasons = [m for m, _, _ in node.events("connection_dropped")]
        # the share was hit (how often depends on how fast silent ones time out)
        assert any("max_connections_per_address" in m for m in reasons)
        # cut by the guard's deadline or pynetdicom's ARTIM timer (both the negotiation
        # timeout), and recorded either way
        assert any("negotiation" in m or "before a valid association" in m for m in reasons)


def test_a_pdu_declaring_4_gib_is_cut_off_before_its_body_is_read(tmp_path: Path) -> None:
    """A PDU declaring 0xFFFFFFFF bytes was read into memory (256 MiB streamed: RSS +262
    MB). Now the declared length is refused at the header and memory stays put."""
    node = NodeProcess(tmp_path / "node", wait_models=False, jobs=NO_WORKERS)
    with node:
        assert node.proc is not None
        time.sleep(2)
        rss_before = _status(node.proc.pid, "VmRSS")
        s = socket.create_connection(("127.0.0.1", node.port))
        s.sendall(b"\x01\x00" + (0xFFFFFFFF).to_bytes(4, "big"))
        sent = 0
        chunk = b"\x00" * (1 << 20)
        try:
            while sent < 256 << 20:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the node closed the connection: what we want
        s.close()
        rss_after = _status(node.proc.pid, "VmRSS")
        assert sent < 64 << 20, f"the node kept reading ({sent >> 20} MiB accepted)"
        assert rss_after - rss_before < 50_000, (rss_before, rss_after)  # kB
        assert echoscu(node.port).returncode == 0
        node.wait_for(
            lambda: any("declares 4294967295 bytes" in m
                        for m, _, _ in node.events("connection_dropped")),
            30, "the refusal recorded",
        )  # fmt: skip


def test_a_peer_that_stalls_inside_a_pdu_is_cut_off_after_the_network_timeout(
    tmp_path: Path,
) -> None:
    """A P-DATA PDU cut after 100 of 100000 bytes kept its association open for 40 s
    with a 10 s network timeout. Now the connection is closed once nothing arrives for
    the network timeout, and the node goes on serving."""
    from pynetdicom import AE

    node = NodeProcess(
        tmp_path / "node", wait_models=False, jobs=NO_WORKERS, dicom={"network_timeout_s": 3}
    )
    with node:
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", node.port, ae_title="LGE_NODE")
        assert assoc.is_established
        raw = assoc.dul.socket.socket
        raw.sendall(b"\x04\x00" + (100000).to_bytes(4, "big") + b"\x00" * 100)
        t0 = time.monotonic()
        node.wait_for(lambda: not assoc.is_alive() or not assoc.is_established, 20,
                      "the stalled association to end")  # fmt: skip
        assert time.monotonic() - t0 < 3 + 4
        assert echoscu(node.port).returncode == 0


def test_without_an_allow_list_anyone_may_store_but_nobody_may_query(
    tmp_path: Path, psir_classic
) -> None:
    """With no [access] section an unknown AE got patient names by C-FIND and images by
    C-GET, and the node said nothing. Now storage stays open (documented), C-FIND and
    C-GET are refused with 0x0124 and a reason, and start-up and ``lge-node status``
    warn about the open configuration."""
    import sys

    from tests.node_harness import ROOT, storescu

    node = NodeProcess(tmp_path / "node", wait_models=False, jobs=NO_WORKERS)
    with node:
        storescu(node.port, sorted((psir_classic.out_dir / "dicom").glob("*.dcm"))[:2])
        snoop = findscu(node.port, "ANYONE")
        assert "Phantom" not in snoop.stdout + snoop.stderr
        assert "Status: 0x124" in snoop.stderr  # refused, not authorized
        assert "access_open" in node.log() and "query/retrieve is refused" in node.log()
        status = subprocess.run(
            [sys.executable, "-m", "node.cli", "status", "--config", str(node.config_path)],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        assert "access.allowed_peers is empty" in status.stdout
        assert any("query/retrieve is closed" in m for m, _, _ in node.events("find_refused"))


def test_instance_size_and_frame_limits_from_the_config_refuse_with_a_reason(
    tmp_path: Path, psir_classic, magnitude_enhanced
) -> None:
    """Resource ceilings are configuration, not constants: an instance above
    storage.max_instance_mb or with more frames than storage.max_frames is refused with
    0xA700 and a reason naming the setting; smaller ones are stored."""
    import pydicom
    from pydicom.uid import generate_uid

    from tests.node_harness import storescu

    classic = sorted((psir_classic.out_dir / "dicom").glob("*.dcm"))
    (enhanced,) = magnitude_enhanced.files
    assert enhanced.stat().st_size < 2.5 * 2**20
    big = pydicom.dcmread(classic[0])
    big.SOPInstanceUID = big.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    big.add_new((0x0029, 0x0010), "LO", "LGENODE TEST")
    big.add_new((0x0029, 0x1010), "OB", b"\0" * (3 * 2**20))  # a 3 MiB private blob
    big_path = tmp_path / "big.dcm"
    big.save_as(big_path, enforce_file_format=True)
    storage = {"max_instance_mb": 2.5, "max_frames": 4}
    node = NodeProcess(tmp_path / "node", wait_models=False, jobs=NO_WORKERS, storage=storage)
    with node:
        storescu(node.port, classic[:2])  # under both limits
        for path in (big_path, enhanced):
            refused = storescu(node.port, [path], check=False, extra=["-v", "-R"])
            assert "Refused: OutOfResources" in refused.stderr, refused.stderr  # 0xA700
        node.wait_for(lambda: node.query("SELECT COUNT(*) FROM instances") == [(2,)], 60,
                      "the classic instances indexed")  # fmt: skip
        reasons = " | ".join(m for m, _, _ in node.events("instance_refused"))
        assert "exceeds storage.max_instance_mb (2.5)" in reasons
        assert "frames exceed storage.max_frames (4)" in reasons


def test_identity_conflicts_are_refused_and_results_are_not_writable_by_peers(
    tmp_path: Path, psir_classic
) -> None:
    """Once handled silently: the same SOP Instance UID with other pixels replaced the
    stored file; the same SOP Instance UID in another series got Success and was then
    dropped; a forged SR C-STOREd into the node's result series re-opened it and was
    served as a result. Policy now (README): keep the first and refuse conflicts with
    0x0111, refuse writes into result series with 0x0124, and accept a copy of the
    node's own result (a PACS routing results back) without storing it again."""
    import pydicom
    from pydicom.uid import generate_uid

    from tests.node_harness import copy_study, storescu

    node = NodeProcess(tmp_path / "node")
    _study, series, files = copy_study(psir_classic.out_dir / "dicom", tmp_path / "s")
    with node:
        storescu(node.port, files)
        node.wait_done(series, timeout=180)
        first_sop = str(pydicom.dcmread(files[0]).SOPInstanceUID)
        ((stored_path,),) = node.query("SELECT path FROM instances WHERE sop_uid = ?", first_sop)
        before = Path(stored_path).read_bytes()
        work = tmp_path / "bad"
        work.mkdir()

        altered = pydicom.dcmread(files[0])
        pixels = bytearray(altered.PixelData)
        pixels[:64] = bytes(64)
        altered.PixelData = bytes(pixels)
        altered.save_as(work / "altered.dcm", enforce_file_format=True)

        moved = pydicom.dcmread(files[1])
        moved.SeriesInstanceUID = generate_uid()
        moved.save_as(work / "moved.dcm", enforce_file_format=True)

        result_series, result_path = node.query(
            "SELECT s.series_uid, i.path FROM series s JOIN instances i ON i.series_fk = s.id "
            "WHERE s.origin = 'result' AND s.modality = 'SR'"
        )[0]
        forged = pydicom.dcmread(result_path)
        forged.SOPInstanceUID = forged.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        forged.save_as(work / "forged.dcm", enforce_file_format=True)

        for name, expected in (("altered", "0x111"), ("moved", "0x111"), ("forged", "0x124")):
            out = storescu(node.port, [work / f"{name}.dcm"], check=False, extra=["-v", "-R"])
            assert expected in out.stderr.lower().replace("0x0", "0x"), (name, out.stderr)
        own = storescu(node.port, [Path(result_path)], check=False, extra=["-v", "-R"])
        assert "Received Store Response (Success)" in own.stderr, own.stderr

        assert Path(stored_path).read_bytes() == before  # the first is kept
        reasons = " | ".join(m for m, _, _ in node.events("instance_conflict"))
        assert "already stored with other content" in reasons
        assert "already held in series" in reasons
        assert "result series of this node" in reasons
        time.sleep(3)  # longer than stable_age_s: a re-opened series would be re-queued
        assert node.series_state(result_series)[0] != "receiving"
        assert [j[1] for j in node.jobs(series)] == ["done"]  # nothing re-ran
        count = node.query(
            "SELECT COUNT(*) FROM instances i JOIN series s ON i.series_fk = s.id "
            "WHERE s.series_uid = ?", result_series,
        )  # fmt: skip
        assert count == [(1,)]  # the forged SR is not among the results
