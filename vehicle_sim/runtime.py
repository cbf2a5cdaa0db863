"""``VehicleRuntime``: a powered, advertising, serving vehicle on a bumble Device.

Advertising is connectable legacy advertising (every phone OS scans for it).
The runtime restarts it itself rather than through bumble's ``auto_restart``,
because it wants more than bumble offers: advertising again as soon as a phone
connects, so further phones can connect while the first is still connected.
Controllers that cannot advertise while in a connection refuse the restart;
the runtime then waits for the next disconnection and tries again.

Advertising interval: ``VIRTUAL_ADV_INTERVAL_MS`` (20 ms, the minimum for
connectable legacy advertising) suits software controllers, where a connect
completes at the vehicle's next advertisement and airtime is free.
``HARDWARE_ADV_INTERVAL_MS`` (100 ms) is the CLI's default on real radios: a
phone still connects within a few hundred ms, with a fifth of the airtime and
power draw of 20 ms, which matters for a parked car's battery.

Private advertising (protocol/privacy.py): the advertised tag and the random
address are functions of the vehicle's advertising secret and the epoch
(``FirmwareOptions.adv_rotation`` seconds of ``wall_clock`` time, 15 minutes
by default). A background task rotates both at every epoch boundary: stop
advertising, set the new random address, advertise the new data. Links that
are up stay up (a connection does not depend on the advertiser address).
``refresh_advertising`` does the same on demand, for tests with a fake clock.

The runtime is also the key module's firmware around the protocol sessions:
it logs every decision in the store's event log, keeps the failed-
authentication backoff (restored from and checkpointed to the store), the
pairing window a keycard tap opens, the MCU profile's one core and the
connection-slot policy (``FirmwareOptions``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

from bumble import hci
from bumble.core import BaseBumbleError
from bumble.device import AdvertisingType, Connection, Device

from protocol import privacy
from protocol.events import CommandExecuted

from .advertising import adv_secret, build_vehicle_advertisement
from .backoff import Backoff, BackoffPolicy
from .card_reader import KeycardReader
from .display import ReportedEvent, describe_key, iso_utc, lock_word, short_id
from .event_log import log_events
from .firmware_store import NO_KEY, FirmwareStore, LogEvent, LogKind
from .gatt_server import EventHook, PhonekeyGattServer, Sleep
from .keycard import PairingWindow
from .mcu import PROFILES, Cpu, McuProfile
from .slots import SlotPolicy

logger = logging.getLogger(__name__)

VIRTUAL_ADV_INTERVAL_MS: Final = 20.0
HARDWARE_ADV_INTERVAL_MS: Final = 100.0
_ADV_INTERVAL_RANGE_MS: Final = (20.0, 10240.0)  # legacy advertising limits (Core 5.x)
_STOP_TIMEOUT: Final = 2.0


@dataclass(frozen=True)
class FirmwareOptions:
    """The firmware's knobs (`phonekey vehicle run` flags)."""

    slots: SlotPolicy = field(default_factory=SlotPolicy)
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    mcu: McuProfile = PROFILES["none"]
    fast_path: bool = True  # offer the symmetric fast path after a full handshake
    monotonic: Callable[[], float] = time.monotonic  # sessions, slots, backoff, window
    sleep: Sleep = asyncio.sleep  # backoff delays and MCU time
    adv_rotation: float = privacy.DEFAULT_ADV_ROTATION  # seconds per advertising epoch
    wall_clock: Callable[[], float] = time.time  # unix time: which advertising epoch it is


