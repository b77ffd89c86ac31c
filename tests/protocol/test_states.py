"""keyseed.protocol.states: the transition table is consistent and the diagram shows all of it."""

from __future__ import annotations

import pytest

from keyseed.protocol.messages import SETUP_ONLY, MsgType
from keyseed.protocol.states import (
    TRANSITIONS,
    DeviceState,
    Role,
    ServerState,
    State,
    allowed,
    mermaid,
)

ROLE_STATES: dict[Role, type[DeviceState] | type[ServerState]] = {
    Role.DEVICE: DeviceState,
    Role.SERVER: ServerState,
}
INITIAL = {Role.DEVICE: DeviceState.AWAIT_HELLO_ACK, Role.SERVER: ServerState.AWAIT_HELLO}
CLOSED = {Role.DEVICE: DeviceState.CLOSED, Role.SERVER: ServerState.CLOSED}

#: What each role may ever receive, from the message directions of the scheme.
RECEIVES = {
    Role.DEVICE: {
        MsgType.HELLO_ACK,
        MsgType.M204,
        MsgType.M206,
        MsgType.M207,
        MsgType.M403,
        MsgType.APP,
        MsgType.PAIR_KEY,
        MsgType.PAIR_DATA,
        MsgType.PAIR_REFUSED,
    },
    Role.SERVER: {
        MsgType.HELLO,
        MsgType.FIN,
        MsgType.M203,
        MsgType.M205,
        MsgType.ACK_206,
        MsgType.SEED_REQUEST,
        MsgType.M207,
        MsgType.M404,
        MsgType.APP,
        MsgType.PAIR_REQUEST,
        MsgType.PAIR_ACK,
        MsgType.PAIR_DATA,
        MsgType.PAIR_SYNC,
    },
}


def edges(role: Role) -> list[tuple[State, MsgType, State]]:
    return [
        (state, mtype, target)
        for (r, state, mtype), targets in TRANSITIONS.items()
        if r is role
        for target in targets
    ]


@pytest.mark.parametrize("role", list(Role))
def test_sources_belong_to_the_role(role: Role) -> None:
    for state, _, _ in edges(role):
        assert isinstance(state, ROLE_STATES[role]), state


@pytest.mark.parametrize("role", list(Role))
def test_targets_belong_to_the_role(role: Role) -> None:
    for _, _, target in edges(role):
        assert isinstance(target, ROLE_STATES[role]), target


@pytest.mark.parametrize("role", list(Role))
def test_closed_is_never_a_source(role: Role) -> None:
    assert all(state is not CLOSED[role] for state, _, _ in edges(role))


def test_every_entry_has_a_target() -> None:
    assert all(targets for targets in TRANSITIONS.values())


@pytest.mark.parametrize("role", list(Role))
def test_every_state_is_initial_or_reachable(role: Role) -> None:
    reachable = {INITIAL[role]} | {target for _, _, target in edges(role)}
    for state in ROLE_STATES[role]:
        if state is not CLOSED[role]:
            assert state in reachable, state


@pytest.mark.parametrize("role", list(Role))
def test_role_receives_only_messages_sent_to_it(role: Role) -> None:
    assert {mtype for _, mtype, _ in edges(role)} <= RECEIVES[role]


def test_setup_messages_never_reach_a_connection() -> None:
    assert not any(mtype in SETUP_ONLY for (_, _, mtype) in TRANSITIONS)


def test_close_is_not_a_table_transition() -> None:
    """CLOSE leads to CLOSED from anywhere; it is handled outside the table."""
    assert not any(mtype is MsgType.CLOSE for (_, _, mtype) in TRANSITIONS)


def test_handshake_opens_both_sides() -> None:
    assert allowed(Role.DEVICE, DeviceState.AWAIT_HELLO_ACK, MsgType.HELLO_ACK) == (
        DeviceState.OPEN,
        DeviceState.ENROL,
    )
    assert allowed(Role.SERVER, ServerState.AWAIT_FIN, MsgType.FIN) == (ServerState.OPEN,)


def test_allowed_is_none_for_pairs_outside_the_table() -> None:
    assert allowed(Role.DEVICE, DeviceState.OPEN, MsgType.HELLO_ACK) is None
    assert allowed(Role.SERVER, ServerState.AWAIT_HELLO, MsgType.APP) is None
    assert allowed(Role.SERVER, ServerState.ENROL, MsgType.APP) is None


def test_allowed_does_not_mix_roles() -> None:
    """A device state passed with the server role finds nothing."""
    assert allowed(Role.SERVER, DeviceState.OPEN, MsgType.APP) is None


UNAUTHENTICATED: list[tuple[Role, State]] = [
    (Role.DEVICE, DeviceState.AWAIT_HELLO_ACK),
    (Role.DEVICE, DeviceState.ENROL),
    (Role.DEVICE, DeviceState.CLOSED),
    (Role.SERVER, ServerState.AWAIT_HELLO),
    (Role.SERVER, ServerState.AWAIT_FIN),
    (Role.SERVER, ServerState.ENROL),
    (Role.SERVER, ServerState.CLOSED),
]


@pytest.mark.parametrize(("role", "state"), UNAUTHENTICATED)
@pytest.mark.parametrize("mtype", [MsgType.APP, MsgType.M207])
def test_sealed_traffic_needs_an_authenticated_state(
    role: Role, state: State, mtype: MsgType
) -> None:
    assert allowed(role, state, mtype) is None


# -- mermaid ------------------------------------------------------------------------------


def _label(mtype: MsgType) -> str:
    return str(int(mtype)) if int(mtype) >= 200 else mtype.name


@pytest.mark.parametrize("role", list(Role))
def test_mermaid_starts_with_the_diagram_header(role: Role) -> None:
    assert mermaid(role).splitlines()[0] == "stateDiagram-v2"


@pytest.mark.parametrize("role", list(Role))
def test_mermaid_lists_every_transition(role: Role) -> None:
    lines = set(mermaid(role).splitlines()[1:])
    for state, mtype, target in edges(role):
        expected = f"    {state.name} --> {target.name}: {_label(mtype)}"
        assert expected in lines


@pytest.mark.parametrize("role", list(Role))
def test_mermaid_lists_nothing_else(role: Role) -> None:
    body = mermaid(role).splitlines()[1:]
    expected = {f"    {s.name} --> {t.name}: {_label(m)}" for s, m, t in edges(role)}
    assert len(body) == len(set(body)) == len(expected)


def test_mermaid_keeps_roles_apart() -> None:
    assert "AWAIT_HELLO_ACK" in mermaid(Role.DEVICE)
    assert "AWAIT_HELLO_ACK" not in mermaid(Role.SERVER)
    assert "PENDING_205" not in mermaid(Role.DEVICE)
