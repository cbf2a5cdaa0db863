"""Helpers of the credential tests: a fixed issuer, a wall clock, credentials
issued in one call, the byte layout of a credential, a ``Rig`` whose vehicle
trusts the issuer, and the steps the credential handshake tests share (an unlock
with a credential).

(Not a conftest: the tests import these names directly.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import pytest
from protocol_testkit import (
    PHONE_KEY,
    VEHICLE_KEY,
    VIN,
    FakeClock,
    Rig,
    drain,
    frames_of,
    key_from_label,
    mtus,
)

from protocol import (
    Command,
    CommandCompleted,
    LockState,
    MemoryStore,
    PhoneConnection,
    ResultCode,
    Role,
    VehicleConnection,
    VehicleIdentity,
    VehicleRejected,
    crypto,
)
from protocol.credentials import (
    DEFAULT_VALIDITY,
    MAX_LEEWAY,
    Credential,
    RevocationDelta,
    RevocationList,
    SignedTime,
    issue_credential,
    issue_revocation_delta,
    issue_revocation_list,
    issue_signed_time,
    revocation_id,
    verify_credential_at_time,
)
from protocol.events import VehicleStatusReceived
from protocol.memory_pair import ConnectionPair
from protocol.messages import CredentialPresentation
from protocol.store import MemoryTrust

WALL: Final = 1_750_000_000  # the vehicle's wall clock at the start of every test
NOT_BEFORE: Final = WALL - 3600  # issued an hour ago
NOT_AFTER: Final = NOT_BEFORE + DEFAULT_VALIDITY

ISSUER_KEY = key_from_label("phonekey tests: credential issuer")
ROGUE_ISSUER_KEY = key_from_label("phonekey tests: untrusted issuer")
ISSUER_KEY_ID = crypto.key_id(ISSUER_KEY.public_key())
ISSUERS = {ISSUER_KEY_ID: ISSUER_KEY.public_key()}
ROGUE_ISSUERS = {crypto.key_id(ROGUE_ISSUER_KEY.public_key()): ROGUE_ISSUER_KEY.public_key()}
VEHICLE_ID = crypto.key_id(VEHICLE_KEY.public_key())
TIME_NONCE = bytes(range(0x50, 0x60))
REVOKED_IDS = [bytes([i]) * 16 for i in (0x33, 0x11, 0x22)]
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# Byte offsets of the encodings (docs/credentials.md), written out by hand.
CREDENTIAL_FIELDS = {  # name: (start, end)
    "format": (0, 1),
    "type": (1, 2),
    "vehicle_id": (2, 18),
    "holder_key": (18, 51),
    "role": (51, 52),
    "not_before": (52, 60),
    "not_after": (60, 68),
    "serial": (68, 76),
    "issuer_key_id": (76, 92),
    "signature": (92, 156),
}


def issue(
    holder: crypto.PrivateKey = PHONE_KEY,
    *,
    role: Role = Role.DRIVER,
    issuer: crypto.PrivateKey = ISSUER_KEY,
    vehicle_key: crypto.PrivateKey = VEHICLE_KEY,
    not_before: int = NOT_BEFORE,
    not_after: int = NOT_AFTER,
    serial: int = 7,
) -> Credential:
    return issue_credential(
        issuer,
        vehicle_id=crypto.key_id(vehicle_key.public_key()),
        holder_key=holder.public_key(),
        role=role,
        not_before=not_before,
        not_after=not_after,
        serial=serial,
    )


def rev_id(key_id: bytes, vehicle_id: bytes = VEHICLE_ID) -> bytes:
    """The revocation list entry that revokes ``key_id`` on ``vehicle_id``."""
    return revocation_id(vehicle_id, key_id)


def delta(
    from_version: int,
    to_version: int,
    added: list[bytes],
    issuer: crypto.PrivateKey = ISSUER_KEY,
) -> RevocationDelta:
    return issue_revocation_delta(
        issuer, from_version=from_version, to_version=to_version, added=added
    )


def signed_time(nonce: bytes, time: int, issuer: crypto.PrivateKey = ISSUER_KEY) -> SignedTime:
    return issue_signed_time(issuer, nonce=nonce, time=time)


def revocation_list(revoked: list[bytes] = REVOKED_IDS, version: int = 3) -> RevocationList:
    return issue_revocation_list(ISSUER_KEY, version=version, issued_at=WALL, revoked=revoked)


def verify_at_wall(credential: Credential, **overrides: Any) -> None:
    """``verify_credential_at_time`` against ``ISSUERS`` on ``VEHICLE_ID`` at ``WALL``;
    ``overrides`` replace any of these or add the other arguments."""
    kwargs: dict[str, Any] = {"issuers": ISSUERS, "vehicle_id": VEHICLE_ID, "now": WALL}
    kwargs.update(overrides)
    verify_credential_at_time(credential, **kwargs)


def make_trust(wall: FakeClock, **fields: object) -> MemoryTrust:
    trust = MemoryTrust(clock=wall, **fields)  # type: ignore[arg-type]
    trust.add_issuer(ISSUER_KEY.public_key())
    return trust


_DEFAULT: Final = object()


@dataclass
class CredRig(Rig):
    """A ``Rig`` whose vehicle (usually) trusts ``ISSUER_KEY`` and reads ``wall``."""

    trust: MemoryTrust | None = None
    wall: FakeClock | None = None

    def to_vehicle(self, frames: Iterable[bytes]) -> list[object]:
        """Deliver raw frames to the vehicle; its events are also recorded in the pair."""
        events = super().to_vehicle(frames)
        self.pair.vehicle_events.extend(events)  # type: ignore[arg-type]
        return events

    def present(self, credential: Credential | bytes) -> None:
        data = credential if isinstance(credential, bytes) else credential.to_bytes()
        self.phone.present_credential(data)

    def refused(
        self, credential: Credential | bytes, command: Command = Command.UNLOCK, counter: int = 1
    ) -> VehicleRejected:
        """Present, send the command, pump: the phone must raise; return its exception."""
        self.present(credential)
        self.phone.send_command(command, counter)
        with pytest.raises(VehicleRejected) as info:
            self.pair.pump()
        assert info.value.authenticated is False
        assert self.rejections() == [info.value.code]
        return info.value

    def statuses(self) -> list[VehicleStatusReceived]:
        return [e for e in self.pair.phone_events if isinstance(e, VehicleStatusReceived)]

    def latest_time_nonce(self) -> bytes:
        statuses = self.statuses()
        assert statuses, "the vehicle sent no VehicleStatus"
        return statuses[-1].time_nonce


def make_cred_rig(
    mtu: int = 247,
    *,
    role: Role | None = None,
    phone_key: crypto.PrivateKey = PHONE_KEY,
    trust: MemoryTrust | object | None = _DEFAULT,
    store: MemoryStore | None = None,
    clock: FakeClock | None = None,
    wall: FakeClock | None = None,
    leeway: int = MAX_LEEWAY,
    vehicle_rng: crypto.Random = os.urandom,
    phone_rng: crypto.Random = os.urandom,
    start: bool = True,
    vehicle_key: crypto.PrivateKey = VEHICLE_KEY,
    **vehicle_options: Any,
) -> CredRig:
    """A phone (by default NOT on the whitelist) and a vehicle that trusts
    ``ISSUER_KEY``; ``trust=None`` makes a whitelist-only vehicle."""
    clock = clock or FakeClock()
    wall = wall or FakeClock(WALL)
    if trust is _DEFAULT:
        trust = make_trust(wall)
    assert trust is None or isinstance(trust, MemoryTrust)
    store = store if store is not None else MemoryStore()
    if role is not None:
        store.add_key(phone_key.public_key(), role)
    identity = VehicleIdentity(vehicle_key, VIN)
    vehicle = VehicleConnection(
        identity,
        store,
        clock=clock,
        rng=vehicle_rng,
        att_mtu=mtu,
        trust=trust,
        credential_leeway=leeway,
        **vehicle_options,
    )
    phone = PhoneConnection(
        phone_key, vehicle_key.public_key(), clock=clock, rng=phone_rng, att_mtu=mtu
    )
    rig = CredRig(
        ConnectionPair(phone, vehicle),
        store,
        clock,
        identity,
        mtu,
        vehicle_options,
        trust=trust,
        wall=wall,
    )
    if start:
        rig.start()
    return rig


def presentation_frames(credential: Credential | bytes, mtu: int) -> list[bytes]:
    data = credential if isinstance(credential, bytes) else credential.to_bytes()
    return frames_of(CredentialPresentation(data), mtu)


def credential_unlock(rig: CredRig, credential: Credential, counter: int = 1) -> None:
    """Present ``credential`` and unlock with it; the vehicle must say OK."""
    rig.present(credential)
    done = rig.command(Command.UNLOCK, counter)
    assert done == CommandCompleted(Command.UNLOCK, ResultCode.OK, LockState.UNLOCKED, counter)


def after_one_command(rig: CredRig) -> VehicleStatusReceived:
    """Unlock with a fresh credential; the VehicleStatus the vehicle sent last."""
    credential_unlock(rig, issue())
    return rig.statuses()[-1]


__all__ = [
    "CREDENTIAL_FIELDS",
    "ISSUERS",
    "ISSUER_KEY",
    "ISSUER_KEY_ID",
    "NOT_AFTER",
    "NOT_BEFORE",
    "P256_ORDER",
    "REVOKED_IDS",
    "ROGUE_ISSUERS",
    "ROGUE_ISSUER_KEY",
    "TIME_NONCE",
    "VEHICLE_ID",
    "WALL",
    "CredRig",
    "after_one_command",
    "credential_unlock",
    "delta",
    "drain",
    "issue",
    "make_cred_rig",
    "make_trust",
    "mtus",
    "presentation_frames",
    "rev_id",
    "revocation_list",
    "signed_time",
    "verify_at_wall",
]
