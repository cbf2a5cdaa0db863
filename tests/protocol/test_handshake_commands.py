"""The command handshake driven in memory, when it works: each command, several on
one connection, version choice, the commit before the response, roles, and what
the phone does with the command argument."""

from __future__ import annotations

import pytest
from protocol_testkit import (
    GUEST_KEY,
    PHONE_KEY_ID,
    assert_phone_reports_no_state,
    make_rig,
    messages_of,
    mtus,
    request_frames,
    unlock_answer,
    vehicle_refusal,
)

from protocol import (
    Challenge,
    ChallengeIssued,
    ChallengeReceived,
    Command,
    CommandCompleted,
    CommandExecuted,
    CommandRequest,
    CommandResponse,
    ErrorMessage,
    LocalProtocolError,
    LockState,
    MemoryStore,
    PhoneState,
    ResultCode,
    Role,
    StateChange,
    VehicleConnection,
    VehicleState,
    crypto,
)
from protocol.errors import RejectedCounter, RejectedInternal, RejectedMalformed


# --- commands that work ------------------------------------------------------------
@mtus
def test_unlock(mtu: int) -> None:
    rig = make_rig(mtu)
    assert rig.pair.phone_events == [ChallengeReceived(version=1)]
    assert rig.phone.state is PhoneState.READY
    first_nonce = messages_of(rig.pair.sent_to_phone)[0].nonce  # type: ignore[union-attr]

    done = rig.command(Command.UNLOCK, 7)

    assert done == CommandCompleted(Command.UNLOCK, ResultCode.OK, LockState.UNLOCKED, 7)
    assert rig.executed() == [
        CommandExecuted(
            PHONE_KEY_ID,
            Role.OWNER,
            Command.UNLOCK,
            ResultCode.OK,
            LockState.LOCKED,
            LockState.UNLOCKED,
            7,
        )
    ]
    assert rig.store.state is LockState.UNLOCKED
    assert rig.store.counters == {PHONE_KEY_ID: 7}
    assert first_nonce in rig.store.spent_nonces
    assert rig.store.commits == 1
    # the vehicle pushed a fresh challenge: the phone is ready for the next command
    assert rig.phone.state is PhoneState.READY
    assert rig.vehicle.state is VehicleState.CHALLENGED
    challenges = [m for m in messages_of(rig.pair.sent_to_phone) if isinstance(m, Challenge)]
    assert len(challenges) == 2 and challenges[1].nonce != first_nonce
    assert rig.rejections() == []


@mtus
def test_lock(mtu: int) -> None:
    rig = make_rig(mtu, store=MemoryStore(state=LockState.UNLOCKED))
    done = rig.command(Command.LOCK, 1)
    assert done == CommandCompleted(Command.LOCK, ResultCode.OK, LockState.LOCKED, 1)
    assert rig.store.state is LockState.LOCKED
    assert rig.store.counters[PHONE_KEY_ID] == 1


@mtus
@pytest.mark.parametrize("state", list(LockState))
def test_status_reports_the_stored_state(mtu: int, state: LockState) -> None:
    rig = make_rig(mtu, store=MemoryStore(state=state))
    done = rig.command(Command.STATUS, 3)
    assert done == CommandCompleted(Command.STATUS, ResultCode.OK, state, 3)
    assert rig.store.state is state
    assert rig.store.counters[PHONE_KEY_ID] == 3  # status spends a counter too
    assert rig.store.commits == 1


@mtus
def test_several_commands_on_one_connection_one_round_trip_each(mtu: int) -> None:
    rig = make_rig(mtu)
    expected = [
        (Command.UNLOCK, LockState.UNLOCKED),
        (Command.STATUS, LockState.UNLOCKED),
        (Command.LOCK, LockState.LOCKED),
        (Command.LOCK, LockState.LOCKED),
        (Command.STATUS, LockState.LOCKED),
        (Command.UNLOCK, LockState.UNLOCKED),
    ]
    for counter, (command, state) in enumerate(expected, start=100):
        # one write: the request; one answer: response plus the next challenge
        frames = request_frames(rig, command, counter)
        assert rig.to_vehicle(frames)
        answer = rig.vehicle.data_to_send()
        assert [type(m) for m in messages_of(answer)] == [CommandResponse, Challenge]
        events = rig.to_phone(answer)
        assert events == [
            CommandCompleted(command, ResultCode.OK, state, counter),
            ChallengeReceived(1),
        ]
        assert rig.phone.data_to_send() == []  # nothing else on the critical path
        assert rig.phone.state is PhoneState.READY
        assert rig.store.state is state
    assert rig.store.commits == len(expected)
    assert rig.store.counters[PHONE_KEY_ID] == 100 + len(expected) - 1


