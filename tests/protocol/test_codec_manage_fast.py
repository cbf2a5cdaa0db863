"""Codec of the messages 0x0B-0x0E: round trips, exact layouts, and every
truncation, extension and undefined field value refused precisely."""

from __future__ import annotations

import random

import pytest
from codec_samples import MANAGE_FAST_SAMPLES, POINT
from protocol_testkit import frames_of, make_rig

from protocol import (
    Command,
    ManageOp,
    ManageRequest,
    ProtocolError,
    RequestRejected,
    ResultCode,
    VehicleState,
    decode,
    encode,
)
from protocol.codec import AUTHENTICATED_RESULTS
from protocol.errors import FieldValueError, TrailingBytes, TruncatedMessage
from protocol.manage import ARGUMENT_LENGTHS

SAMPLES = MANAGE_FAST_SAMPLES
IDS = [type(m).__name__ for m in SAMPLES]


@pytest.mark.parametrize("message", SAMPLES, ids=IDS)
def test_round_trip_truncation_and_trailing(message: object) -> None:
    data = encode(message)  # type: ignore[arg-type]
    assert decode(data) == message
    for cut in range(2, len(data)):
        with pytest.raises(TruncatedMessage):
            decode(data[:cut])
    with pytest.raises(TrailingBytes):
        decode(data + b"\x00")


def test_layouts() -> None:
    assert encode(SAMPLES[3]) == bytes([1, 0x0E, 0x2A])
    assert encode(SAMPLES[1]) == bytes([1, 0x0C, 2, 3]) + (7).to_bytes(8, "big") + bytes(range(32))
    fast = encode(SAMPLES[2])
    assert fast[:3] == bytes([1, 0x0D, 1]) and len(fast) == 3 + 16 + 16 + 8 + 1 + 32
    manage = encode(SAMPLES[0])
    assert (
        manage[:2] == bytes([1, 0x0B]) and len(manage) == 2 + 1 + 3 + 16 + 16 + 8 + 2 + 34 + 33 + 64
    )


@pytest.mark.parametrize("op", list(ManageOp), ids=lambda o: o.name)
def test_argument_length_is_fixed_per_operation(op: ManageOp) -> None:
    for length in (0, ARGUMENT_LENGTHS[op] - 1, ARGUMENT_LENGTHS[op] + 1, 255):
        request = ManageRequest(
            1, (1,), bytes(16), bytes(16), 1, op, bytes(length), POINT, bytes(64)
        )
        with pytest.raises(ValueError):
            encode(request)


def test_undefined_values() -> None:
    refused = bytes([1, 0x0E])
    for code in AUTHENTICATED_RESULTS:
        with pytest.raises(FieldValueError):
            decode(refused + bytes([code]))
    with pytest.raises(FieldValueError):
        decode(refused + bytes([0x7F]))
    response = bytearray(encode(SAMPLES[1]))
    for index, value in ((2, ResultCode.MALFORMED), (3, 0), (3, 6)):
        changed = bytearray(response)
        changed[index] = value
        with pytest.raises(FieldValueError):
            decode(bytes(changed))
    fast = bytearray(encode(SAMPLES[2]))
    for index, value in ((2, 0), (43, 0), (43, 4)):
        changed = bytearray(fast)
        changed[index] = value
        with pytest.raises(FieldValueError):
            decode(bytes(changed))


@pytest.mark.parametrize("message", SAMPLES, ids=IDS)
def test_random_bytes_never_escape_protocol_error(message: object) -> None:
    rnd = random.Random(0x0B)
    data = encode(message)  # type: ignore[arg-type]
    for _ in range(300):
        corrupted = bytearray(data)
        for _ in range(rnd.randrange(1, 4)):
            corrupted[rnd.randrange(len(data))] = rnd.randrange(256)
        try:
            decode(bytes(corrupted))
        except ProtocolError:
            pass


def test_vehicle_refuses_messages_meant_for_the_phone() -> None:
    for message in (SAMPLES[1], SAMPLES[3]):
        rig = make_rig()
        events = rig.to_vehicle(frames_of(message, rig.mtu))  # type: ignore[arg-type]
        assert [e.code for e in events if isinstance(e, RequestRejected)] == [
            ResultCode.UNEXPECTED_MESSAGE
        ]
        assert rig.vehicle.state is VehicleState.ERROR


def test_random_corruption_of_fast_requests_never_crashes() -> None:
    rnd = random.Random(0x0D)
    for _ in range(60):
        rig = make_rig(fast_path=True)
        rig.phone.send_fast_command(Command.UNLOCK, 5, bytes(32))
        frames = rig.phone.data_to_send()
        i = rnd.randrange(len(frames))
        changed = bytearray(frames[i])
        changed[rnd.randrange(len(changed))] ^= 1 << rnd.randrange(8)
        rig.to_vehicle([*frames[:i], bytes(changed), *frames[i + 1 :]])
        assert rig.store.commits == 0
