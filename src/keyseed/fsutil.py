"""keyseed.fsutil
~~~~~~~~~~~~~~

Atomic writes for files that hold secrets (the server's data folder, the device keystore):
a temporary file in the same folder, created 0600, written and fsynced, renamed over the
target, then the folder fsynced, so a crash leaves either the old file or the new one, never
a torn one, and the secret is never readable by anyone else, not even for a moment.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

#: Mode of every file that holds a secret.
SECRET_MODE = 0o600
#: Mode of a folder that holds such files.
SECRET_DIR_MODE = 0o700


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where folders cannot be
    opened, such as Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platform without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = SECRET_MODE) -> None:
    """Replace ``path`` with ``data`` atomically and durably; the file gets ``mode``.

    Raises:
        OSError: the folder is not writable, the disk is full, ...
    """
    path = Path(path)
    folder = path.parent
    tmp = folder / f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have taken bits away
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(folder)


def ensure_private_dir(folder: Path) -> None:
    """Create ``folder`` (and parents) if needed; a folder we create is 0700."""
    folder = Path(folder)
    if not folder.exists():
        folder.mkdir(parents=True, mode=SECRET_DIR_MODE)
        fsync_dir(folder.parent)


__all__ = ["SECRET_DIR_MODE", "SECRET_MODE", "atomic_write", "ensure_private_dir", "fsync_dir"]
