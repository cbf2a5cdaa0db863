"""Whitelist management over BLE: roles, the enrollment window, add/remove,
share revocation, ownership transfer, and malformed or forged requests."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from protocol_testkit import (
    ATTACKER_KEY,
    GUEST_KEY,
    MTUS,
    PHONE_KEY,
    PHONE_KEY_ID,
    VEHICLE_KEY,
    Rig,
    flip,
    frames_of,
    key_from_label,
    make_rig,
    messages_of,
    raw_messages_of,
)

from protocol import (
    BadResponseMac,
    Command,
    CommandExecuted,
    KeyEnrolled,
    KeyRemoved,
    LocalProtocolError,
    LockState,
    ManageCompleted,
    ManageOp,
    ManageRefused,
    ManageRequest,
    ManageResponse,
    MemoryEnrollment,
    MemoryStore,
    OwnershipTransferred,
    PhoneState,
    ProtocolError,
    RequestRejected,
    ResultCode,
    Role,
    ShareRevoked,
    VehicleRejected,
    VehicleState,
    crypto,
    decode,
    encode,
)
from protocol.manage import (
    add_key_argument,
    enroll_argument,
    remove_key_argument,
    revoke_share_argument,
    transfer_argument,
)
from protocol.transcript import manage_transcript_hash

mtus = pytest.mark.parametrize("mtu", MTUS)

DRIVER_KEY = key_from_label("phonekey tests: driver phone key")
NEW_KEY = key_from_label("phonekey tests: a new phone key")
DRIVER_KEY_ID = crypto.key_id(DRIVER_KEY.public_key())
GUEST_KEY_ID = crypto.key_id(GUEST_KEY.public_key())
NEW_KEY_ID = crypto.key_id(NEW_KEY.public_key())
SHARE_ID = bytes(range(16))
ROLE_KEYS = {Role.OWNER: PHONE_KEY, Role.DRIVER: DRIVER_KEY, Role.GUEST: GUEST_KEY}


def _store() -> MemoryStore:
    """Owner PHONE_KEY, driver DRIVER_KEY, guest GUEST_KEY."""
    store = MemoryStore()
    for role, key in ROLE_KEYS.items():
        store.add_key(key.public_key(), role)
    return store


def _rig(
    key: crypto.PrivateKey = PHONE_KEY,
    store: MemoryStore | None = None,
    mtu: int = 247,
    **options: object,
) -> Rig:
    return make_rig(mtu, phone_key=key, role=None, store=store or _store(), **options)  # type: ignore[arg-type]


def _manage(rig: Rig, op: ManageOp, argument: bytes, counter: int = 1) -> ManageCompleted:
    before = len(rig.pair.phone_events)
    rig.phone.send_manage(op, argument, counter)
    rig.pair.pump()
    done = [e for e in rig.pair.phone_events[before:] if isinstance(e, ManageCompleted)]
    assert len(done) == 1, rig.pair.phone_events[before:]
    assert done[0].operation is op and done[0].counter == counter
    assert rig.phone.state is PhoneState.READY  # the next challenge arrived
    return done[0]


def _refused(rig: Rig, op: ManageOp, argument: bytes, counter: int = 1) -> ResultCode:
    """The vehicle must refuse with an unauthenticated Error; returns its code."""
    rig.phone.send_manage(op, argument, counter)
    with pytest.raises(VehicleRejected) as info:
        rig.pair.pump()
    assert info.value.authenticated is False
    assert rig.vehicle.state is VehicleState.ERROR
    assert rig.rejections() == [info.value.code]
    return info.value.code


def _arguments() -> dict[ManageOp, bytes]:
    """A valid argument for every operation, aimed at a key that is not the requester's."""
    return {
        ManageOp.ENROLL: b"",  # depends on the requester, filled in by the test
        ManageOp.ADD_KEY: add_key_argument(NEW_KEY.public_key(), Role.GUEST),
        ManageOp.REMOVE_KEY: remove_key_argument(GUEST_KEY_ID),
        ManageOp.REVOKE_SHARE: revoke_share_argument(SHARE_ID, 2_000_000_000),
        ManageOp.TRANSFER_OWNERSHIP: transfer_argument(NEW_KEY.public_key()),
    }


