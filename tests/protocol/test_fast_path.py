"""The fast path: a later command with no public-key operation on the vehicle,
its replay and refusal cases, and the fallback to the full handshake."""

from __future__ import annotations

import pytest
from protocol_testkit import (
    GUEST_KEY,
    MTUS,
    PHONE_KEY,
    PHONE_KEY_ID,
    VEHICLE_KEY,
    Rig,
    make_rig,
    messages_of,
    new_vehicle_session,
)

from protocol import (
    BadResponseMac,
    Challenge,
    ChallengeReceived,
    Command,
    CommandCompleted,
    CommandExecuted,
    CommandResponse,
    FastCommandRequest,
    FastPathRefused,
    FastPathRefusedEvent,
    FastPathRefusedReceived,
    LocalProtocolError,
    LockState,
    ManageOp,
    MemoryStore,
    PhoneState,
    RequestRejected,
    ResultCode,
    Role,
    VehicleRejected,
    VehicleState,
    crypto,
)
from protocol.credentials import revocation_id
from protocol.manage import remove_key_argument
from protocol.store import MemoryTrust
from protocol.vehicle import MAX_FAST_REFUSALS

mtus = pytest.mark.parametrize("mtu", MTUS)
VEHICLE_ID = crypto.key_id(VEHICLE_KEY.public_key())


def _fast_rig(mtu: int = 247, **options: object) -> Rig:
    options.setdefault("fast_path", True)
    return make_rig(mtu, **options)  # type: ignore[arg-type]


def _fast(rig: Rig, command: Command, counter: int, fast_key: bytes) -> list[object]:
    before = len(rig.pair.phone_events)
    rig.phone.send_fast_command(command, counter, fast_key)
    rig.pair.pump()
    return list(rig.pair.phone_events[before:])


def _refused(events: list[object]) -> ResultCode:
    refusals = [e for e in events if isinstance(e, FastPathRefusedReceived)]
    assert len(refusals) == 1, events
    assert not [e for e in events if isinstance(e, CommandCompleted)]
    # The new challenge follows the refusal: the phone can send a full command.
    assert isinstance(events[-1], ChallengeReceived), events
    return refusals[0].reason


@mtus
def test_full_handshake_hands_out_a_fast_key_and_stores_it_in_the_same_commit(mtu: int) -> None:
    rig = _fast_rig(mtu)
    done = rig.command(Command.UNLOCK, 1)
    assert done.fast_key is not None and len(done.fast_key) == 32
    assert done.fast_path is False
    assert rig.store.fast_keys == {PHONE_KEY_ID: done.fast_key}
    assert rig.store.commits == 1  # counter, nonce, lock state and fast key: one commit
    assert "fast_key" not in repr(done)  # a secret is never logged


@mtus
def test_fast_unlock_needs_no_public_key_operation_on_the_vehicle(mtu: int) -> None:
    rig = _fast_rig(mtu)
    fast_key = rig.command(Command.LOCK, 1).fast_key
    assert fast_key is not None
    before = dict(rig.vehicle.crypto_ops)
    assert before == {"ecdsa_verify": 1, "ecdh": 1}
    events = _fast(rig, Command.UNLOCK, 2, fast_key)
    completed = [e for e in events if isinstance(e, CommandCompleted)]
    assert completed == [
        CommandCompleted(Command.UNLOCK, ResultCode.OK, LockState.UNLOCKED, 2, fast_path=True)
    ]
    assert completed[0].fast_key is None
    assert dict(rig.vehicle.crypto_ops) == before
    assert rig.store.state is LockState.UNLOCKED and rig.store.counters[PHONE_KEY_ID] == 2
    executed = rig.executed()[-1]
    assert executed.fast_path is True and executed.counter == 2
    assert rig.phone.state is PhoneState.READY
    # and again on the next challenge, still without a public-key operation
    _fast(rig, Command.LOCK, 3, fast_key)
    assert rig.store.state is LockState.LOCKED
    assert dict(rig.vehicle.crypto_ops) == before


def test_fast_path_on_a_later_connection() -> None:
    rig = _fast_rig()
    fast_key = rig.command(Command.UNLOCK, 1).fast_key
    assert fast_key is not None
    later = make_rig(store=rig.store, role=None, fast_path=True)
    events = _fast(later, Command.LOCK, 2, fast_key)
    assert next(e for e in events if isinstance(e, CommandCompleted)).fast_path
    assert later.vehicle.crypto_ops.total() == 0


def test_fast_key_replaced_after_each_full_handshake() -> None:
    rig = _fast_rig()
    first = rig.command(Command.UNLOCK, 1).fast_key
    second = rig.command(Command.LOCK, 2).fast_key
    assert first and second and first != second
    assert rig.store.fast_keys[PHONE_KEY_ID] == second
    assert _refused(_fast(rig, Command.UNLOCK, 3, first)) is ResultCode.BAD_MAC
    assert [e for e in _fast(rig, Command.UNLOCK, 4, second) if isinstance(e, CommandCompleted)]


