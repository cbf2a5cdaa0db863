"""The console side of the control socket (blocking; used by the CLI).

``running(state_dir)`` tells whether a vehicle answers on the state's
``control.sock``; ``ControlClient`` sends JSON-line requests (see
``vehicle_sim.control`` for the protocol) and ``tap`` performs a keycard
challenge-response with a card's private key.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from protocol import crypto

from .control import SOCKET_NAME
from .keycard import TapAction, card_id, sign_tap

TIMEOUT: Final = 10.0


class VehicleNotRunning(Exception):
    """No vehicle answers on the state directory's control socket."""


class ControlError(Exception):
    """The vehicle refused the request (``kind``: refused, usage or internal)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def running(state_dir: Path) -> bool:
    try:
        with ControlClient(state_dir):
            return True
    except VehicleNotRunning:
        return False


class ControlClient:
    def __init__(self, state_dir: Path, *, timeout: float = TIMEOUT) -> None:
        path = state_dir / SOCKET_NAME
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except OSError:
            self._sock.close()
            raise VehicleNotRunning(f"no vehicle is running on {state_dir}") from None
        self._file = self._sock.makefile("rwb")

    def request(self, op: str, **arguments: Any) -> dict[str, Any]:
        line = json.dumps({"op": op, **arguments}).encode() + b"\n"
        try:
            self._file.write(line)
            self._file.flush()
            answer_line = self._file.readline()
        except OSError as exc:
            raise ControlError(f"the vehicle's control socket failed: {exc}", "internal") from None
        if not answer_line:
            raise ControlError("the vehicle closed the control socket", "internal")
        answer = json.loads(answer_line)
        if not answer.get("ok"):
            raise ControlError(str(answer.get("error")), str(answer.get("kind")))
        result: dict[str, Any] = answer["result"]
        return result

    def tap(
        self,
        card: crypto.PrivateKey,
        action: TapAction,
        argument: bytes = b"",
        **extra: Any,
    ) -> dict[str, Any]:
        """Challenge, sign with ``card``, and ask for ``action``."""
        challenge = self.request("challenge")
        signature = sign_tap(
            card,
            bytes.fromhex(challenge["vehicle_id"]),
            bytes.fromhex(challenge["nonce"]),
            action,
            argument,
        )
        return self.request(
            "tap",
            action=action.label,
            argument=argument.hex(),
            card_id=card_id(card).hex(),
            signature=signature.hex(),
            **extra,
        )

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
