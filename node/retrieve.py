"""Pull LGE series from a PACS: C-FIND (study, then series level), the node's selection
rules on the C-FIND attributes, then C-MOVE of only the chosen series to the node's own
AE title (or C-GET, forwarded to the node by C-STORE). What arrives is processed like a
pushed study. Sub-operations are tracked; a partial move is recorded and retried."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from node.config import Config, Pacs
from node.logs import event
from node.selector import SeriesFacts, choose

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


@dataclass
class StudyPlan:
    study_uid: str
    study_date: str
    series: list[SeriesPlan] = field(default_factory=list)


def _pacs(config: Config, name: str) -> Pacs:
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
            if code in (0xFF00, 0xFF01) and ds is not None:
                found.append(ds)
            elif code != 0x0000:
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


def _move(config: Config, pacs: Pacs, study_uid: str, sp: SeriesPlan,
          progress: Callable[[SeriesPlan, int], None]) -> None:  # fmt: skip
    ae = _ae(config)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.StudyInstanceUID = study_uid
    q.SeriesInstanceUID = sp.series_uid
    assoc = _associate(ae, pacs)
    try:
        final = None
        for status, _ in assoc.send_c_move(
            q, config.dicom.ae_title, StudyRootQueryRetrieveInformationModelMove
        ):
            if not status:
                raise RetrieveError(
                    f"PACS {pacs.name} aborted the C-MOVE of series {sp.series_uid} to "
                    f"{config.dicom.ae_title} (does the PACS know the node as a modality?)"
                )
            code = int(status.Status)
            sp.completed, sp.failed, sp.warning = _counts(status)
            remaining = int(status.get("NumberOfRemainingSuboperations", 0) or 0)
            progress(sp, remaining)
            final = code
        moved_any = sp.completed or sp.failed or sp.warning
        if final not in (0x0000, 0xB000) and moved_any:
            # Some PACS (Orthanc) stop at the first failed sub-operation and send no
            # final counts: whatever did not arrive counts as failed.
            missing = (sp.instances or 0) - sp.completed - sp.warning
            sp.failed = max(sp.failed, missing, 1)
        elif final not in (0x0000, 0xB000):
            raise RetrieveError(
                f"PACS {pacs.name} refused the C-MOVE of series {sp.series_uid} to "
                f"{config.dicom.ae_title} (status 0x{final or 0:04X}; does the PACS know the "
                f"node as a modality? did the node refuse an instance? see lge-node status)"
            )
    finally:
        assoc.release()


def _get(config: Config, pacs: Pacs, study_uid: str, sp: SeriesPlan,
         progress: Callable[[SeriesPlan, int], None]) -> None:  # fmt: skip
    """C-GET; each instance is forwarded to the node's own port by C-STORE."""
    received: list[Dataset] = []

    def on_store(ev: Any) -> int:
        ds = ev.dataset
        ds.file_meta = ev.file_meta
        received.append(ds)
        return 0x0000

    ae = _ae(config)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for cx in StoragePresentationContexts[:120]:
        ae.add_requested_context(cx.abstract_syntax)
        roles.append(build_role(cx.abstract_syntax, scp_role=True))
    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.StudyInstanceUID = study_uid
    q.SeriesInstanceUID = sp.series_uid
    assoc = _associate(ae, pacs, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        final = None
        for status, _ in assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet):
            if not status:
                raise RetrieveError(f"PACS {pacs.name}: C-GET got no response")
            sp.completed, sp.failed, sp.warning = _counts(status)
            progress(sp, int(status.get("NumberOfRemainingSuboperations", 0) or 0))
            final = int(status.Status)
        if final not in (0x0000, 0xB000) and not (sp.completed or sp.failed or sp.warning):
            raise RetrieveError(f"PACS {pacs.name} refused the C-GET (status 0x{final or 0:04X})")
    finally:
        assoc.release()
    _forward(config, received)


def _forward(config: Config, datasets: list[Dataset]) -> None:
    ae = _ae(config)
    syntaxes: dict[str, str] = {}
    for d in datasets:
        syntaxes.setdefault(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID))
    for sop, syntax in sorted(syntaxes.items())[:128]:
        ae.add_requested_context(sop, list(dict.fromkeys([syntax, "1.2.840.10008.1.2.1"])))
    bind = config.dicom.bind_address
    host = "127.0.0.1" if bind in ("0.0.0.0", "") else bind
    assoc = ae.associate(host, config.dicom.port, ae_title=config.dicom.ae_title)
    if not assoc.is_established:
        raise RetrieveError("the node itself did not accept the retrieved instances")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if not status or int(status.Status) != 0:
                raise RetrieveError(f"the node refused instance {ds.SOPInstanceUID}")
    finally:
        assoc.release()


def fetch(
    config: Config, pacs: Pacs, plans: list[StudyPlan],
    progress: Callable[[SeriesPlan, int], None] = lambda sp, remaining: None,
) -> None:  # fmt: skip
    """Move (or get) the chosen series; series with failed sub-operations are tried again
    up to ``pacs.max_attempts`` times, and what still failed is recorded on the plan."""
    transfer = _get if pacs.method == "get" else _move
    for st in plans:
        for sp in st.series:
            if not sp.process:
                continue
            while sp.attempts < pacs.max_attempts:
                sp.attempts += 1
                transfer(config, pacs, st.study_uid, sp, progress)
                event(
                    log, "series_retrieved", pacs=pacs.name, study=st.study_uid,
                    series=sp.series_uid, completed=sp.completed, failed=sp.failed,
                    warning=sp.warning, attempt=sp.attempts,
                )  # fmt: skip
                if sp.failed == 0:
                    sp.error = ""
                    break
                sp.error = f"{sp.failed} sub-operation(s) failed (attempt {sp.attempts})"
