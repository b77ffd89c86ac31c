"""Puts this folder on ``sys.path`` (pytest's default "prepend" import mode does so for the
folder of every conftest.py), so that tests in any subfolder import the shared helpers:
``from pgtest import pg_schema``, ``from waiting import wait_until``."""
