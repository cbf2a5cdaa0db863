"""The journal's MACs: what the device key vouches for (flash formats 2 and 3).

The journal key is ``HKDF-SHA256(device key, salt "phonekey flash", info
"phonekey journal v2")``: never the device key itself, which the event log
uses (with its own label), so a MAC of one can never pass for the other.

Every MAC is ``HMAC-SHA256(journal key, label | context | bytes)[:16]``:

- bank header: label ``"PKJB header"``, then ``bank u8``, then the header's
  magic, version and generation. A header copied to the other bank fails.
- record: label ``"PKJB record"``, then ``bank u8 | generation u32 | offset
  u32 | prev 16``, then the record from its type to its payload (so its kind,
  length, sequence number and payload). ``prev`` is the MAC of the record
  before it in the bank (16 zero bytes for the snapshot, the bank's first
  record). A record moved to another bank, generation or offset, reordered,
  duplicated, or spliced from another image (or from a fork of this one) fails.

The snapshot's MAC is computed before its header is written (the header is
the commit point); the header needs no link to it, since the snapshot already
binds the bank and generation the header names.
"""

from __future__ import annotations

import struct

from protocol import crypto

from .records import MAC_LEN

JOURNAL_KEY_INFO = b"phonekey journal v2"
_SALT = b"phonekey flash"
_HEADER_LABEL = b"PKJB header"
_RECORD_LABEL = b"PKJB record"
_CONTEXT = struct.Struct("<BII")
FIRST_PREV = bytes(MAC_LEN)
"""The ``prev`` of a bank's first record (its snapshot)."""


def journal_key(device_key: bytes) -> bytes:
    return crypto.hkdf_sha256(device_key, salt=_SALT, info=JOURNAL_KEY_INFO)


class JournalAuth:
    """MACs the journal with the key derived from one device key."""

    def __init__(self, device_key: bytes) -> None:
        self._key = journal_key(device_key)

    def header_mac(self, bank: int, body: bytes) -> bytes:
        return self._mac(_HEADER_LABEL + bytes([bank]) + body)

    def record_mac(
        self, bank: int, generation: int, offset: int, prev: bytes, signed: bytes
    ) -> bytes:
        return self._mac(_RECORD_LABEL + _CONTEXT.pack(bank, generation, offset) + prev + signed)

    def _mac(self, data: bytes) -> bytes:
        return crypto.hmac_sha256(self._key, data)[:MAC_LEN]
