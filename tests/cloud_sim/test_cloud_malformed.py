"""Bad input of every kind gets a 4xx with one sentence, never a 500."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

import aiohttp
import pytest
from cloud_testkit import Owned, credential_body, enroll, key_text, register

from cloud_sim.server import RunningCloud
from protocol import crypto

_PHONE = crypto.generate_private_key()
_VALID_KEY = key_text(_PHONE)
_NOT_A_POINT = "p256:02" + "ff" * 32
_JSON = {"Content-Type": "application/json"}

# (method, path, body, headers). Bodies that are dicts are sent as JSON; bytes raw.
# {vid} and {token} are the registered vehicle's id and owner token.
Case = tuple[str, str, Any, dict[str, str] | None]
_AUTH = {"Authorization": "Bearer {token}"}
_PHONES = "/v1/vehicles/{vid}/phones"
_REVOKE = "/v1/vehicles/{vid}/revocations"


def _cred(**change: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "vehicle_id": "{vid}",
        "public_key": _VALID_KEY,
        "timestamp": "{now}",
        "signature": base64.b64encode(bytes(64)).decode(),
    }
    body.update(change)
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()

CASES: list[Case] = [
    # bodies that are not a JSON object
    ("POST", "/v1/vehicles", b"", None),
    ("POST", "/v1/vehicles", b"{", _JSON),
    ("POST", "/v1/vehicles", b"[]", _JSON),
    ("POST", "/v1/vehicles", b"null", _JSON),
    ("POST", "/v1/vehicles", b'"card"', _JSON),
    ("POST", "/v1/vehicles", b"\xff\xfe{}", _JSON),
    ("POST", "/v1/vehicles", b"[" * 8000 + b"]" * 8000, _JSON),
    ("POST", "/v1/vehicles", b'{"card": Infinity}', _JSON),
    ("POST", "/v1/vehicles", b'{"card": ' + b"9" * 5000 + b"}", _JSON),
    ("POST", "/v1/vehicles", b'{"card": NaN}', _JSON),
    ("POST", "/v1/vehicles", b"x" * 100_000, _JSON),
    # vehicle registration
    ("POST", "/v1/vehicles", {}, None),
    ("POST", "/v1/vehicles", {"card": 5}, None),
    ("POST", "/v1/vehicles", {"card": ""}, None),
    ("POST", "/v1/vehicles", {"card": "x" * 5000}, None),
    ("POST", "/v1/vehicles", {"card": "phonekey-card:1:VIN:p256:zz"}, None),
    ("POST", "/v1/vehicles", {"card": "phonekey-card:1:IOQ:" + _VALID_KEY}, None),
    ("POST", "/v1/vehicles", {"card": "phonekey-card:1:ABC:" + _NOT_A_POINT}, None),
    ("POST", "/v1/vehicles", {"card": "phonekey-card:2:ABC:" + _VALID_KEY}, None),
    # enrollment
    ("POST", _PHONES, {"public_key": _VALID_KEY, "role": "driver"}, None),
    ("POST", _PHONES, {"public_key": _VALID_KEY, "role": "driver"}, {"Authorization": "x"}),
    (
        "POST",
        _PHONES,
        {"public_key": _VALID_KEY, "role": "driver"},
        {"Authorization": "Bearer " + "a" * 5000},
    ),
    (
        "POST",
        _PHONES,
        {"public_key": _VALID_KEY, "role": "driver"},
        {"Authorization": "Bearer a/b+c=="},
    ),
    ("POST", "/v1/vehicles/zz/phones", {"public_key": _VALID_KEY, "role": "driver"}, _AUTH),
    ("POST", "/v1/vehicles/" + "00" * 17 + "/phones", {"public_key": _VALID_KEY}, _AUTH),
    ("POST", "/v1/vehicles/%00%01/phones", {"public_key": _VALID_KEY}, _AUTH),
    ("POST", _PHONES, {"role": "driver"}, _AUTH),
    ("POST", _PHONES, {"public_key": _VALID_KEY}, _AUTH),
    ("POST", _PHONES, {"public_key": _VALID_KEY, "role": "OWNER"}, _AUTH),
    ("POST", _PHONES, {"public_key": _VALID_KEY, "role": "admin"}, _AUTH),
    ("POST", _PHONES, {"public_key": _VALID_KEY, "role": 2}, _AUTH),
    ("POST", _PHONES, {"public_key": _VALID_KEY, "role": ["driver"]}, _AUTH),
    ("POST", _PHONES, {"public_key": _NOT_A_POINT, "role": "driver"}, _AUTH),
    ("POST", _PHONES, {"public_key": _VALID_KEY[5:], "role": "driver"}, _AUTH),
    ("POST", _PHONES, {"public_key": "p256:", "role": "driver"}, _AUTH),
    ("POST", _PHONES, {"public_key": "p256:0g", "role": "driver"}, _AUTH),
    ("POST", _PHONES, {"public_key": {"x": 1}, "role": "driver"}, _AUTH),
    # credential requests
    ("POST", "/v1/credentials", {}, None),
    ("POST", "/v1/credentials", _cred(vehicle_id=_DROP), None),
    ("POST", "/v1/credentials", _cred(vehicle_id="00"), None),
    ("POST", "/v1/credentials", _cred(vehicle_id=123), None),
    ("POST", "/v1/credentials", _cred(vehicle_id="ab" * 15 + "\n"), None),
    ("POST", "/v1/credentials", _cred(public_key=_NOT_A_POINT), None),
    ("POST", "/v1/credentials", _cred(timestamp=_DROP), None),
    ("POST", "/v1/credentials", _cred(timestamp="1700000000"), None),
    ("POST", "/v1/credentials", _cred(timestamp=1.5e9), None),
    ("POST", "/v1/credentials", _cred(timestamp=True), None),
    ("POST", "/v1/credentials", _cred(timestamp=-1), None),
    ("POST", "/v1/credentials", _cred(timestamp=2**64), None),
    ("POST", "/v1/credentials", _cred(timestamp=10**400), None),
    ("POST", "/v1/credentials", _cred(signature="!!!"), None),
    ("POST", "/v1/credentials", _cred(signature="AAAA"), None),
    ("POST", "/v1/credentials", _cred(signature=base64.b64encode(bytes(65)).decode()), None),
    (
        "POST",
        "/v1/credentials",
        _cred(signature=base64.urlsafe_b64encode(b"\xff" * 64).decode()),
        None,
    ),
    ("POST", "/v1/credentials", _cred(), None),  # all-zero signature
    ("POST", "/v1/credentials", _cred(signature=base64.b64encode(b"\xff" * 64).decode()), None),
    # revocations
    ("POST", _REVOKE, {"key_id": "00" * 16}, None),
    ("POST", _REVOKE, {}, _AUTH),
    ("POST", _REVOKE, {"key_id": "00"}, _AUTH),
    ("POST", _REVOKE, {"key_id": "zz" * 16}, _AUTH),
    ("POST", _REVOKE, {"key_id": "00" * 16}, _AUTH),
    ("GET", "/v1/revocations/delta", None, None),
    ("GET", "/v1/revocations/delta?from_version=-1", None, None),
    ("GET", "/v1/revocations/delta?from_version=abc", None, None),
    ("GET", "/v1/revocations/delta?from_version=" + "9" * 30, None, None),
    ("GET", "/v1/revocations/delta?from_version=%EF%BC%91", None, None),
    ("GET", "/v1/revocations/delta?from_version=5", None, None),
    # signed time
    ("POST", "/v1/time", {}, None),
    ("POST", "/v1/time", {"nonce": "00" * 15}, None),
    ("POST", "/v1/time", {"nonce": "00" * 17}, None),
    ("POST", "/v1/time", {"nonce": "xy" * 16}, None),
    ("POST", "/v1/time", {"nonce": 0}, None),
    # admin
    ("POST", "/v1/admin/fault", {}, None),
    ("POST", "/v1/admin/fault", {"mode": 1}, None),
    ("POST", "/v1/admin/fault", {"mode": "x" * 1000}, None),
    # routing
    ("GET", "/v1/nothing", None, None),
    ("GET", "/", None, None),
    ("GET", "/v1/credentials", None, None),
    ("PUT", "/v1/issuer", None, None),
    ("DELETE", "/v1/vehicles", None, None),
]


def _fill(value: Any, owned: Owned, now: int) -> Any:
    if isinstance(value, str):
        if value == "{now}":
            return now
        return value.replace("{vid}", owned.vehicle_id).replace("{token}", owned.token)
    if isinstance(value, dict):
        return {k: _fill(v, owned, now) for k, v in value.items()}
    return value


async def test_malformed_requests_get_a_4xx_sentence(cloud: RunningCloud) -> None:
    async with aiohttp.ClientSession() as http:
        owned = await register(http, cloud)
        await enroll(http, cloud, owned, _PHONE)
        now = int(time.time())
        for method, path, body, headers in CASES:
            kwargs: dict[str, Any] = {"headers": _fill(headers, owned, now)}
            if isinstance(body, bytes):
                kwargs["data"] = body
            elif body is not None:
                kwargs["data"] = json.dumps(_fill(body, owned, now))
            url = cloud.url + _fill(path, owned, now)
            async with http.request(method, url, **kwargs) as response:
                raw = await response.read()
                case = (method, path, body if not isinstance(body, bytes) else body[:40])
                assert 400 <= response.status < 500, (case, response.status, raw[:200])
                answer = json.loads(raw)
                assert isinstance(answer["error"], str) and answer["error"], case
                assert "Traceback" not in answer["error"]
        # And after all that the server is fine.
        async with http.get(cloud.url + "/v1/issuer") as response:
            assert response.status == 200


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65])
async def test_credential_signature_sizes(cloud: RunningCloud, size: int) -> None:
    async with aiohttp.ClientSession() as http:
        owned = await register(http, cloud)
        body = credential_body(_PHONE, owned.vehicle_id)
        body["signature"] = base64.b64encode(os.urandom(size)).decode()
        async with http.post(cloud.url + "/v1/credentials", json=body) as response:
            assert 400 <= response.status < 500
