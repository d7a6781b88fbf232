"""Query/Retrieve SCP (study root): C-FIND at study, series and image level, C-MOVE to
destinations from config only, and C-GET, over what the node holds (its results, and
received series within retention), so a workstation can pull results."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from node.config import Config
from node.dimse.common import NO_DELAY, Dimse, contexts_for
from node.events import Event, notify
from node.logs import event
from node.store.query import KeyMatch, Query
from node.store.records import QrRow
from node.store.repository import Repository
from pipeline.instance import listed

log = logging.getLogger("node.qr")


LEVELS = ("STUDY", "SERIES", "IMAGE")


class QueryError(ValueError):
    """The identifier cannot be answered; the message says why."""


class NotAuthorized(PermissionError):
    """The peer's access scope does not allow this request; the message says why."""


def _str(value: int | None) -> str:
    return "" if value is None else str(value)


def _contexts(rows: list[QrRow]) -> list[Any]:
    return contexts_for((r.instance.sop_class_uid, r.instance.transfer_syntax) for r in rows)


STUDY_KEYS = {
    "StudyInstanceUID": lambda r: r.study.study_uid,
    "PatientID": lambda r: r.study.patient_id,
    "PatientName": lambda r: r.study.patient_name,
    "PatientBirthDate": lambda r: r.study.patient_birth_date,
    "PatientSex": lambda r: r.study.patient_sex,
    "AccessionNumber": lambda r: r.study.accession_number,
    "StudyDate": lambda r: r.study.study_date,
    "StudyTime": lambda r: r.study.study_time,
    "StudyDescription": lambda r: r.study.study_description,
    "StudyID": lambda r: r.study.study_id,
}
SERIES_KEYS = {
    "SeriesInstanceUID": lambda r: r.series.series_uid,
    "Modality": lambda r: r.series.modality,
    "SeriesNumber": lambda r: _str(r.series.series_number),
    "SeriesDescription": lambda r: r.series.description,
}
IMAGE_KEYS = {
    "SOPInstanceUID": lambda r: r.instance.sop_uid,
    "SOPClassUID": lambda r: r.instance.sop_class_uid,
    "InstanceNumber": lambda r: _str(r.instance.instance_number),
}
RANGED = {"StudyDate", "StudyTime", "PatientBirthDate"}


def keys_for(level: str) -> dict[str, Callable[[QrRow], str]]:
    """The keys matched and returned at ``level`` (those of the levels above included)."""
    keys = dict(STUDY_KEYS)
    if level in ("SERIES", "IMAGE"):
        keys |= SERIES_KEYS
    if level == "IMAGE":
        keys |= IMAGE_KEYS
    return keys


UNIQUE = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}