# --- the role matrix -----------------------------------------------------------------------
@pytest.mark.parametrize("op", list(ManageOp), ids=lambda o: o.name)
@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.name)
def test_role_matrix_manage(role: Role, op: ManageOp) -> None:
    """Only owners manage; a driver or guest gets an authenticated FORBIDDEN
    and nothing but its counter changes (ENROLL outside a window included)."""
    store = _store()
    key = ROLE_KEYS[role]
    rig = _rig(key, store)
    argument = _arguments()[op] or enroll_argument(key.public_key())
    whitelist = dict(store.whitelist)
    done = _manage(rig, op, argument, 5)
    key_id = crypto.key_id(key.public_key())
    assert store.counters[key_id] == 5
    if role is not Role.OWNER:
        assert done.result is ResultCode.FORBIDDEN
        assert store.whitelist == whitelist and store.revoked_shares == {}
        assert [e for e in rig.pair.vehicle_events if isinstance(e, ManageRefused)] == [
            ManageRefused(key_id, op, ResultCode.FORBIDDEN)
        ]
        return
    assert done.result is ResultCode.OK
    if op is ManageOp.ENROLL:
        assert store.whitelist == whitelist  # already an owner: nothing to do
    elif op is ManageOp.ADD_KEY:
        assert store.whitelist[NEW_KEY_ID].role is Role.GUEST
    elif op is ManageOp.REMOVE_KEY:
        assert GUEST_KEY_ID not in store.whitelist
    elif op is ManageOp.REVOKE_SHARE:
        assert store.revoked_shares == {SHARE_ID: 2_000_000_000}
    else:
        assert list(store.whitelist) == [NEW_KEY_ID]
        assert store.whitelist[NEW_KEY_ID].role is Role.OWNER


@pytest.mark.parametrize("command", list(Command), ids=lambda c: c.name)
@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.name)
def test_role_matrix_commands(role: Role, command: Command) -> None:
    rig = _rig(ROLE_KEYS[role])
    done = rig.command(command, 1)
    allowed = role is not Role.GUEST or command is not Command.STATUS
    assert done.result is (ResultCode.OK if allowed else ResultCode.FORBIDDEN)


@pytest.mark.parametrize("requester", [Role.DRIVER, Role.GUEST], ids=lambda r: r.name)
@pytest.mark.parametrize("granted", list(Role), ids=lambda r: r.name)
def test_nobody_grants_more_than_they_have(requester: Role, granted: Role) -> None:
    store = _store()
    rig = _rig(ROLE_KEYS[requester], store)
    done = _manage(rig, ManageOp.ADD_KEY, add_key_argument(NEW_KEY.public_key(), granted))
    assert done.result is ResultCode.FORBIDDEN
    assert NEW_KEY_ID not in store.whitelist


# --- enrollment window ---------------------------------------------------------------------
@mtus
def test_enroll_in_an_open_window_makes_an_owner_and_closes_it(mtu: int) -> None:
    store = _store()
    window = MemoryEnrollment(open=True)
    rig = _rig(NEW_KEY, store, mtu, enrollment=window)
    done = _manage(rig, ManageOp.ENROLL, enroll_argument(NEW_KEY.public_key()))
    assert done.result is ResultCode.OK
    assert store.whitelist[NEW_KEY_ID].role is Role.OWNER
    assert window.open is False and window.consumed == 1
    assert [e for e in rig.pair.vehicle_events if isinstance(e, KeyEnrolled)] == [
        KeyEnrolled(NEW_KEY_ID, Role.OWNER, NEW_KEY_ID, "enrollment-window")
    ]
    assert store.commits == 1
    assert dict(rig.vehicle.crypto_ops) == {"ecdsa_verify": 1, "ecdh": 1}
    # the new owner can act at once on the same session
    assert rig.command(Command.UNLOCK, 2).result is ResultCode.OK


def test_enroll_outside_a_window_is_refused_before_any_signature_work() -> None:
    store = _store()
    for window in (None, MemoryEnrollment(open=False)):
        rig = _rig(NEW_KEY, store, enrollment=window)
        code = _refused(rig, ManageOp.ENROLL, enroll_argument(NEW_KEY.public_key()))
        assert code is ResultCode.ENROLLMENT_CLOSED
        assert rig.vehicle.crypto_ops.total() == 0
    assert NEW_KEY_ID not in store.whitelist and store.commits == 0


