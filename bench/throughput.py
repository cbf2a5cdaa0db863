"""Vehicle core throughput: handshakes per second through the sans-IO
``VehicleConnection``, beside the bare public-key operations they need.

A full handshake costs the vehicle one ECDSA P-256 verify (the phone's
signature over the transcript) and one ECDH (with the phone's ephemeral key)
plus everything else: decoding, transcript hashing, HKDF/HMAC, state
machine, store commit. ``ratio_to_crypto`` is handshakes/s divided by
(verify + ECDH)/s: 1.0 would mean the protocol costs nothing beyond its
public-key operations; the target is >= 0.5.

Only the vehicle's work is timed: each handshake's request is signed
beforehand over the challenge the vehicle will issue (its rng is seeded per
handshake). The store is a ``MemoryStore``: this is the protocol core's
figure, without persistence. Blocks of handshakes and blocks of bare
operations alternate in one run, so both see the same machine.

    python -m bench.throughput [--handshakes 400]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from protocol import (
    Command,
    CommandExecuted,
    MemoryStore,
    PhoneConnection,
    ResultCode,
    Role,
    VehicleConnection,
    VehicleIdentity,
    crypto,
)

from .stats import machine_info, ratio

_BLOCK = 20
_VIN = "1HGCM82633A004352"


class _SeededRng:
    """The vehicle's rng for handshake ``index``: the same bytes every time."""

    def __init__(self, index: int) -> None:
        self._stream = b""
        self._block = 0
        self._seed = index.to_bytes(8, "big")

    def __call__(self, n: int) -> bytes:
        while len(self._stream) < n:
            self._stream += hashlib.sha256(self._seed + self._block.to_bytes(4, "big")).digest()
            self._block += 1
        out, self._stream = self._stream[:n], self._stream[n:]
        return out


@dataclass
class _Prepared:
    index: int
    frames: list[bytes]
    signature: bytes
    transcript_hash: bytes
    ephemeral: crypto.PublicKey


class _Bench:
    def __init__(self) -> None:
        self.identity = VehicleIdentity(crypto.generate_private_key(), _VIN)
        self.phone_key = crypto.generate_private_key()
        self.store = MemoryStore()
        self.store.add_key(self.phone_key.public_key(), Role.OWNER)
        self.ops: Counter[str] = Counter()
        self.handshakes = 0

    def _vehicle(self, index: int) -> VehicleConnection:
        return VehicleConnection(
            self.identity, self.store, clock=time.monotonic, rng=_SeededRng(index), att_mtu=247
        )

    def prepare(self, index: int) -> list[bytes]:
        """The phone's request frames for handshake ``index`` (untimed)."""
        shadow = self._vehicle(index)
        shadow.start()
        phone = PhoneConnection(
            self.phone_key,
            self.identity.public_key,
            clock=time.monotonic,
            rng=os.urandom,
            att_mtu=247,
        )
        for frame in shadow.data_to_send():
            phone.receive_data(frame)
        while phone.next_event() is not None:
            pass
        phone.send_command(Command.UNLOCK, index + 1)
        return phone.data_to_send()

    def handshake(self, index: int, frames: list[bytes]) -> None:
        """The vehicle's whole part of one handshake (timed)."""
        vehicle = self._vehicle(index)
        vehicle.start()
        vehicle.data_to_send()
        for frame in frames:
            vehicle.receive_data(frame)
        executed = False
        while (event := vehicle.next_event()) is not None:
            executed = executed or (
                isinstance(event, CommandExecuted) and event.result is ResultCode.OK
            )
        if not executed or not vehicle.data_to_send():
            raise RuntimeError(f"handshake {index} failed: {vehicle.error}")
        ops = getattr(vehicle, "crypto_ops", None)  # counted by the core once issue 4 lands
        if ops is not None:
            self.ops.update(ops)
        self.handshakes += 1


def measure(handshakes: int) -> dict[str, Any]:
    bench = _Bench()
    # Bare operations on the same kinds of inputs: a signature to verify, a peer point.
    message = hashlib.sha256(b"transcript").digest()
    signature = crypto.sign(bench.phone_key, message)
    phone_public = bench.phone_key.public_key()
    ephemeral_public = crypto.generate_private_key().public_key()
    vehicle_private = bench.identity.private_key

    handshake_seconds = crypto_seconds = 0.0
    done = 0
    bench.handshake(0, bench.prepare(0))  # warm-up
    while done < handshakes:
        block = min(_BLOCK, handshakes - done)
        prepared = [(i, bench.prepare(i)) for i in range(done + 1, done + 1 + block)]
        start = time.perf_counter()
        for index, frames in prepared:
            bench.handshake(index, frames)
        handshake_seconds += time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(block):
            crypto.verify(phone_public, signature, message)
            crypto.ecdh(vehicle_private, ephemeral_public)
        crypto_seconds += time.perf_counter() - start
        done += block
    per_s = handshakes / handshake_seconds
    crypto_per_s = handshakes / crypto_seconds
    per_handshake = {
        op: round(count / bench.handshakes, 3) for op, count in sorted(bench.ops.items())
    }
    return {
        "handshakes": handshakes,
        "handshakes_per_s": round(per_s, 1),
        "handshake_ms": round(1000 / per_s, 4),
        "crypto_per_s": round(crypto_per_s, 1),
        "crypto_ms": round(1000 / crypto_per_s, 4),
        "crypto": "one ECDSA P-256 verify + one ECDH per handshake (cryptography/OpenSSL)",
        "crypto_ops_per_handshake": per_handshake or None,
        "ratio_to_crypto": ratio(per_s, crypto_per_s),
        "target_ratio_min": 0.5,
        "store": "MemoryStore (no persistence)",
        "interleaved_blocks_of": _BLOCK,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=400)
    args = parser.parse_args(argv)
    print(json.dumps({"machine": machine_info(), "throughput": measure(args.handshakes)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
