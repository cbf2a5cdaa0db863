"""The cloud's API against a real server on a loopback port."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import aiohttp
import pytest
from cloud_testkit import (
    b64,
    call,
    credential_body,
    enroll,
    key_id_hex,
    key_text,
    new_card,
    register,
    request_credential,
    revocation_id_of,
)

from cloud_sim.app import OWNER_REFUSED
from cloud_sim.server import RunningCloud, start_cloud
from protocol import credentials, crypto
from protocol.cloud_request_auth import credential_request_message
from protocol.types import Role

Http = aiohttp.ClientSession


async def test_issuer_key_is_published(cloud: RunningCloud, http: Http) -> None:
    status, answer = await call(http, cloud, "GET", "/v1/issuer")
    assert status == 200
    assert answer["public_key"] == cloud.issuer_public_text
    assert answer["key_id"] == crypto.key_id(cloud.issuer_public_key).hex()


async def test_register_vehicle_gives_an_owner_token_once(cloud: RunningCloud, http: Http) -> None:
    card = new_card()
    status, answer = await call(http, cloud, "POST", "/v1/vehicles", {"card": card.to_text()})
    assert status == 201
    assert answer["vehicle_id"] == card.vehicle_id.hex()
    assert answer["vin"] == card.vin
    # 256 bits as hex: never starts with "-", so `--token TOKEN` always parses.
    assert re.fullmatch(r"[0-9a-f]{64}", answer["owner_token"])
    status, again = await call(http, cloud, "POST", "/v1/vehicles", {"card": card.to_text()})
    assert status == 409 and "already registered" in again["error"]


async def test_enroll_driver_and_guest(cloud: RunningCloud, http: Http) -> None:
    owned = await register(http, cloud)
    driver, guest = crypto.generate_private_key(), crypto.generate_private_key()
    status, answer = await enroll(http, cloud, owned, driver, "driver")
    assert (status, answer) == (201, {"key_id": key_id_hex(driver), "role": "driver"})
    status, answer = await enroll(http, cloud, owned, guest, "guest")
    assert status == 201 and answer["role"] == "guest"
    # A retry of the same enrollment is answered, not refused; a role change is.
    assert (await enroll(http, cloud, owned, driver, "driver"))[0] == 200
    status, answer = await enroll(http, cloud, owned, driver, "guest")
    assert status == 409 and "already enrolled as driver" in answer["error"]


async def test_cloud_never_grants_owner(cloud: RunningCloud, http: Http) -> None:
    owned = await register(http, cloud)
    status, answer = await enroll(http, cloud, owned, crypto.generate_private_key(), "owner")
    assert status == 403
    assert answer == {"error": OWNER_REFUSED}


async def test_owner_token_is_checked(cloud: RunningCloud, http: Http) -> None:
    mine, other = await register(http, cloud), await register(http, cloud)
    body = {"public_key": key_text(crypto.generate_private_key()), "role": "driver"}
    path = f"/v1/vehicles/{mine.vehicle_id}/phones"
    for headers in (
        None,
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {mine.token}"},
        {"Authorization": "Bearer " + "A" * 43},
        {"Authorization": f"Bearer {mine.token}x"},
    ):
        status, answer = await call(http, cloud, "POST", path, body, headers)
        assert status == 401, (headers, answer)
    status, answer = await call(http, cloud, "POST", path, body, other.auth)
    assert status == 403 and "another vehicle" in answer["error"]
    revoke_path = f"/v1/vehicles/{mine.vehicle_id}/revocations"
    status, _ = await call(http, cloud, "POST", revoke_path, {"key_id": "00" * 16}, other.auth)
    assert status == 403


async def test_credential_verifies_offline_and_names_holder(
    cloud: RunningCloud, http: Http
) -> None:
    owned = await register(http, cloud)
    phone = crypto.generate_private_key()
    await enroll(http, cloud, owned, phone, "guest")
    status, answer = await request_credential(http, cloud, phone, owned.vehicle_id)
    assert status == 200, answer
    credential = credentials.Credential.from_bytes(b64(answer["credential"]))
    now = int(time.time())
    credentials.verify_credential_at_time(
        credential,
        issuers=cloud.issuers,
        vehicle_id=owned.card.vehicle_id,
        now=now,
        holder_key_id=crypto.key_id(phone.public_key()),
    )
    assert credential.holder_key == crypto.public_bytes(phone.public_key())
    assert credential.role is Role.GUEST and answer["role"] == "guest"
    assert credential.serial == answer["serial"]
    assert (credential.not_before, credential.not_after) == (
        answer["not_before"],
        answer["not_after"],
    )
    assert credential.not_before <= now - 59
    assert credential.not_after - credential.not_before == credentials.DEFAULT_VALIDITY + 60
    # The same call refreshes: a new serial each time.
    status, again = await request_credential(http, cloud, phone, owned.vehicle_id)
    assert status == 200 and again["serial"] > answer["serial"]


async def test_validity_is_configurable(tmp_path: Path, http: Http) -> None:
    async with await start_cloud(tmp_path / "short.db", validity=120) as cloud:
        owned = await register(http, cloud)
        phone = crypto.generate_private_key()
        await enroll(http, cloud, owned, phone)
        _, answer = await request_credential(http, cloud, phone, owned.vehicle_id)
        assert answer["not_after"] - answer["not_before"] == 180


async def test_proof_of_possession_failures(cloud: RunningCloud, http: Http) -> None:
    owned = await register(http, cloud)
    phone, stranger = crypto.generate_private_key(), crypto.generate_private_key()
    await enroll(http, cloud, owned, phone)

    # Signed by another key than the one named.
    forged = credential_body(stranger, owned.vehicle_id)
    forged["public_key"] = key_text(phone)
    status, answer = await call(http, cloud, "POST", "/v1/credentials", forged)
    assert status == 401 and "signature" in answer["error"]

    # Signed for another vehicle than the one asked for.
    other = os.urandom(16).hex()
    crossed = credential_body(phone, other)
    crossed["vehicle_id"] = owned.vehicle_id
    assert (await call(http, cloud, "POST", "/v1/credentials", crossed))[0] == 401

    # Too old, too far ahead: the cloud tells its time so the phone can fix its clock.
    for skew in (-301, 301, -10_000):
        status, answer = await request_credential(
            http, cloud, phone, owned.vehicle_id, int(time.time()) + skew
        )
        assert status == 401 and "clock" in answer["error"], skew
        assert abs(answer["server_time"] - time.time()) < 5

    # Not enrolled, unknown vehicle.
    status, answer = await request_credential(http, cloud, stranger, owned.vehicle_id)
    assert status == 403 and "not enrolled" in answer["error"]
    status, _ = await request_credential(http, cloud, phone, other)
    assert status == 404

    # Revoked.
    revoke = f"/v1/vehicles/{owned.vehicle_id}/revocations"
    await call(http, cloud, "POST", revoke, {"key_id": key_id_hex(phone)}, owned.auth)
    status, answer = await request_credential(http, cloud, phone, owned.vehicle_id)
    assert status == 403 and "revoked" in answer["error"]
    # ... and a revoked key cannot come back through enrollment.
    status, _ = await enroll(http, cloud, owned, phone)
    assert status == 409


def test_request_message_layout() -> None:
    vehicle_id, key = bytes(range(16)), b"\x02" + bytes(32)
    message = credential_request_message(vehicle_id, key, 0x0102)
    assert message == b"phonekey/v1 credential request" + vehicle_id + key + bytes(6) + b"\x01\x02"
    for bad in ((vehicle_id[:15], key, 1), (vehicle_id, key + b"\x00", 1), (vehicle_id, key, -1)):
        with pytest.raises(ValueError):
            credential_request_message(*bad)


async def test_revocation_bumps_version_and_list_verifies(cloud: RunningCloud, http: Http) -> None:
    status, answer = await call(http, cloud, "GET", "/v1/revocations")
    assert status == 200 and answer["version"] == 0
    empty = credentials.RevocationList.from_bytes(b64(answer["revocation_list"]))
    credentials.verify_revocation_list(empty, issuers=cloud.issuers)
    assert (empty.version, empty.revoked) == (0, ())

    owned = await register(http, cloud)
    phones = [crypto.generate_private_key() for _ in range(2)]
    for phone in phones:
        await enroll(http, cloud, owned, phone)
    path = f"/v1/vehicles/{owned.vehicle_id}/revocations"
    versions = []
    for phone in [*phones, phones[0]]:  # the repeat is idempotent
        status, answer = await call(
            http, cloud, "POST", path, {"key_id": key_id_hex(phone)}, owned.auth
        )
        assert status == 200
        assert answer["revocation_id"] == revocation_id_of(owned.vehicle_id, phone).hex()
        versions.append(answer["version"])
    assert versions == [1, 2, 2]

    status, answer = await call(http, cloud, "GET", "/v1/revocations")
    listed = credentials.RevocationList.from_bytes(b64(answer["revocation_list"]))
    credentials.verify_revocation_list(listed, issuers=cloud.issuers, newer_than=0)
    assert answer["version"] == listed.version == 2
    assert listed.revoked == tuple(sorted(revocation_id_of(owned.vehicle_id, p) for p in phones))
    assert not any(listed.is_revoked(crypto.key_id(p.public_key())) for p in phones)

    unknown = {"key_id": os.urandom(16).hex()}
    assert (await call(http, cloud, "POST", path, unknown, owned.auth))[0] == 404


async def test_revocation_delta_for_a_vehicle_behind(cloud: RunningCloud, http: Http) -> None:
    owned = await register(http, cloud)
    phones = [crypto.generate_private_key() for _ in range(3)]
    path = f"/v1/vehicles/{owned.vehicle_id}/revocations"
    for phone in phones:
        await enroll(http, cloud, owned, phone)
        await call(http, cloud, "POST", path, {"key_id": key_id_hex(phone)}, owned.auth)
    status, answer = await call(http, cloud, "GET", "/v1/revocations/delta?from_version=1")
    assert status == 200
    assert (answer["from_version"], answer["to_version"], answer["current_version"]) == (1, 3, 3)
    delta = credentials.RevocationDelta.from_bytes(b64(answer["delta"]))
    credentials.verify_revocation_delta(delta, issuers=cloud.issuers)
    assert list(delta.added) == [revocation_id_of(owned.vehicle_id, p) for p in phones[1:]]
    status, answer = await call(http, cloud, "GET", "/v1/revocations/delta?from_version=3")
    assert status == 200 and answer["delta"] is None
    assert (await call(http, cloud, "GET", "/v1/revocations/delta?from_version=4"))[0] == 409


async def test_revoking_on_one_vehicle_leaves_the_phone_on_another(
    cloud: RunningCloud, http: Http
) -> None:
    """Two owners enrolled one phone; A's owner revokes it. The entry names
    (A, phone): B's credentials keep coming and B's entry is not on the list."""
    owner_a, owner_b = await register(http, cloud), await register(http, cloud)
    phone = crypto.generate_private_key()
    for owned in (owner_a, owner_b):
        assert (await enroll(http, cloud, owned, phone))[0] == 201
    entry_a = revocation_id_of(owner_a.vehicle_id, phone)
    entry_b = revocation_id_of(owner_b.vehicle_id, phone)
    assert entry_a != entry_b

    revoke_a = f"/v1/vehicles/{owner_a.vehicle_id}/revocations"
    status, answer = await call(
        http, cloud, "POST", revoke_a, {"key_id": key_id_hex(phone)}, owner_a.auth
    )
    assert status == 200 and answer == {"version": 1, "revocation_id": entry_a.hex()}
    assert (await request_credential(http, cloud, phone, owner_a.vehicle_id))[0] == 403
    status, answer = await request_credential(http, cloud, phone, owner_b.vehicle_id)
    assert status == 200, answer
    issued = credentials.Credential.from_bytes(b64(answer["credential"]))
    _, listed_answer = await call(http, cloud, "GET", "/v1/revocations")
    listed = credentials.RevocationList.from_bytes(b64(listed_answer["revocation_list"]))
    assert listed.revoked == (entry_a,)
    # B verifies B's credential against the very list that revokes the phone on A.
    credentials.verify_credential_at_time(
        issued,
        issuers=cloud.issuers,
        vehicle_id=bytes.fromhex(owner_b.vehicle_id),
        now=int(time.time()),
        is_revoked=listed.is_revoked,
    )
    _, delta_answer = await call(http, cloud, "GET", "/v1/revocations/delta?from_version=0")
    assert credentials.RevocationDelta.from_bytes(b64(delta_answer["delta"])).added == (entry_a,)

    # A's owner token cannot revoke on B; B's owner revoking too is a separate entry.
    revoke_b = f"/v1/vehicles/{owner_b.vehicle_id}/revocations"
    status, _ = await call(
        http, cloud, "POST", revoke_b, {"key_id": key_id_hex(phone)}, owner_a.auth
    )
    assert status in (401, 403)
    status, answer = await call(
        http, cloud, "POST", revoke_b, {"key_id": key_id_hex(phone)}, owner_b.auth
    )
    assert status == 200 and answer == {"version": 2, "revocation_id": entry_b.hex()}
    _, listed_answer = await call(http, cloud, "GET", "/v1/revocations")
    listed = credentials.RevocationList.from_bytes(b64(listed_answer["revocation_list"]))
    assert listed.revoked == tuple(sorted((entry_a, entry_b)))


async def test_an_owner_cannot_revoke_a_strangers_key_elsewhere(
    cloud: RunningCloud, http: Http
) -> None:
    """Public keys are public: an owner enrolls a stranger's phone key on their
    own car and revokes it. That revokes it on their car, and nowhere else."""
    victim, attacker = await register(http, cloud), await register(http, cloud)
    phone = crypto.generate_private_key()
    assert (await enroll(http, cloud, victim, phone))[0] == 201
    assert (await enroll(http, cloud, attacker, phone))[0] == 201
    path = f"/v1/vehicles/{attacker.vehicle_id}/revocations"
    status, _ = await call(http, cloud, "POST", path, {"key_id": key_id_hex(phone)}, attacker.auth)
    assert status == 200
    assert (await request_credential(http, cloud, phone, victim.vehicle_id))[0] == 200
    _, answer = await call(http, cloud, "GET", "/v1/revocations")
    listed = credentials.RevocationList.from_bytes(b64(answer["revocation_list"]))
    assert not listed.is_revoked(revocation_id_of(victim.vehicle_id, phone))
    # A third owner may still enroll the phone: the revocation was the attacker's car's.
    third = await register(http, cloud)
    assert (await enroll(http, cloud, third, phone))[0] == 201


async def test_signed_time_binds_the_nonce(cloud: RunningCloud, http: Http) -> None:
    nonce = os.urandom(16)
    status, answer = await call(http, cloud, "POST", "/v1/time", {"nonce": nonce.hex()})
    assert status == 200
    signed = credentials.SignedTime.from_bytes(b64(answer["signed_time"]))
    when = credentials.verify_signed_time(signed, issuers=cloud.issuers, expected_nonce=nonce)
    assert when == answer["time"] and abs(when - time.time()) < 5
    with pytest.raises(credentials.SignedTimeRejected):
        credentials.verify_signed_time(signed, issuers=cloud.issuers, expected_nonce=bytes(16))


def _non_loopback_address() -> str | None:
    """This host's address on its default route, if it has one (no packet is sent)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routing decision only
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_admin_endpoints_refuse_other_hosts(tmp_path: Path, http: Http) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    async with await start_cloud(tmp_path / "lan.db", host="0.0.0.0") as cloud:
        port = cloud.url.rsplit(":", 1)[1]
        lan = f"http://{address}:{port}"
        async with http.get(lan + "/v1/issuer") as response:
            assert response.status == 200
        for method, path, body in (
            ("GET", "/v1/admin/fault", None),
            ("POST", "/v1/admin/fault", {"mode": "http-500"}),
            ("POST", "/v1/vehicles", {"card": new_card().to_text()}),
        ):
            headers = {"X-Forwarded-For": "127.0.0.1"}
            async with http.request(method, lan + path, json=body, headers=headers) as response:
                assert response.status == 403, path
                assert "loopback" in (await response.json())["error"]
        assert str(cloud.fault_mode) == "none"
