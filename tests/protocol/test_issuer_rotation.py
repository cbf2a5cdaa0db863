"""Issuer key rotation: a vehicle accepts a new issuer key only when signed by
one it already trusts, and keeps the old key for credentials already issued."""

from __future__ import annotations

from dataclasses import replace

import pytest
from credential_testkit import (
    ISSUER_KEY,
    ISSUER_KEY_ID,
    ROGUE_ISSUER_KEY,
    WALL,
    CredRig,
    issue,
    make_cred_rig,
)
from protocol_testkit import GUEST_KEY, key_from_label

from protocol import (
    Command,
    CommandCompleted,
    LockState,
    PhoneState,
    ResultCode,
    Role,
    VehicleState,
    credentials,
    crypto,
)
from protocol.codec import decode, encode
from protocol.errors import RejectedUpdate
from protocol.events import IssuerRotated
from protocol.messages import IssuerUpdate

NEW_ISSUER_KEY = key_from_label("phonekey tests: rotated issuer")
NEW_ISSUER_KEY_ID = crypto.key_id(NEW_ISSUER_KEY.public_key())
THIRD_ISSUER_KEY = key_from_label("phonekey tests: issuer after the next rotation")


def _rotation(
    old: crypto.PrivateKey = ISSUER_KEY, new: crypto.PrivateKey = NEW_ISSUER_KEY
) -> credentials.IssuerRotation:
    return credentials.issue_issuer_rotation(old, new.public_key(), WALL)


def _rotated(rig: CredRig) -> list[IssuerRotated]:
    return [e for e in rig.pair.vehicle_events if isinstance(e, IssuerRotated)]


def _unlock(rig: CredRig, credential: credentials.Credential, counter: int) -> None:
    rig.present(credential)
    done = rig.command(Command.UNLOCK, counter)
    assert done == CommandCompleted(Command.UNLOCK, ResultCode.OK, LockState.UNLOCKED, counter)


# --- the object ---------------------------------------------------------------------------
def test_rotation_round_trips_and_verifies() -> None:
    rotation = _rotation()
    data = rotation.to_bytes()
    assert len(data) == 2 + 16 + 33 + 8 + 64
    assert data[:2] == bytes([1, 0x45])
    assert credentials.IssuerRotation.from_bytes(data) == rotation
    assert rotation.old_issuer_key_id == ISSUER_KEY_ID
    assert rotation.new_issuer_key_id == NEW_ISSUER_KEY_ID
    credentials.verify_issuer_rotation(rotation, issuers={ISSUER_KEY_ID: ISSUER_KEY.public_key()})
    signed = b"phonekey/v1 issuer rotation" + data[: -crypto.SIGNATURE_LEN]
    crypto.verify(ISSUER_KEY.public_key(), rotation.signature, signed)


def test_rotation_verification_failures() -> None:
    rotation = _rotation()
    with pytest.raises(credentials.UnknownIssuer):
        credentials.verify_issuer_rotation(
            rotation, issuers={NEW_ISSUER_KEY_ID: NEW_ISSUER_KEY.public_key()}
        )
    forged = replace(rotation, new_issuer_key=crypto.public_bytes(THIRD_ISSUER_KEY.public_key()))
    with pytest.raises(credentials.CredentialSignatureInvalid):
        credentials.verify_issuer_rotation(forged, issuers={ISSUER_KEY_ID: ISSUER_KEY.public_key()})
    with pytest.raises(credentials.CredentialMalformed):
        credentials.IssuerRotation.from_bytes(rotation.to_bytes()[:-1])
    with pytest.raises(credentials.CredentialMalformed):
        credentials.IssuerRotation.from_bytes(issue().to_bytes())
    with pytest.raises(ValueError):
        credentials.issue_issuer_rotation(ISSUER_KEY, ISSUER_KEY.public_key(), WALL)


def test_issuer_update_on_the_wire() -> None:
    data = _rotation().to_bytes()
    encoded = encode(IssuerUpdate(data))
    assert encoded[:4] == bytes([1, 0x0A]) + len(data).to_bytes(2, "big")
    assert decode(encoded) == IssuerUpdate(data)


