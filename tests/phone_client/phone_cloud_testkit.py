"""Helpers of the phone's cloud tests: the owner's calls to a real cloud, a
phone set up for a vehicle, and tiny hand-made clouds that lie.

(Named apart from tests/cloud_sim/cloud_testkit.py: test directories have no
__init__.py, so helper module names must be unique across them.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cloud_sim.server import RunningCloud
from phone_client import KeyStore
from protocol import crypto
from protocol.card import VehicleCard

VIN = "1HGCM82633A004352"


@dataclass
class Registered:
    """A vehicle registered with the cloud, and its owner token."""

    cloud: RunningCloud
    card: VehicleCard
    vehicle_id: str
    token: str

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        return await call(self.cloud.url, method, path, body, headers)

    async def enroll(self, public_key: crypto.PublicKey, role: str = "driver") -> None:
        status, answer = await self.call(
            "POST",
            f"/v1/vehicles/{self.vehicle_id}/phones",
            {"public_key": crypto.public_key_to_text(public_key), "role": role},
        )
        assert status in (200, 201), answer

    async def revoke(self, public_key: crypto.PublicKey) -> int:
        status, answer = await self.call(
            "POST",
            f"/v1/vehicles/{self.vehicle_id}/revocations",
            {"key_id": crypto.key_id(public_key).hex()},
        )
        assert status == 200, answer
        version: int = answer["version"]
        return version


async def call(
    url: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.request(method, url + path, json=body, headers=headers) as response,
    ):
        return response.status, await response.json()


async def register(cloud: RunningCloud, card: VehicleCard | None = None) -> Registered:
    card = card or VehicleCard(VIN, crypto.generate_private_key().public_key())
    status, answer = await call(cloud.url, "POST", "/v1/vehicles", {"card": card.to_text()})
    assert status == 201, answer
    return Registered(cloud, card, answer["vehicle_id"], answer["owner_token"])


def make_phone(
    home: Path,
    card: VehicleCard,
    *,
    issuer: crypto.PublicKey | None = None,
    cloud_url: str | None = None,
) -> KeyStore:
    keystore = KeyStore(home)
    keystore.keygen()
    keystore.add_vehicle(card, issuer=issuer, cloud_url=cloud_url)
    return keystore


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def fake_cloud(routes: dict[tuple[str, str], Handler]) -> AsyncIterator[str]:
    """Serve ``routes`` ({(method, path): handler}) on a loopback port; yields the URL."""
    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@contextmanager
def requests_sent() -> Iterator[list[str]]:
    """``METHOD URL`` of every HTTP request any aiohttp session starts meanwhile."""
    sent: list[str] = []
    real = aiohttp.ClientSession._request

    def spy(self: aiohttp.ClientSession, method: str, url: object, *a: Any, **kw: Any) -> Any:
        sent.append(f"{method} {url}")
        return real(self, method, url, *a, **kw)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aiohttp.ClientSession, "_request", spy)
        yield sent