def test_forbidden_full_command_keeps_the_old_fast_key() -> None:
    rig = _fast_rig(role=Role.GUEST)
    fast_key = rig.command(Command.UNLOCK, 1).fast_key
    done = rig.command(Command.STATUS, 2)
    assert done.result is ResultCode.FORBIDDEN and done.fast_key is None
    assert rig.store.fast_keys[PHONE_KEY_ID] == fast_key
    # the guest's fast path still obeys its role
    events = _fast(rig, Command.STATUS, 3, fast_key)  # type: ignore[arg-type]
    assert [e.result for e in events if isinstance(e, CommandCompleted)] == [ResultCode.FORBIDDEN]


def test_vehicle_without_fast_path_stores_nothing_and_refuses() -> None:
    rig = make_rig()  # fast_path defaults to False: stores that cannot hold fast keys work
    fast_key = rig.command(Command.UNLOCK, 1).fast_key
    assert fast_key is not None  # the phone cannot know; the refusal tells it
    assert rig.store.fast_keys == {}
    assert _refused(_fast(rig, Command.LOCK, 2, fast_key)) is ResultCode.FAST_PATH_UNAVAILABLE


@mtus
def test_fallback_to_full_handshake_in_the_same_session(mtu: int) -> None:
    rig = _fast_rig(mtu)
    assert _refused(_fast(rig, Command.UNLOCK, 1, bytes(32))) is ResultCode.FAST_KEY_UNKNOWN
    assert rig.vehicle.state is VehicleState.CHALLENGED
    assert rig.phone.state is PhoneState.READY
    refusal = [e for e in rig.pair.vehicle_events if isinstance(e, FastPathRefusedEvent)]
    assert refusal == [
        FastPathRefusedEvent(PHONE_KEY_ID, ResultCode.FAST_KEY_UNKNOWN, refusal[0].detail)
    ]
    assert rig.store.commits == 0 and rig.store.state is LockState.LOCKED
    done = rig.command(Command.UNLOCK, 2)
    assert done.result is ResultCode.OK and done.fast_key is not None
    assert rig.store.state is LockState.UNLOCKED


def test_recorded_fast_request_replayed_later_is_refused() -> None:
    rig = _fast_rig()
    fast_key = rig.command(Command.LOCK, 1).fast_key
    assert fast_key is not None
    mark = len(rig.pair.sent_to_vehicle)
    _fast(rig, Command.UNLOCK, 2, fast_key)
    recorded = rig.pair.sent_to_vehicle[mark:]
    assert [type(m) for m in messages_of(recorded)] == [FastCommandRequest]
    rig.command(Command.LOCK, 3)
    new_key = rig.store.fast_keys[PHONE_KEY_ID]
    # same session: the nonce was spent
    events = rig.to_vehicle(recorded)
    assert [e.reason for e in events if isinstance(e, FastPathRefusedEvent)] == [
        ResultCode.UNKNOWN_CHALLENGE
    ]
    # a new connection: the nonce was never issued there
    vehicle = new_vehicle_session(rig)
    for frame in recorded:
        vehicle.receive_data(frame)
    refused = []
    while (event := vehicle.next_event()) is not None:
        refused.append(event)
    assert [e.reason for e in refused if isinstance(e, FastPathRefusedEvent)] == [
        ResultCode.UNKNOWN_CHALLENGE
    ]
    assert not [e for e in refused if isinstance(e, CommandExecuted)]
    assert rig.store.state is LockState.LOCKED
    assert rig.store.fast_keys[PHONE_KEY_ID] == new_key


def test_stale_counter_is_refused() -> None:
    rig = _fast_rig()
    fast_key = rig.command(Command.UNLOCK, 5).fast_key
    assert _refused(_fast(rig, Command.LOCK, 5, fast_key)) is ResultCode.STALE_COUNTER  # type: ignore[arg-type]
    assert rig.store.state is LockState.UNLOCKED


def test_wrong_key_and_unknown_key_are_refused() -> None:
    rig = _fast_rig()
    fast_key = rig.command(Command.UNLOCK, 1).fast_key
    assert fast_key is not None
    wrong = bytes(b ^ 1 for b in fast_key)
    assert _refused(_fast(rig, Command.LOCK, 2, wrong)) is ResultCode.BAD_MAC
    stranger = make_rig(phone_key=GUEST_KEY, role=None, store=rig.store, fast_path=True)
    assert _refused(_fast(stranger, Command.LOCK, 2, fast_key)) is ResultCode.UNKNOWN_KEY
    assert rig.store.state is LockState.UNLOCKED


def test_removed_key_loses_its_fast_key() -> None:
    store = MemoryStore()
    store.add_key(GUEST_KEY.public_key(), Role.OWNER)
    rig = _fast_rig(store=store, role=Role.DRIVER)
    fast_key = rig.command(Command.UNLOCK, 1).fast_key
    owner = make_rig(phone_key=GUEST_KEY, role=None, store=store, fast_path=True)
    owner.phone.send_manage(ManageOp.REMOVE_KEY, remove_key_argument(PHONE_KEY_ID), 1)
    owner.pair.pump()
    assert PHONE_KEY_ID not in store.fast_keys and PHONE_KEY_ID not in store.whitelist
    assert _refused(_fast(rig, Command.LOCK, 2, fast_key)) is ResultCode.UNKNOWN_KEY  # type: ignore[arg-type]