class VehicleRuntime:
    """Runs the vehicle of ``store`` on ``device`` until ``stop``.

    The device must not be powered on yet; the caller keeps ownership of the
    device's transport and of the store (both are closed by whoever opened them).
    """

    def __init__(
        self,
        store: FirmwareStore,
        device: Device,
        *,
        adv_interval_ms: float = VIRTUAL_ADV_INTERVAL_MS,
        on_event: EventHook | None = None,
        options: FirmwareOptions | None = None,
    ) -> None:
        low, high = _ADV_INTERVAL_RANGE_MS
        if not low <= adv_interval_ms <= high:
            raise ValueError(f"advertising interval must be {low:g}-{high:g} ms")
        self.options = options if options is not None else FirmwareOptions()
        self.store = store
        self.device = device
        self.adv_interval_ms = adv_interval_ms
        self._on_event = on_event
        self._adv_secret = adv_secret(store.identity)
        self.adv_epoch = privacy.epoch_of(self.options.wall_clock(), self.options.adv_rotation)
        self.advertising_data, self.scan_response_data = build_vehicle_advertisement(
            self._adv_secret, self.adv_epoch
        )
        monotonic = self.options.monotonic
        self.backoff = Backoff(
            monotonic,
            policy=self.options.backoff,
            level=store.backoff_level(),
            save_level=store.save_backoff_level,
        )
        self.cpu = Cpu(self.options.mcu, sleep=self.options.sleep)
        self.window = PairingWindow(monotonic)
        self.card_reader = KeycardReader(self)
        # The store is also the vehicle's CredentialTrust; the GATT server uses
        # it only while at least one issuer key is provisioned.
        self.gatt = PhonekeyGattServer(
            device,
            store.identity,
            store,
            on_event=self._handle_event,
            trust=store,
            clock=monotonic,
            slots=self.options.slots,
            backoff=self.backoff,
            cpu=self.cpu if self.options.mcu.seconds_per_op else None,
            enrollment=self.window,
            vehicle_time=store.now,
            fast_path=self.options.fast_path,
            on_slot_event=self._handle_slot_event,
            sleep=self.options.sleep,
        )
        self._adv_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._rotation_task: asyncio.Task[None] | None = None
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        """Power on, serve the phonekey service and start advertising."""
        if self._running:
            return
        self._running = True
        self.log(LogEvent(LogKind.BOOT))
        self.gatt.attach()
        self.device.on(Device.EVENT_CONNECTION, self._on_connection)
        try:
            await self.device.power_on()
            async with self._adv_lock:
                await self._advertise_epoch(self._current_epoch())
        except BaseException:
            await self.stop()  # leave nothing half-started behind
            raise
        logger.info(
            "vehicle %s advertising every %g ms as %s, doors %s",
            self.store.identity.vin,
            self.adv_interval_ms,
            self.device.random_address,
            lock_word(self.store.lock_state()),
        )
        issuers = self.store.issuer_keys()
        if issuers:
            logger.info(
                "accepting cloud credentials from issuer %s; revocation list version %d; clock %s",
                ", ".join(short_id(key_id) for key_id in issuers),
                self.store.revocation_version(),
                iso_utc(self.store.now()),
            )
        self._rotation_task = asyncio.get_running_loop().create_task(self._rotate_forever())

    async def stop(self) -> None:
        """Stop advertising, drop every phone and end all sessions. Idempotent."""
        if not self._running:
            return
        self._running = False
        tasks = [*self._tasks, *([self._rotation_task] if self._rotation_task else [])]
        self._rotation_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_STOP_TIMEOUT):
                await self.device.stop_advertising()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_STOP_TIMEOUT):
                for connection in list(self.device.connections.values()):
                    await connection.disconnect()
        await self.gatt.close()
        self.device.remove_listener(Device.EVENT_CONNECTION, self._on_connection)
        try:
            self.store.flush_log()
        except Exception:
            logger.exception("could not flush the event log")
        logger.info("vehicle %s stopped", self.store.identity.vin)

    async def __aenter__(self) -> VehicleRuntime:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- advertising ----------------------------------------------------------------------
    @property
    def advertised_address(self) -> hci.Address:
        """The random address of the current epoch."""
        return self._epoch_address(self.adv_epoch)

    def _current_epoch(self) -> int:
        return privacy.epoch_of(self.options.wall_clock(), self.options.adv_rotation)

    def _epoch_address(self, epoch: int) -> hci.Address:
        text = privacy.address_text(privacy.address_for_epoch(self._adv_secret, epoch))
        return hci.Address(text, hci.Address.RANDOM_DEVICE_ADDRESS)

    async def _advertise_epoch(self, epoch: int) -> None:
        """(Re)start advertising with the data and random address of ``epoch``; lock held."""
        self.adv_epoch = epoch
        self.advertising_data, self.scan_response_data = build_vehicle_advertisement(
            self._adv_secret, epoch
        )
        await self.device.stop_advertising()
        address = self._epoch_address(epoch)
        # Allowed while connected, not while advertising (stopped above).
        await self.device.send_sync_command(
            hci.HCI_LE_Set_Random_Address_Command(random_address=address)
        )
        self.device.random_address = address
        await self._start_advertising()

    async def refresh_advertising(self) -> bool:
        """Rotate to the current epoch if it changed; True if it did.

        A controller that refuses (e.g. it cannot advertise while connected)
        is retried at the next disconnection, like any advertising restart.
        """
        async with self._adv_lock:
            epoch = self._current_epoch()
            if not self._running or epoch == self.adv_epoch:
                return False
            try:
                await self._advertise_epoch(epoch)
            except (BaseBumbleError, hci.HCI_Error) as exc:
                logger.info("cannot rotate advertising now (%s); will retry", exc)
                return False
        logger.info("advertising rotated (epoch %d)", epoch)
        return True

    async def _rotate_forever(self) -> None:
        rotation = self.options.adv_rotation
        while self._running:
            now = self.options.wall_clock()
            delay = privacy.next_rotation(now, rotation) - now
            # Capped, so a wall clock that jumps is noticed within one period.
            await asyncio.sleep(min(max(delay, 0.0), rotation) + 0.01)
            if not await self.refresh_advertising() and self._current_epoch() != self.adv_epoch:
                await asyncio.sleep(min(rotation, 1.0))  # refused: do not spin

    async def _start_advertising(self) -> None:
        await self.device.start_advertising(
            advertising_type=AdvertisingType.UNDIRECTED_CONNECTABLE_SCANNABLE,
            own_address_type=hci.OwnAddressType.RANDOM,
            auto_restart=False,
            advertising_data=self.advertising_data,
            scan_response_data=self.scan_response_data,
            advertising_interval_min=self.adv_interval_ms,
            advertising_interval_max=self.adv_interval_ms,
        )

    async def _ensure_advertising(self) -> None:
        """Advertise again if a connection ended it; harmless if already advertising."""
        async with self._adv_lock:
            if not self._running or self.device.is_advertising:
                return
            try:
                advertising_set = self.device.legacy_advertising_set
                epoch = self._current_epoch()
                if epoch != self.adv_epoch:
                    await self._advertise_epoch(epoch)  # rotation was refused while connected
                elif advertising_set is not None:
                    await advertising_set.start()  # same set, data and address
                else:
                    await self._start_advertising()
            except (BaseBumbleError, hci.HCI_Error) as exc:
                # Typically a controller that cannot advertise while connected;
                # the next disconnection retries.
                logger.info("cannot advertise now (%s); will retry on disconnection", exc)

    # --- connections and events ---------------------------------------------------------------
    def _on_connection(self, connection: Connection) -> None:
        if connection.role != connection.role.PERIPHERAL:
            return
        peer = connection.peer_address
        logger.info("phone %s connected (%d connected)", peer, len(self.device.connections))

        def on_disconnection(reason: int) -> None:
            logger.info("phone %s disconnected (%s)", peer, _reason_name(reason))
            self._spawn(self._ensure_advertising())

        connection.once(Connection.EVENT_DISCONNECTION, on_disconnection)
        self._spawn(self._ensure_advertising())

    def disconnect_all(self) -> None:
        """Drop every phone (after a factory reset: no session outlives its key)."""
        for connection in list(self.device.connections.values()):
            self._spawn(_disconnect(connection))

    def log(self, event: LogEvent) -> None:
        """Append to the store's event log; a failing log never stops the car."""
        try:
            self.store.log_event(event)
        except Exception:
            logger.exception("could not append %s to the event log", event.kind.name)

    def _handle_slot_event(self, _peer: str, what: str) -> None:
        if what == "evicted":
            self.log(LogEvent(LogKind.EVICTED, NO_KEY))

    def _handle_event(self, peer: str, event: ReportedEvent) -> None:
        for entry in log_events(event):
            self.log(entry)
        if isinstance(event, CommandExecuted) and event.lock_state is not event.lock_state_before:
            # The actuator of this simulated car is this log line, e.g.
            # "doors unlocked (were locked) by key ab12cd34 (driver, cloud credential #7)".
            logger.info(
                "doors %s (were %s) by %s",
                lock_word(event.lock_state),
                lock_word(event.lock_state_before),
                describe_key(event),
            )
        if self._on_event is not None:
            self._on_event(peer, event)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        if not self._running:
            coroutine.close()
            return
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _disconnect(connection: Connection) -> None:
    with contextlib.suppress(Exception):
        await connection.disconnect()


def _reason_name(reason: int) -> str:
    try:
        return hci.HCI_ErrorCode(reason).name.lower()
    except ValueError:
        return f"reason 0x{reason:02x}"
