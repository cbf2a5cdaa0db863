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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, TypeVar

import aiohttp

from protocol import credentials, crypto
from protocol.card import VehicleCard
from protocol.cloud_request_auth import sign_credential_request

from .circuit_breaker import CircuitBreaker
from .errors import (
    CircuitOpen,
    CloudLied,
    CloudRefused,
    CloudUnavailable,
    NoTrustedIssuer,
)
from .keystore import KeyStore, validate_cloud_url
from .trust import VehicleTrust, check_credential, utc_text

DEFAULT_CALL_TIMEOUT: Final = 2.0
MAX_ANSWER: Final = 64 * 1024  # every answer but the full revocation list is < 1 KiB
MAX_LIST_ANSWER: Final = 4 * 1024 * 1024  # 100 000 revocation ids in base64, and some
MAX_DELTA_CALLS: Final = 8  # one-delta-per-call cloud: at most 8 x 16 versions per sync
MAX_ROTATIONS: Final = 64  # issuer rotations a phone reads in one answer
_MAX_ERROR_TEXT: Final = 200
_UNPRINTABLE: Final = re.compile(r"[^\x20-\x7e]")

IssuerKeys = Mapping[bytes, crypto.PublicKey]
_T = TypeVar("_T")


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
        self._session: aiohttp.ClientSession | None = None
        self._delta_route: str | None = None  # "deltas" or "delta", once known
        self.status = "none"  # what the latest operation observed ("up", "http-500", ...)
        self.last_error: CloudUnavailable | None = None

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

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
            data = await self._get_json("GET", "/v1/issuer")
            text = _text(data, "public_key")
            try:
                key = crypto.public_key_from_text(text)
            except ValueError:
                raise _garbage("the issuer key is not a P-256 key") from None
            if _text(data, "key_id").lower() != crypto.key_id(key).hex():
                raise _garbage("the issuer key id does not match its key")
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
            data = await self._get_json("POST", "/v1/credentials", body)
            credential = _parse(
                credentials.Credential.from_bytes, _base64(data, "credential"), "credential"
            )
            _check_issued_credential(
                credential, data, trust, crypto.key_id(holder.public_key()), int(self._clock())
            )
        return credential

    async def revocations(
        self, issuers: IssuerKeys | None = None, *, timeout: float | None = None
    ) -> credentials.RevocationList:
        """The issuer's current signed revocation list, verified."""
        issuers = self._pinned(issuers)
        async with self._operation(timeout):
            data = await self._get_json("GET", "/v1/revocations", limit=MAX_LIST_ANSWER)
            listed = _parse(
                credentials.RevocationList.from_bytes,
                _base64(data, "revocation_list", MAX_LIST_ANSWER),
                "revocation list",
            )
            _verify(credentials.verify_revocation_list, listed, issuers, "revocation list")
            if _int(data, "version") != listed.version:
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
                status, data = await self._request(
                    "GET", f"/v1/revocations/deltas?since={since}", accept=(404, 409)
                )
                if status != 404:
                    self._delta_route = "deltas"
                    return [] if status == 409 else _delta_list(data, since, issuers)
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
            data = await self._get_json("GET", "/v1/issuer/rotations")
            items = data.get("rotations")
            if not isinstance(items, list) or len(items) > MAX_ROTATIONS:
                raise _garbage("the rotations are not a list")
            chain: list[credentials.IssuerRotation] = []
            for item in items:
                raw = _decode_base64(item, "rotation", MAX_ANSWER)
                rotation = _parse(credentials.IssuerRotation.from_bytes, raw, "issuer rotation")
                if rotation.new_issuer_key_id in known or rotation.old_issuer_key_id not in known:
                    continue
                _verify(credentials.verify_issuer_rotation, rotation, known, "issuer rotation")
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
            data = await self._get_json("POST", "/v1/time", {"nonce": nonce.hex()})
            signed = _parse(
                credentials.SignedTime.from_bytes, _base64(data, "signed_time"), "signed time"
            )
            try:
                credentials.verify_signed_time(signed, issuers=issuers, expected_nonce=nonce)
            except credentials.SignedTimeRejected:
                raise CloudLied("signed time answers another nonce") from None
            except credentials.CredentialError as exc:
                raise _lie("signed time", exc) from None
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

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No aiohttp timeout: _operation's deadline covers connect, send and read.
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def _get_json(
        self, method: str, path: str, body: object = None, *, limit: int = MAX_ANSWER
    ) -> dict[str, Any]:
        return (await self._request(method, path, body, limit=limit))[1]

    async def _request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        accept: tuple[int, ...] = (),
        limit: int = MAX_ANSWER,
    ) -> tuple[int, dict[str, Any]]:
        """Status and JSON object of a 2xx answer, or of one whose status is in
        ``accept`` (``{}`` if that one is not JSON); anything else raises."""
        try:
            async with self._http().request(
                method, self.url + path, json=body, allow_redirects=False
            ) as response:
                status = response.status
                raw = await _read_limited(response, limit)
        except aiohttp.ClientConnectorError as exc:
            raise CloudUnavailable(f"cannot connect: {_os_reason(exc)}", "unreachable") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            # Dropped mid-answer: a reset as far as anyone can tell.
            raise CloudUnavailable("connection reset", "reset") from exc
        except aiohttp.ClientOSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
                raise CloudUnavailable("connection reset", "reset") from None
            raise CloudUnavailable(f"network error: {_os_reason(exc)}", "unreachable") from None
        except aiohttp.ClientResponseError as exc:  # not HTTP at all
            raise _garbage(f"not HTTP: {exc.message}") from None
        except aiohttp.ClientError as exc:
            raise CloudUnavailable(f"network error: {type(exc).__name__}", "unreachable") from None
        if 200 <= status < 300:
            return status, _json_object(raw)
        if status in accept:
            try:
                return status, _json_object(raw)
            except CloudUnavailable:
                return status, {}
        if 400 <= status < 500 and status not in (408, 429):
            raise CloudRefused(f"HTTP {status}: {_error_text(raw)}", status)
        raise CloudUnavailable(f"HTTP {status}", f"http-{status}")

    async def _one_delta_per_call(
        self, since: int, issuers: IssuerKeys
    ) -> list[credentials.RevocationDelta] | None:
        deltas: list[credentials.RevocationDelta] = []
        version = since
        for _ in range(MAX_DELTA_CALLS):
            status, data = await self._request(
                "GET", f"/v1/revocations/delta?from_version={version}", accept=(404, 409)
            )
            if status == 404:
                return None if not deltas else deltas
            if status == 409:  # we are ahead of the cloud: nothing to tell
                break
            current = _int(data, "current_version")
            if data.get("delta") is None:
                break
            delta = _parse(
                credentials.RevocationDelta.from_bytes, _base64(data, "delta"), "revocation delta"
            )
            _verify(credentials.verify_revocation_delta, delta, issuers, "revocation delta")
            if delta.from_version != version:
                raise CloudLied(
                    f"asked for a delta from version {version}, got one from {delta.from_version}"
                )
            deltas.append(delta)
            version = delta.to_version
            if version >= current:
                break
        return deltas


