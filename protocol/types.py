"""Small enumerations shared by the wire format and both roles."""

from __future__ import annotations

import enum


class Command(enum.IntEnum):
    """What the phone asks the vehicle to do."""

    UNLOCK = 1
    LOCK = 2
    STATUS = 3


class LockState(enum.IntEnum):
    """The vehicle's door lock state as the vehicle reports it."""

    LOCKED = 1
    UNLOCKED = 2


class Role(enum.IntEnum):
    """Authority of a key on the vehicle's whitelist, most powerful first.

    owner: everything, including managing keys and shares; driver: lock,
    unlock, status; guest: unlock and lock only.
    """

    OWNER = 1
    DRIVER = 2
    GUEST = 3

    def permits(self, command: Command) -> bool:
        return command in _ROLE_COMMANDS[self]

    def may_manage(self) -> bool:
        """Only owners manage the whitelist and shares."""
        return self is Role.OWNER

    def at_most(self, other: Role) -> bool:
        """True if this role grants nothing that ``other`` does not."""
        return self.value >= other.value

    @classmethod
    def from_name(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            choices = ", ".join(r.name.lower() for r in cls)
            raise ValueError(f"unknown role {name!r}; choose one of: {choices}") from None


_ROLE_COMMANDS: dict[Role, frozenset[Command]] = {
    Role.OWNER: frozenset(Command),
    Role.DRIVER: frozenset(Command),
    Role.GUEST: frozenset({Command.UNLOCK, Command.LOCK}),
}


class ManageOp(enum.IntEnum):
    """Whitelist management operations of a ``ManageRequest`` (owner only,
    except ENROLL while an enrollment window is open)."""

    ENROLL = 1  # argument: the requester's compressed public key (33 bytes)
    ADD_KEY = 2  # argument: compressed public key (33) + role (1)
    REMOVE_KEY = 3  # argument: key id (16)
    REVOKE_SHARE = 4  # argument: share id (16) + the share's not_after (u64)
    TRANSFER_OWNERSHIP = 5  # argument: the new owner's compressed public key (33)


class ResultCode(enum.IntEnum):
    """Outcome codes carried on the wire.

    ``OK`` and ``FORBIDDEN`` (and, in a ManageResponse, ``NOT_FOUND`` and
    ``LAST_OWNER``) appear in authenticated responses (the vehicle knows who
    asked and says so under a MAC). Every other code only appears in
    unauthenticated ``Error`` or ``FastPathRefused`` messages sent before the
    request was authenticated: the phone must never infer vehicle state from them.
    """

    OK = 0
    FORBIDDEN = 1  # authenticated: the key's role does not permit the command/operation
    NOT_FOUND = 2  # authenticated (manage): the key to remove is not on the whitelist
    LAST_OWNER = 3  # authenticated (manage): the vehicle would be left without an owner
    MALFORMED = 0x10  # the frame or message could not be decoded
    UNEXPECTED_MESSAGE = 0x11  # valid message at the wrong point of the exchange
    UNSUPPORTED_VERSION = 0x12  # the chosen version was not offered
    VERSION_MISMATCH = 0x13  # the echoed version offer differs from what was sent
    UNKNOWN_CHALLENGE = 0x14  # nonce never issued on this session, or already spent
    CHALLENGE_EXPIRED = 0x15  # nonce issued but too old
    UNKNOWN_KEY = 0x16  # key id not on the whitelist
    STALE_COUNTER = 0x17  # counter not above the last one accepted for the key
    BAD_SIGNATURE = 0x18  # signature does not verify over the transcript
    BAD_KEY = 0x19  # ephemeral public key not a valid P-256 point
    BUSY = 0x1A  # the vehicle cannot take the request now
    # malformed, untrusted issuer, bad signature, wrong vehicle, holder or role:
    CREDENTIAL_INVALID = 0x20
    CREDENTIAL_EXPIRED = 0x21  # past not_after (beyond the leeway) by the vehicle's clock
    CREDENTIAL_NOT_YET_VALID = 0x22  # before not_before (beyond the leeway)
    CREDENTIAL_REVOKED = 0x23  # the holder's key id is on the vehicle's revocation list
    UPDATE_REJECTED = 0x24  # a revocation delta or signed time failed verification
    ENROLLMENT_CLOSED = 0x25  # ENROLL from an unknown key while no enrollment window is open
    # malformed share, signer not an owner / unknown / revoked, wrong vehicle, holder or role:
    SHARE_INVALID = 0x26
    SHARE_OUTSIDE_WINDOW = 0x27  # not valid at the vehicle's time (dates, weekday or hours)
    SHARE_REVOKED = 0x28  # an owner revoked the share
    FAST_KEY_UNKNOWN = 0x29  # fast path: the vehicle holds no fast key for this key id
    BAD_MAC = 0x2A  # fast path: the request MAC does not verify
    BAD_ARGUMENT = 0x2B  # manage: the argument does not fit the operation
    FAST_PATH_UNAVAILABLE = 0x2C  # fast path: this vehicle does not offer the fast path
    INTERNAL = 0x1F  # the vehicle failed; nothing was executed
