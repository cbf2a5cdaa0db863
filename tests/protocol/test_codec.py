"""Wire format and framing: round trips, every malformed input, a seeded fuzz loop."""

from __future__ import annotations

import random

import pytest
from protocol_testkit import FakeClock, make_rig, messages_of

from protocol import (
    MAX_MESSAGE_SIZE,
    WIRE_VERSION,
    Challenge,
    ChallengeRequest,
    Command,
    CommandRequest,
    CommandResponse,
    DecodeError,
    ErrorMessage,
    LocalProtocolError,
    LockState,
    Message,
    MessageTooLarge,
    ProtocolError,
    ReassemblyError,
    ReassemblyTimeout,
    ResultCode,
    TrailingBytes,
    TruncatedMessage,
    UnknownMessageType,
    UnsupportedWireVersion,
    decode,
    encode,
)
from protocol.codec import AUTHENTICATED_RESULTS
from protocol.errors import FieldValueError
from protocol.framing import Reassembler, fragment, payload_size

VID = bytes(range(0x10, 0x20))
NONCE = bytes(range(0xA0, 0xB0))
KEY_ID = bytes(range(0x30, 0x40))
EPH = b"\x02" + bytes(range(0x40, 0x60))
SIG = bytes(range(0x60, 0xA0))
MAC = bytes(range(0xC0, 0xE0))

ERROR_CODES = [c for c in ResultCode if c not in AUTHENTICATED_RESULTS]


def _request(**fields: object) -> CommandRequest:
    base: dict[str, object] = dict(
        version=1,
        offered_versions=(1,),
        nonce=NONCE,
        key_id=KEY_ID,
        counter=1,
        command=Command.UNLOCK,
        ephemeral_key=EPH,
        signature=SIG,
    )
    base.update(fields)
    return CommandRequest(**base)  # type: ignore[arg-type]


SAMPLES: list[Message] = [
    Challenge((1,), VID, NONCE),
    Challenge((1, 2), VID, NONCE),
    Challenge(tuple(range(1, 9)), VID, NONCE),
    Challenge((255,), VID, NONCE),
    ChallengeRequest(),
    *[_request(command=cmd) for cmd in Command],
    _request(version=2, offered_versions=(2, 1, 7), counter=2**64 - 1),
    _request(counter=1_700_000_000_000_000, ephemeral_key=b"\x03" + bytes(32)),
    *[
        CommandResponse(result, cmd, 42, state, MAC)
        for result in (ResultCode.OK, ResultCode.FORBIDDEN)
        for cmd in Command
        for state in LockState
    ],
    CommandResponse(ResultCode.OK, Command.UNLOCK, 2**64 - 1, LockState.UNLOCKED, MAC),
    *[ErrorMessage(code) for code in ERROR_CODES],
]
SAMPLE_IDS = [f"{i}-{type(m).__name__}" for i, m in enumerate(SAMPLES)]


# --- round trips and layout ----------------------------------------------------
@pytest.mark.parametrize("message", SAMPLES, ids=SAMPLE_IDS)
def test_round_trip(message: Message) -> None:
    data = encode(message)
    decoded = decode(data)
    assert decoded == message
    assert type(decoded) is type(message)
    assert encode(decoded) == data
    assert data[0] == WIRE_VERSION


def test_decoded_enums_are_enum_members() -> None:
    request = decode(encode(_request(command=Command.STATUS)))
    assert isinstance(request, CommandRequest)
    assert request.command is Command.STATUS
    response = decode(
        encode(CommandResponse(ResultCode.FORBIDDEN, Command.LOCK, 1, LockState.UNLOCKED, MAC))
    )
    assert isinstance(response, CommandResponse)
    assert response.result is ResultCode.FORBIDDEN
    assert response.lock_state is LockState.UNLOCKED
    assert response.command is Command.LOCK


