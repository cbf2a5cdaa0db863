"""The phone as a BLE central: find a vehicle, connect, send commands.

Only bleak's public API is used, so the same code drives a laptop's adapter
(no backend given) and bumble's virtual radio (``client_kwargs={"backend":
BumbleBleakClient, "bumble_device": dev}`` and the scanner equivalent).

    phone = PhoneKey(KeyStore(home), client_kwargs=..., scanner_kwargs=...)
    async with phone.connect("VIN123") as session:
        done = await session.command(Command.UNLOCK)

``command_policy.run_command`` is the one-shot, offline-first path: it presents a cached
cloud credential when it holds a valid one (the cloud refreshes it beside the
BLE exchange, never in its way), waits for the cloud (bounded) only when it
holds none (and the vehicle did not accept this key on its whitelist last
time), corrects a vehicle clock that refuses a valid credential with
issuer-signed time, falls back to the whitelist, and says how it got in
(``CommandOutcome.credential`` / ``cloud`` / ``message``). A phone holding
an offline share for the vehicle (``share_book``) and not known to be on its
whitelist presents the share like a credential. Commands on the whitelist
path use the fast path when a fast-path key is held (``CommandOutcome.fast_path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from bleak import BleakClient
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError

from ble_stack.uuids import PHONEKEY_SERVICE_UUID
from protocol import WrongVehicle
from protocol.card import VehicleCard
from protocol.framing import ATT_MTU_MAX, ATT_MTU_MIN

from .errors import (
    AdapterUnavailable,
    BluetoothError,
    CommandTimeout,
    VehicleNotFound,
    VehicleWentAway,
)
from .keystore import KeyStore
from .outcome import CommandOutcome as CommandOutcome
from .outcome import Latency as Latency
from .scanning import find_vehicle
from .session import MAX_CHALLENGE_AGE, SessionTimings, VehicleSession

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 10.0
CONNECT_ATTEMPTS: Final = 3
RESCAN_AFTER: Final = 3.0
"""Seconds a connection to a scanned address may take before the phone scans
again: the vehicle's private address rotates (every 15 minutes by default),
so an address heard just before a rotation never answers. An advertising
vehicle accepts a connection within a few advertising intervals."""
LEGACY_CANDIDATES: Final = 8  # vehicles an old card tries before giving up
_DISCONNECT_TIMEOUT: Final = 2.0


class PhoneKey:
    """A phone holding the keys in ``keystore``, talking through bleak.

    ``client_kwargs`` / ``scanner_kwargs`` go to every BleakClient /
    BleakScanner unchanged (e.g. ``backend=`` and its options). ``max_mtu``
    caps the ATT MTU the protocol fragments for; it is how to force small
    frames on a stack (like BlueZ) that negotiates the MTU on its own.
    """

    def __init__(
        self,
        keystore: KeyStore,
        *,
        client_kwargs: Mapping[str, Any] | None = None,
        scanner_kwargs: Mapping[str, Any] | None = None,
        max_mtu: int | None = None,
        max_challenge_age: float = MAX_CHALLENGE_AGE,
    ) -> None:
        self.keystore = keystore
        self.client_kwargs = dict(client_kwargs or {})
        self.scanner_kwargs = dict(scanner_kwargs or {})
        self.max_mtu = max_mtu
        self.max_challenge_age = max_challenge_age

    def card(self, vehicle: VehicleCard | str) -> VehicleCard:
        return vehicle if isinstance(vehicle, VehicleCard) else self.keystore.vehicle(vehicle)

    async def find_vehicle(
        self, vehicle: VehicleCard | str, timeout: float = DEFAULT_TIMEOUT
    ) -> BLEDevice:
        """Scan for the vehicle's advertised tag; raise VehicleNotFound on timeout."""
        return await find_vehicle(self.card(vehicle), timeout, scanner_kwargs=self.scanner_kwargs)

    @contextlib.asynccontextmanager
    async def connect(
        self,
        vehicle: VehicleCard | str,
        device: BLEDevice | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        credential: bytes | None = None,
    ) -> AsyncIterator[VehicleSession]:
        """Connect, subscribe and hold the first challenge; always disconnect on exit.

        Without ``device`` the vehicle is found by scanning first. ``timeout``
        bounds each stage (scan, connect, first challenge, each command). A
        ``credential`` (encoded issuer credential) is presented right after
        subscribing, at no extra round trip.
        """
        card = self.card(vehicle)
        _ = self.keystore.private_key  # fail on a missing or unsafe key before any radio work
        timings = SessionTimings()
        # An old card (no advertising secret) cannot resolve rotating tags: a
        # scanned vehicle is only a candidate until its challenge carries our
        # vehicle's tag; a wrong one is dropped and the next candidate tried.
        # The credential then waits for the right vehicle's challenge.
        candidates = card.adv_secret is None
        tried: list[str] = []
        while True:
            opened, client = await self._open(
                card, device, timeout, timings, None if candidates else credential, tried
            )
            if opened is not None:
                session = opened
                break
            device = None  # scan for the next candidate
        try:
            if candidates and credential is not None:
                await session.present_credential(credential)
            yield session
        finally:
            session.closing = True  # our own disconnect is not a lost connection
            await _disconnect(client)

    async def _open(
        self,
        card: VehicleCard,
        device: BLEDevice | None,
        timeout: float,
        timings: SessionTimings,
        credential: bytes | None,
        tried: list[str],
    ) -> tuple[VehicleSession | None, BleakClient]:
        """Scan (unless ``device``), connect and wait for the first challenge.

        (None, client) when an old card's vehicle turned out to be another
        vehicle (its address is then in ``tried``); raises otherwise.
        """
        retry = card.adv_secret is None
        if device is None:
            start = time.perf_counter()
            device = await find_vehicle(
                card, timeout, scanner_kwargs=self.scanner_kwargs, exclude=tried
            )
            timings.scan = time.perf_counter() - start
        session: VehicleSession | None = None

        def on_disconnected(_client: BleakClient) -> None:
            if session is not None:
                session.on_disconnected()

        start = time.perf_counter()
        client = await self._connect_or_rescan(card, device, timeout, on_disconnected, tried)
        timings.connect = time.perf_counter() - start
        try:
            session = VehicleSession(
                client,
                card,
                self.keystore,
                att_mtu=self._att_mtu(client.mtu_size),
                timeout=timeout,
                timings=timings,
                max_challenge_age=self.max_challenge_age,
            )
            await session.start(credential=credential)
        except WrongVehicle:
            if session is not None:
                session.closing = True
            await _disconnect(client)
            if not retry or len(tried) >= LEGACY_CANDIDATES:
                raise
            logger.info("%s is not vehicle %s; trying another", device.address, card.vin)
            tried.append(device.address)
            return None, client
        except BaseException:
            if session is not None:
                session.closing = True
            await _disconnect(client)
            raise
        return session, client

    async def _connect_or_rescan(
        self,
        card: VehicleCard,
        device: BLEDevice,
        timeout: float,
        on_disconnected: Callable[[BleakClient], None],
        tried: list[str],
    ) -> BleakClient:
        """``_connect_client`` within ``timeout``; if ``device`` does not answer
        for ``RESCAN_AFTER`` seconds, scan once more and connect to the address
        the vehicle advertises now (it may have rotated since it was heard)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        give_up = CommandTimeout(
            f"vehicle {card.vin} at {device.address} did not accept a connection "
            f"within {timeout:g} s"
        )
        if timeout > RESCAN_AFTER:
            client = await self._connect_client(
                device, loop.time() + RESCAN_AFTER, on_disconnected, card.vin
            )
            if client is not None:
                return client
            logger.info(
                "%s did not answer within %g s; scanning again for %s (its address may "
                "have rotated)",
                device.address,
                RESCAN_AFTER,
                card.vin,
            )
            try:
                device = await find_vehicle(
                    card,
                    deadline - loop.time(),
                    scanner_kwargs=self.scanner_kwargs,
                    exclude=tried,
                )
            except VehicleNotFound:
                raise give_up from None
        client = await self._connect_client(device, deadline, on_disconnected, card.vin)
        if client is None:
            raise give_up
        return client

    async def _connect_client(
        self,
        device: BLEDevice,
        deadline: float,
        on_disconnected: Callable[[BleakClient], None],
        vin: str,
    ) -> BleakClient | None:
        """A connected BleakClient, retrying links that fail while being set
        up; None if ``device`` did not accept a connection by ``deadline``
        (the event loop's time).

        Real radios lose connections before their first packet now and then
        (HCI 0x3E, "connection failed to be established"), and when two phones
        answer the same advertisement only one wins. Both are worth a retry:
        the vehicle advertises again at once.
        """
        loop = asyncio.get_running_loop()
        failure: Exception | None = None
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                client = BleakClient(
                    device,
                    on_disconnected,
                    services=[PHONEKEY_SERVICE_UUID],
                    timeout=remaining,
                    **self.client_kwargs,
                )
            except (BleakError, OSError) as exc:
                raise AdapterUnavailable(f"no usable Bluetooth adapter: {exc}") from exc
            try:
                async with asyncio.timeout(remaining + 1.0):  # backends time out first
                    await client.connect()
                return client
            except TimeoutError:
                await _disconnect(client)
                break
            except OSError as exc:
                await _disconnect(client)
                raise AdapterUnavailable(f"no usable Bluetooth adapter: {exc}") from exc
            except BleakError as exc:
                await _disconnect(client)
                from ble_stack.bleak_client import disconnect_reason

                if disconnect_reason(client) == 0x08:  # link timed out: not worth a retry
                    raise VehicleWentAway(vin) from exc
                failure = exc
                logger.debug("connect attempt %d to %s failed: %s", attempt, device.address, exc)
        if failure is not None:
            raise BluetoothError(f"cannot connect to vehicle {vin}: {failure}") from failure
        return None

    def _att_mtu(self, negotiated: int) -> int:
        mtu = negotiated if self.max_mtu is None else min(negotiated, self.max_mtu)
        return max(ATT_MTU_MIN, min(ATT_MTU_MAX, mtu))


async def _disconnect(client: BleakClient) -> None:
    """Best effort: the link may already be gone, and exit must never hang."""
    with contextlib.suppress(BleakError, OSError, TimeoutError):
        async with asyncio.timeout(_DISCONNECT_TIMEOUT):
            await client.disconnect()
