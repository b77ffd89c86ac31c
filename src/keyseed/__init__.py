"""keyseed: device keys that renew themselves.

Every key exchange ends with the server handing the device a fresh random seed for its next
key. The sans-I/O protocol core lives in :mod:`keyseed.protocol`, the cryptography in
:mod:`keyseed.crypto`.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