# --- through the connection classes ---------------------------------------------------------
def test_valid_rotation_is_accepted_and_new_credentials_verify() -> None:
    rig = make_cred_rig()
    _unlock(rig, issue(), 1)
    statuses = len(rig.statuses())
    rig.phone.send_issuer_update(_rotation().to_bytes())
    rig.pair.pump()
    assert _rotated(rig) == [IssuerRotated(ISSUER_KEY_ID, NEW_ISSUER_KEY_ID)]
    assert rig.trust is not None
    assert set(rig.trust.issuer_keys()) == {ISSUER_KEY_ID, NEW_ISSUER_KEY_ID}
    assert len(rig.statuses()) == statuses + 1  # answered with a status
    assert rig.vehicle.state is VehicleState.CHALLENGED and rig.phone.state is PhoneState.READY
    # a credential from the new issuer works on the same session...
    _unlock(rig, issue(issuer=NEW_ISSUER_KEY, serial=8), 2)
    # ...and on a new one, as do credentials the old issuer already issued
    again = make_cred_rig(trust=rig.trust, store=rig.store)
    _unlock(again, issue(issuer=NEW_ISSUER_KEY, serial=9), 3)
    old = make_cred_rig(phone_key=GUEST_KEY, trust=rig.trust, store=rig.store)
    _unlock(old, issue(GUEST_KEY), 1)


def test_rotation_signed_by_an_untrusted_key_is_refused() -> None:
    rig = make_cred_rig()
    _unlock(rig, issue(), 1)
    rig.phone.send_issuer_update(_rotation(old=ROGUE_ISSUER_KEY).to_bytes())
    with pytest.raises(RejectedUpdate):
        rig.pair.pump()
    assert rig.rejections() == [ResultCode.UPDATE_REJECTED]
    assert rig.trust is not None and set(rig.trust.issuer_keys()) == {ISSUER_KEY_ID}
    assert _rotated(rig) == []
    assert rig.vehicle.state is VehicleState.ERROR


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda: replace(
                _rotation(), new_issuer_key=crypto.public_bytes(THIRD_ISSUER_KEY.public_key())
            ).to_bytes(),
            id="bad-signature",
        ),
        pytest.param(lambda: _rotation().to_bytes()[:-1], id="malformed"),
        pytest.param(lambda: issue().to_bytes(), id="a-credential"),
    ],
)
def test_rotation_that_fails_verification_is_refused(make: object) -> None:
    rig = make_cred_rig()
    _unlock(rig, issue(), 1)
    rig.phone.send_issuer_update(make())  # type: ignore[operator]
    with pytest.raises(RejectedUpdate):
        rig.pair.pump()
    assert rig.rejections() == [ResultCode.UPDATE_REJECTED]
    assert rig.trust is not None and set(rig.trust.issuer_keys()) == {ISSUER_KEY_ID}


def test_rotation_to_an_already_trusted_key_is_a_no_op() -> None:
    rig = make_cred_rig()
    _unlock(rig, issue(), 1)
    rig.phone.send_issuer_update(_rotation().to_bytes())
    rig.pair.pump()
    rig.phone.send_issuer_update(_rotation().to_bytes())
    rig.pair.pump()
    assert len(_rotated(rig)) == 1 and rig.rejections() == []
    assert rig.command(Command.LOCK, 2).lock_state is LockState.LOCKED


def test_second_rotation_drops_the_oldest_key() -> None:
    rig = make_cred_rig()
    _unlock(rig, issue(), 1)
    rig.phone.send_issuer_update(_rotation().to_bytes())
    rig.pair.pump()
    rig.phone.send_issuer_update(_rotation(NEW_ISSUER_KEY, THIRD_ISSUER_KEY).to_bytes())
    rig.pair.pump()
    assert rig.trust is not None
    third_id = crypto.key_id(THIRD_ISSUER_KEY.public_key())
    assert set(rig.trust.issuer_keys()) == {NEW_ISSUER_KEY_ID, third_id}
    assert _rotated(rig)[-1] == IssuerRotated(NEW_ISSUER_KEY_ID, third_id)
    # the first key's credentials are no longer accepted
    old = make_cred_rig(phone_key=GUEST_KEY, trust=rig.trust, store=rig.store)
    assert old.refused(issue(GUEST_KEY)).code is ResultCode.CREDENTIAL_INVALID


def test_whitelist_only_vehicle_refuses_a_rotation() -> None:
    rig = make_cred_rig(trust=None, role=Role.OWNER)
    rig.command(Command.UNLOCK, 1)
    rig.phone.send_issuer_update(_rotation().to_bytes())
    with pytest.raises(RejectedUpdate):
        rig.pair.pump()
    assert rig.rejections() == [ResultCode.UPDATE_REJECTED]
