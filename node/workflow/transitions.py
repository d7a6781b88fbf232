"""Every state change of a series and of a job, in one table each.

The repository asks `series_after` / `job_after` before it writes a new state, so a
change that is not in the table (a purged series marked done, a finished job claimed
again) raises `IllegalTransition` instead of corrupting the index. The tables are tested
pair by pair (`tests/test_transitions.py`).

A received series: ``receiving`` until quiet for ``stable_age``, then ``skipped`` or
``queued``; its job makes it ``processing`` and then ``done`` or ``failed``; retention
makes a finished one ``purged``. A new instance takes any of them back to ``receiving``
(judged again once quiet). A job: ``queued`` → ``running`` → ``done`` | ``failed``, back
to ``queued`` for a retry or after a crash, ``cancelled`` when its series changed first.
"""

from __future__ import annotations

from enum import StrEnum

from node.store.records import JobState, SeriesState


class SeriesEvent(StrEnum):
    INSTANCE_ADDED = "instance_added"  # a new SOP instance for the series
    SKIPPED = "skipped"  # judged: not to be processed
    QUEUED = "queued"  # judged: a job was queued
    JOB_STARTED = "job_started"
    JOB_DONE = "job_done"
    JOB_RETRY = "job_retry"  # an attempt failed; the job waits to be tried again
    JOB_FAILED = "job_failed"  # the job gave up
    NODE_RESTARTED = "node_restarted"  # the node died while the job ran; job queued again
    PURGED = "purged"  # files removed after the retention time
    REQUESTED = "requested"  # an operator asked for a (re-)run: console or API


class JobEvent(StrEnum):
    CLAIMED = "claimed"
    FINISHED = "finished"
    RETRY = "retry"
    GAVE_UP = "gave_up"  # attempts used up, or data that trying again cannot mend
    NODE_RESTARTED = "node_restarted"
    SERIES_CHANGED = "series_changed"  # new instances arrived: the series is judged again


class IllegalTransition(RuntimeError):
    """A state change that the tables do not allow."""


R, K, Q, P, D, F, X = (
    SeriesState.RECEIVING,
    SeriesState.SKIPPED,
    SeriesState.QUEUED,
    SeriesState.PROCESSING,
    SeriesState.DONE,
    SeriesState.FAILED,
    SeriesState.PURGED,
)

SERIES: dict[tuple[SeriesState, SeriesEvent], SeriesState] = {
    **{(state, SeriesEvent.INSTANCE_ADDED): R for state in SeriesState},
    (R, SeriesEvent.SKIPPED): K,
    (R, SeriesEvent.QUEUED): Q,
    (Q, SeriesEvent.JOB_STARTED): P,
    (P, SeriesEvent.JOB_DONE): D,
    (P, SeriesEvent.JOB_RETRY): Q,
    (P, SeriesEvent.JOB_FAILED): F,
    (P, SeriesEvent.NODE_RESTARTED): Q,
    # Instances arrived while the job ran, so the series moved on (receiving, or judged
    # and queued again): the job's end leaves it where it is, to be processed again with
    # all its instances. A job that would retry is cancelled instead (JobEvent).
    **{(state, SeriesEvent.JOB_DONE): state for state in SeriesState if state != P},
    **{(state, SeriesEvent.JOB_FAILED): state for state in SeriesState if state != P},
    # An operator's re-run of a finished series, or force of a skipped one. Not while
    # receiving, queued or running (it will run anyway), nor once purged (no files).
    (D, SeriesEvent.REQUESTED): Q,
    (F, SeriesEvent.REQUESTED): Q,
    (K, SeriesEvent.REQUESTED): Q,
    (K, SeriesEvent.PURGED): X,
    (D, SeriesEvent.PURGED): X,
}

JQ, JR, JD, JF, JC = (
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.DONE,
    JobState.FAILED,
    JobState.CANCELLED,
)

JOBS: dict[tuple[JobState, JobEvent], JobState] = {
    (JQ, JobEvent.CLAIMED): JR,
    (JR, JobEvent.FINISHED): JD,
    (JR, JobEvent.RETRY): JQ,
    (JR, JobEvent.GAVE_UP): JF,
    (JR, JobEvent.NODE_RESTARTED): JQ,
    (JQ, JobEvent.SERIES_CHANGED): JC,
    (JR, JobEvent.SERIES_CHANGED): JC,  # a retry or a restart after the series moved on
}


def series_may(state: SeriesState | str, event: SeriesEvent) -> bool:
    return (SeriesState(state), event) in SERIES


def series_after(state: SeriesState | str, event: SeriesEvent) -> SeriesState:
    """The series' state after ``event``; `IllegalTransition` if the table has no such move."""
    try:
        return SERIES[(SeriesState(state), event)]
    except KeyError:
        raise IllegalTransition(f"series: {event} is not allowed in state {state}") from None


def job_after(state: JobState | str, event: JobEvent) -> JobState:
    """The job's state after ``event``; `IllegalTransition` if the table has no such move."""
    try:
        return JOBS[(JobState(state), event)]
    except KeyError:
        raise IllegalTransition(f"job: {event} is not allowed in state {state}") from None
