"""Offline-first unlock, end to end: what the phone carries to the vehicle beside
its command. Revocations learnt online reach a car with no network, signed time
and news when the cloud is up, and an issuer rotation, which the phone then pins."""

from __future__ import annotations

import time

from phone_cloud_testkit import VIN
from phone_offline_rig import (  # noqa: F401  (fixtures are found by name)
    PhoneFactory,
    Vehicle,
    make_phone_for_fixture,
    vehicle_fixture,
    vehicle_wall_clock_fixture,
)

from cloud_sim.server import RunningCloud
from phone_client.cloud_client import CloudClient
from protocol import Command, crypto
from protocol.credentials import revocation_id
from protocol.events import ClockCorrected, IssuerRotated, RevocationsUpdated


async def test_revocations_are_carried_to_the_vehicle_even_offline(
    make_phone_for: PhoneFactory, vehicle: Vehicle, cloud: RunningCloud
) -> None:
    courier = await make_phone_for("courier")
    stolen = crypto.generate_private_key().public_key()
    await vehicle.owned.enroll(stolen, "guest")
    await vehicle.owned.revoke(stolen)  # the cloud's list is at version 1
    async with CloudClient(cloud.url) as cc:  # the phone learns it while online
        deltas = await cc.revocation_deltas(0, cloud.issuers)
        credential = await cc.request_credential(courier.keystore, vehicle.owned.card)
    assert deltas
    cache = courier.cache()
    cache.store_deltas(deltas, cloud.issuers)
    cache.store(VIN, credential, int(time.time()))
    assert vehicle.store.revocation_version() == 0

    outcome = await courier.run(cloud=False)  # at the car, no network at all
    assert outcome.ok and outcome.credential == "cache" and outcome.cloud == "none"
    assert vehicle.store.revocation_version() == 1
    assert vehicle.store.is_key_revoked(crypto.key_id(stolen))
    assert vehicle.store.is_revoked(
        revocation_id(vehicle.owned.card.vehicle_id, crypto.key_id(stolen))
    )
    assert any(isinstance(e, RevocationsUpdated) for e in vehicle.events)
    assert courier.cache().vehicle_revocation_version(VIN) == 1


async def test_with_the_cloud_up_the_vehicle_gets_news_and_signed_time(
    make_phone_for: PhoneFactory, vehicle: Vehicle, cloud: RunningCloud
) -> None:
    phone = await make_phone_for()
    revoked = crypto.generate_private_key().public_key()
    await vehicle.owned.enroll(revoked, "guest")
    await vehicle.owned.revoke(revoked)
    outcome = await phone.run()
    assert outcome.ok and outcome.cloud == "up"
    assert vehicle.store.revocation_version() == 1
    assert any(isinstance(e, ClockCorrected) for e in vehicle.events)


async def test_an_issuer_rotation_is_carried_to_the_vehicle_and_pinned(
    make_phone_for: PhoneFactory, vehicle: Vehicle, cloud: RunningCloud
) -> None:
    old = cloud.issuer_public_key
    phone = await make_phone_for()
    assert (await phone.run()).ok  # caches a credential of the old key

    # The issuer rotates (as `phonekey cloud rotate-issuer` plus a restart would).
    rotation = cloud.state.db.rotate_issuer(int(time.time()))
    cloud.state.issuer = cloud.state.db.issuer_key()
    new = rotation.new_public_key

    # Its fresh credential does not verify yet; the cached one opens the car and
    # the phone hands over the rotation afterwards, then pins the new key.
    outcome = await phone.run(Command.LOCK)
    assert outcome.ok
    assert [e for e in vehicle.events if isinstance(e, IssuerRotated)] == [
        IssuerRotated(crypto.key_id(old), crypto.key_id(new))
    ]
    assert set(vehicle.store.issuer_keys()) == {crypto.key_id(old), crypto.key_id(new)}
    trust = phone.keystore.vehicle_trust(VIN)
    assert trust.issuer is not None and crypto.key_id(trust.issuer) == crypto.key_id(new)
    assert trust.previous_issuer is not None
    assert crypto.key_id(trust.previous_issuer) == crypto.key_id(old)

    # Next time the new key's credential verifies on both sides; nothing is re-sent.
    outcome = await phone.run()
    assert outcome.ok and outcome.cloud == "up"
    held = phone.cache().best(VIN, int(time.time()))
    assert held is not None and held.issuer_key_id == crypto.key_id(new)
    assert len([e for e in vehicle.events if isinstance(e, IssuerRotated)]) == 1
    assert vehicle.executed()[-1].credential_serial is not None
