"""Helpers shared by the cloud tests: a vehicle, phone keys, and the calls a
phone or owner makes, against a real server on a loopback port."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from cloud_sim.server import RunningCloud
from protocol import credentials, crypto
from protocol.card import VehicleCard
from protocol.cloud_request_auth import sign_credential_request

VIN = "1HGCM82633A004352"


@dataclass
class Owned:
    """A vehicle registered with the cloud, and its owner's token."""

    card: VehicleCard
    vehicle_id: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def new_card(vin: str = VIN) -> VehicleCard:
    return VehicleCard(vin, crypto.generate_private_key().public_key())


def key_text(key: crypto.PrivateKey) -> str:
    return crypto.public_key_to_text(key.public_key())


def key_id_hex(key: crypto.PrivateKey) -> str:
    return crypto.key_id(key.public_key()).hex()


def revocation_id_of(vehicle_id: str, key: crypto.PrivateKey) -> bytes:
    """The revocation list entry that revokes ``key`` on vehicle ``vehicle_id`` (hex)."""
    return credentials.revocation_id(bytes.fromhex(vehicle_id), crypto.key_id(key.public_key()))


async def call(
    http: aiohttp.ClientSession,
    cloud: RunningCloud,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request; returns the status and the decoded JSON body."""
    async with http.request(method, cloud.url + path, json=body, headers=headers) as response:
        return response.status, await response.json()


async def register(http: aiohttp.ClientSession, cloud: RunningCloud, vin: str = VIN) -> Owned:
    card = new_card(vin)
    status, answer = await call(http, cloud, "POST", "/v1/vehicles", {"card": card.to_text()})
    assert status == 201, answer
    return Owned(card, answer["vehicle_id"], answer["owner_token"])


async def enroll(
    http: aiohttp.ClientSession,
    cloud: RunningCloud,
    owned: Owned,
    phone: crypto.PrivateKey,
    role: str = "driver",
) -> tuple[int, Any]:
    return await call(
        http,
        cloud,
        "POST",
        f"/v1/vehicles/{owned.vehicle_id}/phones",
        {"public_key": key_text(phone), "role": role},
        owned.auth,
    )


def credential_body(
    phone: crypto.PrivateKey, vehicle_id: str, timestamp: int | None = None
) -> dict[str, object]:
    when = int(time.time()) if timestamp is None else timestamp
    return sign_credential_request(phone, bytes.fromhex(vehicle_id), when)


async def request_credential(
    http: aiohttp.ClientSession,
    cloud: RunningCloud,
    phone: crypto.PrivateKey,
    vehicle_id: str,
    timestamp: int | None = None,
) -> tuple[int, Any]:
    body = credential_body(phone, vehicle_id, timestamp)
    return await call(http, cloud, "POST", "/v1/credentials", body)


def b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
