"""`phonekey phone ...`: the phone's command line.

Imports of bleak, bumble and the BLE code happen inside the handlers, so
`phonekey --help` does not pay for them. Every failure prints one line and
maps to the exit codes listed in `phonekey --help`; --debug adds tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from phonekey.cli_args import number_in_range
from phonekey.cli_logging import add_logging_flags, logging_configured

if TYPE_CHECKING:
    from .cli_output import StatusLine
    from .outcome import CommandOutcome

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_TIMEOUT: Final = 3
EXIT_LOCAL: Final = 4

DEFAULT_COMMAND_TIMEOUT: Final = 10.0
DEFAULT_SCAN_TIMEOUT: Final = 3.0
DEFAULT_CLOUD_TIMEOUT: Final = 2.0
BREAKER_FILE: Final = "cloud-breaker.json"
PHONE_DEVICE_NAME: Final = "phonekey-phone"
JSON_COMMANDS: Final = ("unlock", "lock", "status", "scan")

Handler = Callable[[argparse.Namespace], int]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    phone = subparsers.add_parser(
        "phone",
        help="the phone: keys, paired vehicles, unlock/lock/status",
        description="The phone side of phonekey: its key, its vehicle cards, and commands.",
    )
    _add_common(phone, None)
    commands = phone.add_subparsers(dest="phone_command", metavar="SUBCOMMAND", required=True)

    p = _sub(commands, "keygen", "create this phone's key pair", _keygen)
    p.add_argument("--force", action="store_true", help="replace an existing key")

    _sub(commands, "pubkey", "print this phone's public key", _pubkey)

    p = _sub(commands, "add-vehicle", "store a vehicle card this phone may use", _add_vehicle)
    p.add_argument("card", metavar="CARD", help="phonekey-card:1:<VIN>:p256:<hex>")
    p.add_argument(
        "--issuer",
        metavar="PUBKEY",
        type=_key_arg,
        help="the credential issuer key the vehicle trusts, p256:<hex> (pinned for it)",
    )
    p.add_argument(
        "--cloud",
        metavar="URL",
        type=_url_arg,
        help="the credential cloud for this vehicle, e.g. http://127.0.0.1:8080; without "
        "--issuer its issuer key is fetched once and pinned (trust on first use)",
    )
    _add_cloud_timeout(p)

    from .cli_credentials import list_credentials, refresh

    p = _sub(commands, "refresh", "fetch a fresh credential from the cloud now", refresh)
    p.add_argument("--vin", required=True, type=_vin_arg, help="the vehicle's VIN")
    _add_cloud_timeout(p)

    _sub(
        commands,
        "credentials",
        "list the cached cloud credentials and their validity",
        list_credentials,
    )

    p = _sub(commands, "scan", "list nearby phonekey vehicles (exit 3 if none)", _scan)
    _add_radio(p, DEFAULT_SCAN_TIMEOUT, mtu=False)
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object instead of text: ok, command, vehicles (address, rssi, "
        "tag, vin: null unless this phone holds the card), error",
    )

    for name, verb in (("unlock", "unlock"), ("lock", "lock"), ("status", "report the lock of")):
        p = _sub(commands, name, f"{verb} a vehicle whose card this phone holds", _command)
        p.add_argument("--vin", required=True, type=_vin_arg, help="the vehicle's VIN")
        _add_radio(p, DEFAULT_COMMAND_TIMEOUT, mtu=True)
        p.add_argument(
            "--json",
            action="store_true",
            help="print one JSON object (result, lock_state, fast_path, credential, "
            "latency_ms, error) instead of text",
        )
        p.add_argument(
            "--no-cloud",
            action="store_true",
            help="do not contact the vehicle's cloud (use the cached credential or the whitelist)",
        )
        _add_cloud_timeout(p)

    # Shares and whitelist management live in their own modules (imported
    # here, after this one is complete: they use its helpers).
    from . import cli_manage, cli_share

    cli_share.register(commands)
    cli_manage.register(commands)


def _sub(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    handler: Handler,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=help_text)
    # SUPPRESS: when not given here, keep what `phonekey phone --home D` set.
    _add_common(parser, argparse.SUPPRESS)
    parser.set_defaults(handler=_guarded(handler))
    return parser


def _add_common(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--home",
        type=Path,
        metavar="DIR",
        default=default,
        help="key store directory (default: the per-user data directory)",
    )
    add_logging_flags(parser, default if default is argparse.SUPPRESS else False)


def _add_radio(parser: argparse.ArgumentParser, timeout: float, *, mtu: bool) -> None:
    """--transport, --capture, --timeout (and --mtu): phone_client.cli_radio."""
    from .cli_radio import add_radio

    add_radio(parser, timeout, mtu=mtu, positive=_positive, mtu_arg=_mtu_arg)


def _add_cloud_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cloud-timeout",
        type=_positive,
        default=DEFAULT_CLOUD_TIMEOUT,
        metavar="S",
        help=f"seconds the cloud gets (default {DEFAULT_CLOUD_TIMEOUT:g})",
    )


# --- argument types ------------------------------------------------------------
def _vin_arg(text: str) -> str:
    from protocol.card import validate_vin

    try:
        return validate_vin(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _key_arg(text: str) -> Any:
    from protocol import crypto

    try:
        return crypto.public_key_from_text(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a p256:<hex> public key: {exc}") from None


def _url_arg(text: str) -> str:
    from .errors import KeyStoreError
    from .keystore import validate_cloud_url

    try:
        return validate_cloud_url(text)
    except KeyStoreError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_positive = number_in_range(float, lambda v: v > 0, "must be above 0")


_mtu_arg = number_in_range(int, lambda v: 23 <= v <= 517, "ATT MTU must be within 23..517")


# --- error handling --------------------------------------------------------------
def _guarded(handler: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        from .cli_radio import check_capture

        usage = check_capture(args)
        if usage is not None:
            print(f"error: {usage}", file=sys.stderr)
            return EXIT_USAGE
        with logging_configured(args):
            try:
                return handler(args)
            except Exception as exc:
                code, line = _explain(exc)
                if args.debug:
                    traceback.print_exc()
                if _wants_json(args):
                    from .cli_output import failure_json, print_json, scan_json

                    if args.phone_command == "scan":
                        print_json(scan_json(None, (code, line)))
                    else:
                        vin = getattr(args, "vin", None)
                        print_json(failure_json(args.phone_command, vin, code, line))
                print(line, file=sys.stderr)
                return code

    return run


def _wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False)) and args.phone_command in JSON_COMMANDS


def _explain(exc: Exception) -> tuple[int, str]:
    """Exit code and one-line reason for anything a handler raised."""
    from ble_stack.capture import CaptureError
    from ble_stack.errors import TransportOpenError
    from protocol import ProtocolError, VehicleRejected, WrongVehicle
    from protocol.card import InvalidCard

    from . import errors

    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, VehicleRejected):
        # An unauthenticated refusal may be forged: it says nothing about the lock.
        return EXIT_FAILED, f"denied: {exc} (unauthenticated refusal; lock state unknown)"
    if isinstance(exc, WrongVehicle):
        # Nothing was signed for it; the usual cause is a stale or altered card.
        return EXIT_FAILED, (
            f"failed: the vehicle that answered is not the one of this phone's card ({exc}); "
            "add the card `phonekey vehicle show` prints again"
        )
    if isinstance(exc, ProtocolError):
        return EXIT_FAILED, f"failed: protocol error from the vehicle: {exc}"
    if isinstance(exc, errors.KeyUnavailable | errors.ManageRefused | errors.ManageRejected):
        return EXIT_FAILED, f"denied: {exc}"
    if isinstance(exc, errors.BadArgument):
        return EXIT_USAGE, f"error: {exc}"
    if isinstance(exc, errors.ShareTextError):
        return EXIT_USAGE, f"error: unusable share: {exc}"
    if isinstance(exc, errors.CloudUnavailable):
        code = EXIT_TIMEOUT if exc.status == "blackhole" else EXIT_FAILED
        return code, f"failed: {exc}"
    if isinstance(exc, errors.VehicleNotFound | errors.CommandTimeout):
        return EXIT_TIMEOUT, f"error: {exc}"
    if isinstance(exc, errors.KeyStoreError | errors.AdapterUnavailable):
        return EXIT_LOCAL, f"error: {exc}"
    if isinstance(exc, TransportOpenError):
        return EXIT_LOCAL, f"error: {first_line} ({exc.fix})"
    if isinstance(exc, CaptureError):
        return EXIT_LOCAL, f"error: {first_line}"
    if isinstance(exc, errors.PhoneError):
        return EXIT_FAILED, f"failed: {exc}"
    if isinstance(exc, InvalidCard):
        return EXIT_USAGE, f"error: invalid vehicle card: {exc}"
    return EXIT_FAILED, f"failed: {type(exc).__name__}: {first_line}"


# --- handlers --------------------------------------------------------------------
def _keystore(args: argparse.Namespace) -> Any:
    from .keystore import KeyStore

    return KeyStore(getattr(args, "home", None))


def _keygen(args: argparse.Namespace) -> int:
    from protocol import crypto

    store = _keystore(args)
    public_key = store.keygen(force=args.force)
    key_id = crypto.key_id(public_key).hex()
    print(f"created this phone's key in {store.key_path} (key id {key_id})")
    print("whitelist it on a vehicle with: phonekey vehicle add-key --key <the line below>")
    print(crypto.public_key_to_text(public_key))  # last line: machine-readable
    return EXIT_OK


def _pubkey(args: argparse.Namespace) -> int:
    print(_keystore(args).public_key_text())
    return EXIT_OK


def _add_vehicle(args: argparse.Namespace) -> int:
    from protocol import crypto
    from protocol.card import VehicleCard

    from .errors import UnknownVehicle

    card = VehicleCard.from_text(args.card)
    store = _keystore(args)
    # The issuer key comes from --issuer, else from the vehicle's own card,
    # and only as a last resort from the cloud (trust on first use).
    issuer, fetched_from = args.issuer if args.issuer is not None else card.issuer, None
    if args.cloud is not None and issuer is None:
        try:
            pinned = store.vehicle_trust(card.vin).issuer
        except UnknownVehicle:
            pinned = None
        if pinned is None:
            # Trust on first use, at setup only: every credential is later
            # verified against this pinned key, never against what the cloud says.
            from .cloud_client import CloudClient

            async def fetch() -> Any:
                async with CloudClient(args.cloud, call_timeout=args.cloud_timeout) as cloud:
                    return await cloud.issuer()

            issuer, fetched_from = asyncio.run(fetch()).public_key, args.cloud
    store.add_vehicle(card, issuer=issuer, cloud_url=args.cloud)
    print(f"added vehicle {card.vin} (vehicle id {card.vehicle_id.hex()})")
    trust = store.vehicle_trust(card.vin)
    if trust.issuer is not None:
        key_id = crypto.key_id(trust.issuer).hex()
        how = ""
        if fetched_from is not None:
            how = (
                f", as {fetched_from} states it (trust on first use: compare it with "
                "the key the vehicle was provisioned with, or pass --issuer)"
            )
        print(f"credentials for it must be signed by issuer {key_id}{how}")
    if trust.cloud_url is not None:
        print(f"cloud: {trust.cloud_url}")
    return EXIT_OK


def _breaker(store: Any, url: str) -> Any:
    from .circuit_breaker import CircuitBreaker

    return CircuitBreaker(path=store.home / BREAKER_FILE, key=url)


def _status_line(args: argparse.Namespace) -> StatusLine:
    """The live status on stderr; --json and the log flags own the terminal instead."""
    from .cli_output import StatusLine

    return StatusLine(enabled=not (args.json or args.verbose or args.debug))


def _scan(args: argparse.Namespace) -> int:
    from .cli_output import print_json, scan_json
    from .scanning import SeenVehicle, scan_vehicles

    store = _keystore(args)
    known = store.vehicles()
    status = _status_line(args)
    heard: list[SeenVehicle] = []

    def on_heard(vehicle: SeenVehicle) -> None:
        heard.append(vehicle)
        named = sum(1 for v in heard if v.vin is not None)
        what = "vehicle" if len(heard) == 1 else "vehicles"
        status.show(f"scanning... heard {len(heard)} {what} ({named} whose card this phone holds)")

    async def scan(radio: dict[str, Any]) -> list[SeenVehicle]:
        return await scan_vehicles(
            args.timeout,
            known=known,
            scanner_kwargs=radio.get("scanner_kwargs"),
            on_heard=on_heard,
        )

    status.show(f"listening for phonekey vehicles for {args.timeout:g} s...")
    try:
        seen: list[SeenVehicle] = asyncio.run(_with_radio(args, scan, status=status))
    finally:
        status.clear()
    none_heard = f"no phonekey vehicle heard within {args.timeout:g} s"
    if args.json:
        print_json(scan_json(seen, None if seen else (EXIT_TIMEOUT, none_heard)))
    else:
        for vehicle in seen:
            held = f"{vehicle.vin} (card held)" if vehicle.vin else "-"
            print(f"{vehicle.address}  rssi {vehicle.rssi:4d}  tag {vehicle.tag.hex()}  {held}")
    if not seen:
        print(none_heard, file=sys.stderr)
        return EXIT_TIMEOUT
    return EXIT_OK


def _command(args: argparse.Namespace) -> int:
    from protocol import Command

    from .cli_output import outcome_json, print_json
    from .cli_output import print_result as show
    from .command_policy import run_command

    store = _keystore(args)
    trust = store.vehicle_trust(args.vin)  # refuse an unknown vehicle before any radio work
    _ = store.private_key
    command = Command[args.phone_command.upper()]
    printed: list[CommandOutcome] = []
    status = _status_line(args)

    def print_result(outcome: CommandOutcome) -> None:
        # As soon as the vehicle answered: the cloud work after it must not delay this.
        status.clear()
        if args.json:
            return  # one object at the end, with the cloud's part in it
        printed.append(outcome)
        show(outcome)

    async def send(radio: dict[str, Any]) -> CommandOutcome:
        cloud = None
        if trust.cloud_url is not None and not args.no_cloud:
            from .cloud_client import CloudClient

            cloud = CloudClient(
                trust.cloud_url,
                call_timeout=args.cloud_timeout,
                breaker=_breaker(store, trust.cloud_url),
            )
        try:
            return await run_command(
                store,
                args.vin,
                command,
                client_kwargs=radio.get("client_kwargs"),
                scanner_kwargs=radio.get("scanner_kwargs"),
                timeout=args.timeout,
                max_mtu=args.mtu,
                cloud=cloud,
                cloud_deadline=args.cloud_timeout,
                on_result=print_result,
            )
        finally:
            if cloud is not None:
                await cloud.close()

    status.show(f"looking for vehicle {args.vin}...")
    try:
        outcome = asyncio.run(_with_radio(args, send, status=status))
    finally:
        status.clear()
    if args.json:
        print_json(outcome_json(outcome))
        return EXIT_OK if outcome.ok else EXIT_FAILED
    if not printed:
        show(outcome)
    if outcome.cloud != "none" or outcome.credential not in (None, "whitelist"):
        print(outcome.message, file=sys.stdout if outcome.ok else sys.stderr)
    return EXIT_OK if outcome.ok else EXIT_FAILED


async def _with_radio(
    args: argparse.Namespace,
    body: Callable[[dict[str, Any]], Any],
    *,
    status: StatusLine | None = None,
) -> Any:
    """Run ``body`` with bleak kwargs for the OS adapter, or for a bumble device
    opened from --transport (and captured to --capture); see cli_radio."""
    from .cli_radio import with_radio

    return await with_radio(args, body, device_name=PHONE_DEVICE_NAME, status=status)
