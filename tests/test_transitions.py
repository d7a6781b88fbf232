"""The state tables of series and jobs, pair by pair: every (state, event) either moves
where the table says or is refused; and what the node relies on holds for the whole
table (new data always re-opens a series, nothing leaves a purged series but new data,
finished jobs stay finished)."""

from __future__ import annotations

import itertools

import pytest

from node.store.records import JobState, SeriesState
from node.workflow.transitions import (
    JOBS,
    SERIES,
    IllegalTransition,
    JobEvent,
    SeriesEvent,
    job_after,
    series_after,
)

S, SE = SeriesState, SeriesEvent
J, JE = JobState, JobEvent

# The series moves, written out once more by hand: a change to the table must change this.
EXPECTED_SERIES = {
    **{(s, SE.INSTANCE_ADDED): S.RECEIVING for s in S},
    (S.RECEIVING, SE.SKIPPED): S.SKIPPED,
    (S.RECEIVING, SE.QUEUED): S.QUEUED,
    (S.QUEUED, SE.JOB_STARTED): S.PROCESSING,
    (S.PROCESSING, SE.JOB_DONE): S.DONE,
    (S.PROCESSING, SE.JOB_RETRY): S.QUEUED,
    (S.PROCESSING, SE.JOB_FAILED): S.FAILED,
    (S.PROCESSING, SE.NODE_RESTARTED): S.QUEUED,
    **{(s, SE.JOB_DONE): s for s in S if s != S.PROCESSING},
    **{(s, SE.JOB_FAILED): s for s in S if s != S.PROCESSING},
    (S.SKIPPED, SE.PURGED): S.PURGED,
    (S.DONE, SE.PURGED): S.PURGED,
    # an operator's re-run / force: only finished series, never a purged one (no files)
    (S.DONE, SE.REQUESTED): S.QUEUED,
    (S.FAILED, SE.REQUESTED): S.QUEUED,
    (S.SKIPPED, SE.REQUESTED): S.QUEUED,
}
EXPECTED_JOBS = {
    (J.QUEUED, JE.CLAIMED): J.RUNNING,
    (J.RUNNING, JE.FINISHED): J.DONE,
    (J.RUNNING, JE.RETRY): J.QUEUED,
    (J.RUNNING, JE.GAVE_UP): J.FAILED,
    (J.RUNNING, JE.NODE_RESTARTED): J.QUEUED,
    (J.QUEUED, JE.SERIES_CHANGED): J.CANCELLED,
    (J.RUNNING, JE.SERIES_CHANGED): J.CANCELLED,
}


@pytest.mark.parametrize(("state", "ev"), list(itertools.product(S, SE)))
def test_every_series_pair(state: SeriesState, ev: SeriesEvent) -> None:
    if (state, ev) in EXPECTED_SERIES:
        assert series_after(state, ev) == EXPECTED_SERIES[(state, ev)]
    else:
        with pytest.raises(IllegalTransition, match=f"{ev} is not allowed in state {state}"):
            series_after(state, ev)


@pytest.mark.parametrize(("state", "ev"), list(itertools.product(J, JE)))
def test_every_job_pair(state: JobState, ev: JobEvent) -> None:
    if (state, ev) in EXPECTED_JOBS:
        assert job_after(state, ev) == EXPECTED_JOBS[(state, ev)]
    else:
        with pytest.raises(IllegalTransition):
            job_after(state, ev)


def test_the_tables_hold_nothing_else() -> None:
    assert SERIES == EXPECTED_SERIES and JOBS == EXPECTED_JOBS


def test_states_read_back_from_the_database_as_plain_text_are_accepted() -> None:
    assert series_after("queued", SE.JOB_STARTED) == S.PROCESSING
    assert job_after("running", JE.FINISHED) == J.DONE


def test_finished_jobs_stay_finished() -> None:
    for state in (J.DONE, J.FAILED, J.CANCELLED):
        assert not any(s == state for s, _ in JOBS)


def test_every_series_state_is_reachable_from_receiving() -> None:
    seen, frontier = {S.RECEIVING}, [S.RECEIVING]
    while frontier:
        here = frontier.pop()
        for (s, _), nxt in SERIES.items():
            if s == here and nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(S)


def test_a_purged_series_leaves_only_for_new_data() -> None:
    assert {ev for (s, ev), nxt in SERIES.items() if s == S.PURGED and nxt != s} == {
        SE.INSTANCE_ADDED
    }
