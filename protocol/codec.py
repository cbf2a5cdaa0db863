"""Byte layouts of the messages (construct) and the public encode/decode.

Every message on the wire is::

    wire_version:u8 | message_type:u8 | body

``decode`` turns any malformed input into a ``DecodeError`` subclass (a
``ProtocolError``): truncated, oversized, unknown type, bad version, trailing
bytes, or a field value the protocol does not define. Nothing else escapes.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, Final

import construct as c

from . import crypto
from .errors import (
    DecodeError,
    FieldValueError,
    MessageTooLarge,
    TrailingBytes,
    TruncatedMessage,
    UnknownMessageType,
    UnsupportedWireVersion,
)
from .manage import ARGUMENT_LENGTHS
from .messages import (
    Challenge,
    ChallengeRequest,
    CommandRequest,
    CommandResponse,
    CredentialPresentation,
    ErrorMessage,
    FastCommandRequest,
    FastPathRefused,
    IssuerUpdate,
    ManageRequest,
    ManageResponse,
    Message,
    RevocationUpdate,
    TimeUpdate,
    VehicleStatus,
)
from .privacy import CHALLENGE_TAG_LEN
from .types import Command, LockState, ManageOp, ResultCode

WIRE_VERSION: Final = 1
MAX_MESSAGE_SIZE: Final = 512  # leaves room for credentials in later versions
NONCE_LEN: Final = 16
MAX_VERSIONS: Final = 8

_MSG_CHALLENGE = 0x01
_MSG_CHALLENGE_REQUEST = 0x02
_MSG_COMMAND_REQUEST = 0x03
_MSG_COMMAND_RESPONSE = 0x04
_MSG_ERROR = 0x05
_MSG_CREDENTIAL = 0x06
_MSG_VEHICLE_STATUS = 0x07
_MSG_REVOCATION_UPDATE = 0x08
_MSG_TIME_UPDATE = 0x09
_MSG_ISSUER_UPDATE = 0x0A
_MSG_MANAGE_REQUEST = 0x0B
_MSG_MANAGE_RESPONSE = 0x0C
_MSG_FAST_COMMAND_REQUEST = 0x0D
_MSG_FAST_PATH_REFUSED = 0x0E
MAX_MANAGE_ARGUMENT: Final = max(ARGUMENT_LENGTHS.values())
MAX_SIGNED_OBJECT_SIZE: Final = 400
MAX_CREDENTIAL_SIZE: Final = 300

_HEADER_LEN: Final = 2  # wire_version:u8 | message_type:u8

_Versions = c.PrefixedArray(c.Int8ub, c.Int8ub)

_BODIES: dict[int, c.Construct] = {
    _MSG_CHALLENGE: c.Struct(
        "versions" / _Versions,
        "vehicle_tag" / c.Bytes(CHALLENGE_TAG_LEN),
        "nonce" / c.Bytes(NONCE_LEN),
    ),
    _MSG_CHALLENGE_REQUEST: c.Struct(),
    _MSG_COMMAND_REQUEST: c.Struct(
        "version" / c.Int8ub,
        "offered_versions" / _Versions,
        "nonce" / c.Bytes(NONCE_LEN),
        "key_id" / c.Bytes(crypto.KEY_ID_LEN),
        "counter" / c.Int64ub,
        "command" / c.Int8ub,
        "ephemeral_key" / c.Bytes(crypto.COMPRESSED_POINT_LEN),
        "signature" / c.Bytes(crypto.SIGNATURE_LEN),
    ),
    _MSG_COMMAND_RESPONSE: c.Struct(
        "result" / c.Int8ub,
        "command" / c.Int8ub,
        "counter" / c.Int64ub,
        "lock_state" / c.Int8ub,
        "mac" / c.Bytes(crypto.MAC_LEN),
    ),
    _MSG_ERROR: c.Struct("code" / c.Int8ub),
    _MSG_CREDENTIAL: c.Struct("credential" / c.Prefixed(c.Int16ub, c.GreedyBytes)),
    _MSG_VEHICLE_STATUS: c.Struct(
        "revocation_version" / c.Int64ub, "time_nonce" / c.Bytes(NONCE_LEN)
    ),
    _MSG_REVOCATION_UPDATE: c.Struct("delta" / c.Prefixed(c.Int16ub, c.GreedyBytes)),
    _MSG_TIME_UPDATE: c.Struct("signed_time" / c.Prefixed(c.Int16ub, c.GreedyBytes)),
    _MSG_ISSUER_UPDATE: c.Struct("rotation" / c.Prefixed(c.Int16ub, c.GreedyBytes)),
    _MSG_MANAGE_REQUEST: c.Struct(
        "version" / c.Int8ub,
        "offered_versions" / _Versions,
        "nonce" / c.Bytes(NONCE_LEN),
        "key_id" / c.Bytes(crypto.KEY_ID_LEN),
        "counter" / c.Int64ub,
        "operation" / c.Int8ub,
        "argument" / c.Prefixed(c.Int8ub, c.GreedyBytes),
        "ephemeral_key" / c.Bytes(crypto.COMPRESSED_POINT_LEN),
        "signature" / c.Bytes(crypto.SIGNATURE_LEN),
    ),
    _MSG_MANAGE_RESPONSE: c.Struct(
        "result" / c.Int8ub,
        "operation" / c.Int8ub,
        "counter" / c.Int64ub,
        "mac" / c.Bytes(crypto.MAC_LEN),
    ),
    _MSG_FAST_COMMAND_REQUEST: c.Struct(
        "version" / c.Int8ub,
        "nonce" / c.Bytes(NONCE_LEN),
        "key_id" / c.Bytes(crypto.KEY_ID_LEN),
        "counter" / c.Int64ub,
        "command" / c.Int8ub,
        "mac" / c.Bytes(crypto.MAC_LEN),
    ),
    _MSG_FAST_PATH_REFUSED: c.Struct("reason" / c.Int8ub),
}


class _ExactReader:
    """The input of a compiled parser: a sized read returns exactly the bytes
    asked for or raises ``StreamError``.

    construct's compiled parsers read a ``Bytes(n)`` field (and the body of a
    ``Prefixed`` one) with a bare ``io.read(n)`` and keep whatever comes back,
    so a truncated frame would parse into short fields. The interpreted
    parser checks every read; this stream puts that check back, so the
    compiled form refuses exactly what the interpreted one refuses
    (tests/protocol/test_codec_compiled.py holds the two side by side).
    Compiled parsers call nothing but ``read``."""

    __slots__ = ("_data", "_position")

    def __init__(self, data: bytes, position: int) -> None:
        self._data = data
        self._position = position

    def read(self, size: int = -1, /) -> bytes:
        start = self._position
        if size < 0:
            self._position = len(self._data)
            return self._data[start:]
        end = start + size
        if end > len(self._data):
            raise c.StreamError(f"wanted {size} bytes, {len(self._data) - start} left")
        self._position = end
        return self._data[start:end]

    def tell(self) -> int:
        return self._position


@functools.cache
def _compiled(msg_type: int) -> tuple[c.Construct, tuple[tuple[str, int], ...]]:
    """The compiled form of a body layout, and its fixed-size byte fields.

    The layouts above stay the one definition; construct generates Python
    source from them, about four times faster than interpreting them (the
    codec is most of the vehicle's non-crypto cost per handshake: see
    docs/performance.md). Compiled builders write ``Bytes(n)`` values without
    checking their length, so ``_encode_fields`` checks the fields listed
    here first. Compiled on first use, so a CLI start-up pays for none."""
    body = _BODIES[msg_type]
    assert isinstance(body, c.Struct)
    sized = tuple(
        (sub.name, sub.subcon.length)
        for sub in body.subcons
        if isinstance(sub, c.Renamed)
        and isinstance(sub.subcon, c.Bytes)
        and isinstance(sub.subcon.length, int)
    )
    return body.compile(), sized


_TYPE_OF: dict[type, int] = {
    Challenge: _MSG_CHALLENGE,
    ChallengeRequest: _MSG_CHALLENGE_REQUEST,
    CommandRequest: _MSG_COMMAND_REQUEST,
    CommandResponse: _MSG_COMMAND_RESPONSE,
    ErrorMessage: _MSG_ERROR,
    CredentialPresentation: _MSG_CREDENTIAL,
    VehicleStatus: _MSG_VEHICLE_STATUS,
    RevocationUpdate: _MSG_REVOCATION_UPDATE,
    TimeUpdate: _MSG_TIME_UPDATE,
    IssuerUpdate: _MSG_ISSUER_UPDATE,
    ManageRequest: _MSG_MANAGE_REQUEST,
    ManageResponse: _MSG_MANAGE_RESPONSE,
    FastCommandRequest: _MSG_FAST_COMMAND_REQUEST,
    FastPathRefused: _MSG_FAST_PATH_REFUSED,
}

_RESPONSE_RESULTS = frozenset({ResultCode.OK, ResultCode.FORBIDDEN})
_MANAGE_RESULTS = frozenset(
    {ResultCode.OK, ResultCode.FORBIDDEN, ResultCode.NOT_FOUND, ResultCode.LAST_OWNER}
)
AUTHENTICATED_RESULTS: Final = _RESPONSE_RESULTS | _MANAGE_RESULTS
"""Codes that only ever travel under a MAC: never in an Error or FastPathRefused."""


def encode(message: Message) -> bytes:
    """Serialise a message. Raises ``ValueError`` for a message we must not send."""
    msg_type = _TYPE_OF[type(message)]
    return _encode_fields(msg_type, _fields_of(message), type(message).__name__)


def _encode_fields(msg_type: int, fields: dict[str, Any], name: str) -> bytes:
    """Pack ``fields`` in the layout of ``msg_type``, refusing what a peer must refuse.

    Never send what a peer must refuse, and the decoder stays the one
    definition of valid: every value is range- and length-checked as it is
    packed (so the bytes parse back field for field, by construction), and
    the decoder's own semantic checks (``_to_message``: defined enum values,
    versions, sizes, results allowed per message) run on the packed values,
    without parsing the bytes again (construct packs fixed-size fields and
    length prefixes exactly, or refuses).
    """
    data = bytes((WIRE_VERSION, msg_type)) + _pack(msg_type, fields, name)
    try:
        if len(data) > MAX_MESSAGE_SIZE:
            raise MessageTooLarge(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
        _to_message(msg_type, fields)
    except DecodeError as exc:
        raise ValueError(f"cannot encode {name}: {exc}") from None
    return data


def _pack(msg_type: int, fields: dict[str, Any], name: str) -> bytes:
    """The body of ``msg_type`` from ``fields``; ``ValueError`` for a value its
    layout cannot hold (wrong size, integer out of range, too long a list)."""
    layout, sized = _compiled(msg_type)
    for field, length in sized:
        value = fields[field]
        if not isinstance(value, bytes | bytearray) or len(value) != length:
            raise ValueError(f"cannot encode {name}: {field} must be {length} bytes")
    try:
        body: bytes = layout.build(fields)
    except (c.ConstructError, struct.error) as exc:
        # struct.error: an integer out of its field's range (compiled packing).
        raise ValueError(f"cannot encode {name}: {exc}") from None
    return body


def decode(data: bytes) -> Message:
    """Parse one complete message; raise a ``DecodeError`` for anything malformed."""
    size = len(data)
    if size > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(f"message of {size} bytes exceeds {MAX_MESSAGE_SIZE}")
    if size < _HEADER_LEN:
        raise TruncatedMessage(f"message of {size} bytes has no complete header")
    version, msg_type = data[0], data[1]
    if version != WIRE_VERSION:
        raise UnsupportedWireVersion(f"wire version {version} (this side speaks 1)")
    if msg_type not in _BODIES:
        raise UnknownMessageType(f"unknown message type 0x{msg_type:02x}")
    stream = _ExactReader(data, _HEADER_LEN)
    try:
        fields = _compiled(msg_type)[0].parse_stream(stream)
    except c.StreamError:
        raise TruncatedMessage(f"message type 0x{msg_type:02x} is truncated") from None
    except c.ConstructError as exc:  # pragma: no cover - no other failure in these structs
        raise DecodeError(f"undecodable message: {exc}") from None
    rest = size - stream.tell()
    if rest:
        raise TrailingBytes(f"{rest} unexpected trailing bytes after the message")
    return _to_message(msg_type, fields)


def request_signed_part(request: CommandRequest) -> bytes:
    """The encoded request without its trailing signature: what the transcript covers."""
    return _without_last(request, "signature", crypto.SIGNATURE_LEN)


def response_maced_part(response: CommandResponse | ManageResponse) -> bytes:
    """The encoded response without its trailing MAC: what the MAC covers."""
    return _without_last(response, "mac", crypto.MAC_LEN)


def manage_signed_part(request: ManageRequest) -> bytes:
    """The encoded manage request without its trailing signature."""
    return _without_last(request, "signature", crypto.SIGNATURE_LEN)


def fast_request_maced_part(request: FastCommandRequest) -> bytes:
    """The encoded fast request without its trailing MAC."""
    return _without_last(request, "mac", crypto.MAC_LEN)


@functools.lru_cache(maxsize=16)
def challenge_prefix(versions: tuple[int, ...]) -> bytes:
    """A Challenge's bytes before its vehicle tag and nonce, its last two
    fields: a vehicle's challenges differ only in those, so it encodes the
    rest once and appends each tag and nonce (``encode`` gives the same
    bytes, checked in tests/protocol/test_codec_compiled.py)."""
    tail = CHALLENGE_TAG_LEN + NONCE_LEN
    return encode(Challenge(versions, bytes(CHALLENGE_TAG_LEN), bytes(NONCE_LEN)))[:-tail]


def _without_last(message: Message, last: str, size: int) -> bytes:
    """``message`` encoded with its last field (``last``, ``size`` bytes) zeroed,
    that field cut off: the same bytes whatever the field held.

    Checked like ``encode`` (the zeroed field has the right size, so every
    check gives the same answer as for the real value): a sender can append
    the signature or MAC it computes over these bytes and send the result as
    is, without encoding the message a second time."""
    fields = _fields_of(message)
    fields[last] = bytes(size)
    name = type(message).__name__
    return _encode_fields(_TYPE_OF[type(message)], fields, name)[:-size]


def _fields_of(message: Message) -> dict[str, Any]:
    fields = dict(message.__dict__)
    for name in ("versions", "offered_versions"):
        if name in fields:
            versions = fields[name]
            if len(versions) > MAX_VERSIONS or not all(0 < v < 256 for v in versions):
                raise ValueError(f"{name} must be 1..{MAX_VERSIONS} values in 1..255")
            fields[name] = list(versions)
    return fields


def _enum(enum_type: Any, value: int, field: str) -> Any:
    member = _members(enum_type).get(value)
    if member is None:
        raise FieldValueError(f"{field} has undefined value {value}")
    return member


@functools.cache
def _members(enum_type: Any) -> dict[int, Any]:
    """Value -> member of an IntEnum: a dict lookup, several times cheaper
    than calling the enum, on the path of every message."""
    return {int(member): member for member in enum_type}


def _versions(values: list[int], field: str) -> tuple[int, ...]:
    if not 0 < len(values) <= MAX_VERSIONS:
        raise FieldValueError(f"{field} must list 1..{MAX_VERSIONS} versions, not {len(values)}")
    if 0 in values or len(set(values)) != len(values):
        raise FieldValueError(f"{field} holds a zero or repeated version")
    return tuple(values)


def _to_message(msg_type: int, p: dict[str, Any]) -> Message:
    if msg_type == _MSG_CHALLENGE:
        return Challenge(
            versions=_versions(list(p["versions"]), "versions"),
            vehicle_tag=bytes(p["vehicle_tag"]),
            nonce=bytes(p["nonce"]),
        )
    if msg_type == _MSG_CHALLENGE_REQUEST:
        return ChallengeRequest()
    if msg_type == _MSG_COMMAND_REQUEST:
        if p["version"] == 0:
            raise FieldValueError("version 0 is not a protocol version")
        return CommandRequest(
            version=p["version"],
            offered_versions=_versions(list(p["offered_versions"]), "offered_versions"),
            nonce=bytes(p["nonce"]),
            key_id=bytes(p["key_id"]),
            counter=p["counter"],
            command=_enum(Command, p["command"], "command"),
            ephemeral_key=bytes(p["ephemeral_key"]),
            signature=bytes(p["signature"]),
        )
    if msg_type == _MSG_COMMAND_RESPONSE:
        result = _enum(ResultCode, p["result"], "result")
        if result not in _RESPONSE_RESULTS:
            raise FieldValueError(f"a response cannot carry result {result.name}")
        return CommandResponse(
            result=result,
            command=_enum(Command, p["command"], "command"),
            counter=p["counter"],
            lock_state=_enum(LockState, p["lock_state"], "lock_state"),
            mac=bytes(p["mac"]),
        )
    if msg_type == _MSG_CREDENTIAL:
        credential = bytes(p["credential"])
        if not 0 < len(credential) <= MAX_CREDENTIAL_SIZE:
            raise FieldValueError(
                f"credential of {len(credential)} bytes (allowed 1..{MAX_CREDENTIAL_SIZE})"
            )
        return CredentialPresentation(credential)
    if msg_type == _MSG_VEHICLE_STATUS:
        return VehicleStatus(p["revocation_version"], bytes(p["time_nonce"]))
    if msg_type in (_MSG_REVOCATION_UPDATE, _MSG_TIME_UPDATE, _MSG_ISSUER_UPDATE):
        if msg_type == _MSG_REVOCATION_UPDATE:
            blob = bytes(p["delta"])
        elif msg_type == _MSG_TIME_UPDATE:
            blob = bytes(p["signed_time"])
        else:
            blob = bytes(p["rotation"])
        if not 0 < len(blob) <= MAX_SIGNED_OBJECT_SIZE:
            raise FieldValueError(
                f"signed object of {len(blob)} bytes (allowed 1..{MAX_SIGNED_OBJECT_SIZE})"
            )
        if msg_type == _MSG_REVOCATION_UPDATE:
            return RevocationUpdate(blob)
        if msg_type == _MSG_TIME_UPDATE:
            return TimeUpdate(blob)
        return IssuerUpdate(blob)
    if msg_type == _MSG_MANAGE_REQUEST:
        if p["version"] == 0:
            raise FieldValueError("version 0 is not a protocol version")
        operation = _enum(ManageOp, p["operation"], "operation")
        argument = bytes(p["argument"])
        if len(argument) != ARGUMENT_LENGTHS[operation]:
            raise FieldValueError(
                f"{operation.name} takes a {ARGUMENT_LENGTHS[operation]}-byte argument, "
                f"not {len(argument)} bytes"
            )
        return ManageRequest(
            version=p["version"],
            offered_versions=_versions(list(p["offered_versions"]), "offered_versions"),
            nonce=bytes(p["nonce"]),
            key_id=bytes(p["key_id"]),
            counter=p["counter"],
            operation=operation,
            argument=argument,
            ephemeral_key=bytes(p["ephemeral_key"]),
            signature=bytes(p["signature"]),
        )
    if msg_type == _MSG_MANAGE_RESPONSE:
        result = _enum(ResultCode, p["result"], "result")
        if result not in _MANAGE_RESULTS:
            raise FieldValueError(f"a manage response cannot carry result {result.name}")
        return ManageResponse(
            result=result,
            operation=_enum(ManageOp, p["operation"], "operation"),
            counter=p["counter"],
            mac=bytes(p["mac"]),
        )
    if msg_type == _MSG_FAST_COMMAND_REQUEST:
        if p["version"] == 0:
            raise FieldValueError("version 0 is not a protocol version")
        return FastCommandRequest(
            version=p["version"],
            nonce=bytes(p["nonce"]),
            key_id=bytes(p["key_id"]),
            counter=p["counter"],
            command=_enum(Command, p["command"], "command"),
            mac=bytes(p["mac"]),
        )
    if msg_type == _MSG_FAST_PATH_REFUSED:
        reason = _enum(ResultCode, p["reason"], "reason")
        if reason in AUTHENTICATED_RESULTS:
            raise FieldValueError(f"a fast-path refusal cannot carry {reason.name}")
        return FastPathRefused(reason=reason)
    code = _enum(ResultCode, p["code"], "code")
    if code in AUTHENTICATED_RESULTS:
        raise FieldValueError(f"an error message cannot carry {code.name}")
    return ErrorMessage(code=code)
