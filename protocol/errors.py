"""Exception hierarchy of the sans-IO core.

As in h11: ``LocalProtocolError`` means *we* were asked to do something the
protocol does not allow; ``RemoteProtocolError`` means the peer sent something
invalid. Both derive from ``ProtocolError``, so callers that only care that an
exchange failed catch one class. Every decoding failure of untrusted bytes
raises a ``ProtocolError`` subclass and nothing else.

Phone-side outcomes that the vehicle reported are ``VehicleRejected``
subclasses, one per wire ``ResultCode``, so the phone's callers can react to
"unknown key" differently from "bad signature".
"""

from __future__ import annotations

from .types import ResultCode


class ProtocolError(Exception):
    """Base of every error raised by the protocol core."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol does not allow in this state."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or a message that the protocol does not allow."""


# --- decoding ---------------------------------------------------------------
class DecodeError(RemoteProtocolError):
    """Bytes that are not a valid message."""


class TruncatedMessage(DecodeError):
    pass


class TrailingBytes(DecodeError):
    pass


class UnknownMessageType(DecodeError):
    pass


class UnsupportedWireVersion(DecodeError):
    pass


class MessageTooLarge(DecodeError):
    pass


class FieldValueError(DecodeError):
    """A field decoded but holds a value the protocol does not define."""


class ReassemblyError(RemoteProtocolError):
    """Fragments that do not form a message: out of order, too big or too slow."""


class ReassemblyTimeout(ReassemblyError):
    pass


# --- handshake, detected by either side ------------------------------------------
class HandshakeError(RemoteProtocolError):
    """The peer's message decoded but fails a protocol check."""

    code: ResultCode = ResultCode.INTERNAL


class UnexpectedMessage(HandshakeError):
    code = ResultCode.UNEXPECTED_MESSAGE


class UnsupportedVersion(HandshakeError):
    code = ResultCode.UNSUPPORTED_VERSION


class VersionMismatch(HandshakeError):
    """The version offer was altered on the way (stripped or lowered)."""

    code = ResultCode.VERSION_MISMATCH


class UnknownChallenge(HandshakeError):
    code = ResultCode.UNKNOWN_CHALLENGE


class ChallengeExpired(HandshakeError):
    code = ResultCode.CHALLENGE_EXPIRED


class UnknownKey(HandshakeError):
    code = ResultCode.UNKNOWN_KEY


class StaleCounter(HandshakeError):
    code = ResultCode.STALE_COUNTER


class BadSignature(HandshakeError):
    code = ResultCode.BAD_SIGNATURE


class BadPublicKey(HandshakeError):
    code = ResultCode.BAD_KEY


class CredentialRefused(HandshakeError):
    """A presented credential does not authorise its holder here and now."""

    code = ResultCode.CREDENTIAL_INVALID


class CredentialRefusedExpired(CredentialRefused):
    code = ResultCode.CREDENTIAL_EXPIRED


class CredentialRefusedNotYetValid(CredentialRefused):
    code = ResultCode.CREDENTIAL_NOT_YET_VALID


class CredentialRefusedRevoked(CredentialRefused):
    code = ResultCode.CREDENTIAL_REVOKED


class UpdateRefused(HandshakeError):
    """A revocation delta or signed time that fails verification."""

    code = ResultCode.UPDATE_REJECTED


class EnrollmentClosed(HandshakeError):
    """ENROLL from a key not on the whitelist while no enrollment window is open."""

    code = ResultCode.ENROLLMENT_CLOSED


class BadManageArgument(HandshakeError):
    """A manage argument that does not fit its operation (e.g. an invalid point)."""

    code = ResultCode.BAD_ARGUMENT


class ShareRefused(HandshakeError):
    """A presented share does not authorise its holder (signer, vehicle, holder, role)."""

    code = ResultCode.SHARE_INVALID


class ShareRefusedOutsideWindow(ShareRefused):
    code = ResultCode.SHARE_OUTSIDE_WINDOW


class ShareRefusedRevoked(ShareRefused):
    code = ResultCode.SHARE_REVOKED


class FastPathFailure(HandshakeError):
    """A fast-path request the vehicle refuses; NOT fatal: the vehicle answers
    FastPathRefused with ``code`` as the reason and issues a new challenge."""

    def __init__(self, code: ResultCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class WrongVehicle(HandshakeError):
    """The challenge names a vehicle other than the one the phone expects."""


class BadResponseMac(HandshakeError):
    """A response that the genuine vehicle did not produce for our request."""


class NoCommonVersion(HandshakeError):
    """The vehicle offers no protocol version this phone speaks."""


# --- outcomes the vehicle reported to the phone ---------------------------------
class VehicleRejected(ProtocolError):
    """The vehicle refused the command. ``authenticated`` tells whether the
    refusal came under the vehicle's MAC (only ``Forbidden``) or in a plain
    pre-authentication ``Error`` message that anyone on the air could forge."""

    code: ResultCode = ResultCode.INTERNAL
    authenticated: bool = False

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or _REJECTION_TEXT.get(self.code, self.code.name.lower()))


class Forbidden(VehicleRejected):
    """Authenticated: the key's role does not permit the command."""

    code = ResultCode.FORBIDDEN
    authenticated = True


# Unauthenticated refusals: one class per pre-authentication wire code.
class RejectedMalformed(VehicleRejected):
    code = ResultCode.MALFORMED


class RejectedUnexpected(VehicleRejected):
    code = ResultCode.UNEXPECTED_MESSAGE


class RejectedVersion(VehicleRejected):
    code = ResultCode.UNSUPPORTED_VERSION


class RejectedVersionMismatch(VehicleRejected):
    code = ResultCode.VERSION_MISMATCH


