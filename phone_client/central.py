"""The phone as a BLE central: find a vehicle, connect, send commands.

Only bleak's public API is used, so the same code drives a laptop's adapter
(no backend given) and bumble's virtual radio (``client_kwargs={"backend":
BumbleBleakClient, "bumble_device": dev}`` and the scanner equivalent).

    phone = PhoneKey(KeyStore(home), client_kwargs=..., scanner_kwargs=...)
    async with phone.connect("VIN123") as session:
        done = await session.command(Command.UNLOCK)

``run_command`` is the one-shot, offline-first path: it presents a cached
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
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from bleak import BleakClient
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError

from ble_stack.uuids import PHONEKEY_SERVICE_UUID
from protocol import Command, VehicleRejected, WrongVehicle
from protocol.card import VehicleCard
from protocol.credentials import Credential
from protocol.errors import (
    RejectedCredential,
    RejectedCredentialRevoked,
    RejectedShare,
    RejectedUnknownKey,
)
from protocol.framing import ATT_MTU_MAX, ATT_MTU_MIN
from protocol.shares import Share

from .cloud_sync import DEFAULT_CLOUD_DEADLINE, ClockNotCorrected, CloudSync, is_clock_refusal
from .credential_cache import CacheState, CredentialCache
from .errors import (
    AdapterUnavailable,
    BluetoothError,
    CommandTimeout,
    KeyUnavailable,
    VehicleWentAway,
)
from .keystore import KeyStore
from .outcome import CommandOutcome as CommandOutcome
from .outcome import Latency as Latency
from .scanning import find_vehicle
from .session import MAX_CHALLENGE_AGE, SessionTimings, VehicleSession
from .share_book import ShareBook, utc_minute

if TYPE_CHECKING:
    from .cloud_client import CloudClient

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 10.0
CONNECT_ATTEMPTS: Final = 3
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
        # scanned vehicle is only a candidate until its challenge names our
        # vehicle id; a wrong one is dropped and the next candidate tried.
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
        client = await self._connect_client(card, device, timeout, on_disconnected)
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

    async def _connect_client(
        self,
        card: VehicleCard,
        device: BLEDevice,
        timeout: float,
        on_disconnected: Callable[[BleakClient], None],
    ) -> BleakClient:
        """A connected BleakClient, retrying links that fail while being set up.

        Real radios lose connections before their first packet now and then
        (HCI 0x3E, "connection failed to be established"), and when two phones
        answer the same advertisement only one wins. Both are worth a retry:
        the vehicle advertises again at once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
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
                    raise VehicleWentAway(card.vin) from exc
                failure = exc
                logger.debug("connect attempt %d to %s failed: %s", attempt, device.address, exc)
        if failure is not None:
            raise BluetoothError(f"cannot connect to vehicle {card.vin}: {failure}") from failure
        raise CommandTimeout(
            f"vehicle {card.vin} at {device.address} did not accept a connection "
            f"within {timeout:g} s"
        )

    def _att_mtu(self, negotiated: int) -> int:
        mtu = negotiated if self.max_mtu is None else min(negotiated, self.max_mtu)
        return max(ATT_MTU_MIN, min(ATT_MTU_MAX, mtu))


async def _disconnect(client: BleakClient) -> None:
    """Best effort: the link may already be gone, and exit must never hang."""
    with contextlib.suppress(BleakError, OSError, TimeoutError):
        async with asyncio.timeout(_DISCONNECT_TIMEOUT):
            await client.disconnect()


