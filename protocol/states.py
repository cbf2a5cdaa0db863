"""The state machines of both roles, as tables in one place.

Each table maps (state, incoming message type) to the state after handling
it. A message type missing for a state is a protocol violation: the session
moves to ERROR and stays there (as in h11). The connection classes consult
these tables before doing anything else with a message.
"""

from __future__ import annotations

import enum

from .errors import UnexpectedMessage
from .messages import (
    Challenge,
    ChallengeRequest,
    CommandRequest,
    CommandResponse,
    CredentialPresentation,
    ErrorMessage,
    FastCommandRequest,
    FastPathRefused,
    IssuerUpdate,
    ManageRequest,
    ManageResponse,
    RevocationUpdate,
    TimeUpdate,
    VehicleStatus,
)


class VehicleState(enum.Enum):
    IDLE = "idle"  # connected; no challenge issued yet (phone not subscribed)
    CHALLENGED = "challenged"  # one challenge outstanding
    ERROR = "error"  # a protocol error happened; nothing more is accepted


class PhoneState(enum.Enum):
    WAIT_CHALLENGE = "wait-challenge"  # no usable challenge held
    READY = "ready"  # holds a challenge; a command can be sent
    AWAIT_RESPONSE = "await-response"  # command sent; waiting for its response
    AWAIT_MANAGE_RESPONSE = "await-manage-response"  # manage request sent
    AWAIT_FAST_RESPONSE = "await-fast-response"  # fast request sent: response or refusal
    ERROR = "error"


# Vehicle: what the phone may send in each state. After a CommandRequest the
# vehicle answers and immediately issues a new challenge, so it stays
# CHALLENGED. A CredentialPresentation has no answer; it may even arrive before
# the first challenge, because the phone sends it without waiting. A
# ManageRequest is answered like a CommandRequest. A FastCommandRequest is
# answered by a CommandResponse or, when it fails, by FastPathRefused: that is
# not fatal, the vehicle issues a new challenge and stays CHALLENGED.
VEHICLE_TRANSITIONS: dict[VehicleState, dict[type, VehicleState]] = {
    VehicleState.IDLE: {
        ChallengeRequest: VehicleState.CHALLENGED,
        CredentialPresentation: VehicleState.IDLE,
    },
    VehicleState.CHALLENGED: {
        ChallengeRequest: VehicleState.CHALLENGED,
        CommandRequest: VehicleState.CHALLENGED,
        ManageRequest: VehicleState.CHALLENGED,
        FastCommandRequest: VehicleState.CHALLENGED,
        CredentialPresentation: VehicleState.CHALLENGED,
        RevocationUpdate: VehicleState.CHALLENGED,
        TimeUpdate: VehicleState.CHALLENGED,
        IssuerUpdate: VehicleState.CHALLENGED,
    },
    VehicleState.ERROR: {},
}

# Phone: what the vehicle may send in each state. An ErrorMessage is accepted
# in every live state and always leads to ERROR. After FastPathRefused the
# phone waits for the challenge that follows it and may then send a full
# CommandRequest on the same session.
PHONE_TRANSITIONS: dict[PhoneState, dict[type, PhoneState]] = {
    PhoneState.WAIT_CHALLENGE: {
        Challenge: PhoneState.READY,
        VehicleStatus: PhoneState.WAIT_CHALLENGE,
        ErrorMessage: PhoneState.ERROR,
    },
    PhoneState.READY: {
        Challenge: PhoneState.READY,
        VehicleStatus: PhoneState.READY,
        ErrorMessage: PhoneState.ERROR,
    },
    PhoneState.AWAIT_RESPONSE: {
        CommandResponse: PhoneState.WAIT_CHALLENGE,
        VehicleStatus: PhoneState.AWAIT_RESPONSE,
        ErrorMessage: PhoneState.ERROR,
    },
    PhoneState.AWAIT_MANAGE_RESPONSE: {
        ManageResponse: PhoneState.WAIT_CHALLENGE,
        VehicleStatus: PhoneState.AWAIT_MANAGE_RESPONSE,
        ErrorMessage: PhoneState.ERROR,
    },
    PhoneState.AWAIT_FAST_RESPONSE: {
        CommandResponse: PhoneState.WAIT_CHALLENGE,
        FastPathRefused: PhoneState.WAIT_CHALLENGE,
        VehicleStatus: PhoneState.AWAIT_FAST_RESPONSE,
        ErrorMessage: PhoneState.ERROR,
    },
    PhoneState.ERROR: {},
}


def vehicle_next_state(state: VehicleState, message: object) -> VehicleState:
    try:
        return VEHICLE_TRANSITIONS[state][type(message)]
    except KeyError:
        raise UnexpectedMessage(
            f"{type(message).__name__} is not allowed in vehicle state {state.value}"
        ) from None


def phone_next_state(state: PhoneState, message: object) -> PhoneState:
    try:
        return PHONE_TRANSITIONS[state][type(message)]
    except KeyError:
        raise UnexpectedMessage(
            f"{type(message).__name__} is not allowed in phone state {state.value}"
        ) from None
