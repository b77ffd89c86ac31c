"""The two cores enrol and rekey over the in-memory link, for every suite."""

from __future__ import annotations

import pytest

from keyseed.loopback import Clock, Loopback, MemoryStore, make_context, provision

SUITES = ("hpke-x25519", "hpke-mlkem768-x25519", "rsa-oaep")


@pytest.mark.parametrize("suite", SUITES)
def test_enrol_then_rekey(suite: str) -> None:
    ctx = make_context(SUITES)
    store, clock = MemoryStore(), Clock()
    disk = provision(ctx, store, clock, "oven-1", suite=suite)
    lb = Loopback(ctx, store, disk, clock)
    lb.connect()
    lb.run()
    rec = store.load("oven-1")
    assert rec is not None and rec.key is not None
    assert disk.keystore.key == rec.key and disk.keystore.epoch == rec.epoch == 1
    lb.device_do(lambda d, now: d.request_rekey(now))
    lb.run()
    rec = store.load("oven-1")
    assert rec is not None
    assert disk.keystore.epoch == rec.epoch == 2 and disk.keystore.key == rec.key
    assert not rec.owed_206
