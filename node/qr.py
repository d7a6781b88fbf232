"""Query/Retrieve SCP (study root): C-FIND at study, series and image level, C-MOVE to
destinations from config only, and C-GET, over what the node holds (its results, and
received series within retention), so a workstation can pull results."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, and_, select

from node.config import Config
from node.dimse import contexts_for, listed
from node.index import Index, Instance, Series, SeriesState, Study
from node.logs import event

log = logging.getLogger("node.qr")

# C-FIND / C-MOVE / C-GET statuses (PS3.4 C.4)
PENDING = 0xFF00
IDENTIFIER_MISMATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
MOVE_DESTINATION_UNKNOWN = 0xA801
LEVELS = ("STUDY", "SERIES", "IMAGE")


class QueryError(ValueError):
    """The identifier cannot be answered; the message says why."""


@dataclass(frozen=True)
class Row:
    study: Study
    series: Series
    instance: Instance


@dataclass(frozen=True)
class KeyMatch:
    """One key of an identifier, parsed once: matched in SQL (`clause`, to narrow) and in
    Python (`test`, to decide); the two read the same parse, so they cannot drift."""

    kind: str  # list | range | wild | exact
    values: tuple[str, ...]  # list: the values; range: (low, high); wild, exact: (text,)

    @classmethod
    def parse(cls, pattern: Any, ranged: bool) -> KeyMatch | None:
        """None for universal matching (empty); a UID list (backslash separated or
        multi-valued), a range ``A-B`` (open ends allowed) for dates and times, * and ?
        wildcards, or single value matching."""
        if pattern is None or pattern == "":
            return None
        values = listed(pattern)
        text = str(pattern)
        if values is None and "\\" in text:
            values = text.split("\\")
        if values is not None:
            return cls("list", tuple(values))
        if ranged and "-" in text:
            return cls("range", tuple(text.split("-", 1)))
        if "*" in text or "?" in text:
            return cls("wild", (text,))
        return cls("exact", (text,))

    def test(self, value: str) -> bool:
        if self.kind == "list":
            return value in self.values
        if self.kind == "range":
            low, high = self.values
            return (not low or value >= low) and (not high or value <= high)
        if self.kind == "wild":
            return fnmatch.fnmatchcase(value.upper(), self.values[0].upper())
        return value == self.values[0]

    def clause(self, column: Any) -> ColumnElement[bool] | None:
        if self.kind == "list":
            return column.in_(self.values)
        if self.kind == "range":
            low, high = self.values
            bounds = ([column >= low] if low else []) + ([column <= high] if high else [])
            return and_(*bounds) if bounds else None
        if self.kind == "wild":
            text = self.values[0].replace("%", "\\%").replace("_", "\\_")
            return column.ilike(text.replace("*", "%").replace("?", "_"), escape="\\")
        return column == self.values[0]


def _str(value: int | None) -> str:
    return "" if value is None else str(value)


def _contexts(rows: list[Row]) -> list[Any]:
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
# String keys are matched in SQL first, so a query reads only its candidates; the Python
# matching above then decides (integer keys such as SeriesNumber are matched there only).
COLUMNS: dict[str, Any] = {
    "StudyInstanceUID": Study.study_uid,
    "PatientID": Study.patient_id,
    "PatientName": Study.patient_name,
    "PatientBirthDate": Study.patient_birth_date,
    "PatientSex": Study.patient_sex,
    "AccessionNumber": Study.accession_number,
    "StudyDate": Study.study_date,
    "StudyTime": Study.study_time,
    "StudyDescription": Study.study_description,
    "StudyID": Study.study_id,
    "SeriesInstanceUID": Series.series_uid,
    "Modality": Series.modality,
    "SeriesDescription": Series.description,
    "SOPInstanceUID": Instance.sop_uid,
    "SOPClassUID": Instance.sop_class_uid,
}


def _keys(level: str) -> dict[str, Callable[[Row], str]]:
    """The keys matched and returned at ``level`` (those of the levels above included)."""
    keys = dict(STUDY_KEYS)
    if level in ("SERIES", "IMAGE"):
        keys |= SERIES_KEYS
    if level == "IMAGE":
        keys |= IMAGE_KEYS
    return keys


UNIQUE = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}


class QueryRetrieve:
    def __init__(self, config: Config, index: Index) -> None:
        self.config = config
        self.index = index

    # -- matching ----------------------------------------------------------------------

    def _rows(self, criteria: dict[str, KeyMatch], modalities: list[str]) -> list[Row]:
        q = (
            select(Study, Series, Instance)
            .join(Series, Series.study_fk == Study.id)
            .join(Instance, Instance.series_fk == Series.id)
            .where(Series.state != SeriesState.PURGED)
        )
        for keyword, m in criteria.items():
            clause = m.clause(COLUMNS[keyword]) if keyword in COLUMNS else None
            if clause is not None:
                q = q.where(clause)
        if modalities:
            other = Series.__table__.alias("other")
            q = q.where(
                select(other.c.id)
                .where(other.c.study_fk == Study.id, other.c.modality.in_(modalities))
                .where(other.c.state != SeriesState.PURGED)
                .exists()
            )
        with self.index.read() as s:
            return [Row(*r) for r in s.execute(q).all()]

    def match(self, identifier: Dataset) -> tuple[str, list[Row]]:
        level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        if level not in LEVELS:
            raise QueryError(f"QueryRetrieveLevel {level!r} is not STUDY, SERIES or IMAGE")
        keys = _keys(level)
        # Keys we do not match on are returned empty, not an error (PS3.4 C.2.2.1.3).
        criteria = {
            kw: m for kw in keys if kw in identifier
            and (m := KeyMatch.parse(identifier.get(kw), kw in RANGED)) is not None
        }  # fmt: skip
        wanted = identifier.get("ModalitiesInStudy")
        modalities = sorted(listed(wanted) or str(wanted).split("\\")) if wanted else []
        rows = self._rows(criteria, modalities)
        return level, [r for r in rows if all(m.test(keys[k](r)) for k, m in criteria.items())]

    def _response(self, level: str, identifier: Dataset, group: list[Row]) -> Dataset:
        r = group[0]
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        ds.SpecificCharacterSet = "ISO_IR 192"
        getters = _keys(level)
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
    def _group(level: str, rows: list[Row]) -> list[list[Row]]:
        groups: dict[str, list[Row]] = {}
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
            level, rows = self.match(identifier)
        except QueryError as exc:
            yield from self._fail(peer, "find", IDENTIFIER_MISMATCH, str(exc))
            return
        except Exception as exc:  # an identifier pydicom cannot decode
            yield from self._fail(peer, "find", UNABLE_TO_PROCESS, f"bad identifier: {exc}")
            return
        groups = self._group(level, rows)
        event(log, "find", peer_ae=peer, query_level=level, matches=len(groups))
        for group in groups:
            if ev.is_cancelled:
                yield 0xFE00, None
                return
            yield PENDING, self._response(level, identifier, group)

    def _fail(self, peer: str, what: str, status: int, reason: str) -> Iterator[tuple[int, None]]:
        event(log, f"{what}_refused", logging.WARNING, peer_ae=peer, reason=reason)
        self.index.record_event(f"{what}_refused", reason, "WARNING", peer)
        yield status, None

    def _instances(self, ev: Any, peer: str, what: str) -> list[Row] | int:
        try:
            level, rows = self.match(ev.identifier)
        except QueryError as exc:
            list(self._fail(peer, what, IDENTIFIER_MISMATCH, str(exc)))
            return IDENTIFIER_MISMATCH
        except Exception as exc:
            list(self._fail(peer, what, UNABLE_TO_PROCESS, f"bad identifier: {exc}"))
            return UNABLE_TO_PROCESS
        if not any(k in ev.identifier for k in (UNIQUE[level],)):
            list(self._fail(peer, what, IDENTIFIER_MISMATCH, f"{UNIQUE[level]} is required"))
            return IDENTIFIER_MISMATCH
        return rows

    def on_move(self, ev: Any) -> Iterator[Any]:
        peer = str(ev.assoc.requestor.ae_title).strip()
        target = str(ev.move_destination).strip()
        dest = next((d for d in self.config.destinations if d.ae_title == target), None)
        if dest is None:
            reason = f"move destination {target!r} is not a configured destination"
            event(log, "move_refused", logging.WARNING, peer_ae=peer, reason=reason)
            self.index.record_event("move_refused", reason, "WARNING", peer)
            yield None, None
            return
        rows = self._instances(ev, peer, "move")
        if isinstance(rows, int):
            # pynetdicom answers an exception before the destination with a failure
            # status (0xC511); after it, it could only say Success with zero sub-ops.
            raise QueryError("C-MOVE identifier refused (see the node's events)")
        yield dest.host, dest.port, {"contexts": _contexts(rows)}
        event(log, "move", peer_ae=peer, destination=target, instances=len(rows))
        yield len(rows)
        yield from self._datasets(ev, rows)

    def on_get(self, ev: Any) -> Iterator[Any]:
        peer = str(ev.assoc.requestor.ae_title).strip()
        rows = self._instances(ev, peer, "get")
        if isinstance(rows, int):
            yield 0
            yield rows, None
            return
        event(log, "get", peer_ae=peer, instances=len(rows))
        yield len(rows)
        yield from self._datasets(ev, rows)

    @staticmethod
    def _datasets(ev: Any, rows: list[Row]) -> Iterator[tuple[int, Dataset | None]]:
        for r in rows:
            if ev.is_cancelled:
                yield 0xFE00, None
                return
            try:
                yield PENDING, pydicom.dcmread(r.instance.path)
            except OSError:
                yield PENDING, None  # counted as a failed sub-operation
