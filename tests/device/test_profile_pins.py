"""A device that a 206 moved to another suite (docs/protocol.md §13.2) still starts with the
settings it was installed with: the keystore keeps the fingerprint of the key pinned at
install, and ``check_pinned`` compares the configured key or pin with it (or, for ``--pin``,
with the key of the new suite). Anything else is refused. (The move itself, through both
cores, is tests/protocol/test_profile.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keyseed.crypto import fingerprint, get_suite
from keyseed.device.cli import ServerKeyError, check_pinned
from keyseed.device.config import DeviceAgentConfig
from keyseed.protocol import new_keystore
from keyseed.protocol.records import Keystore

INSTALL = get_suite("hpke-x25519").generate().public_key.raw
MOVED_TO = get_suite("hpke-mlkem768-x25519").generate().public_key.raw


def moved() -> Keystore:
    ks = new_keystore(
        device_id="oven-1",
        suite="hpke-x25519",
        server_key=INSTALL,
        install_secret=os.urandom(32),
        setup_code="12345678",
    )
    # What the device stores from a 206 that moves it (device.py _step_s10_profile).
    return ks.with_(
        suite="hpke-mlkem768-x25519",
        server_key=MOVED_TO,
        pinned_fp=fingerprint("hpke-x25519", INSTALL),
    )


def cfg(tmp_path: Path, **kw: str) -> DeviceAgentConfig:
    return DeviceAgentConfig(id="oven-1", server="ws://localhost:1", keystore=tmp_path, **kw)


def test_install_settings_still_match(tmp_path: Path) -> None:
    ks = moved()
    check_pinned(cfg(tmp_path, suite="hpke-x25519", server_key=INSTALL.hex()), ks)
    check_pinned(cfg(tmp_path, suite="hpke-x25519", pin=ks.pinned_fp.hex()), ks)  # type: ignore[union-attr]
    # The pin of the suite the device moved to is accepted as well.
    check_pinned(cfg(tmp_path, pin=fingerprint("hpke-mlkem768-x25519", MOVED_TO).hex()), ks)


def test_other_keys_are_refused(tmp_path: Path) -> None:
    ks = moved()
    other = get_suite("hpke-x25519").generate().public_key.raw
    with pytest.raises(ServerKeyError, match="pinned at install"):
        check_pinned(cfg(tmp_path, suite="hpke-x25519", server_key=other.hex()), ks)
    # The install key under another suite name is another fingerprint.
    with pytest.raises(ServerKeyError, match="pinned at install"):
        check_pinned(cfg(tmp_path, suite="rsa-oaep", server_key=INSTALL.hex()), ks)
    with pytest.raises(ServerKeyError, match="refusing to start"):
        check_pinned(cfg(tmp_path, pin="ab" * 32), ks)


def test_a_keystore_that_never_moved_is_checked_as_before(tmp_path: Path) -> None:
    ks = moved().with_(suite="hpke-x25519", server_key=INSTALL, pinned_fp=None)
    check_pinned(cfg(tmp_path, server_key=INSTALL.hex()), ks)
    with pytest.raises(ServerKeyError, match="differs from the key pinned"):
        check_pinned(cfg(tmp_path, server_key=MOVED_TO.hex()), ks)
