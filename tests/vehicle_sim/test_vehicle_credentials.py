"""Cloud credentials verified offline, end to end over a virtual radio: a phone
not on the whitelist unlocks with an issuer-signed credential; expired and
revoked credentials are refused; revocation deltas and signed time carried by
a phone are applied durably; replayed time is refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from vehicle_testkit import STEP_TIMEOUT, BlePhone, PhoneFactory, RunningVehicle

from protocol import (
    ChallengeReceived,
    Command,
    CommandCompleted,
    CommandExecuted,
    LockState,
    RequestRejected,
    ResultCode,
    Role,
    VehicleRejected,
    crypto,
)
from protocol.card import VehicleCard
from protocol.credentials import (
    issue_credential,
    issue_revocation_delta,
    issue_signed_time,
    revocation_id,
)
from protocol.events import ClockCorrected, RevocationsUpdated, VehicleStatusReceived
from vehicle_sim.display import describe_event
from vehicle_sim.state_store import FileVehicleStore, open_store

HOUR = 3600
DAY = 24 * HOUR


@pytest.fixture
def issuer(store: FileVehicleStore) -> crypto.PrivateKey:
    """The cloud issuer's key, provisioned on the vehicle."""
    key = crypto.generate_private_key()
    assert store.add_issuer(key.public_key())
    return key


def credential(
    issuer: crypto.PrivateKey,
    phone: BlePhone,
    card: VehicleCard,
    *,
    serial: int = 7,
    role: Role = Role.DRIVER,
    valid_from: int = -HOUR,
    valid_until: int = DAY,
) -> bytes:
    """A credential for ``phone``'s key, valid relative to now."""
    now = int(time.time())
    return issue_credential(
        issuer,
        vehicle_id=card.vehicle_id,
        holder_key=phone.key.public_key(),
        role=role,
        not_before=now + valid_from,
        not_after=now + valid_until,
        serial=serial,
    ).to_bytes()


async def connect(phone: BlePhone, vehicle: RunningVehicle) -> VehicleStatusReceived:
    """Subscribe; a vehicle that trusts an issuer pushes a challenge, then its status."""
    await phone.connect(vehicle.device.random_address)
    assert isinstance(await phone.next_event(), ChallengeReceived)
    status = await phone.next_event()
    assert isinstance(status, VehicleStatusReceived), status
    return status


async def present(phone: BlePhone, encoded: bytes) -> None:
    assert phone.protocol is not None
    phone.protocol.present_credential(encoded)
    await phone.write_frames()


async def command(phone: BlePhone, cmd: Command) -> tuple[CommandCompleted, VehicleStatusReceived]:
    """A command on a vehicle that trusts an issuer: the answer, the next
    challenge, then the vehicle's status (off the critical path)."""
    await phone.send(cmd)
    done = await phone.next_event()
    assert isinstance(done, CommandCompleted), done
    assert isinstance(await phone.next_event(), ChallengeReceived)
    status = await phone.next_event()
    assert isinstance(status, VehicleStatusReceived), status
    return done, status


async def refused(phone: BlePhone, code: ResultCode) -> None:
    rejection = await phone.next_event()
    assert isinstance(rejection, VehicleRejected), rejection
    assert rejection.code is code, rejection
    async with asyncio.timeout(STEP_TIMEOUT):
        await phone.disconnected.wait()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(STEP_TIMEOUT):
        while not condition():
            await asyncio.sleep(0.01)


def executed(vehicle: RunningVehicle) -> list[CommandExecuted]:
    return [event for _, event in vehicle.seen if isinstance(event, CommandExecuted)]