# --- answer checking -------------------------------------------------------------------
def _check_issued_credential(
    credential: credentials.Credential,
    data: dict[str, Any],
    trust: VehicleTrust,
    holder_key_id: bytes,
    now: int,
) -> None:
    try:
        check_credential(credential, trust, holder_key_id, now=now)
    except credentials.CredentialWrongVehicle:
        raise CloudLied("credential for another vehicle") from None
    except credentials.CredentialWrongHolder:
        raise CloudLied("credential for another phone's key") from None
    except credentials.CredentialRoleNotAllowed as exc:
        raise CloudLied(f"credential with a role a cloud may not grant ({exc})") from None
    except (credentials.CredentialExpired, credentials.CredentialNotYetValid):
        window = f"{utc_text(credential.not_before)} to {utc_text(credential.not_after)}"
        raise CloudLied(f"credential not valid now (valid {window})") from None
    except credentials.CredentialError as exc:
        raise _lie("credential", exc) from None
    claimed = (
        _text(data, "role"),
        _int(data, "serial"),
        _int(data, "not_before"),
        _int(data, "not_after"),
    )
    signed = (
        credential.role.name.lower(),
        credential.serial,
        credential.not_before,
        credential.not_after,
    )
    if claimed != signed:
        raise CloudLied("the answer's fields disagree with its signed credential")


