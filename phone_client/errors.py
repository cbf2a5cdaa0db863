"""Exceptions raised by phone_client.

Each one's text is the one-line reason the CLI prints, so it says what went
wrong and, where there is something to do, what to do. Protocol outcomes
(``protocol.VehicleRejected`` subclasses, ``protocol.RemoteProtocolError``)
are not wrapped: they propagate as the protocol core raised them, so callers
can tell "unknown key" from "forged response" by type.
"""

from __future__ import annotations


class PhoneError(Exception):
    """Base class of every error raised by phone_client."""


class KeyStoreError(PhoneError):
    """The phone's local key store is missing, unreadable, unsafe or corrupt."""


class UnknownVehicle(KeyStoreError):
    """The phone holds no card for the vehicle it was asked to talk to."""

    def __init__(self, vin: str) -> None:
        super().__init__(
            f"this phone holds no key for vehicle {vin}; "
            "add its card with `phonekey phone add-vehicle`"
        )
        self.vin = vin


class AdapterUnavailable(PhoneError):
    """No usable Bluetooth adapter: the OS stack is absent or refused to scan."""


class VehicleNotFound(PhoneError):
    """No advertisement of the wanted vehicle arrived before the timeout."""


class CommandTimeout(PhoneError):
    """The vehicle did not answer (connect, challenge or response) in time."""


class ConnectionLost(PhoneError):
    """The link dropped while the phone was waiting for the vehicle."""


class VehicleWentAway(ConnectionLost):
    """The link timed out (HCI 0x08): the vehicle stopped answering without a word."""

    def __init__(self, vin: str) -> None:
        super().__init__(
            f"vehicle {vin} went away (link supervision timeout: out of range, switched "
            "off or crashed); try again once it is back"
        )
        self.vin = vin


class BluetoothError(PhoneError):
    """The Bluetooth stack failed an operation (e.g. the GATT service is missing)."""


class NoTrustedIssuer(KeyStoreError):
    """The phone has no issuer key pinned for the vehicle, so it cannot check credentials."""

    def __init__(self, vin: str) -> None:
        super().__init__(
            f"no credential issuer key is pinned for vehicle {vin}; add it with "
            "`phonekey phone add-vehicle CARD --issuer p256:...`"
        )
        self.vin = vin


# --- the credential cloud -------------------------------------------------------------
class CloudUnavailable(PhoneError):
    """The cloud gave us nothing usable. Base of every cloud failure.

    ``reason`` is short and human ("HTTP 500", "no answer within 2 s");
    ``status`` is the observed condition as one token ("http-500",
    "blackhole", "reset", "unreachable", "garbage", "bad-signature",
    "lying", "refused", "circuit-open"), what ``CommandOutcome.cloud`` shows.
    """

    def __init__(self, reason: str, status: str = "unreachable", *, text: str = "") -> None:
        super().__init__(text or f"cloud unreachable ({reason})")
        self.reason = reason
        self.status = status


class CloudLied(CloudUnavailable):
    """The answer parsed, but the signed object in it fails verification: bad
    signature, unknown issuer, or another vehicle, holder, role or nonce."""

    def __init__(self, reason: str, status: str = "lying") -> None:
        super().__init__(reason, status, text=f"cloud answer refused ({reason})")


class CloudRefused(CloudUnavailable):
    """The cloud is up and said no (a 4xx), e.g. the key is not enrolled or is revoked.

    Not a sign of an outage: it does not count towards the circuit breaker."""

    def __init__(self, reason: str, http_status: int) -> None:
        super().__init__(reason, "refused", text=f"cloud refused: {reason}")
        self.http_status = http_status


class CircuitOpen(CloudUnavailable):
    """The cloud was not called: it failed too often lately (see ``CircuitBreaker``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, "circuit-open", text=f"cloud skipped ({reason})")


class KeyUnavailable(PhoneError):
    """The vehicle refused the whitelist path and no valid credential could be had.

    The text gives both reasons and what to do; ``rejection`` is the vehicle's
    refusal (also the ``__cause__``) and ``cloud_error`` the cloud's, if any."""

    def __init__(
        self, message: str, rejection: Exception, cloud_error: CloudUnavailable | None
    ) -> None:
        super().__init__(message)
        self.rejection = rejection
        self.cloud_error = cloud_error


# --- offline shares and whitelist management ---------------------------------------------
class ShareTextError(PhoneError):
    """A share text (``phonekey-share:1:...``) that cannot be used by this phone:
    malformed, for another key or vehicle, expired, or conflicting with a held card."""


class UnknownShare(KeyStoreError):
    """This phone holds no record of the share it was asked about."""


class ManageRefused(PhoneError):
    """The vehicle refused a whitelist operation under its MAC (authenticated):
    nothing changed on the vehicle but the counter. ``result`` is its code."""

    def __init__(self, message: str, result: object) -> None:
        super().__init__(message)
        self.result = result


class NotOwner(ManageRefused):
    """FORBIDDEN: only an owner key manages keys and shares."""


class KeyNotOnVehicle(ManageRefused):
    """NOT_FOUND: the key to remove is not on the vehicle's whitelist."""


class LastOwner(ManageRefused):
    """LAST_OWNER: the vehicle would be left without an owner."""


class ManageRejected(PhoneError):
    """The vehicle refused a whitelist operation before authenticating it
    (e.g. its enrollment window is closed); the protocol's refusal is the cause."""


class BadArgument(PhoneError):
    """A command-line value that parses but cannot be used (e.g. a share ending in the past)."""
