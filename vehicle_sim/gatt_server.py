"""The phonekey GATT service: one protocol session per BLE connection.

COMMAND (write, write-without-response) carries phone -> vehicle frames and
EVENT (notify) vehicle -> phone frames. Each connection gets its own
``protocol.VehicleConnection`` and a worker task that feeds it in arrival
order, so two phones never share a session and a slow one never delays
another. Frames are notified one at a time and awaited, which keeps the
fragments of a message in order.

A session that rejects a request has sent an unauthenticated Error and is
dead (the protocol's ERROR state is final), so the connection is dropped
right after the Error leaves: the phone reconnects for a fresh session.

Given a ``trust`` (the vehicle's ``CredentialTrust``) that holds at least one
issuer key, sessions also accept issuer-signed credentials, revocation deltas
and signed time; without one they behave exactly as before (no VehicleStatus
is sent, and any such message is refused).

Firmware defences (see docs/firmware.md): connection slots with
eviction and timeouts (``slots``), failed-authentication backoff that holds
back failure replies only (``backoff``), and an MCU profile that charges each
session's public-key operations on one shared core (``cpu``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final

from bumble import gatt, hci, l2cap
from bumble.device import Connection, Device

from ble_stack.uuids import COMMAND_CHAR_UUID, EVENT_CHAR_UUID, PHONEKEY_SERVICE_UUID
from protocol import credentials, crypto
from protocol.events import ChallengeIssued, RequestRejected, VehicleEvent
from protocol.framing import ATT_MTU_MAX, ATT_MTU_MIN, Clock
from protocol.states import VehicleState
from protocol.store import CredentialTrust, EnrollmentWindow, VehicleStore
from protocol.vehicle import DEFAULT_CHALLENGE_LIFETIME, VehicleConnection, VehicleIdentity

from .backoff import Backoff, ConnectionBackoff, counts_as_failure
from .display import ReportedEvent, describe_event
from .event_log import failure_code, is_success
from .mcu import Cpu, crypto_ops_delta
from .slots import Slot, SlotPolicy, choose_victim, expiry, is_full

logger = logging.getLogger(__name__)

EventHook = Callable[[str, ReportedEvent], None]
"""Observer of what the vehicle decided: ``hook(peer_address, event)``."""
SlotHook = Callable[[str, str], None]
"""Observer of slot decisions: ``hook(peer_address, what)`` with ``what`` one of
"evicted", "refused" (newcomer dropped: no slot), "handshake-timeout",
"idle-timeout", "backoff-drop"."""
Sleep = Callable[[float], Awaitable[None]]

_LOW_RESOURCES: Final = (
    hci.HCI_ErrorCode.REMOTE_DEVICE_TERMINATED_CONNECTION_DUE_TO_LOW_RESOURCES_ERROR
)

TICK_SECONDS: Final = 0.5
"""How often an idle session checks for a stalled partial message (the
reassembly timeout is 2 s, so a stall is noticed within 2.5 s)."""
REJECT_GRACE_SECONDS: Final = 0.05
"""Pause between the Error leaving the controller and the disconnect, so the
phone's host has handed the notification to its app before the link drops."""
_DRAIN_TIMEOUT: Final = 1.0


class _Subscribed:
    """Queue marker: the phone enabled EVENT notifications."""


_SUBSCRIBED: Final = _Subscribed()


class _Session:
    """One connection's protocol session and the task that drives it."""

    def __init__(self, connection: Connection, protocol: VehicleConnection, slot: Slot) -> None:
        self.connection = connection
        self.protocol = protocol
        self.slot = slot
        self.backoff = ConnectionBackoff()
        self.ops_seen: Counter[str] = Counter()
        self.peer = str(connection.peer_address)
        self.inbox: asyncio.Queue[bytes | _Subscribed] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None


