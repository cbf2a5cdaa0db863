"""The emulated NOR flash: erase-before-write, page-wise operations, power cuts."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from vehicle_sim.flash.device import PAGE_SIZE, FaultInjector, FlashDevice, FlashMisuse, PowerCut


def test_a_new_device_is_erased_and_reads_anywhere() -> None:
    device = FlashDevice.blank(3)
    assert device.size == 3 * PAGE_SIZE and device.page_count == 3
    assert device.read(PAGE_SIZE - 2, 4) == b"\xff" * 4
    assert device.is_erased(0, device.size)


def test_program_clears_bits_and_erase_sets_a_page_back() -> None:
    device = FlashDevice.blank(2)
    device.program(10, b"\x0f\xf0")
    assert device.read(10, 2) == b"\x0f\xf0"
    device.program(10, b"\x0e\x00")  # clearing more bits is allowed
    assert device.read(10, 2) == b"\x0e\x00"
    with pytest.raises(FlashMisuse, match="0 bit to 1"):
        device.program(10, b"\x0f\x00")  # setting one back is not
    assert device.read(10, 2) == b"\x0e\x00"  # and the refused program changed nothing
    device.erase(0)
    assert device.read(10, 2) == b"\xff\xff"
    device.program(10, b"\x0f\x00")


def test_out_of_range_access_is_refused() -> None:
    device = FlashDevice.blank(1)
    with pytest.raises(FlashMisuse):
        device.read(PAGE_SIZE - 1, 2)
    with pytest.raises(FlashMisuse):
        device.program(PAGE_SIZE, b"\x00")
    with pytest.raises(FlashMisuse):
        device.erase(1)


def test_the_injector_counts_one_operation_per_page_programmed() -> None:
    injector = FaultInjector()
    device = FlashDevice.blank(3)
    device.injector = injector
    device.program(PAGE_SIZE - 10, b"\x00" * 20)  # spans two pages
    device.erase(2)
    assert (injector.operations, injector.programs, injector.erases) == (3, 2, 1)
    assert (device.programs, device.erases) == (2, 1)


def test_a_power_cut_tears_a_program_and_stops_the_device() -> None:
    device = FlashDevice.blank(1)
    device.injector = FaultInjector(cut_at=2)
    device.program(0, b"\x01" * 8)
    with pytest.raises(PowerCut):
        device.program(100, b"\x02" * 8)
    assert device.read(100, 8) == b"\x02" * 4 + b"\xff" * 4  # a prefix landed
    with pytest.raises(PowerCut):  # the power stays off
        device.program(200, b"\x00")
    assert device.read(0, 8) == b"\x01" * 8


def test_a_power_cut_during_erase_leaves_the_page_partly_erased() -> None:
    device = FlashDevice.blank(1)
    device.program(0, b"\x00" * PAGE_SIZE)
    device.injector = FaultInjector(cut_at=1)
    with pytest.raises(PowerCut):
        device.erase(0)
    assert device.is_erased(0, PAGE_SIZE // 2)
    assert device.read(PAGE_SIZE // 2, PAGE_SIZE // 2) == bytes(PAGE_SIZE // 2)


def test_random_tears_are_reproducible() -> None:
    def torn() -> bytes:
        device = FlashDevice.blank(1)
        device.injector = FaultInjector(cut_at=1, rng=random.Random(7))
        with pytest.raises(PowerCut):
            device.program(0, bytes(64))
        return device.read(0, 64)

    assert torn() == torn()


def test_a_file_backed_device_writes_through(tmp_path: Path) -> None:
    path = tmp_path / "image"
    path.write_bytes(FlashDevice.blank(2).image())
    device = FlashDevice.open_file(path, writable=True)
    device.program(PAGE_SIZE + 1, b"\x12\x34")
    device.sync()
    assert path.read_bytes()[PAGE_SIZE + 1 : PAGE_SIZE + 3] == b"\x12\x34"
    device.erase(1)
    device.close()
    assert FlashDevice.open_file(path, writable=False).read(PAGE_SIZE + 1, 2) == b"\xff\xff"


def test_an_image_of_partial_pages_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "image"
    path.write_bytes(b"\xff" * (PAGE_SIZE + 1))
    with pytest.raises(FlashMisuse, match="whole number of pages"):
        FlashDevice.open_file(path, writable=False)