# --- credentials ------------------------------------------------------------------------
async def test_a_phone_off_the_whitelist_unlocks_with_a_credential(
    vehicle: RunningVehicle, make_phone: PhoneFactory, issuer: crypto.PrivateKey, card: VehicleCard
) -> None:
    phone = await make_phone("cloud", role=None)
    await connect(phone, vehicle)
    await present(phone, credential(issuer, phone, card, serial=7))

    done, status = await command(phone, Command.UNLOCK)

    assert (done.result, done.lock_state) == (ResultCode.OK, LockState.UNLOCKED)
    assert status.revocation_version == 0 and len(status.time_nonce) == 16
    [event] = executed(vehicle)
    assert (event.key_id, event.role, event.credential_serial) == (phone.key_id, Role.DRIVER, 7)
    line = describe_event(event, "peer")
    assert f"unlock by key {phone.key_id[:4].hex()} (driver, cloud credential #7)" in line
    with open_store(vehicle.store.state_dir, read_only=True) as disk:
        assert disk.lock_state() is LockState.UNLOCKED
        assert disk.last_counter(phone.key_id) == 1
        assert disk.whitelist_entry(phone.key_id) is None  # a credential whitelists nothing

    # The credential holds for the whole session: every request binds it.
    locked, _ = await command(phone, Command.LOCK)
    assert locked.lock_state is LockState.LOCKED
    assert [e.credential_serial for e in executed(vehicle)] == [7, 7]


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("expired", ResultCode.CREDENTIAL_EXPIRED),
        ("not-yet-valid", ResultCode.CREDENTIAL_NOT_YET_VALID),
        ("owner-role", ResultCode.CREDENTIAL_INVALID),
        ("unknown-issuer", ResultCode.CREDENTIAL_INVALID),
        ("another-holder", ResultCode.CREDENTIAL_INVALID),
    ],
)
async def test_a_bad_credential_is_refused_and_nothing_changes(
    vehicle: RunningVehicle,
    make_phone: PhoneFactory,
    issuer: crypto.PrivateKey,
    card: VehicleCard,
    kind: str,
    code: ResultCode,
) -> None:
    phone = await make_phone("cloud", role=None)
    other = await make_phone("other", role=None)
    encoded = {
        # Beyond the vehicle's 300 s of leeway at either end.
        "expired": lambda: credential(issuer, phone, card, valid_from=-DAY, valid_until=-HOUR),
        "not-yet-valid": lambda: credential(issuer, phone, card, valid_from=HOUR),
        "owner-role": lambda: credential(issuer, phone, card, role=Role.OWNER),
        "unknown-issuer": lambda: credential(crypto.generate_private_key(), phone, card),
        "another-holder": lambda: credential(issuer, other, card),
    }[kind]()
    await connect(phone, vehicle)
    await present(phone, encoded)
    await phone.send(Command.UNLOCK)  # a phone sends both without waiting

    await refused(phone, code)
    assert vehicle.store.lock_state() is LockState.LOCKED
    assert vehicle.store.last_counter(phone.key_id) == 0
    [(_, rejected)] = vehicle.seen
    assert isinstance(rejected, RequestRejected) and rejected.code is code


async def test_a_revoked_holder_is_refused(
    vehicle: RunningVehicle, make_phone: PhoneFactory, issuer: crypto.PrivateKey, card: VehicleCard
) -> None:
    phone = await make_phone("cloud", role=None)
    vehicle.store.apply_revocations(1, (revocation_id(card.vehicle_id, phone.key_id),))
    await connect(phone, vehicle)
    await present(phone, credential(issuer, phone, card))
    await phone.send(Command.UNLOCK)
    await refused(phone, ResultCode.CREDENTIAL_REVOKED)
    assert vehicle.store.lock_state() is LockState.LOCKED


async def test_a_revoked_whitelisted_key_is_refused_as_revoked(
    vehicle: RunningVehicle, make_phone: PhoneFactory, issuer: crypto.PrivateKey, card: VehicleCard
) -> None:
    stolen = await make_phone("stolen", role=Role.OWNER)
    vehicle.store.apply_revocations(1, (revocation_id(card.vehicle_id, stolen.key_id),))
    await connect(stolen, vehicle)
    await stolen.send(Command.UNLOCK)
    await refused(stolen, ResultCode.CREDENTIAL_REVOKED)
    assert vehicle.store.lock_state() is LockState.LOCKED


