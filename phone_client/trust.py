"""What the phone trusts about one vehicle, and the check every credential passes.

The issuer key comes from setting the vehicle up (`phonekey phone
add-vehicle CARD --issuer p256:...`), never from the cloud at credential
time: a cloud that could name its own key could mint anything.

``check_credential`` is the one gate for credentials: the cloud client runs
it on every answer, the cache on every store and every load. It is the
vehicle's own check (``verify_credential_at_time``) for this phone's key on
this vehicle, so what passes here is what the vehicle will accept, clock
skew aside.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass

from protocol import credentials, crypto
from protocol.card import VehicleCard


@dataclass(frozen=True)
class VehicleTrust:
    """A paired vehicle, with the issuer key and cloud the phone uses for it."""

    card: VehicleCard
    issuer: crypto.PublicKey | None = None
    cloud_url: str | None = None
    previous_issuer: crypto.PublicKey | None = None
    """The issuer key ``issuer`` replaced in a verified rotation: still trusted,
    so credentials it issued keep verifying until they expire (the vehicle
    keeps it too)."""

    @property
    def vin(self) -> str:
        return self.card.vin

    @property
    def issuers(self) -> Mapping[bytes, crypto.PublicKey]:
        """The mapping ``protocol.credentials`` verifies against (empty if none pinned)."""
        if self.issuer is None:
            return {}
        keys = {crypto.key_id(self.issuer): self.issuer}
        if self.previous_issuer is not None:
            keys[crypto.key_id(self.previous_issuer)] = self.previous_issuer
        return keys

    @property
    def issuer_key_id(self) -> bytes | None:
        return None if self.issuer is None else crypto.key_id(self.issuer)


def check_credential(
    credential: credentials.Credential,
    trust: VehicleTrust,
    holder_key_id: bytes,
    *,
    now: int,
    leeway: int = credentials.MAX_LEEWAY,
) -> None:
    """Raise a ``protocol.credentials.CredentialError`` unless ``credential`` is
    signed by the pinned issuer, names this vehicle and this phone's key, grants
    at most the driver role, and is valid at ``now`` (give or take ``leeway``)."""
    credentials.verify_credential_at_time(
        credential,
        issuers=trust.issuers,
        vehicle_id=trust.card.vehicle_id,
        now=now,
        leeway=leeway,
        holder_key_id=holder_key_id,
    )


def utc_text(unix_seconds: int) -> str:
    """``2026-12-04 10:00 UTC``; the raw number when it is not a representable date."""
    try:
        moment = datetime.datetime.fromtimestamp(unix_seconds, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return f"unix time {unix_seconds}"
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def duration_text(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2 h``, ``3 d``: rounded down, for messages."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
