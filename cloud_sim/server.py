"""Run the credential cloud in-process: for tests, the demo and ``phonekey cloud serve``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final

from aiohttp import web

from protocol import credentials, crypto

from .app import CloudState, make_app
from .db import CloudDB
from .faults import FaultMode, FaultState

# Held requests (blackhole, slow) are released when shutdown starts; this only
# bounds a handler that is somehow still busy after that.
SHUTDOWN_TIMEOUT: Final = 2.0


class RunningCloud:
    """A cloud listening on ``url`` until ``close()``."""

    def __init__(
        self, runner: web.AppRunner, db: CloudDB, state: CloudState, faults: FaultState, url: str
    ) -> None:
        self._runner = runner
        self._db = db
        self._faults = faults
        self._closed = False
        self.state = state
        self.url = url
        self.issuer_public_key: crypto.PublicKey = state.issuer.public_key()

    @property
    def issuer_public_text(self) -> str:
        """``p256:<hex>``: what a vehicle is provisioned with."""
        return crypto.public_key_to_text(self.issuer_public_key)

    @property
    def issuers(self) -> credentials.IssuerKeys:
        """The mapping ``verify_*`` functions take."""
        return {crypto.key_id(self.issuer_public_key): self.issuer_public_key}

    @property
    def fault_mode(self) -> FaultMode:
        return self._faults.mode

    def set_fault(self, mode: str | FaultMode) -> None:
        """Switch the fault mode (``"none"``, ``"slow:2"``, ...); ``ValueError`` if unknown."""
        self._faults.mode = mode if isinstance(mode, FaultMode) else FaultMode.parse(mode)

    async def close(self) -> None:
        """Stop serving and close the database; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        # on_shutdown releases held requests, so this returns promptly even in blackhole mode.
        try:
            await self._runner.cleanup()
        finally:
            self._db.close()

    async def __aenter__(self) -> RunningCloud:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def start_cloud(
    db_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 0,
    validity: int = credentials.DEFAULT_VALIDITY,
    *,
    clock: Callable[[], float] = time.time,
    access_log: bool = False,
) -> RunningCloud:
    """Open (or create) the database at ``db_path`` and serve on ``host:port``.

    ``port=0`` picks a free port; the chosen one is in ``.url``. Raises
    ``db.DatabaseError`` for an unusable database and ``OSError`` if the
    address cannot be bound.
    """
    if validity <= 0:
        raise ValueError("validity must be a positive number of seconds")
    db = CloudDB(db_path)
    try:
        state = CloudState(db, db.issuer_key(), validity=validity, clock=clock)
        faults = FaultState()
        app = make_app(state, faults)

        async def release_held_requests(_app: web.Application) -> None:
            faults.stopping.set()

        app.on_shutdown.append(release_held_requests)
        # handler_cancellation: when a client gives up on a held (blackhole)
        # request, its handler is cancelled instead of lingering to shutdown.
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            access_log=logging.getLogger("aiohttp.access") if access_log else None,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
    except BaseException:
        db.close()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return RunningCloud(runner, db, state, faults, f"http://{shown}:{bound_port}")
