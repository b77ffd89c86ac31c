"""keyseed.protocol.policy: the S03 "new key needed?" decision and its limits."""

from __future__ import annotations

import pytest

from keyseed.protocol.errors import MalformedMessage
from keyseed.protocol.messages import Policy
from keyseed.protocol.policy import DEFAULT_POLICY, RekeyPolicy

POLICY = RekeyPolicy(soft_messages=100, hard_messages=200, soft_age_s=60, hard_age_s=120)


# -- needs_rekey (soft limits) --------------------------------------------------------------


def test_fresh_key_needs_no_rekey() -> None:
    assert not POLICY.needs_rekey(0, 0.0)


def test_one_message_below_soft_limit_needs_no_rekey() -> None:
    assert not POLICY.needs_rekey(99, 0.0)


def test_soft_message_limit_reached_needs_rekey() -> None:
    assert POLICY.needs_rekey(100, 0.0)


def test_just_below_soft_age_needs_no_rekey() -> None:
    assert not POLICY.needs_rekey(0, 59.999)


def test_soft_age_reached_needs_rekey() -> None:
    assert POLICY.needs_rekey(0, 60.0)


# -- hard_exceeded --------------------------------------------------------------------------


def test_soft_limits_are_not_hard() -> None:
    assert not POLICY.hard_exceeded(100, 60.0)


def test_one_message_below_hard_limit_is_not_exceeded() -> None:
    assert not POLICY.hard_exceeded(199, 0.0)


def test_hard_message_limit_reached_is_exceeded() -> None:
    assert POLICY.hard_exceeded(200, 0.0)


def test_just_below_hard_age_is_not_exceeded() -> None:
    assert not POLICY.hard_exceeded(0, 119.999)


def test_hard_age_reached_is_exceeded() -> None:
    assert POLICY.hard_exceeded(0, 120.0)


def test_hard_exceeded_implies_needs_rekey() -> None:
    for messages, age in [(200, 0.0), (0, 120.0), (500, 500.0)]:
        assert POLICY.hard_exceeded(messages, age)
        assert POLICY.needs_rekey(messages, age)


# -- seconds_until_soft ---------------------------------------------------------------------


def test_seconds_until_soft_counts_down() -> None:
    assert POLICY.seconds_until_soft(15.0) == 45.0


def test_seconds_until_soft_never_negative() -> None:
    assert POLICY.seconds_until_soft(61.0) == 0.0


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"soft_messages": 0},
        {"soft_messages": -1},
        {"soft_messages": 10, "hard_messages": 9},
        {"soft_age_s": 0},
        {"soft_age_s": -5},
        {"soft_age_s": 10, "hard_age_s": 9},
    ],
    ids=["zero-msgs", "neg-msgs", "msgs-soft>hard", "zero-age", "neg-age", "age-soft>hard"],
)
def test_invalid_policy_raises_value_error(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="soft"):
        RekeyPolicy(**kwargs)


def test_soft_equal_to_hard_is_valid() -> None:
    RekeyPolicy(soft_messages=5, hard_messages=5, soft_age_s=5, hard_age_s=5)


def test_default_policy_is_valid_and_ordered() -> None:
    p = DEFAULT_POLICY
    assert 0 < p.soft_messages <= p.hard_messages
    assert 0 < p.soft_age_s <= p.hard_age_s


def test_policy_is_frozen() -> None:
    with pytest.raises(AttributeError):
        POLICY.soft_messages = 1  # type: ignore[misc]


# -- the 206 message ------------------------------------------------------------------------


def test_to_msg_from_msg_round_trip() -> None:
    assert RekeyPolicy.from_msg(POLICY.to_msg()) == POLICY


def test_to_msg_carries_every_limit() -> None:
    assert POLICY.to_msg() == Policy(
        soft_messages=100, hard_messages=200, soft_age_s=60, hard_age_s=120
    )


@pytest.mark.parametrize(
    "limits",
    [(0, 10, 10, 10), (10, 10, 0, 10), (0, 0, 0, 0)],
    ids=["zero-messages", "zero-age", "all-zero"],
)
def test_from_msg_zero_limit_is_malformed(limits: tuple[int, int, int, int]) -> None:
    """A zero limit would make the device rekey in a loop; it is hostile input."""
    sm, hm, sa, ha = limits
    msg = Policy(soft_messages=sm, hard_messages=hm, soft_age_s=sa, hard_age_s=ha)
    with pytest.raises(MalformedMessage):
        RekeyPolicy.from_msg(msg)
