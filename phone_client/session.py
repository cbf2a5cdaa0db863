"""One connected session with a vehicle: bleak I/O around protocol.PhoneConnection.

The vehicle pushes a challenge when the phone subscribes to its event
characteristic and a fresh one after every response, so each command on an
open session costs a single round trip: write the request's frames, await the
authenticated response.

Notifications arrive in a bleak callback. It feeds the sans-IO connection and
queues the events it yields; a protocol error or a dropped link is recorded
once and wakes whoever waits, so a failure never goes unnoticed and never
turns into a lock state.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Final, TypeVar

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import BleakError

from ble_stack.uuids import COMMAND_CHAR_UUID, EVENT_CHAR_UUID
from protocol import (
    ChallengeReceived,
    Command,
    CommandCompleted,
    PhoneConnection,
    PhoneState,
    ProtocolError,
)
from protocol.card import VehicleCard

from .errors import BluetoothError, CommandTimeout, ConnectionLost
from .keystore import KeyStore

MAX_CHALLENGE_AGE: Final = 20.0
"""Seconds after which a held challenge is replaced before use. The vehicle
accepts challenges for 30 s; asking for a new one at 20 s leaves room for a
slow, fragmented request to arrive before the vehicle's limit."""

_E = TypeVar("_E", ChallengeReceived, CommandCompleted)


@dataclass(frozen=True)
class CommandStats:
    """Measurements of one command exchange."""

    command: Command
    round_trip: float  # seconds from the first write to the authenticated response
    frames_written: int  # ATT writes the request took (1 at MTU 247)
    refreshed_challenge: bool  # a stale challenge was replaced first


@dataclass
class SessionTimings:
    """Seconds spent setting up the session; None for stages that did not run."""

    scan: float | None = None
    connect: float | None = None
    challenge: float | None = None  # subscribe until the first challenge arrived
    commands: list[CommandStats] = field(default_factory=list)


class VehicleSession:
    """A connected, subscribed session. Made by ``PhoneKey.connect``."""

    def __init__(
        self,
        client: BleakClient,
        card: VehicleCard,
        keystore: KeyStore,
        *,
        att_mtu: int,
        timeout: float,
        timings: SessionTimings,
        max_challenge_age: float = MAX_CHALLENGE_AGE,
    ) -> None:
        self.client = client
        self.card = card
        self.att_mtu = att_mtu
        self.timeout = timeout
        self.timings = timings
        self.max_challenge_age = max_challenge_age
        self._keystore = keystore
        self._conn = PhoneConnection(
            keystore.private_key,
            card.public_key,
            clock=time.monotonic,
            rng=os.urandom,
            att_mtu=att_mtu,
        )
        self._inbox: asyncio.Queue[ChallengeReceived | CommandCompleted | None] = asyncio.Queue()
        self._failure: BaseException | None = None
        self._challenge_at = 0.0
        self._lock = asyncio.Lock()
        self._command_char: BleakGATTCharacteristic | None = None
        self.closing = False  # set while we disconnect ourselves: not a lost link

    @property
    def key_id(self) -> bytes:
        return self._conn.key_id

    @property
    def last_stats(self) -> CommandStats | None:
        return self.timings.commands[-1] if self.timings.commands else None

    # --- setup --------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe to the vehicle's events and wait for its first challenge."""
        services = self.client.services
        event_char = services.get_characteristic(EVENT_CHAR_UUID)
        self._command_char = services.get_characteristic(COMMAND_CHAR_UUID)
        if event_char is None or self._command_char is None:
            raise BluetoothError(
                f"{self.client.address} has no phonekey service; is it a phonekey vehicle?"
            )
        start = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            await self.client.start_notify(event_char, self._on_notification)
        except (BleakError, TimeoutError) as exc:
            self._raise_if_failed()
            if not self.client.is_connected:
                raise ConnectionLost(f"vehicle {self.card.vin} dropped the connection") from exc
            raise BluetoothError(f"cannot subscribe to the vehicle's events: {exc}") from exc
        await self._wait_for(ChallengeReceived, deadline, "its first challenge")
        self.timings.challenge = time.perf_counter() - start

    # --- commands -------------------------------------------------------------------
    async def command(self, command: Command, *, timeout: float | None = None) -> CommandCompleted:
        """Send ``command`` and return the vehicle's authenticated answer.

        ``result`` is OK, or FORBIDDEN when this key's role does not permit the
        command (the lock state is then unchanged and still authentic).
        Unauthenticated refusals raise ``protocol.VehicleRejected`` subclasses;
        forged or mismatched answers raise ``protocol.RemoteProtocolError``.
        Either way the session is finished: open a new one.
        """
        async with self._lock:  # one exchange at a time: the protocol has one challenge
            loop = asyncio.get_running_loop()
            deadline = loop.time() + (self.timeout if timeout is None else timeout)
            self._raise_if_failed()
            refreshed = False
            if (
                self._conn.state is PhoneState.READY
                and time.monotonic() - self._challenge_at > self.max_challenge_age
            ):
                refreshed = True
                self._conn.request_challenge()
                await self._write_pending()
            while self._conn.state is not PhoneState.READY:
                await self._wait_for(ChallengeReceived, deadline, "a challenge")
            # Persisted before it is signed: a crash can waste it, never reuse it.
            counter = self._keystore.next_counter(self.card.vin)
            start = time.perf_counter()
            self._conn.send_command(command, counter)
            frames = await self._write_pending()
            completed = await self._wait_for(CommandCompleted, deadline, "the response")
            round_trip = time.perf_counter() - start
            self._keystore.observe_counter(self.card.vin, completed.counter)
            self.timings.commands.append(CommandStats(command, round_trip, frames, refreshed))
            return completed

    # --- I/O ----------------------------------------------------------------------
    def _on_notification(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        if self._failure is not None:
            return  # the session is over; late frames mean nothing
        try:
            self._conn.receive_data(bytes(data))
            while (event := self._conn.next_event()) is not None:
                if isinstance(event, ChallengeReceived):
                    self._challenge_at = time.monotonic()
                self._inbox.put_nowait(event)
        except ProtocolError as exc:
            self._fail(exc)

    def on_disconnected(self) -> None:
        """bleak's disconnected callback (wired up by PhoneKey.connect)."""
        if not self.closing:
            self._fail(ConnectionLost(f"vehicle {self.card.vin} dropped the connection"))

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            self._inbox.put_nowait(None)  # wake a waiter

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _write_pending(self) -> int:
        frames = self._conn.data_to_send()
        assert self._command_char is not None  # set by start()
        try:
            for frame in frames:
                # Without response: order is kept by the link layer and a round
                # trip per fragment would multiply latency at small MTUs.
                await self.client.write_gatt_char(self._command_char, frame, response=False)
        except (BleakError, TimeoutError) as exc:
            self._raise_if_failed()
            if not self.client.is_connected:
                raise ConnectionLost(f"vehicle {self.card.vin} dropped the connection") from exc
            raise BluetoothError(f"writing to the vehicle failed: {exc}") from exc
        return len(frames)

    async def _wait_for(self, kind: type[_E], deadline: float, what: str) -> _E:
        while True:
            self._raise_if_failed()
            try:
                async with asyncio.timeout_at(deadline):
                    item = await self._inbox.get()
            except TimeoutError:
                self._raise_if_failed()
                raise CommandTimeout(
                    f"vehicle {self.card.vin} did not send {what} in time"
                ) from None
            if isinstance(item, kind):
                return item
            # Anything else is a pushed challenge nobody is waiting for: the
            # connection state already holds it.
