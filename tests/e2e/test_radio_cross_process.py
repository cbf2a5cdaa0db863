"""`phonekey radio` with the vehicle and phones in their own processes, as an
engineer runs them in several terminals: unlocking in turn and at once, and
what each side sees when another process dies (SIGKILL: no goodbye on air).

Processes that must be caught mid-connection are frozen first (SIGSTOP): a
phone connecting to a frozen vehicle gets its link from the radio but no
answer, so it is certainly mid-handshake when the kill lands.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bumble.core import AdvertisingData
from bumble.device import Advertisement, Device, Peer
from bumble.hci import Address
from bumble.transport import open_transport
from cli_rig import VIN, Background, Household, Radio, kill, phone, provision, radio, run

from ble_stack.uuids import (
    ADV_COMPANY_ID,
    COMMAND_CHAR_UUID,
    EVENT_CHAR_UUID,
    PHONEKEY_SERVICE_UUID,
)
from protocol import Challenge, crypto, decode, encode, privacy
from protocol.card import VehicleCard
from protocol.framing import Reassembler

SUPERVISION = 1.0  # seconds; short so the tests stay quick
VEHICLE, PHONE_A, PHONE_B, THIRD_PARTY = range(4)  # radio slots
LOST_LINK = r"went away \(link supervision timeout"


@pytest.fixture(scope="module")
def shared_radio() -> Iterator[Radio]:
    with radio(slots=4, supervision_timeout=SUPERVISION) as running:
        yield running


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Household:
    return provision(tmp_path_factory.mktemp("household"), owners=["alice", "bob"])


@pytest.fixture
def household(provisioned: Household, tmp_path: Path) -> Household:
    """A fresh copy per test: a locked vehicle whitelisting alice's and bob's phones."""
    return provisioned.copy_to(tmp_path)


def start_vehicle(home: Household, rig: Radio, *extra: str) -> Background:
    rig.process.drain()  # what the radio said before this vehicle is not news
    vehicle = Background(
        "vehicle", "run", "--state", str(home.car), "--transport", rig.specs[VEHICLE], *extra
    )
    vehicle.wait_for("advertising")
    return vehicle


def radio_says(rig: Radio, pattern: str) -> str:
    return rig.process.wait_for(pattern)


def succeeded(result: subprocess.CompletedProcess[str], word: str) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert word in result.stdout


def test_two_phones_unlock_and_lock_in_turn_and_at_once(
    shared_radio: Radio, household: Household
) -> None:
    rig, alice, bob = shared_radio, household.phones["alice"], household.phones["bob"]
    vehicle = start_vehicle(household, rig)
    try:
        succeeded(run(*phone(alice, "unlock", rig.specs[PHONE_A])), "unlocked")
        succeeded(run(*phone(bob, "lock", rig.specs[PHONE_B])), "locked")
        # A slot is free again as soon as its phone exits: alice reuses hers.
        succeeded(run(*phone(alice, "status", rig.specs[PHONE_A])), "locked")

        both = [
            Background(*phone(alice, "unlock", rig.specs[PHONE_A])),
            Background(*phone(bob, "status", rig.specs[PHONE_B])),
        ]
        codes = [process.wait() for process in both]
        assert codes == [0, 0], [process.output for process in both]
        assert "unlocked" in both[0].output
    finally:
        assert vehicle.stop() == 0, vehicle.output
    show = run("vehicle", "show", "--state", str(household.car), "--json")
    assert json.loads(show.stdout)["lock_state"] == "unlocked", show.stdout


def test_vehicle_killed_mid_session_fails_the_phone_clearly_then_unlocks_after_restart(
    shared_radio: Radio, household: Household
) -> None:
    rig, alice = shared_radio, household.phones["alice"]
    vehicle = start_vehicle(household, rig)
    vehicle.signal(signal.SIGSTOP)  # its controller still advertises; its host is frozen
    unlock = Background(*phone(alice, "unlock", rig.specs[PHONE_A], "--timeout", "30"))
    try:
        radio_says(rig, rf"host {PHONE_A + 1}: connected to host {VEHICLE + 1}")
        kill(vehicle)
        radio_says(rig, rf"host {VEHICLE + 1}: gone; its 1 link\(s\) drop in")
        assert unlock.wait() == 1, unlock.output
    finally:
        unlock.stop()
    # One clear line naming what happened, not the phone's own 30 s timeout.
    assert len(unlock.lines) == 1, unlock.lines
    assert unlock.lines[0].startswith(f"failed: vehicle {VIN} "), unlock.lines
    assert re.search(LOST_LINK, unlock.lines[0]), unlock.lines
    radio_says(rig, rf"host {PHONE_A + 1}: link to host {VEHICLE + 1} down \(connection timeout")

    restarted = start_vehicle(household, rig)  # same slot, fresh controller
    try:
        succeeded(run(*phone(alice, "unlock", rig.specs[PHONE_A])), "unlocked")
    finally:
        assert restarted.stop() == 0, restarted.output


def test_phone_killed_mid_handshake_leaves_the_vehicle_ready(
    shared_radio: Radio, household: Household
) -> None:
    rig, alice, bob = shared_radio, household.phones["alice"], household.phones["bob"]
    vehicle = start_vehicle(household, rig, "--max-connections", "1")
    try:
        vehicle.signal(signal.SIGSTOP)
        doomed = Background(*phone(alice, "unlock", rig.specs[PHONE_A]))
        radio_says(rig, rf"host {PHONE_A + 1}: connected to host {VEHICLE + 1}")
        kill(doomed)  # linked, never authenticated
        vehicle.signal(signal.SIGCONT)
        radio_says(
            rig, rf"host {VEHICLE + 1}: link to host {PHONE_A + 1} down \(connection timeout"
        )

        succeeded(run(*phone(bob, "unlock", rig.specs[PHONE_B])), "unlocked")
        show = run("vehicle", "show", "--state", str(household.car), "--json")
        slots = json.loads(show.stdout)["connections"]
        # The dead phone's slot was freed by the link timing out, not by evicting it.
        assert (slots["connections"], slots["evictions"]) == (0, 0), slots
    finally:
        vehicle.signal(signal.SIGCONT)
        assert vehicle.stop() == 0, vehicle.output


async def test_third_party_central_scans_the_vehicle_and_reads_its_gatt_database(
    shared_radio: Radio, household: Household
) -> None:
    vehicle = start_vehicle(household, shared_radio)
    try:
        services = await _read_gatt_database(shared_radio.specs[THIRD_PARTY])
    finally:
        assert vehicle.stop() == 0, vehicle.output
    assert services[PHONEKEY_SERVICE_UUID] == {COMMAND_CHAR_UUID, EVENT_CHAR_UUID}


async def _read_gatt_database(spec: str) -> dict[str, set[str]]:
    """Plain bumble, none of phonekey's code: scan for the phonekey service UUID,
    connect, discover every service and characteristic."""
    async with await open_transport(spec) as transport:
        device = Device.with_hci(
            "third party", Address("F0:F1:F2:F3:F4:F5"), transport.source, transport.sink
        )
        await device.power_on()
        async with asyncio.timeout(20):
            advertisement = await _find_phonekey_vehicle(device)
            connection = await device.connect(advertisement.address)
            peer = Peer(connection)
            await peer.discover_services()
            database: dict[str, set[str]] = {}
            for service in peer.services:
                characteristics = await peer.discover_characteristics(service=service)
                database[str(service.uuid).lower()] = {
                    str(characteristic.uuid).lower() for characteristic in characteristics
                }
            await connection.disconnect()
        await device.power_off()
        return database


async def _find_phonekey_vehicle(device: Device) -> Advertisement:
    """Scan until an advertisement lists the phonekey service UUID."""
    found: asyncio.Future[Advertisement] = asyncio.get_running_loop().create_future()

    def on_advertisement(advertisement: Advertisement) -> None:
        listed = {
            str(uuid).lower()
            for kind in (
                AdvertisingData.Type.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
                AdvertisingData.Type.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
            )
            for group in advertisement.data.get_all(kind)
            for uuid in group
        }
        if PHONEKEY_SERVICE_UUID in listed and not found.done():
            found.set_result(advertisement)

    device.on(device.EVENT_ADVERTISEMENT, on_advertisement)
    await device.start_scanning()
    try:
        return await found
    finally:
        device.remove_listener(device.EVENT_ADVERTISEMENT, on_advertisement)
        await device.stop_scanning()


async def test_a_bystander_who_connects_reads_no_vehicle_identifier(
    shared_radio: Radio, household: Household
) -> None:
    """A bystander (plain bumble, the spec in hand) connects twice and reads the
    Challenge each time: what names the vehicle there is a fresh tag, not its
    id; only the card's key recognises it."""
    vehicle = start_vehicle(household, shared_radio)
    try:
        challenges = await _challenges_read_by(shared_radio.specs[THIRD_PARTY], connections=2)
    finally:
        assert vehicle.stop() == 0, vehicle.output
    card = VehicleCard.from_text(household.card)
    point = crypto.public_bytes(card.public_key, compressed=False)
    first, second = challenges
    assert first.vehicle_tag != second.vehicle_tag and first.nonce != second.nonce
    for challenge in challenges:
        assert card.vehicle_id not in encode(challenge)
        assert challenge.vehicle_tag == privacy.challenge_vehicle_tag(point, challenge.nonce)


