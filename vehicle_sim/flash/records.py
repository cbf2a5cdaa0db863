"""The vehicle state in RAM and its encoding in journal records.

A record (flash formats 2 and 3) is::

    type u8 | length u32 | seq u32 | payload | mac 16 | crc32 u32 | end 0x00

(little endian; ``length`` counts the whole record, ``crc32`` covers type to
``mac``). The CRC tells a torn or decayed record from a complete one; the MAC
(computed by ``journal`` with a key derived from the device key, bound to the
record's bank, generation, offset and predecessor) tells a record the key
module wrote from one somebody else did. Format 1 records have no ``mac``.
Format 3 differs from format 2 only in the fast-path secrets: format 3 sets
one with ``OP_SET_FAST_WRAPPED`` (the secret AES-key-wrapped, see
``keywrap``), formats 1 and 2 with ``OP_SET_FAST`` (in the clear); each
format refuses the other's opcode. ``FlashState`` always holds them in the
clear: it is RAM.
Type ``S`` (snapshot) replaces the whole state; type ``C`` (commit) changes
it. A payload is a sequence of operations, each an opcode
byte followed by a body of a size fixed by the opcode (see ``_BODY``); a
snapshot is the operations that build the state from nothing. One
``StateChange`` or one console change is one record: replay applies all of
it or, if the record is torn, none of it.
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from protocol import crypto
from protocol.store import SPENT_NONCE_MEMORY, WhitelistEntry
from protocol.types import LockState, Role

from .keywrap import WRAPPED_LEN, FastKeyWrap
from .layout import (
    END_MARK,
    FLASH_FORMAT_VERSION,
    MAX_COUNTERS,
    MAX_ISSUERS,
    MAX_KEYCARDS,
    MAX_KEYS,
    MAX_REVOCATIONS,
    MAX_SHARE_REVOCATIONS,
    FlashCorrupt,
)

SNAPSHOT: Final = ord("S")
COMMIT: Final = ord("C")
RECORD_HEADER = struct.Struct("<BII")
MAC_LEN: Final = 16
"""Bytes of HMAC-SHA256 kept in each record and bank header (format 2)."""
RECORD_OVERHEAD = RECORD_HEADER.size + MAC_LEN + 4 + 1
"""Bytes of a record that are not payload, in the current format."""

OP_VIN: Final = 0x01  # 17 ASCII bytes
OP_FLOOR: Final = 0x02  # u64 time floor
OP_CLOCK: Final = 0x03  # i64 clock offset
OP_LOG_ANCHOR: Final = 0x04  # u64 event-log head seq, 16-byte head MAC
OP_LOCK: Final = 0x05  # u8 LockState
OP_NONCE: Final = 0x06  # 16-byte spent nonce
OP_COUNTER: Final = 0x07  # 16-byte key id, u64 counter
OP_WIPE: Final = 0x08  # no body: drop keys, fast keys and share revocations
OP_ADD_KEY: Final = 0x09  # 33-byte compressed key, u8 Role
OP_REMOVE_KEY: Final = 0x0A  # 16-byte key id (drops its fast key too)
OP_SET_FAST: Final = 0x0B  # formats 1-2 only: 16-byte key id, 32-byte secret in the clear
OP_DROP_FAST: Final = 0x0C  # 16-byte key id
OP_REVOKE_SHARE: Final = 0x0D  # 16-byte share id, u64 not_after
OP_REVOCATIONS: Final = 0x0E  # u64 version, u32 n, n x 16-byte revocation id (added)
OP_ISSUERS: Final = 0x0F  # u8 n, n x 33-byte compressed key (replaces the list)
OP_ADD_CARD: Final = 0x10  # 33-byte compressed key
OP_REMOVE_CARD: Final = 0x11  # 16-byte card id
OP_BACKOFF: Final = 0x12  # u32 level
OP_SET_FAST_WRAPPED: Final = 0x13  # format 3: AES-KW(KEK, key id 16 | secret 32), 56 bytes
FIRST_WRAPPED_FORMAT: Final = 3
"""The first flash format whose fast-path secrets are wrapped (``keywrap``)."""

_BODY: Final = {
    OP_VIN: 17,
    OP_FLOOR: 8,
    OP_CLOCK: 8,
    OP_LOG_ANCHOR: 24,
    OP_LOCK: 1,
    OP_NONCE: 16,
    OP_COUNTER: 24,
    OP_WIPE: 0,
    OP_ADD_KEY: 34,
    OP_REMOVE_KEY: 16,
    OP_SET_FAST: 48,
    OP_DROP_FAST: 16,
    OP_REVOKE_SHARE: 24,
    OP_ADD_CARD: 33,
    OP_REMOVE_CARD: 16,
    OP_BACKOFF: 4,
    OP_SET_FAST_WRAPPED: WRAPPED_LEN,
}
BYTES_PER_KEY: Final = (1 + _BODY[OP_ADD_KEY]) + (1 + _BODY[OP_COUNTER])
"""Snapshot bytes of one whitelisted key and its counter (a fast key adds 57)."""

SNAPSHOT_MAX_BYTES: Final = (
    RECORD_OVERHEAD
    + 18 + 9 + 9 + 25 + 2 + 5  # vin, floor, clock, anchor, lock, backoff
    + 2 + MAX_ISSUERS * 33
    + 13 + MAX_REVOCATIONS * 16
    + MAX_KEYCARDS * 34
    + MAX_KEYS * (1 + _BODY[OP_ADD_KEY] + 1 + _BODY[OP_SET_FAST_WRAPPED])
    + MAX_COUNTERS * (1 + _BODY[OP_COUNTER])
    + MAX_SHARE_REVOCATIONS * (1 + _BODY[OP_REVOKE_SHARE])
    + SPENT_NONCE_MEMORY * (1 + _BODY[OP_NONCE])
)  # fmt: skip
"""The largest snapshot the limits allow; a bank must hold two (see ``journal``)."""

GENESIS_ANCHOR: Final = (0, bytes(16))


def _nonces() -> deque[bytes]:
    return deque(maxlen=SPENT_NONCE_MEMORY)


@dataclass
class FlashState:
    """Everything the journal holds, as the store reads it."""

    vin: str = ""
    whitelist: dict[bytes, WhitelistEntry] = field(default_factory=dict)
    counters: dict[bytes, int] = field(default_factory=dict)
    spent_nonces: deque[bytes] = field(default_factory=_nonces)
    lock_state: LockState = LockState.LOCKED
    issuers: dict[bytes, crypto.PublicKey] = field(default_factory=dict)
    revocation_version: int = 0
    revoked: set[bytes] = field(default_factory=set)
    time_floor: int = 0
    clock_offset: int = 0
    fast_keys: dict[bytes, bytes] = field(default_factory=dict)
    revoked_shares: dict[bytes, int] = field(default_factory=dict)
    keycards: dict[bytes, crypto.PublicKey] = field(default_factory=dict)
    backoff_level: int = 0
    log_anchor: tuple[int, bytes] = GENESIS_ANCHOR

    def copy(self) -> FlashState:
        return FlashState(
            vin=self.vin,
            whitelist=dict(self.whitelist),
            counters=dict(self.counters),
            spent_nonces=deque(self.spent_nonces, maxlen=SPENT_NONCE_MEMORY),
            lock_state=self.lock_state,
            issuers=dict(self.issuers),
            revocation_version=self.revocation_version,
            revoked=set(self.revoked),
            time_floor=self.time_floor,
            clock_offset=self.clock_offset,
            fast_keys=dict(self.fast_keys),
            revoked_shares=dict(self.revoked_shares),
            keycards=dict(self.keycards),
            backoff_level=self.backoff_level,
            log_anchor=self.log_anchor,
        )


class Ops:
    """Builds a record payload, one operation at a time."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def _op(self, code: int, body: bytes = b"") -> Ops:
        self._parts.append(bytes([code]) + body)
        return self

    def vin(self, vin: str) -> Ops:
        return self._op(OP_VIN, vin.encode("ascii"))

    def floor(self, value: int) -> Ops:
        return self._op(OP_FLOOR, struct.pack("<Q", value))

    def clock(self, offset: int) -> Ops:
        return self._op(OP_CLOCK, struct.pack("<q", offset))

    def log_anchor(self, seq: int, mac: bytes) -> Ops:
        return self._op(OP_LOG_ANCHOR, struct.pack("<Q", seq) + mac)

    def lock(self, state: LockState) -> Ops:
        return self._op(OP_LOCK, bytes([state]))

    def nonce(self, nonce: bytes) -> Ops:
        return self._op(OP_NONCE, nonce)

    def counter(self, key_id: bytes, value: int) -> Ops:
        return self._op(OP_COUNTER, key_id + struct.pack("<Q", value))

    def wipe(self) -> Ops:
        return self._op(OP_WIPE)

    def add_key(self, entry: WhitelistEntry) -> Ops:
        return self._op(OP_ADD_KEY, entry.public_key + bytes([entry.role]))

    def remove_key(self, key_id: bytes) -> Ops:
        return self._op(OP_REMOVE_KEY, key_id)

    def set_fast(self, key_id: bytes, secret: bytes, keywrap: FastKeyWrap | None) -> Ops:
        """Set a fast-path secret: wrapped (format 3), or in the clear if
        ``keywrap`` is None (formats 1 and 2: migration tests only)."""
        if keywrap is None:
            return self._op(OP_SET_FAST, key_id + secret)
        return self._op(OP_SET_FAST_WRAPPED, keywrap.wrap(key_id, secret))

    def drop_fast(self, key_id: bytes) -> Ops:
        return self._op(OP_DROP_FAST, key_id)

    def revoke_share(self, share_id: bytes, not_after: int) -> Ops:
        return self._op(OP_REVOKE_SHARE, share_id + struct.pack("<Q", not_after))

    def revocations(self, version: int, rev_ids: list[bytes]) -> Ops:
        return self._op(
            OP_REVOCATIONS, struct.pack("<QI", version, len(rev_ids)) + b"".join(rev_ids)
        )

    def issuers(self, keys: list[crypto.PublicKey]) -> Ops:
        return self._op(
            OP_ISSUERS, bytes([len(keys)]) + b"".join(crypto.public_bytes(k) for k in keys)
        )

    def add_card(self, key: crypto.PublicKey) -> Ops:
        return self._op(OP_ADD_CARD, crypto.public_bytes(key))

    def remove_card(self, card_id: bytes) -> Ops:
        return self._op(OP_REMOVE_CARD, card_id)

    def backoff(self, level: int) -> Ops:
        return self._op(OP_BACKOFF, struct.pack("<I", level))

    def payload(self) -> bytes:
        return b"".join(self._parts)