def _delta_list(
    data: dict[str, Any], since: int, issuers: IssuerKeys
) -> list[credentials.RevocationDelta]:
    items = data.get("deltas")
    if not isinstance(items, list) or len(items) > 1024:
        raise _garbage("'deltas' is not a list")
    _int(data, "version")
    deltas: list[credentials.RevocationDelta] = []
    version = since
    for item in items:
        raw = _decode_base64(item, "deltas", MAX_ANSWER)
        delta = _parse(credentials.RevocationDelta.from_bytes, raw, "revocation delta")
        _verify(credentials.verify_revocation_delta, delta, issuers, "revocation delta")
        if delta.from_version != version:
            raise CloudLied(f"the deltas do not chain from version {since}")
        deltas.append(delta)
        version = delta.to_version
    return deltas


def _verify(check: Callable[..., None], obj: object, issuers: IssuerKeys, what: str) -> None:
    try:
        check(obj, issuers=issuers)
    except credentials.CredentialError as exc:
        raise _lie(what, exc) from None


def _lie(what: str, exc: credentials.CredentialError) -> CloudLied:
    if isinstance(exc, credentials.CredentialSignatureInvalid):
        return CloudLied(f"bad signature on the {what}", "bad-signature")
    if isinstance(exc, credentials.UnknownIssuer):
        return CloudLied(
            f"{what} signed by an issuer key this phone does not trust", "bad-signature"
        )
    return CloudLied(f"{what} refused: {exc}")


# --- decoding --------------------------------------------------------------------------
async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    if response.content_length is not None and response.content_length > limit:
        raise _garbage(f"larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise _garbage(f"larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise _garbage("not JSON") from None
    if not isinstance(data, dict):
        raise _garbage("not a JSON object")
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= 1024:
        raise _garbage(f"no text field {name!r}")
    return value


def _int(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
        raise _garbage(f"no integer field {name!r}")
    return value


def _base64(data: dict[str, Any], name: str, limit: int = MAX_ANSWER) -> bytes:
    return _decode_base64(data.get(name), name, limit)


def _decode_base64(value: object, name: str, limit: int) -> bytes:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise _garbage(f"no base64 field {name!r}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _garbage(f"{name!r} is not base64") from None


def _parse(parser: Callable[[bytes], _T], raw: bytes, what: str) -> _T:
    try:
        return parser(raw)
    except credentials.CredentialMalformed as exc:
        raise _garbage(f"malformed {what}: {exc}") from None


def _seconds_text(seconds: float) -> str:
    """``2``, ``1.5``, ``0.05``: a deadline as people write it (0.999 reads as 1)."""
    if seconds >= 0.1:
        return f"{seconds:.1f}".removesuffix(".0")
    return f"{seconds:.2g}"


def _garbage(what: str) -> CloudUnavailable:
    return CloudUnavailable(f"invalid response ({what})", "garbage")


def _error_text(raw: bytes) -> str:
    """The cloud's one-sentence reason, made safe to print."""
    try:
        message = json.loads(raw.decode("utf-8")).get("error")
    except (ValueError, AttributeError, RecursionError):
        message = None
    if not isinstance(message, str) or not message:
        return "no reason given"
    return _UNPRINTABLE.sub("?", message)[:_MAX_ERROR_TEXT]


def _os_reason(exc: OSError) -> str:
    inner = getattr(exc, "os_error", None)
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror.lower()
    if exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__