async def _challenges_read_by(spec: str, *, connections: int) -> list[Challenge]:
    """Connect ``connections`` times as a stranger; each time subscribe to the
    EVENT characteristic and reassemble the first Challenge the vehicle pushes."""
    read: list[Challenge] = []
    async with await open_transport(spec) as transport:
        device = Device.with_hci(
            "bystander", Address("F0:F1:F2:F3:F4:F6"), transport.source, transport.sink
        )
        async with asyncio.timeout(30):
            await device.power_on()
            for _ in range(connections):
                read.append(await _one_challenge(device))
            await device.power_off()
    return read


async def _one_challenge(device: Device) -> Challenge:
    reassembler = Reassembler(time.monotonic)
    challenge: asyncio.Future[Challenge] = asyncio.get_running_loop().create_future()

    def on_frame(frame: bytes) -> None:
        data = reassembler.feed(bytes(frame))
        message = decode(data) if data is not None else None
        if isinstance(message, Challenge) and not challenge.done():
            challenge.set_result(message)

    advertisement = await _find_phonekey_vehicle(device)
    connection = await device.connect(advertisement.address)
    peer = Peer(connection)
    await peer.discover_services()
    (events,) = await peer.discover_characteristics(uuids=[EVENT_CHAR_UUID])
    await peer.subscribe(events, on_frame)
    result = await challenge
    await connection.disconnect()
    return result


