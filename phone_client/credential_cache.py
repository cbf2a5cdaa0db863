"""Cloud credentials and revocation news this phone holds, on disk.

Layout, under ``<phone home>/credentials/`` (directory 0700, files 0600)::

    <VIN>.json           {"format": 1, "vin": VIN, "credential": base64 | null,
                          "vehicle_revocation_version": N | null}
    issuer-<id>.json     {"format": 1, "issuer_key_id": hex,
                          "revocation_list": base64 | null, "deltas": [base64, ...]}

Every file is replaced whole (temp file, fsync, ``os.replace``), under a lock
file so two processes cannot interleave a read-compare-write.

What goes in is verified, and what comes out is verified again against what
the phone trusts *now* (the pinned issuer key, the vehicle's card, the
phone's key), so a tampered, stale or corrupt file can never make the phone
present something the vehicle would refuse. A corrupt file is logged, shown
as ``CacheState.CORRUPT`` and otherwise ignored (the next good credential
replaces it); it never raises.

Ordering: of two credentials for a vehicle the cache keeps the one that ends
later (then the higher serial), so a slow or replayed answer never replaces
a newer credential with an older one. A cloud that wants to end access early
revokes the key on that vehicle; it does not shorten credentials. Revocation versions only go
forward.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from phonekey.durable import write_atomic
from protocol import credentials, crypto
from protocol.card import validate_vin

from .errors import KeyStoreError, NoTrustedIssuer
from .keystore import KeyStore
from .trust import VehicleTrust, check_credential, duration_text, utc_text

logger = logging.getLogger(__name__)

CACHE_DIR: Final = "credentials"
CACHE_FORMAT: Final = 1
MAX_CACHED_DELTAS: Final = 64
MAX_DELTA_CHAIN: Final = 16
_MAX_FILE: Final = 8 * 1024 * 1024
_LOCK_FILE: Final = ".lock"

IssuerKeys = Mapping[bytes, crypto.PublicKey]


class CacheState(enum.Enum):
    NONE = "none"  # nothing cached
    VALID = "valid"  # verifies and is inside its window now
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    UNTRUSTED = "untrusted"  # parses but no longer verifies (e.g. another issuer pinned)
    CORRUPT = "corrupt"  # the file cannot be read or parsed


@dataclass(frozen=True)
class CachedCredential:
    """The cache's view of one vehicle's credential at some moment."""

    vin: str
    state: CacheState
    credential: credentials.Credential | None = None
    detail: str = ""  # why, for CORRUPT and UNTRUSTED

    @property
    def usable(self) -> bool:
        return self.state is CacheState.VALID

    def describe(self, now: int) -> str:
        """One line for people, e.g. ``driver credential #12 valid until ...``."""
        cred = self.credential
        if self.state is CacheState.NONE:
            return "no credential cached"
        if self.state is CacheState.CORRUPT:
            return f"cache file corrupt, ignored ({self.detail})"
        if cred is None or self.state is CacheState.UNTRUSTED:
            return f"cached credential ignored: {self.detail}"
        name = f"{cred.role.name.lower()} credential #{cred.serial}"
        if self.state is CacheState.EXPIRED:
            return (
                f"{name} expired {duration_text(now - cred.not_after)} ago "
                f"({utc_text(cred.not_after)})"
            )
        if self.state is CacheState.NOT_YET_VALID:
            return (
                f"{name} valid from {utc_text(cred.not_before)} "
                f"(in {duration_text(cred.not_before - now)})"
            )
        return (
            f"{name} valid until {utc_text(cred.not_after)} "
            f"({duration_text(cred.not_after - now)} left)"
        )


@dataclass(frozen=True)
class CacheProblem:
    path: Path
    detail: str


