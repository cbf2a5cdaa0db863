"""The demo's replay of the outage: a real credential cloud on 127.0.0.1 that
fails while a phone it authorised earlier keeps unlocking the car offline.

Setup (not steps): the vehicle trusts the cloud's issuer key; the cloud knows
the vehicle and its owner account; the owner enrols a renter's phone as a
driver through the cloud (the renter's key is never on the vehicle's
whitelist), and a second, "lapsed" phone whose credential was issued a week
ago and has expired since.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from cloud_sim.server import RunningCloud, start_cloud
from phone_client.cloud_client import CloudClient
from phone_client.credential_cache import CredentialCache
from phone_client.keystore import KeyStore
from protocol import crypto
from protocol.card import VehicleCard

WEEK = 7 * 24 * 3600


@dataclass
class CloudSetup:
    cloud: RunningCloud
    past_cloud: RunningCloud  # the same cloud as it was eight days ago
    owner_token: str


async def start_clouds(workdir: Path) -> tuple[RunningCloud, RunningCloud]:
    db = workdir / "cloud.db"
    cloud = await start_cloud(db)
    # A second server over the same database whose clock reads eight days ago:
    # the lapsed phone got its credential from it, "back then".
    past = await start_cloud(db, clock=lambda: time.time() - WEEK - 86400)
    return cloud, past


async def _post(url: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    """One JSON POST to our own loopback cloud (setup only, never on an unlock path)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.post(url, json=body, headers=headers) as answer:
            result: dict[str, Any] = await answer.json()
            if answer.status >= 400:
                raise RuntimeError(f"cloud refused demo setup: {result.get('error')}")
            return result


async def register_vehicle(cloud: RunningCloud, card: VehicleCard) -> str:
    answer = await _post(f"{cloud.url}/v1/vehicles", {"card": card.to_text()})
    return str(answer["owner_token"])


async def enroll(cloud: RunningCloud, token: str, card: VehicleCard, key: crypto.PublicKey) -> None:
    await _post(
        f"{cloud.url}/v1/vehicles/{card.vehicle_id.hex()}/phones",
        {"public_key": crypto.public_key_to_text(key), "role": "driver"},
        token,
    )


async def revoke(cloud: RunningCloud, token: str, card: VehicleCard, key_id: bytes) -> int:
    answer = await _post(
        f"{cloud.url}/v1/vehicles/{card.vehicle_id.hex()}/revocations",
        {"key_id": key_id.hex()},
        token,
    )
    return int(answer["version"])


async def cache_credential_from(
    cloud: RunningCloud, keystore: KeyStore, card: VehicleCard, *, clock: float
) -> None:
    """Fetch and cache a credential as the phone did when ``clock`` was now."""
    async with CloudClient(cloud.url, clock=lambda: clock) as client:
        credential = await client.request_credential(keystore, card)
    if not CredentialCache(keystore).store(card.vin, credential, int(clock)):
        raise RuntimeError("the cache refused a credential the cloud issued")
