"""Full handshake versus fast path through the phone client's own API.

The phone client (``phone_client.session.VehicleSession.command``) uses the
fast path by itself whenever it holds a fast key for the vehicle (an HMAC
under the key the last full handshake established; no public-key operation
on the vehicle) and says so in ``CommandOutcome.fast_path``. So:

- ``unlock_fast``: a plain ``run_command``; the benchmark checks that the
  answer really came on the fast path and raises ``NotFastPath`` otherwise
  (a fast attempt the vehicle refused falls back to a full handshake inside
  the same command, which must not be counted as a warm unlock).
- ``unlock_full``: the phone first forgets its fast key
  (``KeyStore.fast_keys.drop``, outside the timed part), so the command runs
  the full handshake; the new fast key it receives is stored durably before
  the command returns, as on any full handshake. Checked to be full.

``probe`` runs one full and one fast unlock and returns None when the warm
figure can be measured, else ``{"available": false, "why": ...}``.
"""

from __future__ import annotations

from typing import Any

from phone_client.keystore import KeyStore

from .rig import VIN, UnlockRig, UnlockSample
from .stats import unavailable


class NotFastPath(RuntimeError):
    """A command meant for one path was answered on the other."""


async def probe(rig: UnlockRig, keystore: KeyStore) -> dict[str, Any] | None:
    """A full handshake (which yields the fast key), then one fast unlock:
    None when it was answered on the fast path, else why the figure is missing."""
    try:
        await unlock_full(rig, keystore)
        sample = await rig.unlock(keystore)
    except Exception as exc:
        return unavailable(f"a fast-path unlock failed on this vehicle ({exc})")
    if not sample.fast_path:
        why = sample.fast_path_refused or "the phone held no fast key after a full handshake"
        return unavailable(f"the vehicle answered without the fast path ({why})")
    return None


async def unlock_fast(rig: UnlockRig, keystore: KeyStore) -> UnlockSample:
    """One unlock that must be answered on the fast path."""
    sample = await rig.unlock(keystore)
    if not sample.fast_path:
        raise NotFastPath(
            "a warm unlock was answered by a full handshake "
            f"(fast path refused: {sample.fast_path_refused or 'no fast key held'})"
        )
    return sample


async def unlock_full(rig: UnlockRig, keystore: KeyStore) -> UnlockSample:
    """One unlock by the full handshake (the phone's fast key dropped first)."""
    keystore.fast_keys.drop(VIN)
    sample = await rig.unlock(keystore)
    if sample.fast_path:
        raise NotFastPath("a full-handshake unlock was answered on the fast path")
    return sample
