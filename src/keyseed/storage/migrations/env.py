"""Alembic environment: runs on the connection :func:`keyseed.storage.sql.migrate` passes in.

Online only. The caller holds the connection inside a transaction (and, on PostgreSQL, an
advisory lock), so several server processes starting at once upgrade the schema exactly once.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from keyseed.storage.schema import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("keyseed migrations run only through keyseed.storage.sql.migrate")

context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
