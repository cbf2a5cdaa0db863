"""One connected session with a vehicle: bleak I/O around protocol.PhoneConnection.

The vehicle pushes a challenge when the phone subscribes to its event
characteristic and a fresh one after every response, so each command on an
open session costs a single round trip: write the request's frames, await the
authenticated response.

Notifications arrive in a bleak callback. It feeds the sans-IO connection and
queues the events it yields; a protocol error or a dropped link is recorded
once and wakes whoever waits, so a failure never goes unnoticed and never
turns into a lock state.

Issuer credentials: ``start(credential=...)`` presents one right after
subscribing, while the first challenge is on its way, so it costs no round
trip. A vehicle that trusts an issuer follows every answer with a
``VehicleStatusReceived`` (its revocation version and a time nonce), kept in
``statuses``; ``send_revocation_updates`` and ``send_time_update`` hand it the
signed news it lacks, after the command, off the critical path. It sends one
at connect too (``status_at_connect``): a vehicle whose clock refuses a valid
credential can be handed signed time first, then the credential
(``present_credential``) on the same session.

Fast path (docs/protocol.md section 10): a command on a session without a
credential uses the fast-path key held for the vehicle (``KeyStore.fast_keys``)
instead of a signature. If the vehicle refuses it (``FastPathRefusedReceived``:
no key, bad MAC, key removed...), the key is dropped and the same command runs
the full handshake on the challenge that follows, on the same connection. A
full handshake answered OK hands back a new fast key, stored durably before
the command returns. ``manage`` sends whitelist operations (enroll, add or
remove a key, revoke a share, transfer ownership) through the same machinery.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
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
    ManageOp,
    PhoneConnection,
    PhoneState,
    ProtocolError,
    ResultCode,
)
from protocol.card import VehicleCard
from protocol.events import FastPathRefusedReceived, ManageCompleted, VehicleStatusReceived

from .errors import BluetoothError, CommandTimeout, ConnectionLost, VehicleWentAway
from .keystore import KeyStore

MAX_CHALLENGE_AGE: Final = 20.0
"""Seconds after which a held challenge is replaced before use. The vehicle
accepts challenges for 30 s; asking for a new one at 20 s leaves room for a
slow, fragmented request to arrive before the vehicle's limit."""

logger = logging.getLogger(__name__)
_LINK_TIMEOUT: Final = 0x08  # HCI connection timeout: the peer stopped answering

_Answer = ChallengeReceived | CommandCompleted | ManageCompleted | FastPathRefusedReceived
_E = TypeVar("_E", ChallengeReceived, CommandCompleted, ManageCompleted)