async def test_keys_revoked_on_another_vehicle_still_open_this_one(
    vehicle: RunningVehicle, make_phone: PhoneFactory, issuer: crypto.PrivateKey, card: VehicleCard
) -> None:
    """Another owner revoked these phones on their vehicle (and the list also
    holds the raw key ids, the old issuer-wide form): neither applies here."""
    owner = await make_phone("owner", role=Role.OWNER)
    holder = await make_phone("cloud", role=None)
    elsewhere = crypto.key_id(crypto.generate_private_key().public_key())
    vehicle.store.apply_revocations(
        1,
        (
            revocation_id(elsewhere, owner.key_id),
            revocation_id(elsewhere, holder.key_id),
            owner.key_id,
            holder.key_id,
        ),
    )
    await connect(owner, vehicle)
    await command(owner, Command.UNLOCK)
    await owner.disconnect()
    await connect(holder, vehicle)
    await present(holder, credential(issuer, holder, card))
    await command(holder, Command.LOCK)
    assert vehicle.store.lock_state() is LockState.LOCKED
    assert vehicle.store.last_counter(holder.key_id) > 0


# --- revocation deltas --------------------------------------------------------------------
async def test_a_revocation_delta_is_applied_durably_and_bars_the_holder(
    vehicle: RunningVehicle, make_phone: PhoneFactory, issuer: crypto.PrivateKey, card: VehicleCard
) -> None:
    holder = await make_phone("cloud", role=None)
    owner = await make_phone("owner", role=Role.OWNER)
    holder_credential = credential(issuer, holder, card, serial=11)
    await connect(holder, vehicle)
    await present(holder, holder_credential)
    await command(holder, Command.UNLOCK)
    await holder.disconnect()

    # The owner's phone carries the news after its own command.
    await connect(owner, vehicle)
    _, status = await command(owner, Command.LOCK)
    assert status.revocation_version == 0
    delta = issue_revocation_delta(
        issuer,
        from_version=0,
        to_version=1,
        added=[revocation_id(card.vehicle_id, holder.key_id)],
    )
    assert owner.protocol is not None
    owner.protocol.send_revocation_update(delta.to_bytes())
    await owner.write_frames()
    status = await owner.next_event()
    assert isinstance(status, VehicleStatusReceived) and status.revocation_version == 1
    await until(lambda: any(isinstance(e, RevocationsUpdated) for _, e in vehicle.seen))
    [update] = [e for _, e in vehicle.seen if isinstance(e, RevocationsUpdated)]
    assert (update.from_version, update.to_version, update.added) == (0, 1, 1)
    assert describe_event(update) == "revocations updated: version 0 -> 1, 1 key revoked"

    with open_store(vehicle.store.state_dir, read_only=True) as disk:  # durable
        assert disk.revocation_version() == 1 and disk.is_key_revoked(holder.key_id)

    # The same delta again is old news: ignored, the session goes on.
    owner.protocol.send_revocation_update(delta.to_bytes())
    await owner.write_frames()
    status = await owner.next_event()
    assert isinstance(status, VehicleStatusReceived) and status.revocation_version == 1
    assert sum(isinstance(e, RevocationsUpdated) for _, e in vehicle.seen) == 1

    # The revoked holder's next presentation is refused.
    holder.disconnected.clear()
    await connect(holder, vehicle)
    await present(holder, holder_credential)
    await holder.send(Command.UNLOCK)
    await refused(holder, ResultCode.CREDENTIAL_REVOKED)
    assert vehicle.store.lock_state() is LockState.LOCKED


