"""Every fault mode, switched while the server runs, and back to none."""

from __future__ import annotations

import asyncio
import json
import os
import time

import aiohttp
import pytest
from aiohttp import web
from cloud_testkit import b64, call, enroll, key_id_hex, register, request_credential

from cloud_sim import faults
from cloud_sim.app import is_loopback
from cloud_sim.faults import FaultKind, FaultMode, corrupt_signature
from cloud_sim.server import RunningCloud
from protocol import credentials, crypto

Http = aiohttp.ClientSession


async def _set_fault(http: Http, cloud: RunningCloud, mode: str) -> tuple[int, dict[str, str]]:
    return await call(http, cloud, "POST", "/v1/admin/fault", {"mode": mode})


async def _issuer_ok(http: Http, cloud: RunningCloud) -> None:
    status, answer = await call(http, cloud, "GET", "/v1/issuer")
    assert status == 200 and answer["public_key"] == cloud.issuer_public_text


async def test_switching_modes_over_http(cloud: RunningCloud, http: Http) -> None:
    assert await call(http, cloud, "GET", "/v1/admin/fault") == (200, {"mode": "none"})
    assert await _set_fault(http, cloud, "slow:1.5") == (200, {"mode": "slow:1.5"})
    assert cloud.fault_mode == FaultMode(FaultKind.SLOW, 1.5)
    for bad in (
        "nope",
        "slow",
        "slow:",
        "slow:0",
        "slow:-1",
        "slow:nan",
        "slow:inf",
        "slow:601",
        "none:1",
        "",
        "HTTP-500",
    ):
        status, answer = await _set_fault(http, cloud, bad)
        assert status == 400 and answer["error"], bad
    assert (await call(http, cloud, "GET", "/v1/admin/fault"))[1] == {"mode": "slow:1.5"}
    with pytest.raises(ValueError):
        cloud.set_fault("teapot")


async def test_http_500(cloud: RunningCloud, http: Http) -> None:
    await _set_fault(http, cloud, "http-500")
    status, answer = await call(http, cloud, "GET", "/v1/issuer")
    assert status == 500 and "injected" in answer["error"]
    # Admin endpoints are exempt, so the fault can be switched off.
    assert (await call(http, cloud, "GET", "/v1/admin/fault"))[0] == 200
    await _set_fault(http, cloud, "none")
    await _issuer_ok(http, cloud)


async def test_blackhole_holds_without_blocking_others(cloud: RunningCloud, http: Http) -> None:
    cloud.set_fault("blackhole")
    held = asyncio.ensure_future(http.get(cloud.url + "/v1/issuer"))
    # Meanwhile the server answers other requests (admin is exempt) ...
    assert (await call(http, cloud, "GET", "/v1/admin/fault"))[1] == {"mode": "blackhole"}
    assert not held.done()  # ... and the held one is still waiting for an answer
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
    # A client that gives up sees its own timeout, never an answer (no upper
    # bound on when: the charter leaves speed to benchmarks).
    started = time.monotonic()
    impatient = aiohttp.ClientTimeout(total=0.5)
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(cloud.url + "/v1/issuer", timeout=impatient) as response:
            await response.read()
    assert time.monotonic() - started > 0.45  # it did wait; waiting longer is fine
    await _set_fault(http, cloud, "none")
    await _issuer_ok(http, cloud)


