"""Reading and checking the cloud's answers, for ``cloud_client.CloudClient``.

Two kinds of failure, kept apart because the phone reports them apart:

- a field that is missing, mistyped or not decodable is an *invalid response*
  (``CloudUnavailable``, status "garbage"): a broken cloud, not a hostile one;
- a signed object that decodes but fails verification against the issuer
  keys *the phone* pinned, or an answer whose plain fields disagree with the
  signed object they travel with, is a *lie* (``CloudLied``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, Final, TypeVar

from protocol import credentials

from .cloud_http import MAX_ANSWER, invalid_response
from .errors import CloudLied
from .trust import VehicleTrust, check_credential, utc_text

_T = TypeVar("_T")
MAX_DELTAS_IN_LIST: Final = 1024  # far more than one sync needs; bounds a hostile answer


# --- signed objects ------------------------------------------------------------------
def check_issued_credential(
    credential: credentials.Credential,
    data: dict[str, Any],
    trust: VehicleTrust,
    holder_key_id: bytes,
    now: int,
) -> None:
    """The credential is signed by the pinned issuer for this vehicle and
    holder, grants at most driver, is valid ``now``, and the answer's plain
    fields say the same as the signed credential."""
    try:
        check_credential(credential, trust, holder_key_id, now=now)
    except credentials.CredentialWrongVehicle:
        raise CloudLied("credential for another vehicle") from None
    except credentials.CredentialWrongHolder:
        raise CloudLied("credential for another phone's key") from None
    except credentials.CredentialRoleNotAllowed as exc:
        raise CloudLied(f"credential with a role a cloud may not grant ({exc})") from None
    except (credentials.CredentialExpired, credentials.CredentialNotYetValid):
        window = f"{utc_text(credential.not_before)} to {utc_text(credential.not_after)}"
        raise CloudLied(f"credential not valid now (valid {window})") from None
    except credentials.CredentialError as exc:
        raise lie("credential", exc) from None
    claimed = (
        text_field(data, "role"),
        int_field(data, "serial"),
        int_field(data, "not_before"),
        int_field(data, "not_after"),
    )
    signed = (
        credential.role.name.lower(),
        credential.serial,
        credential.not_before,
        credential.not_after,
    )
    if claimed != signed:
        raise CloudLied("the answer's fields disagree with its signed credential")


def delta_list(
    data: dict[str, Any], since: int, issuers: credentials.IssuerKeys
) -> list[credentials.RevocationDelta]:
    """The verified deltas of a ``/v1/revocations/deltas`` answer, which must
    chain from version ``since`` onwards."""
    items = data.get("deltas")
    if not isinstance(items, list) or len(items) > MAX_DELTAS_IN_LIST:
        raise invalid_response("'deltas' is not a list")
    int_field(data, "version")
    deltas: list[credentials.RevocationDelta] = []
    version = since
    for item in items:
        raw = decode_base64(item, "deltas", MAX_ANSWER)
        delta = parse(credentials.RevocationDelta.from_bytes, raw, "revocation delta")
        verify(credentials.verify_revocation_delta, delta, issuers, "revocation delta")
        if delta.from_version != version:
            raise CloudLied(f"the deltas do not chain from version {since}")
        deltas.append(delta)
        version = delta.to_version
    return deltas


def verify(
    check: Callable[..., None], obj: object, issuers: credentials.IssuerKeys, what: str
) -> None:
    """``check(obj, issuers=issuers)``, its refusal turned into a ``CloudLied``."""
    try:
        check(obj, issuers=issuers)
    except credentials.CredentialError as exc:
        raise lie(what, exc) from None


def lie(what: str, exc: credentials.CredentialError) -> CloudLied:
    """The ``CloudLied`` for the cloud's ``what`` failing verification with ``exc``."""
    if isinstance(exc, credentials.CredentialSignatureInvalid):
        return CloudLied(f"bad signature on the {what}", "bad-signature")
    if isinstance(exc, credentials.UnknownIssuer):
        return CloudLied(
            f"{what} signed by an issuer key this phone does not trust", "bad-signature"
        )
    return CloudLied(f"{what} refused: {exc}")


# --- fields --------------------------------------------------------------------------
def text_field(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= 1024:
        raise invalid_response(f"no text field {name!r}")
    return value


def int_field(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
        raise invalid_response(f"no integer field {name!r}")
    return value


def base64_field(data: dict[str, Any], name: str, limit: int = MAX_ANSWER) -> bytes:
    return decode_base64(data.get(name), name, limit)


def decode_base64(value: object, name: str, limit: int) -> bytes:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise invalid_response(f"no base64 field {name!r}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_response(f"{name!r} is not base64") from None


def parse(parser: Callable[[bytes], _T], raw: bytes, what: str) -> _T:
    """``parser(raw)``; bytes that do not parse are an invalid response, not a lie."""
    try:
        return parser(raw)
    except credentials.CredentialMalformed as exc:
        raise invalid_response(f"malformed {what}: {exc}") from None
