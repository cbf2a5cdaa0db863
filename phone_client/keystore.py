"""The phone's persistent state: its private key, paired vehicles, counters.

Layout of the home directory (mode 0700)::

    key.pem       the phone's P-256 private key, PKCS#8 PEM, mode 0600
    phone.json    {"format": 2, "vehicles": {VIN: {"card": ..., "counter": N,
                   "issuer": "p256:...", "cloud": "http://...", "whitelisted": true,
                   "shares": {"imported": [...], "issued": [...]}}}}
    fast-keys.json  the fast-path secrets, mode 0600 (fast_keys)
    credentials/  cached cloud credentials and revocation news (credential_cache)
    cloud-breaker.json   the cloud circuit breaker's state (circuit_breaker)

``issuer`` and ``cloud`` are optional: the issuer key this phone trusts to
sign credentials for the vehicle, and the cloud it asks for them.
``previous_issuer`` (optional) is the key ``issuer`` replaced in an issuer
rotation signed by it; it stays trusted (``pin_rotated_issuer``).
``whitelisted`` (optional, default false) records that the vehicle last
accepted this phone's key on the whitelist path: such a phone need not wait
for the cloud before connecting (see ``command_policy.run_command``).

``shares`` (optional, format 2) holds the offline shares this phone imported
(to present to the vehicle) and issued (so its owner can list and revoke
them); see ``share_book``. Format 1 files (before shares) load unchanged and
are written back as format 2.

``phone.json`` is only ever replaced whole (temp file + fsync + os.replace),
so a crash leaves either the old or the new file, never a torn one.

Counters. The vehicle accepts a command only if its counter is above every
counter it accepted from this key before, so the phone must never reuse one.
``next_counter`` therefore persists the new value *before* returning it: a
crash after that wastes a number but never repeats one. Each counter is also
at least the wall clock in microseconds since the epoch. Without that, a key
store restored from a backup would hand out counters the vehicle has already
seen and every command would be refused as a replay until the phone caught
up; with it, the restored store jumps past them as long as the clock moved
forward (a phone cannot send a million commands a second, so the clock stays
ahead of the +1 steps).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from platformdirs import user_data_dir

from phonekey.durable import fsync_directory, write_atomic
from protocol import crypto
from protocol.card import InvalidCard, VehicleCard, validate_vin

from .errors import KeyStoreError, UnknownVehicle
from .fast_keys import FastKeys
from .trust import VehicleTrust

KEY_FILE: Final = "key.pem"
STATE_FILE: Final = "phone.json"
STATE_FORMAT: Final = 2
_OLD_FORMATS: Final = (1,)  # loaded as they are: format 2 only added optional fields
_MAX_COUNTER: Final = 2**64 - 1


def default_home() -> Path:
    """Per-user data directory. The phone lives in a ``phone`` subdirectory so a
    vehicle simulator using the same application directory cannot collide."""
    return Path(user_data_dir("phonekey")) / "phone"


def wall_clock_counter() -> int:
    """Microseconds since the epoch: the floor for every new counter."""
    return time.time_ns() // 1000


class KeyStore:
    """One phone's key and paired vehicles, stored under ``home``."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.key_path = self.home / KEY_FILE
        self.state_path = self.home / STATE_FILE
        self._private_key: crypto.PrivateKey | None = None
        self.fast_keys = FastKeys(self.home)

    # --- the phone's key -------------------------------------------------------
    def has_key(self) -> bool:
        return self.key_path.exists()

    def keygen(self, *, force: bool = False) -> crypto.PublicKey:
        """Create the phone's key pair; refuse to replace one unless ``force``.

        Replacing a key orphans every whitelist entry made for the old one,
        which is why it needs ``force``.
        """
        self._ensure_home()
        key = crypto.generate_private_key()
        pem = crypto.private_key_to_pem(key)
        if force:
            # Write aside, then swap: the old key survives a crash mid-write.
            tmp = self.key_path.with_name(f".{KEY_FILE}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            _write_new_file(tmp, pem)
            os.replace(tmp, self.key_path)
            fsync_directory(self.home)
        else:
            try:
                _write_new_file(self.key_path, pem)
            except FileExistsError:
                raise KeyStoreError(
                    f"{self.key_path} already holds this phone's key; pass --force to "
                    "replace it (vehicles that whitelisted the old key will refuse the new one)"
                ) from None
            fsync_directory(self.home)
        self._private_key = key
        return key.public_key()

    @property
    def private_key(self) -> crypto.PrivateKey:
        if self._private_key is None:
            self._private_key = self._load_key()
        return self._private_key

    def public_key(self) -> crypto.PublicKey:
        return self.private_key.public_key()

    def public_key_text(self) -> str:
        """``p256:<hex>``, as ``phonekey vehicle add-key --key`` accepts it."""
        return crypto.public_key_to_text(self.public_key())

    def key_id(self) -> bytes:
        return crypto.key_id(self.public_key())

    def _load_key(self) -> crypto.PrivateKey:
        path = self.key_path
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise KeyStoreError(
                f"no phone key in {self.home}; create one with `phonekey phone keygen`"
            ) from None
        except OSError as exc:
            raise KeyStoreError(f"cannot open {path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            # Check the opened file, not the path, so a swap in between cannot fool us.
            mode = os.fstat(f.fileno()).st_mode
            if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyStoreError(
                    f"refusing to use {path}: it is accessible by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
                )
            data = f.read()
        try:
            return crypto.private_key_from_pem(data)
        except ValueError as exc:  # also InvalidKeyEncoding and PEM parse errors
            raise KeyStoreError(f"{path} does not hold a usable P-256 key: {exc}") from None

    # --- paired vehicles -----------------------------------------------------
    def add_vehicle(
        self,
        card: VehicleCard,
        *,
        issuer: crypto.PublicKey | None = None,
        cloud_url: str | None = None,
    ) -> None:
        """Store (or replace) the card for ``card.vin``; its counter is kept, and
        so are its issuer key and cloud unless new ones are given."""
        if cloud_url is not None:
            cloud_url = validate_cloud_url(cloud_url)
        state = self._load_state()
        entry = state["vehicles"].setdefault(card.vin, {"counter": 0})
        old_card = entry.get("card")
        if old_card is None or _card_vehicle_key(old_card) != _card_vehicle_key(card.to_text()):
            entry.pop("whitelisted", None)  # learnt about another vehicle key
            entry.pop("shares", None)  # shares name the vehicle key they were made for
        entry["card"] = card.to_text()
        if issuer is None:
            issuer = card.issuer  # the vehicle's own card names the issuer it trusts
        if issuer is not None:
            entry["issuer"] = crypto.public_key_to_text(issuer)
        if cloud_url is not None:
            entry["cloud"] = cloud_url
        self._save_state(state)

    def pin_rotated_issuer(self, vin: str, new_issuer: crypto.PublicKey) -> None:
        """Pin ``new_issuer`` (vouched for by the pinned key in a verified
        rotation) as the vehicle's issuer; the key it replaces stays trusted as
        ``previous_issuer``, any older one is dropped (as on the vehicle)."""
        vin = _vin(vin)
        state = self._load_state()
        entry = state["vehicles"].get(vin)
        if entry is None:
            raise UnknownVehicle(vin)
        new_text = crypto.public_key_to_text(new_issuer)
        if entry.get("issuer") == new_text:
            return
        if "issuer" in entry:
            entry["previous_issuer"] = entry["issuer"]
        entry["issuer"] = new_text
        self._save_state(state)

    def vehicle_trust(self, vin: str) -> VehicleTrust:
        """The card, pinned issuer key and cloud URL for ``vin``."""
        vin = _vin(vin)
        entry = self._load_state()["vehicles"].get(vin)
        if entry is None:
            raise UnknownVehicle(vin)
        issuer, previous = None, None
        try:
            if "issuer" in entry:
                issuer = crypto.public_key_from_text(entry["issuer"])
            if "previous_issuer" in entry:
                previous = crypto.public_key_from_text(entry["previous_issuer"])
        except ValueError as exc:
            raise KeyStoreError(f"{self.state_path}: bad issuer key for {vin}: {exc}") from None
        return VehicleTrust(self._card(vin, entry), issuer, entry.get("cloud"), previous)

    def remove_vehicle(self, vin: str) -> None:
        vin = _vin(vin)
        state = self._load_state()
        if state["vehicles"].pop(vin, None) is None:
            raise UnknownVehicle(vin)
        self._save_state(state)
        self.fast_keys.drop(vin)

    def vehicle(self, vin: str) -> VehicleCard:
        vin = _vin(vin)
        entry = self._load_state()["vehicles"].get(vin)
        if entry is None:
            raise UnknownVehicle(vin)
        return self._card(vin, entry)

    def vehicles(self) -> list[VehicleCard]:
        vehicles = self._load_state()["vehicles"]
        return [self._card(vin, entry) for vin, entry in sorted(vehicles.items())]

    # --- what the vehicle said about this phone's key -----------------------------
    def whitelist_accepted(self, vin: str) -> bool:
        """Whether ``vin`` last accepted this phone's key on the whitelist path."""
        vin = _vin(vin)
        entry = self._load_state()["vehicles"].get(vin)
        if entry is None:
            raise UnknownVehicle(vin)
        return bool(entry.get("whitelisted", False))

    def set_whitelist_accepted(self, vin: str, accepted: bool) -> None:
        """Record the vehicle's latest verdict on the whitelist path: True after an
        authenticated OK, False after UNKNOWN_KEY or a revocation. Written only
        when it changes."""
        vin = _vin(vin)
        state = self._load_state()
        entry = state["vehicles"].get(vin)
        if entry is None:
            raise UnknownVehicle(vin)
        if bool(entry.get("whitelisted", False)) is accepted:
            return
        if accepted:
            entry["whitelisted"] = True
        else:
            entry.pop("whitelisted", None)
        self._save_state(state)

    # --- raw entries (for share_book) ---------------------------------------------
    def entry(self, vin: str) -> dict[str, Any]:
        """A copy of ``vin``'s entry in phone.json (raises UnknownVehicle)."""
        vin = _vin(vin)
        entry = self._load_state()["vehicles"].get(vin)
        if entry is None:
            raise UnknownVehicle(vin)
        return dict(entry)

    def update_entry(self, vin: str, change: Callable[[dict[str, Any]], bool]) -> None:
        """Apply ``change`` to ``vin``'s entry; written (whole, durably) if it returns True."""
        vin = _vin(vin)
        state = self._load_state()
        entry = state["vehicles"].get(vin)
        if entry is None:
            raise UnknownVehicle(vin)
        if change(entry):
            self._save_state(state)

    # --- counters --------------------------------------------------------------
    def next_counter(self, vin: str) -> int:
        """The counter for the next command to ``vin``, persisted before return."""
        vin = _vin(vin)
        state = self._load_state()
        entry = state["vehicles"].get(vin)
        if entry is None:
            raise UnknownVehicle(vin)
        counter = max(int(entry["counter"]) + 1, wall_clock_counter())
        if counter > _MAX_COUNTER:
            raise KeyStoreError(f"the command counter for {vin} is exhausted")
        entry["counter"] = counter
        self._save_state(state)
        return counter

    def counter(self, vin: str) -> int:
        """The last counter handed out (or confirmed) for ``vin``; 0 if none."""
        vin = _vin(vin)
        entry = self._load_state()["vehicles"].get(vin)
        if entry is None:
            raise UnknownVehicle(vin)
        return int(entry["counter"])

    def observe_counter(self, vin: str, counter: int) -> None:
        """Record a counter from an authenticated response: keep the maximum."""
        vin = _vin(vin)
        state = self._load_state()
        entry = state["vehicles"].get(vin)
        if entry is None:
            raise UnknownVehicle(vin)
        if counter > int(entry["counter"]):
            entry["counter"] = counter
            self._save_state(state)

    # --- storage -----------------------------------------------------------------
    def _ensure_home(self) -> None:
        try:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise KeyStoreError(f"cannot create {self.home}: {exc.strerror}") from None

    def _load_state(self) -> dict[str, Any]:
        try:
            text = self.state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"format": STATE_FORMAT, "vehicles": {}}
        except OSError as exc:
            raise KeyStoreError(f"cannot read {self.state_path}: {exc.strerror}") from None
        try:
            state = json.loads(text)
            _check_state(state)
        except (ValueError, TypeError, KeyError) as exc:
            raise KeyStoreError(
                f"{self.state_path} is corrupt ({exc}); restore it from a backup "
                "or move it away and add the vehicle cards again"
            ) from None
        return state  # type: ignore[no-any-return]

    def _save_state(self, state: dict[str, Any]) -> None:
        self._ensure_home()
        state["format"] = STATE_FORMAT
        data = json.dumps(state, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        write_atomic(self.state_path, data)

    def _card(self, vin: str, entry: dict[str, Any]) -> VehicleCard:
        try:
            return VehicleCard.from_text(entry["card"])
        except (InvalidCard, KeyError, AttributeError) as exc:
            raise KeyStoreError(f"{self.state_path}: bad card for {vin}: {exc}") from None


def _vin(vin: str) -> str:
    try:
        return validate_vin(vin)
    except ValueError as exc:
        raise KeyStoreError(str(exc)) from None


def validate_cloud_url(url: str) -> str:
    """An ``http(s)://host[:port][/path]`` URL without a trailing slash."""
    from urllib.parse import urlsplit

    url = url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise KeyStoreError(f"invalid cloud URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KeyStoreError(f"invalid cloud URL {url!r}: use http(s)://HOST[:PORT]")
    if parts.query or parts.fragment:
        raise KeyStoreError(f"invalid cloud URL {url!r}: no query or fragment")
    return url


def _check_state(state: Any) -> None:
    """Shape check, so corruption surfaces as one clear error, not a KeyError later."""
    if not isinstance(state, dict) or state.get("format") not in (STATE_FORMAT, *_OLD_FORMATS):
        raise ValueError(f"expected an object with format {STATE_FORMAT}")
    vehicles = state["vehicles"]
    if not isinstance(vehicles, dict):
        raise ValueError("'vehicles' is not an object")
    for vin, entry in vehicles.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("card"), str):
            raise ValueError(f"entry for {vin!r} has no card")
        counter = entry.get("counter")
        if not isinstance(counter, int) or isinstance(counter, bool) or counter < 0:
            raise ValueError(f"entry for {vin!r} has a bad counter")
        for optional in ("issuer", "previous_issuer", "cloud"):
            if optional in entry and not isinstance(entry[optional], str):
                raise ValueError(f"entry for {vin!r} has a bad {optional!r}")
        if "whitelisted" in entry and not isinstance(entry["whitelisted"], bool):
            raise ValueError(f"entry for {vin!r} has a bad 'whitelisted'")
        if "shares" in entry:
            _check_shares(vin, entry["shares"])


def _check_shares(vin: str, shares: Any) -> None:
    if not isinstance(shares, dict):
        raise ValueError(f"entry for {vin!r} has bad 'shares'")
    for kind in ("imported", "issued"):
        records = shares.get(kind, [])
        if not isinstance(records, list) or not all(
            isinstance(record, dict) and isinstance(record.get("share"), str) for record in records
        ):
            raise ValueError(f"entry for {vin!r} has bad {kind} shares")


def _write_new_file(path: Path, data: bytes) -> None:
    """Create ``path`` (never existing before) readable by its owner only, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def _card_vehicle_key(card_text: str) -> str:
    """The vehicle-key part of a card line (the issuer part may come and go)."""
    parts = card_text.split(":")
    return ":".join(parts[3:5])