async def test_blackhole_does_not_delay_shutdown(
    cloud: RunningCloud, http: Http, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Released by the shutdown signal (faults.stopping), not left for
    # aiohttp's shutdown timeout to cancel: the held request is aborted by the
    # fault middleware itself, which a cancelled handler never reaches.
    aborted: list[str] = []
    real_abort = faults._abort

    def spy_abort(request: web.Request) -> web.StreamResponse:
        aborted.append(request.path)
        return real_abort(request)

    monkeypatch.setattr(faults, "_abort", spy_abort)
    cloud.set_fault("blackhole")
    held = asyncio.ensure_future(http.get(cloud.url + "/v1/issuer"))
    await asyncio.sleep(0.2)
    assert not held.done() and aborted == []
    await cloud.close()
    assert aborted == ["/v1/issuer"]
    # The held client is dropped without an answer.
    with pytest.raises(aiohttp.ClientConnectionError):
        await held


async def test_slow_answers_correctly_late(
    cloud: RunningCloud, http: Http, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud.set_fault("slow:0.3")
    started = time.monotonic()
    await _issuer_ok(http, cloud)
    assert time.monotonic() - started >= 0.3  # the real wait: it did wait
    # Which delay each request was held for, without timing anything.
    holds: list[float] = []
    real_hold = faults._hold

    async def spy_hold(state: faults.FaultState, seconds: float) -> None:
        holds.append(seconds)
        await real_hold(state, seconds)

    monkeypatch.setattr(faults, "_hold", spy_hold)
    await _issuer_ok(http, cloud)
    assert holds == [0.3]
    cloud.set_fault("none")
    await _issuer_ok(http, cloud)
    assert holds == [0.3]  # not held at all once the fault is off


async def test_reset_drops_the_connection(cloud: RunningCloud, http: Http) -> None:
    cloud.set_fault("reset")
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(http, cloud, "GET", "/v1/issuer")
    # On the wire: a TCP reset, not an orderly close.
    host, port = cloud.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /v1/issuer HTTP/1.1\r\nHost: cloud\r\n\r\n")
    with pytest.raises(ConnectionResetError):
        await reader.read()
    writer.close()
    cloud.set_fault("none")
    await _issuer_ok(http, cloud)


async def test_garbage_is_not_json(cloud: RunningCloud, http: Http) -> None:
    cloud.set_fault("garbage")
    async with http.get(cloud.url + "/v1/issuer") as response:
        assert response.status == 200
        body = await response.read()
    with pytest.raises(ValueError):
        json.loads(body)
    cloud.set_fault("none")
    await _issuer_ok(http, cloud)


async def test_bad_signature_objects_fail_verification(cloud: RunningCloud, http: Http) -> None:
    owned = await register(http, cloud)
    phone = crypto.generate_private_key()
    await enroll(http, cloud, owned, phone)
    revoked = crypto.generate_private_key()
    await enroll(http, cloud, owned, revoked)
    await call(
        http,
        cloud,
        "POST",
        f"/v1/vehicles/{owned.vehicle_id}/revocations",
        {"key_id": key_id_hex(revoked)},
        owned.auth,
    )
    cloud.set_fault("bad-signature")

    status, answer = await request_credential(http, cloud, phone, owned.vehicle_id)
    assert status == 200
    credential = credentials.Credential.from_bytes(b64(answer["credential"]))
    with pytest.raises(credentials.CredentialSignatureInvalid):
        credentials.verify_credential_at_time(
            credential,
            issuers=cloud.issuers,
            vehicle_id=owned.card.vehicle_id,
            now=int(time.time()),
        )

    _, answer = await call(http, cloud, "GET", "/v1/revocations")
    listed = credentials.RevocationList.from_bytes(b64(answer["revocation_list"]))
    with pytest.raises(credentials.CredentialSignatureInvalid):
        credentials.verify_revocation_list(listed, issuers=cloud.issuers)

    _, answer = await call(http, cloud, "GET", "/v1/revocations/delta?from_version=0")
    delta = credentials.RevocationDelta.from_bytes(b64(answer["delta"]))
    with pytest.raises(credentials.CredentialSignatureInvalid):
        credentials.verify_revocation_delta(delta, issuers=cloud.issuers)

    nonce = os.urandom(16)
    _, answer = await call(http, cloud, "POST", "/v1/time", {"nonce": nonce.hex()})
    signed = credentials.SignedTime.from_bytes(b64(answer["signed_time"]))
    with pytest.raises(credentials.CredentialSignatureInvalid):
        credentials.verify_signed_time(signed, issuers=cloud.issuers, expected_nonce=nonce)

    # Back to none: the cached revocation list is served intact again.
    cloud.set_fault("none")
    _, answer = await call(http, cloud, "GET", "/v1/revocations")
    listed = credentials.RevocationList.from_bytes(b64(answer["revocation_list"]))
    credentials.verify_revocation_list(listed, issuers=cloud.issuers)


def test_corrupt_signature_keeps_length() -> None:
    data = bytes(range(100))
    corrupted = corrupt_signature(data)
    assert len(corrupted) == len(data) and corrupted[:-1] == data[:-1]
    assert corrupted[-1] != data[-1]


def test_admin_trusts_only_loopback_peers() -> None:
    for local in ("127.0.0.1", "127.5.6.7", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(local), local
    for remote in (
        None,
        "",
        "10.0.0.1",
        "192.168.1.2",
        "::ffff:10.0.0.1",
        "fe80::1%eth0",
        "localhost",
        "not an address",
    ):
        assert not is_loopback(remote), remote
