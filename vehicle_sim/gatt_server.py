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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Final

from bumble import gatt, l2cap
from bumble.device import Connection, Device

from ble_stack.uuids import COMMAND_CHAR_UUID, EVENT_CHAR_UUID, PHONEKEY_SERVICE_UUID
from protocol import credentials, crypto
from protocol.events import (
    ClockCorrected,
    CommandExecuted,
    IssuerRotated,
    RequestRejected,
    RevocationsUpdated,
    VehicleEvent,
)
from protocol.framing import ATT_MTU_MAX, ATT_MTU_MIN, Clock
from protocol.states import VehicleState
from protocol.store import CredentialTrust, VehicleStore
from protocol.vehicle import DEFAULT_CHALLENGE_LIFETIME, VehicleConnection, VehicleIdentity

from .display import ReportedEvent, describe_event

logger = logging.getLogger(__name__)

EventHook = Callable[[str, ReportedEvent], None]
"""Observer of what the vehicle decided: ``hook(peer_address, event)``."""
_REPORTED: Final = (
    CommandExecuted,
    RequestRejected,
    RevocationsUpdated,
    ClockCorrected,
    IssuerRotated,
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

    def __init__(self, connection: Connection, protocol: VehicleConnection) -> None:
        self.connection = connection
        self.protocol = protocol
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
    ) -> None:
        self.device = device
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
        if connection.role == connection.role.PERIPHERAL:
            self._session_for(connection)

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
        """The connection's session, made on first use; None once it is gone.

        bumble may still run a write that was queued when the link dropped:
        it must not open a session that no disconnection would ever close.
        """
        session = self._sessions.get(connection.handle)
        if session is not None and session.connection is connection:
            return session
        if self.device.connections.get(connection.handle) is not connection:
            logger.debug(
                "ignoring ATT traffic of a closed connection to %s", connection.peer_address
            )
            return None
        protocol = VehicleConnection(
            self._identity,
            self._store,
            clock=self._clock,
            rng=self._rng,
            att_mtu=_clamp_mtu(connection.att_mtu),
            challenge_lifetime=self._lifetime,
            trust=self._session_trust(),
            credential_leeway=self._leeway,
        )
        session = _Session(connection, protocol)
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
            if isinstance(item, _Subscribed):
                protocol.start()
            elif item is not None:
                protocol.receive_data(item)
            protocol.check_timeouts()
            if await self._pump(session):
                await self._disconnect_after_error(session)
                return

    async def _pump(self, session: _Session) -> bool:
        """Run the session, send its frames, report its events; True if it rejected."""
        events: list[VehicleEvent] = []
        while (event := session.protocol.next_event()) is not None:
            events.append(event)
        for frame in session.protocol.data_to_send():
            await self.device.notify_subscriber(
                session.connection, self.event_characteristic, frame
            )
        rejected = False
        for event in events:
            if isinstance(event, _REPORTED):
                rejected |= isinstance(event, RequestRejected)
                self._report(session.peer, event)
        return rejected

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
