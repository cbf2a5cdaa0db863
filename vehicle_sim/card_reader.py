"""The vehicle's NFC reader: verifies a keycard tap and carries out its action.

A tap is a challenge-response (``keycard.tap_message``): ``challenge`` hands
out a fresh nonce, the card signs it with the action, and ``tap`` verifies the
answer against the registered cards before acting. The console's control
socket drives the reader for `phonekey vehicle tap-card`; in-process callers
(the demo, tests) use ``tap_with_card``, which plays the card's part too.

Actions: unlock and lock as the backup key when every phone is lost or dead;
pair opens the short enrollment window in which a new owner phone may enroll
over BLE; remove-key and factory-reset recover a vehicle whose phones are
gone; add-card lets a registered card vouch for a new one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from protocol import crypto
from protocol.store import StateChange
from protocol.types import LockState, ResultCode

from .firmware_store import LogEvent, LogKind
from .keycard import (
    DEFAULT_WINDOW_SECONDS,
    NONCE_LEN,
    KeycardError,
    TapAction,
    card_id,
    sign_tap,
    verify_tap,
)

if TYPE_CHECKING:
    from .runtime import VehicleRuntime

logger = logging.getLogger(__name__)

CHALLENGE_SECONDS: Final = 30.0
"""How long a tap challenge stays valid: a card answers in milliseconds."""


class TapRefused(KeycardError):
    """The vehicle refuses the tap (one line, safe to show)."""


@dataclass(frozen=True)
class TapChallenge:
    vehicle_id: bytes
    nonce: bytes
    issued_at: float  # the runtime's monotonic clock


class KeycardReader:
    def __init__(
        self, runtime: VehicleRuntime, *, rng: Callable[[int], bytes] = os.urandom
    ) -> None:
        self._runtime = runtime
        self._rng = rng

    def challenge(self) -> TapChallenge:
        """A fresh nonce for one tap; the caller keeps it and hands it back once."""
        return TapChallenge(
            self._runtime.store.identity.vehicle_id,
            self._rng(NONCE_LEN),
            self._runtime.options.monotonic(),
        )

    def tap(
        self,
        challenge: TapChallenge | None,
        *,
        card: bytes,
        signature: bytes,
        action: TapAction,
        argument: bytes = b"",
        window: float = DEFAULT_WINDOW_SECONDS,
    ) -> dict[str, Any]:
        """Verify the card's answer to ``challenge`` and carry out ``action``.

        Raises ``TapRefused`` (or ``KeycardError``) for a tap the vehicle
        refuses and ``ValueError`` for a malformed argument or window.
        """
        runtime = self._runtime
        if challenge is None:
            raise TapRefused("no challenge outstanding: ask for one first")
        if runtime.options.monotonic() - challenge.issued_at > CHALLENGE_SECONDS:
            raise TapRefused("the challenge expired; tap again")
        store = runtime.store
        try:
            verify_tap(
                store.keycards(),
                card,
                signature,
                challenge.vehicle_id,
                challenge.nonce,
                action,
                argument,
            )
        except KeycardError:
            logged_id = card[:16].ljust(16, b"\0")
            runtime.log(LogEvent(LogKind.DENIED, logged_id, int(ResultCode.BAD_SIGNATURE)))
            raise
        return self._act(action, argument, card, window)

    def tap_with_card(
        self,
        card: crypto.PrivateKey,
        action: TapAction,
        argument: bytes = b"",
        *,
        window: float = DEFAULT_WINDOW_SECONDS,
    ) -> dict[str, Any]:
        """A whole tap in one call: the card answers the reader's own challenge."""
        challenge = self.challenge()
        signature = sign_tap(card, challenge.vehicle_id, challenge.nonce, action, argument)
        return self.tap(
            challenge,
            card=card_id(card),
            signature=signature,
            action=action,
            argument=argument,
            window=window,
        )

    def _act(
        self, action: TapAction, argument: bytes, card: bytes, window: float
    ) -> dict[str, Any]:
        runtime, store = self._runtime, self._runtime.store
        if action in (TapAction.UNLOCK, TapAction.LOCK):
            target = LockState.UNLOCKED if action is TapAction.UNLOCK else LockState.LOCKED
            before = store.lock_state()
            store.commit(StateChange(lock_state=target))
            runtime.log(
                LogEvent(LogKind.UNLOCK if action is TapAction.UNLOCK else LogKind.LOCK, card)
            )
            logger.info(
                "doors %s (were %s) by keycard %s",
                target.name.lower(),
                before.name.lower(),
                card[:4].hex(),
            )
            return {"lock_state": target.name.lower(), "was": before.name.lower()}
        if action is TapAction.PAIR:
            runtime.window.open(window, card)  # ValueError outside 0 < window <= max
            runtime.log(LogEvent(LogKind.CARD_TAP, card))
            return {"pairing_window_s": window}
        if action is TapAction.REMOVE_KEY:
            removed = store.remove_key(argument)
            if removed is None:
                raise TapRefused(f"key {argument.hex()} is not on the whitelist")
            runtime.log(LogEvent(LogKind.REMOVED, argument))
            return {"removed": argument.hex(), "role": removed.role.name.lower()}
        if action is TapAction.FACTORY_RESET:
            store.factory_reset()
            runtime.window.consume()
            runtime.log(LogEvent(LogKind.FACTORY_RESET, card))
            runtime.disconnect_all()
            return {"reset": True, "keys": len(store.keys())}
        # ADD_CARD: a registered card vouches for a new one.
        return add_keycard(runtime, crypto.public_key_from_bytes(argument))


def add_keycard(runtime: VehicleRuntime, public_key: crypto.PublicKey) -> dict[str, Any]:
    added = runtime.store.add_keycard(public_key)
    new_id = crypto.key_id(public_key)
    if added:
        runtime.log(LogEvent(LogKind.ENROLLED, new_id))
    return {"card_id": new_id.hex(), "added": added}
