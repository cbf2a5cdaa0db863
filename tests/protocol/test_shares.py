"""Offline shares: the object, its window (dates, weekdays, hours, UTC offset),
who may sign it, and the vehicle accepting or refusing it offline."""

from __future__ import annotations

import calendar
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from protocol_testkit import (
    GUEST_KEY,
    MTUS,
    PHONE_KEY,
    VEHICLE_KEY,
    FakeClock,
    Rig,
    key_from_label,
    make_rig,
)

from protocol import (
    Command,
    CommandExecuted,
    ManageOp,
    MemoryStore,
    ResultCode,
    Role,
    VehicleRejected,
    crypto,
)
from protocol.codec import MAX_CREDENTIAL_SIZE, MAX_SIGNED_OBJECT_SIZE
from protocol.credentials import OBJECT_TYPE_SHARE, revocation_id, sign_object
from protocol.manage import revoke_share_argument
from protocol.shares import (
    Share,
    ShareError,
    ShareExpired,
    ShareMalformed,
    ShareNotYetValid,
    ShareOutsideWindow,
    ShareRevoked,
    ShareRoleNotAllowed,
    ShareSignatureInvalid,
    ShareSignerNotOwner,
    ShareSignerRevoked,
    ShareSignerUnknown,
    ShareWrongHolder,
    ShareWrongVehicle,
    _Share,
    check_share_window,
    issue_share,
    verify_share_at_time,
)
from protocol.store import MemoryTrust, WhitelistEntry

mtus = pytest.mark.parametrize("mtu", MTUS)

OWNER_KEY = PHONE_KEY
FRIEND_KEY = key_from_label("phonekey tests: friend phone key")
DRIVER_KEY = key_from_label("phonekey tests: driver phone key")
OWNER_ID = crypto.key_id(OWNER_KEY.public_key())
FRIEND_ID = crypto.key_id(FRIEND_KEY.public_key())
VEHICLE_ID = crypto.key_id(VEHICLE_KEY.public_key())
# Friday 2025-06-13 12:00 UTC
FRIDAY_NOON = calendar.timegm((2025, 6, 13, 12, 0, 0))
SATURDAY = 1 << 5
FRIDAY = 1 << 4
SHARE_ID = bytes(range(100, 116))


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return calendar.timegm((year, month, day, hour, minute, second))


def make_share(
    signer: crypto.PrivateKey = OWNER_KEY,
    holder: crypto.PrivateKey = FRIEND_KEY,
    **fields: object,
) -> Share:
    options: dict[str, object] = {
        "vehicle_id": VEHICLE_ID,
        "role": Role.GUEST,
        "not_before": FRIDAY_NOON - 86400,
        "not_after": FRIDAY_NOON + 7 * 86400,
        "share_id": SHARE_ID,
    }
    options.update(fields)
    return issue_share(signer, holder_key=holder.public_key(), **options)  # type: ignore[arg-type]


def owners(*keys: tuple[crypto.PrivateKey, Role]) -> dict[bytes, WhitelistEntry]:
    return {
        crypto.key_id(k.public_key()): WhitelistEntry(crypto.public_bytes(k.public_key()), r)
        for k, r in keys
    }


WHITELIST = owners((OWNER_KEY, Role.OWNER), (DRIVER_KEY, Role.DRIVER))


def verify(share: Share, now: int = FRIDAY_NOON, **kwargs: object) -> None:
    options: dict[str, object] = {
        "signer": WHITELIST.get,
        "vehicle_id": VEHICLE_ID,
        "now": now,
        "holder_key_id": FRIEND_ID,
    }
    options.update(kwargs)
    verify_share_at_time(share, **options)  # type: ignore[arg-type]


# --- the object ------------------------------------------------------------------------
def test_round_trip_and_size() -> None:
    share = make_share(weekdays=0x15, start_minute=60, end_minute=1439, utc_offset_minutes=-330)
    data = share.to_bytes()
    assert len(data) == 171 <= MAX_CREDENTIAL_SIZE <= MAX_SIGNED_OBJECT_SIZE
    assert data[:2] == bytes([1, OBJECT_TYPE_SHARE])
    assert Share.from_bytes(data) == share
    assert share.holder_key_id == FRIEND_ID
    verify(share, now=utc(2025, 6, 13, 20, 0))


