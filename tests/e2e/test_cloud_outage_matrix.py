"""Every cloud state against every state of the phone's cached credential.

The cloud is the real HTTP service on an ephemeral loopback port with its
fault injected; the phone talks to the real vehicle runtime through bleak's
API on the virtual adapter. The phone is enrolled through the cloud only (its
key is not on the whitelist), so whatever unlocks the car is a credential.
Each case checks the decision and that the phone's words say why.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ble_stack.bleak_backend import BumbleBleakClient, BumbleBleakScanner
from ble_stack.virtual_link import VirtualRadio
from cloud_sim.server import RunningCloud, start_cloud
from phone_client.central import PhoneKey
from phone_client.cloud_client import CloudClient
from phone_client.command_policy import run_command
from phone_client.errors import ConnectionLost, KeyUnavailable
from phone_client.keystore import KeyStore
from phonekey.demo_cloud import cache_credential_from, enroll, register_vehicle, revoke
from protocol import Command, LockState
from protocol.card import VehicleCard
from protocol.credentials import DEFAULT_VALIDITY, revocation_id
from vehicle_sim.runtime import VehicleRuntime
from vehicle_sim.state_store import FileVehicleStore, init_vehicle, open_store

VIN = "1HGCM82633A004352"
CLOUD_DEADLINE = 1.0
SLOW = "slow:0.2"  # answers, just late: well inside the deadline

CLOUD_STATES = ["none", "http-500", "blackhole", SLOW, "reset", "garbage", "bad-signature"]
CREDENTIAL_STATES = ["none-cached", "fresh", "near-expiry", "expired", "revoked"]

# What the phone can tell the user about each failing cloud.
CLOUD_WORDS = {
    "http-500": "HTTP 500",
    "blackhole": "no answer",
    "reset": "reset",
    "garbage": "invalid response",
    "bad-signature": "signature",
}


def expected(cloud: str, credential: str) -> tuple[str, str | None]:
    """(outcome, credential used) the phone must arrive at."""
    cloud_answers = cloud in ("none", SLOW)
    if credential == "revoked":
        return "denied", None  # the vehicle learned of the revocation: nothing gets in
    if credential in ("fresh", "near-expiry"):
        return "unlocked", "cache"  # never waits on the cloud, whatever it does
    # nothing valid cached: only a cloud that answers honestly can help
    return ("unlocked", "cloud") if cloud_answers else ("denied", None)


@dataclass
class Rig:
    cloud: RunningCloud
    card: VehicleCard
    token: str
    store: FileVehicleStore
    keystore: KeyStore
    kwargs: dict[str, object]
    workdir: Path


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    radio = VirtualRadio()
    cloud = await start_cloud(tmp_path / "cloud.db")
    card = init_vehicle(tmp_path / "car", VIN)
    keystore = KeyStore(tmp_path / "phone")
    keystore.keygen()
    keystore.add_vehicle(card, issuer=cloud.issuer_public_key, cloud_url=cloud.url)
    token = await register_vehicle(cloud, card)
    await enroll(cloud, token, card, keystore.public_key())
    phone_device = await radio.create_device("phone")
    kwargs: dict[str, object] = {
        "client_kwargs": {"backend": BumbleBleakClient, "bumble_device": phone_device},
        "scanner_kwargs": {"backend": BumbleBleakScanner, "bumble_device": phone_device},
    }
    try:
        with open_store(tmp_path / "car") as store:
            store.add_issuer(cloud.issuer_public_key)
            vehicle_device = await radio.create_device("vehicle")
            async with VehicleRuntime(store, vehicle_device):
                yield Rig(cloud, card, token, store, keystore, kwargs, tmp_path)
    finally:
        await cloud.close()


async def _cache_from_the_past(rig: Rig, issued_at: float) -> None:
    """Cache a credential the cloud issued when its clock read ``issued_at``."""
    past = await start_cloud(rig.workdir / "cloud.db", clock=lambda: issued_at)
    try:
        await cache_credential_from(past, rig.keystore, rig.card, clock=issued_at)
    finally:
        await past.close()


async def _prepare(rig: Rig, credential: str) -> None:
    now = time.time()
    if credential in ("fresh", "revoked"):
        await cache_credential_from(rig.cloud, rig.keystore, rig.card, clock=now)
    elif credential == "near-expiry":  # two minutes left
        await _cache_from_the_past(rig, now - DEFAULT_VALIDITY + 120)
    elif credential == "expired":  # an hour past, far beyond the vehicle's leeway
        await _cache_from_the_past(rig, now - DEFAULT_VALIDITY - 3600)
    if credential == "revoked":
        # The owner revoked the phone; another phone already carried the news
        # to the vehicle (tested on its own in test_bleak_unlock / the demo).
        version = await revoke(rig.cloud, rig.token, rig.card, rig.keystore.key_id())
        entry = revocation_id(rig.card.vehicle_id, rig.keystore.key_id())
        rig.store.apply_revocations(version, (entry,))


@pytest.mark.parametrize("credential", CREDENTIAL_STATES)
@pytest.mark.parametrize("cloud", CLOUD_STATES)
async def test_unlock_decision(rig: Rig, cloud: str, credential: str) -> None:
    await _prepare(rig, credential)
    rig.cloud.set_fault(cloud)
    want_outcome, want_credential = expected(cloud, credential)
    async with CloudClient(rig.cloud.url, call_timeout=CLOUD_DEADLINE) as client:
        try:
            outcome = await run_command(
                rig.keystore,
                VIN,
                Command.UNLOCK,
                cloud=client,
                cloud_deadline=CLOUD_DEADLINE,
                timeout=10.0,
                **rig.kwargs,  # type: ignore[arg-type]
            )
        except Exception as exc:
            got, used, words = "denied", None, str(exc)
        else:
            got = "unlocked" if outcome.ok and outcome.lock_state is LockState.UNLOCKED else "?"
            used, words = outcome.credential, outcome.message
    assert (got, used) == (want_outcome, want_credential), words
    assert rig.store.lock_state() is (
        LockState.UNLOCKED if want_outcome == "unlocked" else LockState.LOCKED
    )
    # The words say why.
    if credential == "revoked":
        assert "revoked" in words
    elif want_outcome == "denied":
        assert CLOUD_WORDS[cloud] in words, words
        if credential == "expired":
            assert "expired" in words, words
    elif cloud in CLOUD_WORDS:
        assert CLOUD_WORDS[cloud] in words and "cached credential" in words, words


async def test_a_lost_link_on_the_whitelist_fallback_does_not_hide_the_revocation(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the vehicle refuses a revoked credential, the phone tries its key on
    the whitelist over one more connection. If that link is lost, the answer is
    still the revocation, not "dropped the connection"."""
    await _prepare(rig, "revoked")
    connect = PhoneKey.connect
    calls = 0

    def connect_then_lose_the_link(self: PhoneKey, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # the whitelist fallback
            raise ConnectionLost(f"vehicle {VIN} dropped the connection")
        return connect(self, *args, **kwargs)

    monkeypatch.setattr(PhoneKey, "connect", connect_then_lose_the_link)
    async with CloudClient(rig.cloud.url, call_timeout=CLOUD_DEADLINE) as client:
        with pytest.raises(KeyUnavailable, match="revoked"):
            await run_command(
                rig.keystore,
                VIN,
                Command.UNLOCK,
                cloud=client,
                cloud_deadline=CLOUD_DEADLINE,
                timeout=10.0,
                **rig.kwargs,  # type: ignore[arg-type]
            )
    assert calls == 2
    assert rig.store.lock_state() is LockState.LOCKED
