"""``FirmwareStore`` extras kept in RAM, for a store that lacks them.

Until the flash store (``vehicle_sim.flash``) is what ``open_store`` returns,
the JSON ``FileVehicleStore`` has no keycards, backoff checkpoint or event
log. ``as_firmware_store`` returns a store that has them unchanged, and wraps
one that does not in ``RamFirmware``: everything else is delegated, and the
extras live in RAM only (lost at power-off; the event log's chain is not
MAC'd). Tests also use it as a small firmware-store double.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from protocol import crypto
from protocol.store import StateChange, WhitelistEntry
from protocol.types import Role

from .firmware_store import FirmwareStore, FlashStats, LogEntry, LogEvent, LogKind, LogReadout


def as_firmware_store(store: object) -> FirmwareStore:
    if hasattr(store, "log_event") and hasattr(store, "backoff_level"):
        return cast(FirmwareStore, store)
    return cast(FirmwareStore, RamFirmware(store))


class RamFirmware:
    """Delegates to ``inner``; adds keycards, backoff level and log in RAM."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._cards: dict[bytes, crypto.PublicKey] = {}
        self._level = 0
        self._log: list[LogEntry] = []
        self.level_writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> RamFirmware:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._inner.close()

    def add_keys(self, keys: Iterable[tuple[crypto.PublicKey, Role]]) -> list[WhitelistEntry]:
        entries = [WhitelistEntry(crypto.public_bytes(key), role) for key, role in keys]
        self._inner.commit(StateChange(add_keys=tuple(entries)))
        return entries

    def factory_reset(self) -> None:
        self._inner.commit(StateChange(wipe=True))

    def keycards(self) -> list[crypto.PublicKey]:
        return list(self._cards.values())

    def add_keycard(self, public_key: crypto.PublicKey) -> bool:
        card_id = crypto.key_id(public_key)
        if card_id in self._cards:
            return False
        self._cards[card_id] = public_key
        return True

    def remove_keycard(self, card_id: bytes) -> bool:
        return self._cards.pop(card_id, None) is not None

    def backoff_level(self) -> int:
        return self._level

    def save_backoff_level(self, level: int) -> None:
        self._level = level
        self.level_writes += 1

    def log_event(self, event: LogEvent) -> None:
        last = self._log[-1] if self._log else None
        if (
            last is not None
            and event.kind is LogKind.DENIED
            and (last.kind, last.key_id, last.reason) == (event.kind, event.key_id, event.reason)
        ):
            self._log[-1] = LogEntry(
                last.seq, last.time, last.kind, last.key_id, last.reason, last.count + 1
            )
            return
        self._log.append(
            LogEntry(
                len(self._log) + 1,
                int(self._inner.now()),
                event.kind,
                event.key_id,
                event.reason,
                1,
            )
        )

    def flush_log(self) -> None:
        pass

    def read_log(self) -> LogReadout:
        return LogReadout(tuple(self._log), verified=True, problem=None, lost_to_wrap=0)

    def stats(self) -> FlashStats:
        return FlashStats(0, 0, 0, 0, 0, 0)