def test_issue_refuses_owner_role_and_bad_fields() -> None:
    with pytest.raises(ValueError, match="owner"):
        make_share(role=Role.OWNER)
    for fields in (
        {"weekdays": 0},
        {"weekdays": 0x80},
        {"start_minute": 1440},
        {"end_minute": 0},
        {"start_minute": 600, "end_minute": 600},
        {"utc_offset_minutes": -721},
        {"utc_offset_minutes": 841},
        {"not_after": FRIDAY_NOON - 2 * 86400},
    ):
        with pytest.raises(ValueError):
            make_share(**fields)


def _resigned(share: Share, **fields: object) -> bytes:
    """A share with fields the issuer refuses, signed anyway (a hostile owner)."""
    unsigned = replace(share, signature=b"", **fields)  # type: ignore[arg-type]
    signature = sign_object(OWNER_KEY, OBJECT_TYPE_SHARE, _Share, unsigned)
    return replace(unsigned, signature=signature).to_bytes()


@pytest.mark.parametrize(
    "fields",
    [
        {"weekdays": 0},
        {"weekdays": 0xFF},
        {"start_minute": 1440},
        {"end_minute": 1441},
        {"end_minute": 0},
        {"start_minute": 5, "end_minute": 5},
        {"utc_offset_minutes": 900},
        {"utc_offset_minutes": -800},
        {"not_before": FRIDAY_NOON, "not_after": FRIDAY_NOON - 1},
        {"holder_key": bytes([2]) + b"\xff" * 32},
        {"role": 9},
        {"role": 0},
    ],
    ids=str,
)
def test_decoder_refuses_undefined_values(fields: dict[str, object]) -> None:
    with pytest.raises(ShareMalformed):
        Share.from_bytes(_resigned(make_share(), **fields))


def test_decoder_refuses_bad_framing() -> None:
    data = make_share().to_bytes()
    for bad in (data[:-1], data + b"\0", data[:10], b"", bytes([2]) + data[1:]):
        with pytest.raises(ShareMalformed):
            Share.from_bytes(bad)
    with pytest.raises(ShareMalformed):
        Share.from_bytes(data[:1] + bytes([0x41]) + data[2:])  # a credential's type