def test_window_is_consumed_by_one_enrollment() -> None:
    store = _store()
    window = MemoryEnrollment(open=True)
    first = _rig(NEW_KEY, store, enrollment=window)
    assert _manage(first, ManageOp.ENROLL, enroll_argument(NEW_KEY.public_key())).result is (
        ResultCode.OK
    )
    second = _rig(ATTACKER_KEY, store, enrollment=window)
    code = _refused(second, ManageOp.ENROLL, enroll_argument(ATTACKER_KEY.public_key()))
    assert code is ResultCode.ENROLLMENT_CLOSED
    assert crypto.key_id(ATTACKER_KEY.public_key()) not in store.whitelist


def test_enroll_must_name_the_requesters_own_key() -> None:
    rig = _rig(NEW_KEY, enrollment=MemoryEnrollment(open=True))
    code = _refused(rig, ManageOp.ENROLL, enroll_argument(ATTACKER_KEY.public_key()))
    assert code is ResultCode.BAD_ARGUMENT


def test_enroll_with_a_bad_signature_in_an_open_window_keeps_the_window() -> None:
    window = MemoryEnrollment(open=True)
    rig = _rig(NEW_KEY, enrollment=window)
    rig.phone.send_manage(ManageOp.ENROLL, enroll_argument(NEW_KEY.public_key()), 1)
    frames = rig.phone.data_to_send()
    request = decode(raw_messages_of(frames)[0])
    assert isinstance(request, ManageRequest)
    forged = replace(request, signature=crypto.sign(ATTACKER_KEY, b"something else"))
    events = rig.to_vehicle(frames_of(forged, rig.mtu))
    assert [e.code for e in events if isinstance(e, RequestRejected)] == [ResultCode.BAD_SIGNATURE]
    assert window.open and NEW_KEY_ID not in rig.store.whitelist


def test_enroll_upgrades_a_whitelisted_driver_only_in_a_window() -> None:
    store = _store()
    closed = _rig(DRIVER_KEY, store, enrollment=MemoryEnrollment(open=False))
    argument = enroll_argument(DRIVER_KEY.public_key())
    assert _manage(closed, ManageOp.ENROLL, argument, 1).result is ResultCode.FORBIDDEN
    window = MemoryEnrollment(open=True)
    opened = _rig(DRIVER_KEY, store, enrollment=window)
    assert _manage(opened, ManageOp.ENROLL, argument, 2).result is ResultCode.OK
    assert store.whitelist[DRIVER_KEY_ID].role is Role.OWNER and not window.open


def test_owner_enroll_leaves_the_window_open() -> None:
    window = MemoryEnrollment(open=True)
    rig = _rig(PHONE_KEY, enrollment=window)
    assert _manage(rig, ManageOp.ENROLL, enroll_argument(PHONE_KEY.public_key())).result is (
        ResultCode.OK
    )
    assert window.open


# --- add, remove, revoke, transfer ---------------------------------------------------------
def test_owner_adds_a_key_that_then_works() -> None:
    store = _store()
    rig = _rig(PHONE_KEY, store)
    argument = add_key_argument(NEW_KEY.public_key(), Role.DRIVER)
    assert _manage(rig, ManageOp.ADD_KEY, argument).result is ResultCode.OK
    assert [e for e in rig.pair.vehicle_events if isinstance(e, KeyEnrolled)] == [
        KeyEnrolled(NEW_KEY_ID, Role.DRIVER, PHONE_KEY_ID, "owner")
    ]
    friend = _rig(NEW_KEY, store)
    assert friend.command(Command.STATUS, 1).result is ResultCode.OK


def test_owner_may_add_another_owner() -> None:
    store = _store()
    rig = _rig(PHONE_KEY, store)
    argument = add_key_argument(NEW_KEY.public_key(), Role.OWNER)
    assert _manage(rig, ManageOp.ADD_KEY, argument).result is ResultCode.OK
    assert store.whitelist[NEW_KEY_ID].role is Role.OWNER


