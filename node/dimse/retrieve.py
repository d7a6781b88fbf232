"""Pull LGE series from a PACS: C-FIND (study, then series level), the node's selection
rules on the C-FIND attributes, then C-MOVE of only the chosen series to the node's own
AE title (or C-GET, forwarded to the node by C-STORE). What arrives is processed like a
pushed study. Sub-operations are tracked; a partial move is recorded and retried."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from node.config import Config, Pacs
from node.dimse.common import NO_DELAY, Dimse, contexts_for
from node.events import Event, notify
from node.logs import event
from node.store.repository import Repository
from node.workflow.selector import Decision, SeriesFacts, choose
from pipeline.instance import listed

log = logging.getLogger("node.retrieve")


class RetrieveError(RuntimeError):
    """The PACS refused, or has nothing that matches; the message says which."""


@dataclass
class SeriesPlan:
    series_uid: str
    description: str
    modality: str
    instances: int | None
    process: bool
    reason: str
    completed: int = 0
    failed: int = 0
    warning: int = 0
    attempts: int = 0
    error: str = ""
    failed_uids: list[str] = field(default_factory=list)  # named by the PACS; retried alone
    history: list[str] = field(default_factory=list)  # one line per attempt


@dataclass
class StudyPlan:
    study_uid: str
    study_date: str
    series: list[SeriesPlan] = field(default_factory=list)


def pacs_named(config: Config, name: str) -> Pacs:
    """The ``[[pacs]]`` entry called ``name``; RetrieveError naming those configured."""
    for p in config.pacs:
        if p.name == name:
            return p
    known = ", ".join(p.name for p in config.pacs) or "none"
    raise RetrieveError(f"no PACS named {name!r} in the config (configured: {known})")


def _ae(config: Config) -> AE:
    ae = AE(ae_title=config.dicom.ae_title)
    t = config.dicom.network_timeout_s
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = t
    return ae


def _associate(ae: AE, pacs: Pacs, **kwargs: Any) -> Any:
    kwargs["evt_handlers"] = [NO_DELAY, *kwargs.get("evt_handlers", [])]
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title, **kwargs)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "did not answer"
        raise RetrieveError(f"PACS {pacs.name} ({pacs.ae_title}@{pacs.host}:{pacs.port}) {why}")
    return assoc


def find(config: Config, pacs: Pacs, identifier: Dataset) -> list[Dataset]:
    """C-FIND (study root) on the PACS; the matches, or RetrieveError on a failure."""
    ae = _ae(config)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = _associate(ae, pacs)
    found = []
    try:
        for status, ds in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            if not status:
                raise RetrieveError(
                    f"PACS {pacs.name}: C-FIND got no response (aborted; does the PACS "
                    f"allow queries from {config.dicom.ae_title}?)"
                )
            code = int(status.Status)
            if code in (Dimse.PENDING, Dimse.PENDING_WARNING) and ds is not None:
                found.append(ds)
            elif code != Dimse.SUCCESS:
                raise RetrieveError(f"PACS {pacs.name} refused the C-FIND (status 0x{code:04X})")
    finally:
        assoc.release()
    return found


def plan(
    config: Config, pacs: Pacs, study: str | None = None, accession: str | None = None,
    patient: str | None = None, since: str | None = None,
) -> list[StudyPlan]:  # fmt: skip
    """Which series of which studies to fetch, judged on C-FIND attributes."""
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = study or ""
    q.AccessionNumber = accession or ""
    q.PatientID = patient or ""
    q.StudyDate = f"{since}-" if since else ""
    q.ModalitiesInStudy = "MR" if not study else ""
    studies = find(config, pacs, q)
    what = study or accession or patient or "the query"
    if not studies:
        raise RetrieveError(f"PACS {pacs.name} has no study matching {what}")
    plans = []
    for st in studies:
        s = Dataset()
        s.QueryRetrieveLevel = "SERIES"
        s.StudyInstanceUID = st.StudyInstanceUID
        for key in ("SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber",
                    "NumberOfSeriesRelatedInstances"):  # fmt: skip
            setattr(s, key, "")
        series = find(config, pacs, s)
        facts = []
        for ds in series:
            number = ds.get("SeriesNumber")
            facts.append(
                SeriesFacts(
                    series_uid=str(ds.SeriesInstanceUID),
                    modality=str(ds.get("Modality", "")),
                    description=str(ds.get("SeriesDescription", "")),
                    series_number=int(number) if number not in (None, "") else None,
                    n_instances=int(ds.get("NumberOfSeriesRelatedInstances") or 0) or None,
                )
            )
        decisions = choose(facts, config.selection)
        for ds, f in zip(series, facts, strict=True):
            # A PACS that does not support the key (dcmqrscp) leaves it out: the rules
            # cannot be judged here, so MR series come over and are judged on arrival.
            if "SeriesDescription" not in ds and f.modality == "MR":
                decisions[f.series_uid] = Decision(
                    True, "", "the PACS returns no SeriesDescription: judged on arrival"
                )
        plans.append(
            StudyPlan(
                str(st.StudyInstanceUID),
                str(st.get("StudyDate", "")),
                [
                    SeriesPlan(
                        f.series_uid,
                        f.description,
                        f.modality,
                        f.n_instances,
                        decisions[f.series_uid].process,
                        decisions[f.series_uid].reason,
                    )
                    for f in facts
                ],
            )
        )
    return plans


def _counts(status: Dataset) -> tuple[int, int, int]:
    return (
        int(status.get("NumberOfCompletedSuboperations", 0) or 0),
        int(status.get("NumberOfFailedSuboperations", 0) or 0),
        int(status.get("NumberOfWarningSuboperations", 0) or 0),
    )


def _requests(study_uid: str, sp: SeriesPlan, only: list[str]) -> list[Dataset]:
    """The whole series, or (a retry) one IMAGE-level request per failed instance."""
    out = []
    for uid in only or [""]:
        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE" if uid else "SERIES"
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = sp.series_uid
        if uid:
            q.SOPInstanceUID = uid
        out.append(q)
    return out


def _failed_uids(identifier: Dataset | None) -> list[str]:
    value = identifier.get("FailedSOPInstanceUIDList") if identifier is not None else None
    if not value:
        return []
    return listed(value) or [str(value)]


def _transfer(config: Config, pacs: Pacs, study_uid: str, sp: SeriesPlan,
              progress: Callable[[SeriesPlan, int], None], only: list[str]) -> None:  # fmt: skip
    """One attempt: C-MOVE (to the node's AE) or C-GET (forwarded to the node) of the
    series, or of only the instances in ``only``. Updates the counts on ``sp``: completed
    and warnings add up over attempts, failures are this attempt's."""
    received: list[Dataset] = []

    def on_store(ev: Any) -> int:
        ds = ev.dataset
        ds.file_meta = ev.file_meta
        received.append(ds)
        return 0x0000

    ae = _ae(config)
    kwargs: dict[str, Any] = {}
    if pacs.method == "get":
        model = StudyRootQueryRetrieveInformationModelGet
        ae.add_requested_context(model)
        roles = []
        for cx in StoragePresentationContexts[:120]:
            ae.add_requested_context(cx.abstract_syntax)
            roles.append(build_role(cx.abstract_syntax, scp_role=True))
        kwargs = {"ext_neg": roles, "evt_handlers": [(evt.EVT_C_STORE, on_store)]}
    else:
        model = StudyRootQueryRetrieveInformationModelMove
        ae.add_requested_context(model)
    verb = "C-GET" if pacs.method == "get" else "C-MOVE"
    base = (sp.completed, sp.warning) if only else (0, 0)
    done = [0, 0, 0]  # completed, failed, warning of the finished requests
    failed_uids: list[str] = []
    assoc = _associate(ae, pacs, **kwargs)
    try:
        for q in _requests(study_uid, sp, only):
            counts, final, identifier = (0, 0, 0), None, None
            responses = (
                assoc.send_c_get(q, model) if pacs.method == "get"
                else assoc.send_c_move(q, config.dicom.ae_title, model)
            )  # fmt: skip
            for status, answer in responses:
                identifier = answer
                if not status:
                    raise RetrieveError(
                        f"PACS {pacs.name} aborted the {verb} of series {sp.series_uid} to "
                        f"{config.dicom.ae_title} (does the PACS know the node as a modality?)"
                    )
                final = int(status.Status)
                counts = _counts(status)
                sp.completed = base[0] + done[0] + counts[0]
                sp.failed = done[1] + counts[1]
                sp.warning = base[1] + done[2] + counts[2]
                progress(sp, int(status.get("NumberOfRemainingSuboperations", 0) or 0))
            completed, failed, warning = counts
            if final not in (Dimse.SUCCESS, Dimse.SUBOPERATIONS_WARNING):
                if q.QueryRetrieveLevel == "IMAGE":
                    failed = max(failed, 1)
                elif completed or failed or warning:
                    # Some PACS (Orthanc) stop at the first failed sub-operation and send
                    # no final counts: whatever did not arrive counts as failed.
                    failed = max(failed, (sp.instances or 0) - completed - warning, 1)
                else:
                    raise RetrieveError(
                        f"PACS {pacs.name} refused the {verb} of series {sp.series_uid} to "
                        f"{config.dicom.ae_title} (status 0x{final or 0:04X}; does the PACS "
                        f"know the node as a modality? did the node refuse an instance? "
                        f"see lge-node status)"
                    )
            named = _failed_uids(identifier) if failed else []
            if q.QueryRetrieveLevel == "IMAGE" and failed and not named:
                named = [str(q.SOPInstanceUID)]
            failed_uids += named
            done = [done[0] + completed, done[1] + failed, done[2] + warning]
            sp.completed, sp.failed, sp.warning = base[0] + done[0], done[1], base[1] + done[2]
    finally:
        assoc.release()
    # Named failures are retried one by one; unnamed ones mean the whole series again.
    sp.failed_uids = failed_uids if len(failed_uids) == sp.failed else []
    if received:
        _forward(config, received)


def _forward(config: Config, datasets: list[Dataset]) -> None:
    contexts = contexts_for(
        (str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets
    )
    bind = config.dicom.bind_address
    host = "127.0.0.1" if bind in ("0.0.0.0", "") else bind
    assoc = _ae(config).associate(
        host, config.dicom.port, ae_title=config.dicom.ae_title, contexts=contexts,
        evt_handlers=[NO_DELAY],
    )  # fmt: skip
    if not assoc.is_established:
        raise RetrieveError("the node itself did not accept the retrieved instances")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if not status or int(status.Status) != Dimse.SUCCESS:
                raise RetrieveError(f"the node refused instance {ds.SOPInstanceUID}")
    finally:
        assoc.release()


def fetch(
    config: Config, pacs: Pacs, plans: list[StudyPlan],
    progress: Callable[[SeriesPlan, int], None] = lambda sp, remaining: None,
    on_attempt: Callable[[SeriesPlan], None] = lambda sp: None,
) -> None:  # fmt: skip
    """Move (or get) the chosen series. When sub-operations fail, the attempt is recorded
    on the plan and, after ``pacs.retry_delay_s``, tried again up to ``pacs.max_attempts``
    times: only the failed instances when the PACS named them (Failed SOP Instance UID
    List), else the whole series. What still failed stays on the plan."""
    for st in plans:
        for sp in st.series:
            if not sp.process:
                continue
            while sp.attempts < pacs.max_attempts:
                only = list(sp.failed_uids)
                if sp.attempts:
                    time.sleep(pacs.retry_delay_s)
                sp.attempts += 1
                _transfer(config, pacs, st.study_uid, sp, progress, only)
                what = f"{len(only)} failed instance(s)" if only else "series"
                sp.history.append(
                    f"attempt {sp.attempts} ({what}): {sp.completed} completed, "
                    f"{sp.failed} failed, {sp.warning} warnings"
                )
                event(
                    log, "series_retrieved", pacs=pacs.name, study=st.study_uid,
                    series=sp.series_uid, completed=sp.completed, failed=sp.failed,
                    warning=sp.warning, attempt=sp.attempts, retried=what,
                )  # fmt: skip
                on_attempt(sp)
                if sp.failed == 0:
                    sp.error = ""
                    break
                sp.error = f"{sp.failed} sub-operation(s) failed (attempt {sp.attempts})"


def record_outcome(
    repository: Repository | None, pacs: Pacs, plans: list[StudyPlan]
) -> list[SeriesPlan]:
    """Events for the operator: series still incomplete, and partial moves that a retry
    mended. Returns the incomplete series."""
    incomplete = []
    for sp in (sp for st in plans for sp in st.series if sp.process and sp.attempts):
        history = "; ".join(sp.history)
        count = _retrieved_count(sp)
        if repository is not None and count is not None:
            # the node now holds the whole series: it is judged without waiting
            repository.expect(sp.series_uid, count, f"{pacs.method.upper()} from {pacs.name}")
        if sp.failed:
            incomplete.append(sp)
            notify(
                repository, Event.RETRIEVE_INCOMPLETE, f"{pacs.name}: {sp.error}; {history}",
                peer_ae=pacs.ae_title, series_uid=sp.series_uid,
            )  # fmt: skip
        elif sp.attempts > 1:
            notify(
                repository, Event.RETRIEVE_PARTIAL,
                f"{pacs.name}: complete after a retry; {history}", peer_ae=pacs.ae_title,
                series_uid=sp.series_uid,
            )  # fmt: skip
    return incomplete


def _retrieved_count(sp: SeriesPlan) -> int | None:
    """Instances a finished retrieve delivered, when that is known for the whole series:
    every sub-operation done in one attempt (or the PACS's own count after a retry)."""
    if sp.failed:
        return None
    if sp.attempts == 1 and sp.completed + sp.warning > 0:
        return sp.completed + sp.warning
    return sp.instances or None
