"""`phonekey vehicle run`: serve phones until SIGINT/SIGTERM, one line per decision.

Human lines by default (``display.describe_event``); with ``--json`` one
JSON object per line instead, for machines: ``{"event": "advertising", ...}``,
then one object per vehicle event (its dataclass fields: ids as hex, enums
as lowercase names, plus ``"peer"``), and ``{"event": "stopped", ...}``.
A run that fails, at start-up or later, raises; the CLI then ends its JSON
lines with ``{"event": "failed", "ok": false, "state", "transport", "error":
{"code", "reason"}}`` (``cli_json.run_failure_json``) instead of ``stopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from .display import ReportedEvent

if TYPE_CHECKING:
    from .runtime import FirmwareOptions

EXIT_OK: Final = 0
CONTROLLER_START_TIMEOUT: Final = 10.0
# Specs served by software controllers (see ble_stack.transports), where the
# fastest advertising costs nothing; everything else is treated as a radio.
_SOFTWARE_SPECS: Final = ("virtual", "tcp-client:", "unix:", "unix-client:")


class ControllerStartError(Exception):
    """The transport opened but its controller would not power on or advertise (exit 4)."""


def event_json(event: ReportedEvent, peer: str | None = None) -> dict[str, Any]:
    """A vehicle event as a JSON object: ``event`` is its type in snake case."""
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(event).__name__).lower()
    fields = {field.name: _plain(getattr(event, field.name)) for field in dataclasses.fields(event)}
    return {"event": name, "peer": peer, **fields}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, enum.Enum):
        return value.name.lower()
    return value


def default_adv_interval(spec: str) -> float:
    from .runtime import HARDWARE_ADV_INTERVAL_MS, VIRTUAL_ADV_INTERVAL_MS

    if spec == "virtual" or spec.startswith(_SOFTWARE_SPECS):
        return VIRTUAL_ADV_INTERVAL_MS
    return HARDWARE_ADV_INTERVAL_MS


async def run_vehicle(
    state_dir: Path,
    spec: str,
    *,
    adv_interval_ms: float | None = None,
    stop: asyncio.Event | None = None,
    out: TextIO | None = None,
    options: FirmwareOptions | None = None,
    clock_drift_ppm: float = 0.0,
    capture: str | None = None,
    json_lines: bool = False,
) -> int:
    """Run the vehicle until ``stop`` is set or SIGINT/SIGTERM arrives.

    Raises ``VehicleStateError`` (busy, missing, corrupt), ``TransportOpenError``
    and ``CaptureError`` (``capture``: a btsnoop file for the HCI traffic); the
    store's lock is released on every path.
    """
    from ble_stack.transports import open_device

    from .control import ControlServer
    from .display import describe_event
    from .drift_clock import DriftingClock
    from .runtime import VehicleRuntime
    from .state_store import open_store

    stream = out if out is not None else sys.stdout

    def say(line: str, **as_json: Any) -> None:
        text = json.dumps(as_json) if json_lines else line
        print(text, file=stream, flush=True)  # flushed: tests and demos read a pipe

    def on_event(peer: str, event: ReportedEvent) -> None:
        if json_lines:
            print(json.dumps(event_json(event, peer)), file=stream, flush=True)
        else:
            say(describe_event(event, peer))

    interval = adv_interval_ms if adv_interval_ms is not None else default_adv_interval(spec)
    stop = stop if stop is not None else asyncio.Event()
    # Handlers go in first, so a signal during start-up still stops cleanly.
    wall_clock = DriftingClock(clock_drift_ppm)
    with _stop_on_signals(stop), open_store(state_dir, wall_clock=wall_clock) as store:
        vin = store.identity.vin
        opened = await open_device(spec, name=f"phonekey vehicle {vin}", capture=capture)
        try:
            runtime = VehicleRuntime(
                store, opened.device, adv_interval_ms=interval, on_event=on_event, options=options
            )
            try:
                # A USB or hci-socket controller that never answers would hang here
                # forever; a real one powers on in well under a second.
                async with asyncio.timeout(CONTROLLER_START_TIMEOUT):
                    await runtime.start()  # cleans up after itself if it fails
            except TimeoutError:
                raise ControllerStartError(
                    f"cannot start the vehicle on {spec}: the controller did not power on "
                    f"within {CONTROLLER_START_TIMEOUT:g} s (replug the dongle; "
                    "--debug for details)"
                ) from None
            except Exception as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ControllerStartError(f"cannot start the vehicle on {spec}: {reason}") from exc
            console = ControlServer(runtime, state_dir)
            try:
                await console.start()
                say(
                    f"vehicle {vin} advertising on {spec}",
                    event="advertising",
                    vin=vin,
                    transport=spec,
                    card=store.card.to_text(),
                    capture=capture,
                )
                if capture is not None and not json_lines:
                    say(f"capturing HCI traffic to {capture} (btsnoop; Wireshark opens it)")
                await stop.wait()
            finally:
                await console.close()
                await runtime.stop()
        finally:
            await opened.close()
    say(f"vehicle {vin} stopped", event="stopped", vin=vin)
    return EXIT_OK


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into ``stop.set()`` while inside."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # Windows, or not the main thread: Ctrl-C raises KeyboardInterrupt instead
    try:
        yield
    finally:
        for sig in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
