"""The codec runs construct's compiled form of the layouts (for speed); the
interpreted layouts in ``codec._BODIES`` stay the definition. These tests hold
the two side by side: on every sample of every message type, on thousands of
mutated inputs and on out-of-range or wrongly sized field values, the
compiled codec must accept, build and refuse exactly what the interpreted
layouts do."""

from __future__ import annotations

import io
import random
from typing import Any

import construct as c
import pytest
from codec_samples import MANAGE_FAST_SAMPLES, mutate
from codec_samples import SAMPLES as COMMAND_SAMPLES

from protocol import Challenge, Message, codec, decode, encode
from protocol.messages import (
    CredentialPresentation,
    IssuerUpdate,
    RevocationUpdate,
    TimeUpdate,
    VehicleStatus,
)

SAMPLES: list[Message] = [
    *COMMAND_SAMPLES,
    *MANAGE_FAST_SAMPLES,
    CredentialPresentation(bytes(range(200))),
    VehicleStatus(2**40, bytes(range(16))),
    RevocationUpdate(b"\x01" * 300),
    TimeUpdate(b"\x02" * 90),
    IssuerUpdate(b"\x03" * 150),
]


def _interpreted_fields(data: bytes) -> Any:
    """What the interpreted layout parses from a whole message, or the class
    of construct error it raises; ``None`` if the header is not for a layout."""
    if len(data) < 2 or data[1] not in codec._BODIES:
        return None
    stream = io.BytesIO(data[2:])
    try:
        fields = codec._BODIES[data[1]].parse_stream(stream)
    except c.ConstructError as exc:
        return type(exc)
    return {k: v for k, v in fields.items() if not k.startswith("_")}, stream.tell()


def _compiled_fields(data: bytes) -> Any:
    if len(data) < 2 or data[1] not in codec._BODIES:
        return None
    stream = codec._ExactReader(data, 2)
    try:
        fields = codec._compiled(data[1])[0].parse_stream(stream)
    except c.ConstructError as exc:
        return type(exc)
    return {k: v for k, v in fields.items() if not k.startswith("_")}, stream.tell() - 2


def _outcome(function: Any, argument: Any) -> Any:
    try:
        return function(argument)
    except Exception as exc:
        return type(exc)


@pytest.mark.parametrize("message", SAMPLES, ids=[type(m).__name__ for m in SAMPLES])
def test_compiled_and_interpreted_build_the_same_bytes(message: Message) -> None:
    data = encode(message)
    msg_type = data[1]
    fields = codec._fields_of(message)
    assert data[2:] == codec._BODIES[msg_type].build(fields)
    assert _compiled_fields(data) == _interpreted_fields(data)


def test_compiled_and_interpreted_parse_agree_on_mutated_input() -> None:
    rnd = random.Random(0xC0DE)
    valid = [encode(m) for m in SAMPLES]
    disagreements = []
    for _ in range(4000):
        data = mutate(rnd, rnd.choice(valid))
        if _compiled_fields(data) != _interpreted_fields(data):
            disagreements.append(data.hex())
    assert disagreements == []


def test_every_truncation_is_refused_like_the_interpreted_layout() -> None:
    for message in SAMPLES:
        data = encode(message)
        for cut in range(2, len(data)):
            interpreted = _interpreted_fields(data[:cut])
            assert _compiled_fields(data[:cut]) == interpreted
            assert interpreted is c.StreamError or isinstance(interpreted, tuple)


def _field_variants(message: Message) -> list[tuple[str, Any]]:
    """Wrong values for each field: sizes one off, integers out of range."""
    variants: list[tuple[str, Any]] = []
    for name, value in message.__dict__.items():
        if isinstance(value, bytes):
            variants += [(name, value[:-1]), (name, value + b"\x00"), (name, b"")]
        elif isinstance(value, int):
            variants += [(name, -1), (name, 256), (name, 2**64)]
        elif isinstance(value, tuple):
            variants += [(name, tuple(range(1, 300))), (name, (1, 256))]
    return variants


@pytest.mark.parametrize("message", SAMPLES, ids=[type(m).__name__ for m in SAMPLES])
def test_compiled_build_refuses_what_the_interpreted_layout_refuses(message: Message) -> None:
    msg_type = encode(message)[1]
    for name, value in _field_variants(message):
        fields = codec._fields_of(message)
        fields[name] = list(value) if isinstance(value, tuple) else value
        interpreted = _outcome(codec._BODIES[msg_type].build, fields)
        try:
            compiled: Any = codec._pack(msg_type, fields, "x")
        except ValueError:
            compiled = ValueError
        if isinstance(interpreted, bytes):
            assert compiled == interpreted, (name, value)
        else:
            assert compiled is ValueError, (name, value, interpreted)


def test_decode_of_every_sample_is_unchanged() -> None:
    for message in SAMPLES:
        assert decode(encode(message)) == message


def test_challenge_prefix_plus_tag_and_nonce_is_the_encoded_challenge() -> None:
    challenges = [m for m in SAMPLES if isinstance(m, Challenge)]
    assert len(challenges) >= 3
    for challenge in challenges:
        prefix = codec.challenge_prefix(challenge.versions)
        assert prefix + challenge.vehicle_tag + challenge.nonce == encode(challenge)


def test_challenge_prefix_refuses_what_encode_refuses() -> None:
    with pytest.raises(ValueError):
        codec.challenge_prefix((0,))
    with pytest.raises(ValueError):
        codec.challenge_prefix(tuple(range(1, 10)))
