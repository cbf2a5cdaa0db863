"""Private advertising over real BLE on the virtual link: phones find their vehicle
across a rotation, bystanders see unlinkable identifiers, old cards still unlock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ble_stack.bleak_backend import BumbleBleakClient, BumbleBleakScanner
from ble_stack.virtual_link import VirtualRadio
from phone_client import KeyStore, PhoneKey, scan_vehicles
from phone_client.command_policy import run_command
from protocol import Command, LockState, Role, privacy
from protocol.card import VehicleCard
from vehicle_sim.advertising import private_card
from vehicle_sim.runtime import FirmwareOptions, VehicleRuntime
from vehicle_sim.state_store import FileVehicleStore, init_vehicle, open_store

VIN = "1HGCM82633A004352"
OTHER_VIN = "2FTRX18W1XCA01234"
TIMEOUT = 5.0
ROTATION = 900.0


class WallClock:
    def __init__(self) -> None:
        self.now = 1_767_225_600.0 + 10.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Car:
    card: VehicleCard  # with the advertising secret
    store: FileVehicleStore
    runtime: VehicleRuntime


@pytest.fixture
async def radio() -> VirtualRadio:
    return VirtualRadio()


@pytest.fixture
def clock() -> WallClock:
    return WallClock()


async def _car(radio: VirtualRadio, state: Path, vin: str, clock: WallClock) -> Car:
    card = init_vehicle(state, vin)
    store = open_store(state)
    device = await radio.create_device(vin)
    options = FirmwareOptions(adv_rotation=ROTATION, wall_clock=clock)
    runtime = VehicleRuntime(store, device, options=options)
    await runtime.start()
    return Car(private_card(card, store.identity), store, runtime)


@pytest.fixture
async def cars(radio: VirtualRadio, tmp_path: Path, clock: WallClock) -> AsyncIterator[list[Car]]:
    made = [
        await _car(radio, tmp_path / "car", VIN, clock),
        await _car(radio, tmp_path / "other", OTHER_VIN, clock),
    ]
    yield made
    for car in made:
        await car.runtime.stop()
        await car.runtime.device.power_off()
        car.store.close()


async def _phone(
    radio: VirtualRadio, tmp_path: Path, name: str, car: Car, card: VehicleCard
) -> tuple[KeyStore, dict[str, object], dict[str, object]]:
    keystore = KeyStore(tmp_path / name)
    keystore.keygen()
    keystore.add_vehicle(card)
    car.store.add_key(keystore.public_key(), Role.OWNER)
    device = await radio.create_device(name)
    client = {"backend": BumbleBleakClient, "bumble_device": device}
    scanner = {"backend": BumbleBleakScanner, "bumble_device": device}
    return keystore, client, scanner


async def test_phone_unlocks_after_the_vehicle_rotated_mid_run(
    radio: VirtualRadio, tmp_path: Path, cars: list[Car], clock: WallClock
) -> None:
    car = cars[0]
    keystore, client, scanner = await _phone(radio, tmp_path, "phone", car, car.card)
    before = await scan_vehicles(0.3, known=[car.card], scanner_kwargs=scanner)
    ours = [v for v in before if v.vin == VIN]
    assert len(ours) == 1 and ours[0].address == str(car.runtime.advertised_address)
    first = await run_command(
        keystore, VIN, Command.UNLOCK, client_kwargs=client, scanner_kwargs=scanner, timeout=TIMEOUT
    )
    assert first.lock_state is LockState.UNLOCKED

    clock.now += ROTATION  # the next epoch
    assert await car.runtime.refresh_advertising()
    assert not await car.runtime.refresh_advertising()  # once per epoch
    after = await scan_vehicles(0.3, known=[car.card], scanner_kwargs=scanner)
    ours_after = [v for v in after if v.vin == VIN]
    assert len(ours_after) == 1
    assert ours_after[0].address != ours[0].address and ours_after[0].tag != ours[0].tag
    assert ours_after[0].address == str(car.runtime.advertised_address)

    done = await run_command(
        keystore, VIN, Command.LOCK, client_kwargs=client, scanner_kwargs=scanner, timeout=TIMEOUT
    )
    assert done.lock_state is LockState.LOCKED
    assert car.store.lock_state() is LockState.LOCKED


async def test_a_rotation_between_scan_and_connect_costs_a_rescan_not_the_unlock(
    radio: VirtualRadio, tmp_path: Path, cars: list[Car], clock: WallClock
) -> None:
    # The phone heard the vehicle just before its address rotated: that
    # address never answers again. The phone must scan again within its
    # connect timeout instead of waiting it out and failing the unlock.
    car = cars[0]
    keystore, client, scanner = await _phone(radio, tmp_path, "phone", car, car.card)
    phone = PhoneKey(keystore, client_kwargs=client, scanner_kwargs=scanner)
    heard = await phone.find_vehicle(VIN, TIMEOUT)
    assert heard.address == str(car.runtime.advertised_address)
    clock.now += ROTATION
    assert await car.runtime.refresh_advertising()
    assert heard.address != str(car.runtime.advertised_address)

    async with phone.connect(VIN, heard, timeout=TIMEOUT) as session:
        done = await session.command(Command.UNLOCK)
    assert done.lock_state is LockState.UNLOCKED
    assert car.store.lock_state() is LockState.UNLOCKED


async def test_a_bystander_cannot_link_two_sightings_across_a_rotation(
    radio: VirtualRadio, tmp_path: Path, cars: list[Car], clock: WallClock
) -> None:
    device = await radio.create_device("bystander")
    scanner = {"backend": BumbleBleakScanner, "bumble_device": device}
    seen_before = await scan_vehicles(0.3, scanner_kwargs=scanner)
    clock.now += ROTATION
    for car in cars:
        assert await car.runtime.refresh_advertising()
    seen_after = await scan_vehicles(0.3, scanner_kwargs=scanner)
    # Without a card, every vehicle is just "a phonekey vehicle".
    assert [v.vin for v in seen_before + seen_after] == [None] * 4
    before = {v.address: v.tag for v in seen_before}
    after = {v.address: v.tag for v in seen_after}
    assert not set(before) & set(after)  # no address survives the rotation
    assert not set(before.values()) & set(after.values())  # nor any tag
    # The vehicle's secret links its own two sightings, and no others.
    secret = cars[0].card.adv_secret
    assert secret is not None
    mine = [a for a, t in (before | after).items() if privacy.resolves(secret, t)]
    assert sorted(mine) == sorted(
        [a for a in before if privacy.resolves(secret, before[a])]
        + [a for a in after if privacy.resolves(secret, after[a])]
    )
    assert len(mine) == 2
    assert all(
        privacy.address_resolves(secret, bytes.fromhex(a.split("/")[0].replace(":", "")))
        for a in mine
    )


async def test_an_old_card_without_the_secret_still_unlocks(
    radio: VirtualRadio, tmp_path: Path, cars: list[Car]
) -> None:
    # Two vehicles advertise; the old card cannot tell them apart, so the
    # phone may try the other one first and must move on by the vehicle id.
    car = cars[0]
    old = car.card.without_adv_secret()
    keystore, client, scanner = await _phone(radio, tmp_path, "old-phone", car, old)
    for command, state in ((Command.UNLOCK, LockState.UNLOCKED), (Command.LOCK, LockState.LOCKED)):
        outcome = await run_command(
            keystore, VIN, command, client_kwargs=client, scanner_kwargs=scanner, timeout=TIMEOUT
        )
        assert outcome.lock_state is state
    assert cars[1].store.lock_state() is LockState.LOCKED  # the other car never moved


async def test_an_old_card_moves_on_from_the_wrong_vehicle(
    radio: VirtualRadio, tmp_path: Path, cars: list[Car]
) -> None:
    car, other = cars
    old = car.card.without_adv_secret()
    keystore, client, scanner = await _phone(radio, tmp_path, "old-phone", car, old)
    seen = await scan_vehicles(0.3, scanner_kwargs=scanner)
    wrong = next(v.device for v in seen if v.address == str(other.runtime.advertised_address))
    phone = PhoneKey(keystore, client_kwargs=client, scanner_kwargs=scanner)
    async with phone.connect(old, wrong, timeout=TIMEOUT) as session:
        done = await session.command(Command.UNLOCK)
    assert done.lock_state is LockState.UNLOCKED
    assert car.store.lock_state() is LockState.UNLOCKED
    assert other.store.lock_state() is LockState.LOCKED
