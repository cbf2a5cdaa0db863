"""Fixtures: a real cloud on an ephemeral loopback port, and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from cloud_sim.server import RunningCloud, start_cloud


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[RunningCloud]:
    running = await start_cloud(tmp_path / "cloud.db")
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session
