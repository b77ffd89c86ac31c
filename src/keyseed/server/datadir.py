"""keyseed.server.datadir
~~~~~~~~~~~~~~~~~~~~~~~~~

The server's data folder. The first start creates it; every later start reuses it::

    <data>/                       0700
      master.key                  0600  32 random bytes: seals device records at rest
      keys/<suite>.key            0600  long-term private key of each enabled suite
      admin_token.sha256          0600  SHA-256 (hex) of the admin token; never the token

Every file is written atomically (:func:`keyseed.fsutil.atomic_write`). The implicit-rejection
secret ``k_reject`` is derived from the master key (HKDF, its own label), so it survives a
restart and is the same in every process that shares the master key: a failed decryption
costs the same and yields the same value whichever process opens the 203.

The admin token is 256 random bits. It is shown once, when it is created, and stored only as
its hash; :meth:`Secrets.check_token` compares hashes in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ..crypto import PrivateKey, expand, get_suite, lp
from ..crypto.atrest import MASTER_KEY_LEN
from ..fsutil import atomic_write, ensure_private_dir

L_K_REJECT = "keyseed/1 server k_reject"
TOKEN_PREFIX = "kst_"  # noqa: S105 - a prefix, not a token


class DataDirError(RuntimeError):
    """The data folder is damaged or unreadable (a key file of the wrong size, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Secrets:
    """What the data folder holds, loaded. Its repr shows no secret."""

    #: Long-term private key per enabled suite.
    keys: dict[str, PrivateKey]
    #: Seals device records at rest (handed to the store).
    master_key: bytes = field(repr=False)
    #: Implicit-rejection secret of the server core.
    k_reject: bytes = field(repr=False)
    #: SHA-256 of the admin token.
    token_hash: bytes = field(repr=False)
    #: The admin token, only on the start that created it (to be printed once).
    new_token: str | None = field(default=None, repr=False)
    #: Suites whose key this start created.
    created: tuple[str, ...] = ()

    def check_token(self, token: str) -> bool:
        """Whether ``token`` is the admin token (constant-time on the hashes)."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        return hmac.compare_digest(digest, self.token_hash)

    def fingerprints(self) -> dict[str, str]:
        """Hex fingerprint of each suite's long-term public key (what a device pins)."""
        return {name: key.public_key.fingerprint.hex() for name, key in self.keys.items()}


def new_admin_token() -> str:
    """256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataDirError(f"cannot read {path.name}: {exc.strerror}") from None


def open_data_dir(folder: Path, suites: tuple[str, ...], *, reset_token: bool = False) -> Secrets:
    """Load the data folder, creating whatever is missing.

    Args:
        folder: the data folder.
        suites: the enabled suites; a missing key is generated (and reported in ``created``).
        reset_token: replace the admin token with a new one (shown once).

    Raises:
        DataDirError: a file is damaged or unreadable.
        UnsupportedSuite: a suite is not available in this backend.
    """
    folder = Path(folder)
    ensure_private_dir(folder)
    ensure_private_dir(folder / "keys")
    master_path = folder / "master.key"
    if not master_path.exists():
        atomic_write(master_path, secrets.token_bytes(MASTER_KEY_LEN))
    master = _read(master_path)
    if len(master) != MASTER_KEY_LEN:
        raise DataDirError("master.key is damaged")
    keys: dict[str, PrivateKey] = {}
    created: list[str] = []
    for name in suites:
        suite = get_suite(name)
        path = folder / "keys" / f"{name}.key"
        if not path.exists():
            atomic_write(path, suite.private_bytes(suite.generate()))
            created.append(name)
        try:
            keys[name] = suite.load_private(_read(path))
        except (ValueError, TypeError):
            raise DataDirError(f"keys/{name}.key is damaged") from None
    token_path = folder / "admin_token.sha256"
    token: str | None = None
    if reset_token or not token_path.exists():
        token = new_admin_token()
        digest = hashlib.sha256(token.encode()).hexdigest()
        atomic_write(token_path, digest.encode() + b"\n")
    try:
        token_hash = bytes.fromhex(_read(token_path).decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise DataDirError("admin_token.sha256 is damaged") from None
    if len(token_hash) != 32:
        raise DataDirError("admin_token.sha256 is damaged")
    return Secrets(
        keys=keys,
        master_key=master,
        k_reject=expand(master, lp(L_K_REJECT), 32),
        token_hash=token_hash,
        new_token=token,
        created=tuple(created),
    )


__all__ = ["DataDirError", "Secrets", "new_admin_token", "open_data_dir"]