def test_layouts_follow_the_spec() -> None:
    """Byte layouts of docs/protocol.md section 4, written out by hand."""
    assert encode(Challenge((1, 2), VID, NONCE)) == bytes([1, 0x01, 2, 1, 2]) + VID + NONCE
    assert encode(ChallengeRequest()) == bytes([1, 0x02])
    request = _request(
        version=1, offered_versions=(1,), counter=0x0102030405060708, command=Command.LOCK
    )
    assert encode(request) == (
        bytes([1, 0x03, 1, 1, 1]) + NONCE + KEY_ID + bytes([1, 2, 3, 4, 5, 6, 7, 8, 2]) + EPH + SIG
    )
    assert len(encode(request)) == 143  # 147 with the frame header (section 3)
    response = CommandResponse(ResultCode.FORBIDDEN, Command.STATUS, 258, LockState.LOCKED, MAC)
    assert encode(response) == bytes([1, 0x04, 1, 3]) + (258).to_bytes(8, "big") + b"\x01" + MAC
    assert encode(ErrorMessage(ResultCode.UNKNOWN_KEY)) == bytes([1, 0x05, 0x16])


@pytest.mark.parametrize("message", SAMPLES, ids=SAMPLE_IDS)
def test_decode_then_encode_is_byte_identical(message: Message) -> None:
    data = encode(message)
    assert encode(decode(bytes(data))) == data
    assert decode(bytearray(data)) == message


# --- malformed inputs ------------------------------------------------------------
@pytest.mark.parametrize("message", SAMPLES, ids=SAMPLE_IDS)
def test_truncation_at_every_length(message: Message) -> None:
    data = encode(message)
    for length in range(len(data)):
        with pytest.raises(TruncatedMessage):
            decode(data[:length])


@pytest.mark.parametrize("message", SAMPLES, ids=SAMPLE_IDS)
def test_trailing_bytes(message: Message) -> None:
    data = encode(message)
    for extra in (b"\x00", b"\x01", b"\xff" * 7):
        with pytest.raises(TrailingBytes):
            decode(data + extra)


def test_oversized() -> None:
    challenge = encode(Challenge((1,), VID, NONCE))
    with pytest.raises(MessageTooLarge):
        decode(challenge + bytes(MAX_MESSAGE_SIZE + 1 - len(challenge)))
    with pytest.raises(MessageTooLarge):
        decode(bytes([1, 0xFF]) + bytes(4096))
    # exactly at the limit it is not "too large", just a message with trailing bytes
    with pytest.raises(TrailingBytes):
        decode(challenge + bytes(MAX_MESSAGE_SIZE - len(challenge)))


def test_unknown_message_type() -> None:
    known = set(range(0x01, 0x0F))  # 0x01..0x0E are defined (docs/protocol.md)
    for msg_type in range(256):
        if msg_type in known:
            continue
        for body in (b"", bytes(50)):
            with pytest.raises(UnknownMessageType):
                decode(bytes([WIRE_VERSION, msg_type]) + body)


@pytest.mark.parametrize("message", SAMPLES[:8], ids=SAMPLE_IDS[:8])
def test_bad_wire_version(message: Message) -> None:
    data = encode(message)
    for version in range(256):
        if version == WIRE_VERSION:
            continue
        with pytest.raises(UnsupportedWireVersion):
            decode(bytes([version]) + data[1:])