@dataclass(frozen=True)
class CommandStats:
    """Measurements of one command exchange."""

    command: Command
    round_trip: float  # seconds from the first write to the authenticated response
    frames_written: int  # ATT writes the request took (1 at MTU 247)
    refreshed_challenge: bool  # a stale challenge was replaced first
    fast_path: bool = False  # answered on the fast path (no public-key operation)
    fast_path_refused: ResultCode | None = None  # the vehicle's refusal before the fallback


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
        fast_path: bool = True,
    ) -> None:
        self.client = client
        self.fast_path = fast_path  # False: never try the fast path nor keep its key
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
        self._inbox: asyncio.Queue[_Answer | None] = asyncio.Queue()
        self.statuses: list[VehicleStatusReceived] = []  # as the vehicle sent them
        self._status_arrived = asyncio.Event()
        self._status_mark = 0  # len(statuses) when the latest command went out
        self.credential_presented = False
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
    async def start(self, *, credential: bytes | None = None) -> None:
        """Subscribe to the vehicle's events and wait for its first challenge.

        A ``credential`` (an encoded issuer credential for this phone's key) is
        presented as soon as the subscription is confirmed, while the challenge
        is on its way: the vehicle binds it into every command of the session.
        """
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
        if credential is not None:
            # After subscribing, so a refusal (an Error notification) reaches us.
            self._conn.present_credential(credential)
            self.credential_presented = True
            await self._write_pending()
        await self._wait_for(ChallengeReceived, deadline, "its first challenge")
        self.timings.challenge = time.perf_counter() - start

    async def present_credential(self, credential: bytes) -> None:
        """Present an encoded issuer credential now, on an open session (after
        correcting the vehicle's clock, say). It binds into every later command;
        a refusal reaches the next wait as ``protocol.VehicleRejected``."""
        async with self._lock:
            self._raise_if_failed()
            self._conn.present_credential(credential)
            self.credential_presented = True
            await self._write_pending()

    # --- commands -------------------------------------------------------------------
    async def command(self, command: Command, *, timeout: float | None = None) -> CommandCompleted:
        """Send ``command`` and return the vehicle's authenticated answer.

        ``result`` is OK, or FORBIDDEN when this key's role does not permit the
        command (the lock state is then unchanged and still authentic).
        Unauthenticated refusals raise ``protocol.VehicleRejected`` subclasses;
        forged or mismatched answers raise ``protocol.RemoteProtocolError``.
        Either way the session is finished: open a new one. A refused fast
        attempt is not such a refusal: it falls back to the full handshake.
        """
        async with self._lock:  # one exchange at a time: the protocol has one challenge
            loop = asyncio.get_running_loop()
            deadline = loop.time() + (self.timeout if timeout is None else timeout)
            self._raise_if_failed()
            refreshed = await self._hold_challenge(deadline)
            vin = self.card.vin
            start = time.perf_counter()
            frames = 0
            refused: ResultCode | None = None
            completed: CommandCompleted | None = None
            fast_key = self._fast_key()
            if fast_key is not None:
                counter = self._keystore.next_counter(vin)  # persisted before use
                self._status_mark = len(self.statuses)
                self._conn.send_fast_command(command, counter, fast_key)
                frames += await self._write_pending()
                answer = await self._wait_any(
                    (CommandCompleted, FastPathRefusedReceived), deadline, "the response"
                )
                if isinstance(answer, FastPathRefusedReceived):
                    refused = answer.reason
                    unavailable = refused is ResultCode.FAST_PATH_UNAVAILABLE
                    self._keystore.fast_keys.drop(vin, unavailable=unavailable)
                    logger.info(
                        "vehicle %s refused the fast path (%s); full handshake", vin, refused.name
                    )
                    await self._hold_challenge(deadline)
                else:
                    assert isinstance(answer, CommandCompleted)
                    completed = answer
            if completed is None:
                # Persisted before it is signed: a crash can waste it, never reuse it.
                counter = self._keystore.next_counter(vin)
                self._status_mark = len(self.statuses)
                self._conn.send_command(command, counter)
                frames += await self._write_pending()
                completed = await self._wait_for(CommandCompleted, deadline, "the response")
                if completed.fast_key is not None and self._fast_path_wanted():
                    # Durably stored before anything can use it.
                    self._keystore.fast_keys.store(
                        vin, self.key_id, self.card.public_key, completed.fast_key
                    )
            round_trip = time.perf_counter() - start
            self._keystore.observe_counter(vin, completed.counter)
            self.timings.commands.append(
                CommandStats(command, round_trip, frames, refreshed, completed.fast_path, refused)
            )
            return completed

    async def manage(
        self, operation: ManageOp, argument: bytes, *, timeout: float | None = None
    ) -> ManageCompleted:
        """Send a whitelist operation (argument from ``protocol.manage``) and
        return the vehicle's authenticated answer: OK, FORBIDDEN, NOT_FOUND or
        LAST_OWNER. Unauthenticated refusals (e.g. ``RejectedEnrollmentClosed``)
        raise ``protocol.VehicleRejected`` subclasses and end the session."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + (self.timeout if timeout is None else timeout)
            self._raise_if_failed()
            await self._hold_challenge(deadline)
            counter = self._keystore.next_counter(self.card.vin)  # persisted before signing
            self._status_mark = len(self.statuses)
            self._conn.send_manage(operation, argument, counter)
            await self._write_pending()
            done = await self._wait_for(ManageCompleted, deadline, "the answer")
            self._keystore.observe_counter(self.card.vin, done.counter)
            return done

    async def _hold_challenge(self, deadline: float) -> bool:
        """Wait until a fresh challenge is held; True if a stale one was replaced."""
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
        return refreshed

    def _fast_path_wanted(self) -> bool:
        return (
            self.fast_path
            and not self.credential_presented
            and not self._keystore.fast_keys.unavailable(self.card.vin)
        )

    def _fast_key(self) -> bytes | None:
        """The fast-path key to use for the next command, if any."""
        if not self._fast_path_wanted():
            return None
        return self._keystore.fast_keys.get(self.card.vin, self.key_id, self.card.public_key)

    # --- signed news for the vehicle ----------------------------------------------------
    async def wait_status(self, timeout: float) -> VehicleStatusReceived | None:
        """The status the vehicle sent after the latest command's answer, waiting
        up to ``timeout`` s for it; None if none came (a vehicle that trusts no
        issuer sends none)."""
        return await self._wait_statuses(self._status_mark + 1, timeout)

    async def status_at_connect(self, timeout: float) -> VehicleStatusReceived | None:
        """The status the vehicle sent with its first challenge (its time nonce
        lets a phone correct the vehicle's clock before any command), waiting
        up to ``timeout`` s; None from a vehicle that trusts no issuer."""
        return await self._wait_statuses(1, timeout)

    async def send_revocation_updates(
        self, deltas: Sequence[bytes], *, timeout: float
    ) -> VehicleStatusReceived | None:
        """Hand the vehicle issuer-signed revocation deltas, in order, and return
        the status it answers the last one with (None if it did not within
        ``timeout`` s). A refusal raises ``protocol.VehicleRejected`` and ends
        the session."""
        async with self._lock:
            self._raise_if_failed()
            seen = len(self.statuses)
            for delta in deltas:
                self._conn.send_revocation_update(delta)
            await self._write_pending()
            return await self._wait_statuses(seen + len(deltas), timeout)

    async def send_issuer_updates(
        self, rotations: Sequence[bytes], *, timeout: float
    ) -> VehicleStatusReceived | None:
        """Hand the vehicle issuer rotations, oldest first, and return the status
        it answers the last one with (None if it did not within ``timeout`` s).
        A refusal raises ``protocol.VehicleRejected`` and ends the session."""
        async with self._lock:
            self._raise_if_failed()
            seen = len(self.statuses)
            for rotation in rotations:
                self._conn.send_issuer_update(rotation)
            await self._write_pending()
            return await self._wait_statuses(seen + len(rotations), timeout)

    async def send_time_update(
        self, signed_time: bytes, *, timeout: float
    ) -> VehicleStatusReceived | None:
        """Hand the vehicle issuer-signed time for its latest nonce; returns its
        next status (None if it did not answer within ``timeout`` s)."""
        async with self._lock:
            self._raise_if_failed()
            seen = len(self.statuses)
            self._conn.send_time_update(signed_time)
            await self._write_pending()
            return await self._wait_statuses(seen + 1, timeout)

    async def _wait_statuses(self, count: int, timeout: float) -> VehicleStatusReceived | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.statuses) < count:
            self._raise_if_failed()
            self._status_arrived.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._status_arrived.wait()
            except TimeoutError:
                break
        self._raise_if_failed()
        return self.statuses[count - 1] if len(self.statuses) >= count else None

    # --- I/O ----------------------------------------------------------------------
    def _on_notification(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        if self._failure is not None:
            return  # the session is over; late frames mean nothing
        try:
            self._conn.receive_data(bytes(data))
            while (event := self._conn.next_event()) is not None:
                if isinstance(event, VehicleStatusReceived):
                    self.statuses.append(event)
                    self._status_arrived.set()
                    continue
                if isinstance(event, ChallengeReceived):
                    self._challenge_at = time.monotonic()
                self._inbox.put_nowait(event)
        except ProtocolError as exc:
            self._fail(exc)

    def on_disconnected(self) -> None:
        """bleak's disconnected callback (wired up by PhoneKey.connect)."""
        if not self.closing:
            from ble_stack.bleak_client import disconnect_reason

            if disconnect_reason(self.client) == _LINK_TIMEOUT:
                self._fail(VehicleWentAway(self.card.vin))
            else:
                self._fail(ConnectionLost(f"vehicle {self.card.vin} dropped the connection"))

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            self._inbox.put_nowait(None)  # wake a waiter
            self._status_arrived.set()

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
        item = await self._wait_any((kind,), deadline, what)
        assert isinstance(item, kind)
        return item

    async def _wait_any(
        self, kinds: tuple[type[_Answer], ...], deadline: float, what: str
    ) -> _Answer:
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
            if isinstance(item, kinds):
                return item
            # Anything else is a pushed challenge nobody is waiting for: the
            # connection state already holds it.
