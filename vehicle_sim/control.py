"""The running vehicle's console: a unix socket in its state directory.

A running vehicle owns its state (it holds the writer's lock), so console
actions reach it through ``control.sock`` (mode 0600, in the 0700 state
directory; removed on exit; a stale one left by a killed vehicle is replaced).

Protocol: JSON lines. Each request is one object with an ``op``; each answer
is one line, ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error":
"one line", "kind": "refused" | "usage" | "internal"}``. Ops:

- ``show`` -> the report of ``report.show_report``; ``log`` -> ``report.log_report``.
- ``challenge`` -> ``{"vehicle_id", "nonce"}`` (hex): a fresh nonce for one keycard
  tap on this control connection, single use, valid ``card_reader.CHALLENGE_SECONDS``.
- ``tap`` with ``action`` (unlock, lock, pair, remove-key, factory-reset,
  add-card), ``argument`` (hex, see ``keycard.TapAction``), ``card_id`` and
  ``signature`` (hex) over ``keycard.tap_message``; ``window`` (seconds) for pair.
- ``add-card`` with ``card_key`` (p256:hex): registers a card without a tap,
  only while the vehicle has none (the first card, like ``add-key``: console access).
- ``add-key`` with ``key`` (p256:hex) and ``role``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from protocol import crypto
from protocol.types import Role

from .card_reader import add_keycard
from .firmware_store import LogEvent, LogKind
from .keycard import DEFAULT_WINDOW_SECONDS, KeycardError, TapAction
from .report import log_report, show_report

if TYPE_CHECKING:
    from .runtime import VehicleRuntime

logger = logging.getLogger(__name__)

SOCKET_NAME: Final = "control.sock"
MAX_LINE: Final = 16 * 1024
UNIX_PATH_MAX: Final = 107  # sun_path on Linux, minus the terminating NUL


class ControlRefused(Exception):
    """An op the vehicle refuses; the message goes back as is."""


class ControlUsage(Exception):
    """A malformed request."""


class ControlSocketError(Exception):
    """The socket cannot be set up (path too long, another vehicle answers)."""


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


class ControlServer:
    def __init__(self, runtime: VehicleRuntime, state_dir: Path) -> None:
        self.runtime = runtime
        self.path = socket_path(state_dir)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        path = str(self.path)
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise ControlSocketError(
                f"control socket path {path} is longer than {UNIX_PATH_MAX} bytes; "
                "use a shorter --state directory"
            )
        _remove_stale(self.path)
        old_umask = os.umask(0o177)  # created 0600: no window with wider modes
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=path, limit=MAX_LINE)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state: dict[str, Any] = {"challenge": None}
        try:
            while line := await reader.readline():
                answer = self._answer(line, state)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass  # a client that went away or sent an endless line
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _answer(self, line: bytes, state: dict[str, Any]) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ControlUsage("a request is a JSON object with an 'op'")
            return {"ok": True, "result": self._dispatch(request, state)}
        except json.JSONDecodeError:
            return {"ok": False, "kind": "usage", "error": "not a JSON line"}
        except ControlUsage as exc:
            return {"ok": False, "kind": "usage", "error": str(exc)}
        except (ControlRefused, KeycardError) as exc:
            return {"ok": False, "kind": "refused", "error": str(exc)}
        except Exception as exc:
            logger.exception("control op failed")
            return {"ok": False, "kind": "internal", "error": f"{type(exc).__name__}: {exc}"}

    def _dispatch(self, request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        store = self.runtime.store
        if op == "show":
            return show_report(store, self.runtime)
        if op == "log":
            return log_report(store.read_log())
        if op == "challenge":
            challenge = self.runtime.card_reader.challenge()
            state["challenge"] = challenge
            return {"vehicle_id": challenge.vehicle_id.hex(), "nonce": challenge.nonce.hex()}
        if op == "tap":
            return self._tap(request, state)
        if op == "add-card":
            if store.keycards():
                raise ControlRefused(
                    "the vehicle already has a keycard: tap it to add another (--with-card)"
                )
            return add_keycard(self.runtime, _public_key(request, "card_key"))
        if op == "add-key":
            return self._add_key(_public_key(request, "key"), _role(request))
        raise ControlUsage(f"unknown op {op!r}")

    # --- keycard taps ----------------------------------------------------------------
    def _tap(self, request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        pending, state["challenge"] = state["challenge"], None  # single use, whatever happens
        try:
            action = TapAction.from_name(str(request.get("action", "")))
        except ValueError as exc:
            raise ControlUsage(str(exc)) from None
        window = request.get("window", DEFAULT_WINDOW_SECONDS)
        if not isinstance(window, int | float) or isinstance(window, bool):
            raise ControlUsage("window must be a number of seconds")
        try:
            return self.runtime.card_reader.tap(
                pending,
                card=_hex(request, "card_id"),
                signature=_hex(request, "signature"),
                action=action,
                argument=_hex(request, "argument", optional=True),
                window=float(window),
            )
        except ValueError as exc:  # an argument of the wrong length, a window out of range
            raise ControlUsage(str(exc)) from None

    def _add_key(self, key: crypto.PublicKey, role: Role) -> dict[str, Any]:
        store = self.runtime.store
        key_id = crypto.key_id(key)
        if store.is_key_revoked(key_id):
            raise ControlRefused(
                f"key {key_id[:4].hex()} is revoked for this vehicle; it is not added"
            )
        previous = store.whitelist_entry(key_id)
        if previous is not None and previous.role is role:
            return {
                "key_id": key_id.hex(),
                "role": role.name.lower(),
                "changed": False,
                "previous_role": role.name.lower(),
                "keys": len(store.keys()),
            }
        store.add_key(key, role)
        self.runtime.log(LogEvent(LogKind.ENROLLED, key_id))
        return {
            "key_id": key_id.hex(),
            "role": role.name.lower(),
            "changed": True,
            "previous_role": None if previous is None else previous.role.name.lower(),
            "keys": len(store.keys()),
        }


def _hex(request: dict[str, Any], name: str, *, optional: bool = False) -> bytes:
    value = request.get(name, "" if optional else None)
    if not isinstance(value, str):
        raise ControlUsage(f"{name} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ControlUsage(f"{name} must be a hex string") from None


def _public_key(request: dict[str, Any], name: str) -> crypto.PublicKey:
    value = request.get(name)
    if not isinstance(value, str):
        raise ControlUsage(f"{name} must be a public key, p256:<hex>")
    try:
        return crypto.public_key_from_text(value)
    except crypto.InvalidKeyEncoding as exc:
        raise ControlUsage(f"invalid {name}: {exc}") from None


def _role(request: dict[str, Any]) -> Role:
    try:
        return Role.from_name(str(request.get("role", "")))
    except (KeyError, ValueError):
        raise ControlUsage("role must be owner, driver or guest") from None


def _remove_stale(path: Path) -> None:
    """Remove a socket no vehicle answers on; refuse if one does."""
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # stale: its vehicle is gone
        return
    finally:
        probe.close()
    raise ControlSocketError(f"another vehicle answers on {path}")
