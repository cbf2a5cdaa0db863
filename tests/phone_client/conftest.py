"""Fixtures of the phone tests: a real credential cloud on an ephemeral loopback
port, and (from ``phone_issue4_rig``) a vehicle on a virtual radio with phones
made on demand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from phone_issue4_rig import (  # noqa: F401  (fixtures are found by name)
    make_phone,
    radio,
    sessions,
    vehicle,
)

from cloud_sim.server import RunningCloud, start_cloud


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[RunningCloud]:
    running = await start_cloud(tmp_path / "cloud.db", "127.0.0.1", 0)
    try:
        yield running
    finally:
        await running.close()
