"""An unlock rig on the virtual adapter: a vehicle runtime, phones, an ATT tap.

``UnlockRig`` puts a phonekey vehicle (its real state store, GATT server and
advertising) and a phone device on one ``VirtualRadio`` (optionally the
connection-event model), and runs commands through the phone's real client
(``phone_client.command_policy.run_command``: scan, connect, subscribe, handshake).

``AttTap`` watches the link for what the figures need: the GATT round trips
on the critical path and the bytes each way. Definitions:

- ``setup_round_trips``: ATT requests the phone made from connecting up to
  and including its subscription (MTU exchange, discovery, CCCD write);
  each waits for a response.
- ``round_trips``: after the subscription, the phone's turns: a run of
  writes followed by a notification it waited for, up to the authenticated
  result. The first challenge is pushed on subscribing, so it belongs to the
  subscription's round trip and is not counted again. A credential written
  at connect rides with the command and adds none.
- handshake time: from the phone's subscription (its CCCD write) to the
  authenticated result; scan + connect is the rest of the wall time (scan,
  connect, MTU exchange, GATT discovery).
- ``bytes_to_vehicle`` / ``bytes_to_phone``: GATT values (protocol frames:
  requests, credential, challenges, responses, status) written and notified
  after the subscription, up to the result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import tempfile
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bumble import core
from bumble.controller import Controller
from bumble.device import Device
from bumble.link import LocalLink

from ble_stack.bleak_backend import BumbleBleakClient, BumbleBleakScanner
from ble_stack.virtual_link import VirtualRadio
from phone_client.command_policy import run_command
from phone_client.keystore import KeyStore
from phone_client.outcome import CommandOutcome
from protocol import Command, Role, crypto
from protocol.card import VehicleCard
from vehicle_sim.runtime import VehicleRuntime
from vehicle_sim.state_store import init_vehicle, open_store

VIN: Final = "1HGCM82633A004352"
_ATT_CID: Final = 0x0004
_WRITE_REQUEST: Final = 0x12
_WRITE_COMMAND: Final = 0x52
_NOTIFICATION: Final = 0x1B
_ATT_REQUESTS: Final = frozenset(
    {0x02, 0x04, 0x06, 0x08, 0x0A, 0x0C, 0x0E, 0x10, 0x12, 0x16, 0x18, 0x20}
)


@dataclass(frozen=True)
class AttRecord:
    at: float  # loop clock when handed to the link
    from_phone: bool
    opcode: int
    value_len: int  # bytes of the written / notified value (0 for other PDUs)


@dataclass(frozen=True)
class TraceFigures:
    setup_round_trips: int
    round_trips: int
    bytes_to_vehicle: int
    bytes_to_phone: int
    handshake_s: float  # subscription write to result, loop clock


class AttTap:
    """Records every ATT PDU handed to ``link`` (wraps its ``send_acl_data``)."""

    def __init__(self, link: LocalLink, phone: Controller) -> None:
        self.records: list[AttRecord] = []
        self._phone = phone
        self._forward = link.send_acl_data
        link.send_acl_data = self._send  # type: ignore[method-assign,assignment]

    def _send(
        self,
        sender: Controller,
        destination: Any,
        transport: core.PhysicalTransport,
        data: bytes,
    ) -> None:
        if len(data) >= 5 and int.from_bytes(data[2:4], "little") == _ATT_CID:
            opcode = data[4]
            value = (
                len(data) - 7 if opcode in (_WRITE_COMMAND, _WRITE_REQUEST, _NOTIFICATION) else 0
            )
            loop_time = asyncio.get_running_loop().time()
            self.records.append(AttRecord(loop_time, sender is self._phone, opcode, max(0, value)))
        self._forward(sender, destination, transport, data)


def analyse(records: list[AttRecord], result_at: float) -> TraceFigures:
    """The figures of one command (see the module docstring) from its ATT trace."""
    records = [r for r in records if r.at <= result_at]
    subscribed = max(
        (i for i, r in enumerate(records) if r.from_phone and r.opcode == _WRITE_REQUEST),
        default=-1,
    )
    subscribed_at = records[subscribed].at if subscribed >= 0 else result_at
    setup = sum(1 for r in records[: subscribed + 1] if r.from_phone and r.opcode in _ATT_REQUESTS)
    round_trips = to_vehicle = to_phone = 0
    wrote = False
    for record in records[subscribed + 1 :]:
        if record.from_phone and record.opcode == _WRITE_COMMAND:
            wrote = True
            to_vehicle += record.value_len
        elif not record.from_phone and record.opcode == _NOTIFICATION:
            to_phone += record.value_len
            if wrote:
                round_trips += 1
                wrote = False
    return TraceFigures(setup, round_trips, to_vehicle, to_phone, result_at - subscribed_at)


@dataclass(frozen=True)
class UnlockSample:
    total_ms: float  # command to authenticated result
    scan_connect_ms: float
    handshake_ms: float  # subscribe to authenticated result
    figures: TraceFigures
    credential: str | None
    fast_path: bool = False  # the phone client's own report (CommandOutcome.fast_path)
    fast_path_refused: str | None = None  # a fast attempt the vehicle refused (fell back)


@dataclass
class UnlockRig:
    """A vehicle and a phone device on one virtual radio (see module docstring).

    Make phones (``add_phone``) before ``start``: keys go on the whitelist
    while the vehicle is stopped, as an owner would add them.
    """

    workdir: Path
    connection_interval_ms: float | None = None
    loss: float = 0.0
    seed: int = 0
    runtime_kwargs: Mapping[str, Any] = field(default_factory=dict)
    issuer: crypto.PublicKey | None = None
    provision: Callable[[Any], None] | None = None  # called with the open store before start
    card: VehicleCard = field(init=False)
    radio: VirtualRadio = field(init=False)
    tap: AttTap = field(init=False)
    _stack: contextlib.AsyncExitStack = field(init=False)
    _pending_keys: list[tuple[crypto.PublicKey, Role]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.card = init_vehicle(self.workdir / "car", VIN)
        self._stack = contextlib.AsyncExitStack()
        self.store_backend = ""
        self._phase = random.Random(self.seed)

    def add_phone(
        self, name: str, *, whitelisted: bool = True, role: Role = Role.DRIVER
    ) -> KeyStore:
        keystore = KeyStore(self.workdir / name)
        public = keystore.keygen()
        keystore.add_vehicle(self.card, issuer=self.issuer)
        if whitelisted:
            self._pending_keys.append((public, role))
        return keystore

    async def start(self) -> None:
        self.radio = VirtualRadio(
            connection_interval_ms=self.connection_interval_ms, loss=self.loss, seed=self.seed
        )
        store = self._stack.enter_context(open_store(self.workdir / "car"))
        self.store_backend = type(store).__name__
        if self.issuer is not None:
            store.add_issuer(self.issuer)
        for public, role in self._pending_keys:
            store.add_key(public, role)
        self._pending_keys.clear()
        if self.provision is not None:
            self.provision(store)
        self.store = store
        self.phone_device: Device = await self.radio.create_device("phone")
        self.tap = AttTap(self.radio.link, self.radio.controller_of(self.phone_device))
        vehicle_device = await self.radio.create_device("vehicle")
        self.runtime = VehicleRuntime(store, vehicle_device, **self.runtime_kwargs)
        await self._stack.enter_async_context(self.runtime)

    async def close(self) -> None:
        await self._stack.aclose()

    @property
    def client_kwargs(self) -> dict[str, Any]:
        return {"backend": BumbleBleakClient, "bumble_device": self.phone_device}

    @property
    def scanner_kwargs(self) -> dict[str, Any]:
        return {"backend": BumbleBleakScanner, "bumble_device": self.phone_device}

    async def unlock(
        self, keystore: KeyStore, command: Command = Command.UNLOCK, **kwargs: Any
    ) -> UnlockSample:
        """One command through the phone's client; its wall time and trace figures."""
        loop = asyncio.get_running_loop()
        result_at: list[float] = []

        def on_result(_outcome: CommandOutcome) -> None:
            result_at.append(loop.time())

        # Start at a random (seeded) phase of the vehicle's advertising,
        # untimed: the phone finds the vehicle at its next advertising event,
        # so the phase decides up to one interval of the sample. Left to the
        # gap since the previous sample it would follow from which kind of
        # sample ran before, and bias one kind against another.
        await asyncio.sleep(self._phase.uniform(0.0, self.runtime.adv_interval_ms / 1000))
        self.tap.records.clear()
        outcome = await run_command(
            keystore,
            VIN,
            command,
            client_kwargs=self.client_kwargs,
            scanner_kwargs=self.scanner_kwargs,
            on_result=on_result,
            **kwargs,
        )
        if not outcome.ok:
            raise RuntimeError(f"benchmark command refused: {outcome.result.name}")
        return sample_of(outcome, analyse(self.tap.records, result_at[0]))