def test_role_change_drops_the_fast_key() -> None:
    store = _store()
    store.fast_keys[DRIVER_KEY_ID] = bytes(32)
    rig = _rig(PHONE_KEY, store)
    argument = add_key_argument(DRIVER_KEY.public_key(), Role.GUEST)
    assert _manage(rig, ManageOp.ADD_KEY, argument).result is ResultCode.OK
    assert store.whitelist[DRIVER_KEY_ID].role is Role.GUEST
    assert DRIVER_KEY_ID not in store.fast_keys


def test_remove_key() -> None:
    store = _store()
    store.fast_keys[DRIVER_KEY_ID] = bytes(32)
    rig = _rig(PHONE_KEY, store)
    assert _manage(rig, ManageOp.REMOVE_KEY, remove_key_argument(DRIVER_KEY_ID)).result is (
        ResultCode.OK
    )
    assert DRIVER_KEY_ID not in store.whitelist and DRIVER_KEY_ID not in store.fast_keys
    assert [e for e in rig.pair.vehicle_events if isinstance(e, KeyRemoved)] == [
        KeyRemoved(DRIVER_KEY_ID, PHONE_KEY_ID)
    ]
    removed = _rig(DRIVER_KEY, store)
    removed.phone.send_command(Command.UNLOCK, 9)
    with pytest.raises(VehicleRejected) as info:
        removed.pair.pump()
    assert info.value.code is ResultCode.UNKNOWN_KEY


def test_remove_unknown_key_is_not_found() -> None:
    store = _store()
    rig = _rig(PHONE_KEY, store)
    done = _manage(rig, ManageOp.REMOVE_KEY, remove_key_argument(NEW_KEY_ID))
    assert done.result is ResultCode.NOT_FOUND
    assert len(store.whitelist) == 3


def test_last_owner_cannot_remove_or_demote_itself() -> None:
    store = _store()
    rig = _rig(PHONE_KEY, store)
    assert _manage(rig, ManageOp.REMOVE_KEY, remove_key_argument(PHONE_KEY_ID), 1).result is (
        ResultCode.LAST_OWNER
    )
    demote = add_key_argument(PHONE_KEY.public_key(), Role.DRIVER)
    assert _manage(rig, ManageOp.ADD_KEY, demote, 2).result is ResultCode.LAST_OWNER
    assert store.whitelist[PHONE_KEY_ID].role is Role.OWNER
    # with a second owner it may leave
    add = add_key_argument(NEW_KEY.public_key(), Role.OWNER)
    assert _manage(rig, ManageOp.ADD_KEY, add, 3).result is ResultCode.OK
    assert _manage(rig, ManageOp.REMOVE_KEY, remove_key_argument(PHONE_KEY_ID), 4).result is (
        ResultCode.OK
    )
    assert PHONE_KEY_ID not in store.whitelist


def test_revoke_share() -> None:
    store = _store()
    rig = _rig(PHONE_KEY, store)
    argument = revoke_share_argument(SHARE_ID, 1_900_000_000)
    assert _manage(rig, ManageOp.REVOKE_SHARE, argument).result is ResultCode.OK
    assert store.share_revoked(SHARE_ID)
    assert [e for e in rig.pair.vehicle_events if isinstance(e, ShareRevoked)] == [
        ShareRevoked(SHARE_ID, PHONE_KEY_ID)
    ]


@mtus
def test_transfer_ownership_wipes_everything_old(mtu: int) -> None:
    store = _store()
    store.add_key(NEW_KEY.public_key(), Role.DRIVER)  # the buyer's key was a driver
    store.fast_keys[DRIVER_KEY_ID] = bytes(32)
    store.revoked_shares[SHARE_ID] = 5
    store.counters[DRIVER_KEY_ID] = 77
    rig = _rig(PHONE_KEY, store, mtu)
    argument = transfer_argument(NEW_KEY.public_key())
    assert _manage(rig, ManageOp.TRANSFER_OWNERSHIP, argument, 10).result is ResultCode.OK
    assert list(store.whitelist) == [NEW_KEY_ID]
    assert store.whitelist[NEW_KEY_ID].role is Role.OWNER
    assert store.fast_keys == {} and store.revoked_shares == {}
    assert store.counters[DRIVER_KEY_ID] == 77 and store.counters[PHONE_KEY_ID] == 10
    assert store.commits == 1
    assert [e for e in rig.pair.vehicle_events if isinstance(e, OwnershipTransferred)] == [
        OwnershipTransferred(NEW_KEY_ID, PHONE_KEY_ID)
    ]
    # the old owner is gone, even on its open session
    rig.phone.send_command(Command.UNLOCK, 11)
    with pytest.raises(VehicleRejected) as info:
        rig.pair.pump()
    assert info.value.code is ResultCode.UNKNOWN_KEY
    assert _rig(NEW_KEY, store).command(Command.UNLOCK, 1).result is ResultCode.OK