class CredentialCache:
    """The cache of the phone whose key store is ``keystore``."""

    def __init__(self, keystore: KeyStore) -> None:
        self.keystore = keystore
        self.directory = keystore.home / CACHE_DIR
        self.problems: list[CacheProblem] = []  # corrupt files met by this instance

    # --- credentials -------------------------------------------------------------------
    def status(self, vin: str, now: int) -> CachedCredential:
        """What is cached for ``vin`` and whether it is usable at ``now``."""
        vin = validate_vin(vin)
        path = self._vehicle_path(vin)
        try:
            raw = self._read(path).get("credential")
        except _Corrupt as exc:
            return CachedCredential(vin, CacheState.CORRUPT, detail=str(exc))
        if raw is None:
            return CachedCredential(vin, CacheState.NONE)
        try:
            credential = credentials.Credential.from_bytes(_unb64(raw))
        except (_Corrupt, credentials.CredentialMalformed) as exc:
            problem = self._problem(path, f"bad credential: {exc}")
            return CachedCredential(vin, CacheState.CORRUPT, detail=str(problem))
        return self._classify(vin, credential, now)

    def best(self, vin: str, now: int) -> credentials.Credential | None:
        """The cached credential for ``vin`` if it is valid at ``now``, else None."""
        status = self.status(vin, now)
        return status.credential if status.usable else None

    def store(self, vin: str, credential: credentials.Credential, now: int) -> bool:
        """Cache ``credential`` for ``vin`` unless the one held is newer.

        Raises a ``protocol.credentials.CredentialError`` if it does not verify
        (signature, vehicle, holder, role, window) and ``NoTrustedIssuer`` if
        no issuer key is pinned. Returns whether it was stored."""
        trust, holder = self._trust(vin)
        check_credential(credential, trust, holder, now=now)
        with self._locked():
            current = self.status(vin, now)
            held = current.credential
            if held is not None and current.state in (
                CacheState.VALID,
                CacheState.EXPIRED,
                CacheState.NOT_YET_VALID,
            ):
                if (held.not_after, held.serial) >= (credential.not_after, credential.serial):
                    return False
            entry = self._read_quietly(self._vehicle_path(trust.vin))
            entry["credential"] = _b64(credential.to_bytes())
            self._write(self._vehicle_path(trust.vin), trust.vin, entry)
        return True

    def remove(self, vin: str) -> None:
        """Forget everything cached for ``vin``."""
        with self._locked(), contextlib.suppress(FileNotFoundError):
            self._vehicle_path(validate_vin(vin)).unlink()

    # --- what the vehicle told us ---------------------------------------------------------
    def vehicle_revocation_version(self, vin: str) -> int | None:
        """The revocation list version ``vin`` last reported (unauthenticated hint)."""
        value = self._read_quietly(self._vehicle_path(validate_vin(vin))).get(
            "vehicle_revocation_version"
        )
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def record_vehicle_revocation_version(self, vin: str, version: int) -> None:
        vin = validate_vin(vin)
        with self._locked():
            entry = self._read_quietly(self._vehicle_path(vin))
            if entry.get("vehicle_revocation_version") == version:
                return
            entry["vehicle_revocation_version"] = version
            self._write(self._vehicle_path(vin), vin, entry)

    # --- revocation news ----------------------------------------------------------------------
    def revocation_list(
        self, issuer_key_id: bytes, issuers: IssuerKeys
    ) -> credentials.RevocationList | None:
        """The newest cached list of this issuer that still verifies."""
        raw = self._read_quietly(self._issuer_path(issuer_key_id)).get("revocation_list")
        if raw is None:
            return None
        try:
            listed = credentials.RevocationList.from_bytes(_unb64(raw))
            credentials.verify_revocation_list(listed, issuers=issuers)
        except (credentials.CredentialError, _Corrupt) as exc:
            self._problem(self._issuer_path(issuer_key_id), f"revocation list: {exc}")
            return None
        return listed

    def store_revocation_list(
        self, listed: credentials.RevocationList, issuers: IssuerKeys
    ) -> bool:
        """Cache a verified list if it is newer than the one held; raises
        ``CredentialError`` if it does not verify."""
        credentials.verify_revocation_list(listed, issuers=issuers)
        path = self._issuer_path(listed.issuer_key_id)
        with self._locked():
            held = self.revocation_list(listed.issuer_key_id, issuers)
            if held is not None and held.version >= listed.version:
                return False
            entry = self._read_quietly(path)
            entry["revocation_list"] = _b64(listed.to_bytes())
            self._write(path, None, entry, issuer=listed.issuer_key_id)
        return True

    def deltas(
        self, issuer_key_id: bytes, issuers: IssuerKeys
    ) -> list[credentials.RevocationDelta]:
        """The cached deltas of this issuer that still verify."""
        items = self._read_quietly(self._issuer_path(issuer_key_id)).get("deltas", [])
        found: list[credentials.RevocationDelta] = []
        for item in items if isinstance(items, list) else []:
            try:
                delta = credentials.RevocationDelta.from_bytes(_unb64(item))
                credentials.verify_revocation_delta(delta, issuers=issuers)
            except (credentials.CredentialError, _Corrupt) as exc:
                self._problem(self._issuer_path(issuer_key_id), f"revocation delta: {exc}")
                continue
            if delta.issuer_key_id == issuer_key_id:
                found.append(delta)
        return found

    def store_deltas(self, deltas: list[credentials.RevocationDelta], issuers: IssuerKeys) -> int:
        """Add verified deltas; returns how many were new. Raises
        ``CredentialError`` (storing none) if any does not verify."""
        for delta in deltas:
            credentials.verify_revocation_delta(delta, issuers=issuers)
        added = 0
        by_issuer: dict[bytes, list[credentials.RevocationDelta]] = {}
        for delta in deltas:
            by_issuer.setdefault(delta.issuer_key_id, []).append(delta)
        with self._locked():
            for issuer_key_id, news in by_issuer.items():
                held = {
                    (d.from_version, d.to_version): d for d in self.deltas(issuer_key_id, issuers)
                }
                for delta in news:
                    if (delta.from_version, delta.to_version) not in held:
                        held[(delta.from_version, delta.to_version)] = delta
                        added += 1
                # Keep the newest: old deltas only help vehicles that are far behind.
                kept = sorted(held.values(), key=lambda d: (d.to_version, d.from_version))
                kept = kept[-MAX_CACHED_DELTAS:]
                path = self._issuer_path(issuer_key_id)
                entry = self._read_quietly(path)
                entry["deltas"] = [_b64(d.to_bytes()) for d in kept]
                self._write(path, None, entry, issuer=issuer_key_id)
        return added

    def deltas_from(
        self, issuer_key_id: bytes, version: int, issuers: IssuerKeys
    ) -> list[credentials.RevocationDelta]:
        """A chain of cached deltas taking a vehicle at ``version`` as far as
        the cache knows (empty if none starts there)."""
        starting: dict[int, credentials.RevocationDelta] = {}
        for delta in self.deltas(issuer_key_id, issuers):
            best = starting.get(delta.from_version)
            if best is None or delta.to_version > best.to_version:
                starting[delta.from_version] = delta
        chain: list[credentials.RevocationDelta] = []
        while len(chain) < MAX_DELTA_CHAIN and (step := starting.get(version)) is not None:
            chain.append(step)
            version = step.to_version
        return chain

    def revocation_version(self, issuer_key_id: bytes, issuers: IssuerKeys) -> int:
        """The newest revocation version the cache knows of for this issuer."""
        versions = [d.to_version for d in self.deltas(issuer_key_id, issuers)]
        listed = self.revocation_list(issuer_key_id, issuers)
        if listed is not None:
            versions.append(listed.version)
        return max(versions, default=0)

    # --- internals -----------------------------------------------------------------------------
    def _trust(self, vin: str) -> tuple[VehicleTrust, bytes]:
        trust = self.keystore.vehicle_trust(vin)
        if trust.issuer is None:
            raise NoTrustedIssuer(trust.vin)
        return trust, self.keystore.key_id()

    def _classify(self, vin: str, credential: credentials.Credential, now: int) -> CachedCredential:
        try:
            trust, holder = self._trust(vin)
        except KeyStoreError as exc:
            return CachedCredential(vin, CacheState.UNTRUSTED, credential, str(exc))
        try:
            # No leeway: present only what is valid by our own clock.
            check_credential(credential, trust, holder, now=now, leeway=0)
            return CachedCredential(vin, CacheState.VALID, credential)
        except credentials.CredentialExpired:
            state, inside = CacheState.EXPIRED, credential.not_after
        except credentials.CredentialNotYetValid:
            state, inside = CacheState.NOT_YET_VALID, credential.not_before
        except credentials.CredentialError as exc:
            return CachedCredential(vin, CacheState.UNTRUSTED, credential, str(exc))
        try:  # everything but the window must still hold
            check_credential(credential, trust, holder, now=inside, leeway=0)
        except credentials.CredentialError as exc:
            return CachedCredential(vin, CacheState.UNTRUSTED, credential, str(exc))
        return CachedCredential(vin, state, credential)

    def _vehicle_path(self, vin: str) -> Path:
        return self.directory / f"{vin}.json"

    def _issuer_path(self, issuer_key_id: bytes) -> Path:
        return self.directory / f"issuer-{issuer_key_id.hex()}.json"

    def _read(self, path: Path) -> dict[str, Any]:
        """The file's object; ``{}`` if absent; ``_Corrupt`` (logged) if unusable."""
        try:
            with path.open("rb") as f:
                data = f.read(_MAX_FILE + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise self._problem(path, f"unreadable: {exc.strerror}") from None
        if len(data) > _MAX_FILE:
            raise self._problem(path, "too large")
        try:
            entry = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError):
            raise self._problem(path, "not JSON") from None
        if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT:
            raise self._problem(path, f"not a format-{CACHE_FORMAT} cache object")
        return entry

    def _read_quietly(self, path: Path) -> dict[str, Any]:
        """Like ``_read`` but a corrupt file reads as empty (it gets replaced)."""
        try:
            return self._read(path)
        except _Corrupt:
            return {}

    def _write(
        self,
        path: Path,
        vin: str | None,
        entry: dict[str, Any],
        *,
        issuer: bytes | None = None,
    ) -> None:
        entry["format"] = CACHE_FORMAT
        if vin is not None:
            entry["vin"] = vin
        if issuer is not None:
            entry["issuer_key_id"] = issuer.hex()
        data = json.dumps(entry, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        try:
            write_atomic(path, data)
        except OSError as exc:
            raise KeyStoreError(f"cannot write {path}: {exc.strerror}") from None

    def _problem(self, path: Path, detail: str) -> _Corrupt:
        text = f"{path.name}: {detail}"
        if all(p.path != path or p.detail != detail for p in self.problems):
            logger.warning("ignoring corrupt credential cache file %s: %s", path, detail)
            self.problems.append(CacheProblem(path, detail))
        return _Corrupt(text)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive across processes (POSIX flock); a plain section elsewhere."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KeyStoreError(f"cannot use {self.directory}: {exc.strerror}") from None
        try:
            try:
                import fcntl
            except ImportError:  # not POSIX
                yield
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class _Corrupt(Exception):
    """A cache file that cannot be used; already logged."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object) -> bytes:
    if not isinstance(value, str):
        raise _Corrupt("not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _Corrupt("not base64") from None