class PhonekeyGattServer:
    """Serves the phonekey service on ``device`` against ``store``.

    Call ``attach`` before the device is powered on and ``close`` when done.
    """

    def __init__(
        self,
        device: Device,
        identity: VehicleIdentity,
        store: VehicleStore,
        *,
        on_event: EventHook | None = None,
        clock: Clock = time.monotonic,
        rng: crypto.Random = os.urandom,
        challenge_lifetime: float = DEFAULT_CHALLENGE_LIFETIME,
        tick: float = TICK_SECONDS,
        reject_grace: float = REJECT_GRACE_SECONDS,
        trust: CredentialTrust | None = None,
        credential_leeway: int = credentials.MAX_LEEWAY,
        slots: SlotPolicy | None = None,
        backoff: Backoff | None = None,
        cpu: Cpu | None = None,
        enrollment: EnrollmentWindow | None = None,
        vehicle_time: Callable[[], int] | None = None,
        fast_path: bool = False,
        on_slot_event: SlotHook | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.device = device
        self.slot_policy = slots if slots is not None else SlotPolicy()
        self.backoff = backoff
        self.cpu = cpu
        self._enrollment = enrollment
        self._vehicle_time = vehicle_time
        self._fast_path = fast_path
        self._on_slot_event = on_slot_event
        self._sleep = sleep
        self.evictions = 0
        self.refused = 0
        self.timeouts = 0
        self._identity = identity
        self._store = store
        self._trust = trust
        self._leeway = credential_leeway
        self._on_event = on_event
        self._clock = clock
        self._rng = rng
        self._lifetime = challenge_lifetime
        self._tick = tick
        self._reject_grace = reject_grace
        self._sessions: dict[int, _Session] = {}  # by connection handle
        self._disconnects: set[asyncio.Task[None]] = set()
        self.command_characteristic: gatt.Characteristic[bytes] = gatt.Characteristic(
            COMMAND_CHAR_UUID,
            gatt.Characteristic.Properties.WRITE
            | gatt.Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
            gatt.Characteristic.WRITEABLE,
            gatt.CharacteristicValue(write=self._on_write),
        )
        # No READ property: frames only travel as notifications. bumble adds the CCCD.
        self.event_characteristic: gatt.Characteristic[bytes] = gatt.Characteristic(
            EVENT_CHAR_UUID,
            gatt.Characteristic.Properties.NOTIFY,
            gatt.Characteristic.READABLE,
            b"",
        )
        self.service = gatt.Service(
            PHONEKEY_SERVICE_UUID, [self.command_characteristic, self.event_characteristic]
        )

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def stats(self) -> dict[str, int]:
        """Slot figures for `phonekey vehicle show` on a running vehicle."""
        return {
            "connections": len(self._sessions),
            "authenticated": sum(1 for s in self._sessions.values() if s.slot.authenticated),
            "max_connections": self.slot_policy.max_connections,
            "evictions": self.evictions,
            "refused": self.refused,
            "timeouts": self.timeouts,
        }

    def attach(self) -> None:
        """Add the service to the device and start following its connections."""
        self.device.add_service(self.service)
        self.device.on(Device.EVENT_CONNECTION, self._on_connection)
        self.event_characteristic.on(gatt.Characteristic.EVENT_SUBSCRIPTION, self._on_subscription)

    async def close(self) -> None:
        """Stop following the device and stop every session's worker; the
        connections themselves are the caller's to drop."""
        self.device.remove_listener(Device.EVENT_CONNECTION, self._on_connection)
        self.event_characteristic.remove_listener(
            gatt.Characteristic.EVENT_SUBSCRIPTION, self._on_subscription
        )
        sessions = list(self._sessions.values())
        self._sessions.clear()
        tasks = [s.task for s in sessions if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- bumble callbacks (synchronous: they only queue work) ------------------------
    def _on_connection(self, connection: Connection) -> None:
        if connection.role != connection.role.PERIPHERAL:
            return
        now = self._clock()
        slots = [session.slot for session in self._sessions.values()]
        if is_full(slots, self.slot_policy):
            victim = choose_victim(slots, now, self.slot_policy)
            if victim is None:
                # Every slot is protected: drop the newcomer, who may retry.
                self.refused += 1
                self._slot_event(str(connection.peer_address), "refused")
                self._spawn_disconnect(connection, _LOW_RESOURCES)
                return
            session = next(s for s in self._sessions.values() if s.slot is victim)
            victim.leaving = True
            self.evictions += 1
            self._slot_event(session.peer, "evicted")
            self._spawn_disconnect(session.connection, _LOW_RESOURCES)
        self._open_session(connection)

    def _on_subscription(self, bearer: Any, notify_enabled: bool, _indicate: bool) -> None:
        connection = bearer.connection if isinstance(bearer, l2cap.LeCreditBasedChannel) else bearer
        session = self._session_for(connection)
        if notify_enabled and session is not None:
            session.inbox.put_nowait(_SUBSCRIBED)

    def _on_write(self, connection: Connection, value: bytes) -> None:
        # bumble runs each ATT write in its own task, in arrival order, and
        # this callback runs synchronously at its start: the queue keeps that order.
        session = self._session_for(connection)
        if session is not None:
            session.inbox.put_nowait(bytes(value))

    def _session_for(self, connection: Connection) -> _Session | None:
        """The connection's session; None for a connection that has none (dropped
        for want of a slot, or gone: bumble may still run a write queued before
        the link dropped, and it must not open a session nothing would close)."""
        session = self._sessions.get(connection.handle)
        if session is not None and session.connection is connection:
            return session
        logger.debug(
            "ignoring ATT traffic of a connection without a session (%s)", connection.peer_address
        )
        return None

    def _open_session(self, connection: Connection) -> _Session:
        protocol = VehicleConnection(
            self._identity,
            self._store,
            clock=self._clock,
            rng=self._rng,
            att_mtu=_clamp_mtu(connection.att_mtu),
            challenge_lifetime=self._lifetime,
            trust=self._session_trust(),
            credential_leeway=self._leeway,
            enrollment=self._enrollment,
            vehicle_time=self._vehicle_time,
            fast_path=self._fast_path,
        )
        now = self._clock()
        session = _Session(connection, protocol, Slot(opened_at=now, last_request=now))
        self._sessions[connection.handle] = session
        connection.on(
            Connection.EVENT_CONNECTION_ATT_MTU_UPDATE,
            lambda: setattr(protocol, "att_mtu", _clamp_mtu(connection.att_mtu)),
        )
        connection.on(Connection.EVENT_DISCONNECTION, lambda _reason: self._drop(session))
        session.task = asyncio.get_running_loop().create_task(
            self._run(session), name=f"phonekey session {session.peer}"
        )
        logger.debug("session opened for %s (ATT MTU %d)", session.peer, connection.att_mtu)
        return session

    def _slot_event(self, peer: str, what: str) -> None:
        logger.info("connection %s: %s", peer, what)
        if self._on_slot_event is not None:
            try:
                self._on_slot_event(peer, what)
            except Exception:
                logger.exception("slot hook failed")

    def _spawn_disconnect(self, connection: Connection, reason: int) -> None:
        async def disconnect() -> None:
            with contextlib.suppress(Exception):
                await connection.disconnect(reason)

        task = asyncio.get_running_loop().create_task(disconnect())
        self._disconnects.add(task)
        task.add_done_callback(self._disconnects.discard)

    def _session_trust(self) -> CredentialTrust | None:
        """The trust for a new session: none unless an issuer key is provisioned,
        so a vehicle without one keeps the plain whitelist behaviour."""
        if self._trust is None or not self._trust.issuer_keys():
            return None
        return self._trust

    def _drop(self, session: _Session) -> None:
        """Forget a disconnected connection's session so no state outlives it."""
        if self._sessions.get(session.connection.handle) is session:
            del self._sessions[session.connection.handle]
        if session.task is not None:
            session.task.cancel()
        logger.debug("session closed for %s", session.peer)

    # --- the per-connection worker ------------------------------------------------------
    async def _run(self, session: _Session) -> None:
        try:
            await self._serve(session)
        except Exception:
            if self.device.connections.get(session.connection.handle) is not session.connection:
                return  # the link went away under a notification: nothing to save
            # A bug or a failing controller: never leave a phone on a session
            # that no longer answers.
            logger.exception("session with %s failed; dropping the link", session.peer)
            with contextlib.suppress(Exception):
                await session.connection.disconnect()

    async def _serve(self, session: _Session) -> None:
        protocol = session.protocol
        while True:
            try:
                async with asyncio.timeout(self._tick):
                    item = await session.inbox.get()
            except TimeoutError:
                item = None
            if protocol.state is VehicleState.ERROR:
                continue  # the connection is on its way down; ignore stragglers
            if item is not None:
                session.slot.touch(self._clock())
            if isinstance(item, _Subscribed):
                protocol.start()
            elif item is not None:
                protocol.receive_data(item)
            protocol.check_timeouts()
            if await self._pump(session):
                await self._disconnect_after_error(session)
                return
            why = expiry(session.slot, self._clock(), self.slot_policy)
            if why is not None:
                self.timeouts += 1
                session.slot.leaving = True
                self._slot_event(session.peer, why)
                with contextlib.suppress(Exception):
                    await session.connection.disconnect()
                return

    async def _pump(self, session: _Session) -> bool:
        """Run the session, charge its crypto, hold back a failure reply, send
        its frames and report its events; True if the connection must go."""
        events: list[VehicleEvent] = []
        while (event := session.protocol.next_event()) is not None:
            events.append(event)
        frames = session.protocol.data_to_send()
        if self.cpu is not None:
            await self.cpu.charge(crypto_ops_delta(session.protocol.crypto_ops, session.ops_seen))
        succeeded = any(is_success(event) for event in events)
        if succeeded:
            session.slot.authenticated = True
        drop = False
        rejected = any(isinstance(event, RequestRejected) for event in events)
        drop = False
        if not succeeded:
            delay, drop = self._backoff_for(session, events)
            if delay > 0:
                # Report (and log) first: the connection may be evicted while
                # its answer waits, and the refusal must be on record anyway.
                self._report_all(session, events)
                events = []
                await self._sleep(delay)  # only failure replies ever wait here
        for frame in frames:
            await self.device.notify_subscriber(
                session.connection, self.event_characteristic, frame
            )
        self._report_all(session, events)
        if drop and not rejected:
            self._slot_event(session.peer, "backoff-drop")
        return rejected or drop

    def _report_all(self, session: _Session, events: list[VehicleEvent]) -> None:
        for event in events:
            if not isinstance(event, ChallengeIssued):
                self._report(session.peer, event)

    def _backoff_for(self, session: _Session, events: list[VehicleEvent]) -> tuple[float, bool]:
        """(delay, drop) for a batch of events without a success."""
        if self.backoff is None:
            return 0.0, False
        delay, drop = 0.0, False
        for event in events:
            code = failure_code(event)
            if code is None or not counts_as_failure(code):
                continue
            verdict = self.backoff.record_failure(session.backoff)
            delay = max(delay, verdict.delay)
            drop |= verdict.drop
            if self.backoff.checkpoint_error is not None:
                logger.warning("backoff level not checkpointed: %s", self.backoff.checkpoint_error)
        return delay, drop

    def _report(self, peer: str, event: ReportedEvent) -> None:
        # INFO even for refusals: a stranger's phone probing the car is routine.
        logger.info("%s", describe_event(event, peer))
        if self._on_event is not None:
            try:
                self._on_event(peer, event)
            except Exception:
                # An observer's bug must not take the vehicle's session down with it.
                logger.exception("event hook failed")

    async def _disconnect_after_error(self, session: _Session) -> None:
        connection = session.connection
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_DRAIN_TIMEOUT):
                await connection.drain()
        await asyncio.sleep(self._reject_grace)
        with contextlib.suppress(Exception):
            await connection.disconnect()


def _clamp_mtu(mtu: int) -> int:
    return max(ATT_MTU_MIN, min(ATT_MTU_MAX, mtu))
