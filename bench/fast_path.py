"""The warm unlock: the fast path of issue 4 (an HMAC under the key the last
full handshake established; no public-key operation on the vehicle).

The phone client does not use the fast path yet, so the benchmark drives it
itself through the protocol's ``PhoneConnection.send_fast_command`` on a
``VehicleSession`` (reaching into the session's connection: a stopgap until
the phone client offers it). The first warm unlock of a phone runs a full
handshake to obtain the fast key; the benchmark discards it as warm-up.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from phone_client.central import PhoneKey
from phone_client.keystore import KeyStore
from protocol import ChallengeReceived, Command, CommandCompleted, PhoneConnection, PhoneState

from .rig import VIN, UnlockRig, UnlockSample, analyse
from .stats import unavailable

_TIMEOUT = 10.0
_PROBE_TIMEOUT = 3.0
_fast_keys: dict[Path, bytes] = {}


def status() -> dict[str, Any] | None:
    """None when warm unlocks can be measured, else why not."""
    if not hasattr(PhoneConnection, "send_fast_command"):
        return unavailable(
            "waiting on issue 4: the protocol's fast path (PhoneConnection.send_fast_command, "
            "CommandCompleted.fast_key) has not landed"
        )
    return None


async def probe(rig: UnlockRig, keystore: KeyStore) -> dict[str, Any] | None:
    """Warm ``keystore`` up (a full handshake yields the fast key), then try one
    fast unlock; None when it worked, else why the warm figure is missing."""
    try:
        await unlock(rig, keystore)
        sample = await unlock(rig, keystore, timeout=_PROBE_TIMEOUT)
    except Exception as exc:
        return unavailable(f"waiting on issue 4: a fast unlock failed on this vehicle ({exc})")
    if not sample.fast_path:
        return unavailable("waiting on issue 4: the vehicle answered without the fast path")
    return None


async def unlock(rig: UnlockRig, keystore: KeyStore, *, timeout: float = _TIMEOUT) -> UnlockSample:
    """Scan, connect, subscribe, then the fast command (or a full one, first)."""
    loop = asyncio.get_running_loop()
    phone = PhoneKey(keystore, client_kwargs=rig.client_kwargs, scanner_kwargs=rig.scanner_kwargs)
    home = keystore.home
    fast_key = _fast_keys.get(home)
    rig.tap.records.clear()
    start = time.perf_counter()
    async with phone.connect(VIN, timeout=timeout) as session:
        if fast_key is None:
            # The first contact: a full handshake, whose answer carries the fast key.
            completed = await session.command(Command.UNLOCK)
        else:
            conn = session._conn
            deadline = loop.time() + timeout
            while conn.state is not PhoneState.READY:
                await session._wait_for(ChallengeReceived, deadline, "a challenge")
            conn.send_fast_command(Command.UNLOCK, keystore.next_counter(VIN), fast_key)
            await session._write_pending()
            completed = await session._wait_for(CommandCompleted, deadline, "the response")
            keystore.observe_counter(VIN, completed.counter)
        result_at = loop.time()
        total = time.perf_counter() - start
    if completed.fast_key is not None:
        _fast_keys[home] = completed.fast_key
    figures = analyse(rig.tap.records, result_at)
    return UnlockSample(
        total_ms=total * 1000,
        scan_connect_ms=(total - figures.handshake_s) * 1000,
        handshake_ms=figures.handshake_s * 1000,
        figures=figures,
        credential="fast-path" if completed.fast_path else "whitelist",
        fast_path=completed.fast_path,
    )