# --- records ---------------------------------------------------------------------------------
MacOf = Callable[[bytes], bytes]
"""Computes the MAC of a record's signed bytes (type to payload)."""


def encode_record(kind: int, seq: int, payload: bytes, mac_of: MacOf | None) -> bytes:
    """The record; ``mac_of`` None writes format 1 (no MAC: migration tests only)."""
    mac_len = MAC_LEN if mac_of is not None else 0
    length = RECORD_HEADER.size + len(payload) + mac_len + 5
    body = RECORD_HEADER.pack(kind, length, seq) + payload
    if mac_of is not None:
        body += mac_of(body)
    return body + struct.pack("<I", zlib.crc32(body)) + END_MARK


@dataclass(frozen=True)
class RecordRead:
    kind: int
    seq: int
    payload: bytes
    length: int
    signed: bytes  # type to payload: what the MAC covers
    mac: bytes  # empty in format 1


def overhead(mac_len: int) -> int:
    return RECORD_HEADER.size + mac_len + 5


def read_record(data: memoryview, offset: int, end: int, *, mac_len: int) -> RecordRead | None:
    """The record at ``offset`` if it is complete and its CRC holds, else None
    (its MAC is the journal's to check)."""
    if end - offset < overhead(mac_len):
        return None
    kind, length, seq = RECORD_HEADER.unpack_from(data, offset)
    if kind not in (SNAPSHOT, COMMIT) or not overhead(mac_len) <= length <= end - offset:
        return None
    crc_at = offset + length - 5
    (crc,) = struct.unpack_from("<I", data, crc_at)
    if data[crc_at + 4] != END_MARK[0] or crc != zlib.crc32(data[offset:crc_at]):
        return None
    mac_at = crc_at - mac_len
    return RecordRead(
        kind,
        seq,
        bytes(data[offset + RECORD_HEADER.size : mac_at]),
        length,
        bytes(data[offset:mac_at]),
        bytes(data[mac_at:crc_at]),
    )


