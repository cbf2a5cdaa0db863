"""Fixtures of the phone tests: a real credential cloud on an ephemeral loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud_sim.server import RunningCloud, start_cloud


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[RunningCloud]:
    running = await start_cloud(tmp_path / "cloud.db", "127.0.0.1", 0)
    try:
        yield running
    finally:
        await running.close()
