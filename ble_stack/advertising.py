"""Encode and decode legacy advertising payloads (AD structures).

Real controllers reject legacy advertising or scan-response data over 31
bytes; bumble's virtual controller accepts anything. Building payloads here
keeps the vehicle within the limit on both. Decoding turns AD structures into
the fields bleak reports, merging advertisement and scan response.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

LEGACY_PAYLOAD_MAX = 31

# AD types (Bluetooth Assigned Numbers, section 2.3).
AD_FLAGS = 0x01
AD_UUID16_INCOMPLETE, AD_UUID16_COMPLETE = 0x02, 0x03
AD_UUID32_INCOMPLETE, AD_UUID32_COMPLETE = 0x04, 0x05
AD_UUID128_INCOMPLETE, AD_UUID128_COMPLETE = 0x06, 0x07
AD_SHORT_NAME, AD_COMPLETE_NAME = 0x08, 0x09
AD_TX_POWER = 0x0A
AD_SERVICE_DATA16, AD_SERVICE_DATA32, AD_SERVICE_DATA128 = 0x16, 0x20, 0x21
AD_MANUFACTURER_DATA = 0xFF

# LE General Discoverable, BR/EDR not supported.
DEFAULT_FLAGS = 0x06

_BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"
_UUID_SIZE = {
    AD_UUID16_INCOMPLETE: 2,
    AD_UUID16_COMPLETE: 2,
    AD_UUID32_INCOMPLETE: 4,
    AD_UUID32_COMPLETE: 4,
    AD_UUID128_INCOMPLETE: 16,
    AD_UUID128_COMPLETE: 16,
}
_SERVICE_DATA_UUID_SIZE = {AD_SERVICE_DATA16: 2, AD_SERVICE_DATA32: 4, AD_SERVICE_DATA128: 16}


def uuid_from_le_bytes(data: bytes) -> str:
    """A 16, 32 or 128-bit UUID in AD/ATT byte order -> lowercase 128-bit string."""
    if len(data) == 2:
        return f"0000{int.from_bytes(data, 'little'):04x}{_BASE_UUID_SUFFIX}"
    if len(data) == 4:
        return f"{int.from_bytes(data, 'little'):08x}{_BASE_UUID_SUFFIX}"
    return str(uuid.UUID(bytes=bytes(reversed(data))))


def _uuid_to_le_bytes(value: str) -> bytes:
    """Shortest AD encoding of a UUID: 16 or 32 bits if it is SIG-based."""
    if len(value) in (4, 8):  # "180d" or "0000180d" short forms
        value = f"{int(value, 16):08x}{_BASE_UUID_SUFFIX}"
    full = str(uuid.UUID(value))
    if full.endswith(_BASE_UUID_SUFFIX):
        short = int(full[:8], 16)
        return short.to_bytes(2 if short <= 0xFFFF else 4, "little")
    return bytes(reversed(uuid.UUID(full).bytes))


def parse_ad_structures(data: bytes) -> list[tuple[int, bytes]]:
    """Split a payload into (AD type, value) pairs, stopping at padding or garbage."""
    structures: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        length = data[offset]
        if length == 0 or offset + 1 + length > len(data):
            break  # zero padding, or a structure cut short
        structures.append((data[offset + 1], bytes(data[offset + 2 : offset + 1 + length])))
        offset += 1 + length
    return structures


@dataclass
class AdvertisementFields:
    """What a scanner learned about one advertiser, in bleak's terms."""

    local_name: str | None = None
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)
    service_uuids: list[str] = field(default_factory=list)
    service_data: dict[str, bytes] = field(default_factory=dict)
    tx_power: int | None = None

    @classmethod
    def from_ad_structures(cls, structures: Iterable[tuple[int, bytes]]) -> AdvertisementFields:
        fields = cls()
        short_name: str | None = None
        for ad_type, value in structures:
            if ad_type in _UUID_SIZE:
                size = _UUID_SIZE[ad_type]
                for start in range(0, len(value) - size + 1, size):
                    fields._add_uuid(uuid_from_le_bytes(value[start : start + size]))
            elif ad_type == AD_COMPLETE_NAME:
                fields.local_name = value.decode("utf-8", errors="replace")
            elif ad_type == AD_SHORT_NAME:
                short_name = value.decode("utf-8", errors="replace")
            elif ad_type == AD_TX_POWER and len(value) == 1:
                fields.tx_power = struct.unpack("b", value)[0]
            elif ad_type in _SERVICE_DATA_UUID_SIZE:
                size = _SERVICE_DATA_UUID_SIZE[ad_type]
                if len(value) >= size:
                    fields.service_data[uuid_from_le_bytes(value[:size])] = value[size:]
            elif ad_type == AD_MANUFACTURER_DATA and len(value) >= 2:
                company_id = int.from_bytes(value[:2], "little")
                fields.manufacturer_data[company_id] = value[2:]
        if fields.local_name is None:
            fields.local_name = short_name
        return fields

    def _add_uuid(self, value: str) -> None:
        if value not in self.service_uuids:
            self.service_uuids.append(value)

    def update(self, newer: AdvertisementFields) -> None:
        """Fold in a later report from the same advertiser.

        Fields accumulate, newer values winning, the way BlueZ keeps device
        properties: a scan response that only carries the name must not
        erase the service UUIDs seen in the advertisement, and the virtual
        controller's duplicate of the advertisement must not double them.
        """
        if newer.local_name is not None:
            self.local_name = newer.local_name
        self.manufacturer_data.update(newer.manufacturer_data)
        for value in newer.service_uuids:
            self._add_uuid(value)
        self.service_data.update(newer.service_data)
        if newer.tx_power is not None:
            self.tx_power = newer.tx_power


