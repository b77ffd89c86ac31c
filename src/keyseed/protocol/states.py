"""keyseed.protocol.states
~~~~~~~~~~~~~~~~~~~~~~~~~

Connection states of both roles and the transition table.

Theory of operation
-------------------
A connection is one WebSocket. It opens with a handshake (HELLO, HELLO_ACK, FIN) that settles,
on an authenticated statement of the server, which key both sides hold (rule 1), and fences
older connections of the device once FIN proves the device's key over the server's fresh nonce
(rule 6). A keyless device gets an unauthenticated HELLO_ACK and may only enrol (203 in a
window). A key exchange is 203 -> 204 -> 205 -> 206 -> ACK_206 on one connection; at most one is
in flight per device. Everything else (207, 403/404, APP, SEED_REQUEST) is sealed traffic on an
open connection.

States are named for what comes next. ``TRANSITIONS[(role, state, type)]`` lists where a
received message may lead; a (state, message) pair that is not in the table is an
:class:`~keyseed.protocol.errors.UnexpectedMessage`, and every failure leads to ``CLOSED``.
The state diagrams in docs/protocol.md are generated from this table
(``python -m keyseed.protocol.states``).

Rules that keep this table honest:

1. Everything that decides which message is legal in which state lives here, nowhere else.
2. Handlers may only move to a state this table lists (checked at runtime) or to ``CLOSED``.
"""

from __future__ import annotations

import enum

from .messages import PAIR_TO_DEVICE, PAIR_TO_SERVER, MsgType


class Role(enum.Enum):
    DEVICE = "device"
    SERVER = "server"


class DeviceState(enum.Enum):
    #: HELLO sent; waiting for the server's authenticated statement of its key.
    AWAIT_HELLO_ACK = "await_hello_ack"
    #: Keyless and unauthenticated: only an enrolment 203 may follow (S01/S02).
    ENROL = "enrol"
    #: Authenticated and idle: application data, 207, 403; a 203 may start.
    OPEN = "open"
    #: 203 sent; waiting for 204.
    AWAIT_204 = "await_204"
    #: 205 sent under the new key; waiting for 206.
    AWAIT_206 = "await_206"
    CLOSED = "closed"


class ServerState(enum.Enum):
    #: Waiting for HELLO.
    AWAIT_HELLO = "await_hello"
    #: HELLO_ACK sent naming a key; waiting for FIN under it.
    AWAIT_FIN = "await_fin"
    #: Unauthenticated HELLO_ACK sent: only an enrolment 203 is accepted.
    ENROL = "enrol"
    #: Authenticated and idle.
    OPEN = "open"
    #: 204 OK sent; waiting for 205 (S27 runs).
    PENDING_205 = "pending_205"
    CLOSED = "closed"


State = DeviceState | ServerState

_D, _S = DeviceState, ServerState
_SEALED_TRAFFIC = (MsgType.APP, MsgType.M207)

TRANSITIONS: dict[tuple[Role, State, MsgType], tuple[State, ...]] = {
    # -- device --
    (Role.DEVICE, _D.AWAIT_HELLO_ACK, MsgType.HELLO_ACK): (_D.OPEN, _D.ENROL),
    (Role.DEVICE, _D.OPEN, MsgType.M206): (_D.OPEN,),  # redelivery (rule 4)
    (Role.DEVICE, _D.OPEN, MsgType.M403): (_D.OPEN, _D.AWAIT_204),
    (Role.DEVICE, _D.AWAIT_204, MsgType.M204): (_D.AWAIT_206,),
    (Role.DEVICE, _D.AWAIT_204, MsgType.M206): (_D.AWAIT_204,),  # redelivery
    (Role.DEVICE, _D.AWAIT_204, MsgType.M403): (_D.AWAIT_204,),  # already rekeying
    (Role.DEVICE, _D.AWAIT_206, MsgType.M206): (_D.OPEN, _D.AWAIT_206),
    (Role.DEVICE, _D.AWAIT_206, MsgType.M403): (_D.AWAIT_206,),
    # -- server --
    (Role.SERVER, _S.AWAIT_HELLO, MsgType.HELLO): (_S.AWAIT_FIN, _S.ENROL),
    (Role.SERVER, _S.AWAIT_FIN, MsgType.FIN): (_S.OPEN,),
    (Role.SERVER, _S.ENROL, MsgType.M203): (_S.PENDING_205,),
    (Role.SERVER, _S.OPEN, MsgType.M203): (_S.PENDING_205,),
    (Role.SERVER, _S.PENDING_205, MsgType.M205): (_S.OPEN,),
    # A 205 after S27 fired finds no pending exchange: refused (rule 5), handled as a failure.
    (Role.SERVER, _S.OPEN, MsgType.M205): (_S.CLOSED,),
    (Role.SERVER, _S.OPEN, MsgType.ACK_206): (_S.OPEN,),
    (Role.SERVER, _S.PENDING_205, MsgType.ACK_206): (_S.PENDING_205,),
    (Role.SERVER, _S.OPEN, MsgType.SEED_REQUEST): (_S.OPEN,),
    (Role.SERVER, _S.OPEN, MsgType.M404): (_S.OPEN,),
    (Role.SERVER, _S.PENDING_205, MsgType.M404): (_S.PENDING_205,),
}

# Sealed traffic flows in every open state of both roles; so do pair messages (5xx), each
# only towards the role that handles it.
for _role, _states, _pair in (
    (Role.DEVICE, (_D.OPEN, _D.AWAIT_204, _D.AWAIT_206), PAIR_TO_DEVICE),
    (Role.SERVER, (_S.OPEN, _S.PENDING_205), PAIR_TO_SERVER),
):
    for _st in _states:
        for _t in (*_SEALED_TRAFFIC, *sorted(_pair)):
            TRANSITIONS[(_role, _st, _t)] = (_st,)


def allowed(role: Role, state: State, mtype: MsgType) -> tuple[State, ...] | None:
    """Where ``mtype`` received in ``state`` may lead, or None if it is not allowed."""
    return TRANSITIONS.get((role, state, mtype))


def mermaid(role: Role) -> str:
    """A Mermaid state diagram of ``role``'s transitions (for docs/protocol.md)."""
    lines = ["stateDiagram-v2"]
    seen: set[tuple[str, str, str]] = set()
    for (r, state, mtype), targets in TRANSITIONS.items():
        if r is not role:
            continue
        for target in targets:
            edge = (state.name, target.name, _label(mtype))
            if edge not in seen:
                seen.add(edge)
                lines.append(f"    {state.name} --> {target.name}: {edge[2]}")
    return "\n".join(lines)


def _label(mtype: MsgType) -> str:
    return str(mtype.value) if mtype.value >= 200 else mtype.name


if __name__ == "__main__":  # pragma: no cover
    for _r in Role:
        print(f"%% {_r.value}\n{mermaid(_r)}\n")
