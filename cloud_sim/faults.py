"""Fault injection: make the cloud fail the way real networks and servers do.

The mode is switched while the server runs (``POST /v1/admin/fault``) and
applies to every endpoint outside ``/v1/admin/``. A key must keep working
through all of them; the phone's client must fail cleanly and retry.

Where each mode acts:

- ``http-500``, ``blackhole``, ``reset``, ``garbage``: before the handler, so
  the request has no effect (a retry is always safe to reason about).
- ``slow:SECONDS``: delays, then runs the handler normally.
- ``bad-signature``: runs the handler; every signed object in the answer has
  one bit of its signature's ``s`` flipped, so it parses but fails verification.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import math
import socket
import struct
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from protocol import crypto

MAX_SLOW_SECONDS: Final = 600.0
ADMIN_PREFIX: Final = "/v1/admin/"
# A JSON document cut off mid-string: what a dropped proxy connection looks like.
GARBAGE_BODY: Final = b'{"credential": "AQFBAAAAAAAAAAAAAAAAAAAAAAAAAA'


class FaultKind(enum.StrEnum):
    NONE = "none"
    HTTP_500 = "http-500"
    BLACKHOLE = "blackhole"
    SLOW = "slow"
    RESET = "reset"
    GARBAGE = "garbage"
    BAD_SIGNATURE = "bad-signature"


@dataclass(frozen=True)
class FaultMode:
    kind: FaultKind = FaultKind.NONE
    delay: float = 0.0  # seconds, for slow only

    def __str__(self) -> str:
        return f"slow:{self.delay:g}" if self.kind is FaultKind.SLOW else self.kind.value

    @classmethod
    def parse(cls, text: str) -> FaultMode:
        """``none``, ``http-500``, ``blackhole``, ``slow:SECONDS``, ``reset``,
        ``garbage`` or ``bad-signature``; raises ``ValueError`` otherwise."""
        name, sep, arg = text.strip().partition(":")
        if name == FaultKind.SLOW.value and sep:
            try:
                delay = float(arg)
            except ValueError:
                raise ValueError("slow needs a number of seconds, e.g. slow:2.5") from None
            if not (math.isfinite(delay) and 0 < delay <= MAX_SLOW_SECONDS):
                raise ValueError(f"slow takes 0 < SECONDS <= {MAX_SLOW_SECONDS:g}")
            return cls(FaultKind.SLOW, delay)
        plain = {k.value for k in FaultKind} - {FaultKind.SLOW.value}
        if sep or name not in plain:
            choices = ", ".join([*sorted(plain), "slow:SECONDS"])
            raise ValueError(f"unknown fault mode {text[:40]!r}; choose one of: {choices}")
        return cls(FaultKind(name))


class FaultState:
    """The current mode, plus the signal that releases held requests at shutdown."""

    def __init__(self) -> None:
        self.mode = FaultMode()
        self.stopping = asyncio.Event()


FAULTS: Final = web.AppKey("faults", FaultState)


def corrupt_signature(signed: bytes) -> bytes:
    """Flip the lowest bit of ``s`` (the last byte of every signed object).

    The object keeps its length and still parses; ``s`` stays in low-S range
    (barring a 2**-255 chance), so it is refused as a bad signature rather
    than as a malformed one.
    """
    if len(signed) < crypto.SIGNATURE_LEN:
        raise ValueError("not a signed object")
    return signed[:-1] + bytes([signed[-1] ^ 0x01])


def signed_b64(request: web.Request, signed: bytes) -> str:
    """Base64 of a signed object as this response should carry it."""
    if request.app[FAULTS].mode.kind is FaultKind.BAD_SIGNATURE:
        signed = corrupt_signature(signed)
    return base64.b64encode(signed).decode("ascii")


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[FAULTS]
    mode = state.mode
    if request.path.startswith(ADMIN_PREFIX):
        return await handler(request)
    match mode.kind:
        case FaultKind.HTTP_500:
            return web.json_response({"error": "injected fault: http-500"}, status=500)
        case FaultKind.GARBAGE:
            return web.Response(body=GARBAGE_BODY, content_type="application/json")
        case FaultKind.RESET:
            return _abort(request)
        case FaultKind.BLACKHOLE:
            # Held until the client gives up (the runner cancels this handler
            # when the connection drops) or the server shuts down.
            await state.stopping.wait()
            return _abort(request)
        case FaultKind.SLOW:
            await _hold(state, mode.delay)
            if state.stopping.is_set():
                return _abort(request)
    return await handler(request)


async def _hold(state: FaultState, seconds: float) -> None:
    """Wait ``seconds``, or until shutdown starts (tests replace it to see the delay)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.stopping.wait(), seconds)


def _abort(request: web.Request) -> web.StreamResponse:
    """Drop the connection with a TCP RST and no response.

    SO_LINGER 0 makes close() send RST instead of FIN, so the client sees
    "connection reset" rather than an empty answer. aiohttp treats writing the
    returned placeholder to the dead transport as a client disconnect, quietly.
    """
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=204)
