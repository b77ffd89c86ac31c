"""keyseed.device.keystore
~~~~~~~~~~~~~~~~~~~~~~~~~

The device's keystore file: one versioned file holding exactly the core's persistable state
(:class:`~keyseed.protocol.records.Keystore`), and beside it the device-local token of the
setup endpoint and a lock file.

Layout (all integers big-endian)::

    magic "KSEEDKS\\n" (8) | format version (1) | payload length (4) | payload | SHA-256 (32)

The payload is ``Keystore.encode()`` (canonical CBOR); the checksum covers everything before
it, so a torn or bit-flipped file is told apart from a foreign one. Every write goes through
:func:`keyseed.fsutil.atomic_write` (temporary file 0600, fsync, rename, fsync of the folder):
a crash leaves the old state or the new one, never a mix. A file that cannot be read as this
device's keystore is refused with a typed error and left exactly as it is; nothing here ever
replaces a file it could not load, and the first write creates the file exclusively.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import IO

from ..fsutil import SECRET_MODE, atomic_write, ensure_private_dir, fsync_dir
from ..protocol.errors import KeyseedError
from ..protocol.records import Keystore

#: First bytes of every keystore file.
MAGIC = b"KSEEDKS\n"
#: Format version of the file (the payload carries its own record format too).
FILE_FORMAT = 1
_HEADER = len(MAGIC) + 1 + 4
_SUM = 32
#: Largest keystore file we read (a keystore is a few hundred bytes; a PQ suite adds ~2 KiB).
MAX_FILE = 256 * 1024


class KeystoreError(Exception):
    """The keystore cannot be used. The message says why and what to do; never a secret."""


class KeystoreForeign(KeystoreError):
    """The file is not a keyseed keystore (or a newer format than this version reads)."""


class KeystoreCorrupted(KeystoreError):
    """The file is a keystore but damaged: torn, truncated or altered."""


class KeystoreMismatch(KeystoreError):
    """The keystore is valid but belongs to another device or another server key."""


class KeystoreInsecure(KeystoreError):
    """The keystore is readable or writable by other users."""


class KeystoreLocked(KeystoreError):
    """Another process runs a device on this keystore."""


def encode_file(ks: Keystore) -> bytes:
    """The file bytes for ``ks``."""
    payload = ks.encode()
    head = MAGIC + bytes([FILE_FORMAT]) + len(payload).to_bytes(4, "big")
    body = head + payload
    return body + hashlib.sha256(body).digest()


def decode_file(data: bytes, where: str = "keystore") -> Keystore:
    """Parse the file bytes.

    Raises:
        KeystoreForeign: not a keystore, or a format this version does not read.
        KeystoreCorrupted: a keystore whose bytes are damaged.
    """
    if not data.startswith(MAGIC):
        raise KeystoreForeign(f"{where} is not a keyseed device keystore")
    if len(data) < _HEADER + _SUM:
        raise KeystoreCorrupted(f"{where} is truncated")
    version = data[len(MAGIC)]
    if version != FILE_FORMAT:
        raise KeystoreForeign(
            f"{where} has keystore format {version}; this keyseed reads format {FILE_FORMAT}"
        )
    length = int.from_bytes(data[len(MAGIC) + 1 : _HEADER], "big")
    if len(data) != _HEADER + length + _SUM:
        raise KeystoreCorrupted(f"{where} is truncated or has trailing bytes")
    body, digest = data[:-_SUM], data[-_SUM:]
    if not hmac.compare_digest(hashlib.sha256(body).digest(), digest):
        raise KeystoreCorrupted(f"{where} is damaged (checksum mismatch)")
    try:
        return Keystore.decode(data[_HEADER:-_SUM])
    except (KeyseedError, ValueError, TypeError) as exc:
        raise KeystoreCorrupted(f"{where} holds an unreadable record") from exc


class KeystoreFile:
    """The keystore at ``path``, with its token and lock files beside it.

    Open it with :meth:`lock` before anything else: one device process per keystore.
    """

    def __init__(self, path: Path) -> None:
        #: The keystore file.
        self.path = Path(path)
        #: The device-local token of the setup endpoint.
        self.token_path = self.path.with_name(self.path.name + ".token")
        #: Held (flock) while a device runs on this keystore.
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock: IO[bytes] | None = None
        # Bytes of the last state written (a repeated identical write is skipped).
        self._last: bytes | None = None
        #: Writes done by this process (tests and status).
        self.writes = 0

    def __repr__(self) -> str:
        return f"KeystoreFile({str(self.path)!r})"

    # -- lifetime -------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the keystore's lock.

        Raises:
            KeystoreLocked: another process holds it.
            OSError: the folder cannot be created or written.
        """
        ensure_private_dir(self.path.parent)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, SECRET_MODE)
        fh = os.fdopen(fd, "r+b")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise KeystoreLocked(f"another keyseed device is running on {self.path}") from None
        self._lock = fh

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- keystore -------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.path.exists() or self.path.is_symlink()

    def load(self, device_id: str) -> Keystore:
        """Read and check the keystore of ``device_id``.

        Raises:
            KeystoreForeign, KeystoreCorrupted: see :func:`decode_file`.
            KeystoreMismatch: the keystore belongs to another device.
            KeystoreInsecure: other users may read or write the file.
            OSError: it cannot be read.
        """
        st = os.stat(self.path)
        if not stat.S_ISREG(st.st_mode):
            raise KeystoreForeign(f"{self.path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeystoreInsecure(
                f"{self.path} has mode {stat.S_IMODE(st.st_mode):04o}; other users may read "
                f"it. Check who did, then: chmod 600 {self.path}"
            )
        if st.st_size > MAX_FILE:
            raise KeystoreForeign(f"{self.path} is too large to be a keystore")
        data = self.path.read_bytes()
        ks = decode_file(data, str(self.path))
        if ks.device_id != device_id:
            raise KeystoreMismatch(
                f"{self.path} belongs to device {ks.device_id!r}, not {device_id!r}; "
                "give each device its own keystore"
            )
        self._last = data
        return ks

    def create(self, ks: Keystore) -> None:
        """Write the first keystore; never replaces an existing file.

        Raises:
            FileExistsError: a file is already there.
        """
        data = encode_file(ks)
        ensure_private_dir(self.path.parent)
        _create_exclusive(self.path, data)
        self._last = data
        self.writes += 1

    def save(self, ks: Keystore) -> None:
        """Replace the keystore with ``ks`` atomically and durably (before anything that
        depends on it is sent)."""

        data = encode_file(ks)
        if data == self._last:
            return
        atomic_write(self.path, data, SECRET_MODE)
        self._last = data
        self.writes += 1

    # -- setup endpoint token -------------------------------------------------------------

    def load_or_create_token(self) -> str:
        """The device-local token, created (0600) on the first start.

        Raises:
            KeystoreInsecure: the token file is readable by other users.
            KeystoreCorrupted: the token file is empty or malformed.
        """
        if not self.token_path.exists():
            token = "kd_" + secrets.token_urlsafe(32)
            with contextlib.suppress(FileExistsError):
                _create_exclusive(self.token_path, (token + "\n").encode())
        st = os.stat(self.token_path)
        if st.st_mode & 0o077:
            raise KeystoreInsecure(
                f"{self.token_path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                f"chmod 600 {self.token_path}"
            )
        token = self.token_path.read_text("ascii", errors="replace").strip()
        if len(token) < 16 or not token.isascii() or not token.isprintable():
            raise KeystoreCorrupted(f"{self.token_path} does not hold a token")
        return token


def _create_exclusive(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file (0600, fsynced) and link it to ``path``, which
    fails if ``path`` exists: a first write that can never clobber anything."""
    folder = path.parent
    tmp = folder / f".{path.name}.new-{os.getpid()}-{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
    try:
        try:
            os.fchmod(fd, SECRET_MODE)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_dir(folder)


__all__ = [
    "FILE_FORMAT",
    "MAGIC",
    "KeystoreCorrupted",
    "KeystoreError",
    "KeystoreFile",
    "KeystoreForeign",
    "KeystoreInsecure",
    "KeystoreLocked",
    "KeystoreMismatch",
    "decode_file",
    "encode_file",
]
