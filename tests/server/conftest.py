"""Fixtures of the server tests live in servkit.py (a uniquely named module, so that test
modules import its helpers without clashing with other folders' conftest files)."""

from servkit import any_server, pg_schema, server, short_s27

__all__ = ["any_server", "pg_schema", "server", "short_s27"]
