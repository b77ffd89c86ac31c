"""keyseed.protocol.policy
~~~~~~~~~~~~~~~~~~~~~~~~~

The rekey policy carried in 206 and the S03 decision "is a new key needed?".

Soft limits make the device rekey by itself. Hard limits stop a key from carrying application
data; the key still authenticates the handshake and every rekey attempt until one commits
(DESIGN.md section 4, "Limits that cannot brick": a single allowed attempt would strand a
device whose attempt timed out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import MalformedMessage
from .messages import Policy


@dataclass(frozen=True, slots=True, kw_only=True)
class RekeyPolicy:
    #: Messages under one key after which the device rekeys by itself.
    soft_messages: int = 1 << 20
    #: Messages under one key after which it carries no more application data.
    hard_messages: int = 1 << 24
    #: Key age (seconds of device uptime, or of the database clock on the server) for a rekey.
    soft_age_s: int = 24 * 3600
    #: Key age after which it carries no more application data.
    hard_age_s: int = 7 * 24 * 3600

    def __post_init__(self) -> None:
        if not (0 < self.soft_messages <= self.hard_messages):
            raise ValueError("need 0 < soft_messages <= hard_messages")
        if not (0 < self.soft_age_s <= self.hard_age_s):
            raise ValueError("need 0 < soft_age_s <= hard_age_s")

    def needs_rekey(self, messages: int, age: float) -> bool:
        """S03: the policy's message count or key age reached."""
        return messages >= self.soft_messages or age >= self.soft_age_s

    def hard_exceeded(self, messages: int, age: float) -> bool:
        return messages >= self.hard_messages or age >= self.hard_age_s

    def seconds_until_soft(self, age: float) -> float:
        return max(0.0, self.soft_age_s - age)

    def to_msg(self) -> Policy:
        msg = _TO_MSG.get(self)
        if msg is None:
            msg = Policy(
                soft_messages=self.soft_messages,
                hard_messages=self.hard_messages,
                soft_age_s=self.soft_age_s,
                hard_age_s=self.hard_age_s,
            )
            _remember(_TO_MSG, self, msg)
        return msg

    @classmethod
    def from_msg(cls, msg: Policy) -> RekeyPolicy:
        if msg.soft_messages == 0 or msg.soft_age_s == 0:
            # A zero limit would make a device rekey in a loop; refuse it as malformed input.
            raise MalformedMessage("206: a zero limit")
        if cls is RekeyPolicy:
            known = _FROM_MSG.get(msg)
            if known is not None:
                return known
        policy = cls(
            soft_messages=msg.soft_messages,
            hard_messages=msg.hard_messages,
            soft_age_s=msg.soft_age_s,
            hard_age_s=msg.hard_age_s,
        )
        if cls is RekeyPolicy:
            _remember(_FROM_MSG, msg, policy)
        return policy


# Both are immutable and a deployment has few policies, while every 206 converts one: the
# conversions are remembered (equal values, equal results), a few dozen at most.
_CACHE_MAX = 32
_TO_MSG: dict[RekeyPolicy, Policy] = {}
_FROM_MSG: dict[Policy, RekeyPolicy] = {}


def _remember(cache: dict[Any, Any], key: object, value: object) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value


DEFAULT_POLICY = RekeyPolicy()
