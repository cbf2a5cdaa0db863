"""Sample messages for the codec tests (test_codec.py, test_codec_malformed.py,
test_codec_manage_fast.py, test_codec_compiled.py): every message type of the
command handshake with its field values at their edges, the management and
fast-path messages (``MANAGE_FAST_SAMPLES``), the fixed byte strings they are
built from, and the byte-level mutator the fuzz loops share."""

from __future__ import annotations

import random

from protocol_testkit import PHONE_KEY

from protocol import (
    Challenge,
    ChallengeRequest,
    Command,
    CommandRequest,
    CommandResponse,
    ErrorMessage,
    FastCommandRequest,
    FastPathRefused,
    LockState,
    ManageOp,
    ManageRequest,
    ManageResponse,
    Message,
    ResultCode,
    Role,
    crypto,
)
from protocol.codec import AUTHENTICATED_RESULTS
from protocol.manage import add_key_argument

VID = bytes(range(0x10, 0x20))
NONCE = bytes(range(0xA0, 0xB0))
KEY_ID = bytes(range(0x30, 0x40))
EPH = b"\x02" + bytes(range(0x40, 0x60))
SIG = bytes(range(0x60, 0xA0))
MAC = bytes(range(0xC0, 0xE0))

ERROR_CODES = [c for c in ResultCode if c not in AUTHENTICATED_RESULTS]


def command_request(**fields: object) -> CommandRequest:
    """A command request of the byte strings above, with ``fields`` changed."""
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
    *[command_request(command=cmd) for cmd in Command],
    command_request(version=2, offered_versions=(2, 1, 7), counter=2**64 - 1),
    command_request(counter=1_700_000_000_000_000, ephemeral_key=b"\x03" + bytes(32)),
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


def mutate(rnd: random.Random, data: bytes) -> bytes:
    """One to four random edits of ``data``: bit flips, overwritten, inserted or
    deleted bytes, a truncation, appended garbage."""
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


POINT = crypto.public_bytes(PHONE_KEY.public_key())
MANAGE_FAST_SAMPLES: list[Message] = [
    ManageRequest(
        version=1,
        offered_versions=(1, 2),
        nonce=bytes(range(16)),
        key_id=bytes(range(16, 32)),
        counter=2**63,
        operation=ManageOp.ADD_KEY,
        argument=add_key_argument(PHONE_KEY.public_key(), Role.GUEST),
        ephemeral_key=POINT,
        signature=bytes(range(64)),
    ),
    ManageResponse(ResultCode.NOT_FOUND, ManageOp.REMOVE_KEY, 7, bytes(range(32))),
    FastCommandRequest(1, bytes(16), bytes(range(16)), 9, Command.LOCK, bytes(range(32))),
    FastPathRefused(ResultCode.BAD_MAC),
]