def claimed_length(data: memoryview, offset: int, end: int, *, mac_len: int) -> int | None:
    """The length a (possibly torn) record header claims, if it is plausible."""
    if end - offset < RECORD_HEADER.size:
        return None
    _, length, _ = RECORD_HEADER.unpack_from(data, offset)
    return length if overhead(mac_len) <= length <= end - offset else None


# --- applying operations ------------------------------------------------------------------------
Op = tuple[int, bytes]


def iter_ops(payload: bytes) -> Iterator[Op]:
    """(opcode, body) pairs; FlashCorrupt on an unknown opcode or a short body."""
    at = 0
    while at < len(payload):
        code = payload[at]
        at += 1
        if code == OP_REVOCATIONS:
            if at + 12 > len(payload):
                raise FlashCorrupt("a revocation operation is cut short")
            (count,) = struct.unpack_from("<I", payload, at + 8)
            size = 12 + 16 * count
        elif code == OP_ISSUERS:
            if at >= len(payload):
                raise FlashCorrupt("an issuer operation is cut short")
            size = 1 + 33 * payload[at]
        elif code in _BODY:
            size = _BODY[code]
        else:
            raise FlashCorrupt(f"unknown operation {code:#04x}")
        if at + size > len(payload):
            raise FlashCorrupt(f"operation {code:#04x} is cut short")
        yield code, payload[at : at + size]
        at += size


