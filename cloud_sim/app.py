"""The credential cloud's HTTP API (aiohttp.web), all under ``/v1``.

JSON in and out; binary objects as standard base64, key ids and vehicle ids
as lowercase hex. Every refusal is a 4xx ``{"error": "<one sentence>"}``; an
unexpected exception is logged and answered with a bare 500 JSON, never a
traceback. ``docs/cloud-api.yaml`` is the contract.

Authority: the cloud never grants more than ``HIGHEST_CLOUD_ROLE`` (driver).
Owners are made at the vehicle with physical access, so a stolen owner token
or issuer key cannot mint an owner (and the vehicle refuses one anyway).
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

from protocol import credentials, crypto
from protocol.card import InvalidCard, VehicleCard
from protocol.cloud_request_auth import MAX_REQUEST_SKEW, verify_credential_request
from protocol.types import Role

from . import inputs
from .db import CloudDB, Enrollment, Vehicle, hash_token, revocation_id_hex
from .faults import FAULTS, FaultMode, FaultState, fault_middleware, signed_b64
from .inputs import ApiError

log = logging.getLogger(__name__)

NOT_BEFORE_SLACK: Final = 60  # back-date credentials so a slow phone clock accepts them now
CLOUD_ROLES: Final = ("driver", "guest")  # what an owner may grant from the cloud
OWNER_REFUSED: Final = (
    "the cloud can grant at most the driver role; "
    "owners are made with physical access to the vehicle"
)


@dataclass
class CloudState:
    db: CloudDB
    issuer: crypto.PrivateKey
    validity: int = credentials.DEFAULT_VALIDITY
    clock: Callable[[], float] = time.time
    # The signed list for one version never changes: sign it once.
    signed_revocations: tuple[int, bytes] | None = field(default=None, repr=False)

    def now(self) -> int:
        return int(self.clock())

    @property
    def issuer_public_text(self) -> str:
        return crypto.public_key_to_text(self.issuer.public_key())


CLOUD: Final = web.AppKey("cloud", CloudState)


def make_app(state: CloudState, faults: FaultState | None = None) -> web.Application:
    app = web.Application(
        middlewares=[_errors_middleware, fault_middleware],
        client_max_size=inputs.MAX_BODY,
    )
    app[CLOUD] = state
    app[FAULTS] = faults or FaultState()
    app.router.add_get("/v1/issuer", _get_issuer)
    app.router.add_get("/v1/issuer/rotations", _get_issuer_rotations)
    app.router.add_post("/v1/vehicles", _post_vehicle)
    app.router.add_post("/v1/vehicles/{vehicle_id}/phones", _post_phone)
    app.router.add_post("/v1/vehicles/{vehicle_id}/revocations", _post_revocation)
    app.router.add_post("/v1/credentials", _post_credential)
    app.router.add_get("/v1/revocations", _get_revocations)
    app.router.add_get("/v1/revocations/delta", _get_revocation_delta)
    app.router.add_post("/v1/time", _post_time)
    app.router.add_get("/v1/admin/fault", _get_fault)
    app.router.add_post("/v1/admin/fault", _post_fault)
    return app


# --- middleware -----------------------------------------------------------------------
_HTTP_MESSAGES: Final = {
    404: "no such endpoint; see docs/cloud-api.yaml",
    405: "this endpoint does not accept that HTTP method",
    413: f"the request body is larger than {inputs.MAX_BODY} bytes",
}


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.message, **exc.extra)
    except web.HTTPException as exc:  # aiohttp's own: unknown route, bad method, too large
        if exc.status < 400:
            raise
        return _error(exc.status, _HTTP_MESSAGES.get(exc.status, exc.reason))
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _error(500, "internal error")


# --- authentication ---------------------------------------------------------------------
def is_loopback(remote: str | None) -> bool:
    """True for a peer address on this host; admin endpoints trust nothing else.

    The peer address comes from the socket, never from a header, so a
    forwarded-for header cannot fake it.
    """
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _require_loopback(request: web.Request) -> None:
    if not is_loopback(request.remote):
        raise ApiError(403, "admin endpoints answer only to clients on the loopback interface")


def _owner_of(request: web.Request) -> tuple[CloudState, str]:
    """Authenticate the owner token and check it is for the vehicle in the path."""
    state = request.app[CLOUD]
    token = inputs.bearer_token(request)
    # Looked up by hash: the token itself is never stored or compared.
    owned = state.db.vehicle_for_token(hash_token(token))
    if owned is None:
        raise ApiError(401, "the owner token is not valid")
    vehicle_id = inputs.vehicle_id(request.match_info["vehicle_id"])
    if owned != vehicle_id:
        raise ApiError(403, "this owner token belongs to another vehicle")
    return state, vehicle_id


# --- handlers ---------------------------------------------------------------------------
async def _get_issuer(request: web.Request) -> web.Response:
    state = request.app[CLOUD]
    public = state.issuer.public_key()
    return web.json_response(
        {"public_key": crypto.public_key_to_text(public), "key_id": crypto.key_id(public).hex()}
    )


async def _get_issuer_rotations(request: web.Request) -> web.Response:
    """Every issuer rotation statement, oldest first: phones verify each against
    the key they pinned and carry it to vehicles (``IssuerUpdate``)."""
    state = request.app[CLOUD]
    rotations = [signed_b64(request, data) for data in state.db.issuer_rotations()]
    return web.json_response({"rotations": rotations})


async def _post_vehicle(request: web.Request) -> web.Response:
    _require_loopback(request)
    state = request.app[CLOUD]
    body = await inputs.json_object(request)
    try:
        card = VehicleCard.from_text(inputs.text_field(body, "card"))
    except InvalidCard as exc:
        raise inputs.bad_request(f"the vehicle card is invalid: {exc}") from None
    vehicle_id = card.vehicle_id.hex()
    # Hex, not URL-safe base64: a token that starts with "-" reads as an option
    # to `phonekey cloud enroll --token TOKEN` (1 in 64 base64 tokens did).
    token = secrets.token_hex(32)
    vehicle = Vehicle(vehicle_id, card.vin, card.to_text())
    if not state.db.add_vehicle(vehicle, hash_token(token), state.now()):
        raise ApiError(409, "this vehicle is already registered")
    return web.json_response(
        {"vehicle_id": vehicle_id, "vin": card.vin, "owner_token": token}, status=201
    )


async def _post_phone(request: web.Request) -> web.Response:
    state, vehicle_id = _owner_of(request)
    body = await inputs.json_object(request)
    holder = inputs.public_key(inputs.text_field(body, "public_key"))
    role = inputs.text_field(body, "role", max_len=16)
    if role == "owner":
        raise ApiError(403, OWNER_REFUSED)
    if role not in CLOUD_ROLES:
        raise inputs.bad_request("the field 'role' must be 'driver' or 'guest'")
    key_id = crypto.key_id(holder).hex()
    existing = state.db.enrollment(vehicle_id, key_id)
    # Revocation is per vehicle: a key another owner revoked on their vehicle
    # may still be enrolled here.
    if (existing is not None and existing.revoked) or state.db.is_revoked(vehicle_id, key_id):
        raise ApiError(
            409, "this key was revoked for this vehicle and cannot be enrolled again; use a new key"
        )
    if existing is not None:
        if existing.role != role:
            raise ApiError(
                409,
                f"this key is already enrolled as {existing.role}; "
                "revoke it and enroll a new key to change its role",
            )
        # Same key, same role: a retried request, answered as it was the first time.
        return web.json_response({"key_id": key_id, "role": role}, status=200)
    enrollment = Enrollment(
        vehicle_id, key_id, crypto.public_bytes(holder).hex(), role, state.now(), revoked=False
    )
    state.db.enroll(enrollment)
    return web.json_response({"key_id": key_id, "role": role}, status=201)


async def _post_credential(request: web.Request) -> web.Response:
    state = request.app[CLOUD]
    body = await inputs.json_object(request)
    vehicle_id = inputs.vehicle_id(inputs.text_field(body, "vehicle_id", max_len=64))
    holder = inputs.public_key(inputs.text_field(body, "public_key"))
    timestamp = inputs.int_field(body, "timestamp", 0, 2**63 - 1)
    signature = inputs.base64_bytes(
        inputs.text_field(body, "signature", max_len=128), crypto.SIGNATURE_LEN, "signature"
    )
    now = state.now()
    if abs(timestamp - now) > MAX_REQUEST_SKEW:
        raise ApiError(
            401,
            f"the request timestamp is more than {MAX_REQUEST_SKEW} s from the cloud's clock",
            server_time=now,
        )
    try:
        verify_credential_request(holder, bytes.fromhex(vehicle_id), timestamp, signature)
    except crypto.InvalidSignature:
        raise ApiError(401, "the request signature does not verify with this public key") from None
    if state.db.vehicle(vehicle_id) is None:
        raise ApiError(404, "no vehicle with this id is registered")
    key_id = crypto.key_id(holder).hex()
    enrollment = state.db.enrollment(vehicle_id, key_id)
    if enrollment is None:
        raise ApiError(403, "this key is not enrolled for this vehicle")
    if enrollment.revoked or state.db.is_revoked(vehicle_id, key_id):
        raise ApiError(403, "this key has been revoked")
    role = Role.from_name(enrollment.role)
    if role.value < credentials.HIGHEST_CLOUD_ROLE.value:  # the schema forbids it; belt and braces
        raise ApiError(403, OWNER_REFUSED)
    not_before, not_after = now - NOT_BEFORE_SLACK, now + state.validity
    serial = state.db.record_credential(vehicle_id, key_id, enrollment.role, not_before, not_after)
    credential = credentials.issue_credential(
        state.issuer,
        vehicle_id=bytes.fromhex(vehicle_id),
        holder_key=holder,
        role=role,
        not_before=not_before,
        not_after=not_after,
        serial=serial,
    )
    return web.json_response(
        {
            "credential": signed_b64(request, credential.to_bytes()),
            "not_before": not_before,
            "not_after": not_after,
            "serial": serial,
            "role": enrollment.role,
        }
    )


async def _post_revocation(request: web.Request) -> web.Response:
    state, vehicle_id = _owner_of(request)
    body = await inputs.json_object(request)
    key_id = inputs.hex_bytes(
        inputs.text_field(body, "key_id", max_len=64), crypto.KEY_ID_LEN, "the key id"
    ).hex()
    if state.db.enrollment(vehicle_id, key_id) is None:
        raise ApiError(404, "no phone with this key id is enrolled for this vehicle")
    # The owner token speaks for this vehicle only, and so does the entry: the
    # list names revocation_id(vehicle_id, key_id), never the raw key id.
    version = state.db.revoke(vehicle_id, key_id, state.now())
    return web.json_response(
        {"version": version, "revocation_id": revocation_id_hex(vehicle_id, key_id)}
    )


async def _get_revocations(request: web.Request) -> web.Response:
    state = request.app[CLOUD]
    current = state.db.revocations()
    if state.signed_revocations is None or state.signed_revocations[0] != current.version:
        signed = credentials.issue_revocation_list(
            state.issuer,
            version=current.version,
            issued_at=current.issued_at,
            revoked=current.revoked,
        )
        state.signed_revocations = (current.version, signed.to_bytes())
    version, signed_bytes = state.signed_revocations
    return web.json_response(
        {"version": version, "revocation_list": signed_b64(request, signed_bytes)}
    )


async def _get_revocation_delta(request: web.Request) -> web.Response:
    """What a phone carries to a vehicle that reported ``from_version``.

    At most ``MAX_DELTA_ENTRIES`` versions at a time (one BLE message); a
    vehicle further behind gets the rest on later visits.
    """
    state = request.app[CLOUD]
    text = request.query.get("from_version", "")
    if not (text.isascii() and text.isdigit() and len(text) <= 19):
        raise inputs.bad_request("the query parameter 'from_version' must be an integer >= 0")
    from_version = int(text)
    current = state.db.revocation_version()
    if from_version > current:
        raise ApiError(409, f"the cloud's revocation list is only at version {current}")
    to_version = min(current, from_version + credentials.MAX_DELTA_ENTRIES)
    result: dict[str, Any] = {
        "from_version": from_version,
        "to_version": to_version,
        "current_version": current,
    }
    if to_version == from_version:
        return web.json_response({**result, "delta": None})
    delta = credentials.issue_revocation_delta(
        state.issuer,
        from_version=from_version,
        to_version=to_version,
        added=state.db.revoked_between(from_version, to_version),
    )
    return web.json_response({**result, "delta": signed_b64(request, delta.to_bytes())})


async def _post_time(request: web.Request) -> web.Response:
    state = request.app[CLOUD]
    body = await inputs.json_object(request)
    nonce = inputs.hex_bytes(
        inputs.text_field(body, "nonce", max_len=64),
        credentials.SIGNED_TIME_NONCE_LEN,
        "the nonce",
    )
    now = state.now()
    signed = credentials.issue_signed_time(state.issuer, nonce=nonce, time=now)
    return web.json_response({"signed_time": signed_b64(request, signed.to_bytes()), "time": now})


async def _get_fault(request: web.Request) -> web.Response:
    _require_loopback(request)
    return web.json_response({"mode": str(request.app[FAULTS].mode)})


async def _post_fault(request: web.Request) -> web.Response:
    _require_loopback(request)
    body = await inputs.json_object(request)
    try:
        mode = FaultMode.parse(inputs.text_field(body, "mode", max_len=64))
    except ValueError as exc:
        raise inputs.bad_request(str(exc)) from None
    request.app[FAULTS].mode = mode
    log.info("fault mode is now %s", mode)
    return web.json_response({"mode": str(mode)})
