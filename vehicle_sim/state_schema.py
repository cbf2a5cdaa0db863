"""The JSON form of the vehicle's changing state (``vehicle.json``), with validation.

Since the flash store (``vehicle_sim.flash``) this is the legacy format: it is
only read, to migrate a state directory from before flash into its image
(``vehicle_sim.state_store.open_store``); nothing writes it any more but tests.

Loading checks every field, so a hand-edited or half-written file is refused
with one clear reason instead of failing later in the middle of a handshake.

Format history:

- 1: VIN, whitelist, counters, spent nonces, lock state.
- 2: adds what offline credential verification needs: ``issuers`` (trusted
  issuer public keys, at most two), ``revocations`` (list version and the
  revocation ids, ``protocol.credentials.revocation_id(vehicle_id, key_id)``,
  as a sorted hex list) and ``time`` (the persisted time
  floor and clock offset). A format-1 file loads with no issuer, revocation
  version 0, nothing revoked and a zero floor and offset; the next write
  (opening for writing is one) stores it as format 2.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from protocol import crypto
from protocol.card import validate_vin
from protocol.codec import NONCE_LEN
from protocol.store import SPENT_NONCE_MEMORY, WhitelistEntry
from protocol.types import LockState, Role

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
MAX_ISSUERS = 2
"""A vehicle trusts one issuer key, or two while the issuer rotates its key."""
_MAX_U64 = 2**64 - 1
_MAX_COUNTER = _MAX_U64


class StateFileCorrupt(ValueError):
    """``vehicle.json`` does not hold a valid state; the message says which part."""


def _spent_nonces() -> deque[bytes]:
    return deque(maxlen=SPENT_NONCE_MEMORY)


@dataclass
class StoredState:
    vin: str
    whitelist: dict[bytes, WhitelistEntry] = field(default_factory=dict)
    counters: dict[bytes, int] = field(default_factory=dict)
    spent_nonces: deque[bytes] = field(default_factory=_spent_nonces)
    lock_state: LockState = LockState.LOCKED
    # --- format 2: offline credentials ---
    issuers: dict[bytes, crypto.PublicKey] = field(default_factory=dict)  # by key id
    revocation_version: int = 0
    # Immutable, so a copy shares it: a command's commit never copies 10,000 ids.
    revoked: frozenset[bytes] = frozenset()  # revocation ids, not raw key ids
    time_floor: int = 0  # unix seconds the vehicle's clock never reads below
    clock_offset: int = 0  # seconds added to the wall clock (set from issuer time)

    def copy(self) -> StoredState:
        """A copy to change and persist; the original stays as it was if that fails."""
        return StoredState(
            vin=self.vin,
            whitelist=dict(self.whitelist),
            counters=dict(self.counters),
            spent_nonces=deque(self.spent_nonces, maxlen=SPENT_NONCE_MEMORY),
            lock_state=self.lock_state,
            issuers=dict(self.issuers),
            revocation_version=self.revocation_version,
            revoked=self.revoked,
            time_floor=self.time_floor,
            clock_offset=self.clock_offset,
        )


def dump_state(state: StoredState) -> bytes:
    document = {
        "format": FORMAT_VERSION,
        "vin": state.vin,
        "lock_state": state.lock_state.name.lower(),
        "whitelist": [
            {"public_key": entry.public_key.hex(), "role": entry.role.name.lower()}
            for entry in state.whitelist.values()
        ],
        "counters": {key_id.hex(): counter for key_id, counter in state.counters.items()},
        "spent_nonces": [nonce.hex() for nonce in state.spent_nonces],
        "issuers": [
            {"public_key": crypto.public_bytes(key).hex()} for key in state.issuers.values()
        ],
        "revocations": {"version": state.revocation_version, "revoked": _REVOKED_MARKER},
        "time": {"floor": state.time_floor, "offset": state.clock_offset},
    }
    text = json.dumps(document, indent=2)
    # The revoked ids go in on one line, encoded once per list: with 10,000 of
    # them, indenting each (json's slow path) on every command would cost more
    # than the command.
    text = text.replace(json.dumps(_REVOKED_MARKER), _revoked_json(state.revoked), 1)
    return (text + "\n").encode()


_REVOKED_MARKER = "\x00revoked\x00"  # no real field value can hold a NUL


@functools.lru_cache(maxsize=2)
def _revoked_json(revoked: frozenset[bytes]) -> str:
    # Lowercase hex sorts like the bytes, so the file lists them in id order;
    # hex digits need no JSON escaping.
    return "[" + ", ".join(f'"{rev_id.hex()}"' for rev_id in sorted(revoked)) + "]"


def load_state(data: bytes) -> StoredState:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateFileCorrupt(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise StateFileCorrupt("the top level is not an object")
    file_format = document.get("format")
    # bool is an int subclass: `true` would otherwise read as format 1.
    if isinstance(file_format, bool) or file_format not in READABLE_FORMATS:
        raise StateFileCorrupt(f"unknown format {file_format!r}")
    try:
        vin = validate_vin(_typed(document, "vin", str))
    except ValueError as exc:
        raise StateFileCorrupt(str(exc)) from None
    state = StoredState(
        vin=vin,
        whitelist=_load_whitelist(_typed(document, "whitelist", list)),
        counters=_load_counters(_typed(document, "counters", dict)),
        spent_nonces=_load_nonces(_typed(document, "spent_nonces", list)),
        lock_state=_enum(LockState, _typed(document, "lock_state", str), "lock_state"),
    )
    if file_format >= 2:
        state.issuers = _load_issuers(_typed(document, "issuers", list))
        revocations = _typed(document, "revocations", dict)
        state.revocation_version = _bounded(revocations, "version", 0, _MAX_U64, "revocations")
        state.revoked = _load_revoked(_typed(revocations, "revoked", list))
        clock = _typed(document, "time", dict)
        state.time_floor = _bounded(clock, "floor", 0, _MAX_U64, "time")
        state.clock_offset = _bounded(clock, "offset", -_MAX_U64, _MAX_U64, "time")
    # Format 1 had none of these: the defaults (no issuer, nothing revoked, no floor).
    return state


def _typed(obj: dict[str, Any], name: str, kind: type) -> Any:
    if name not in obj:
        raise StateFileCorrupt(f"{name!r} is missing")
    value = obj[name]
    # bool is an int subclass in Python, but never a valid counter.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise StateFileCorrupt(f"{name!r} is not a {kind.__name__}")
    return value


def _bounded(obj: dict[str, Any], name: str, low: int, high: int, where: str) -> int:
    if name not in obj:
        raise StateFileCorrupt(f"{where}.{name} is missing")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise StateFileCorrupt(f"{where}.{name} is not an integer")
    if not low <= value <= high:
        raise StateFileCorrupt(f"{where}.{name} is out of range")
    return value


def _enum(kind: type[LockState] | type[Role], name: str, what: str) -> Any:
    try:
        return kind[name.upper()]
    except KeyError:
        raise StateFileCorrupt(f"{what} {name!r} is unknown") from None


def _hex(text: object, what: str, length: int | None = None) -> bytes:
    if not isinstance(text, str):
        raise StateFileCorrupt(f"{what} is not a hex string")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise StateFileCorrupt(f"{what} is not valid hex") from None
    if length is not None and len(raw) != length:
        raise StateFileCorrupt(f"{what} is {len(raw)} bytes, expected {length}")
    return raw


def _load_whitelist(items: list[Any]) -> dict[bytes, WhitelistEntry]:
    whitelist: dict[bytes, WhitelistEntry] = {}
    for index, item in enumerate(items):
        what = f"whitelist[{index}]"
        if not isinstance(item, dict):
            raise StateFileCorrupt(f"{what} is not an object")
        raw = _hex(_typed(item, "public_key", str), f"{what}.public_key")
        try:
            key = crypto.public_key_from_bytes(raw)
        except crypto.InvalidKeyEncoding as exc:
            raise StateFileCorrupt(f"{what}.public_key: {exc}") from None
        role = _enum(Role, _typed(item, "role", str), f"{what}.role")
        entry = WhitelistEntry(crypto.public_bytes(key), role)
        whitelist[entry.key_id] = entry
    return whitelist


def _load_counters(items: dict[str, Any]) -> dict[bytes, int]:
    counters: dict[bytes, int] = {}
    for key_hex, counter in items.items():
        key_id = _hex(key_hex, f"counter key {key_hex!r}", crypto.KEY_ID_LEN)
        if isinstance(counter, bool) or not isinstance(counter, int):
            raise StateFileCorrupt(f"counter of {key_hex} is not an integer")
        if not 0 <= counter <= _MAX_COUNTER:
            raise StateFileCorrupt(f"counter of {key_hex} is out of range")
        counters[key_id] = counter
    return counters


def _load_nonces(items: list[Any]) -> deque[bytes]:
    nonces = _spent_nonces()
    for index, item in enumerate(items):
        nonces.append(_hex(item, f"spent_nonces[{index}]", NONCE_LEN))
    return nonces


def _load_issuers(items: list[Any]) -> dict[bytes, crypto.PublicKey]:
    if len(items) > MAX_ISSUERS:
        raise StateFileCorrupt(f"issuers holds {len(items)} keys, at most {MAX_ISSUERS}")
    issuers: dict[bytes, crypto.PublicKey] = {}
    for index, item in enumerate(items):
        what = f"issuers[{index}]"
        if not isinstance(item, dict):
            raise StateFileCorrupt(f"{what} is not an object")
        raw = _hex(_typed(item, "public_key", str), f"{what}.public_key")
        try:
            key = crypto.public_key_from_bytes(raw)
        except crypto.InvalidKeyEncoding as exc:
            raise StateFileCorrupt(f"{what}.public_key: {exc}") from None
        key_id = crypto.key_id(key)
        if key_id in issuers:
            raise StateFileCorrupt(f"{what} repeats an issuer key")
        issuers[key_id] = key
    return issuers


def _load_revoked(items: list[Any]) -> frozenset[bytes]:
    revoked = [
        _hex(item, f"revocations.revoked[{index}]", crypto.KEY_ID_LEN)
        for index, item in enumerate(items)
    ]
    # Written sorted and distinct; anything else was edited by hand or damaged.
    if any(a >= b for a, b in itertools.pairwise(revoked)):
        raise StateFileCorrupt("revocations.revoked is not sorted and distinct")
    return frozenset(revoked)
