"""The cloud work around one command, bounded and kept off the critical path.

``run_command`` makes one ``CloudSync`` per command. At the start it launches
two tasks, each with the same deadline:

- a credential refresh (``POST /v1/credentials``): the result is verified and
  cached for next time. Only when nothing valid is cached does the command
  wait for it (up to the deadline) before connecting.
- a revocation sync: deltas from the version the vehicle last reported, cached
  per issuer, so the phone can carry them to the vehicle even offline.

When the vehicle refuses a credential the phone holds as valid because of its
own clock (not yet valid, or expired), ``correct_vehicle_clock`` fetches
issuer-signed time for the nonce the vehicle sent at connect and hands it
over, so the credential can be presented again on that connection.

After the vehicle's answer (the door is already open), ``after_command``
hands the vehicle what it lacks: cached deltas that start at the version its
status reports, and, if the cloud answered in this run, signed time for its
nonce. Any failure there is logged and dropped: it never changes the outcome.

It also words the outcome (``success_message`` / ``failure_message``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from protocol import Command, ProtocolError, credentials
from protocol.errors import RejectedCredentialExpired, RejectedCredentialNotYetValid

from .credential_cache import CachedCredential, CacheState, CredentialCache
from .errors import CloudLied, CloudRefused, CloudUnavailable, PhoneError
from .keystore import KeyStore
from .trust import VehicleTrust, duration_text, utc_text

if TYPE_CHECKING:
    from protocol.events import VehicleStatusReceived

    from .cloud_client import CloudClient
    from .session import VehicleSession

logger = logging.getLogger(__name__)

DEFAULT_CLOUD_DEADLINE: Final = 3.0
"""Seconds the cloud gets per command: for the refresh beside BLE, and for the
wait before connecting when nothing valid is cached."""
STATUS_WAIT: Final = 0.5
"""Seconds to wait after an answer for the vehicle's status (it normally
arrives with the answer; a vehicle that trusts no issuer sends none)."""
HANDOFF_TIMEOUT: Final = 1.0
"""Seconds for the vehicle to acknowledge one handoff (deltas, or time)."""
_FINISH_GRACE: Final = 0.5
_CLOCK_WRONG: Final = "the vehicle's clock was wrong; corrected it with issuer-signed time, then"


class ClockNotCorrected(PhoneError):
    """The vehicle's clock could not be corrected (``CloudSync.clock_error`` says why)."""


def is_clock_refusal(rejected: Exception) -> bool:
    """The vehicle refused a credential by its own clock: a wrong clock would do that."""
    return isinstance(rejected, RejectedCredentialNotYetValid | RejectedCredentialExpired)


_VERBS: Final = {Command.UNLOCK: "unlocked", Command.LOCK: "locked", Command.STATUS: "status read"}
ADVICE: Final = "use an owner's phone to share a key, or the keycard"


