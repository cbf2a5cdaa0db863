"""Parsing and validation of request input, and the error every refusal raises.

Each helper either returns a value of the right type and size or raises
``ApiError`` carrying the HTTP status and one sentence for the client, so a
handler never sees half-valid input and no bad input reaches a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Final

from aiohttp import web

from protocol import crypto

MAX_BODY: Final = 16 * 1024  # every request body here is well under 1 KiB
MAX_TEXT: Final = 512  # longest string field we accept (a card is ~100 chars)
MAX_TOKEN: Final = 256
_HEX_RE: Final = re.compile(r"[0-9a-fA-F]*")
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_\-]+")  # what token_urlsafe produces


class ApiError(Exception):
    """A refusal: becomes ``{"error": message, **extra}`` with ``status``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object."""
    raw = await request.read()  # the app's client_max_size bounds this
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # bad UTF-8, bad JSON, absurd nesting or digits
        raise bad_request("the request body is not valid JSON (UTF-8, RFC 8259)") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not.
    raise ValueError(f"{name} is not JSON")


def text_field(body: dict[str, Any], name: str, max_len: int = MAX_TEXT) -> str:
    value = body.get(name)
    if value is None:
        raise bad_request(f"the field {name!r} is required")
    if not isinstance(value, str):
        raise bad_request(f"the field {name!r} must be a string")
    if not 0 < len(value) <= max_len:
        raise bad_request(f"the field {name!r} must be 1 to {max_len} characters")
    return value


def int_field(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        raise bad_request(f"the field {name!r} is required")
    # bool is an int in Python but not in JSON: refuse true/false.
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_request(f"the field {name!r} must be an integer")
    if not low <= value <= high:
        raise bad_request(f"the field {name!r} must be within {low}..{high}")
    return value


def hex_bytes(text: str, length: int, what: str) -> bytes:
    """Exactly ``length`` bytes written as hex (either case)."""
    if len(text) != 2 * length or not _HEX_RE.fullmatch(text):
        raise bad_request(f"{what} must be {2 * length} hex digits")
    return bytes.fromhex(text)


def base64_bytes(text: str, length: int, what: str) -> bytes:
    """Exactly ``length`` bytes in standard, padded base64."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{what} must be standard base64") from None
    if len(data) != length:
        raise bad_request(f"{what} must decode to {length} bytes, not {len(data)}")
    return data


def public_key(text: str, what: str = "public_key") -> crypto.PublicKey:
    """A P-256 public key written ``p256:<hex point>``."""
    if not text.startswith("p256:"):
        raise bad_request(f"{what} must look like p256:<66 hex digits>")
    try:
        return crypto.public_key_from_text(text)
    except crypto.InvalidKeyEncoding as exc:
        raise bad_request(f"{what} is not a P-256 public key: {exc}") from None


def vehicle_id(text: str) -> str:
    """A vehicle id, normalised to the lowercase hex the database stores."""
    return hex_bytes(text, crypto.KEY_ID_LEN, "the vehicle id").hex()


def bearer_token(request: web.Request) -> str:
    """The token of ``Authorization: Bearer <token>``; 401 if absent or malformed."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "this endpoint needs 'Authorization: Bearer <owner token>'")
    if len(token) > MAX_TOKEN or not _TOKEN_RE.fullmatch(token):
        raise ApiError(401, "the owner token is not valid")
    return token