def test_random_corruption_never_escapes_share_error() -> None:
    rnd = random.Random(46)
    data = make_share().to_bytes()
    for _ in range(500):
        corrupted = bytearray(data)
        corrupted[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
        try:
            verify(Share.from_bytes(bytes(corrupted)))
        except ShareError:
            continue
        raise AssertionError(f"corruption accepted: {bytes(corrupted).hex()}")


# --- the window ----------------------------------------------------------------------------
def test_dates_are_inclusive() -> None:
    share = make_share(not_before=FRIDAY_NOON, not_after=FRIDAY_NOON + 100)
    with pytest.raises(ShareNotYetValid):
        check_share_window(share, FRIDAY_NOON - 1)
    check_share_window(share, FRIDAY_NOON)
    check_share_window(share, FRIDAY_NOON + 100)
    with pytest.raises(ShareExpired):
        check_share_window(share, FRIDAY_NOON + 101)


@pytest.mark.parametrize(
    ("offset", "first_utc", "last_utc"),
    [
        (0, utc(2025, 6, 14, 0, 0), utc(2025, 6, 14, 23, 59, 59)),
        (120, utc(2025, 6, 13, 22, 0), utc(2025, 6, 14, 21, 59, 59)),  # UTC+2
        (-300, utc(2025, 6, 14, 5, 0), utc(2025, 6, 15, 4, 59, 59)),  # UTC-5
        (840, utc(2025, 6, 13, 10, 0), utc(2025, 6, 14, 9, 59, 59)),  # UTC+14
        (-720, utc(2025, 6, 14, 12, 0), utc(2025, 6, 15, 11, 59, 59)),  # UTC-12
        (330, utc(2025, 6, 13, 18, 30), utc(2025, 6, 14, 18, 29, 59)),  # UTC+5:30
    ],
)
def test_weekday_boundaries_at_local_midnight(offset: int, first_utc: int, last_utc: int) -> None:
    """A Saturday-only share starts at Saturday 00:00 and ends at Saturday
    23:59:59 in the share's own UTC offset."""
    share = make_share(weekdays=SATURDAY, utc_offset_minutes=offset)
    with pytest.raises(ShareOutsideWindow, match="fri"):
        check_share_window(share, first_utc - 1)
    check_share_window(share, first_utc)
    check_share_window(share, last_utc)
    with pytest.raises(ShareOutsideWindow, match="sun"):
        check_share_window(share, last_utc + 1)


def test_hours_window() -> None:
    share = make_share(start_minute=9 * 60, end_minute=17 * 60)
    with pytest.raises(ShareOutsideWindow, match="08:59"):
        check_share_window(share, utc(2025, 6, 13, 8, 59, 59))
    check_share_window(share, utc(2025, 6, 13, 9, 0))
    check_share_window(share, utc(2025, 6, 13, 16, 59, 59))
    with pytest.raises(ShareOutsideWindow):
        check_share_window(share, utc(2025, 6, 13, 17, 0))


def test_hours_window_wrapping_past_midnight_belongs_to_the_opening_day() -> None:
    """Fridays 22:00-02:00 at UTC+1: Friday night into early Saturday, not
    early Friday and not Saturday night."""
    share = make_share(weekdays=FRIDAY, start_minute=22 * 60, end_minute=2 * 60,
                       utc_offset_minutes=60)  # fmt: skip
    local = 3600
    with pytest.raises(ShareOutsideWindow):
        check_share_window(share, utc(2025, 6, 13, 21, 59, 59) - local)
    check_share_window(share, utc(2025, 6, 13, 22, 0) - local)
    check_share_window(share, utc(2025, 6, 13, 23, 59, 59) - local)
    check_share_window(share, utc(2025, 6, 14, 0, 0) - local)  # Saturday, opened Friday
    check_share_window(share, utc(2025, 6, 14, 1, 59, 59) - local)
    with pytest.raises(ShareOutsideWindow):
        check_share_window(share, utc(2025, 6, 14, 2, 0) - local)
    with pytest.raises(ShareOutsideWindow, match="thu"):
        check_share_window(share, utc(2025, 6, 13, 1, 0) - local)  # opened Thursday
    with pytest.raises(ShareOutsideWindow, match="sat"):
        check_share_window(share, utc(2025, 6, 14, 23, 0) - local)


def _reference_allows(share: Share, now: int) -> bool:
    """The window rule, written independently with datetime."""
    if not share.not_before <= now <= share.not_after:
        return False
    tz = timezone(timedelta(minutes=share.utc_offset_minutes))
    local = datetime.fromtimestamp(now, UTC).astimezone(tz)
    minute = local.hour * 60 + local.minute
    start, end = share.start_minute, share.end_minute
    if start < end:
        day = local if start <= minute < end else None
    elif minute >= start:
        day = local
    elif minute < end:
        day = local - timedelta(days=1)
    else:
        day = None
    return day is not None and bool(share.weekdays >> day.weekday() & 1)


def test_window_matches_a_reference_on_seeded_random_cases() -> None:
    rnd = random.Random(2025)
    for _ in range(300):
        start = rnd.randrange(0, 1440)
        end = rnd.choice([rnd.randrange(1, 1441), 1440, (start + 1) % 1440 or 1440])
        if start == end:
            continue
        share = make_share(
            weekdays=rnd.randrange(1, 128),
            start_minute=start,
            end_minute=end,
            utc_offset_minutes=rnd.randrange(-720, 841),
            not_before=FRIDAY_NOON,
            not_after=FRIDAY_NOON + 30 * 86400,
        )
        for _ in range(20):
            now = FRIDAY_NOON + rnd.randrange(-86400, 31 * 86400)
            assert share.allows_time(now) == _reference_allows(share, now), (share, now)


# --- who may sign, and revocation -------------------------------------------------------------
def test_signer_checks() -> None:
    with pytest.raises(ShareSignerUnknown):
        verify(make_share(signer=GUEST_KEY))  # never on the whitelist (or removed)
    with pytest.raises(ShareSignerNotOwner):
        verify(make_share(signer=DRIVER_KEY, role=Role.GUEST))
    with pytest.raises(ShareSignerRevoked):
        verify(make_share(), is_key_revoked={revocation_id(VEHICLE_ID, OWNER_ID)}.__contains__)
    with pytest.raises(ShareRevoked):
        verify(make_share(), is_share_revoked={SHARE_ID}.__contains__)
    with pytest.raises(ShareWrongVehicle):
        verify(make_share(vehicle_id=bytes(16)))
    with pytest.raises(ShareWrongHolder):
        verify(make_share(holder=GUEST_KEY))
    with pytest.raises(ShareSignatureInvalid):
        verify(replace(make_share(), not_after=FRIDAY_NOON + 8 * 86400))


def test_share_never_grants_owner_or_more_than_its_signer() -> None:
    owner_share = Share.from_bytes(_resigned(make_share(), role=Role.OWNER))
    with pytest.raises(ShareRoleNotAllowed):
        verify(owner_share)
    # A driver's DRIVER share: the signer is not an owner at all.
    with pytest.raises(ShareSignerNotOwner):
        verify(make_share(signer=DRIVER_KEY, role=Role.DRIVER))
    assert Role.DRIVER.at_most(Role.OWNER) and not Role.DRIVER.at_most(Role.GUEST)


# --- the vehicle --------------------------------------------------------------------------------
def _share_rig(
    mtu: int = 247,
    store: MemoryStore | None = None,
    now: int = FRIDAY_NOON,
    **options: object,
) -> Rig:
    if store is None:
        store = MemoryStore()
        store.add_key(OWNER_KEY.public_key(), Role.OWNER)
        store.add_key(DRIVER_KEY.public_key(), Role.DRIVER)
    options.setdefault("vehicle_time", lambda: now)
    return make_rig(mtu, phone_key=FRIEND_KEY, role=None, store=store, **options)  # type: ignore[arg-type]


def _refused(rig: Rig, share: Share | bytes, command: Command = Command.UNLOCK) -> ResultCode:
    rig.phone.present_credential(share if isinstance(share, bytes) else share.to_bytes())
    rig.phone.send_command(command, 1)
    with pytest.raises(VehicleRejected) as info:
        rig.pair.pump()
    assert info.value.authenticated is False
    assert rig.rejections() == [info.value.code]
    assert not rig.executed()
    return info.value.code


@mtus
def test_friend_unlocks_with_a_share_offline(mtu: int) -> None:
    rig = _share_rig(mtu, fast_path=True)
    share = make_share(weekdays=FRIDAY, start_minute=9 * 60, end_minute=18 * 60)
    rig.phone.present_credential(share.to_bytes())
    done = rig.command(Command.UNLOCK, 1)
    assert done.result is ResultCode.OK and done.fast_key is None
    executed = rig.executed()
    assert executed == [
        CommandExecuted(
            key_id=FRIEND_ID,
            role=Role.GUEST,
            command=Command.UNLOCK,
            result=ResultCode.OK,
            lock_state_before=executed[0].lock_state_before,
            lock_state=executed[0].lock_state,
            counter=1,
            share_id=SHARE_ID,
        )
    ]
    assert dict(rig.vehicle.crypto_ops) == {"ecdsa_verify": 2, "ecdh": 1}
    assert rig.store.fast_keys == {}  # a share holder never gets a fast key
    # a guest share grants what a guest has: no status
    assert rig.command(Command.STATUS, 2).result is ResultCode.FORBIDDEN


def test_share_without_trust_uses_vehicle_time_and_refuses_without_one() -> None:
    store = MemoryStore()
    store.add_key(OWNER_KEY.public_key(), Role.OWNER)
    assert _refused(_share_rig(store=store, vehicle_time=None), make_share()) is (
        ResultCode.SHARE_INVALID
    )
    wall = FakeClock(FRIDAY_NOON)
    trust = MemoryTrust(clock=wall)  # no issuer at all: shares still work
    rig = _share_rig(store=store, vehicle_time=None, trust=trust)
    rig.phone.present_credential(make_share().to_bytes())
    assert rig.command(Command.UNLOCK, 1).result is ResultCode.OK


def test_share_outside_window_refused() -> None:
    share = make_share(weekdays=SATURDAY)
    assert _refused(_share_rig(), share) is ResultCode.SHARE_OUTSIDE_WINDOW
    late = make_share(not_after=FRIDAY_NOON - 1)
    assert _refused(_share_rig(), late) is ResultCode.SHARE_OUTSIDE_WINDOW


def test_revoked_share_refused_after_the_owner_revokes_it_over_ble() -> None:
    store = MemoryStore()
    store.add_key(OWNER_KEY.public_key(), Role.OWNER)
    share = make_share()
    owner = make_rig(phone_key=OWNER_KEY, role=None, store=store)
    owner.phone.send_manage(
        ManageOp.REVOKE_SHARE, revoke_share_argument(share.share_id, share.not_after), 1
    )
    owner.pair.pump()
    assert store.share_revoked(SHARE_ID)
    assert _refused(_share_rig(store=store), share) is ResultCode.SHARE_REVOKED


def test_share_of_a_removed_or_revoked_owner_refused() -> None:
    store = MemoryStore()
    store.add_key(DRIVER_KEY.public_key(), Role.DRIVER)
    assert _refused(_share_rig(store=store), make_share()) is ResultCode.SHARE_INVALID
    store.add_key(OWNER_KEY.public_key(), Role.OWNER)
    trust = MemoryTrust(clock=FakeClock(FRIDAY_NOON))
    trust.revoked.add(revocation_id(VEHICLE_ID, OWNER_ID))
    assert _refused(_share_rig(store=store, trust=trust), make_share()) is (
        ResultCode.SHARE_INVALID
    )
    signed_by_driver = make_share(signer=DRIVER_KEY)
    assert _refused(_share_rig(store=store), signed_by_driver) is ResultCode.SHARE_INVALID


def test_revoked_holder_refused_even_with_a_valid_share() -> None:
    trust = MemoryTrust(clock=FakeClock(FRIDAY_NOON))
    trust.revoked.add(revocation_id(VEHICLE_ID, FRIEND_ID))
    assert _refused(_share_rig(trust=trust), make_share()) is ResultCode.CREDENTIAL_REVOKED


def test_share_for_another_holder_or_vehicle_refused() -> None:
    assert _refused(_share_rig(), make_share(holder=GUEST_KEY)) is ResultCode.SHARE_INVALID
    assert _refused(_share_rig(), make_share(vehicle_id=bytes(16))) is ResultCode.SHARE_INVALID


def test_malformed_share_presentation_is_precise() -> None:
    data = bytearray(make_share().to_bytes())
    data[-70] ^= 0xFF  # inside the body: e.g. the signer key id
    assert _refused(_share_rig(), bytes(data)) is ResultCode.SHARE_INVALID
    truncated = make_share().to_bytes()[:-1]
    assert _refused(_share_rig(), truncated) is ResultCode.SHARE_INVALID


def test_owner_share_forged_with_a_valid_signature_is_refused() -> None:
    share = _resigned(make_share(), role=Role.OWNER)
    assert _refused(_share_rig(), share) is ResultCode.SHARE_INVALID


def test_whitelisted_holder_keeps_its_whitelist_role() -> None:
    store = MemoryStore()
    store.add_key(OWNER_KEY.public_key(), Role.OWNER)
    store.add_key(FRIEND_KEY.public_key(), Role.DRIVER)
    rig = _share_rig(store=store)
    rig.phone.present_credential(make_share().to_bytes())
    assert rig.command(Command.STATUS, 1).result is ResultCode.OK
    assert rig.executed()[0].share_id is None


def test_transfer_of_ownership_ends_every_share_of_the_old_owner() -> None:
    from protocol.manage import transfer_argument

    store = MemoryStore()
    store.add_key(OWNER_KEY.public_key(), Role.OWNER)
    friend = _share_rig(store=store)
    friend.phone.present_credential(make_share().to_bytes())
    assert friend.command(Command.UNLOCK, 1).result is ResultCode.OK
    owner = make_rig(phone_key=OWNER_KEY, role=None, store=store)
    owner.phone.send_manage(
        ManageOp.TRANSFER_OWNERSHIP, transfer_argument(DRIVER_KEY.public_key()), 1
    )
    owner.pair.pump()
    assert list(store.whitelist) == [crypto.key_id(DRIVER_KEY.public_key())]
    assert _refused(_share_rig(store=store), make_share()) is ResultCode.SHARE_INVALID
