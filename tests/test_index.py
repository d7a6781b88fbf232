"""The index's state machine: what a crash, a retry or a late instance leaves behind."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from node.store.records import (
    Delivery,
    InstanceInfo,
    JobState,
    Received,
    ResultObject,
    SeriesState,
)
from node.store.repository import Repository as Index
from node.store.storage import InvalidUidError, Storage, check_uid


def info(sop: str, series: str = "1.2.3.1", study: str = "1.2.3") -> InstanceInfo:
    return InstanceInfo(
        study_uid=study, series_uid=series, sop_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        transfer_syntax="1.2.840.10008.1.2.1", modality="MR", series_description="LGE",
        series_number=1, instance_number=1, image_type="", scanning_sequence="IR",
        frames=[("0\\0\\0", 300.0)], patient={"PatientID": "X"}, study={},
    )  # fmt: skip


def result(sop: str) -> ResultObject:
    return ResultObject(f"/r/{sop}.dcm", "1.2.840.10008.5.1.4.1.1.88.34", sop, "1.2.3.99", "SR",
                        "LGE scar report", 9902, 1, "1.2.840.10008.1.2.1", 100)  # fmt: skip


def claimed(index: Index) -> tuple[int, int] | None:
    claim = index.claim_job()
    return None if claim is None else (claim.job_id, claim.series.id)


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request, tmp_path: Path) -> Index:
    """The same state machine on the embedded default and on a shared PostgreSQL."""
    if request.param == "sqlite":
        ix = Index(f"sqlite:///{tmp_path / 'index.db'}")
    else:
        ix = Index(request.getfixturevalue("postgres").new_database())
    yield ix
    ix.close()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    index = Index(f"sqlite:///{tmp_path / 'index.db'}")
    assert index.journal_mode() == "wal"
    index.close()


def test_same_instance_twice_is_one_instance(index: Index) -> None:
    a = index.record_instance(info("1.2.3.1.1"), "/x", 10, "SCANNER", "127.0.0.1")
    b = index.record_instance(info("1.2.3.1.1"), "/x", 10, "SCANNER", "127.0.0.1")
    assert (a.duplicate, b.duplicate) == (False, True)
    assert index.series(a.series_id).n_instances == 1


def test_failed_attempts_retry_then_stop_with_the_error(index: Index) -> None:
    sid = index.record_instance(info("1.2.3.1.1"), "/x", 1, "S", "a").series_id
    job = index.enqueue(sid, "psir", "LGE", max_attempts=2)
    assert claimed(index) == (job, sid)
    assert index.fail_job(job, "boom 1", retry_delay_s=0.0) is True
    assert claimed(index) == (job, sid)
    assert index.fail_job(job, "boom 2", retry_delay_s=0.0) is False
    assert index.claim_job() is None
    assert (index.job(job).state, index.job(job).error) == (JobState.FAILED, "boom 2")
    assert index.series(sid).state == SeriesState.FAILED


def test_a_crash_mid_job_requeues_it_and_used_up_jobs_fail(index: Index) -> None:
    s1 = index.record_instance(info("1.2.3.1.1"), "/x", 1, "S", "a").series_id
    s2 = index.record_instance(info("1.2.3.2.1", series="1.2.3.2"), "/y", 1, "S", "a").series_id
    j1 = index.enqueue(s1, "psir", "LGE", max_attempts=3)
    j2 = index.enqueue(s2, "psir", "LGE", max_attempts=1)
    index.claim_job()
    index.claim_job()  # both running when the "crash" happens
    assert sorted(index.recover_jobs()) == [j1, j2]
    assert index.job(j1).state == JobState.QUEUED
    assert index.job(j2).state == JobState.FAILED and "node stopped" in index.job(j2).error


def test_late_instances_cancel_a_waiting_job_and_reopen_a_done_series(index: Index) -> None:
    sid = index.record_instance(info("1.2.3.1.1"), "/x", 1, "S", "a").series_id
    j1 = index.enqueue(sid, "psir", "LGE", max_attempts=3)
    index.record_instance(info("1.2.3.1.2"), "/x2", 1, "S", "a")
    assert index.job(j1).state == JobState.CANCELLED
    assert index.series(sid).state == SeriesState.RECEIVING
    j2 = index.enqueue(sid, "psir", "LGE", max_attempts=3)
    index.claim_job()
    index.finish_job(j2, "/r", "{}", [result("1.2.9")],
                     [Delivery("pacs", "PACS", "h", 104)], 1.0)  # fmt: skip
    assert index.series(sid).state == SeriesState.DONE
    out = index.record_instance(info("1.2.3.1.3"), "/x3", 1, "S", "a")
    assert out.reopened and index.series(sid).state == SeriesState.RECEIVING
    j3 = index.enqueue(sid, "psir", "LGE", max_attempts=3)
    index.claim_job()
    assert index.job(j3).supersedes == j2


def hinted(sop: str, n: int | None, acquisition: int | None = 1, series: str = "1.2.3.1",
           study: str = "1.2.3") -> InstanceInfo:  # fmt: skip
    return replace(info(sop, series, study), images_in_acquisition=n,
                   acquisition_number=acquisition)  # fmt: skip


def test_a_series_whose_headers_agree_on_its_size_is_complete_without_waiting(
    index: Index,
) -> None:
    for k in (1, 2):
        out = index.record_instance(hinted(f"1.2.3.1.{k}", 3), f"/x{k}", 1, "S", "a")
        assert not out.complete
        assert index.complete_studies() == []
    out = index.record_instance(hinted("1.2.3.1.3", 3), "/x3", 1, "S", "a")
    assert out.complete and index.complete_studies() == [index.series(out.series_id).study_id]
    # a batch completing a series says so too
    items = [Received(hinted(f"1.2.5.1.{k}", 2, study="1.2.5", series="1.2.5.1"), f"/y{k}", 1,
                      "S", "a", False, 1.0) for k in (1, 2)]  # fmt: skip
    assert all(o.complete for o in index.record_batch(items))
    assert len(index.complete_studies()) == 2


@pytest.mark.parametrize(
    "second",
    [(4, 1), (3, 2), (None, 1)],
    ids=["other-count", "other-acquisition", "no-hint"],
)
def test_headers_that_disagree_are_not_trusted(index: Index, second: tuple) -> None:
    index.record_instance(hinted("1.2.3.1.1", 3), "/x1", 1, "S", "a")
    index.record_instance(hinted("1.2.3.1.2", *second), "/x2", 1, "S", "a")
    out = index.record_instance(hinted("1.2.3.1.3", 3), "/x3", 1, "S", "a")
    assert not out.complete and index.complete_studies() == []


def test_a_multiframe_object_is_a_complete_series_and_a_late_extra_waits(index: Index) -> None:
    enhanced = replace(info("1.2.3.1.1"), frames=[("0\\0\\0", 300.0), ("0\\0\\8", 300.0)])
    out = index.record_instance(enhanced, "/x1", 1, "S", "a")
    assert out.complete and index.complete_studies() == [index.series(out.series_id).study_id]
    # another series of the study still arriving, without a hint: the study waits for it
    index.record_instance(info("1.2.3.2.1", series="1.2.3.2"), "/y1", 1, "S", "a")
    assert index.complete_studies() == []
    # a second object in the multi-frame series: no longer trusted
    index.record_instance(replace(enhanced, sop_uid="1.2.3.1.2"), "/x2", 1, "S", "a")
    index.record_instance(info("1.2.3.2.2", series="1.2.3.2"), "/y2", 1, "S", "a")
    assert index.complete_studies() == []


def test_a_retrieved_series_is_complete_at_its_count_even_when_expected_first(
    index: Index,
) -> None:
    # the retrieve can end before the node indexed anything of the series
    index.expect("1.2.3.1", 2, "MOVE from pacs")
    out = index.record_instance(info("1.2.3.1.1"), "/x1", 1, "S", "a")
    assert not out.complete and index.complete_studies() == []
    out = index.record_instance(info("1.2.3.1.2"), "/x2", 1, "S", "a")
    assert out.complete and index.complete_studies() == [index.series(out.series_id).study_id]
    # a retrieve's count wins over headers that disagree
    index.expect("1.2.4.1", 1, "GET from pacs")
    out = index.record_instance(hinted("1.2.4.1.1", 5, study="1.2.4", series="1.2.4.1"),
                                "/z", 1, "S", "a")  # fmt: skip
    assert out.complete


def test_one_job_per_series_at_a_time(index: Index) -> None:
    sid = index.record_instance(info("1.2.3.1.1"), "/x", 1, "S", "a").series_id
    j1 = index.enqueue(sid, "psir", "LGE", max_attempts=3)
    index.claim_job()
    index.record_instance(info("1.2.3.1.2"), "/x2", 1, "S", "a")  # arrives while j1 runs
    j2 = index.enqueue(sid, "psir", "LGE", max_attempts=3)
    assert index.claim_job() is None  # j2 waits for j1
    index.finish_job(j1, "/r", "{}", [], [], 1.0)
    assert claimed(index) == (j2, sid)


def test_a_correction_supersedes_the_newest_report_and_outlives_its_source(
    index: Index,
) -> None:
    """A reader's SEG series (kind correction) claims with its source's files and the
    newest report on that source, its own corrections included; retention purges the
    source's result series with it, never the received correction (its own time)."""
    src = index.record_instance(info("1.2.3.1.1"), "/img1", 1, "S", "a").series_id
    j1 = index.enqueue(src, "psir", "LGE", max_attempts=1)
    index.claim_job()
    index.finish_job(j1, "/r1", "{}", [result("1.2.9")], [], 1.0)

    def correction(n: int) -> tuple[int, int]:
        seg = index.record_instance(
            info(f"1.2.3.5.{n}", series=f"1.2.3.5{n}"), f"/seg{n}", 1, "PACS", "b"
        ).series_id
        job = index.enqueue(seg, "correction", "reader", max_attempts=1, source_id=src)
        assert job is not None
        return seg, job

    seg1, j2 = correction(1)
    claim = index.claim_job()
    assert claim is not None and claim.correction is not None
    assert (claim.job_id, claim.paths) == (j2, ["/seg1"])
    assert (claim.correction.source.id, claim.correction.source_paths) == (src, ["/img1"])
    assert (index.job(j2).supersedes, claim.previous_results) == (j1, "/r1")
    index.finish_job(j2, "/r2", "{}", [], [], 1.0)
    _, j3 = correction(2)
    claim = index.claim_job()
    assert claim is not None and (index.job(j3).supersedes, claim.previous_results) == (
        j2, "/r2",
    )  # fmt: skip
    index.finish_job(j3, "/r3", "{}", [], [], 1.0)

    purge = index.purge_series(src, cutoff=float("inf"))
    assert purge is not None and purge.paths == ["/img1"]
    assert index.series(seg1).state == SeriesState.DONE  # the correction is not the source's