def apply_payload(
    state: FlashState,
    payload: bytes,
    keywrap: FastKeyWrap,
    *,
    version: int = FLASH_FORMAT_VERSION,
) -> None:
    """Apply every operation of ``payload``, written in flash format ``version``,
    to ``state``: FlashCorrupt if invalid, ``keywrap.UnwrapFailed`` (a
    TamperEvidence) if a wrapped fast-path secret fails to unwrap."""
    for code, body in iter_ops(payload):
        if code == OP_SET_FAST and version >= FIRST_WRAPPED_FORMAT:
            raise FlashCorrupt(
                f"a fast-path secret in the clear in flash format {version} (they are wrapped)"
            )
        if code == OP_SET_FAST_WRAPPED and version < FIRST_WRAPPED_FORMAT:
            raise FlashCorrupt(f"unknown operation {code:#04x} in flash format {version}")
        try:
            _apply(state, code, body, keywrap)
        except (ValueError, KeyError, IndexError, struct.error) as exc:
            raise FlashCorrupt(f"operation {code:#04x} is invalid: {exc}") from None


def _key(raw: bytes) -> crypto.PublicKey:
    return crypto.public_key_from_bytes(raw)


def _apply(state: FlashState, code: int, body: bytes, keywrap: FastKeyWrap) -> None:
    if code == OP_VIN:
        state.vin = body.decode("ascii")
    elif code == OP_FLOOR:
        (state.time_floor,) = struct.unpack("<Q", body)
    elif code == OP_CLOCK:
        (state.clock_offset,) = struct.unpack("<q", body)
    elif code == OP_LOG_ANCHOR:
        state.log_anchor = (struct.unpack("<Q", body[:8])[0], body[8:])
    elif code == OP_LOCK:
        state.lock_state = LockState(body[0])
    elif code == OP_NONCE:
        state.spent_nonces.append(body)
    elif code == OP_COUNTER:
        state.counters[body[:16]] = struct.unpack("<Q", body[16:])[0]
    elif code == OP_WIPE:
        state.whitelist.clear()
        state.fast_keys.clear()
        state.revoked_shares.clear()
    elif code == OP_ADD_KEY:
        entry = WhitelistEntry(crypto.public_bytes(_key(body[:33])), Role(body[33]))
        state.whitelist[entry.key_id] = entry
    elif code == OP_REMOVE_KEY:
        state.whitelist.pop(body, None)
        state.fast_keys.pop(body, None)
    elif code == OP_SET_FAST:
        state.fast_keys[body[:16]] = body[16:]
    elif code == OP_SET_FAST_WRAPPED:
        key_id, secret = keywrap.unwrap(body)
        state.fast_keys[key_id] = secret
    elif code == OP_DROP_FAST:
        state.fast_keys.pop(body, None)
    elif code == OP_REVOKE_SHARE:
        state.revoked_shares[body[:16]] = struct.unpack("<Q", body[16:])[0]
    elif code == OP_REVOCATIONS:
        (state.revocation_version,) = struct.unpack_from("<Q", body)
        state.revoked.update(body[i : i + 16] for i in range(12, len(body), 16))
    elif code == OP_ISSUERS:
        keys = [_key(body[i : i + 33]) for i in range(1, len(body), 33)]
        state.issuers = {crypto.key_id(k): k for k in keys}
    elif code == OP_ADD_CARD:
        card = _key(body)
        state.keycards[crypto.key_id(card)] = card
    elif code == OP_REMOVE_CARD:
        state.keycards.pop(body, None)
    elif code == OP_BACKOFF:
        (state.backoff_level,) = struct.unpack("<I", body)