class QueryRetrieveScp:
    """C-FIND, C-MOVE and C-GET handlers (registered by `node.dimse.scp`)."""

    def __init__(self, config: Config, repository: Repository) -> None:
        self.config = config
        self.repository = repository

    # -- matching ----------------------------------------------------------------------

    def scope(self, peer: str) -> frozenset[str] | None:
        """The senders whose studies ``peer`` may see (None: all); raises `NotAuthorized`."""
        access = self.config.access
        if not access.allowed_peers:
            if access.open_query_retrieve:
                return None
            raise NotAuthorized(
                "query/retrieve is closed: access.allowed_peers is empty (list the peers "
                "that may query, or set access.open_query_retrieve on a lab network)"
            )
        entries = [p for p in access.allowed_peers if p.ae_title == peer]
        if any(p.query == "all" for p in entries):
            return None
        own = [p for p in entries if p.query == "own"]
        if not own:
            raise NotAuthorized(f"{peer!r} may not query or retrieve (access query = none)")
        return frozenset({peer, *(ae for p in own for ae in p.see_sent_by)})

    def match(
        self, identifier: Dataset, senders: frozenset[str] | None = None
    ) -> tuple[str, list[QrRow]]:
        level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        if level not in LEVELS:
            raise QueryError(f"QueryRetrieveLevel {level!r} is not STUDY, SERIES or IMAGE")
        keys = keys_for(level)
        # Keys we do not match on are returned empty, not an error (PS3.4 C.2.2.1.3).
        criteria = {
            kw: m for kw in keys if kw in identifier
            and (m := KeyMatch.parse(identifier.get(kw), kw in RANGED)) is not None
        }  # fmt: skip
        wanted = identifier.get("ModalitiesInStudy")
        modalities = sorted(listed(wanted) or str(wanted).split("\\")) if wanted else []
        rows = self.repository.qr_rows(Query(criteria, modalities, senders))
        return level, [r for r in rows if all(m.test(keys[k](r)) for k, m in criteria.items())]

    def response(self, level: str, identifier: Dataset, group: list[QrRow]) -> Dataset:
        r = group[0]
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        ds.SpecificCharacterSet = "ISO_IR 192"
        getters = keys_for(level)
        for elem in identifier:
            kw = elem.keyword
            if kw in getters:
                setattr(ds, kw, getters[kw](r) or None)
            elif kw == "ModalitiesInStudy":
                mods = {g.series.modality for g in group if g.series.modality}
                ds.ModalitiesInStudy = sorted(mods)
            elif kw == "NumberOfStudyRelatedInstances":
                ds.NumberOfStudyRelatedInstances = len(group)
            elif kw == "NumberOfStudyRelatedSeries":
                ds.NumberOfStudyRelatedSeries = len({g.series.id for g in group})
            elif kw == "NumberOfSeriesRelatedInstances":
                ds.NumberOfSeriesRelatedInstances = len(group)
            elif kw not in ("QueryRetrieveLevel", "SpecificCharacterSet") and kw:
                setattr(ds, kw, None)
        setattr(ds, UNIQUE[level], getters[UNIQUE[level]](r))
        if level in ("SERIES", "IMAGE"):
            ds.StudyInstanceUID = r.study.study_uid
        if level == "IMAGE":
            ds.SeriesInstanceUID = r.series.series_uid
        ds.RetrieveAETitle = self.config.dicom.ae_title
        return ds

    @staticmethod
    def group(level: str, rows: list[QrRow]) -> list[list[QrRow]]:
        groups: dict[str, list[QrRow]] = {}
        for r in rows:
            key = {"STUDY": r.study.study_uid, "SERIES": r.series.series_uid,
                   "IMAGE": r.instance.sop_uid}[level]  # fmt: skip
            groups.setdefault(key, []).append(r)
        return list(groups.values())

    # -- services ----------------------------------------------------------------------

    def on_find(self, ev: Any) -> Iterator[tuple[int, Dataset | None]]:
        peer = str(ev.assoc.requestor.ae_title).strip()
        try:
            identifier = ev.identifier
            level, rows = self.match(identifier, self.scope(peer))
        except NotAuthorized as exc:
            yield from self._fail(peer, Event.FIND_REFUSED, Dimse.NOT_AUTHORIZED, str(exc))
            return
        except QueryError as exc:
            yield from self._fail(peer, Event.FIND_REFUSED, Dimse.IDENTIFIER_MISMATCH, str(exc))
            return
        except Exception as exc:  # an identifier pydicom cannot decode
            yield from self._fail(
                peer, Event.FIND_REFUSED, Dimse.UNABLE_TO_PROCESS, f"bad identifier: {exc}"
            )
            return
        groups = self.group(level, rows)
        event(log, "find", peer_ae=peer, query_level=level, matches=len(groups))
        for group in groups:
            if ev.is_cancelled:
                yield Dimse.CANCEL, None
                return
            yield Dimse.PENDING, self.response(level, identifier, group)

    def _fail(self, peer: str, what: Event, status: int, reason: str) -> Iterator[tuple[int, None]]:
        notify(self.repository, what, reason, peer_ae=peer)
        yield status, None

    def _instances(self, ev: Any, peer: str, what: Event) -> list[QrRow] | int:
        try:
            level, rows = self.match(ev.identifier, self.scope(peer))
        except NotAuthorized as exc:
            list(self._fail(peer, what, Dimse.NOT_AUTHORIZED, str(exc)))
            return Dimse.NOT_AUTHORIZED
        except QueryError as exc:
            list(self._fail(peer, what, Dimse.IDENTIFIER_MISMATCH, str(exc)))
            return Dimse.IDENTIFIER_MISMATCH
        except Exception as exc:
            list(self._fail(peer, what, Dimse.UNABLE_TO_PROCESS, f"bad identifier: {exc}"))
            return Dimse.UNABLE_TO_PROCESS
        if not any(k in ev.identifier for k in (UNIQUE[level],)):
            list(self._fail(peer, what, Dimse.IDENTIFIER_MISMATCH, f"{UNIQUE[level]} is required"))
            return Dimse.IDENTIFIER_MISMATCH
        return rows

    def on_move(self, ev: Any) -> Iterator[Any]:
        peer = str(ev.assoc.requestor.ae_title).strip()
        target = str(ev.move_destination).strip()
        dest = next((d for d in self.config.destinations if d.ae_title == target), None)
        if dest is None:
            reason = f"move destination {target!r} is not a configured destination"
            notify(self.repository, Event.MOVE_REFUSED, reason, peer_ae=peer)
            yield None, None
            return
        rows = self._instances(ev, peer, Event.MOVE_REFUSED)
        if isinstance(rows, int):
            # pynetdicom answers an exception before the destination with a failure
            # status (0xC511); after it, it could only say Success with zero sub-ops.
            raise QueryError("C-MOVE identifier refused (see the node's events)")
        yield dest.host, dest.port, {"contexts": _contexts(rows), "evt_handlers": [NO_DELAY]}
        event(log, "move", peer_ae=peer, destination=target, instances=len(rows))
        yield len(rows)
        yield from self._datasets(ev, rows)

    def on_get(self, ev: Any) -> Iterator[Any]:
        peer = str(ev.assoc.requestor.ae_title).strip()
        rows = self._instances(ev, peer, Event.GET_REFUSED)
        if isinstance(rows, int):
            yield 0
            yield rows, None
            return
        event(log, "get", peer_ae=peer, instances=len(rows))
        yield len(rows)
        yield from self._datasets(ev, rows)

    @staticmethod
    def _datasets(ev: Any, rows: list[QrRow]) -> Iterator[tuple[int, Dataset | None]]:
        for r in rows:
            if ev.is_cancelled:
                yield Dimse.CANCEL, None
                return
            try:
                yield Dimse.PENDING, pydicom.dcmread(r.instance.path)
            except OSError:
                yield Dimse.PENDING, None  # counted as a failed sub-operation