class RejectedChallenge(VehicleRejected):
    code = ResultCode.UNKNOWN_CHALLENGE


class RejectedExpired(VehicleRejected):
    code = ResultCode.CHALLENGE_EXPIRED


class RejectedUnknownKey(VehicleRejected):
    code = ResultCode.UNKNOWN_KEY


class RejectedCounter(VehicleRejected):
    code = ResultCode.STALE_COUNTER


class RejectedSignature(VehicleRejected):
    code = ResultCode.BAD_SIGNATURE


class RejectedKey(VehicleRejected):
    code = ResultCode.BAD_KEY


class RejectedBusy(VehicleRejected):
    code = ResultCode.BUSY


class RejectedInternal(VehicleRejected):
    code = ResultCode.INTERNAL


class RejectedUpdate(VehicleRejected):
    code = ResultCode.UPDATE_REJECTED


class RejectedEnrollmentClosed(VehicleRejected):
    code = ResultCode.ENROLLMENT_CLOSED


class RejectedArgument(VehicleRejected):
    code = ResultCode.BAD_ARGUMENT


class RejectedShare(VehicleRejected):
    code = ResultCode.SHARE_INVALID


class RejectedShareOutsideWindow(RejectedShare):
    code = ResultCode.SHARE_OUTSIDE_WINDOW


class RejectedShareRevoked(RejectedShare):
    code = ResultCode.SHARE_REVOKED


class RejectedFastKey(VehicleRejected):
    code = ResultCode.FAST_KEY_UNKNOWN


class RejectedMac(VehicleRejected):
    code = ResultCode.BAD_MAC


class RejectedFastPathUnavailable(VehicleRejected):
    code = ResultCode.FAST_PATH_UNAVAILABLE


class RejectedCredential(VehicleRejected):
    code = ResultCode.CREDENTIAL_INVALID


class RejectedCredentialExpired(RejectedCredential):
    code = ResultCode.CREDENTIAL_EXPIRED


class RejectedCredentialNotYetValid(RejectedCredential):
    code = ResultCode.CREDENTIAL_NOT_YET_VALID


class RejectedCredentialRevoked(RejectedCredential):
    code = ResultCode.CREDENTIAL_REVOKED


_REJECTION_TEXT: dict[ResultCode, str] = {
    ResultCode.FORBIDDEN: "the vehicle refused: this key's role does not permit the command",
    ResultCode.MALFORMED: "the vehicle could not decode our message",
    ResultCode.UNEXPECTED_MESSAGE: "the vehicle did not expect this message now",
    ResultCode.UNSUPPORTED_VERSION: "the vehicle does not speak the chosen protocol version",
    ResultCode.VERSION_MISMATCH: "the vehicle's version offer was altered in transit",
    ResultCode.UNKNOWN_CHALLENGE: "the vehicle does not know this challenge (replayed or spent)",
    ResultCode.CHALLENGE_EXPIRED: "the vehicle's challenge expired",
    ResultCode.UNKNOWN_KEY: "this phone's key is not on the vehicle's whitelist",
    ResultCode.STALE_COUNTER: "the vehicle has seen this counter already (replay)",
    ResultCode.BAD_SIGNATURE: "the vehicle rejected the signature",
    ResultCode.BAD_KEY: "the vehicle rejected the ephemeral key",
    ResultCode.BUSY: "the vehicle is busy",
    ResultCode.INTERNAL: "the vehicle failed internally; nothing was executed",
    ResultCode.CREDENTIAL_INVALID: "the vehicle refused the credential (not valid for this key)",
    ResultCode.CREDENTIAL_EXPIRED: "the vehicle says the credential has expired",
    ResultCode.CREDENTIAL_NOT_YET_VALID: "the vehicle says the credential is not valid yet",
    ResultCode.CREDENTIAL_REVOKED: "the vehicle says this key has been revoked",
    ResultCode.UPDATE_REJECTED: "the vehicle refused a revocation or time update",
    ResultCode.ENROLLMENT_CLOSED: "the vehicle's enrollment window is closed (tap the keycard)",
    ResultCode.BAD_ARGUMENT: "the vehicle refused the management request's argument",
    ResultCode.SHARE_INVALID: "the vehicle refused the share (not valid for this key)",
    ResultCode.SHARE_OUTSIDE_WINDOW: "the vehicle says the share is not valid at this time",
    ResultCode.SHARE_REVOKED: "the vehicle says the share has been revoked",
    ResultCode.FAST_KEY_UNKNOWN: "the vehicle holds no fast-path key for this phone",
    ResultCode.BAD_MAC: "the vehicle rejected the fast-path MAC",
    ResultCode.FAST_PATH_UNAVAILABLE: "the vehicle does not offer the fast path",
}

_BY_CODE: dict[ResultCode, type[VehicleRejected]] = {
    cls.code: cls
    for cls in (
        Forbidden,
        RejectedMalformed,
        RejectedUnexpected,
        RejectedVersion,
        RejectedVersionMismatch,
        RejectedChallenge,
        RejectedExpired,
        RejectedUnknownKey,
        RejectedCounter,
        RejectedSignature,
        RejectedKey,
        RejectedBusy,
        RejectedInternal,
        RejectedUpdate,
        RejectedCredential,
        RejectedCredentialExpired,
        RejectedCredentialNotYetValid,
        RejectedCredentialRevoked,
        RejectedEnrollmentClosed,
        RejectedArgument,
        RejectedShare,
        RejectedShareOutsideWindow,
        RejectedShareRevoked,
        RejectedFastKey,
        RejectedMac,
        RejectedFastPathUnavailable,
    )
}


def rejection_for(code: ResultCode) -> VehicleRejected:
    """The phone-side exception for a code the vehicle sent."""
    return _BY_CODE.get(code, RejectedInternal)()