def snapshot_payload(state: FlashState, keywrap: FastKeyWrap | None) -> bytes:
    """The operations that rebuild ``state`` from nothing (fast-path secrets
    wrapped with ``keywrap``; None writes them in the clear, as formats 1 and
    2 did: migration tests only)."""
    ops = (
        Ops()
        .vin(state.vin)
        .floor(state.time_floor)
        .clock(state.clock_offset)
        .log_anchor(*state.log_anchor)
        .lock(state.lock_state)
        .backoff(state.backoff_level)
        .issuers(list(state.issuers.values()))
        .revocations(state.revocation_version, sorted(state.revoked))
    )
    for card in state.keycards.values():
        ops.add_card(card)
    for entry in state.whitelist.values():
        ops.add_key(entry)
    for key_id, counter in state.counters.items():
        ops.counter(key_id, counter)
    for key_id, secret in state.fast_keys.items():
        ops.set_fast(key_id, secret, keywrap)
    for share_id, not_after in state.revoked_shares.items():
        ops.revoke_share(share_id, not_after)
    for nonce in state.spent_nonces:
        ops.nonce(nonce)
    return ops.payload()


def over_capacity(state: FlashState) -> str | None:
    """What ``state`` holds more of than the layout allows, or None."""
    for what, count, limit in (
        ("keys", len(state.whitelist), MAX_KEYS),
        ("key counters", len(state.counters), MAX_COUNTERS),
        ("revocation ids", len(state.revoked), MAX_REVOCATIONS),
        ("share revocations", len(state.revoked_shares), MAX_SHARE_REVOCATIONS),
        ("keycards", len(state.keycards), MAX_KEYCARDS),
        ("issuer keys", len(state.issuers), MAX_ISSUERS),
    ):
        if count > limit:
            return f"{count} {what}, more than the {limit} the flash layout holds"
    return None
