"""keyseed.protocol.constants
~~~~~~~~~~~~~~~~~~~~~~~~~~~~

Protocol version, field sizes and limits. Durations are seconds of a monotonic clock (per
connection) or of the database clock (anything that outlives a connection).
"""

from __future__ import annotations

import re

from ..crypto.schedule import (
    KEY_ID_LEN,
    MAC_LEN,
    NONCE_LEN,
    R1_LEN,
    S_LEN,
    SEED_ID_LEN,
    SEED_LEN,
    VERSION,
)

__all__ = [
    "DEVICE_ID_RE",
    "HANDSHAKE_TIMEOUT",
    "KEY_ID_LEN",
    "MAC_LEN",
    "MAX_APP_DATA",
    "MAX_CANDIDATES",
    "MAX_FRAME",
    "MAX_FRAME_PREAUTH",
    "MAX_P",
    "MAX_RECORDS_PER_KEY",
    "NONCE_LEN",
    "R1_LEN",
    "RESPONSE_TIMEOUT",
    "S27_TIMEOUT",
    "SEED_ID_LEN",
    "SEED_LEN",
    "S_LEN",
    "VERSION",
    "WINDOW_DEFAULT",
    "WINDOW_MAX_FAILURES",
]

#: Device IDs are short and plain, and checked before anything logs them (DESIGN.md section 2).
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

#: Largest frame accepted before the handshake completes (REVIEW F25: an X-Wing 203 is ~1.4 KiB).
MAX_FRAME_PREAUTH = 4096
#: Largest frame accepted on an authenticated connection.
MAX_FRAME = 65536
#: Largest application payload in one sealed APP message.
MAX_APP_DATA = 16384
#: Largest P (an X-Wing ciphertext of the largest X is 1,248 bytes; RSA-3072 is 384).
MAX_P = 2048
#: Most enrolment candidates a keyless device names in one HELLO (DESIGN.md section 4, rule 1).
MAX_CANDIDATES = 8

#: S27: how long the server holds a pending exchange waiting for 205.
S27_TIMEOUT = 30.0
#: How long the server waits for HELLO and FIN, and the device for HELLO_ACK.
HANDSHAKE_TIMEOUT = 5.0
#: How long the device waits for 204 and 206 before it reconnects.
RESPONSE_TIMEOUT = 15.0
#: Default enrolment window.
WINDOW_DEFAULT = 600.0
#: Failed attempts that close an enrolment window (REVIEW F21).
WINDOW_MAX_FAILURES = 10

#: Frames one traffic key seals per direction before the connection re-handshakes. 2^23 is
#: the AES-GCM bound for 16 KiB records (RFC 9001 section 6.6); ChaCha20-Poly1305 allows far
#: more, and one bound for both keeps the rule simple.
MAX_RECORDS_PER_KEY = 2**23
