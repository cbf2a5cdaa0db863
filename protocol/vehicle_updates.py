"""Issuer-signed news a phone carries to the vehicle: revocation deltas,
signed time and issuer rotations (docs/credentials.md section 3)."""

from __future__ import annotations

from functools import partial

from . import credentials
from .errors import UpdateRefused
from .events import ClockCorrected, IssuerRotated, RevocationsUpdated
from .store import CredentialTrust, StateChange
from .vehicle_base import TIME_NONCE_LIFETIME, StorageFailure, VehicleBase


class UpdateHandlers(VehicleBase):
    def _apply_revocation_update(self, data: bytes) -> None:
        trust = self._require_trust()
        try:
            delta = credentials.RevocationDelta.from_bytes(data)
        except credentials.CredentialError as exc:
            raise UpdateRefused(f"revocation delta refused: {exc}") from None
        current = self._read_store(trust.revocation_version)
        # Old news or a gap is ignored before any signature work, so strangers
        # cannot make the vehicle verify deltas it would not apply.
        if delta.from_version == current:
            self.crypto_ops["ecdsa_verify"] += 1
            try:
                credentials.verify_revocation_delta(delta, issuers=self._issuers())
            except credentials.CredentialError as exc:
                raise UpdateRefused(f"revocation delta refused: {exc}") from None
            try:
                trust.apply_revocations(delta.to_version, delta.added)
            except Exception as exc:
                raise StorageFailure(f"could not persist revocations: {exc}") from exc
            self._wipe_revoked_fast_keys(frozenset(delta.added))
            self._events.append(RevocationsUpdated(current, delta.to_version, len(delta.added)))
        self._send_status()

    def _wipe_revoked_fast_keys(self, added: frozenset[bytes]) -> None:
        """A revoked whitelisted key loses its fast-path key at once (the fast
        path also checks revocation on every request, so a power cut between
        the two commits cannot let it through)."""
        vehicle_id = self._identity.vehicle_id
        doomed: list[bytes] = []
        for entry in self._read_store(self._store.keys):
            key_id = entry.key_id
            if credentials.revocation_id(vehicle_id, key_id) not in added:
                continue
            if self._read_store(partial(self._store.fast_key, key_id)) is not None:
                doomed.append(key_id)
        if doomed:
            self._commit(StateChange(drop_fast_keys=tuple(doomed)), "the fast-key wipe")

    def _apply_time_update(self, data: bytes) -> None:
        trust = self._require_trust()
        pending, self._time_nonce = self._time_nonce, None
        try:
            signed = credentials.SignedTime.from_bytes(data)
            if pending is None or self._clock() - pending[1] > TIME_NONCE_LIFETIME:
                raise credentials.SignedTimeRejected("no fresh time nonce outstanding")
            self.crypto_ops["ecdsa_verify"] += 1
            issuer_time = credentials.verify_signed_time(
                signed, issuers=self._issuers(), expected_nonce=pending[0]
            )
        except credentials.CredentialError as exc:
            raise UpdateRefused(f"signed time refused: {exc}") from None
        before = self._read_store(trust.now)
        try:
            trust.correct_clock(issuer_time)
        except Exception as exc:
            raise StorageFailure(f"could not persist the clock: {exc}") from exc
        self._events.append(ClockCorrected(before, issuer_time))
        self._send_status()

    def _apply_issuer_update(self, data: bytes) -> None:
        """Trust the new issuer key of a rotation signed by a trusted issuer key.

        The signer stays trusted as the second key, so credentials it issued
        keep working until they expire. A rotation to a key already trusted is
        old news: ignored before any signature work, without an error."""
        trust = self._require_trust()
        try:
            rotation = credentials.IssuerRotation.from_bytes(data)
        except credentials.CredentialError as exc:
            raise UpdateRefused(f"issuer rotation refused: {exc}") from None
        issuers = self._issuers()
        if rotation.new_issuer_key_id not in issuers:
            self.crypto_ops["ecdsa_verify"] += 1
            try:
                credentials.verify_issuer_rotation(rotation, issuers=issuers)
            except credentials.CredentialError as exc:
                raise UpdateRefused(f"issuer rotation refused: {exc}") from None
            try:
                trust.rotate_issuer(rotation.old_issuer_key_id, rotation.new_public_key)
            except Exception as exc:
                raise StorageFailure(f"could not persist the issuer rotation: {exc}") from exc
            self._events.append(
                IssuerRotated(rotation.old_issuer_key_id, rotation.new_issuer_key_id)
            )
        self._send_status()

    def _require_trust(self) -> CredentialTrust:
        if self._trust is None:
            raise UpdateRefused("this vehicle trusts no issuer")
        return self._trust
