"""Fixtures for ble_stack tests: real bumble stacks on a virtual link, no mocks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from ble_testkit import EchoPeripheral
from bumble.device import Device

from ble_stack.transports import OpenedDevice, open_device
from ble_stack.virtual_link import VirtualRadio


@pytest.fixture
async def radio() -> VirtualRadio:
    return VirtualRadio()


@pytest.fixture
async def vehicle(radio: VirtualRadio) -> AsyncIterator[EchoPeripheral]:
    opened = await open_device("virtual", name="vehicle", radio=radio)
    peripheral = EchoPeripheral(opened.device)
    await peripheral.start()
    yield peripheral
    await opened.close()


@pytest.fixture
async def phone_opened(radio: VirtualRadio) -> AsyncIterator[OpenedDevice]:
    opened = await open_device("virtual", name="phone", radio=radio)
    yield opened
    await opened.close()


@pytest.fixture
async def phone(phone_opened: OpenedDevice) -> Device:
    return phone_opened.device
