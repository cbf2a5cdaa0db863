"""Wire format and framing: round trips and layouts, a seeded fuzz loop, fragmenting
and reassembling, and every malformed sequence of frames.

Malformed messages (truncated, trailing bytes, undefined values) are in
test_codec_malformed.py; the sample messages in codec_samples.py."""

from __future__ import annotations

import random

import pytest
from codec_samples import (
    EPH,
    KEY_ID,
    MAC,
    NONCE,
    SAMPLE_IDS,
    SAMPLES,
    SIG,
    VID,
    command_request,
    mutate,
)
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
from protocol.errors import FieldValueError
from protocol.framing import Reassembler, fragment, payload_size


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
    request = decode(encode(command_request(command=Command.STATUS)))
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
    request = command_request(
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


# --- fuzz -------------------------------------------------------------------------
def _check_decode(data: bytes) -> None:
    """Only ProtocolError may escape; anything accepted must be canonical."""
    try:
        message = decode(data)
    except ProtocolError:
        return
    assert encode(message) == data


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
        _check_decode(mutate(rnd, rnd.choice(valid)))


def test_fuzz_reassembler_only_raises_protocol_errors() -> None:
    rnd = random.Random(0xF4A3)
    valid = [encode(m) for m in SAMPLES]
    for _ in range(400):
        frames = fragment(rnd.choice(valid), rnd.choice([23, 27, 100, 247]))
        frames = [mutate(rnd, f) if rnd.random() < 0.3 else f for f in frames]
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
