"""The index schema, versioned with Alembic (`node/store/migrations/`): every process that
opens the index brings it to the newest revision first, one process at a time.

A database made before migrations existed (tables, no ``alembic_version``) is stamped
with the first revision, whose schema it has, and upgraded from there. On PostgreSQL an
advisory lock keeps several nodes and workers starting together from migrating at once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from node.logs import event
from node.store.schema import Base

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

log = logging.getLogger("node.migrate")
logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines are per step noise

MIGRATIONS = Path(__file__).parent / "migrations"
FIRST = "0001"
# The newest revision, known without importing Alembic (half a second of start-up on
# every start, when there is nothing to migrate); a test holds it equal to Alembic's head.
HEAD = "0003"
LOCK_KEY = 0x4C47454E  # "LGEN": the advisory lock migrations hold on PostgreSQL


def ours_only(obj: object, name: str | None, kind: str, reflected: bool, other: object) -> bool:
    """Tables of others in the same database (apscheduler's, procrastinate's) are not
    the index's to migrate (Alembic's ``include_object``)."""
    return kind != "table" or name in Base.metadata.tables


def _config(connection: Connection) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision of the migration scripts (Alembic's view)."""
    from alembic.script import ScriptDirectory

    rev = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert rev is not None
    return rev


def current(connection: Connection) -> str | None:
    """The index's revision (None: not under Alembic yet, or empty)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    found = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if found is None else str(found)


def upgrade(engine: Engine) -> None:
    """Bring the index to the newest revision (a no-op when it is there)."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        before = current(connection)
        if before == HEAD:
            return
        from alembic import command

        cfg = _config(connection)
        if before is None and inspect(connection).has_table("series"):
            command.stamp(cfg, FIRST)  # made by create_all before migrations existed
            before = FIRST
        command.upgrade(cfg, "head")
        event(log, "index_migrated", before=before or "empty", now=HEAD)
