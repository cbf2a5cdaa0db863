"""`phonekey cloud ...`: run the credential cloud and talk to a running one.

Heavy imports (aiohttp, the database) happen inside the handlers so
`phonekey --help` stays fast. Every failure prints one line and maps to the
exit codes of `phonekey --help`: 1 refused by the cloud, 2 usage, 3 the cloud
did not answer, 4 local state (database, address in use).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Final

from phonekey.cli_args import number_in_range
from phonekey.cli_logging import add_logging_flags, logging_configured

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_LOCAL: Final = 4
DEFAULT_TIMEOUT: Final = 10.0

Handler = Callable[[argparse.Namespace], int]


class CloudCallError(Exception):
    def __init__(self, code: int, line: str) -> None:
        super().__init__(line)
        self.code = code


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cloud = subparsers.add_parser(
        "cloud",
        help="the credential cloud: serve it, inject faults, register and enroll",
        description="The credential cloud that issues signed credentials vehicles verify "
        "offline. No key depends on it being up.",
    )
    commands = cloud.add_subparsers(dest="cloud_command", metavar="SUBCOMMAND", required=True)

    p = _sub(commands, "serve", "run the cloud until SIGINT/SIGTERM", _serve)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port_arg, default=8080, help="TCP port, 0 = any free port")
    p.add_argument("--db", required=True, metavar="PATH", help="SQLite database file")
    p.add_argument(
        "--validity",
        type=_validity_arg,
        default=None,
        metavar="SECONDS",
        help="lifetime of issued credentials (default 7 days)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request to stderr")

    p = _sub(commands, "fail", "switch the fault mode of a running cloud", _fail)
    p.add_argument(
        "mode",
        type=_fault_arg,
        metavar="MODE",
        help="none, http-500, blackhole, slow:SECONDS, reset, garbage or bad-signature",
    )
    _add_url(p)

    p = _sub(commands, "issuer", "print the issuer public key (created if new)", _issuer)
    p.add_argument("--db", required=True, metavar="PATH", help="SQLite database file")

    p = _sub(
        commands,
        "rotate-issuer",
        "replace the issuer key; the old key signs the new one (run with the cloud stopped)",
        _rotate_issuer,
    )
    p.add_argument("--db", required=True, metavar="PATH", help="SQLite database file")

    p = _sub(
        commands,
        "register-vehicle",
        "register a vehicle; prints its owner token",
        _register_vehicle,
    )
    _add_url(p)
    p.add_argument("--card", required=True, type=_card_arg, help="phonekey-card:1:<VIN>:p256:<hex>")

    p = _sub(commands, "enroll", "enroll a phone key for a vehicle (owner token)", _enroll)
    _add_owner(p)
    p.add_argument("--key", required=True, type=_key_arg, help="the phone's key, p256:<hex>")
    p.add_argument("--role", required=True, choices=("driver", "guest"))

    p = _sub(commands, "revoke", "revoke a phone key (owner token)", _revoke)
    _add_owner(p)
    p.add_argument("--key-id", required=True, type=_hex16_arg, help="the phone key id, 32 hex")


def _sub(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    handler: Handler,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=help_text)
    add_logging_flags(parser)
    parser.set_defaults(handler=_guarded(handler))
    return parser


def _add_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the cloud, e.g. http://127.0.0.1:8080")
    parser.add_argument(
        "--timeout",
        type=_timeout_arg,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for an answer (default {DEFAULT_TIMEOUT:g})",
    )


def _add_owner(parser: argparse.ArgumentParser) -> None:
    _add_url(parser)
    parser.add_argument("--token", required=True, help="the vehicle's owner token")
    parser.add_argument("--vehicle-id", required=True, type=_hex16_arg, help="32 hex digits")


# --- argument types -------------------------------------------------------------------
def _port_arg(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError("a port is 0..65535")
    return int(text)


def _validity_arg(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError("validity is a positive number of seconds")
    return int(text)


_timeout_arg = number_in_range(
    float, lambda v: 0 < v <= 3600, "a timeout is above 0 and at most 3600 seconds"
)


def _fault_arg(text: str) -> str:
    from .faults import FaultMode

    try:
        return str(FaultMode.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _card_arg(text: str) -> str:
    from protocol.card import InvalidCard, VehicleCard

    try:
        return VehicleCard.from_text(text).to_text()
    except InvalidCard as exc:
        raise argparse.ArgumentTypeError(f"invalid vehicle card: {exc}") from None


def _key_arg(text: str) -> str:
    from protocol import crypto

    try:
        return crypto.public_key_to_text(crypto.public_key_from_text(text))
    except crypto.InvalidKeyEncoding as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _hex16_arg(text: str) -> str:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 16 or len(text) != 32:
        raise argparse.ArgumentTypeError("expected 32 hex digits")
    return raw.hex()


# --- errors -------------------------------------------------------------------------
def _guarded(handler: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        with logging_configured(args):
            return _explained(handler, args)

    return run


def _explained(handler: Handler, args: argparse.Namespace) -> int:
    """Run ``handler``; a failure is one line on stderr (under --debug the
    traceback first) and its exit code."""
    from .db import DatabaseError

    try:
        return handler(args)
    except (CloudCallError, DatabaseError, OSError, ValueError) as exc:
        if args.debug:
            traceback.print_exc()
        if isinstance(exc, CloudCallError):
            code, line = exc.code, str(exc)
        elif isinstance(exc, ValueError):
            code, line = EXIT_USAGE, f"error: {exc}"
        else:
            code, line = EXIT_LOCAL, f"error: {exc}"
        print(line, file=sys.stderr)
        return code


def _call(
    args: argparse.Namespace, method: str, path: str, body: Any = None, token: str | None = None
) -> dict[str, Any]:
    """One JSON request to the cloud at ``args.url``; ``CloudCallError`` on any failure."""
    url = args.url.rstrip("/") + path
    if not url.startswith(("http://", "https://")):
        raise CloudCallError(EXIT_USAGE, f"error: --url must start with http:// or https://: {url}")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (scheme checked)
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:  # noqa: S310
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raise CloudCallError(EXIT_FAILED, f"failed: HTTP {exc.code}: {_error_text(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CloudCallError(
            EXIT_UNREACHABLE, f"error: the cloud at {args.url} did not answer: {reason}"
        ) from None
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise CloudCallError(EXIT_FAILED, "failed: the cloud's answer is not a JSON object")
    return answer


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        error = json.loads(exc.read()).get("error")
    except (ValueError, AttributeError, OSError):
        error = None
    return str(error) if error else str(exc.reason)


# --- handlers -------------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    logging.basicConfig(level=logging.INFO if args.access_log else logging.WARNING)
    return asyncio.run(_serve_until_signal(args))


async def _serve_until_signal(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from protocol import credentials

    from .server import start_cloud

    validity = args.validity or credentials.DEFAULT_VALIDITY
    cloud = await start_cloud(args.db, args.host, args.port, validity, access_log=args.access_log)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        print(f"cloud listening on {cloud.url}", flush=True)
        print(f"issuer {cloud.issuer_public_text}", flush=True)
        await stop.wait()
    finally:
        await cloud.close()
    return EXIT_OK


def _fail(args: argparse.Namespace) -> int:
    answer = _call(args, "POST", "/v1/admin/fault", {"mode": args.mode})
    print(f"fault mode: {answer.get('mode')}")
    return EXIT_OK


def _issuer(args: argparse.Namespace) -> int:
    from protocol import crypto

    from .db import CloudDB

    db = CloudDB(args.db)
    try:
        public = db.issuer_key().public_key()
    finally:
        db.close()
    print(f"issuer key id {crypto.key_id(public).hex()}")
    print("provision vehicles with the line below")
    print(crypto.public_key_to_text(public))  # last line: machine-readable
    return EXIT_OK


def _rotate_issuer(args: argparse.Namespace) -> int:
    import time

    from protocol import crypto

    from .db import CloudDB

    db = CloudDB(args.db)
    try:
        rotation = db.rotate_issuer(int(time.time()))
    finally:
        db.close()
    old_id, new_id = rotation.old_issuer_key_id.hex(), rotation.new_issuer_key_id.hex()
    print(f"issuer key {old_id} rotated to {new_id} (the old key signed the rotation)")
    print("phones carry the rotation to vehicles; credentials of the old key stay valid")
    print("restart a running cloud to sign with the new key; the new issuer key:")
    print(crypto.public_key_to_text(rotation.new_public_key))  # last line: machine-readable
    return EXIT_OK


def _register_vehicle(args: argparse.Namespace) -> int:
    answer = _call(args, "POST", "/v1/vehicles", {"card": args.card})
    print(f"registered vehicle {answer.get('vehicle_id')} (VIN {answer.get('vin')})")
    print("owner token (keep it secret; it is shown only once):")
    print(answer.get("owner_token"))  # last line: machine-readable
    return EXIT_OK


def _enroll(args: argparse.Namespace) -> int:
    answer = _call(
        args,
        "POST",
        f"/v1/vehicles/{args.vehicle_id}/phones",
        {"public_key": args.key, "role": args.role},
        token=args.token,
    )
    print(f"enrolled key {answer.get('key_id')} as {answer.get('role')}")
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    answer = _call(
        args,
        "POST",
        f"/v1/vehicles/{args.vehicle_id}/revocations",
        {"key_id": args.key_id},
        token=args.token,
    )
    print(
        f"revoked key {args.key_id} on vehicle {args.vehicle_id} only; "
        f"revocation list version {answer.get('version')}"
    )
    return EXIT_OK


if __name__ == "__main__":  # `python -m cloud_sim.cli ...` without the dispatcher
    _parser = argparse.ArgumentParser(prog="cloud_sim")
    register(_parser.add_subparsers(dest="command", required=True))
    _args = _parser.parse_args()
    sys.exit(_args.handler(_args))