def test_send_failures_back_off_exponentially_up_to_the_cap(index: Index) -> None:
    sid = index.record_instance(info("1.2.3.1.1"), "/x", 1, "S", "a").series_id
    job = index.enqueue(sid, "psir", "LGE", max_attempts=3)
    index.claim_job()
    index.finish_job(job, "/r", "{}", [result("1.2.8")],
                     [Delivery("pacs", "PACS", "h", 104)], 1.0, now=0.0)  # fmt: skip
    (row,) = index.due_sends(now=0.0)
    delays = [index.mark_send_failed([row.id], "down", 5.0, 60.0, now=0.0) for _ in range(6)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert index.due_sends(now=59.0) == [] and len(index.due_sends(now=60.0)) == 1


def test_due_sends_are_leased_so_nodes_sharing_the_index_never_send_twice(index: Index) -> None:
    sid = index.record_instance(info("1.2.3.1.1"), "/x", 1, "S", "a").series_id
    job = index.enqueue(sid, "psir", "LGE", max_attempts=3)
    index.claim_job()
    objects = [result(f"1.2.8.{n}") for n in range(6)]
    index.finish_job(job, "/r", "{}", objects, [Delivery("pacs", "PACS", "h", 104)], 1.0, now=0.0)
    picked: list[list[int]] = []
    threads = [
        threading.Thread(target=lambda: picked.append(
            [r.id for r in index.due_sends(now=1.0, limit=4, lease_s=100.0)]))
        for _ in range(2)
    ]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first, second = picked
    assert not set(first) & set(second) and len(first) + len(second) == 6
    assert index.due_sends(now=50.0) == []  # all leased
    index.mark_sent(first)
    # The other sender died: its rows come back once the lease has passed.
    assert sorted(r.id for r in index.due_sends(now=102.0)) == sorted(second)


@pytest.mark.parametrize(
    "uid", ["../../etc/passwd", "1.2.3/../../x", "1.2.03", "", "1." * 40 + "1", "1.2.3\\4"]
)
def test_crafted_uids_are_refused(uid: str) -> None:
    with pytest.raises(InvalidUidError):
        check_uid(uid, "SOPInstanceUID")


def test_paths_come_from_hashes_inside_the_data_folder(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "data")
    path = storage.instance_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert storage.root in path.parents and "1.2.3" not in str(path.relative_to(storage.root))
    storage.write_atomic(path, b"DICM")
    assert path.read_bytes() == b"DICM" and not list(path.parent.glob(".*.tmp"))
    with pytest.raises(ValueError, match="outside the data folder"):
        storage.remove(tmp_path / "elsewhere")


@pytest.mark.parametrize(
    "name", ["../x.dcm", "overlay/../../x", "/etc/passwd", ".hidden", "a/b/c.dcm", "", "a\\b"]
)
def test_results_handed_back_cannot_leave_their_folder(tmp_path: Path, name: str) -> None:
    storage = Storage(tmp_path / "data")
    folder = storage.results_dir("1.2.3.4", 7)
    storage.place_results(folder, [("seg.dcm", b"old")])
    with pytest.raises(ValueError):
        storage.place_results(folder, [("sr.dcm", b"new"), (name, b"bad")])
    # a refused hand-back leaves the folder as it was, and nothing staged beside it
    assert [p.name for p in folder.iterdir()] == ["seg.dcm"]
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]
    storage.place_results(folder, [("sr.dcm", b"new"), ("overlay/001.dcm", b"o")])
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.dcm")) == [
        "overlay/001.dcm",
        "sr.dcm",
    ]  # whole new folder: the earlier attempt's seg.dcm is gone