async def run_command(
    keystore: KeyStore,
    vin: str,
    command: Command,
    *,
    client_kwargs: Mapping[str, Any] | None = None,
    scanner_kwargs: Mapping[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_mtu: int | None = None,
    cloud: CloudClient | None = None,
    cloud_deadline: float = DEFAULT_CLOUD_DEADLINE,
    cache: CredentialCache | None = None,
    clock: Callable[[], float] = time.time,
    on_result: Callable[[CommandOutcome], None] | None = None,
) -> CommandOutcome:
    """Scan, connect, send one command, disconnect: offline first.

    A valid cached credential is presented at once and the ``cloud`` (if any)
    is asked for a fresh one beside the BLE exchange, within
    ``cloud_deadline`` s, never on the critical path. With nothing valid
    cached the phone scans while it waits for the cloud (up to the
    deadline), then presents what it got; without a credential it tries the
    whitelist. A phone whose key the vehicle last accepted on the whitelist
    (``KeyStore.whitelist_accepted``) does not wait: it connects at once on
    the whitelist path, the refresh beside it; if the vehicle now refuses the
    key, the phone waits for the cloud's credential after all.

    A credential the vehicle refuses is followed by one whitelist attempt on
    a new connection. When it refused it by its own clock (not yet valid, or
    expired) and the cloud is configured and answering, one connection comes
    first that hands the vehicle issuer-signed time for the nonce it sent at
    connect, then presents the credential again. After the answer the phone
    hands the vehicle revocation deltas it lacks and, when the cloud
    answered, signed time.

    ``on_result`` is called with the outcome as soon as the vehicle's answer
    is in (``cloud`` may still be "pending"); the returned outcome is final.

    Raises UnknownVehicle / KeyStoreError before any radio work, then
    VehicleNotFound, CommandTimeout, ConnectionLost, BluetoothError, or the
    protocol's VehicleRejected / RemoteProtocolError; ``KeyUnavailable`` when
    the vehicle refuses the whitelist path after the credential path failed
    or was unavailable (it carries both reasons). A cloud failure alone is
    never raised: it is in ``outcome.cloud`` and ``outcome.message``.
    """
    trust = keystore.vehicle_trust(vin)
    card = trust.card
    _ = keystore.private_key  # fail on a missing or unsafe key before any radio work
    phone = PhoneKey(
        keystore, client_kwargs=client_kwargs, scanner_kwargs=scanner_kwargs, max_mtu=max_mtu
    )
    sync = CloudSync(
        keystore,
        trust,
        cache if cache is not None else CredentialCache(keystore),
        cloud,
        deadline=cloud_deadline,
        clock=clock,
    )
    start = time.perf_counter()
    refusal: VehicleRejected | None = None  # the vehicle's refusal of the credential
    denial: VehicleRejected | None = None  # its refusal of a key believed whitelisted

    async def attempt(
        device: BLEDevice,
        credential: Credential | Share | None,
        scan: float | None,
        cloud_wait: float | None,
        *,
        correct_clock: bool = False,
    ) -> CommandOutcome:
        """One connection: present ``credential`` (if any; after correcting the
        vehicle's clock with signed time when ``correct_clock``), send the command."""
        encoded = None if credential is None else credential.to_bytes()
        at_connect = None if correct_clock else encoded
        async with phone.connect(card, device, timeout=timeout, credential=at_connect) as session:
            if correct_clock:
                assert encoded is not None
                await sync.correct_vehicle_clock(session)  # raises ClockNotCorrected
                await session.present_credential(encoded)
            try:
                completed = await session.command(command)
            except VehicleRejected as rejected:
                if credential is None and _is_denial(rejected):
                    keystore.set_whitelist_accepted(card.vin, False)
                raise
            total = time.perf_counter() - start
            stats = session.last_stats
            assert stats is not None  # command() records its stats before returning
            timings = session.timings
            source = "whitelist"
            if isinstance(credential, Share):
                source = "share"
            elif credential is not None:
                source = "cloud" if credential is sync.fetched else "cache"
            outcome = CommandOutcome(
                vin=card.vin,
                command=completed.command,
                result=completed.result,
                lock_state=completed.lock_state,
                counter=completed.counter,
                key_id=session.key_id,
                att_mtu=session.att_mtu,
                frames_written=stats.frames_written,
                latency=Latency(
                    scan,
                    timings.connect,
                    timings.challenge,
                    stats.round_trip,
                    total,
                    cloud_wait,
                ),
                credential=source,
                cloud=sync.observed,
                credential_not_after=None if credential is None else credential.not_after,
                fast_path=stats.fast_path,
                fast_path_refused=None
                if stats.fast_path_refused is None
                else stats.fast_path_refused.name.lower().replace("_", " "),
            )
            outcome = replace(outcome, message=_message(sync, outcome, refusal))
            if on_result is not None:
                try:
                    on_result(outcome)
                except Exception:  # the command is done: a hook's bug must not undo that
                    logger.exception("on_result hook failed")
            if credential is None and outcome.ok:
                keystore.set_whitelist_accepted(card.vin, True)
            await sync.after_command(session)  # bounded; never raises
        return outcome

    async def whitelist(
        device: BLEDevice, scan: float | None, cloud_wait: float | None
    ) -> CommandOutcome:
        """The whitelist path after the credential path failed or was unavailable."""
        try:
            return await attempt(device, None, scan, cloud_wait)
        except VehicleRejected as denied:
            if not _is_denial(denied):
                raise
            raise KeyUnavailable(
                sync.failure_message(refusal), denied, sync.cloud_error
            ) from denied

    async def with_share(device: BLEDevice, share: Share, scan: float | None) -> CommandOutcome:
        """The share path; if the vehicle refuses the share, one whitelist
        attempt (the owner may have added this key since); if that is denied
        too, the share's refusal is the reason that counts."""
        try:
            return await attempt(device, share, scan, None)
        except RejectedShare as refused:
            logger.info("vehicle %s refused the share (%s)", card.vin, refused)
            try:
                return await attempt(device, None, None, None)
            except VehicleRejected as denied:
                if _is_denial(denied):
                    raise refused from denied
                raise

    async def with_credential(
        device: BLEDevice,
        credential: Credential,
        scan: float | None,
        cloud_wait: float | None,
        *,
        then_whitelist: bool = True,
    ) -> CommandOutcome:
        """The credential path; if the vehicle refuses it by its own clock, one
        more connection that corrects the clock first; then the whitelist."""
        nonlocal refusal
        try:
            return await attempt(device, credential, scan, cloud_wait)
        except VehicleRejected as rejected:
            if not isinstance(rejected, RejectedCredential):
                raise
            refusal = rejected
        logger.info("vehicle %s refused the credential (%s)", card.vin, refusal)
        if is_clock_refusal(refusal) and sync.can_correct_clock:
            # The phone holds the credential as valid: the vehicle's clock may be
            # wrong. Correct it with issuer-signed time, then present it again.
            try:
                return await attempt(device, credential, None, None, correct_clock=True)
            except ClockNotCorrected as exc:
                logger.info("could not correct the clock of %s: %s", card.vin, exc)
            except VehicleRejected as rejected:
                if not isinstance(rejected, RejectedCredential):
                    raise
                refusal = rejected
                logger.info("vehicle %s refused the credential again (%s)", card.vin, refusal)
        if not then_whitelist:
            assert denial is not None
            message = sync.failure_message(refusal)
            raise KeyUnavailable(message, denial, sync.cloud_error) from denial
        # Refused by the vehicle's clock or list, or an issuer it does not trust:
        # the key may still be whitelisted. One more connection.
        return await whitelist(device, None, None)

    sync.start()
    try:
        whitelisted = keystore.whitelist_accepted(card.vin)
        device = await phone.find_vehicle(card, timeout)
        scan = time.perf_counter() - start
        credential = sync.cached.credential if sync.cached.usable else None
        share = None
        if credential is None and not whitelisted:
            share = ShareBook(keystore, clock=clock).to_present(card.vin)
        if share is not None:
            outcome = await with_share(device, share, scan)
        elif credential is not None:
            outcome = await with_credential(device, credential, scan, None)
        elif sync.active and not whitelisted:
            # Nothing valid cached: wait (bounded) for the cloud's credential.
            waited_from = time.perf_counter()
            credential = await sync.credential()
            cloud_wait = time.perf_counter() - waited_from
            if credential is not None:
                outcome = await with_credential(device, credential, scan, cloud_wait)
            else:
                outcome = await whitelist(device, scan, cloud_wait)
        else:
            # No cloud, or the vehicle accepted this key on its whitelist last
            # time: connect at once, the cloud's refresh (if any) runs beside.
            try:
                outcome = await attempt(device, None, scan, None)
            except VehicleRejected as rejected:
                if not _is_denial(rejected):
                    raise
                if whitelisted and sync.active:
                    # Not whitelisted any more: now the cloud is worth the wait.
                    denial = rejected
                    credential = await sync.credential()
                    if credential is None:
                        raise KeyUnavailable(
                            sync.failure_message(None), rejected, sync.cloud_error
                        ) from rejected
                    outcome = await with_credential(
                        device, credential, None, None, then_whitelist=False
                    )
                elif sync.active or sync.cached.state is not CacheState.NONE:
                    raise KeyUnavailable(
                        sync.failure_message(None), rejected, sync.cloud_error
                    ) from rejected
                else:
                    raise
    except BaseException as exc:
        if not isinstance(exc, Exception):
            sync.cancel()
        await sync.finish()
        raise
    await sync.finish()
    final = replace(outcome, cloud=sync.observed)
    return replace(final, message=_message(sync, final, refusal))


def _is_denial(rejected: VehicleRejected) -> bool:
    """The vehicle does not accept this key as such (not whitelisted, or revoked)."""
    return isinstance(rejected, RejectedUnknownKey | RejectedCredentialRevoked)


def _message(sync: CloudSync, outcome: CommandOutcome, refusal: VehicleRejected | None) -> str:
    if outcome.credential == "share":
        verb = {Command.UNLOCK: "unlocked", Command.LOCK: "locked"}.get(outcome.command, "asked")
        if not outcome.ok:
            verb = "used"
        until = (
            "" if outcome.credential_not_after is None else utc_minute(outcome.credential_not_after)
        )
        return f"{verb} with an offline share valid until {until}"
    return sync.success_message(
        outcome.command, outcome.ok, outcome.credential or "whitelist", refusal
    )
