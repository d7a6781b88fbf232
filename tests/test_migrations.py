"""The index schema under Alembic: a fresh database, one made before migrations existed,
and several processes opening a shared PostgreSQL at once all end at the newest
revision, with the schema the code's models describe and no row lost."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from node.store import migrate
from node.store.records import InstanceInfo, Received
from node.store.repository import Repository
from node.store.schema import Base


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    return str(request.getfixturevalue("postgres").new_database())


def _differences(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as con:
            context = MigrationContext.configure(
                con, opts={"compare_type": True, "include_object": migrate.ours_only}
            )
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as con:
            return migrate.current(con)
    finally:
        engine.dispose()


def _received(n: int) -> Received:
    info = InstanceInfo(
        study_uid="1.2.3", series_uid="1.2.3.1", sop_uid=f"1.2.3.1.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax="1.2.840.10008.1.2.1",
        modality="MR", series_description="LGE", series_number=1, instance_number=n,
        image_type="", scanning_sequence="IR", frames=[(f"0\\0\\{n}", 300.0)],
        patient={"PatientID": "X"}, study={},
    )  # fmt: skip
    return Received(info, f"/data/{n}.dcm", 100, "SCANNER", "127.0.0.1", False, 0.0)


def test_the_head_the_node_checks_on_start_is_the_newest_script() -> None:
    assert migrate.head() == migrate.HEAD


def test_a_new_index_is_at_the_newest_revision_with_the_models_schema(url: str) -> None:
    Repository(url).close()
    assert _revision(url) == migrate.head()
    assert _differences(url) == []


def test_an_index_made_before_migrations_is_adopted_with_its_rows(url: str) -> None:
    repo = Repository(url)
    repo.record_batch([_received(n) for n in range(3)])
    repo.close()
    engine = create_engine(url)
    with engine.begin() as con:  # as it was then: the first schema with rows, no version
        command.downgrade(migrate._config(con), migrate.FIRST)
        con.execute(text("DROP TABLE alembic_version"))
    with engine.connect() as con:
        assert "nodes" not in inspect(con).get_table_names()
    engine.dispose()
    assert _revision(url) is None
    again = Repository(url)
    series = again.series_by_uid("1.2.3.1")
    assert series is not None and len(again.series_paths(series.id)) == 3
    again.close()
    assert _revision(url) == migrate.head()
    assert _differences(url) == []


def test_nodes_starting_together_on_postgresql_migrate_once(postgres) -> None:
    url = postgres.new_database()
    errors: list[BaseException] = []

    def open_index() -> None:
        try:
            Repository(url).close()
        except BaseException as exc:  # collected: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=open_index) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert _revision(url) == migrate.head()
    assert _differences(url) == []