def _field_value_cases() -> list[tuple[str, bytes]]:
    challenge_tail = VID + NONCE
    request_tail = NONCE + KEY_ID + (1).to_bytes(8, "big")
    response_head = bytes([1, 0x04])
    mac_tail = MAC

    def response(result: int, command: int, state: int) -> bytes:
        return (
            response_head
            + bytes([result, command])
            + (1).to_bytes(8, "big")
            + bytes([state])
            + mac_tail
        )

    def request(version: int, offer: bytes, command: int) -> bytes:
        return bytes([1, 0x03, version]) + offer + request_tail + bytes([command]) + EPH + SIG

    cases = [
        ("challenge: empty version list", bytes([1, 0x01, 0]) + challenge_tail),
        ("challenge: zero version", bytes([1, 0x01, 1, 0]) + challenge_tail),
        ("challenge: zero among versions", bytes([1, 0x01, 2, 1, 0]) + challenge_tail),
        ("challenge: duplicate versions", bytes([1, 0x01, 2, 1, 1]) + challenge_tail),
        ("challenge: nine versions", bytes([1, 0x01, 9, *range(1, 10)]) + challenge_tail),
        ("challenge: 255 versions", bytes([1, 0x01, 255, *range(1, 256)]) + challenge_tail),
        ("request: version 0", request(0, bytes([1, 1]), 1)),
        ("request: empty offer", request(1, bytes([0]), 1)),
        ("request: duplicate offer", request(1, bytes([2, 1, 1]), 1)),
        ("request: zero in offer", request(1, bytes([2, 0, 1]), 1)),
        ("request: command 0", request(1, bytes([1, 1]), 0)),
        ("request: command 4", request(1, bytes([1, 1]), 4)),
        ("request: command 255", request(1, bytes([1, 1]), 255)),
        ("response: result 2", response(2, 1, 1)),
        ("response: result MALFORMED", response(0x10, 1, 1)),
        ("response: result INTERNAL", response(0x1F, 1, 1)),
        ("response: result 255", response(0xFF, 1, 1)),
        ("response: command 0", response(0, 0, 1)),
        ("response: command 4", response(0, 4, 1)),
        ("response: lock state 0", response(0, 1, 0)),
        ("response: lock state 3", response(0, 1, 3)),
        ("error: code OK", bytes([1, 0x05, 0x00])),
        ("error: code FORBIDDEN", bytes([1, 0x05, 0x01])),
        ("error: undefined code 2", bytes([1, 0x05, 0x02])),
        ("error: undefined code 0x1B", bytes([1, 0x05, 0x1B])),
        ("error: undefined code 255", bytes([1, 0x05, 0xFF])),
    ]
    return cases


FIELD_VALUE_CASES = _field_value_cases()


@pytest.mark.parametrize(("name", "data"), FIELD_VALUE_CASES, ids=[c[0] for c in FIELD_VALUE_CASES])
def test_undefined_field_values(name: str, data: bytes) -> None:
    with pytest.raises(FieldValueError):
        decode(data)


@pytest.mark.parametrize(
    "message",
    [
        Challenge((), VID, NONCE),
        Challenge((1, 1), VID, NONCE),
        _request(version=0),
        _request(offered_versions=()),
        ErrorMessage(ResultCode.OK),
        CommandResponse(ResultCode.MALFORMED, Command.UNLOCK, 1, LockState.LOCKED, MAC),
    ],
    ids=[
        "empty-offer",
        "duplicate-offer",
        "request-version-0",
        "request-empty-offer",
        "error-OK",
        "response-MALFORMED",
    ],
)
def test_encode_refuses_what_decode_refuses(message: Message) -> None:
    """``encode`` promises ValueError "for a message we must not send": it must never
    produce bytes that every peer refuses as malformed (e.g. a vehicle configured with
    ``versions=()`` would otherwise push challenges no phone can decode)."""
    with pytest.raises(ValueError):
        encode(message)


@pytest.mark.parametrize(
    "message",
    [
        Challenge((1,), VID[:15], NONCE),
        Challenge((1,), VID, NONCE + b"\x00"),
        Challenge(tuple(range(1, 10)), VID, NONCE),
        Challenge((0,), VID, NONCE),
        _request(counter=2**64),
        _request(counter=-1),
        _request(signature=SIG[:63]),
        _request(ephemeral_key=EPH + b"\x00"),
        CommandResponse(ResultCode.OK, Command.UNLOCK, 1, LockState.LOCKED, MAC[:31]),
    ],
)
def test_encode_refuses_wrong_sizes_and_ranges(message: Message) -> None:
    with pytest.raises(ValueError):
        encode(message)


# --- fuzz -------------------------------------------------------------------------
def _check_decode(data: bytes) -> None:
    """Only ProtocolError may escape; anything accepted must be canonical."""
    try:
        message = decode(data)
    except ProtocolError:
        return
    assert encode(message) == data


