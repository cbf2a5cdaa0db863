"""Freshness of the command handshake, in memory: recorded requests and responses
replayed on the same or a new session, challenges that expire, and counters
that only move forward."""

from __future__ import annotations

import os

import pytest
from protocol_testkit import (
    PHONE_KEY_ID,
    assert_phone_reports_no_state,
    frame_owners,
    make_rig,
    mtus,
    vehicle_refusal,
)

from protocol import (
    BadResponseMac,
    Command,
    CommandExecuted,
    CommandResponse,
    LocalProtocolError,
    LockState,
    MemoryStore,
    PhoneState,
    RequestRejected,
    ResultCode,
    VehicleConnection,
)
from protocol.errors import RejectedChallenge, RejectedCounter, RejectedExpired


# --- replay -------------------------------------------------------------------------
@mtus
def test_replayed_request_on_a_new_session(mtu: int) -> None:
    rig = make_rig(mtu)
    rig.command(Command.UNLOCK, 1)
    unlock_frames = list(rig.pair.sent_to_vehicle)
    rig.command(Command.LOCK, 2)
    assert rig.store.state is LockState.LOCKED

    attacker = make_rig(mtu, store=rig.store, role=None)  # a new connection, same vehicle
    code, exc = vehicle_refusal(attacker, unlock_frames)
    assert code is ResultCode.UNKNOWN_CHALLENGE
    assert isinstance(exc, RejectedChallenge)
    attacker.assert_untouched(LockState.LOCKED, commits=2)


def test_replayed_request_on_the_same_session() -> None:
    rig = make_rig()
    rig.command(Command.UNLOCK, 1)
    unlock_frames = list(rig.pair.sent_to_vehicle)
    rig.command(Command.LOCK, 2)
    events = rig.to_vehicle(unlock_frames)
    assert [e.code for e in events if isinstance(e, RequestRejected)] == [
        ResultCode.UNKNOWN_CHALLENGE
    ]
    assert rig.store.state is LockState.LOCKED and rig.store.commits == 2


def test_replay_after_the_vehicle_reissues_the_same_nonce() -> None:
    """Defence in depth: even if a (broken) rng repeats a nonce on a new session, the
    store's spent-nonce memory refuses the recorded request, counters aside."""

    def constant_rng(n: int) -> bytes:
        return b"\x42" * n

    rig = make_rig(vehicle_rng=constant_rng)
    rig.command(Command.UNLOCK, 1)
    unlock_frames = list(rig.pair.sent_to_vehicle)

    # same whitelist and spent nonces, but no counters: only the nonce memory can refuse
    store = MemoryStore(whitelist=rig.store.whitelist, spent_nonces=rig.store.spent_nonces)
    replay = make_rig(store=store, role=None, vehicle_rng=constant_rng)
    code, _ = vehicle_refusal(replay, unlock_frames)
    assert code is ResultCode.UNKNOWN_CHALLENGE
    replay.assert_untouched()

    # control: a store that forgot the nonce would have executed the replay
    amnesiac = make_rig(
        store=MemoryStore(whitelist=rig.store.whitelist), role=None, vehicle_rng=constant_rng
    )
    events = amnesiac.to_vehicle(unlock_frames)
    assert [e.command for e in events if isinstance(e, CommandExecuted)] == [Command.UNLOCK]


@mtus
def test_replayed_response_to_a_new_session(mtu: int) -> None:
    rig = make_rig(mtu)
    rig.command(Command.LOCK, 1)
    recorded = [
        f
        for f, m in zip(rig.pair.sent_to_phone, frame_owners(rig.pair.sent_to_phone), strict=True)
        if isinstance(m, CommandResponse)
    ]

    victim = make_rig(mtu, store=rig.store, role=None)
    victim.phone.send_command(Command.UNLOCK, 2)
    victim.phone.data_to_send()  # the attacker swallows the request
    with pytest.raises(BadResponseMac):
        victim.to_phone(recorded)
    assert_phone_reports_no_state(victim)
    assert victim.phone.state is PhoneState.ERROR
    victim.assert_untouched(LockState.LOCKED, commits=1)


def test_replayed_response_for_the_next_command_on_the_same_session() -> None:
    rig = make_rig()
    rig.command(Command.STATUS, 1)
    recorded = [
        f
        for f, m in zip(rig.pair.sent_to_phone, frame_owners(rig.pair.sent_to_phone), strict=True)
        if isinstance(m, CommandResponse)
    ]
    rig.phone.send_command(Command.UNLOCK, 2)
    rig.phone.data_to_send()  # swallowed
    with pytest.raises(BadResponseMac):
        rig.to_phone(recorded)
    assert rig.store.state is LockState.LOCKED and rig.store.commits == 1


# --- challenge lifetime and counters --------------------------------------------------
@mtus
def test_expired_challenge(mtu: int) -> None:
    rig = make_rig(mtu)
    rig.clock.advance(30.5)
    with pytest.raises(RejectedExpired):
        rig.command(Command.UNLOCK, 1)
    assert rig.rejections() == [ResultCode.CHALLENGE_EXPIRED]
    rig.assert_untouched()


def test_challenge_just_inside_its_lifetime_is_accepted() -> None:
    rig = make_rig()
    rig.clock.advance(29.5)
    assert rig.command(Command.UNLOCK, 1).lock_state is LockState.UNLOCKED


def test_challenge_lifetime_is_configurable() -> None:
    rig = make_rig(start=False)
    rig.pair.vehicle = VehicleConnection(
        rig.identity, rig.store, clock=rig.clock, rng=os.urandom, att_mtu=247, challenge_lifetime=5
    )
    rig.start()
    rig.clock.advance(6)
    with pytest.raises(RejectedExpired):
        rig.command(Command.UNLOCK, 1)
    rig.assert_untouched()


@mtus
@pytest.mark.parametrize("counter", [5, 4, 1])
def test_stale_counter(mtu: int, counter: int) -> None:
    rig = make_rig(mtu)
    rig.command(Command.STATUS, 5)
    with pytest.raises(RejectedCounter):
        rig.command(Command.UNLOCK, counter)
    assert rig.rejections() == [ResultCode.STALE_COUNTER]
    rig.assert_untouched(LockState.LOCKED, commits=1, executed=1)
    assert rig.store.counters[PHONE_KEY_ID] == 5


@pytest.mark.parametrize("counter", [0, -1, 2**64])
def test_counter_out_of_range_is_refused_locally(counter: int) -> None:
    rig = make_rig()
    with pytest.raises(LocalProtocolError):
        rig.phone.send_command(Command.UNLOCK, counter)
    assert rig.phone.data_to_send() == []
    # the held challenge is still usable
    assert rig.command(Command.UNLOCK, 1).lock_state is LockState.UNLOCKED


def test_largest_counter_is_accepted() -> None:
    rig = make_rig()
    assert rig.command(Command.UNLOCK, 2**64 - 1).counter == 2**64 - 1
