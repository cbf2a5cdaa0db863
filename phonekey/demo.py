"""`phonekey demo`: a vehicle, phones and a credential cloud in one process.

Everything is real except the radio: the vehicle's persistent state lives in a
temporary directory, each phone has its own key store and its own bumble
controller, and the phones talk to the vehicle through bleak's API over the
bumble backend. No server is involved anywhere.

Each step has an expected outcome; the demo exits 0 exactly when every
outcome matches, so it doubles as a smoke test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ble_stack.bleak_backend import BumbleBleakClient, BumbleBleakScanner
from ble_stack.capture import capture_path_for
from ble_stack.virtual_link import VirtualRadio
from cloud_sim.server import RunningCloud
from phone_client.cloud_client import CloudClient
from phone_client.command_policy import run_command
from phone_client.keystore import KeyStore
from phone_client.outcome import CommandOutcome
from protocol import Command, LockState, Role
from protocol.card import VehicleCard
from vehicle_sim.keycard import create_card
from vehicle_sim.runtime import VehicleRuntime
from vehicle_sim.state_store import init_vehicle, open_store

from .cli_logging import LOG_FORMAT, add_logging_flags, configure_logging, log_level
from .demo_cloud import WEEK, cache_credential_from, enroll, register_vehicle, revoke, start_clouds
from .demo_firmware import firmware_steps

DEMO_VIN = "1HGCM82633A004352"
STEP_TIMEOUT = 10.0

Outcome = Literal["unlocked", "locked", "denied", "enrolled", "revoked"]


@dataclass
class Step:
    """One line of the demo's account; the JSON output lists these."""

    name: str
    expected: Outcome
    outcome: Outcome | None = None
    credential: str | None = None  # "whitelist" | "cloud" | "cache" | "share" | None
    cloud: str = "none"  # the cloud as the phone saw it; "none" when it used none
    latency_ms: float = 0.0
    error: str | None = None
    fast_path: bool = False  # answered on the fast path (no public-key op on the vehicle)
    expect_fast: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome == self.expected and (self.fast_path or not self.expect_fast)


@dataclass
class _Phone:
    label: str
    keystore: KeyStore
    client_kwargs: dict[str, Any]
    scanner_kwargs: dict[str, Any]
    whitelisted: bool
    cloud: CloudClient | None = None


