"""The phone's cloud client against a real cloud on a loopback port: every
answer verified, every fault mode mapped to the right typed error within the
deadline, and hand-made clouds whose answers lie."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest
from aiohttp import web
from phone_cloud_testkit import Registered, fake_cloud, make_phone, register, requests_sent

from cloud_sim.server import RunningCloud
from phone_client import (
    CircuitBreaker,
    CircuitOpen,
    CloudLied,
    CloudRefused,
    CloudUnavailable,
    KeyStore,
    NoTrustedIssuer,
)
from phone_client.cloud_client import CloudClient
from protocol import Role, crypto
from protocol.card import VehicleCard
from protocol.credentials import (
    issue_credential,
    issue_revocation_delta,
    issue_signed_time,
    revocation_id,
)

DEADLINE = 0.4  # seconds per call in these tests


@pytest.fixture
async def owned(cloud: RunningCloud) -> Registered:
    return await register(cloud)


@pytest.fixture
async def phone(owned: Registered, tmp_path: Path) -> KeyStore:
    keystore = make_phone(
        tmp_path / "phone",
        owned.card,
        issuer=owned.cloud.issuer_public_key,
        cloud_url=owned.cloud.url,
    )
    await owned.enroll(keystore.public_key())
    return keystore


def client(url: str, **kwargs: object) -> CloudClient:
    return CloudClient(url, call_timeout=DEADLINE, **kwargs)  # type: ignore[arg-type]


async def test_a_credential_is_issued_and_verified(
    owned: Registered, phone: KeyStore, cloud: RunningCloud
) -> None:
    async with client(cloud.url) as cc:
        credential = await cc.request_credential(phone, owned.card)
        assert cc.status == "up" and cc.last_error is None
    assert credential.vehicle_id == owned.card.vehicle_id
    assert credential.holder_key_id == phone.key_id()
    assert credential.role is Role.DRIVER
    assert credential.not_before <= time.time() <= credential.not_after


async def test_issuer_revocations_deltas_and_signed_time(
    owned: Registered, cloud: RunningCloud
) -> None:
    others = [crypto.generate_private_key().public_key() for _ in range(3)]
    for key in others:
        await owned.enroll(key, "guest")
    for key in others[:2]:
        await owned.revoke(key)
    async with client(cloud.url) as cc:
        info = await cc.issuer()
        assert info.public_key == cloud.issuer_public_key
        listed = await cc.revocations(cloud.issuers)
        assert listed.version == 2
        vehicle_id = owned.card.vehicle_id
        assert listed.is_revoked(revocation_id(vehicle_id, crypto.key_id(others[0])))
        assert not listed.is_revoked(crypto.key_id(others[0]))  # entries are per vehicle
        deltas = await cc.revocation_deltas(0, cloud.issuers)
        assert deltas is not None
        assert [(d.from_version, d.to_version) for d in deltas] == [(0, 2)]
        assert set(deltas[0].added) == {
            revocation_id(vehicle_id, crypto.key_id(k)) for k in others[:2]
        }
        assert await cc.revocation_deltas(2, cloud.issuers) == []  # up to date
        assert await cc.revocation_deltas(7, cloud.issuers) == []  # ahead of the cloud (409)
        nonce = os.urandom(16)
        signed = await cc.signed_time(nonce, cloud.issuers)
        assert signed.nonce == nonce and abs(signed.time - time.time()) < 5


@pytest.mark.parametrize(
    ("mode", "kind", "reason", "status"),
    [
        ("http-500", CloudUnavailable, "HTTP 500", "http-500"),
        ("blackhole", CloudUnavailable, f"no answer within {DEADLINE:g} s", "blackhole"),
        ("slow:3", CloudUnavailable, f"no answer within {DEADLINE:g} s", "blackhole"),
        ("reset", CloudUnavailable, "connection reset", "reset"),
        ("garbage", CloudUnavailable, "invalid response (not JSON)", "garbage"),
        ("bad-signature", CloudLied, "bad signature on the credential", "bad-signature"),
    ],
)
async def test_each_fault_mode_is_a_typed_error_within_the_deadline(
    owned: Registered,
    phone: KeyStore,
    cloud: RunningCloud,
    mode: str,
    kind: type[CloudUnavailable],
    reason: str,
    status: str,
) -> None:
    cloud.set_fault(mode)
    async with client(cloud.url) as cc:
        with pytest.raises(kind) as info:
            await cc.request_credential(phone, owned.card)
        assert type(info.value) is kind  # a lie is not reported as an outage, nor the reverse
        # The deadline is hard, whatever the cloud does: a held or slow (3 s)
        # cloud ends in the deadline's own error, naming this call's deadline;
        # the others end before it (else they would name it too). No clock.
        assert (info.value.reason, info.value.status) == (reason, status)
        assert cc.status == status and cc.last_error is info.value


async def test_a_slow_cloud_within_the_deadline_is_fine(
    owned: Registered, phone: KeyStore, cloud: RunningCloud
) -> None:
    cloud.set_fault("slow:0.1")
    async with client(cloud.url) as cc:
        await cc.request_credential(phone, owned.card)


@pytest.mark.parametrize("mode", ["http-500", "blackhole", "reset", "garbage", "bad-signature"])
async def test_every_operation_maps_faults(cloud: RunningCloud, mode: str) -> None:
    owned = await register(cloud)
    other = crypto.generate_private_key().public_key()
    await owned.enroll(other, "guest")
    await owned.revoke(other)
    cloud.set_fault(mode)
    expected = CloudLied if mode == "bad-signature" else CloudUnavailable
    async with client(cloud.url) as cc:
        for operation in (
            cc.revocations(cloud.issuers),
            cc.revocation_deltas(0, cloud.issuers),
            cc.signed_time(os.urandom(16), cloud.issuers),
        ):
            with pytest.raises(expected) as info:
                await operation
            assert info.value.status == ("bad-signature" if mode == "bad-signature" else cc.status)


async def test_a_cloud_that_is_down_is_unreachable(
    owned: Registered, phone: KeyStore, cloud: RunningCloud
) -> None:
    url = cloud.url
    await cloud.close()
    async with client(url) as cc:
        with pytest.raises(CloudUnavailable) as info:
            await cc.request_credential(phone, owned.card)
    assert info.value.status == "unreachable"
    assert info.value.reason.startswith("cannot connect")


async def test_a_definite_no_is_a_refusal_not_an_outage(
    owned: Registered, cloud: RunningCloud, tmp_path: Path
) -> None:
    stranger = make_phone(tmp_path / "stranger", owned.card, issuer=cloud.issuer_public_key)
    breaker = CircuitBreaker(threshold=1)
    async with client(cloud.url, breaker=breaker) as cc:
        with pytest.raises(CloudRefused) as info:
            await cc.request_credential(stranger, owned.card)
    assert info.value.http_status == 403 and info.value.status == "refused"
    assert "not enrolled" in str(info.value)
    assert breaker.allow()  # the cloud is up: not a failure


async def test_a_phone_without_a_pinned_issuer_asks_nothing(
    owned: Registered, cloud: RunningCloud, tmp_path: Path
) -> None:
    keystore = make_phone(tmp_path / "p", owned.card)
    cloud.set_fault("blackhole")  # would take the whole deadline if asked
    async with client(cloud.url) as cc:
        with requests_sent() as sent:
            with pytest.raises(NoTrustedIssuer):
                await cc.request_credential(keystore, owned.card)
        assert sent == [] and cc.status == "none"  # not asked at all


async def test_a_cloud_that_swapped_its_issuer_key_is_caught(
    owned: Registered, cloud: RunningCloud, tmp_path: Path
) -> None:
    # The phone pinned another key at setup; whatever /v1/issuer says now is irrelevant.
    pinned = crypto.generate_private_key().public_key()
    keystore = make_phone(tmp_path / "p", owned.card, issuer=pinned)
    await owned.enroll(keystore.public_key())
    async with client(cloud.url) as cc:
        assert (await cc.issuer()).public_key == cloud.issuer_public_key
        with pytest.raises(CloudLied, match="issuer key this phone does not trust") as info:
            await cc.request_credential(keystore, owned.card)
    assert info.value.status == "bad-signature"


async def test_the_breaker_stops_calls_and_lets_a_trial_through(
    owned: Registered, phone: KeyStore, cloud: RunningCloud
) -> None:
    clock = [1000.0]
    breaker = CircuitBreaker(threshold=3, base_backoff=5, clock=lambda: clock[0])
    cloud.set_fault("http-500")
    async with client(cloud.url, breaker=breaker) as cc:
        for _ in range(3):
            with pytest.raises(CloudUnavailable, match="HTTP 500"):
                await cc.request_credential(phone, owned.card)
        cloud.set_fault("blackhole")  # would cost a whole deadline if it were called
        with requests_sent() as sent:
            with pytest.raises(CircuitOpen) as info:
                await cc.request_credential(phone, owned.card)
        assert sent == []  # refused locally: no request went out
        assert info.value.status == "circuit-open" and "next try in 5 s" in info.value.reason
        cloud.set_fault("none")
        clock[0] += 5  # backoff over: one trial goes out, succeeds, closes the breaker
        await cc.request_credential(phone, owned.card)
        assert breaker.mode == "closed"


# --- clouds that lie -------------------------------------------------------------------------
ISSUER = crypto.generate_private_key()
ISSUERS = {crypto.key_id(ISSUER.public_key()): ISSUER.public_key()}


def lying_credential_handler(lie: str):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        holder = crypto.public_key_from_text(body["public_key"])
        vehicle_id = bytes.fromhex(body["vehicle_id"])
        now = int(time.time())
        role = Role.DRIVER
        if lie == "wrong-vehicle":
            vehicle_id = os.urandom(16)
        elif lie == "wrong-holder":
            holder = crypto.generate_private_key().public_key()
        elif lie == "owner-role":
            role = Role.OWNER
        not_after = now - 3600 if lie == "expired" else now + 3600
        credential = issue_credential(
            ISSUER,
            vehicle_id=vehicle_id,
            holder_key=holder,
            role=role,
            not_before=now - 7200,
            not_after=not_after,
            serial=9,
        )
        answer = {
            "credential": base64.b64encode(credential.to_bytes()).decode(),
            "not_before": credential.not_before,
            "not_after": credential.not_after + (1 if lie == "fields" else 0),
            "serial": 9,
            "role": "owner" if role is Role.OWNER else "driver",
        }
        if lie == "truncated":
            answer["credential"] = answer["credential"][:40]
        return web.json_response(answer)

    return handler


@pytest.mark.parametrize(
    ("lie", "match"),
    [
        ("wrong-vehicle", "another vehicle"),
        ("wrong-holder", "another phone's key"),
        ("owner-role", "role a cloud may not grant"),
        ("expired", "not valid now"),
        ("fields", "disagree with its signed credential"),
    ],
)
async def test_well_signed_lies_are_caught(tmp_path: Path, lie: str, match: str) -> None:
    card = VehicleCard("FAKECAR1", crypto.generate_private_key().public_key())
    keystore = make_phone(tmp_path, card, issuer=ISSUER.public_key())
    routes = {("POST", "/v1/credentials"): lying_credential_handler(lie)}
    async with fake_cloud(routes) as url, client(url) as cc:
        with pytest.raises(CloudLied, match=match) as info:
            await cc.request_credential(keystore, card)
    assert info.value.status == "lying"


async def test_a_malformed_signed_object_is_garbage_not_a_lie(tmp_path: Path) -> None:
    card = VehicleCard("FAKECAR1", crypto.generate_private_key().public_key())
    keystore = make_phone(tmp_path, card, issuer=ISSUER.public_key())
    routes = {("POST", "/v1/credentials"): lying_credential_handler("truncated")}
    async with fake_cloud(routes) as url, client(url) as cc:
        with pytest.raises(CloudUnavailable, match="malformed credential") as info:
            await cc.request_credential(keystore, card)
    assert type(info.value) is CloudUnavailable and info.value.status == "garbage"


async def test_signed_time_for_another_nonce_is_a_lie() -> None:
    async def handler(request: web.Request) -> web.Response:
        signed = issue_signed_time(ISSUER, nonce=os.urandom(16), time=int(time.time()))
        return web.json_response(
            {"signed_time": base64.b64encode(signed.to_bytes()).decode(), "time": signed.time}
        )

    async with fake_cloud({("POST", "/v1/time"): handler}) as url, client(url) as cc:
        with pytest.raises(CloudLied, match="another nonce"):
            await cc.signed_time(os.urandom(16), ISSUERS)


async def test_deltas_from_a_list_endpoint_and_without_any() -> None:
    """The planned ``GET /v1/revocations/deltas?since=N`` list is preferred; a
    cloud serving no deltas at all answers None (the phone skips the handoff)."""
    one = issue_revocation_delta(ISSUER, from_version=3, to_version=4, added=[b"a" * 16])
    two = issue_revocation_delta(ISSUER, from_version=4, to_version=6, added=[b"b" * 16])

    async def deltas(request: web.Request) -> web.Response:
        assert request.query["since"] == "3"
        items = [base64.b64encode(d.to_bytes()).decode() for d in (one, two)]
        return web.json_response({"version": 6, "deltas": items})

    async with fake_cloud({("GET", "/v1/revocations/deltas"): deltas}) as url, client(url) as cc:
        got = await cc.revocation_deltas(3, ISSUERS)
        assert got == [one, two]
    async with fake_cloud({}) as url, client(url) as cc:
        assert await cc.revocation_deltas(3, ISSUERS) is None
        assert cc.status == "up"


async def test_deltas_that_do_not_chain_are_a_lie() -> None:
    stray = issue_revocation_delta(ISSUER, from_version=5, to_version=6, added=[b"a" * 16])

    async def deltas(request: web.Request) -> web.Response:
        return web.json_response(
            {"version": 6, "deltas": [base64.b64encode(stray.to_bytes()).decode()]}
        )

    async with fake_cloud({("GET", "/v1/revocations/deltas"): deltas}) as url, client(url) as cc:
        with pytest.raises(CloudLied, match="do not chain"):
            await cc.revocation_deltas(3, ISSUERS)


async def test_news_is_verified_against_the_pinned_keys_never_the_clouds(
    cloud: RunningCloud,
) -> None:
    async with client(cloud.url, issuers=cloud.issuers) as cc:
        assert (await cc.revocations()).version == 0
        assert await cc.revocation_deltas(0) == []
        nonce = os.urandom(16)
        assert (await cc.signed_time(nonce)).nonce == nonce
    async with client(cloud.url) as cc:  # nothing pinned: nothing can be verified
        with pytest.raises(ValueError, match="no pinned issuer key"):
            await cc.revocations()


async def test_issuer_rotations_are_verified_as_a_chain_from_the_pinned_key(
    cloud: RunningCloud,
) -> None:
    first = cloud.issuer_public_key
    async with client(cloud.url) as cc:
        assert await cc.issuer_rotations(cloud.issuers) == []
        db = cloud.state.db
        one, two = db.rotate_issuer(1000), db.rotate_issuer(2000)
        chain = await cc.issuer_rotations({crypto.key_id(first): first})
        assert chain == [one, two]
        # a phone that pinned the second key already needs only the last one
        middle = one.new_public_key
        assert await cc.issuer_rotations({crypto.key_id(middle): middle}) == [two]
        # a key that signed nothing gets nothing
        stranger = crypto.generate_private_key().public_key()
        assert await cc.issuer_rotations({crypto.key_id(stranger): stranger}) == []
        cloud.set_fault("bad-signature")
        with pytest.raises(CloudLied) as info:
            await cc.issuer_rotations({crypto.key_id(first): first})
        assert info.value.status == "bad-signature"
