"""keyseed.server
~~~~~~~~~~~~~~

The application server (102): ``keyseed server``. An asyncio driver around the sans-I/O
server core: the device channel on one listener, the admin API and metrics on another, durable
state in SQL through :mod:`keyseed.storage`.
"""

from __future__ import annotations

from .apps import EchoApp, NullApp, ServerApp, make_app
from .config import ConfigError, ServerConfig, load_config
from .run import RunningServer, serve, start_server

__all__ = [
    "ConfigError",
    "EchoApp",
    "NullApp",
    "RunningServer",
    "ServerApp",
    "ServerConfig",
    "load_config",
    "make_app",
    "serve",
    "start_server",
]
