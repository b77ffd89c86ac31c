"""keyseed.storage.migrations
~~~~~~~~~~~~~~~~~~~~~~~~~~~~

Versioned schema migrations (Alembic), shipped inside the package so that an installed server
upgrades its database at start without an ``alembic.ini`` or a working directory: the
configuration is built in code by :func:`keyseed.storage.sql.alembic_config`.

A new revision goes in ``versions/`` as ``NNNN_<what>.py`` with ``down_revision`` naming the
previous one; :data:`keyseed.storage.schema.metadata` must describe the result.
"""
