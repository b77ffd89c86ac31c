"""keyseed.settings
~~~~~~~~~~~~~~~~~

Settings from three sources, one way for every command. :func:`load_settings` fills a frozen
dataclass in this order of precedence: command-line flags, then environment variables
(``<prefix><FIELD>``), then a TOML file, then the dataclass's defaults. The TOML file is named
by the ``config`` flag or ``<prefix>CONFIG``; its keys sit at top level or under one
``[section]``, and ``admin-port`` reads as ``admin_port``. :func:`read_toml_section` is the
file part alone, for callers that pick their values themselves (``keyseed admin``).

Every failure is a :class:`ConfigError` whose message names the setting or the file, never a
value: a value may be a secret (a setup code, a token).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

D = TypeVar("D", bound="DataclassInstance")

#: The field that holds the TOML file's path; never read from the file or as a value.
CONFIG_FIELD = "config"


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range, or the TOML file
    cannot be read."""


def read_toml_section(path: Path, section: str, known: Collection[str]) -> dict[str, Any]:
    """The settings in ``path``: its ``[section]`` table if it has one, else its top level,
    keyed by setting name (``-`` read as ``_``).

    Raises:
        ConfigError: the file cannot be read or is not TOML, ``[section]`` is not a table, or
            a key is not one of ``known``.
    """
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    table = raw.get(section, raw)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [{section}] is not a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        out[name] = value
    return out


def load_settings(
    cls: type[D],
    flags: Mapping[str, Any] | None,
    env: Mapping[str, str] | None,
    *,
    env_prefix: str,
    section: str,
    convert: Callable[[str, Any], Any],
    required: Collection[str] = (),
) -> D:
    """Merge flags > environment > TOML file > defaults into ``cls``.

    Args:
        cls: a dataclass with keyword fields, one of them ``config``: the TOML file's path
            (None without one).
        flags: command-line values keyed by field name; None means not given.
        env: the environment (default ``os.environ``); ``<env_prefix><FIELD>`` is read for
            every field, ``<env_prefix>CONFIG`` names the TOML file when no flag does.
        section: the TOML table the settings may sit under.
        convert: ``convert(name, value)`` turns a flag, a string from the environment or a
            TOML value into the field's type; it raises ConfigError for a bad value.
        required: fields without a default; one given by no source is an error.

    Raises:
        ConfigError: a value is missing or invalid (from ``convert`` or ``cls``), or the TOML
            file cannot be read or holds an unknown key.
    """
    names = [f.name for f in dataclasses.fields(cls) if f.name != CONFIG_FIELD]
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    path = given.pop(CONFIG_FIELD, None) or env.get(env_prefix + CONFIG_FIELD.upper())
    merged: dict[str, Any] = {}
    if path:
        merged.update(read_toml_section(Path(path), section, names))
    for name in names:
        value = env.get(env_prefix + name.upper())
        if value is not None:
            merged[name] = value
    merged.update(given)
    missing = [n for n in required if n not in merged]
    if missing:
        listed = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise ConfigError(f"missing {listed} (flag, environment or file)")
    values = {name: convert(name, value) for name, value in merged.items()}
    return cls(**{CONFIG_FIELD: Path(path) if path else None}, **values)


__all__ = ["ConfigError", "load_settings", "read_toml_section"]