def test_manage_by_unknown_key_is_refused_unauthenticated() -> None:
    rig = _rig(NEW_KEY)
    code = _refused(rig, ManageOp.REMOVE_KEY, remove_key_argument(PHONE_KEY_ID))
    assert code is ResultCode.UNKNOWN_KEY
    assert rig.vehicle.crypto_ops.total() == 0


def test_stale_counter() -> None:
    store = _store()
    store.counters[PHONE_KEY_ID] = 50
    rig = _rig(PHONE_KEY, store)
    code = _refused(rig, ManageOp.REVOKE_SHARE, revoke_share_argument(SHARE_ID, 1), 50)
    assert code is ResultCode.STALE_COUNTER and store.commits == 0


# --- malformed and forged ------------------------------------------------------------------
@pytest.mark.parametrize(
    "argument",
    [
        bytes([0x02]) + b"\xff" * 32 + bytes([Role.GUEST]),  # x >= p: not a point
        crypto.public_bytes(NEW_KEY.public_key()) + bytes([9]),  # role 9
        crypto.public_bytes(NEW_KEY.public_key()) + bytes([0]),  # role 0
    ],
    ids=["bad-point", "role-9", "role-0"],
)
def test_bad_add_key_argument(argument: bytes) -> None:
    rig = _rig(PHONE_KEY)
    assert _refused(rig, ManageOp.ADD_KEY, argument) is ResultCode.BAD_ARGUMENT
    assert rig.vehicle.crypto_ops.total() == 0


def _manage_bytes(rig: Rig, op: ManageOp, argument: bytes) -> bytes:
    rig.phone.send_manage(op, argument, 1)
    return raw_messages_of(rig.phone.data_to_send())[0]


def test_wrong_argument_length_or_operation_is_malformed() -> None:
    rig = _rig(PHONE_KEY)
    data = bytearray(_manage_bytes(rig, ManageOp.REMOVE_KEY, remove_key_argument(GUEST_KEY_ID)))
    # operation byte: after header(2) version(1) count(1) versions(1) nonce(16) key id(16) ctr(8)
    op_at = 2 + 1 + 1 + 1 + 16 + 16 + 8
    assert data[op_at] == ManageOp.REMOVE_KEY
    for bad_op in (0, 6, 0xFF, ManageOp.ENROLL):
        changed = bytearray(data)
        changed[op_at] = bad_op
        with pytest.raises(ProtocolError):
            decode(bytes(changed))
    rig2 = _rig(PHONE_KEY)
    changed = bytearray(data)
    changed[op_at] = ManageOp.ENROLL  # 16-byte argument for a 33-byte operation
    events = rig2.to_vehicle(frames_of(bytes(changed), rig2.mtu))
    assert [e.code for e in events if isinstance(e, RequestRejected)] == [ResultCode.MALFORMED]


def test_phone_refuses_bad_manage_calls() -> None:
    rig = _rig(PHONE_KEY)
    with pytest.raises(LocalProtocolError):
        rig.phone.send_manage(ManageOp.REMOVE_KEY, bytes(15), 1)
    with pytest.raises(LocalProtocolError):
        rig.phone.send_manage(9, bytes(16), 1)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        rig.phone.send_manage(ManageOp.REMOVE_KEY, bytes(16), 0)
    assert rig.phone.state is PhoneState.READY
    rig.phone.send_manage(ManageOp.REMOVE_KEY, bytes(16), 1)
    with pytest.raises(LocalProtocolError):
        rig.phone.send_manage(ManageOp.REMOVE_KEY, bytes(16), 2)