def sample_of(outcome: CommandOutcome, figures: TraceFigures) -> UnlockSample:
    total = outcome.latency.total
    return UnlockSample(
        total_ms=total * 1000,
        scan_connect_ms=(total - figures.handshake_s) * 1000,
        handshake_ms=figures.handshake_s * 1000,
        figures=figures,
        credential=outcome.credential,
        fast_path=outcome.fast_path,
        fast_path_refused=outcome.fast_path_refused,
    )


def quiet_bumble() -> Callable[[], None]:
    """Silence bumble's logging for a run; returns the undo."""
    import logging

    logger = logging.getLogger("bumble")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    return lambda: logger.setLevel(level)


def describe(samples: list[UnlockSample]) -> dict[str, Any]:
    """The JSON of one kind of unlock: latency summary, split, round trips, bytes."""
    from collections import Counter

    from .stats import summary

    def usual(values: list[int]) -> int:
        return Counter(values).most_common(1)[0][0]

    figures = [s.figures for s in samples]
    return {
        **summary([s.total_ms for s in samples]),
        "round_trips": usual([f.round_trips for f in figures]),
        "setup_round_trips": usual([f.setup_round_trips for f in figures]),
        "bytes_to_vehicle": usual([f.bytes_to_vehicle for f in figures]),
        "bytes_to_phone": usual([f.bytes_to_phone for f in figures]),
        "scan_connect": summary([s.scan_connect_ms for s in samples]),
        "handshake": summary([s.handshake_ms for s in samples]),
        "credential": sorted({str(s.credential) for s in samples}),
        "fast_path_runs": sum(1 for s in samples if s.fast_path),
    }


def section_main(
    section: str,
    measure: Callable[[int, Path], Coroutine[Any, Any, dict[str, Any]]],
    *,
    description: str,
    default_runs: int,
    argv: list[str] | None = None,
) -> int:
    """The command line of one section module (`python -m bench.SECTION --runs N`):
    measure in a scratch directory with bumble's logs quiet, print one JSON object."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--runs", type=int, default=default_runs)
    args = parser.parse_args(argv)
    from .stats import machine_info

    undo = quiet_bumble()
    try:
        with tempfile.TemporaryDirectory(prefix="phonekey-bench-") as tmp:
            result = asyncio.run(measure(args.runs, Path(tmp)))
    finally:
        undo()
    print(json.dumps({"machine": machine_info(), section: result}, indent=2))
    return 0
