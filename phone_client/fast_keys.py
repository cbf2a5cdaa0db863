"""The phone's fast-path secrets, one per vehicle, in ``fast-keys.json`` (0600).

After a full handshake answered OK (whitelist path, no credential or share),
phone and vehicle share a symmetric key (``CommandCompleted.fast_key``); a
later command authenticated with it costs the vehicle no public-key operation
(docs/protocol.md section 10). The key is a secret: it lives in its own file,
created readable by its owner only and replaced whole (``write_atomic``: temp
file, fsync, rename, fsync of the directory), so it is durably on disk before
the next command can use it. It is never logged, printed or put in a ``repr``.

Each key is bound to the phone key and the vehicle key it was derived for: a
new phone key (``keygen --force``) or another vehicle card under the same VIN
simply finds no usable key and the next command runs the full handshake.

A vehicle that answers FAST_PATH_UNAVAILABLE does not offer the fast path;
the phone stops trying it there for ``RETRY_UNAVAILABLE_AFTER`` seconds (the
refusal is unauthenticated, so it is not believed forever).

Layout::

    {"format": 1, "vehicles": {VIN: {"key": hex, "phone_key_id": hex,
                                     "vehicle_key": "p256:...",
                                     "unavailable_since": unix seconds}}}
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from phonekey.durable import write_atomic
from protocol import crypto

from .errors import KeyStoreError

FAST_KEYS_FILE: Final = "fast-keys.json"
FAST_KEYS_FORMAT: Final = 1
RETRY_UNAVAILABLE_AFTER: Final = 7 * 86400


class FastKeys:
    """Fast-path secrets of one phone home directory."""

    def __init__(self, home: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(home) / FAST_KEYS_FILE
        self._clock = clock

    def get(self, vin: str, phone_key_id: bytes, vehicle_key: crypto.PublicKey) -> bytes | None:
        """The key for ``vin`` if one is held for exactly this phone key and
        vehicle key and the vehicle was not seen refusing the fast path lately."""
        entry = self._load().get(vin)
        if entry is None or "key" not in entry:
            return None
        if entry.get("phone_key_id") != phone_key_id.hex():
            return None
        if entry.get("vehicle_key") != crypto.public_key_to_text(vehicle_key):
            return None
        return bytes.fromhex(entry["key"])

    def unavailable(self, vin: str) -> bool:
        """True while the vehicle's FAST_PATH_UNAVAILABLE is believed."""
        since = self._load().get(vin, {}).get("unavailable_since")
        return since is not None and self._clock() - since < RETRY_UNAVAILABLE_AFTER

    def store(
        self, vin: str, phone_key_id: bytes, vehicle_key: crypto.PublicKey, key: bytes
    ) -> None:
        """Durably keep ``key`` for ``vin`` (replacing any earlier one)."""
        if len(key) != crypto.MAC_LEN:
            raise KeyStoreError(f"a fast-path key is {crypto.MAC_LEN} bytes")
        vehicles = self._load()
        vehicles[vin] = {
            "key": key.hex(),
            "phone_key_id": phone_key_id.hex(),
            "vehicle_key": crypto.public_key_to_text(vehicle_key),
        }
        self._save(vehicles)

    def drop(self, vin: str, *, unavailable: bool = False) -> None:
        """Forget the key for ``vin``; ``unavailable`` also stops fast attempts
        on that vehicle for a while. Written only when something changes."""
        vehicles = self._load()
        entry = vehicles.get(vin, {})
        new: dict[str, Any] = {}
        if unavailable:
            new["unavailable_since"] = int(self._clock())
        if entry == new:
            return
        if new:
            vehicles[vin] = new
        else:
            vehicles.pop(vin, None)
        self._save(vehicles)

    def held(self, vin: str) -> bool:
        """Whether a fast key (for any phone key) is stored for ``vin``."""
        return "key" in self._load().get(vin, {})

    # --- storage -----------------------------------------------------------------
    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise KeyStoreError(f"cannot open {self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyStoreError(
                    f"refusing to use {self.path}: it is accessible by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {self.path}`"
                )
            data = f.read()
        try:
            state = json.loads(data)
            return _checked(state)
        except (ValueError, TypeError, KeyError) as exc:
            raise KeyStoreError(
                f"{self.path} is corrupt ({exc}); delete it (the next command of each "
                "vehicle runs the full handshake and makes a new fast-path key)"
            ) from None

    def _save(self, vehicles: dict[str, dict[str, Any]]) -> None:
        state = {"format": FAST_KEYS_FORMAT, "vehicles": vehicles}
        data = json.dumps(state, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        try:
            write_atomic(self.path, data)
        except OSError as exc:
            raise KeyStoreError(f"cannot write {self.path}: {exc.strerror}") from None


def _checked(state: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(state, dict) or state.get("format") != FAST_KEYS_FORMAT:
        raise ValueError(f"expected an object with format {FAST_KEYS_FORMAT}")
    vehicles = state["vehicles"]
    if not isinstance(vehicles, dict):
        raise ValueError("'vehicles' is not an object")
    for vin, entry in vehicles.items():
        if not isinstance(entry, dict):
            raise ValueError(f"entry for {vin!r} is not an object")
        if "key" in entry:
            key = bytes.fromhex(entry["key"])  # ValueError if not hex
            if len(key) != crypto.MAC_LEN:
                raise ValueError(f"the key for {vin!r} is not {crypto.MAC_LEN} bytes")
            for name in ("phone_key_id", "vehicle_key"):
                if not isinstance(entry.get(name), str):
                    raise ValueError(f"entry for {vin!r} has a bad {name!r}")
        since = entry.get("unavailable_since")
        if since is not None and (not isinstance(since, int) or isinstance(since, bool)):
            raise ValueError(f"entry for {vin!r} has a bad 'unavailable_since'")
    return vehicles