class CloudSync:
    def __init__(
        self,
        keystore: KeyStore,
        trust: VehicleTrust,
        cache: CredentialCache,
        cloud: CloudClient | None,
        *,
        deadline: float = DEFAULT_CLOUD_DEADLINE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if cloud is not None and trust.issuer is None:
            logger.warning(
                "cloud %s not used for %s: no issuer key is pinned to verify its credentials",
                cloud.url,
                trust.vin,
            )
            cloud = None
        self.keystore = keystore
        self.trust = trust
        self.cache = cache
        self.cloud = cloud
        self.deadline = deadline
        self._clock = clock
        self.cached: CachedCredential = (
            cache.status(trust.vin, self.now())
            if trust.issuer is not None
            else CachedCredential(trust.vin, CacheState.NONE)
        )
        self.fetched: credentials.Credential | None = None  # from the cloud in this run
        self.refreshed = False  # the fetched credential replaced the cached one
        self.error: CloudUnavailable | None = None  # why the credential fetch failed
        self.deltas_sent: tuple[int, int] | None = None  # (from, to) versions handed over
        self.time_sent = False
        self.issuer_rotated: bytes | None = None  # new issuer key id handed over and pinned
        self.clock_corrected = False  # the vehicle took signed time before the credential
        self.clock_error: Exception | None = None  # why correcting its clock failed
        self._credential_task: asyncio.Task[credentials.Credential | None] | None = None
        self._revocation_task: asyncio.Task[None] | None = None
        self._ends_at = 0.0

    @property
    def active(self) -> bool:
        """A cloud is configured (and can be verified) for this vehicle."""
        return self.cloud is not None

    def now(self) -> int:
        return int(self._clock())

    # --- the side tasks -------------------------------------------------------------------
    def start(self) -> None:
        """Launch the refresh and the revocation sync (no-op without a cloud)."""
        if self.cloud is None or self._credential_task is not None:
            return
        loop = asyncio.get_running_loop()
        self._ends_at = loop.time() + self.deadline
        self._credential_task = loop.create_task(self._fetch_credential(self.cloud))
        self._revocation_task = loop.create_task(self._sync_revocations(self.cloud))

    def _remaining(self) -> float:
        return max(0.001, self._ends_at - asyncio.get_running_loop().time())

    def _call_timeout(self, cloud: CloudClient) -> float:
        """One call's deadline: the client's, cut to what is left of the budget."""
        return min(cloud.call_timeout, self._remaining())

    @property
    def can_correct_clock(self) -> bool:
        """A cloud is configured and, as far as this run saw, answering."""
        if self.cloud is None:
            return False
        task = self._credential_task
        return task is None or not task.done() or self.cloud_up

    async def credential(self) -> credentials.Credential | None:
        """Wait (bounded by the deadline) for the refresh; its credential or None."""
        if self._credential_task is None:
            return None
        return await asyncio.shield(self._credential_task)

    @property
    def cloud_up(self) -> bool:
        """The cloud answered this run's refresh (with a credential or a definite no)."""
        task = self._credential_task
        if task is None or not task.done():
            return False
        return self.error is None or isinstance(self.error, CloudRefused)

    @property
    def observed(self) -> str:
        """The cloud as this run saw it: ``none``, ``up``, ``pending`` or an error status."""
        if self._credential_task is None:
            return "none"
        if not self._credential_task.done():
            return "pending"
        return "up" if self.error is None else self.error.status

    async def _fetch_credential(self, cloud: CloudClient) -> credentials.Credential | None:
        try:
            credential = await cloud.request_credential(
                self.keystore, self.trust.card, timeout=self._call_timeout(cloud)
            )
        except CloudUnavailable as exc:
            self.error = exc
            logger.info("no credential from the cloud for %s: %s", self.trust.vin, exc)
            return None
        self.fetched = credential
        try:
            self.refreshed = self.cache.store(self.trust.vin, credential, self.now())
        except (credentials.CredentialError, PhoneError) as exc:  # verified already; disk?
            logger.warning("could not cache the credential for %s: %s", self.trust.vin, exc)
        return credential

    async def _sync_revocations(self, cloud: CloudClient) -> None:
        since = self.cache.vehicle_revocation_version(self.trust.vin) or 0
        try:
            deltas = await cloud.revocation_deltas(
                since, self.trust.issuers, timeout=self._call_timeout(cloud)
            )
            if deltas:
                self.cache.store_deltas(deltas, self.trust.issuers)
        except (CloudUnavailable, credentials.CredentialError, PhoneError) as exc:
            logger.info("revocation sync for %s skipped: %s", self.trust.vin, exc)

    async def finish(self) -> None:
        """Let the side tasks end (they stop at the deadline); cancel stragglers."""
        tasks = [t for t in (self._credential_task, self._revocation_task) if t is not None]
        pending = [t for t in tasks if not t.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=self._remaining() + _FINISH_GRACE)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                logger.error("cloud task failed", exc_info=task.exception())

    def cancel(self) -> None:
        for task in (self._credential_task, self._revocation_task):
            if task is not None:
                task.cancel()

    # --- a vehicle with a wrong clock ---------------------------------------------------------
    async def correct_vehicle_clock(self, session: VehicleSession) -> None:
        """Hand the vehicle issuer-signed time for the nonce it sent at connect
        and wait for its acknowledgement (its next status).

        The cloud call gets its own deadline (the cloud's share of a command);
        the vehicle ``HANDOFF_TIMEOUT`` s to answer. Raises ``ClockNotCorrected``
        (reason in ``clock_error``); the session is unusable after a refusal.
        """
        cloud = self.cloud
        try:
            if cloud is None:
                raise ClockNotCorrected("no cloud is configured")
            status = await session.status_at_connect(STATUS_WAIT)
            if status is None:
                raise ClockNotCorrected("the vehicle sent no time nonce")
            signed = await cloud.signed_time(
                status.time_nonce,
                self.trust.issuers,
                timeout=min(cloud.call_timeout, self.deadline),
            )
            answer = await session.send_time_update(signed.to_bytes(), timeout=HANDOFF_TIMEOUT)
            if answer is None:
                raise ClockNotCorrected("the vehicle did not acknowledge the signed time")
        except ClockNotCorrected as exc:
            self.clock_error = exc
            raise
        except (CloudUnavailable, ProtocolError, PhoneError, credentials.CredentialError) as exc:
            self.clock_error = exc
            raise ClockNotCorrected(str(exc)) from exc
        self.clock_corrected = True
        logger.info("corrected the clock of %s with issuer-signed time", self.trust.vin)

    # --- after the answer -------------------------------------------------------------------
    async def after_command(self, session: VehicleSession) -> None:
        """Hand the vehicle signed news it lacks; never raises (but cancellation)."""
        issuer_key_id = self.trust.issuer_key_id
        if issuer_key_id is None:
            return
        issuers = self.trust.issuers
        try:
            if not self.active and not self.cache.deltas(issuer_key_id, issuers):
                return  # nothing to hand over whatever the vehicle says
            status = await session.wait_status(STATUS_WAIT)
            if status is None:
                return
            vin = self.trust.vin
            if self.cloud is not None and self.cloud_answered:
                # First: until the new key is pinned, what the cloud signs now
                # (time, deltas) verifies neither here nor on the vehicle.
                status = await self._hand_over_issuer_rotations(session, self.cloud) or status
                issuer_key_id, issuers = self.trust.issuer_key_id, self.trust.issuers
                assert issuer_key_id is not None  # a rotation never unpins
            self.cache.record_vehicle_revocation_version(vin, status.revocation_version)
            chain = self.cache.deltas_from(issuer_key_id, status.revocation_version, issuers)
            if not chain and self.cloud is not None and self.cloud_up:
                news = await self.cloud.revocation_deltas(
                    status.revocation_version, issuers, timeout=self.cloud.call_timeout
                )
                if news:
                    self.cache.store_deltas(news, issuers)
                    chain = self.cache.deltas_from(
                        issuer_key_id, status.revocation_version, issuers
                    )
            if chain:
                answer = await session.send_revocation_updates(
                    [d.to_bytes() for d in chain], timeout=HANDOFF_TIMEOUT
                )
                if answer is not None:
                    self.deltas_sent = (status.revocation_version, answer.revocation_version)
                    self.cache.record_vehicle_revocation_version(vin, answer.revocation_version)
                    status = answer
            if self.cloud is not None and self.cloud_up:
                signed = await self.cloud.signed_time(
                    status.time_nonce, issuers, timeout=self.cloud.call_timeout
                )
                self.time_sent = (
                    await session.send_time_update(signed.to_bytes(), timeout=HANDOFF_TIMEOUT)
                    is not None
                )
        except (CloudUnavailable, ProtocolError, PhoneError, credentials.CredentialError) as exc:
            logger.info("handing signed news to %s stopped: %s", self.trust.vin, exc)

    @property
    def cloud_answered(self) -> bool:
        """The cloud answered this run's refresh, even with something this phone
        refused: after an issuer rotation the fresh credential is signed by a
        key not pinned yet, and the rotation is what fixes that."""
        task = self._credential_task
        if task is None or not task.done():
            return False
        return self.error is None or isinstance(self.error, CloudRefused | CloudLied)

    async def _hand_over_issuer_rotations(
        self, session: VehicleSession, cloud: CloudClient
    ) -> VehicleStatusReceived | None:
        """Issuer rotations to keys this phone has not pinned, each verified
        against a pinned key (or the one before it in the chain): hand them to
        the vehicle, then pin the newest key, the one it replaced staying
        trusted. Pinned only once the vehicle acknowledged, so a phone keeps
        carrying a rotation until one vehicle took it."""
        try:
            chain = await cloud.issuer_rotations(self.trust.issuers, timeout=cloud.call_timeout)
        except CloudUnavailable as exc:  # e.g. a cloud without rotations: go on with the rest
            logger.info("no issuer rotations for %s: %s", self.trust.vin, exc)
            return None
        if not chain:
            return None
        answer = await session.send_issuer_updates(
            [r.to_bytes() for r in chain], timeout=HANDOFF_TIMEOUT
        )
        if answer is None:
            return None
        for rotation in chain:
            self.keystore.pin_rotated_issuer(self.trust.vin, rotation.new_public_key)
        self.trust = self.keystore.vehicle_trust(self.trust.vin)
        self.issuer_rotated = chain[-1].new_issuer_key_id
        logger.info(
            "%s now trusts issuer key %s (rotated)",
            self.trust.vin,
            chain[-1].new_issuer_key_id.hex(),
        )
        return answer

    # --- words ----------------------------------------------------------------------------
    def success_message(
        self, command: Command, ok: bool, source: str, refusal: Exception | None
    ) -> str:
        """How the vehicle's answer was obtained, e.g. ``cloud unreachable (HTTP
        500); unlocked with cached credential valid until 2026-12-04 10:00 UTC``."""
        verb = _VERBS.get(command, "answered") if ok else "used"
        held = self.cached.credential
        if source == "cloud" and self.fetched is not None:
            text = (
                f"{verb} with a credential fetched from the cloud, valid until "
                f"{utc_text(self.fetched.not_after)}"
            )
        elif source == "cache" and held is not None:
            text = f"{verb} with cached credential valid until {utc_text(held.not_after)}"
            if self.refreshed and self.fetched is not None:
                text += (
                    "; refreshed from the cloud, now valid until "
                    f"{utc_text(self.fetched.not_after)}"
                )
        else:
            text = f"{verb} with this phone's whitelisted key"
            if refusal is not None and self._blames_clock(refusal):
                # It names the cloud's failure already, if there was one.
                return f"{self._refusal_clauses(refusal)}; {text}"
            if refusal is not None:
                text = f"{self._refusal_text(refusal)}; {text}"
        if source in ("cloud", "cache") and self.clock_corrected:
            text = f"{_CLOCK_WRONG} {text}"
        if self.error is None or (source == "whitelist" and isinstance(self.error, CloudRefused)):
            # A whitelisted phone the cloud never enrolled is no news worth printing.
            return text
        return f"{self.error}; {text}"

    def failure_message(self, refusal: Exception | None) -> str:
        """Why neither a credential nor the whitelist worked, and what to do."""
        now = self.now()
        cached, held = self.cached, self.cached.credential
        if refusal is not None:
            joined = self._refusal_clauses(refusal)
        else:
            if cached.state is CacheState.EXPIRED and held is not None:
                first = f"cached credential expired {duration_text(now - held.not_after)} ago"
            elif cached.state is CacheState.NOT_YET_VALID and held is not None:
                first = f"cached credential is not valid before {utc_text(held.not_before)}"
            elif cached.state is CacheState.CORRUPT:
                first = f"the credential cache is corrupt ({cached.detail})"
            elif cached.state is CacheState.UNTRUSTED:
                first = f"the cached credential does not verify ({cached.detail})"
            else:
                first = "no credential is cached"
            second = self._cloud_clause()
            joined = first if second is None else f"{first} and {second}"
        return f"{joined}; this phone's key is not on the vehicle's whitelist: {ADVICE}"

    @property
    def cloud_error(self) -> CloudUnavailable | None:
        """The cloud's failure worth reporting: the credential fetch's, else the clock's."""
        if self.error is not None:
            return self.error
        return self.clock_error if isinstance(self.clock_error, CloudUnavailable) else None

    def _blames_clock(self, refusal: Exception) -> bool:
        """Refused by the vehicle's clock, and the clock was not corrected."""
        return is_clock_refusal(refusal) and not self.clock_corrected

    def _refusal_text(self, refusal: Exception) -> str:
        text = f"the vehicle refused the credential ({refusal})"
        if self.clock_corrected:
            text += " even after its clock was corrected with issuer-signed time"
        return text

    def _refusal_clauses(self, refusal: Exception) -> str:
        """The vehicle's refusal of the credential, and what the cloud did about it."""
        text = self._refusal_text(refusal)
        if not self._blames_clock(refusal):
            clause = self._cloud_clause()
            return text if clause is None else f"{text} and {clause}"
        text += ": the vehicle's clock may be wrong"
        error = self.clock_error
        if isinstance(error, CloudUnavailable):
            return f"{text} and {_describe_cloud_error(error)} to correct it"
        if error is not None:
            return f"{text} and correcting it with issuer-signed time failed ({error})"
        clause = self._cloud_clause()
        if clause is None:
            return text
        return f"{text} and {clause} to correct it"

    def _cloud_clause(self) -> str | None:
        if self.cloud is None:
            return "no cloud is configured"
        error = self.error
        if error is None:
            return None  # it answered: its credential is what the vehicle refused
        return _describe_cloud_error(error)


def _describe_cloud_error(error: CloudUnavailable) -> str:
    if isinstance(error, CloudRefused):
        return f"the cloud refused ({error.reason})"
    if error.status == "circuit-open":
        return f"the cloud is unreachable (not asked: {error.reason})"
    if error.status in ("bad-signature", "lying"):
        return f"the cloud's answer failed verification ({error.reason})"
    return f"the cloud is unreachable ({error.reason})"
