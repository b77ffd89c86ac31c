"""keyseed.protocol.errors: one code per error class, and an abstract root."""

from __future__ import annotations

import pytest

from keyseed.protocol import errors
from keyseed.protocol.errors import (
    ConflictError,
    ErrorCode,
    ExchangeRefused,
    KeyseedError,
    LocalProtocolError,
    MalformedMessage,
    NgCause,
    PeerClosed,
    RemoteProtocolError,
    error_for_code,
)

#: Errors that carry extra data and stand for a peer's statement, not a CLOSE code of ours.
SPECIAL: set[type[KeyseedError]] = {PeerClosed, ExchangeRefused}


def subclasses(cls: type[KeyseedError]) -> set[type[KeyseedError]]:
    out: set[type[KeyseedError]] = set()
    for sub in cls.__subclasses__():
        if sub.__module__ == errors.__name__:
            out.add(sub)
            out |= subclasses(sub)
    return out


#: The errors a CLOSE code maps back to: every remote error of this module, plus conflicts.
CODED: set[type[KeyseedError]] = (subclasses(RemoteProtocolError) - SPECIAL) | {ConflictError}


def _name(cls: type[KeyseedError]) -> str:
    return cls.__name__


CODED_SORTED: list[type[KeyseedError]] = sorted(CODED, key=_name)


def test_there_are_coded_errors() -> None:
    assert len(CODED) >= 12


def test_each_code_is_used_by_exactly_one_coded_class() -> None:
    codes = [cls.code for cls in CODED]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize("cls", CODED_SORTED, ids=_name)
def test_error_for_code_maps_back_to_the_class(cls: type[KeyseedError]) -> None:
    assert error_for_code(cls.code) is cls


@pytest.mark.parametrize("cls", CODED_SORTED, ids=_name)
def test_error_for_code_accepts_a_plain_int(cls: type[KeyseedError]) -> None:
    assert error_for_code(int(cls.code)) is cls


@pytest.mark.parametrize("code", [0, 999, NgCause.DECRYPT_FAILED])
def test_error_for_unknown_code_is_the_generic_remote_error(code: int) -> None:
    assert error_for_code(code) is RemoteProtocolError


def test_every_error_code_except_generic_ones_has_a_class() -> None:
    generic = {ErrorCode.RATE_LIMITED, ErrorCode.NORMAL, ErrorCode.INTERNAL}
    covered = {cls.code for cls in CODED}
    assert set(ErrorCode) - generic <= covered


def test_every_class_code_is_an_error_code() -> None:
    for cls in subclasses(KeyseedError):
        assert isinstance(cls.code, ErrorCode), cls


def test_ng_causes_never_collide_with_wire_codes() -> None:
    """NG causes stay in the audit log; none may be mistaken for a CLOSE code."""
    assert not {int(c) for c in NgCause} & {int(c) for c in ErrorCode}


def test_error_codes_fit_in_a_close_frame() -> None:
    assert all(0 < c <= 255 for c in ErrorCode)


# -- the abstract roots ---------------------------------------------------------------------


def test_keyseed_error_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError):
        KeyseedError()


def test_remote_protocol_error_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError):
        RemoteProtocolError("boom")


def test_subclass_can_be_instantiated() -> None:
    exc = MalformedMessage("bad")
    assert str(exc) == "bad"
    assert exc.code is ErrorCode.MALFORMED


def test_default_message_is_the_code_name() -> None:
    assert str(MalformedMessage()) == "malformed"


def test_local_and_remote_are_separate_branches() -> None:
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert not issubclass(ConflictError, RemoteProtocolError)
    assert issubclass(MalformedMessage, RemoteProtocolError)


def test_errors_are_exceptions() -> None:
    for cls in subclasses(KeyseedError):
        assert issubclass(cls, Exception)


# -- errors with data -----------------------------------------------------------------------


def test_peer_closed_keeps_the_peer_code() -> None:
    exc = PeerClosed(7)
    assert exc.peer_code == 7
    assert exc.code is ErrorCode.NORMAL
    assert "7" in str(exc)


def test_exchange_refused_without_cause_says_only_ng() -> None:
    """The device never learns the cause."""
    exc = ExchangeRefused()
    assert exc.cause is None
    assert str(exc) == "204 NG"


def test_exchange_refused_keeps_its_cause_for_the_audit_log() -> None:
    exc = ExchangeRefused(NgCause.S_MISMATCH)
    assert exc.cause is NgCause.S_MISMATCH
    assert "S_MISMATCH" in str(exc)
