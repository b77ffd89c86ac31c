"""The atheris corpus as regression tests: every file in tests/security/corpus/ (real frames
the corpus was seeded with, inputs ``make fuzz`` kept because they reached new code, and any
``crash-*`` input it found) goes through the harness's own checks: the decoders raise only
their documented errors and re-encode what they accept byte for byte, and both cores, fresh
and after a handshake, never raise nor close with INTERNAL."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "fuzz"))

import fuzz_frames  # noqa: E402

from keyseed.protocol.messages import MsgType, decode_frame  # noqa: E402

CORPUS = sorted((Path(__file__).parent / "corpus").iterdir())


def test_corpus_holds_a_real_frame_of_every_type_the_session_sends() -> None:
    types = set()
    for path in CORPUS:
        if path.name.startswith("seed-"):
            types.add(decode_frame(path.read_bytes(), max_size=1 << 20).type)
    assert {
        MsgType.HELLO,
        MsgType.HELLO_ACK,
        MsgType.FIN,
        MsgType.M203,
        MsgType.M204,
        MsgType.M205,
        MsgType.M206,
        MsgType.ACK_206,
        MsgType.APP,
        MsgType.M207,
    } <= types


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_corpus_input(path: Path) -> None:
    fuzz_frames.check_one(path.read_bytes())
