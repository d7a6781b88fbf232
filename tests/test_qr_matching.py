"""C-FIND matching of the Q/R SCP on an index with known rows: what the SQL narrows and
the DICOM rules decide must agree (wildcards, literal % and _, UID lists, open ranges,
ModalitiesInStudy). The network side is in test_qr.py against DCMTK and Orthanc."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from node.config import Config
from node.dimse.qr_scp import QueryRetrieveScp as QueryRetrieve
from node.store.records import InstanceInfo
from node.store.repository import Repository as Index

BASE = InstanceInfo(
    study_uid="1.2.1", series_uid="1.2.1.1", sop_uid="1.2.1.1.1",
    sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax="1.2.840.10008.1.2.1",
    modality="MR", series_description="LGE PSIR", series_number=7, instance_number=1,
    image_type="", scanning_sequence="IR", frames=[("0\\0\\0", 300.0)],
    patient={"PatientID": "P_1", "PatientName": "Doe^Jane"},
    study={"StudyDate": "20260110", "AccessionNumber": "A%1", "StudyDescription": "Cardiac"},
)  # fmt: skip


@pytest.fixture()
def qr(tmp_path: Path) -> QueryRetrieve:
    index = Index(f"sqlite:///{tmp_path / 'index.db'}")
    second = replace(
        BASE, study_uid="1.2.2", series_uid="1.2.2.1", sop_uid="1.2.2.1.1",
        patient={"PatientID": "PX1", "PatientName": "Roe^John"},
        study={"StudyDate": "20260301", "AccessionNumber": "A21", "StudyDescription": "Heart"},
    )  # fmt: skip
    sr = replace(second, series_uid="1.2.2.2", sop_uid="1.2.2.2.1", modality="SR",
                 series_number=9902)  # fmt: skip
    for i, info in enumerate((BASE, replace(BASE, sop_uid="1.2.1.1.2"), second, sr)):
        index.record_instance(info, f"/x/{i}", 1, "S", "a")
    yield QueryRetrieve(Config(), index)
    index.close()


def studies(qr: QueryRetrieve, **keys: str) -> list[str]:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for k, v in keys.items():
        setattr(ds, k, v)
    _, rows = qr.match(ds)
    return sorted({r.study.study_uid for r in rows})


def test_wildcards_are_case_insensitive_and_sql_wildcards_are_literal(qr) -> None:
    assert studies(qr, PatientName="doe*") == ["1.2.1"]
    assert studies(qr, PatientID="P_*") == ["1.2.1"]  # "_" is not a wildcard (not PX1)
    assert studies(qr, PatientID="P?1") == ["1.2.1", "1.2.2"]
    assert studies(qr, AccessionNumber="A%*") == ["1.2.1"]  # "%" is not one (not A21)
    assert studies(qr, StudyDescription="*ar*") == ["1.2.1", "1.2.2"]


def test_uid_lists_ranges_and_modalities_in_study(qr) -> None:
    assert studies(qr, StudyInstanceUID="1.2.1\\1.2.2") == ["1.2.1", "1.2.2"]
    assert studies(qr, StudyInstanceUID="1.2.9") == []
    assert studies(qr, StudyDate="20260201-") == ["1.2.2"]
    assert studies(qr, StudyDate="-20260201") == ["1.2.1"]
    assert studies(qr, StudyDate="20260101-20260131") == ["1.2.1"]
    assert studies(qr, ModalitiesInStudy="SR") == ["1.2.2"]  # the study, via its other series
    assert studies(qr, ModalitiesInStudy="MR") == ["1.2.1", "1.2.2"]


def test_series_and_image_levels_narrow_to_what_was_asked(qr) -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = "1.2.1"
    ds.SeriesInstanceUID = "1.2.1.1"
    ds.SOPInstanceUID = ["1.2.1.1.2", "1.2.9.9"]
    _, rows = qr.match(ds)
    assert [r.instance.sop_uid for r in rows] == ["1.2.1.1.2"]
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = "1.2.2"
    ds.Modality = "SR"
    ds.SeriesNumber = "9902"
    _, rows = qr.match(ds)
    assert {r.series.series_uid for r in rows} == {"1.2.2.2"}
