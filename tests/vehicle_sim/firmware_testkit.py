"""Helpers for the firmware-runtime tests: a clock the test moves, sleeps the
test can hold or record, and a runtime with firmware options on the virtual
radio (phones are conftest's ``BlePhone``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from vehicle_testkit import STEP_TIMEOUT, BlePhone

from ble_stack.virtual_link import VirtualRadio
from protocol import ChallengeReceived, Command, CommandCompleted
from vehicle_sim.display import ReportedEvent
from vehicle_sim.firmware_store import FirmwareStore
from vehicle_sim.runtime import FirmwareOptions, VehicleRuntime


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class HeldSleep:
    """Records every delay; holds the caller until ``release`` (or returns at
    once with ``hold=False``). No wall time is ever measured."""

    def __init__(self, *, hold: bool = True) -> None:
        self.delays: list[float] = []
        self._gate = asyncio.Event()
        if not hold:
            self._gate.set()

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await self._gate.wait()

    def release(self) -> None:
        self._gate.set()


@dataclass
class Firmware:
    runtime: VehicleRuntime
    clock: FakeClock
    sleep: HeldSleep
    seen: list[tuple[str, ReportedEvent]]


@asynccontextmanager
async def firmware_vehicle(
    radio: VirtualRadio, store: FirmwareStore, *, hold: bool = False, **options: object
) -> AsyncIterator[Firmware]:
    clock = FakeClock()
    sleep = HeldSleep(hold=hold)
    seen: list[tuple[str, ReportedEvent]] = []
    device = await radio.create_device("vehicle")
    runtime = VehicleRuntime(
        store,
        device,
        on_event=lambda peer, e: seen.append((peer, e)),
        options=FirmwareOptions(monotonic=clock, sleep=sleep, **options),  # type: ignore[arg-type]
    )
    await runtime.start()
    try:
        yield Firmware(runtime, clock, sleep, seen)
    finally:
        sleep.release()
        await runtime.stop()
        radio.remove_device(device)
        await device.power_off()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(STEP_TIMEOUT):
        while not condition():
            await asyncio.sleep(0.005)


async def command(phone: BlePhone, cmd: Command) -> CommandCompleted:
    await phone.send(cmd)
    event = await phone.next_event()
    assert isinstance(event, CommandCompleted), event
    assert isinstance(await phone.next_event(), ChallengeReceived)
    return event


async def try_connect(phone: BlePhone, address: object) -> bool:
    """Connect and subscribe; False if the vehicle dropped the link on the way."""
    phone.disconnected.clear()
    try:
        await phone.connect(address)  # type: ignore[arg-type]
    except Exception:
        return False
    except asyncio.CancelledError:
        # bumble cancels a pending GATT request when the link drops under it.
        if phone.disconnected.is_set() or (
            phone.connection is not None and phone.connection.handle not in phone.device.connections
        ):
            return False
        raise
    return not phone.disconnected.is_set()