def _ad(ad_type: int, value: bytes) -> bytes:
    return bytes([len(value) + 1, ad_type]) + value


def build_advertisement(
    *,
    local_name: str | None = None,
    service_uuids: Sequence[str] = (),
    manufacturer_data: Mapping[int, bytes] | None = None,
    service_data: Mapping[str, bytes] | None = None,
    tx_power: int | None = None,
    flags: int | None = DEFAULT_FLAGS,
) -> tuple[bytes, bytes]:
    """Lay fields out as (advertising data, scan response data), each <= 31 bytes.

    Flags, service UUIDs, manufacturer and service data go in the
    advertisement, since passive scanners and OS scan filters only see that;
    whatever does not fit, and the name, goes in the scan response. A name
    too long for the space left is sent shortened. Raises ValueError if the
    fields cannot fit in the two packets.
    """
    required: list[bytes] = []
    if flags is not None:
        required.append(_ad(AD_FLAGS, bytes([flags])))
    by_size: dict[int, list[bytes]] = {}
    for value in service_uuids:
        encoded = _uuid_to_le_bytes(value)
        by_size.setdefault(len(encoded), []).append(encoded)
    complete_type = {2: AD_UUID16_COMPLETE, 4: AD_UUID32_COMPLETE, 16: AD_UUID128_COMPLETE}
    for size, encoded_uuids in sorted(by_size.items()):
        required.append(_ad(complete_type[size], b"".join(encoded_uuids)))
    for company_id, payload in (manufacturer_data or {}).items():
        required.append(_ad(AD_MANUFACTURER_DATA, company_id.to_bytes(2, "little") + payload))
    for data_uuid, payload in (service_data or {}).items():
        encoded = _uuid_to_le_bytes(data_uuid)
        ad_type = {2: AD_SERVICE_DATA16, 4: AD_SERVICE_DATA32}.get(len(encoded), AD_SERVICE_DATA128)
        required.append(_ad(ad_type, encoded + payload))
    optional: list[bytes] = []
    if tx_power is not None:
        optional.append(_ad(AD_TX_POWER, struct.pack("b", tx_power)))

    packets = [bytearray(), bytearray()]
    for structure in required + optional:
        target = next((p for p in packets if len(p) + len(structure) <= LEGACY_PAYLOAD_MAX), None)
        if target is None:
            raise ValueError(f"advertising fields exceed 2 x {LEGACY_PAYLOAD_MAX} bytes")
        target += structure

    if local_name:
        scan_response = packets[1]
        name = local_name.encode("utf-8")
        room = LEGACY_PAYLOAD_MAX - len(scan_response) - 2
        if room <= 0:
            raise ValueError("no room left for the local name in the scan response")
        if len(name) <= room:
            scan_response += _ad(AD_COMPLETE_NAME, name)
        else:
            shortened = name[:room].decode("utf-8", errors="ignore").encode("utf-8")
            scan_response += _ad(AD_SHORT_NAME, shortened)
    return bytes(packets[0]), bytes(packets[1])
