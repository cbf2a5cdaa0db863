"""The Challenge names the vehicle by a tag only card holders recognise:
whoever connects learns nothing that identifies the car or links two of its
sessions (docs/protocol.md section 4), while the phone of the card still
tells its vehicle from any other before it signs anything."""

from __future__ import annotations

import pytest
from protocol_testkit import ATTACKER_KEY, VEHICLE_KEY, make_rig, messages_of

from protocol import Challenge, Command, LockState, WrongVehicle, crypto, encode, privacy
from protocol.framing import fragment

VEHICLE_POINT = crypto.public_bytes(VEHICLE_KEY.public_key(), compressed=False)
VEHICLE_ID = crypto.key_id(VEHICLE_KEY.public_key())


def _challenges_of_sessions(count: int) -> list[Challenge]:
    """The first challenge of ``count`` fresh connections to the same vehicle."""
    seen = []
    for _ in range(count):
        rig = make_rig(start=False)
        rig.vehicle.start()
        (challenge,) = [
            m for m in messages_of(rig.vehicle.data_to_send()) if isinstance(m, Challenge)
        ]
        seen.append(challenge)
    return seen


def test_the_tag_is_never_the_vehicle_id_and_changes_with_every_session() -> None:
    challenges = _challenges_of_sessions(20)
    tags = {c.vehicle_tag for c in challenges}
    assert len(tags) == 20  # nothing repeats that a bystander could match up
    assert VEHICLE_ID not in tags
    assert all(VEHICLE_ID not in c.vehicle_tag + c.nonce for c in challenges)


def test_the_card_holder_recomputes_the_tag_from_the_key_and_nonce() -> None:
    for challenge in _challenges_of_sessions(3):
        expected = privacy.challenge_vehicle_tag(VEHICLE_POINT, challenge.nonce)
        assert challenge.vehicle_tag == expected
        other = crypto.public_bytes(ATTACKER_KEY.public_key(), compressed=False)
        assert privacy.challenge_vehicle_tag(other, challenge.nonce) != challenge.vehicle_tag


def test_the_next_challenge_of_a_session_has_a_fresh_tag_too() -> None:
    rig = make_rig()
    first = [m for m in messages_of(rig.pair.sent_to_phone) if isinstance(m, Challenge)][-1]
    assert rig.command(Command.UNLOCK, 1).lock_state is LockState.UNLOCKED
    after = [m for m in messages_of(rig.pair.sent_to_phone) if isinstance(m, Challenge)][-1]
    assert after.nonce != first.nonce and after.vehicle_tag != first.vehicle_tag


def test_a_tag_for_another_nonce_is_refused_as_another_vehicle() -> None:
    # A relay cannot splice a tag it saw onto another challenge: the tag is
    # bound to its nonce, and the phone checks the pair.
    rig = make_rig(start=False)
    rig.vehicle.start()
    (challenge,) = [m for m in messages_of(rig.vehicle.data_to_send()) if isinstance(m, Challenge)]
    spliced = Challenge(challenge.versions, challenge.vehicle_tag, bytes(16))
    with pytest.raises(WrongVehicle):
        rig.to_phone(fragment(encode(spliced), 247))


def test_the_tag_is_keyed_by_the_65_byte_point_only() -> None:
    with pytest.raises(ValueError):
        privacy.challenge_vehicle_tag(crypto.public_bytes(VEHICLE_KEY.public_key()), bytes(16))