class Demo:
    def __init__(
        self, workdir: Path, say: Callable[[str], None], capture: str | None = None
    ) -> None:
        self.workdir = workdir
        self.say = say
        self.capture = capture  # the vehicle's btsnoop file; phones' beside it
        self.radio = VirtualRadio()
        self.steps: list[Step] = []
        self._clients: list[CloudClient] = []
        self.vin = DEMO_VIN

    async def _make_phone(
        self, label: str, card: VehicleCard, *, whitelisted: bool, cloud: RunningCloud | None = None
    ) -> _Phone:
        keystore = KeyStore(self.workdir / label)
        keystore.keygen()
        client = None
        if cloud is None:
            keystore.add_vehicle(card)
        else:
            keystore.add_vehicle(card, issuer=cloud.issuer_public_key, cloud_url=cloud.url)
            client = CloudClient(cloud.url)
            self._clients.append(client)
        device = await self.radio.create_device(f"phone-{label}", capture=self._capture_path(label))
        return _Phone(
            label,
            keystore,
            {"backend": BumbleBleakClient, "bumble_device": device},
            {"backend": BumbleBleakScanner, "bumble_device": device},
            whitelisted,
            client,
        )

    def _capture_path(self, label: str | None) -> Path | None:
        """--capture FILE: FILE for the vehicle, FILE-STEM-LABEL.SUFFIX per phone."""
        if self.capture is None:
            return None
        return Path(self.capture) if label is None else capture_path_for(self.capture, label)

    async def run(self) -> list[Step]:
        cloud, past_cloud = await start_clouds(self.workdir)
        try:
            return await self._run(cloud, past_cloud)
        finally:
            self.radio.close_captures()
            for client in self._clients:
                await client.close()
            await past_cloud.close()
            await cloud.close()

    async def _run(self, cloud: RunningCloud, past_cloud: RunningCloud) -> list[Step]:
        state_dir = self.workdir / "vehicle"
        card = init_vehicle(state_dir, DEMO_VIN)
        self.say(f"vehicle {card.vin} created; vehicle id {card.vehicle_id.hex()[:8]}")

        owner = await self._make_phone("owner", card, whitelisted=True, cloud=cloud)
        driver = await self._make_phone("driver", card, whitelisted=True)
        stranger = await self._make_phone("stranger", card, whitelisted=False)
        renter = await self._make_phone("renter", card, whitelisted=False, cloud=cloud)
        lapsed = await self._make_phone("lapsed", card, whitelisted=False, cloud=past_cloud)

        # Physical provisioning of a stopped vehicle: the owner's and a driver's
        # key, the credential cloud's issuer key, and the keycard.
        keycard = create_card(self.workdir / "keycard.pem")
        with open_store(state_dir) as store:
            store.add_key(owner.keystore.public_key(), Role.OWNER)
            store.add_key(driver.keystore.public_key(), Role.DRIVER)
            store.add_issuer(cloud.issuer_public_key)
            store.add_keycard(keycard.public_key())
        self.say("owner and driver phones paired: keys on the vehicle's whitelist; keycard added")
        self.say("stranger phone holds the vehicle card but its key is not whitelisted")

        token = await register_vehicle(cloud, card)
        for phone in (renter, lapsed):
            await enroll(cloud, token, card, phone.keystore.public_key())
        await cache_credential_from(
            past_cloud, lapsed.keystore, card, clock=time.time() - WEEK - 86400
        )
        self.say(f"credential cloud at {cloud.url}; vehicle trusts its issuer key")
        self.say("renter and lapsed phones enrolled as drivers through the cloud only")

        with open_store(state_dir) as store:
            device = await self.radio.create_device("vehicle", capture=self._capture_path(None))
            async with VehicleRuntime(store, device) as runtime:
                self.say("vehicle advertising on the virtual radio\n")
                await self._whitelist_steps(owner, driver, stranger)
                self.say("\n-- the cloud fails; the renter's phone keeps its key --")
                await self._outage_steps(cloud, past_cloud, token, card, owner, renter, lapsed)
                self.say("\n-- the owner comes back: the fast path --")
                await firmware_steps(self, runtime, keycard, card, owner, stranger)
        return self.steps

    async def _whitelist_steps(self, owner: _Phone, driver: _Phone, stranger: _Phone) -> None:
        await self._step(owner, Command.UNLOCK, "owner unlocks", "unlocked")
        await self._step(owner, Command.STATUS, "owner reads status", "unlocked")
        await self._step(owner, Command.LOCK, "owner locks", "locked")
        await asyncio.gather(
            self._step(owner, Command.UNLOCK, "owner unlocks (at once)", "unlocked"),
            self._step(driver, Command.UNLOCK, "driver unlocks (at once)", "unlocked"),
        )
        await self._step(stranger, Command.UNLOCK, "unknown phone is denied", "denied")
        await self._step(owner, Command.LOCK, "owner locks again", "locked")

    async def _outage_steps(
        self,
        cloud: RunningCloud,
        past_cloud: RunningCloud,
        token: str,
        card: VehicleCard,
        owner: _Phone,
        renter: _Phone,
        lapsed: _Phone,
    ) -> None:
        await self._step(
            renter, Command.UNLOCK, "renter: first credential from the cloud", "unlocked"
        )
        cloud.set_fault("http-500")
        await self._step(
            renter, Command.LOCK, "renter: cloud HTTP 500, cached credential", "locked"
        )
        cloud.set_fault("blackhole")
        await self._step(
            renter, Command.UNLOCK, "renter: cloud blackholed, cached credential", "unlocked"
        )
        cloud.set_fault("none")
        version = await revoke(cloud, token, card, renter.keystore.key_id())
        self.say(f"owner revokes the renter at the cloud (revocation list version {version})")
        await self._step(owner, Command.LOCK, "owner locks, carries the revocation", "locked")
        await self._step(renter, Command.UNLOCK, "revoked renter is denied", "denied")
        past_cloud.set_fault("blackhole")
        await self._step(lapsed, Command.UNLOCK, "expired credential, cloud down: denied", "denied")

    async def _action_step(
        self, name: str, expected: Outcome, action: Callable[[], Awaitable[Outcome]]
    ) -> None:
        """A step that is not a lock command: a keycard tap, an enrollment, a revocation."""
        step = Step(name, expected)
        self.steps.append(step)
        start = time.perf_counter()
        try:
            step.outcome = await action()
        except Exception as exc:  # every failure is a step outcome here
            step.outcome = "denied"
            step.error = str(exc) or type(exc).__name__
        step.latency_ms = (time.perf_counter() - start) * 1000
        self.say(_describe(step, None))

    async def _step(
        self,
        phone: _Phone,
        command: Command,
        name: str,
        expected: Outcome,
        *,
        expect_fast: bool = False,
    ) -> None:
        step = Step(
            name,
            expected,
            credential="whitelist" if phone.whitelisted else None,
            expect_fast=expect_fast,
        )
        self.steps.append(step)
        start = time.perf_counter()
        result: CommandOutcome | None = None
        try:
            result = await run_command(
                phone.keystore,
                DEMO_VIN,
                command,
                client_kwargs=phone.client_kwargs,
                scanner_kwargs=phone.scanner_kwargs,
                timeout=STEP_TIMEOUT,
                cloud=phone.cloud,
            )
        except Exception as exc:  # every failure is a step outcome here
            step.latency_ms = (time.perf_counter() - start) * 1000
            step.outcome = "denied"
            step.error = str(exc) or type(exc).__name__
            step.credential = None
        else:
            step.latency_ms = result.latency.total * 1000
            step.outcome = _outcome_of(result)
            step.credential = result.credential
            step.fast_path = result.fast_path
            if not result.ok:
                step.error = f"{result.result.name.lower()}: role does not permit {command.name}"
        if phone.cloud is not None:
            seen = result.cloud if result is not None else phone.cloud.status
            # "refused" means the cloud answered (e.g. "not enrolled"): it was up.
            step.cloud = "up" if seen == "refused" else seen
        self.say(_describe(step, result))