async def test_a_delta_from_another_issuer_is_refused(
    vehicle: RunningVehicle, make_phone: PhoneFactory, issuer: crypto.PrivateKey, card: VehicleCard
) -> None:
    owner = await make_phone("owner", role=Role.OWNER)
    await connect(owner, vehicle)
    await command(owner, Command.UNLOCK)
    forged = issue_revocation_delta(
        crypto.generate_private_key(),
        from_version=0,
        to_version=1,
        added=[revocation_id(card.vehicle_id, owner.key_id)],
    )
    assert owner.protocol is not None
    owner.protocol.send_revocation_update(forged.to_bytes())
    await owner.write_frames()
    await refused(owner, ResultCode.UPDATE_REJECTED)
    assert vehicle.store.revocation_version() == 0
    assert not vehicle.store.is_key_revoked(owner.key_id)


# --- signed time ----------------------------------------------------------------------------
async def test_signed_time_corrects_the_clock_once(
    vehicle: RunningVehicle, make_phone: PhoneFactory, issuer: crypto.PrivateKey
) -> None:
    owner = await make_phone("owner", role=Role.OWNER)
    await connect(owner, vehicle)
    _, status = await command(owner, Command.UNLOCK)
    issuer_time = int(time.time()) + 2 * HOUR  # the vehicle's clock is two hours slow
    signed = issue_signed_time(issuer, nonce=status.time_nonce, time=issuer_time).to_bytes()

    assert owner.protocol is not None
    owner.protocol.send_time_update(signed)
    await owner.write_frames()
    fresh = await owner.next_event()
    assert isinstance(fresh, VehicleStatusReceived) and fresh.time_nonce != status.time_nonce
    await until(lambda: any(isinstance(e, ClockCorrected) for _, e in vehicle.seen))
    [corrected] = [e for _, e in vehicle.seen if isinstance(e, ClockCorrected)]
    assert corrected.after == issuer_time and corrected.before < issuer_time
    assert "clock corrected by issuer-signed time" in describe_event(corrected)
    assert vehicle.store.now() >= issuer_time
    # Durable. (The floor is exactly issuer_time until the next write moves it
    # up to the clock's reading, which may be a second later: hence >=.)
    with open_store(vehicle.store.state_dir, read_only=True) as disk:
        assert disk.time_floor >= issuer_time and disk.now() >= issuer_time

    # Replayed later, it answers a nonce the vehicle no longer holds: refused,
    # and the clock is not set again.
    owner.protocol.send_time_update(signed)
    await owner.write_frames()
    await refused(owner, ResultCode.UPDATE_REJECTED)
    assert len([e for _, e in vehicle.seen if isinstance(e, ClockCorrected)]) == 1
    with open_store(vehicle.store.state_dir, read_only=True) as disk:
        assert disk.time_floor >= issuer_time


# --- no issuer: unchanged behaviour -------------------------------------------------------------
async def test_without_an_issuer_no_status_is_sent_and_credentials_are_refused(
    vehicle: RunningVehicle, make_phone: PhoneFactory, card: VehicleCard
) -> None:
    owner = await make_phone("owner", role=Role.OWNER)
    await owner.connect(vehicle.device.random_address)
    assert isinstance(await owner.next_event(), ChallengeReceived)
    for cmd in (Command.UNLOCK, Command.LOCK):
        await owner.send(cmd)
        assert isinstance(await owner.next_event(), CommandCompleted)
        # Straight to the next challenge: no VehicleStatus in between or after.
        assert isinstance(await owner.next_event(), ChallengeReceived)

    stranger = await make_phone("cloud", role=None)
    await stranger.connect(vehicle.device.random_address)
    assert isinstance(await stranger.next_event(), ChallengeReceived)
    await present(stranger, credential(crypto.generate_private_key(), stranger, card))
    await stranger.send(Command.UNLOCK)
    await refused(stranger, ResultCode.CREDENTIAL_INVALID)
    assert vehicle.store.lock_state() is LockState.LOCKED
