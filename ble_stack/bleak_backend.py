"""bleak backends over a bumble Device: the client and the scanner in one import.

from ble_stack.bleak_backend import BumbleBleakClient, BumbleBleakScanner

async with BleakScanner(cb, service_uuids=[...], backend=BumbleBleakScanner,
                        bumble_device=dev):
    ...
async with BleakClient(ble_device, backend=BumbleBleakClient, bumble_device=dev):
    ...
"""

from ble_stack.bleak_client import DEFAULT_MTU, BumbleBleakClient, peer_address_of
from ble_stack.bleak_scanner import BumbleBleakScanner, find_device_by_filter

__all__ = [
    "DEFAULT_MTU",
    "BumbleBleakClient",
    "BumbleBleakScanner",
    "find_device_by_filter",
    "peer_address_of",
]
