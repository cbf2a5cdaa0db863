"""Arguments of the whitelist management operations (``ManageRequest``).

Each ``ManageOp`` takes an argument of one fixed length (the codec refuses
any other length as malformed); ``parse_argument`` turns it into a typed
value and refuses field values the protocol does not define:

| operation | argument |
|---|---|
| ENROLL | requester's public key, compressed (33) |
| ADD_KEY | public key, compressed (33) ‖ role (1: owner, driver, guest) |
| REMOVE_KEY | key id (16) |
| REVOKE_SHARE | share id (16) ‖ the share's not_after, u64 (8) |
| TRANSFER_OWNERSHIP | the new owner's public key, compressed (33) |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from . import crypto
from .types import ManageOp, Role

SHARE_ID_LEN: Final = 16

ARGUMENT_LENGTHS: Final[dict[ManageOp, int]] = {
    ManageOp.ENROLL: crypto.COMPRESSED_POINT_LEN,
    ManageOp.ADD_KEY: crypto.COMPRESSED_POINT_LEN + 1,
    ManageOp.REMOVE_KEY: crypto.KEY_ID_LEN,
    ManageOp.REVOKE_SHARE: SHARE_ID_LEN + 8,
    ManageOp.TRANSFER_OWNERSHIP: crypto.COMPRESSED_POINT_LEN,
}


class InvalidManageArgument(ValueError):
    """An argument that does not fit its operation (length, point or role)."""


@dataclass(frozen=True)
class KeyArgument:
    """ENROLL and TRANSFER_OWNERSHIP: a public key (compressed SEC1)."""

    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return crypto.key_id(crypto.public_key_from_bytes(self.public_key))


@dataclass(frozen=True)
class AddKeyArgument:
    public_key: bytes
    role: Role

    @property
    def key_id(self) -> bytes:
        return crypto.key_id(crypto.public_key_from_bytes(self.public_key))


@dataclass(frozen=True)
class RemoveKeyArgument:
    key_id: bytes


@dataclass(frozen=True)
class RevokeShareArgument:
    share_id: bytes
    not_after: int  # the share's own not_after: the vehicle may forget the revocation after it


ManageArgument = KeyArgument | AddKeyArgument | RemoveKeyArgument | RevokeShareArgument


# --- building (phone side) -------------------------------------------------------
def enroll_argument(public_key: crypto.PublicKey) -> bytes:
    return crypto.public_bytes(public_key)


def add_key_argument(public_key: crypto.PublicKey, role: Role) -> bytes:
    return crypto.public_bytes(public_key) + bytes([Role(role).value])


def remove_key_argument(key_id: bytes) -> bytes:
    if len(key_id) != crypto.KEY_ID_LEN:
        raise InvalidManageArgument(f"a key id is {crypto.KEY_ID_LEN} bytes")
    return bytes(key_id)


def revoke_share_argument(share_id: bytes, not_after: int) -> bytes:
    if len(share_id) != SHARE_ID_LEN:
        raise InvalidManageArgument(f"a share id is {SHARE_ID_LEN} bytes")
    if not 0 <= not_after < 2**64:
        raise InvalidManageArgument("not_after must fit a u64")
    return bytes(share_id) + not_after.to_bytes(8, "big")


def transfer_argument(new_owner: crypto.PublicKey) -> bytes:
    return crypto.public_bytes(new_owner)


# --- parsing (vehicle side) ---------------------------------------------------------
def check_length(operation: ManageOp, argument: bytes) -> None:
    expected = ARGUMENT_LENGTHS[operation]
    if len(argument) != expected:
        raise InvalidManageArgument(
            f"{operation.name} takes a {expected}-byte argument, not {len(argument)} bytes"
        )


def parse_argument(operation: ManageOp, argument: bytes) -> ManageArgument:
    """The typed argument; raises ``InvalidManageArgument``. Decompresses a
    point (cheap next to a signature check), no public-key operation."""
    check_length(operation, argument)
    if operation in (ManageOp.ENROLL, ManageOp.TRANSFER_OWNERSHIP):
        _check_point(argument)
        return KeyArgument(bytes(argument))
    if operation is ManageOp.ADD_KEY:
        point, role_byte = argument[:-1], argument[-1]
        _check_point(point)
        try:
            role = Role(role_byte)
        except ValueError:
            raise InvalidManageArgument(f"role {role_byte} is not defined") from None
        return AddKeyArgument(bytes(point), role)
    if operation is ManageOp.REMOVE_KEY:
        return RemoveKeyArgument(bytes(argument))
    return RevokeShareArgument(
        bytes(argument[:SHARE_ID_LEN]), int.from_bytes(argument[SHARE_ID_LEN:], "big")
    )


def _check_point(data: bytes) -> None:
    try:
        crypto.public_key_from_bytes(data)
    except crypto.InvalidKeyEncoding as exc:
        raise InvalidManageArgument(f"the key in the argument is invalid: {exc}") from None
