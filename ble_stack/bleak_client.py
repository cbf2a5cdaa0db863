"""A bleak client backend that drives a bumble Device as the central.

    client = BleakClient(ble_device, backend=BumbleBleakClient, bumble_device=dev)

Phone code keeps using bleak's public API; only the backend and the extra
`bumble_device=` (and optional `mtu=`) keyword arguments differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from bleak.args import SizedBuffer
from bleak.assigned_numbers import CHARACTERISTIC_PROPERTIES, CharacteristicPropertyName
from bleak.backends import BleakBackend
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError, BleakGATTProtocolError
from bumble import att, core, gatt_client, hci
from bumble.device import Connection, Device, Peer

from ble_stack.advertising import uuid_from_le_bytes

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

DEFAULT_MTU = 247  # fits a 244-byte ATT payload in one LE data-length-extended PDU
_CCCD_UUID = "00002902-0000-1000-8000-00805f9b34fb"


def _uuid_str(uuid: core.UUID) -> str:
    return uuid_from_le_bytes(uuid.to_bytes(force_128=True))


def _property_names(properties: int) -> list[CharacteristicPropertyName]:
    return [name for bit, name in CHARACTERISTIC_PROPERTIES.items() if properties & bit]


def peer_address_of(target: BLEDevice | str) -> hci.Address:
    """The bumble address (with its type) to connect to.

    BLEDevices from BumbleBleakScanner carry the typed address in `details`.
    A bare string is a random address unless suffixed "/P" (public).
    """
    if isinstance(target, BLEDevice):
        if isinstance(target.details, hci.Address):
            return target.details
        target = target.address
    return hci.Address(target)


class BumbleBleakClient(BaseBleakClient):
    """bleak `BaseBleakClient` over a bumble Device.

    Extra keyword arguments (pass them to `BleakClient`):
      bumble_device: the Device to use as the central; powered on if needed.
      mtu: ATT MTU to request after connecting; 23 skips the exchange.
    """

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        bumble_device: Device,
        mtu: int = DEFAULT_MTU,
        services: set[str] | None = None,
        disconnected_callback: Callable[[], None] | None = None,
        timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device,
            disconnected_callback=disconnected_callback,
            timeout=timeout,
            **kwargs,
        )
        if not att.ATT_DEFAULT_MTU <= mtu <= 517:
            raise ValueError(f"mtu must be within 23..517, not {mtu}")
        self._device = bumble_device
        self._mtu = mtu
        self._service_filter = services
        self._peer_address = peer_address_of(address_or_ble_device)
        self._name = (
            address_or_ble_device.name if isinstance(address_or_ble_device, BLEDevice) else None
        )
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._subscribers: dict[int, Callable[[bytes], None]] = {}
        self.disconnect_reason: int | None = None  # HCI reason of the last link drop

    # -- connectivity -------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name or self.address.replace(":", "-")

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    @property
    def mtu_size(self) -> int:
        connection = self._connection
        return int(connection.att_mtu) if connection is not None else att.ATT_DEFAULT_MTU

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        if pair:
            logger.warning("bumble backend: pairing is not supported, connecting without it")
        if self._connection is not None:
            return
        timeout: float = kwargs.get("timeout", self._timeout)
        if not self._device.powered_on:
            await self._device.power_on()
        try:
            # bumble cancels the attempt itself on timeout; an outer
            # asyncio.timeout would leave the controller still connecting.
            connection = await self._device.connect(self._peer_address, timeout=timeout)
        except core.TimeoutError as error:
            raise TimeoutError(f"no connection to {self.address} within {timeout:g} s") from error
        except (core.ConnectionError, core.InvalidStateError, hci.HCI_Error) as error:
            raise BleakError(f"connection to {self.address} failed: {error}") from error

        if self._device.connections.get(connection.handle) is not connection:
            # The link failed between bumble reporting it and us resuming, e.g.
            # another central won the same advertisement (HCI 0x3E).
            raise BleakError(f"connection to {self.address} failed to be established")
        self._connection = connection
        self._peer = peer = Peer(connection)
        connection.on(connection.EVENT_DISCONNECTION, self._on_disconnection)
        try:
            async with asyncio.timeout(timeout):
                if self._mtu > att.ATT_DEFAULT_MTU:
                    await self._gatt(peer.request_mtu(self._mtu))
                await self._discover(peer)
            self.services = self._build_services(peer)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.disconnect()  # the original error is the one to report
            raise

    async def disconnect(self) -> None:
        connection = self._connection
        if connection is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await connection.disconnect()
        except (core.BaseBumbleError, hci.HCI_Error):
            if self._connection is not None:
                raise  # still connected: the disconnect really failed
            # else the link dropped on its own while we were asking

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "the bumble bleak backend does not pair; phonekey authenticates in its own protocol"
        )

    async def unpair(self) -> None:
        raise NotImplementedError("the bumble bleak backend does not pair, so cannot unpair")

    def _on_disconnection(self, reason: int) -> None:
        logger.debug("disconnected from %s, reason 0x%02X", self.address, reason)
        self.disconnect_reason = reason
        self._connection = None
        self._peer = None
        self._subscribers.clear()
        if self._disconnected_callback is not None:
            try:
                self._disconnected_callback()
            except Exception:
                logger.exception("disconnected_callback raised")

    # -- GATT ---------------------------------------------------------------

    async def _discover(self, peer: Peer) -> None:
        for service in await self._gatt(peer.discover_services()):
            for characteristic in await self._gatt(peer.discover_characteristics(service=service)):
                await self._gatt(peer.discover_descriptors(characteristic=characteristic))

    def _build_services(self, peer: Peer) -> BleakGATTServiceCollection:
        collection = BleakGATTServiceCollection()
        for service in peer.services:
            service_uuid = _uuid_str(service.uuid)
            if self._service_filter and service_uuid not in self._service_filter:
                continue
            bleak_service = BleakGATTService(service, service.handle, service_uuid)
            collection.add_service(bleak_service)
            for characteristic in service.characteristics:
                bleak_characteristic = BleakGATTCharacteristic(
                    characteristic,
                    characteristic.handle,
                    _uuid_str(characteristic.uuid),
                    _property_names(characteristic.properties),
                    lambda: self.mtu_size - 3,
                    bleak_service,
                )
                collection.add_characteristic(bleak_characteristic)
                for descriptor in characteristic.descriptors:
                    collection.add_descriptor(
                        BleakGATTDescriptor(
                            descriptor,
                            descriptor.handle,
                            _uuid_str(descriptor.type),
                            bleak_characteristic,
                        )
                    )
        return collection

    def _require_peer(self) -> Peer:
        if self._peer is None:
            raise BleakError("Not connected")
        return self._peer

    async def _gatt(self, request: Awaitable[_T]) -> _T:
        """Await a bumble GATT call, translating its failures to bleak's."""
        try:
            return await request
        except att.ATT_Error as error:
            raise BleakGATTProtocolError(error.error_code) from error
        except core.TimeoutError as error:
            raise TimeoutError(str(error) or "GATT request timed out") from error
        except asyncio.CancelledError:
            # bumble cancels the pending ATT response when the link drops,
            # which would look like our task being cancelled. Only a
            # cancellation nobody asked this task for is a disconnection.
            task = asyncio.current_task()
            if self._connection is None and task is not None and task.cancelling() == 0:
                raise BleakError(f"{self.address} disconnected") from None
            raise

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        peer = self._require_peer()
        if use_cached:
            cached = peer.gatt_client.cached_values.get(characteristic.handle)
            if cached is not None:
                return bytearray(cached[1])
        return bytearray(await self._gatt(peer.read_value(characteristic.obj)))

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        peer = self._require_peer()
        return bytearray(await self._gatt(peer.read_value(descriptor.obj)))

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        peer = self._require_peer()
        value = bytes(data)
        if not response and len(value) > characteristic.max_write_without_response_size:
            # bumble would send it and the peer would drop it; fail loudly instead.
            raise BleakError(
                f"{len(value)} bytes exceed max_write_without_response_size "
                f"{characteristic.max_write_without_response_size}"
            )
        await self._gatt(peer.write_value(characteristic.obj, value, with_response=response))

    async def write_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, data: SizedBuffer
    ) -> None:
        peer = self._require_peer()
        await self._gatt(peer.write_value(descriptor.obj, bytes(data), with_response=True))

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        peer = self._require_peer()
        if not {"notify", "indicate"} & set(characteristic.properties):
            raise BleakError(f"characteristic {characteristic.uuid} cannot notify or indicate")
        if characteristic.get_descriptor(_CCCD_UUID) is None:
            raise BleakError(f"characteristic {characteristic.uuid} has no CCCD")

        def deliver(value: bytes) -> None:
            callback(bytearray(value))

        proxy: gatt_client.CharacteristicProxy[bytes] = characteristic.obj
        previous = self._subscribers.pop(characteristic.handle, None)
        if previous is not None:
            await self._gatt(peer.unsubscribe(proxy, previous))
        self._subscribers[characteristic.handle] = deliver
        await self._gatt(peer.subscribe(proxy, deliver, prefer_notify=True))

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        peer = self._require_peer()
        subscriber = self._subscribers.pop(characteristic.handle, None)
        await self._gatt(peer.unsubscribe(characteristic.obj, subscriber))


