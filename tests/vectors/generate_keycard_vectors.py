#!/usr/bin/env python3
"""Write (default) or verify (``--check``) ``keycard_v1.json``.

    python tests/vectors/generate_keycard_vectors.py           # rewrite the vectors
    python tests/vectors/generate_keycard_vectors.py --check   # exit 1 if stale

One keycard tap per action of docs/firmware.md: the card's key (its
scalar comes from the deterministic rng of ``generate_vectors.py`` seeded with
``CARD_KEY_SEED``), the vehicle id and nonce, the exact bytes the card signs
and the RFC 6979 signature (raw r || s, low-S). Only regenerate after a
deliberate change of the format, and say so in the commit.
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _path in (str(ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from generate_vectors import RNG_DOC, key_from_seed, private_scalar_hex, render, write_or_check

from protocol import crypto
from vehicle_sim.keycard import TAP_DOMAIN, TapAction, card_id, sign_tap, tap_message

OUT = HERE / "keycard_v1.json"
CARD_KEY_SEED = b"phonekey test vector keycard"
VEHICLE_ID = bytes(range(16))
NONCE = bytes(range(0xA0, 0xB0))
ARGUMENTS = {
    TapAction.REMOVE_KEY: bytes(range(0x40, 0x50)),
    TapAction.ADD_CARD: bytes.fromhex(
        "036b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
    ),  # the P-256 generator, compressed
}


def build() -> dict[str, Any]:
    card = key_from_seed(CARD_KEY_SEED)
    taps = []
    for action in TapAction:
        argument = ARGUMENTS.get(action, b"")
        message = tap_message(VEHICLE_ID, NONCE, action, argument)
        taps.append(
            {
                "action": action.label,
                "action_byte": int(action),
                "argument": argument.hex(),
                "signed_message": message.hex(),
                "signature": sign_tap(card, VEHICLE_ID, NONCE, action, argument).hex(),
            }
        )
    return {
        "description": "keycard tap challenge-response (docs/firmware.md)",
        "rng": RNG_DOC,
        "card_key_seed": CARD_KEY_SEED.decode(),
        "card_private_scalar": private_scalar_hex(card),
        "card_public_key": crypto.public_bytes(card.public_key()).hex(),
        "card_id": card_id(card).hex(),
        "domain": TAP_DOMAIN.hex(),
        "vehicle_id": VEHICLE_ID.hex(),
        "nonce": NONCE.hex(),
        "taps": taps,
    }


def main(argv: list[str] | None = None) -> int:
    return write_or_check(
        {OUT: render(build())}, script=__file__, description=__doc__ or "", argv=argv
    )


if __name__ == "__main__":
    sys.exit(main())