def test_acknowledged_but_unindexed_instances_are_indexed_at_start_with_their_sender(
    tmp_path: Path, psir_classic
) -> None:
    """What a crash between Success and the indexer's commit leaves: files + journal."""
    import json as _json

    from node.store.ingest import describe as read_header
    from node.store.recovery import reconcile

    storage = Storage(tmp_path / "data")
    journal = []
    files = sorted((psir_classic.out_dir / "dicom").glob("*.dcm"))
    for f in files:
        data = f.read_bytes()
        i = read_header(data)
        path = storage.instance_path(i.study_uid, i.series_uid, i.sop_uid)
        storage.write_atomic(path, data)
        journal.append({"path": str(path), "ae": "SCANNER_MR1", "address": "10.0.0.7",
                        "forced": False})  # fmt: skip
    (storage.root / "ingest.journal").write_text(
        "\n".join(_json.dumps(j) for j in journal) + '\n{"path": "cut by the cra'
    )
    index = Index(f"sqlite:///{storage.root / 'index.db'}")
    journal_path = storage.root / "ingest.journal"
    indexed, dropped = reconcile(storage, index, journal_path)
    assert (indexed, dropped) == (len(files), 0)
    series = read_header(files[0].read_bytes()).series_uid
    row = index.series_by_uid(series)
    assert row is not None
    assert (row.n_instances, row.calling_ae, row.calling_address) == (
        len(files),
        "SCANNER_MR1",
        "10.0.0.7",
    )
    assert reconcile(storage, index, journal_path) == (0, 0)  # idempotent
    index.close()


def test_identity_asked_before_each_acknowledgement(index: Index) -> None:
    """What the receiver asks before answering a C-STORE (on the driver's own cursor,
    both databases): where a SOP instance is held and what kind of series it claims."""
    from node.store.records import Origin
    from node.store.repository import OriginCache

    fresh = index.identity("1.2.3.1.1", "1.2.3.1")
    assert (fresh.home_series, fresh.home_path, fresh.series_origin) == (None, None, None)
    sid = index.record_instance(info("1.2.3.1.1"), "/x", 1, "S", "a").series_id
    held = index.identity("1.2.3.1.1", "1.2.3.1.7", OriginCache())
    assert (held.home_series, held.home_path) == ("1.2.3.1", "/x")
    assert index.identity("1.2.3.1.2", "1.2.3.1").series_origin is Origin.RECEIVED
    job = index.enqueue(sid, "psir", "LGE", max_attempts=3)
    index.claim_job()
    index.finish_job(job, "/r", "{}", [result("1.2.9")], [], 1.0)
    ours = index.identity("1.2.9", "1.2.3.99")
    assert ours.series_origin is Origin.RESULT and ours.home_path == "/r/1.2.9.dcm"
