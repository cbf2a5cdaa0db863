"""`phonekey vehicle ...`: create, provision, inspect and run the simulated vehicle.

Heavy imports (bumble, cryptography, the BLE layer) happen inside the
handlers so `phonekey --help` stays fast. Every failure prints one line on
stderr and maps to the exit codes listed in `phonekey --help`; --debug adds
tracebacks and debug logs. With --json a command prints one object on stdout
instead of its text, success or failure; `run --json` ends a failure with a
``"failed"`` line (``cli_json``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from phonekey.cli_args import number_in_range
from phonekey.cli_logging import LOG_FORMAT, add_logging_flags, log_level, logging_configured

from .cli_json import (
    OWN_SHAPES,
    RESULT_KEYS,
    Output,
    failure_json,
    json_help,
    print_json,
    run_failure_json,
    wants_json,
)

if TYPE_CHECKING:
    from protocol import crypto


EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_LOCAL: Final = 4
EXIT_LOG_TAMPERED: Final = 5
"""`vehicle log`: the event log's MAC chain does not verify (printed anyway)."""

DEFAULT_TRANSPORT: Final = "usb:0"
ROLES: Final = ("owner", "driver", "guest")

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A bad argument found after parsing (exit 2)."""


class Refused(Exception):
    """The operation is refused for a reason the user should hear as is (exit 1)."""


def default_state_dir() -> Path:
    import platformdirs

    return platformdirs.user_data_path("phonekey") / "vehicle"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    vehicle = subparsers.add_parser(
        "vehicle",
        help="the simulated vehicle: create, add keys, trust an issuer, show, run",
        description="The vehicle side of phonekey: its identity, whitelist and BLE service.",
    )
    commands = vehicle.add_subparsers(dest="vehicle_command", metavar="SUBCOMMAND", required=True)

    p = _sub(commands, "init", "create a vehicle with a new identity key", _init)
    p.add_argument("--vin", required=True, help="the VIN: 1-17 of A-Z, 0-9 without I, O, Q")
    p.add_argument(
        "--issuer",
        metavar="PUBKEY",
        help="trust cloud credentials signed by this issuer key, p256:<hex> (optional)",
    )

    p = _sub(
        commands,
        "add-key",
        "whitelist a phone key (through the console of a running vehicle, or on its stopped state)",
        _add_key,
    )
    p.add_argument("--key", required=True, metavar="PUBKEY", help="the phone's key, p256:<hex>")
    p.add_argument("--role", required=True, choices=ROLES, help="what the key may do")

    p = _sub(
        commands,
        "provision",
        "trust cloud credentials signed by an issuer key (the vehicle must be stopped)",
        _provision,
    )
    p.add_argument(
        "--issuer", required=True, metavar="PUBKEY", help="the issuer's public key, p256:<hex>"
    )

    from .cli_console import register_console

    register_console(commands, _sub)

    p = _sub(commands, "run", "advertise and serve phones until SIGINT/SIGTERM", _run)
    p.add_argument(
        "--transport",
        metavar="SPEC",
        default=DEFAULT_TRANSPORT,
        help=f"bumble transport of the vehicle's controller (default {DEFAULT_TRANSPORT}; "
        "virtual, tcp-client:HOST:PORT, unix:PATH, serial:..., hci-socket:0)",
    )
    p.add_argument(
        "--adv-interval",
        type=_interval_arg,
        metavar="MS",
        help="advertising interval in ms, 20-10240 (default 20 on software "
        "controllers, 100 on radios)",
    )
    p.add_argument(
        "--adv-rotation",
        type=_rotation_arg,
        default=900.0,
        metavar="S",
        help="rotate the advertised tag and random address every S seconds (default 900)",
    )
    p.add_argument(
        "--max-connections",
        type=_connections_arg,
        default=3,
        metavar="N",
        help="connection slots, 1-32 (default 3)",
    )
    p.add_argument(
        "--handshake-timeout",
        type=_timeout_arg,
        default=10.0,
        metavar="S",
        help="drop a connection not authenticated after S seconds (default 10)",
    )
    p.add_argument(
        "--idle-timeout",
        type=_timeout_arg,
        default=60.0,
        metavar="S",
        help="drop an authenticated connection idle for S seconds (default 60)",
    )
    p.add_argument(
        "--mcu",
        choices=("none", "cortex-m4-168"),
        default="none",
        help="charge a key module's crypto time: cortex-m4-168 (P-256 verify 83 ms, "
        "sign 89 ms, ECDH 86 ms on one core) or none (default)",
    )
    p.add_argument(
        "--clock-drift-ppm",
        type=_drift_arg,
        default=0.0,
        metavar="PPM",
        help="the vehicle's clock runs this many ppm fast (negative: slow); default 0",
    )
    p.add_argument(
        "--capture",
        metavar="FILE",
        help="write a btsnoop log of the vehicle's HCI traffic to FILE (opens in Wireshark; "
        "`tshark -r FILE -Y btatt` lists the ATT frames)",
    )


def _sub(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    handler: Handler,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=help_text)
    parser.add_argument(
        "--state",
        type=Path,
        metavar="DIR",
        default=None,
        help="the vehicle's state directory (default: the per-user data directory)",
    )
    if name in RESULT_KEYS or name in OWN_SHAPES:
        parser.add_argument("--json", action="store_true", help=json_help(name))
    add_logging_flags(parser)
    parser.set_defaults(handler=_guarded(handler, name))
    return parser


_interval_arg = number_in_range(float, lambda v: 20 <= v <= 10240, "must be within 20..10240 ms")
_rotation_arg = number_in_range(float, lambda v: 1 <= v <= 86400, "must be within 1..86400 s")
_connections_arg = number_in_range(int, lambda v: 1 <= v <= 32, "must be within 1..32")
_timeout_arg = number_in_range(float, lambda v: 1 <= v <= 3600, "must be within 1..3600 s")
_drift_arg = number_in_range(
    float, lambda v: -100_000 <= v <= 100_000, "must be within -100000..100000 ppm"
)


def _state_dir(args: argparse.Namespace) -> Path:
    state: Path | None = args.state
    return state if state is not None else default_state_dir()


# --- error handling ----------------------------------------------------------------
def _guarded(handler: Handler, name: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        if log_level(args) >= logging.WARNING:
            logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
        try:
            with logging_configured(args):  # -v / --debug, for this command only
                return handler(args)
        except KeyboardInterrupt:
            return EXIT_OK  # Ctrl-C where no signal handler could be installed
        except BrokenPipeError:
            # Output piped into `head` and the like: stop quietly, as Unix tools do,
            # and keep Python from complaining when it flushes stdout at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_FAILED
        except Exception as exc:
            if args.debug:
                traceback.print_exc()
            code, reason = _explain(exc)
            if wants_json(args, name):  # stdout: the object; stderr: the line, as always
                state_dir = _state_dir(args)
                if name == "run":  # its last JSON line
                    failed = run_failure_json(state_dir, args.transport, code, reason)
                    print_json(failed, sort_keys=False)
                else:
                    print_json(failure_json(name, state_dir, code, reason))
            print(f"phonekey vehicle {name}: error: {reason}", file=sys.stderr)
            return code

    return run


def _explain(exc: Exception) -> tuple[int, str]:
    from ble_stack.capture import CaptureError
    from ble_stack.errors import TransportOpenError

    from .control import ControlSocketError
    from .control_client import ControlError, VehicleNotRunning
    from .keycard import KeycardError
    from .state_store import VehicleStateError

    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, UsageError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, Refused | KeycardError):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, ControlError):
        return (EXIT_USAGE if exc.kind == "usage" else EXIT_FAILED), str(exc)
    if isinstance(exc, VehicleNotRunning | ControlSocketError):
        return EXIT_LOCAL, str(exc)
    from .cli_run import ControllerStartError

    if isinstance(exc, VehicleStateError | ControllerStartError):
        return EXIT_LOCAL, str(exc)
    if isinstance(exc, TransportOpenError):
        return EXIT_LOCAL, f"{first_line} (fix: {exc.fix})"
    if isinstance(exc, CaptureError):
        return EXIT_LOCAL, first_line
    return EXIT_FAILED, f"{type(exc).__name__}: {first_line}"


# --- handlers --------------------------------------------------------------------------
def _public_key_arg(text: str, option: str) -> crypto.PublicKey:
    from protocol import crypto

    try:
        return crypto.public_key_from_text(text)
    except crypto.InvalidKeyEncoding as exc:
        raise UsageError(f"invalid {option}: {exc}") from None


def _init(args: argparse.Namespace) -> int:
    from protocol import crypto

    from .display import short_id
    from .state_store import init_vehicle, open_store

    state_dir = _state_dir(args)
    issuers = [] if args.issuer is None else [_public_key_arg(args.issuer, "--issuer")]
    try:
        card = init_vehicle(state_dir, args.vin, issuers=issuers)
    except ValueError as exc:  # the VIN
        raise UsageError(str(exc)) from None
    with open_store(state_dir) as store:  # the card with the advertising secret
        card = store.card
        issuer_ids = [key_id.hex() for key_id in store.issuer_keys()]
    out = Output(args, "init", state_dir)
    out.say(f"created vehicle {card.vin} in {state_dir}")
    out.say(f"vehicle id {card.vehicle_id.hex()} ({short_id(card.vehicle_id)}), doors locked")
    for issuer in issuers:
        out.say(f"trusting cloud credentials from issuer {crypto.key_id(issuer).hex()}")
    out.say(
        "whitelist a phone with: phonekey vehicle add-key "
        f"--state {state_dir} --key p256:<hex> --role owner"
    )
    out.say("give phones this vehicle card (phonekey phone add-vehicle <card>):")
    out.say(card.to_text())  # last line: machine-readable
    return out.done(
        vin=card.vin, vehicle_id=card.vehicle_id.hex(), card=card.to_text(), issuers=issuer_ids
    )


def _add_key(args: argparse.Namespace) -> int:
    from protocol import crypto
    from protocol.types import Role

    from .display import short_id
    from .state_store import open_store

    public_key = _public_key_arg(args.key, "--key")
    role = Role.from_name(args.role)
    from .cli_console import console

    state_dir = _state_dir(args)
    out = Output(args, "add-key", state_dir)
    client = console(state_dir)
    if client is not None:
        with client:
            result = client.request(
                "add-key", key=crypto.public_key_to_text(public_key), role=args.role
            )
        key_text = result["key_id"][:8]
        if not result["changed"]:
            out.say(f"key {key_text} is already whitelisted as {args.role}")
        elif result["previous_role"] is not None:
            out.say(f"changed key {key_text} from {result['previous_role']} to {args.role}")
        else:
            out.say(f"added key {key_text} as {args.role} ({_plural(result['keys'], 'key')})")
        return out.done(
            key_id=result["key_id"],
            role=args.role,
            previous_role=result["previous_role"],
            changed=result["changed"],
            key_count=result["keys"],
            live=True,
        )
    with open_store(state_dir) as store:
        key_id = crypto.key_id(public_key)
        if store.is_key_revoked(key_id):
            # Revocation also covers whitelisted keys, and revocation lists only grow.
            raise Refused(
                f"key {short_id(key_id)} is revoked for this vehicle on the issuer's "
                "revocation list; "
                "the vehicle would refuse it, so it is not added"
            )
        previous = store.whitelist_entry(key_id)
        changed = previous is None or previous.role is not role
        if not changed:
            out.say(f"key {short_id(key_id)} is already whitelisted as {args.role}")
        else:
            store.add_key(public_key, role)
        if changed and previous is not None:
            out.say(
                f"changed key {short_id(key_id)} from {previous.role.name.lower()} "
                f"to {args.role} on vehicle {store.identity.vin}"
            )
        elif changed:
            out.say(
                f"added key {short_id(key_id)} as {args.role} to vehicle "
                f"{store.identity.vin} ({_plural(len(store.keys()), 'key')})"
            )
        key_count = len(store.keys())
    return out.done(
        key_id=key_id.hex(),
        role=args.role,
        previous_role=None if previous is None else previous.role.name.lower(),
        changed=changed,
        key_count=key_count,
        live=False,
    )


def _provision(args: argparse.Namespace) -> int:
    """Trust an issuer key. Like add-key it needs the stopped vehicle's state
    (physical access): a running vehicle holds the lock and this is refused."""
    from protocol import crypto

    from .state_store import open_store

    issuer = _public_key_arg(args.issuer, "--issuer")
    issuer_id = crypto.key_id(issuer).hex()
    state_dir = _state_dir(args)
    out = Output(args, "provision", state_dir)
    with open_store(state_dir) as store:
        vin = store.identity.vin
        added = store.add_issuer(issuer)
        if not added:
            out.say(f"issuer {issuer_id} is already trusted by vehicle {vin}")
        else:
            count = len(store.issuer_keys())
            out.say(
                f"vehicle {vin} now trusts cloud credentials from issuer {issuer_id} "
                f"({_plural(count, 'issuer key')})"
            )
        # Last line: the card for phones, now naming the issuer they should pin.
        card = store.card.to_text()
        out.say(card)
        issuers = [key_id.hex() for key_id in store.issuer_keys()]
    return out.done(vin=vin, issuer_id=issuer_id, added=added, issuers=issuers, card=card)


def _run(args: argparse.Namespace) -> int:
    from .cli_run import run_vehicle
    from .mcu import PROFILES
    from .runtime import FirmwareOptions
    from .slots import SlotPolicy

    try:
        slots = SlotPolicy(
            max_connections=int(args.max_connections),
            handshake_timeout=args.handshake_timeout,
            idle_timeout=args.idle_timeout,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    options = FirmwareOptions(slots=slots, mcu=PROFILES[args.mcu], adv_rotation=args.adv_rotation)
    return asyncio.run(
        run_vehicle(
            _state_dir(args),
            args.transport,
            adv_interval_ms=args.adv_interval,
            options=options,
            clock_drift_ppm=args.clock_drift_ppm,
            capture=args.capture,
            json_lines=args.json,
        )
    )


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