def disconnect_reason(client: object) -> int | None:
    """The HCI reason the link of a `BleakClient` last dropped with (e.g. 0x08,
    connection timeout), when its backend is `BumbleBleakClient`; None for
    other backends, which do not say."""
    backend = bumble_backend_of(client)
    return backend.disconnect_reason if backend is not None else None


# bleak has no public way to learn why a link dropped (the disconnected callback
# gets only the client) nor to reach a BleakClient's backend object: BleakClient
# keeps it in the private attribute below, and bleak's maintainers say the
# backends have no stable API. Checked against bleak 3.1.0, the release
# pyproject.toml allows (>=3.1,<3.2). The public `backend_id` (bleak >= 2.0)
# tells a custom backend from bleak's own, so the attribute is only read for a
# custom one. tests/ble_stack/test_ble_bleak_backend.py
# (test_bleak_still_keeps_the_backend_where_disconnect_reason_reads_it) fails
# when a bleak release moves it; this function would then answer None (the
# phone says "dropped the connection" instead of "went away").
_BLEAK_CLIENT_BACKEND_ATTRIBUTE: Final = "_backend"


def bumble_backend_of(client: object) -> BumbleBleakClient | None:
    """The `BumbleBleakClient` behind a bleak `BleakClient`; None when it runs
    one of bleak's own backends (or is not a BleakClient at all)."""
    backend_id = getattr(client, "backend_id", None)
    if backend_id is None or isinstance(backend_id, BleakBackend):
        return None
    backend = getattr(client, _BLEAK_CLIENT_BACKEND_ATTRIBUTE, None)
    if isinstance(backend, BumbleBleakClient):
        return backend
    if backend_id == BumbleBleakClient.__name__:
        logger.warning(
            "this bleak keeps no BleakClient.%s: link-drop reasons are unknown",
            _BLEAK_CLIENT_BACKEND_ATTRIBUTE,
        )
    return None