def _mutate(rnd: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(6)
        if op == 0 and buf:  # flip bits
            buf[rnd.randrange(len(buf))] ^= 1 << rnd.randrange(8)
        elif op == 1 and buf:  # overwrite with a random byte
            buf[rnd.randrange(len(buf))] = rnd.randrange(256)
        elif op == 2:  # insert
            buf.insert(rnd.randrange(len(buf) + 1), rnd.randrange(256))
        elif op == 3 and buf:  # delete
            del buf[rnd.randrange(len(buf))]
        elif op == 4:  # truncate
            del buf[rnd.randrange(len(buf) + 1) :]
        else:  # append garbage
            buf += rnd.randbytes(rnd.randrange(8))
    return bytes(buf)


def test_fuzz_decode_only_raises_protocol_errors() -> None:
    rnd = random.Random(0x5EED)
    valid = [encode(m) for m in SAMPLES]
    for _ in range(700):  # random bytes, biased towards a plausible header
        length = rnd.choice([0, 1, 2, 3, rnd.randrange(200), rnd.randrange(700)])
        data = bytearray(rnd.randbytes(length))
        if length >= 2 and rnd.random() < 0.7:
            data[0] = WIRE_VERSION
            data[1] = rnd.randrange(1, 6)
        _check_decode(bytes(data))
    for _ in range(1300):  # mutations of valid messages
        _check_decode(_mutate(rnd, rnd.choice(valid)))


def test_fuzz_reassembler_only_raises_protocol_errors() -> None:
    rnd = random.Random(0xF4A3)
    valid = [encode(m) for m in SAMPLES]
    for _ in range(400):
        frames = fragment(rnd.choice(valid), rnd.choice([23, 27, 100, 247]))
        frames = [_mutate(rnd, f) if rnd.random() < 0.3 else f for f in frames]
        if rnd.random() < 0.2:
            rnd.shuffle(frames)
        reassembler = Reassembler(lambda: 0.0)
        try:
            for frame in frames:
                data = reassembler.feed(frame)
                if data is not None:
                    _check_decode(data)
        except ProtocolError:
            with pytest.raises(LocalProtocolError):
                reassembler.feed(frames[0])


# --- framing ----------------------------------------------------------------------
FRAMING_MTUS = [23, 27, 100, 247, 517]
SIZES = [
    1,
    2,
    15,
    16,
    17,
    18,
    33,
    34,
    35,
    100,
    143,
    147,
    239,
    240,
    241,
    242,
    243,
    244,
    245,
    300,
    511,
    512,
]


@pytest.mark.parametrize("mtu", FRAMING_MTUS)
def test_fragment_reassemble_round_trip(mtu: int) -> None:
    rnd = random.Random(mtu)
    reassembler = Reassembler(lambda: 0.0)
    for size in SIZES:
        message = rnd.randbytes(size)
        frames = fragment(message, mtu)
        assert all(len(f) <= mtu - 3 for f in frames)
        assert all(f[0] == WIRE_VERSION for f in frames)
        assert frames[0][1] & 0x80 and int.from_bytes(frames[0][2:4], "big") == size
        assert all(not f[1] & 0x80 for f in frames[1:])
        assert frames[-1][1] & 0x40 and all(not f[1] & 0x40 for f in frames[:-1])
        assert [f[1] & 0x3F for f in frames] == [i % 64 for i in range(len(frames))]
        # no frame but the last is short: the fewest frames that can carry the message
        assert all(len(f) == mtu - 3 for f in frames[:-1])
        for frame in frames[:-1]:
            assert reassembler.feed(frame) is None
            assert reassembler.in_progress
        assert reassembler.feed(frames[-1]) == message
        assert not reassembler.in_progress


def test_frame_counts_match_the_spec() -> None:
    assert payload_size(23) == 20
    assert payload_size(247) == 244
    assert len(fragment(bytes(143), 23)) == 9  # a command request at the default MTU
    assert len(fragment(bytes(143), 247)) == 1
    assert len(fragment(bytes(MAX_MESSAGE_SIZE), 23)) == 29
    assert len(fragment(bytes(240), 247)) == 1
    assert len(fragment(bytes(241), 247)) == 2


@pytest.mark.parametrize("mtu", [22, 0, 518, 1024])
def test_mtu_out_of_range(mtu: int) -> None:
    with pytest.raises(LocalProtocolError):
        fragment(b"\x01", mtu)


def test_fragment_refuses_empty_and_oversized() -> None:
    with pytest.raises(LocalProtocolError):
        fragment(b"", 23)
    with pytest.raises(LocalProtocolError):
        fragment(bytes(MAX_MESSAGE_SIZE + 1), 517)


def test_every_message_of_an_unlock_is_one_frame_at_mtu_247() -> None:
    rig = make_rig(247)
    rig.command(Command.UNLOCK, 1)
    rig.command(Command.STATUS, 2)
    pair = rig.pair
    for frames in (pair.sent_to_vehicle, pair.sent_to_phone):
        assert frames
        assert all(f[1] & 0xC0 == 0xC0 for f in frames)  # FIRST and LAST
        assert len(messages_of(frames)) == len(frames)
    kinds = [type(m) for m in messages_of(pair.sent_to_phone)]
    assert kinds == [Challenge, CommandResponse, Challenge, CommandResponse, Challenge]
    assert max(len(f) for f in pair.sent_to_vehicle) == 147


def _frame(control: int, body: bytes, total: int | None = None) -> bytes:
    head = bytes([WIRE_VERSION, control])
    if total is not None:
        head += total.to_bytes(2, "big")
    return head + body


def _failed(reassembler: Reassembler, frames: list[bytes], error: type[Exception]) -> None:
    for frame in frames[:-1]:
        assert reassembler.feed(frame) is None
    with pytest.raises(error):
        reassembler.feed(frames[-1])
    # after a failure the reassembler refuses any input, even a valid frame
    with pytest.raises(LocalProtocolError):
        reassembler.feed(fragment(b"\x01\x02", 23)[0])
    assert not reassembler.in_progress


MSG40 = bytes(range(40))
F40 = fragment(MSG40, 23)  # 16 + 18 + 6 bytes: three frames


@pytest.mark.parametrize(
    ("frames", "error"),
    [
        pytest.param([F40[1]], ReassemblyError, id="continuation-without-first"),
        pytest.param([_frame(0x40, b"x")], ReassemblyError, id="last-without-first"),
        pytest.param([F40[0], F40[2]], ReassemblyError, id="skipped-index"),
        pytest.param(
            [F40[0], F40[0][:1] + b"\x02" + F40[1][2:]], ReassemblyError, id="wrong-index"
        ),
        pytest.param([F40[0], F40[1], F40[1]], ReassemblyError, id="repeated-frame"),
        pytest.param([F40[0], F40[0]], ReassemblyError, id="new-first-before-last"),
        pytest.param(
            [F40[0], fragment(b"\x01", 23)[0]], ReassemblyError, id="complete-first-before-last"
        ),
        pytest.param([_frame(0x81, b"", total=4)], ReassemblyError, id="first-with-index-1"),
        pytest.param([_frame(0x80, b"\x00")], ReassemblyError, id="first-without-length"),
        pytest.param([_frame(0xC0, b"", total=0)], ReassemblyError, id="announced-zero"),
        pytest.param(
            [_frame(0x80, b"ab", total=MAX_MESSAGE_SIZE + 1)], MessageTooLarge, id="announced-513"
        ),
        pytest.param([_frame(0x80, b"ab", total=0xFFFF)], MessageTooLarge, id="announced-65535"),
        pytest.param(
            [_frame(0xC0, b"abcd", total=3)], ReassemblyError, id="more-than-announced-first"
        ),
        pytest.param(
            [_frame(0x80, b"ab", total=3), _frame(0x41, b"cd")],
            ReassemblyError,
            id="more-than-announced-continuation",
        ),
        pytest.param([_frame(0xC0, b"ab", total=3)], ReassemblyError, id="last-too-early"),
        pytest.param([_frame(0x80, b"abc", total=3)], ReassemblyError, id="last-flag-missing"),
        pytest.param(
            [F40[0], F40[1][:1] + bytes([F40[1][1] | 0x40]) + F40[1][2:]],
            ReassemblyError,
            id="last-flag-on-middle-frame",
        ),
        pytest.param(
            [F40[0], F40[1], F40[2][:1] + bytes([F40[2][1] & ~0x40]) + F40[2][2:]],
            ReassemblyError,
            id="last-flag-missing-on-final-frame",
        ),
        pytest.param([b"\x02" + F40[0][1:]], UnsupportedWireVersion, id="bad-version-first"),
        pytest.param(
            [F40[0], b"\x00" + F40[1][1:]], UnsupportedWireVersion, id="bad-version-continuation"
        ),
        pytest.param([b""], TruncatedMessage, id="empty-frame"),
        pytest.param([b"\x01"], TruncatedMessage, id="one-byte-frame"),
    ],
)
def test_reassembly_errors(frames: list[bytes], error: type[Exception]) -> None:
    _failed(Reassembler(lambda: 0.0), frames, error)


def test_reassembly_cap_is_configurable() -> None:
    frames = fragment(bytes(100), 247)
    _failed(Reassembler(lambda: 0.0, max_size=99), frames, MessageTooLarge)
    assert Reassembler(lambda: 0.0, max_size=100).feed(frames[0]) == bytes(100)


def test_reassembly_timeout_with_fake_clock() -> None:
    clock = FakeClock()
    reassembler = Reassembler(clock, timeout=2.0)
    assert reassembler.feed(F40[0]) is None
    clock.advance(2.0)
    reassembler.check_timeout()  # exactly at the limit: still alive
    assert reassembler.feed(F40[1]) is None
    clock.advance(2.01)
    with pytest.raises(ReassemblyTimeout):
        reassembler.feed(F40[2])
    with pytest.raises(LocalProtocolError):
        reassembler.feed(F40[0])


def test_reassembly_timeout_via_check_timeout() -> None:
    clock = FakeClock()
    reassembler = Reassembler(clock)
    reassembler.check_timeout()  # nothing in progress: never times out
    clock.advance(100)
    reassembler.check_timeout()
    reassembler.feed(F40[0])
    clock.advance(2.5)
    with pytest.raises(ReassemblyTimeout):
        reassembler.check_timeout()
    assert isinstance(ReassemblyTimeout(), ReassemblyError)
    with pytest.raises(LocalProtocolError):
        reassembler.feed(F40[1])


def test_idle_time_between_messages_is_not_a_timeout() -> None:
    clock = FakeClock()
    reassembler = Reassembler(clock)
    assert reassembler.feed(fragment(b"\x01\x02", 23)[0]) == b"\x01\x02"
    clock.advance(3600)
    for frame in F40[:-1]:
        assert reassembler.feed(frame) is None
    assert reassembler.feed(F40[-1]) == MSG40


def test_decode_errors_are_protocol_errors() -> None:
    for cls in (
        TruncatedMessage,
        TrailingBytes,
        UnknownMessageType,
        UnsupportedWireVersion,
        MessageTooLarge,
        FieldValueError,
    ):
        assert issubclass(cls, DecodeError)
        assert issubclass(cls, ProtocolError)
    assert issubclass(ReassemblyError, ProtocolError)


def test_reassembly_timeout_reports_how_far_the_message_got() -> None:
    """The timeout's message is what an operator reads in the vehicle log; it must say
    how much of the message arrived (today it is computed after the buffer is reset,
    so it always reads "0 of 0 bytes")."""
    clock = FakeClock()
    reassembler = Reassembler(clock)
    reassembler.feed(F40[0])
    clock.advance(2.5)
    with pytest.raises(ReassemblyTimeout, match="16 of 40 bytes"):
        reassembler.check_timeout()


def test_a_partial_message_cannot_be_kept_alive_forever() -> None:
    """framing.py promises that "a peer cannot park a half-sent message in the vehicle's
    memory forever". Today a continuation frame may carry no bytes at all, so a peer
    that sends an empty frame every 1.9 s keeps a message in progress indefinitely
    (the index wraps at 64). Either refuse empty continuation chunks or bound a
    message's total assembly time."""
    clock = FakeClock()
    reassembler = Reassembler(clock)
    reassembler.feed(F40[0])
    with pytest.raises(ReassemblyError):
        for index in range(1, 200):
            clock.advance(1.9)
            reassembler.feed(bytes([WIRE_VERSION, index & 0x3F]))
