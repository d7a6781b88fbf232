"""Alembic environment: migrations run on the connection `node.store.migrate` hands over
(the node's own engine), never from a URL in an ini file."""

from __future__ import annotations

from alembic import context

from node.store.schema import Base


def _ours(obj: object, name: str | None, kind: str, reflected: bool, other: object) -> bool:
    """Tables of others in the same database (apscheduler's, procrastinate's) are not
    the index's to migrate."""
    return kind != "table" or name in Base.metadata.tables


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things: copy-and-move tables
    compare_type=True,
    include_object=_ours,
)
with context.begin_transaction():
    context.run_migrations()
