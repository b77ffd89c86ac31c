"""Fixtures of the storage tests live in storekit.py (a uniquely named module, so that test
modules import its helpers without clashing with other folders' conftest files)."""

from storekit import backend, pg_schema, store

__all__ = ["backend", "pg_schema", "store"]
