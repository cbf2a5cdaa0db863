"""The JSON form of the vehicle's changing state (``vehicle.json``), with validation.

Loading checks every field, so a hand-edited or half-written file is refused
with one clear reason instead of failing later in the middle of a handshake.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from protocol import crypto
from protocol.card import validate_vin
from protocol.codec import NONCE_LEN
from protocol.store import SPENT_NONCE_MEMORY, WhitelistEntry
from protocol.types import LockState, Role

FORMAT_VERSION = 1
_MAX_COUNTER = 2**64 - 1


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

    def copy(self) -> StoredState:
        """A copy to change and persist; the original stays as it was if that fails."""
        return StoredState(
            vin=self.vin,
            whitelist=dict(self.whitelist),
            counters=dict(self.counters),
            spent_nonces=deque(self.spent_nonces, maxlen=SPENT_NONCE_MEMORY),
            lock_state=self.lock_state,
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
    }
    return (json.dumps(document, indent=2) + "\n").encode()


def load_state(data: bytes) -> StoredState:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateFileCorrupt(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise StateFileCorrupt("the top level is not an object")
    if document.get("format") != FORMAT_VERSION:
        raise StateFileCorrupt(f"unknown format {document.get('format')!r}")
    try:
        vin = validate_vin(_typed(document, "vin", str))
    except ValueError as exc:
        raise StateFileCorrupt(str(exc)) from None
    return StoredState(
        vin=vin,
        whitelist=_load_whitelist(_typed(document, "whitelist", list)),
        counters=_load_counters(_typed(document, "counters", dict)),
        spent_nonces=_load_nonces(_typed(document, "spent_nonces", list)),
        lock_state=_enum(LockState, _typed(document, "lock_state", str), "lock_state"),
    )


def _typed(obj: dict[str, Any], name: str, kind: type) -> Any:
    if name not in obj:
        raise StateFileCorrupt(f"{name!r} is missing")
    value = obj[name]
    # bool is an int subclass in Python, but never a valid counter.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise StateFileCorrupt(f"{name!r} is not a {kind.__name__}")
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
