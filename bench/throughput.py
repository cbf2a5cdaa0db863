"""Vehicle core throughput: handshakes per second through the sans-IO
``VehicleConnection``, beside the bare public-key operations they need.

A full handshake costs the vehicle two public-key operations: one ECDSA
P-256 verify (the phone's signature over the transcript) and one ECDH with
the phone's ephemeral key, which arrives as a 33-byte compressed point and
must be decompressed and checked on the curve before the exchange (OpenSSL's
point decoding; the exchange cannot be done without it). Everything else is
the protocol's: decoding, transcript hashing, HKDF/HMAC, state machine,
store commit. ``ratio_to_crypto`` is handshakes/s divided by
(verify + ECDH from the received point)/s: 1.0 would mean the protocol costs
nothing beyond its public-key operations; the target is >= 0.5. The JSON
also gives ``ratio_to_verify_and_exchange``, the ratio against verify and a
bare exchange on an already decoded point, for comparison with runs before
the point decoding was counted as part of ECDH.

Only the vehicle's work is timed: each handshake's request is signed
beforehand over the challenge the vehicle will issue (its random bytes are
drawn before the clock starts, as a hardware RNG delivers them). The store
is a ``MemoryStore``: this is the protocol core's figure, without
persistence. Blocks of handshakes and blocks of bare operations alternate in
one run, so all see the same machine.

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
    """The vehicle's rng for handshake ``index``: the same bytes every time,
    computed when it is made (before the clock starts)."""

    _BYTES = 128  # a handshake draws 32 (two nonces); more is spare

    def __init__(self, index: int) -> None:
        seed = index.to_bytes(8, "big")
        self._stream = b"".join(
            hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
            for block in range(self._BYTES // 32)
        )
        self._offset = 0

    def __call__(self, n: int) -> bytes:
        start, self._offset = self._offset, self._offset + n
        if self._offset > len(self._stream):
            raise RuntimeError("the bench rng ran out: raise _SeededRng._BYTES")
        return self._stream[start : self._offset]


@dataclass
class _Prepared:
    """One handshake's inputs, made before the clock starts."""

    index: int
    frames: list[bytes]  # the phone's request
    rng: _SeededRng  # the vehicle's random bytes, the ones the request was signed for


class _Bench:
    def __init__(self) -> None:
        self.identity = VehicleIdentity(crypto.generate_private_key(), _VIN)
        self.phone_key = crypto.generate_private_key()
        self.store = MemoryStore()
        self.store.add_key(self.phone_key.public_key(), Role.OWNER)
        self.ops: Counter[str] = Counter()
        self.handshakes = 0

    def _vehicle(self, rng: _SeededRng) -> VehicleConnection:
        return VehicleConnection(
            self.identity, self.store, clock=time.monotonic, rng=rng, att_mtu=247
        )

    def prepare(self, index: int) -> _Prepared:
        """The phone's request for handshake ``index`` (untimed)."""
        shadow = self._vehicle(_SeededRng(index))
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
        return _Prepared(index, phone.data_to_send(), _SeededRng(index))

    def handshake(self, prepared: _Prepared) -> None:
        """The vehicle's whole part of one handshake (timed)."""
        vehicle = self._vehicle(prepared.rng)
        vehicle.start()
        vehicle.data_to_send()
        for frame in prepared.frames:
            vehicle.receive_data(frame)
        executed = False
        while (event := vehicle.next_event()) is not None:
            executed = executed or (
                isinstance(event, CommandExecuted) and event.result is ResultCode.OK
            )
        if not executed or not vehicle.data_to_send():
            raise RuntimeError(f"handshake {prepared.index} failed: {vehicle.error}")
        self.ops.update(vehicle.crypto_ops)
        self.handshakes += 1


def measure(handshakes: int) -> dict[str, Any]:
    bench = _Bench()
    # Bare operations on the same kinds of inputs: a signature to verify, and
    # a phone ephemeral point as it arrives on the wire (compressed).
    message = hashlib.sha256(b"transcript").digest()
    signature = crypto.sign(bench.phone_key, message)
    phone_public = bench.phone_key.public_key()
    ephemeral_point = crypto.public_bytes(crypto.generate_private_key().public_key())
    ephemeral_public = crypto.public_key_from_bytes(ephemeral_point)
    vehicle_private = bench.identity.private_key

    handshake_seconds = crypto_seconds = decoded_seconds = 0.0
    done = 0
    bench.handshake(bench.prepare(0))  # warm-up
    while done < handshakes:
        block = min(_BLOCK, handshakes - done)
        prepared = [bench.prepare(i) for i in range(done + 1, done + 1 + block)]
        start = time.perf_counter()
        for one in prepared:
            bench.handshake(one)
        handshake_seconds += time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(block):
            crypto.verify(phone_public, signature, message)
            crypto.ecdh(vehicle_private, crypto.public_key_from_bytes(ephemeral_point))
        crypto_seconds += time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(block):
            crypto.verify(phone_public, signature, message)
            crypto.ecdh(vehicle_private, ephemeral_public)
        decoded_seconds += time.perf_counter() - start
        done += block
    per_s = handshakes / handshake_seconds
    crypto_per_s = handshakes / crypto_seconds
    decoded_per_s = handshakes / decoded_seconds
    per_handshake = {
        op: round(count / bench.handshakes, 3) for op, count in sorted(bench.ops.items())
    }
    return {
        "handshakes": handshakes,
        "handshakes_per_s": round(per_s, 1),
        "handshake_ms": round(1000 / per_s, 4),
        "crypto_per_s": round(crypto_per_s, 1),
        "crypto_ms": round(1000 / crypto_per_s, 4),
        "crypto": (
            "one ECDSA P-256 verify + one ECDH from the phone's compressed ephemeral point "
            "(decoded and checked on the curve, then exchanged) per handshake "
            "(cryptography/OpenSSL)"
        ),
        "crypto_ops_per_handshake": per_handshake,
        "ratio_to_crypto": ratio(per_s, crypto_per_s),
        "target_ratio_min": 0.5,
        "verify_and_exchange_ms": round(1000 / decoded_per_s, 4),
        "ratio_to_verify_and_exchange": ratio(per_s, decoded_per_s),
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
