#!/usr/bin/env python3
"""Write (default) or verify (``--check``) ``adv_privacy_v1.json``.

    python tests/vectors/generate_adv_privacy_vectors.py           # rewrite the vectors
    python tests/vectors/generate_adv_privacy_vectors.py --check   # exit 1 if stale

Private advertising (protocol/privacy.py, docs/protocol.md section 2): the
advertising secret derived from a vehicle identity (its scalar from the
deterministic rng of ``generate_vectors.py`` seeded with ``VEHICLE_KEY_SEED``),
then per epoch the tag, the manufacturer payload and the resolvable private
address, plus the IRK and ``ah`` inputs. Only regenerate after a deliberate
change of the format, and say so in the commit.
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

from protocol import privacy

OUT = HERE / "adv_privacy_v1.json"
VEHICLE_KEY_SEED = b"phonekey test vector adv vehicle"
ROTATION = 900.0
TIMES = [0.0, 899.999, 900.0, 1_767_225_600.0, 1_767_226_499.0, 1_767_226_500.0]
FIXED_SECRET = bytes(range(16))
FIXED_EPOCHS = [0, 1, 2**32, 2**64 - 1]


def _epoch_entry(secret: bytes, epoch: int) -> dict[str, Any]:
    tag = privacy.tag_for_epoch(secret, epoch)
    address = privacy.address_for_epoch(secret, epoch)
    return {
        "epoch": epoch,
        "tag": tag.hex(),
        "prand": tag[: privacy.PRAND_LEN].hex(),
        "hash": tag[privacy.PRAND_LEN :].hex(),
        "manufacturer_payload": privacy.adv_payload(secret, epoch).hex(),
        "address": privacy.address_text(address),
    }


def build() -> dict[str, Any]:
    vehicle = key_from_seed(VEHICLE_KEY_SEED)
    secret = privacy.derive_adv_secret(vehicle)
    return {
        "description": "private advertising: secret, per-epoch tag and address (docs/protocol.md)",
        "rng": RNG_DOC,
        "vehicle_key_seed": VEHICLE_KEY_SEED.decode(),
        "vehicle_private_scalar": private_scalar_hex(vehicle),
        "adv_secret": secret.hex(),
        "irk": privacy.address_irk(secret).hex(),
        "rotation": ROTATION,
        "times": [
            {"unix_time": t, **_epoch_entry(secret, privacy.epoch_of(t, ROTATION))} for t in TIMES
        ],
        "fixed_secret": FIXED_SECRET.hex(),
        "fixed_irk": privacy.address_irk(FIXED_SECRET).hex(),
        "fixed_epochs": [_epoch_entry(FIXED_SECRET, e) for e in FIXED_EPOCHS],
        "ah": [
            {"irk": irk.hex(), "prand": prand.hex(), "hash": privacy.ah(irk, prand).hex()}
            for irk, prand in [
                # Core spec Vol 3 Part H, Appendix D.7 sample data (big-endian)
                (bytes.fromhex("ec0234a357c8ad05341010a60a397d9b"), bytes.fromhex("708194")),
                (FIXED_SECRET, bytes.fromhex("400001")),
            ]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    return write_or_check(
        {OUT: render(build())}, script=__file__, description=__doc__ or "", argv=argv
    )


if __name__ == "__main__":
    sys.exit(main())
