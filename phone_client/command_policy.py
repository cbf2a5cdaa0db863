"""``run_command``: one command, offline first (see ``central`` for the
connection layer it builds on).

It presents a cached cloud credential when it holds a valid one (the cloud
refreshes it beside the BLE exchange, never in its way), waits for the cloud
(bounded) only when it holds none and the vehicle did not accept this key on
its whitelist last time, corrects a vehicle clock that refuses a valid
credential with issuer-signed time, falls back to the whitelist, presents an
offline share when the phone holds one and is not known to be whitelisted,
and says how it got in (``CommandOutcome.credential`` / ``cloud`` / ``message``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from bleak.backends.device import BLEDevice

from protocol import Command, VehicleRejected
from protocol.credentials import Credential
from protocol.errors import (
    RejectedCredential,
    RejectedCredentialRevoked,
    RejectedShare,
    RejectedUnknownKey,
)
from protocol.shares import Share

from .central import DEFAULT_TIMEOUT, PhoneKey
from .cloud_sync import DEFAULT_CLOUD_DEADLINE, ClockNotCorrected, CloudSync, is_clock_refusal
from .credential_cache import CacheState, CredentialCache
from .errors import (
    BluetoothError,
    CommandTimeout,
    ConnectionLost,
    KeyUnavailable,
    VehicleNotFound,
)
from .keystore import KeyStore
from .outcome import CommandOutcome, Latency
from .share_book import ShareBook, utc_minute

if TYPE_CHECKING:
    from .cloud_client import CloudClient

logger = logging.getLogger(__name__)


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
        # the key may still be whitelisted. One more connection, on the off
        # chance: if the link itself fails there, the vehicle's refusal of the
        # credential is still the answer worth telling, not the lost link.
        try:
            return await whitelist(device, None, None)
        except (BluetoothError, ConnectionLost, CommandTimeout, VehicleNotFound) as lost:
            assert refusal is not None  # set above: the credential was refused
            logger.info("whitelist fallback to %s failed: %s", card.vin, lost)
            raise KeyUnavailable(
                sync.failure_message(refusal), refusal, sync.cloud_error
            ) from refusal

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