@mtus
def test_phone_can_ask_for_a_fresh_challenge(mtu: int) -> None:
    rig = make_rig(mtu)
    old = messages_of(rig.pair.sent_to_phone)[-1]
    rig.phone.request_challenge()
    assert rig.phone.state is PhoneState.WAIT_CHALLENGE
    with pytest.raises(LocalProtocolError):
        rig.phone.send_command(Command.UNLOCK, 1)
    rig.pair.pump()
    new = messages_of(rig.pair.sent_to_phone)[-1]
    assert isinstance(new, Challenge) and isinstance(old, Challenge)
    assert new.nonce != old.nonce
    assert rig.phone.state is PhoneState.READY
    assert rig.command(Command.UNLOCK, 1).lock_state is LockState.UNLOCKED


def test_vehicle_in_idle_answers_a_challenge_request() -> None:
    rig = make_rig(start=False)
    rig.phone.request_challenge()
    rig.pair.pump()
    assert rig.phone.state is PhoneState.READY
    assert rig.command(Command.UNLOCK, 1).lock_state is LockState.UNLOCKED


def test_highest_common_version_is_chosen() -> None:
    rig = make_rig(vehicle_versions=(1, 2), phone_versions=(1, 2))
    assert rig.pair.phone_events == [ChallengeReceived(version=2)]
    rig.command(Command.UNLOCK, 1)
    request = messages_of(rig.pair.sent_to_vehicle)[0]
    assert isinstance(request, CommandRequest)
    assert request.version == 2 and request.offered_versions == (1, 2)
    assert rig.store.state is LockState.UNLOCKED


# --- storage ----------------------------------------------------------------------
class FailingStore(MemoryStore):
    def commit(self, change: StateChange) -> None:
        raise OSError("disk full")


@mtus
@pytest.mark.parametrize("command", list(Command))
def test_failed_commit_means_no_response_and_nothing_executed(mtu: int, command: Command) -> None:
    store = FailingStore()
    rig = make_rig(mtu, store=store)
    with pytest.raises(RejectedInternal):
        rig.command(command, 1)
    assert rig.rejections() == [ResultCode.INTERNAL]
    assert [type(m) for m in messages_of(rig.pair.sent_to_phone)] == [Challenge, ErrorMessage]
    assert_phone_reports_no_state(rig)
    assert store.state is LockState.LOCKED
    assert store.counters == {} and not store.spent_nonces
    assert rig.vehicle.state is VehicleState.ERROR
    assert rig.phone.state is PhoneState.ERROR


class RecordingStore(MemoryStore):
    """Takes whatever the vehicle had queued for the phone when the commit ran."""

    vehicle: VehicleConnection | None = None
    queued_at_commit: list[list[bytes]] | None = None

    def commit(self, change: StateChange) -> None:
        assert self.vehicle is not None and self.queued_at_commit is not None
        self.queued_at_commit.append(self.vehicle.data_to_send())
        super().commit(change)


def test_commit_happens_before_the_response_is_queued() -> None:
    store = RecordingStore()
    store.queued_at_commit = []
    rig = make_rig(store=store, start=False)
    store.vehicle = rig.vehicle
    rig.start()
    assert rig.command(Command.UNLOCK, 1).lock_state is LockState.UNLOCKED
    assert store.queued_at_commit == [[]]  # no response existed when the commit ran
    assert store.state is LockState.UNLOCKED


def test_counters_survive_a_new_connection() -> None:
    rig = make_rig()
    rig.command(Command.UNLOCK, 41)
    # a new connection to the same vehicle (same store) and a fresh phone session
    rig2 = make_rig(store=rig.store, role=None)
    with pytest.raises(RejectedCounter):
        rig2.command(Command.LOCK, 41)
    assert rig.store.state is LockState.UNLOCKED
    assert rig.store.commits == 1
    rig3 = make_rig(store=rig.store, role=None)
    assert rig3.command(Command.LOCK, 42).lock_state is LockState.LOCKED


@pytest.mark.parametrize("method", ["whitelist_entry", "last_counter", "nonce_spent", "lock_state"])
def test_failed_store_read_answers_internal(method: str) -> None:
    """A store that cannot be read (corrupt or unreadable file) must end the exchange
    like a failed commit: an INTERNAL Error to the phone, the session in ERROR, nothing
    executed. Today the store's exception escapes ``VehicleConnection.next_event``
    (crashing the driver's loop), the session stays CHALLENGED with its challenge
    spent, and the phone never gets an answer."""

    class UnreadableStore(MemoryStore):
        pass

    def fail(*args: object, **kwargs: object) -> object:
        raise OSError("store unreadable")

    store = UnreadableStore()
    rig = make_rig(store=store)
    setattr(store, method, fail)
    frames = request_frames(rig)
    code, exc = vehicle_refusal(rig, frames)
    assert code is ResultCode.INTERNAL and isinstance(exc, RejectedInternal)
    assert store.state is LockState.LOCKED and store.commits == 0


