"""The warm unlock: the fast path of issue 4, measured once it exists.

Until the protocol's fast path (``PhoneConnection.send_fast_command``,
``CommandCompleted.fast_key``) and a phone that uses it have landed,
``status()`` says why the figure is missing.
"""

from __future__ import annotations

from typing import Any

from phone_client.keystore import KeyStore
from protocol import PhoneConnection

from .rig import UnlockRig, UnlockSample
from .stats import unavailable


def status() -> dict[str, Any] | None:
    """None when warm unlocks can be measured, else why not."""
    if not hasattr(PhoneConnection, "send_fast_command"):
        return unavailable(
            "waiting on issue 4: the protocol's fast path (PhoneConnection.send_fast_command, "
            "CommandCompleted.fast_key) has not landed"
        )
    return unavailable("waiting on issue 4: the phone client does not use the fast path yet")


async def unlock(rig: UnlockRig, keystore: KeyStore) -> UnlockSample:
    raise NotImplementedError("fast path not available: " + str(status()))
