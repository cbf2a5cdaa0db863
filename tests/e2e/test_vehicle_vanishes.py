"""A vehicle whose radio vanishes mid-session (crash, power cut), in one
process: the phone's open session fails with a clear reason once the link's
supervision timeout has passed, never with a lock state."""

from __future__ import annotations

from pathlib import Path

import pytest

from ble_stack.bleak_backend import BumbleBleakClient, BumbleBleakScanner
from ble_stack.virtual_link import VirtualRadio
from phone_client import ConnectionLost, KeyStore, PhoneKey
from phone_client.errors import VehicleWentAway
from protocol import Command, LockState, Role
from vehicle_sim.runtime import VehicleRuntime
from vehicle_sim.state_store import init_vehicle, open_store

VIN = "1HGCM82633A004352"
SUPERVISION = 0.3


async def test_session_fails_with_vehicle_went_away_when_its_radio_vanishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The crashed vehicle's host is still here, but its radio never answers again:
    # keep its clean-up waits short.
    monkeypatch.setattr("vehicle_sim.runtime._STOP_TIMEOUT", 0.1)
    radio = VirtualRadio()
    card = init_vehicle(tmp_path / "car", VIN)
    store = open_store(tmp_path / "car")
    vehicle_device = await radio.create_device("vehicle")
    runtime = VehicleRuntime(store, vehicle_device)
    await runtime.start()
    keystore = KeyStore(tmp_path / "phone")
    keystore.keygen()
    keystore.add_vehicle(card)
    store.add_key(keystore.public_key(), Role.OWNER)
    phone_device = await radio.create_device("phone")
    phone = PhoneKey(
        keystore,
        client_kwargs={"backend": BumbleBleakClient, "bumble_device": phone_device},
        scanner_kwargs={"backend": BumbleBleakScanner, "bumble_device": phone_device},
    )
    try:
        async with phone.connect(VIN, timeout=10) as session:
            radio.remove_device(vehicle_device, supervision_timeout=SUPERVISION)
            with pytest.raises(VehicleWentAway) as failure:
                await session.command(Command.UNLOCK)  # waits for an answer that never comes
        assert isinstance(failure.value, ConnectionLost)
        assert str(failure.value).startswith(f"vehicle {VIN} went away (link supervision timeout")
        assert store.lock_state() is LockState.LOCKED
    finally:
        await runtime.stop()
        radio.remove_device(phone_device)
        store.close()
