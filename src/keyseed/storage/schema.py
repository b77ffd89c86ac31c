"""keyseed.storage.schema
~~~~~~~~~~~~~~~~~~~~~~~

SQLAlchemy Core tables of the server's durable state. The migrations in
:mod:`keyseed.storage.migrations` create exactly these; a test compares the two.

``devices.state`` is the whole :class:`~keyseed.protocol.records.DeviceRecord`, canonical
CBOR sealed under the master key with the device ID as associated data (keys never lie in
clear). The other columns of ``devices`` repeat a few fields of the record in clear so that
rows can be listed and filtered without the master key; every write sets them from the same
record, and every read checks that they still agree with it. ``version`` is the column the
compare-and-set tests (rule 6).
"""

from __future__ import annotations

import sqlalchemy as sa

#: Longest device ID (``DEVICE_ID_RE``) and audit kind.
ID_LEN = 64
KIND_LEN = 64

metadata = sa.MetaData()

#: Audit ids count up forever; SQLite only auto-increments an INTEGER PRIMARY KEY.
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("device_id", sa.String(ID_LEN), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("conn_gen", sa.BigInteger, nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("suite", sa.String(ID_LEN), nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False),
    sa.Column("confirmed", sa.Boolean, nullable=False),
    # The epoch an outstanding rekey order supersedes; NULL: no order.
    sa.Column("order_epoch", sa.BigInteger, nullable=True),
    # Database clock (seconds since the epoch) of the last write.
    sa.Column("updated_at", sa.Double, nullable=False),
    # nonce || ChaCha20-Poly1305(record.encode(), aad = lp(label, device_id)).
    sa.Column("state", sa.LargeBinary, nullable=False),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    # Database clock of the insert.
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("kind", sa.String(KIND_LEN), nullable=False),
    # No foreign key: refusals of unknown device IDs are audited too.
    sa.Column("device_id", sa.String(ID_LEN), nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    # ErrorCode or NgCause value; NULL for a success.
    sa.Column("cause", sa.Integer, nullable=True),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Index("ix_audit_device_id_id", "device_id", "id"),
)

# -- pair keys (docs/protocol.md, "Pair keys") ----------------------------------------------
# An unordered pair {lo, hi} is stored with lo < hi. No foreign keys to devices: a policy may
# name a device before it is registered, and rows outlive revocations (audit, epochs).

pair_policies = sa.Table(
    "pair_policies",
    metadata,
    sa.Column("lo", sa.String(ID_LEN), primary_key=True),
    sa.Column("hi", sa.String(ID_LEN), primary_key=True),
    # allow-pair sets it, deny-pair clears it (the row stays, for the dashboard).
    sa.Column("allowed", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

pairs = sa.Table(
    "pairs",
    metadata,
    sa.Column("lo", sa.String(ID_LEN), primary_key=True),
    sa.Column("hi", sa.String(ID_LEN), primary_key=True),
    sa.Column("pair_id", sa.LargeBinary(16), nullable=False),
    sa.Column("mode", sa.String(8), nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("initiator", sa.String(ID_LEN), nullable=False),
    # Compare-and-set version of the row.
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    # nonce || ChaCha20-Poly1305(PairRecord.encode(), aad = lp(label, "pair lo hi")).
    sa.Column("state", sa.LargeBinary, nullable=False),
    sa.Index("ix_pairs_pair_id", "pair_id", unique=True),
)
