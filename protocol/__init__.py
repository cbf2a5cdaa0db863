"""phonekey's sans-IO protocol core: wire format, crypto and both roles.

Imports no asyncio, bleak, bumble or sockets; the clock and randomness are
arguments. See docs/protocol.md for the specification.
"""

from .codec import MAX_MESSAGE_SIZE, WIRE_VERSION, decode, encode
from .errors import (
    BadPublicKey,
    BadResponseMac,
    BadSignature,
    ChallengeExpired,
    DecodeError,
    Forbidden,
    HandshakeError,
    LocalProtocolError,
    MessageTooLarge,
    NoCommonVersion,
    ProtocolError,
    ReassemblyError,
    ReassemblyTimeout,
    RemoteProtocolError,
    StaleCounter,
    TrailingBytes,
    TruncatedMessage,
    UnexpectedMessage,
    UnknownChallenge,
    UnknownKey,
    UnknownMessageType,
    UnsupportedVersion,
    UnsupportedWireVersion,
    VehicleRejected,
    VersionMismatch,
    WrongVehicle,
)
from .events import (
    ChallengeIssued,
    ChallengeReceived,
    CommandCompleted,
    CommandExecuted,
    RequestRejected,
)
from .framing import Reassembler, fragment
from .messages import (
    Challenge,
    ChallengeRequest,
    CommandRequest,
    CommandResponse,
    ErrorMessage,
    Message,
)
from .phone import PhoneConnection
from .states import PhoneState, VehicleState
from .store import MemoryStore, VehicleStore, WhitelistEntry
from .types import Command, LockState, ResultCode, Role
from .vehicle import SUPPORTED_VERSIONS, VehicleConnection, VehicleIdentity

__all__ = [
    "MAX_MESSAGE_SIZE",
    "SUPPORTED_VERSIONS",
    "WIRE_VERSION",
    "BadPublicKey",
    "BadResponseMac",
    "BadSignature",
    "Challenge",
    "ChallengeExpired",
    "ChallengeIssued",
    "ChallengeReceived",
    "ChallengeRequest",
    "Command",
    "CommandCompleted",
    "CommandExecuted",
    "CommandRequest",
    "CommandResponse",
    "DecodeError",
    "ErrorMessage",
    "Forbidden",
    "HandshakeError",
    "LocalProtocolError",
    "LockState",
    "MemoryStore",
    "Message",
    "MessageTooLarge",
    "NoCommonVersion",
    "PhoneConnection",
    "PhoneState",
    "ProtocolError",
    "Reassembler",
    "ReassemblyError",
    "ReassemblyTimeout",
    "RemoteProtocolError",
    "RequestRejected",
    "ResultCode",
    "Role",
    "StaleCounter",
    "TrailingBytes",
    "TruncatedMessage",
    "UnexpectedMessage",
    "UnknownChallenge",
    "UnknownKey",
    "UnknownMessageType",
    "UnsupportedVersion",
    "UnsupportedWireVersion",
    "VehicleConnection",
    "VehicleIdentity",
    "VehicleRejected",
    "VehicleState",
    "VehicleStore",
    "VersionMismatch",
    "WhitelistEntry",
    "decode",
    "encode",
    "fragment",
]