def test_revoked_key_refused_and_its_fast_key_wiped() -> None:
    trust = MemoryTrust()
    rig = _fast_rig(trust=trust)
    fast_key = rig.command(Command.UNLOCK, 1).fast_key
    trust.revoked.add(revocation_id(VEHICLE_ID, PHONE_KEY_ID))
    assert _refused(_fast(rig, Command.LOCK, 2, fast_key)) is ResultCode.CREDENTIAL_REVOKED  # type: ignore[arg-type]
    assert PHONE_KEY_ID not in rig.store.fast_keys
    assert rig.store.state is LockState.UNLOCKED


def test_credential_presenter_gets_no_fast_key() -> None:
    from credential_testkit import issue, make_cred_rig

    rig = make_cred_rig(role=Role.DRIVER, fast_path=True)
    rig.present(issue())
    done = rig.command(Command.UNLOCK, 1)
    assert done.result is ResultCode.OK
    assert done.fast_key is None
    assert rig.store.fast_keys == {}


def test_too_many_refusals_end_the_session() -> None:
    rig = _fast_rig()
    for counter in range(1, MAX_FAST_REFUSALS + 1):
        assert (
            _refused(_fast(rig, Command.UNLOCK, counter, bytes(32))) is ResultCode.FAST_KEY_UNKNOWN
        )
    rig.phone.send_fast_command(Command.UNLOCK, 99, bytes(32))
    with pytest.raises(VehicleRejected) as info:
        rig.pair.pump()
    assert info.value.code is ResultCode.FAST_KEY_UNKNOWN
    assert rig.vehicle.state is VehicleState.ERROR
    assert [e for e in rig.pair.vehicle_events if isinstance(e, RequestRejected)]


def test_forged_fast_response_is_refused_by_the_phone() -> None:
    rig = _fast_rig()
    fast_key = rig.command(Command.UNLOCK, 1).fast_key
    assert fast_key is not None
    rig.phone.send_fast_command(Command.LOCK, 2, fast_key)
    rig.phone.data_to_send()
    forged = CommandResponse(ResultCode.OK, Command.LOCK, 2, LockState.LOCKED, bytes(32))
    from protocol_testkit import frames_of

    with pytest.raises(BadResponseMac):
        rig.to_phone(frames_of(forged, rig.mtu))


def test_phone_refuses_bad_fast_calls() -> None:
    rig = _fast_rig()
    with pytest.raises(LocalProtocolError):
        rig.phone.send_fast_command(Command.UNLOCK, 1, b"short")
    with pytest.raises(LocalProtocolError):
        rig.phone.send_fast_command(Command.UNLOCK, 0, bytes(32))
    assert rig.phone.state is PhoneState.READY  # nothing was consumed
    rig.phone.send_fast_command(Command.UNLOCK, 1, bytes(32))
    with pytest.raises(LocalProtocolError):
        rig.phone.send_fast_command(Command.UNLOCK, 2, bytes(32))


def test_unexpected_fast_path_refused_is_a_protocol_error() -> None:
    rig = _fast_rig()
    from protocol_testkit import frames_of

    with pytest.raises(Exception) as info:
        rig.to_phone(frames_of(FastPathRefused(ResultCode.BAD_MAC), rig.mtu))
    assert "FastPathRefused" in str(info.value)
    assert rig.phone.state is PhoneState.ERROR


def test_challenge_after_refusal_is_fresh() -> None:
    rig = _fast_rig()
    before = [m for m in messages_of(rig.pair.sent_to_phone) if isinstance(m, Challenge)]
    _fast(rig, Command.UNLOCK, 1, bytes(32))
    after = [m for m in messages_of(rig.pair.sent_to_phone) if isinstance(m, Challenge)]
    assert len(after) == len(before) + 1 and after[-1].nonce != before[-1].nonce
    assert PHONE_KEY is not None


def test_revocation_update_wipes_the_fast_key_of_a_whitelisted_key() -> None:
    from credential_testkit import delta, make_cred_rig, rev_id

    rig = make_cred_rig(role=Role.OWNER, fast_path=True)
    fast_key = rig.command(Command.UNLOCK, 1).fast_key
    assert fast_key is not None and PHONE_KEY_ID in rig.store.fast_keys
    rig.phone.send_revocation_update(delta(0, 1, [rev_id(PHONE_KEY_ID)]).to_bytes())
    rig.pair.pump()
    assert PHONE_KEY_ID not in rig.store.fast_keys
    assert _refused(_fast(rig, Command.LOCK, 2, fast_key)) is ResultCode.CREDENTIAL_REVOKED
