"""Alembic environment: migrations run on the connection `node.store.migrate` hands over
(the node's own engine), never from a URL in an ini file."""

from __future__ import annotations

from alembic import context

from node.store.migrate import ours_only
from node.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things: copy-and-move tables
    compare_type=True,
    include_object=ours_only,
)
with context.begin_transaction():
    context.run_migrations()
