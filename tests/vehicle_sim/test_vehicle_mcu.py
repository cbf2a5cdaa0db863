"""The MCU profile charges each session's public-key operations on one shared
core, and the drifting clock runs fast or slow. Assertions are on what was
charged, never on wall time."""

from __future__ import annotations

import asyncio

import pytest
from firmware_testkit import command, firmware_vehicle, try_connect
from vehicle_testkit import PhoneFactory

from ble_stack.virtual_link import VirtualRadio
from protocol import ChallengeReceived, Command
from vehicle_sim.drift_clock import DriftingClock
from vehicle_sim.mcu import PROFILES, Cpu, McuProfile
from vehicle_sim.state_store import FileVehicleStore

M4 = PROFILES["cortex-m4-168"]


async def test_an_unlock_charges_one_verify_and_one_ecdh(
    radio: VirtualRadio, store: FileVehicleStore, make_phone: PhoneFactory
) -> None:
    owner = await make_phone("owner")
    async with firmware_vehicle(radio, store, mcu=M4) as fw:
        assert await try_connect(owner, fw.runtime.device.random_address)
        assert isinstance(await owner.next_event(), ChallengeReceived)
        await command(owner, Command.UNLOCK)
        cpu = fw.runtime.cpu
        assert dict(cpu.charged) == {"ecdsa_verify": 1, "ecdh": 1}
        assert cpu.busy_seconds == pytest.approx(0.083 + 0.086)
        assert fw.sleep.delays == [pytest.approx(0.083 + 0.086)]


async def test_no_profile_charges_nothing(
    radio: VirtualRadio, store: FileVehicleStore, make_phone: PhoneFactory
) -> None:
    owner = await make_phone("owner")
    async with firmware_vehicle(radio, store) as fw:
        assert await try_connect(owner, fw.runtime.device.random_address)
        await owner.next_event()
        await command(owner, Command.UNLOCK)
        assert fw.runtime.cpu.busy_seconds == 0 and fw.sleep.delays == []


async def test_one_core_runs_one_charge_at_a_time() -> None:
    timeline: list[str] = []

    async def sleep(seconds: float) -> None:
        timeline.append(f"start {seconds:g}")
        await asyncio.sleep(0)  # let the other session try to get in
        await asyncio.sleep(0)
        timeline.append(f"end {seconds:g}")

    cpu = Cpu(McuProfile("test", {"a": 1.0, "b": 2.0}), sleep=sleep)
    charged = await asyncio.gather(cpu.charge({"a": 1}), cpu.charge({"b": 1}))
    assert charged == [1.0, 2.0]
    assert timeline == ["start 1", "end 1", "start 2", "end 2"]  # queued, not overlapped
    assert dict(cpu.charged) == {"a": 1, "b": 1} and cpu.busy_seconds == 3.0


def test_drifting_clock_runs_fast_or_slow_from_its_start() -> None:
    now = [1_000_000.0]
    fast = DriftingClock(50, base=lambda: now[0])
    slow = DriftingClock(-50, base=lambda: now[0])
    now[0] += 86_400  # a day
    assert fast() - now[0] == pytest.approx(4.32)
    assert now[0] - slow() == pytest.approx(4.32)
    with pytest.raises(ValueError):
        DriftingClock(2e6)