def test_manage_signature_binds_operation_and_argument() -> None:
    """A signature over one operation does not authorise another (nor a command)."""
    rig = _rig(PHONE_KEY)
    data = _manage_bytes(rig, ManageOp.REMOVE_KEY, remove_key_argument(GUEST_KEY_ID))
    request = decode(data)
    assert isinstance(request, ManageRequest)
    swapped = replace(request, argument=remove_key_argument(DRIVER_KEY_ID))
    events = rig.to_vehicle(frames_of(swapped, rig.mtu))
    assert [e.code for e in events if isinstance(e, RequestRejected)] == [ResultCode.BAD_SIGNATURE]
    assert len(rig.store.whitelist) == 3


def test_manage_and_command_transcripts_differ() -> None:
    rig = _rig(PHONE_KEY)
    data = _manage_bytes(rig, ManageOp.REMOVE_KEY, remove_key_argument(GUEST_KEY_ID))
    request = decode(data)
    assert isinstance(request, ManageRequest)
    challenge = raw_messages_of(rig.pair.sent_to_phone)[0]
    th = manage_transcript_hash(challenge, VEHICLE_KEY.public_key(), request)
    crypto.verify(PHONE_KEY.public_key(), request.signature, th)
    from protocol.transcript import _label

    assert _label(1, "manage request") != _label(1, "request")


def test_forged_manage_response_is_refused() -> None:
    rig = _rig(PHONE_KEY)
    rig.phone.send_manage(ManageOp.REVOKE_SHARE, revoke_share_argument(SHARE_ID, 1), 1)
    rig.phone.data_to_send()
    forged = ManageResponse(ResultCode.OK, ManageOp.REVOKE_SHARE, 1, bytes(32))
    with pytest.raises(BadResponseMac):
        rig.to_phone(frames_of(forged, rig.mtu))


@mtus
def test_random_corruption_of_manage_frames_never_crashes(mtu: int) -> None:
    """Seeded random byte flips in a ManageRequest: the vehicle refuses with a
    precise error or, if nothing meaningful changed, executes it; never crashes."""
    rnd = random.Random(4)
    allowed = {
        ResultCode.MALFORMED,
        ResultCode.BAD_SIGNATURE,
        ResultCode.UNKNOWN_CHALLENGE,
        ResultCode.VERSION_MISMATCH,
        ResultCode.UNSUPPORTED_VERSION,
        ResultCode.UNKNOWN_KEY,
        ResultCode.BAD_KEY,
        ResultCode.BAD_ARGUMENT,
        ResultCode.STALE_COUNTER,
    }
    for _ in range(40):
        rig = _rig(PHONE_KEY, mtu=mtu)
        rig.phone.send_manage(
            ManageOp.ADD_KEY, add_key_argument(NEW_KEY.public_key(), Role.GUEST), 1
        )
        frames = rig.phone.data_to_send()
        i = rnd.randrange(len(frames))
        j = rnd.randrange(len(frames[i]))
        events = rig.to_vehicle(flip(frames, i, j, 1 << rnd.randrange(8)))
        codes = {e.code for e in events if isinstance(e, RequestRejected)}
        assert codes <= allowed, codes
        assert NEW_KEY_ID not in rig.store.whitelist or not codes


def test_manage_response_and_request_round_trip() -> None:
    request = ManageRequest(
        version=1,
        offered_versions=(1,),
        nonce=bytes(16),
        key_id=bytes(16),
        counter=3,
        operation=ManageOp.ADD_KEY,
        argument=add_key_argument(NEW_KEY.public_key(), Role.DRIVER),
        ephemeral_key=crypto.public_bytes(NEW_KEY.public_key()),
        signature=bytes(64),
    )
    assert decode(encode(request)) == request
    response = ManageResponse(ResultCode.LAST_OWNER, ManageOp.REMOVE_KEY, 3, bytes(32))
    assert decode(encode(response)) == response
    assert messages_of(frames_of(response, 23)) == [response]
    assert LockState.LOCKED and CommandExecuted  # imported names used