def _outcome_of(result: CommandOutcome) -> Outcome:
    if not result.ok:
        return "denied"
    return "unlocked" if result.lock_state is LockState.UNLOCKED else "locked"


def _describe(step: Step, result: CommandOutcome | None) -> str:
    mark = "ok  " if step.ok else "FAIL"
    line = f"[{mark}] {step.name:<42} -> {step.outcome:<8} {step.latency_ms:7.1f} ms"
    if result is not None and step.error is None:
        lat = result.latency
        parts = [
            f"{label} {value * 1000:.1f} ms"
            for label, value in (
                ("scan", lat.scan),
                ("connect", lat.connect),
                ("challenge", lat.challenge),
                ("command", lat.command),
            )
            if value is not None
        ]
        path = "fast path" if result.fast_path else "full handshake"
        line += (
            f"  ({', '.join(parts)}; {path}; MTU {result.att_mtu}, {result.frames_written} write)"
        )
    if result is not None and result.message:
        line += f"\n       {result.message}"
    if step.error:
        line += f"\n       reason: {step.error}"
    return line


async def run_demo(say: Callable[[str], None], capture: str | None = None) -> list[Step]:
    with tempfile.TemporaryDirectory(prefix="phonekey-demo-") as tmp:
        return await Demo(Path(tmp), say, capture).run()


def _configure_logging(args: argparse.Namespace) -> None:
    # The demo's own account goes to stdout; library logs go to stderr and,
    # unless asked for, only when something is badly wrong. bumble's virtual
    # controller logs races it recovers from at ERROR, which would drown the account.
    if log_level(args) < logging.WARNING:
        configure_logging(args)
        return
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    logging.getLogger("bumble").setLevel(logging.CRITICAL)


def _main(args: argparse.Namespace) -> int:
    _configure_logging(args)

    def say(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    if args.capture is not None:
        vehicle, owner = args.capture, capture_path_for(args.capture, "owner")
        say(
            f"capturing HCI traffic: the vehicle's to {vehicle}, "
            f"each phone's beside it ({owner}, ...)"
        )
    try:
        steps = asyncio.run(run_demo(say, args.capture))
    except Exception as exc:
        if args.debug:
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"phonekey demo: error: {reason}", file=sys.stderr)
        return 4 if isinstance(exc, OSError) else 1
    ok = all(step.ok for step in steps)
    if args.json:
        print(json.dumps({"ok": ok, "steps": [_step_json(step) for step in steps]}))
    else:
        passed = sum(step.ok for step in steps)
        print(f"\n{passed}/{len(steps)} steps as expected" + ("" if ok else " -- demo FAILED"))
    return 0 if ok else 1


def _step_json(step: Step) -> dict[str, Any]:
    data = asdict(step)
    data["latency_ms"] = round(step.latency_ms, 3)
    return data


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a vehicle and phones in one process on the virtual adapter",
        description=(
            "Provision an owner's and a driver's phone on a simulated vehicle, then unlock, "
            "read status, lock, unlock from two phones at once, and show an unknown phone "
            "denied -- all over real BLE stacks on a virtual radio, with no server. Then "
            "replay a cloud outage against a real credential cloud on 127.0.0.1: a phone "
            "enrolled only through the cloud unlocks with its first credential, then from "
            "its cache while the cloud returns HTTP 500 and while it is blackholed; the "
            "owner revokes it and carries the revocation to the car; an expired credential "
            "is denied. Then the firmware: the owner unlocks on the fast path; the keycard "
            "unlocks and locks with every phone lost; a keycard tap opens the pairing window "
            "in which a new phone enrolls as owner (a stranger is refused outside it); the "
            "owner shares a guest key offline, the friend unlocks with it, and the owner "
            "revokes it. Exit 0 exactly when every step has its expected outcome."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--capture",
        metavar="FILE",
        help="write btsnoop logs of the HCI traffic (Wireshark opens them): the vehicle's "
        "to FILE (every phone's connection is in it), each phone's to FILE-STEM-PHONE.SUFFIX "
        "beside it, e.g. demo.btsnoop, demo-owner.btsnoop, demo-driver.btsnoop",
    )
    add_logging_flags(parser)
    parser.set_defaults(handler=_main)


if __name__ == "__main__":
    from phonekey.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
