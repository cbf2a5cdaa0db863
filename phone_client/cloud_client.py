"""The phone's client of the credential cloud (``docs/cloud-api.yaml``).

Every public method is one operation with a hard deadline (``asyncio.timeout``)
and ends in a value that has been verified, or in a ``CloudUnavailable``:

- ``CloudUnavailable(reason)``: no usable answer. ``reason`` is short and
  human ("HTTP 500", "no answer within 2 s", "connection reset", "invalid
  response (not JSON)") and ``status`` one token ("http-500", "blackhole",
  "reset", "unreachable", "garbage").
- ``CloudLied``: the answer parsed, but its signed object fails verification
  against the issuer key *the phone* pinned for the vehicle (bad signature,
  another issuer, vehicle, holder, role or nonce). The cloud's own
  ``/v1/issuer`` answer is never used to verify anything.
- ``CloudRefused``: a definite no (4xx), e.g. the key is not enrolled.
- ``CircuitOpen``: not called at all, because the breaker is open.

The phone treats all of them alike where it matters (no credential from the
cloud) and reports them apart. With a ``CircuitBreaker``, outages and lies
count as failures and anything else as a success.

This module sequences the operations (deadline, breaker, which route); one
HTTP exchange and its failures are ``cloud_http``, reading and verifying what
came back is ``cloud_answers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from protocol import credentials, crypto
from protocol.card import VehicleCard
from protocol.cloud_request_auth import sign_credential_request

from .circuit_breaker import CircuitBreaker
from .cloud_answers import (
    base64_field,
    check_issued_credential,
    decode_base64,
    delta_list,
    int_field,
    lie,
    parse,
    text_field,
    verify,
)
from .cloud_http import MAX_ANSWER, CloudHttp, invalid_response
from .errors import (
    CircuitOpen,
    CloudLied,
    CloudRefused,
    CloudUnavailable,
    NoTrustedIssuer,
)
from .keystore import KeyStore, validate_cloud_url
from .trust import VehicleTrust

DEFAULT_CALL_TIMEOUT: Final = 2.0
MAX_LIST_ANSWER: Final = 4 * 1024 * 1024  # 100 000 revocation ids in base64, and some
MAX_DELTA_CALLS: Final = 8  # one-delta-per-call cloud: at most 8 x 16 versions per sync
MAX_ROTATIONS: Final = 64  # issuer rotations a phone reads in one answer

IssuerKeys = Mapping[bytes, crypto.PublicKey]


@dataclass(frozen=True)
class IssuerInfo:
    """What ``GET /v1/issuer`` says; for setting a vehicle up, never for verifying."""

    public_key: crypto.PublicKey
    key_id: bytes

    @property
    def text(self) -> str:
        return crypto.public_key_to_text(self.public_key)


class CloudClient:
    """One cloud, at ``url``. Use as ``async with CloudClient(url) as cloud:``
    (or call ``close``); it owns an aiohttp session, made on first use."""

    def __init__(
        self,
        url: str,
        *,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.time,
        issuers: IssuerKeys | None = None,
    ) -> None:
        """``issuers``: the pinned issuer keys that revocation news and signed
        time are verified against when a call does not name its own."""
        if not call_timeout > 0:
            raise ValueError("call_timeout must be above 0")
        self.url = validate_cloud_url(url)
        self.call_timeout = call_timeout
        self.breaker = breaker
        self._clock = clock
        self.issuers: IssuerKeys = dict(issuers or {})
        self._http = CloudHttp(self.url)
        self._delta_route: str | None = None  # "deltas" or "delta", once known
        self.status = "none"  # what the latest operation observed ("up", "http-500", ...)
        self.last_error: CloudUnavailable | None = None

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> CloudClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- operations --------------------------------------------------------------------
    async def issuer(self, *, timeout: float | None = None) -> IssuerInfo:
        """The cloud's issuer key as it states it. Only for pinning at setup
        (trust on first use); every verification uses the pinned key."""
        async with self._operation(timeout):
            data = await self._http.get_json("GET", "/v1/issuer")
            text = text_field(data, "public_key")
            try:
                key = crypto.public_key_from_text(text)
            except ValueError:
                raise invalid_response("the issuer key is not a P-256 key") from None
            if text_field(data, "key_id").lower() != crypto.key_id(key).hex():
                raise invalid_response("the issuer key id does not match its key")
        return IssuerInfo(key, crypto.key_id(key))

    async def request_credential(
        self, keystore: KeyStore, card: VehicleCard, *, timeout: float | None = None
    ) -> credentials.Credential:
        """A fresh credential for this phone on ``card``'s vehicle, verified
        against the issuer key pinned for it: signature, vehicle, holder key,
        role (at most driver) and a window containing now."""
        stored = keystore.vehicle_trust(card.vin)
        trust = VehicleTrust(card, stored.issuer, stored.cloud_url, stored.previous_issuer)
        if trust.issuer is None:
            raise NoTrustedIssuer(card.vin)  # before any network: nothing could be verified
        holder = keystore.private_key
        body = sign_credential_request(holder, card.vehicle_id, int(self._clock()))
        async with self._operation(timeout):
            data = await self._http.get_json("POST", "/v1/credentials", body)
            credential = parse(
                credentials.Credential.from_bytes, base64_field(data, "credential"), "credential"
            )
            check_issued_credential(
                credential, data, trust, crypto.key_id(holder.public_key()), int(self._clock())
            )
        return credential

    async def revocations(
        self, issuers: IssuerKeys | None = None, *, timeout: float | None = None
    ) -> credentials.RevocationList:
        """The issuer's current signed revocation list, verified."""
        issuers = self._pinned(issuers)
        async with self._operation(timeout):
            data = await self._http.get_json("GET", "/v1/revocations", limit=MAX_LIST_ANSWER)
            listed = parse(
                credentials.RevocationList.from_bytes,
                base64_field(data, "revocation_list", MAX_LIST_ANSWER),
                "revocation list",
            )
            verify(credentials.verify_revocation_list, listed, issuers, "revocation list")
            if int_field(data, "version") != listed.version:
                raise CloudLied("the answer's version disagrees with its signed list")
        return listed

    async def revocation_deltas(
        self, since: int, issuers: IssuerKeys | None = None, *, timeout: float | None = None
    ) -> list[credentials.RevocationDelta] | None:
        """Verified deltas forming a chain from version ``since`` onwards
        (empty when there is no news); ``None`` when the cloud serves no deltas.

        Speaks ``GET /v1/revocations/deltas?since=N`` (a list) and, failing
        that, ``GET /v1/revocations/delta?from_version=N`` (one delta a call)."""
        if since < 0:
            raise ValueError("since must be >= 0")
        issuers = self._pinned(issuers)
        async with self._operation(timeout):
            if self._delta_route != "delta":
                status, data = await self._http.request(
                    "GET", f"/v1/revocations/deltas?since={since}", accept=(404, 409)
                )
                if status != 404:
                    self._delta_route = "deltas"
                    return [] if status == 409 else delta_list(data, since, issuers)
            deltas = await self._one_delta_per_call(since, issuers)
            if deltas is None:
                return None
            self._delta_route = "delta"
            return deltas

    async def issuer_rotations(
        self, issuers: IssuerKeys | None = None, *, timeout: float | None = None
    ) -> list[credentials.IssuerRotation]:
        """The issuer rotations that lead on from the pinned keys, oldest first,
        each verified against a key pinned or vouched for by the one before.

        Rotations to keys already known, or signed by keys this phone never
        trusted (from before it pinned its key), are skipped; a bad signature
        by a trusted key is a lie (``CloudLied``)."""
        known = dict(self._pinned(issuers))
        async with self._operation(timeout):
            data = await self._http.get_json("GET", "/v1/issuer/rotations")
            items = data.get("rotations")
            if not isinstance(items, list) or len(items) > MAX_ROTATIONS:
                raise invalid_response("the rotations are not a list")
            chain: list[credentials.IssuerRotation] = []
            for item in items:
                raw = decode_base64(item, "rotation", MAX_ANSWER)
                rotation = parse(credentials.IssuerRotation.from_bytes, raw, "issuer rotation")
                if rotation.new_issuer_key_id in known or rotation.old_issuer_key_id not in known:
                    continue
                verify(credentials.verify_issuer_rotation, rotation, known, "issuer rotation")
                known[rotation.new_issuer_key_id] = rotation.new_public_key
                chain.append(rotation)
        return chain

    async def signed_time(
        self, nonce: bytes, issuers: IssuerKeys | None = None, *, timeout: float | None = None
    ) -> credentials.SignedTime:
        """Issuer-signed time bound to ``nonce`` (the vehicle's), verified."""
        if len(nonce) != credentials.SIGNED_TIME_NONCE_LEN:
            raise ValueError(f"nonce must be {credentials.SIGNED_TIME_NONCE_LEN} bytes")
        issuers = self._pinned(issuers)
        async with self._operation(timeout):
            data = await self._http.get_json("POST", "/v1/time", {"nonce": nonce.hex()})
            signed = parse(
                credentials.SignedTime.from_bytes, base64_field(data, "signed_time"), "signed time"
            )
            try:
                credentials.verify_signed_time(signed, issuers=issuers, expected_nonce=nonce)
            except credentials.SignedTimeRejected:
                raise CloudLied("signed time answers another nonce") from None
            except credentials.CredentialError as exc:
                raise lie("signed time", exc) from None
        return signed

    # --- plumbing ----------------------------------------------------------------------
    def _pinned(self, issuers: IssuerKeys | None) -> IssuerKeys:
        chosen = self.issuers if issuers is None else issuers
        if not chosen:
            # Never the cloud's own /v1/issuer answer: that would verify nothing.
            raise ValueError("no pinned issuer key to verify the answer against")
        return chosen

    @contextlib.asynccontextmanager
    async def _operation(self, timeout: float | None) -> AsyncIterator[None]:
        """Deadline and breaker accounting around one operation."""
        breaker = self.breaker
        if breaker is not None and not breaker.allow():
            error: CloudUnavailable = CircuitOpen(breaker.describe())
            self._observe(error)
            raise error
        seconds = self.call_timeout if timeout is None else max(timeout, 0.001)
        try:
            async with asyncio.timeout(seconds):
                yield
        except TimeoutError:
            error = CloudUnavailable(f"no answer within {_seconds_text(seconds)} s", "blackhole")
            self._observe(error)
            raise error from None
        except CloudUnavailable as exc:
            self._observe(exc)
            raise
        self._observe(None)

    def _observe(self, error: CloudUnavailable | None) -> None:
        self.last_error = error
        if error is None:
            self.status = "up"
            if self.breaker is not None:
                self.breaker.record_success()
            return
        self.status = error.status
        if self.breaker is None or isinstance(error, CircuitOpen):
            return
        if isinstance(error, CloudRefused):
            self.breaker.record_success()  # a definite answer: the cloud is up
        else:
            self.breaker.record_failure(error.reason)

    async def _one_delta_per_call(
        self, since: int, issuers: IssuerKeys
    ) -> list[credentials.RevocationDelta] | None:
        deltas: list[credentials.RevocationDelta] = []
        version = since
        for _ in range(MAX_DELTA_CALLS):
            status, data = await self._http.request(
                "GET", f"/v1/revocations/delta?from_version={version}", accept=(404, 409)
            )
            if status == 404:
                return None if not deltas else deltas
            if status == 409:  # we are ahead of the cloud: nothing to tell
                break
            current = int_field(data, "current_version")
            if data.get("delta") is None:
                break
            delta = parse(
                credentials.RevocationDelta.from_bytes,
                base64_field(data, "delta"),
                "revocation delta",
            )
            verify(credentials.verify_revocation_delta, delta, issuers, "revocation delta")
            if delta.from_version != version:
                raise CloudLied(
                    f"asked for a delta from version {version}, got one from {delta.from_version}"
                )
            deltas.append(delta)
            version = delta.to_version
            if version >= current:
                break
        return deltas


def _seconds_text(seconds: float) -> str:
    """``2``, ``1.5``, ``0.05``: a deadline as people write it (0.999 reads as 1)."""
    if seconds >= 0.1:
        return f"{seconds:.1f}".removesuffix(".0")
    return f"{seconds:.2g}"
