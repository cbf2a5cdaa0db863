"""`phonekey phone enroll | add-key | remove-key | transfer`: the whitelist over BLE.

    phonekey phone enroll --vin VIN          # while a keycard tap holds the window open
    phonekey phone add-key --vin VIN --pubkey p256:... --role driver
    phonekey phone remove-key --vin VIN --key-id <32 hex digits>
    phonekey phone transfer --vin VIN --to p256:...

Each is one signed request answered under the vehicle's MAC. An authenticated
refusal (not an owner, key not found, last owner) exits 1 with "denied: ...";
an unauthenticated one (e.g. the enrollment window is closed) too, marked as such.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from .cli import (
    DEFAULT_COMMAND_TIMEOUT,
    EXIT_OK,
    _add_radio,
    _key_arg,
    _keystore,
    _sub,
    _vin_arg,
    _with_radio,
)
from .errors import ManageRejected

ManageBody = Callable[[Any], Awaitable[Any]]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _sub(
        commands,
        "enroll",
        "become an owner of a vehicle while its keycard enrollment window is open (over BLE)",
        _enroll,
    )
    _vin(p)

    p = _sub(commands, "add-key", "whitelist a key on a vehicle this phone owns (over BLE)", _add)
    _vin(p)
    p.add_argument("--pubkey", required=True, type=_key_arg, metavar="PUBKEY", help="p256:<hex>")
    p.add_argument("--role", required=True, type=role_arg, help="owner, driver or guest")

    p = _sub(commands, "remove-key", "remove a key from a vehicle this phone owns", _remove)
    _vin(p)
    p.add_argument("--key-id", required=True, type=key_id_arg, metavar="HEX", help="32 hex digits")

    p = _sub(
        commands,
        "transfer",
        "hand a vehicle to a new owner key: every other key and share stops working",
        _transfer,
    )
    _vin(p)
    p.add_argument("--to", required=True, type=_key_arg, metavar="PUBKEY", help="p256:<hex>")


def _vin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vin", required=True, type=_vin_arg, help="the vehicle's VIN")
    _add_radio(parser, DEFAULT_COMMAND_TIMEOUT, mtu=True)


def role_arg(text: str) -> Any:
    from protocol import Role

    try:
        return Role.from_name(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a role (owner, driver, guest)") from None


def key_id_arg(text: str) -> bytes:
    try:
        key_id = bytes.fromhex(text.strip())
    except ValueError:
        key_id = b""
    if len(key_id) != 16:
        raise argparse.ArgumentTypeError(f"{text!r} is not a key id (32 hex digits)")
    return key_id


def manage_in_radio(
    args: argparse.Namespace, store: Any, body: ManageBody
) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    """A ``_with_radio`` body that runs ``body(manager)``; an unauthenticated
    refusal becomes ``ManageRejected`` (its message, marked as unauthenticated)."""
    from protocol import VehicleRejected

    from .manage import Manager

    async def run(radio: dict[str, Any]) -> Any:
        manager = Manager(
            store,
            client_kwargs=radio.get("client_kwargs"),
            scanner_kwargs=radio.get("scanner_kwargs"),
            timeout=args.timeout,
            max_mtu=args.mtu,
        )
        try:
            return await body(manager)
        except VehicleRejected as exc:
            raise ManageRejected(f"{exc} (unauthenticated refusal)") from exc

    return run


def _run(args: argparse.Namespace, body: ManageBody) -> Any:
    store = _keystore(args)
    store.vehicle(args.vin)  # an unknown vehicle fails before any radio work
    _ = store.private_key
    return asyncio.run(_with_radio(args, manage_in_radio(args, store, body)))


def _enroll(args: argparse.Namespace) -> int:
    async def body(manager: Any) -> Any:
        return await manager.enroll(args.vin)

    outcome = _run(args, body)
    print(f"enrolled this phone (key {outcome.key_id[:4].hex()}) as an owner of {args.vin}")
    return EXIT_OK


def _add(args: argparse.Namespace) -> int:
    from protocol import crypto

    async def body(manager: Any) -> Any:
        return await manager.add_key(args.vin, args.pubkey, args.role)

    _run(args, body)
    key_id = crypto.key_id(args.pubkey).hex()
    print(f"added key {key_id} to {args.vin} as {args.role.name.lower()}")
    return EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    async def body(manager: Any) -> Any:
        return await manager.remove_key(args.vin, args.key_id)

    outcome = _run(args, body)
    text = f"removed key {args.key_id.hex()} from {args.vin}"
    if args.key_id == outcome.key_id:
        text += " (this phone's own key: it no longer opens the vehicle)"
    print(text)
    return EXIT_OK


def _transfer(args: argparse.Namespace) -> int:
    from protocol import crypto

    async def body(manager: Any) -> Any:
        return await manager.transfer(args.vin, args.to)

    outcome = _run(args, body)
    new_owner = crypto.key_id(args.to)
    text = f"transferred {args.vin} to key {new_owner.hex()}"
    if new_owner != outcome.key_id:
        text += "; every other key and share, this phone's included, no longer opens it"
    print(text)
    return EXIT_OK