async def test_sightings_across_a_rotation_cannot_be_linked_without_the_vehicle_key(
    shared_radio: Radio, household: Household
) -> None:
    """A bystander (plain bumble on the radio) records the vehicle's advertising
    across an identifier rotation: address and tag both change, nothing in the
    air names the car, and only the card's advertising secret links the two."""
    vehicle = start_vehicle(household, shared_radio, "--adv-rotation", "1")
    try:
        sightings = await _sightings(shared_radio.specs[THIRD_PARTY], wanted=2)
    finally:
        assert vehicle.stop() == 0, vehicle.output
    (first_address, first_data), (second_address, second_data) = sightings
    assert first_address != second_address
    assert first_data != second_data
    card = VehicleCard.from_text(household.card)
    assert card.adv_secret is not None
    for data in (first_data, second_data):
        for secret_part in (VIN.encode(), card.vehicle_id, crypto.public_bytes(card.public_key)):
            assert not any(secret_part[i : i + 4] in data for i in range(len(secret_part) - 3))
    tags = [privacy.parse_adv_payload(data) for data in (first_data, second_data)]
    assert all(tag is not None for tag in tags)
    # With the vehicle's secret both sightings resolve, tag and address alike ...
    for tag, address in zip(tags, (first_address, second_address), strict=True):
        assert tag is not None and privacy.resolves(card.adv_secret, tag.tag)
        assert privacy.address_resolves(card.adv_secret, address)
    # ... and with any other vehicle's secret neither does.
    other = privacy.derive_adv_secret(crypto.generate_private_key())
    assert not any(tag is not None and privacy.resolves(other, tag.tag) for tag in tags)


async def _sightings(spec: str, wanted: int) -> list[tuple[bytes, bytes]]:
    """(address, phonekey manufacturer data) of the first ``wanted`` distinct
    advertisers of the phonekey service UUID, as a bystander's scanner sees them."""
    seen: dict[bytes, bytes] = {}
    async with await open_transport(spec) as transport:
        device = Device.with_hci(
            "bystander", Address("F0:F1:F2:F3:F4:F6"), transport.source, transport.sink
        )
        await device.power_on()
        enough = asyncio.Event()

        def on_advertisement(advertisement: Advertisement) -> None:
            for company, data in advertisement.data.get_all(
                AdvertisingData.Type.MANUFACTURER_SPECIFIC_DATA
            ):
                if company == ADV_COMPANY_ID:
                    # bumble keeps addresses least significant byte first
                    msb_first = bytes(reversed(bytes(advertisement.address)))
                    seen.setdefault(msb_first, bytes(data))
            if len(seen) >= wanted:
                enough.set()

        device.on(device.EVENT_ADVERTISEMENT, on_advertisement)
        async with asyncio.timeout(20):
            await device.start_scanning(filter_duplicates=False)
            await enough.wait()
            await device.stop_scanning()
        await device.power_off()
    return list(seen.items())[:wanted]