# --- roles --------------------------------------------------------------------------
ROLE_TABLE = [  # docs/protocol.md section 8
    (Role.OWNER, Command.UNLOCK, True),
    (Role.OWNER, Command.LOCK, True),
    (Role.OWNER, Command.STATUS, True),
    (Role.DRIVER, Command.UNLOCK, True),
    (Role.DRIVER, Command.LOCK, True),
    (Role.DRIVER, Command.STATUS, True),
    (Role.GUEST, Command.UNLOCK, True),
    (Role.GUEST, Command.LOCK, True),
    (Role.GUEST, Command.STATUS, False),
]


@pytest.mark.parametrize(
    ("role", "command", "allowed"), ROLE_TABLE, ids=[f"{r.name}-{c.name}" for r, c, _ in ROLE_TABLE]
)
@pytest.mark.parametrize("initial", list(LockState))
def test_roles(role: Role, command: Command, allowed: bool, initial: LockState) -> None:
    rig = make_rig(role=role, phone_key=GUEST_KEY, store=MemoryStore(state=initial))
    done = rig.command(command, 9)
    if allowed:
        after = {Command.UNLOCK: LockState.UNLOCKED, Command.LOCK: LockState.LOCKED}.get(
            command, initial
        )
        assert done == CommandCompleted(command, ResultCode.OK, after, 9)
    else:
        # authenticated refusal: under the MAC, with the true (unchanged) state
        assert done == CommandCompleted(command, ResultCode.FORBIDDEN, initial, 9)
        after = initial
    assert rig.store.state is after
    executed = rig.executed()
    assert len(executed) == 1 and executed[0].role is role
    assert executed[0].result is (ResultCode.OK if allowed else ResultCode.FORBIDDEN)
    assert rig.store.counters[crypto.key_id(GUEST_KEY.public_key())] == 9  # spent either way
    assert rig.phone.state is PhoneState.READY  # a refusal is not a protocol error


def test_guest_refusal_then_unlock_on_one_connection() -> None:
    rig = make_rig(role=Role.GUEST)
    assert rig.command(Command.STATUS, 1).result is ResultCode.FORBIDDEN
    assert rig.store.state is LockState.LOCKED
    assert rig.command(Command.UNLOCK, 2) == CommandCompleted(
        Command.UNLOCK, ResultCode.OK, LockState.UNLOCKED, 2
    )


# --- the command argument ------------------------------------------------------------
def test_send_command_accepts_a_plain_int_command() -> None:
    """Command is an IntEnum, so ``send_command(1, n)`` is an easy call to make (e.g.
    with a value read from a config file). Today the phone signs it, the vehicle
    unlocks, and then the phone reports ``BadResponseMac`` ("the response answers a
    different command"): a genuine answer called forged, while the car is open.
    The phone must normalise (or refuse up front) the command."""
    rig = make_rig()
    try:
        done = rig.command(1, 1)  # type: ignore[arg-type]
    except LocalProtocolError:
        assert rig.store.state is LockState.LOCKED  # refused before anything was sent
        return
    assert done == CommandCompleted(Command.UNLOCK, ResultCode.OK, LockState.UNLOCKED, 1)


def test_send_command_refuses_an_undefined_command_locally() -> None:
    """An undefined command is our mistake (LocalProtocolError), not something to sign
    and send, which costs a spent challenge and the session (MALFORMED)."""
    rig = make_rig()
    with pytest.raises(LocalProtocolError):
        rig.phone.send_command(9, 1)  # type: ignore[arg-type]
    assert rig.phone.data_to_send() == []
    assert rig.phone.state is PhoneState.READY


def test_challenge_issued_events_match_the_challenges_sent() -> None:
    rig = make_rig(23)
    rig.command(Command.UNLOCK, 1)
    rig.command(Command.LOCK, 2)
    sent = [m.nonce for m in messages_of(rig.pair.sent_to_phone) if isinstance(m, Challenge)]
    issued = [e.nonce for e in rig.pair.vehicle_events if isinstance(e, ChallengeIssued)]
    assert sent == issued and len(set(sent)) == 3


def test_pump_delivers_the_answer_to_an_injected_frame() -> None:
    """ConnectionPair models a man in the middle; a frame injected straight into the
    vehicle must have its answer carried to the phone by the next ``pump``. Today
    ``pump`` returns as soon as one pass moved no frame, before looking at what the
    vehicle produced while handling the injected frame."""
    rig = make_rig()
    rig.vehicle.receive_data(b"\x07\x00")  # a frame of an unknown wire version
    with pytest.raises(RejectedMalformed):
        rig.pair.pump()


@mtus
def test_phone_waits_for_the_next_challenge_after_a_response(mtu: int) -> None:
    rig, response, challenge = unlock_answer(mtu)
    assert [type(e) for e in rig.to_phone(response)] == [CommandCompleted]
    assert rig.phone.state is PhoneState.WAIT_CHALLENGE  # the spent challenge is gone
    with pytest.raises(LocalProtocolError):
        rig.phone.send_command(Command.LOCK, 2)
    assert rig.phone.data_to_send() == []
    assert rig.to_phone(challenge) == [ChallengeReceived(1)]
    assert rig.phone.state is PhoneState.READY
